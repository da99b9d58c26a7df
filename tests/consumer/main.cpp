// A minimal user of the installed package: attach, train a few steps, check what was recorded.
#include <cstdio>

#include <torch/torch.h>
#include <torch/version.h>

#include <gradflow/gradflow.h>

int main() {
  torch::manual_seed(0);
  auto model = torch::nn::Sequential(torch::nn::Linear(4, 8), torch::nn::Tanh(), torch::nn::Linear(8, 1));
  gradflow::Monitor monitor(*model);
  torch::optim::SGD opt(model->parameters(), 0.1);
  for (int step = 0; step < 3; ++step) {
    opt.zero_grad();
    auto loss = model->forward(torch::randn({16, 4})).pow(2).mean();
    monitor.watch(loss);
    loss.backward();
    opt.step();
  }
  const auto& trace = monitor.trace();
  const int w = trace.find("0.weight");
  if (trace.steps().size() != 3 || w < 0 || !trace.steps().back().find(w)) {
    std::fprintf(stderr, "consumer: expected 3 recorded steps with 0.weight\n");
    return 1;
  }
  const double recorded = trace.steps().back().find(w)->grad.norm();
  const double actual = model->parameters()[0].grad().norm().item<double>();
  if (std::abs(recorded - actual) > 1e-6 * actual) {
    std::fprintf(stderr, "consumer: recorded %g, param.grad() %g\n", recorded, actual);
    return 1;
  }
  std::printf("consumer: find_package(gradflow) works on LibTorch %s; 0.weight gradient norm %.6g\n", TORCH_VERSION,
              recorded);
  return 0;
}
