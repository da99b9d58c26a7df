// Gradient accumulation: the optimizer steps once every four micro-batches. The Monitor records
// one step per optimizer step, whose parameter gradient is the accumulated one the optimizer
// applies and whose loss is the sum of the four watched micro-batch losses.
#include <cstdio>
#include <string>

#include <torch/torch.h>

#include <gradflow/gradflow.h>

int main(int argc, char** argv) {
  const std::string out = argc > 1 ? argv[1] : "accumulation-report";
  torch::manual_seed(0);
  torch::nn::Sequential net(torch::nn::Linear(16, 64), torch::nn::ReLU(), torch::nn::Linear(64, 64), torch::nn::ReLU(),
                            torch::nn::Linear(64, 1));
  const auto teacher = torch::randn({16, 1});
  torch::optim::SGD opt(net->parameters(), torch::optim::SGDOptions(0.05).momentum(0.9));
  gradflow::Monitor monitor(*net, gradflow::MonitorOptions{}.with_auto_step(false));
  const int micro_batches = 4;
  for (int step = 0; step < 150; ++step) {
    opt.zero_grad();
    for (int m = 0; m < micro_batches; ++m) {
      auto x = torch::randn({32, 16});
      auto loss = torch::mse_loss(net->forward(x), torch::tanh(x.mm(teacher))) / micro_batches;
      monitor.watch(loss);
      loss.backward();
    }
    opt.step();
    monitor.step();
  }
  const auto& last = monitor.trace().steps().back();
  std::printf("recorded %zu steps; the last has %d backwards and %zu watched losses summing to %.4g\n",
              monitor.trace().steps().size(), last.backwards, last.losses.size(), last.loss.value_or(0.0));
  gradflow::SaveOptions o;
  o.label = "accumulated MLP";
  o.traits.activation = gradflow::Activation::relu;
  o.force = true;
  const auto findings = gradflow::save_report(monitor, out, o);
  if (findings.empty()) std::printf("no findings\n");
  for (const auto& f : findings)
    std::printf("[%s] %s (%s): %s\n", gradflow::to_string(f.severity), gradflow::to_string(f.kind), f.where.c_str(), f.message.c_str());
  gradflow::require_healthy(findings);
  return 0;
}
