// A model gradflow has never seen: nested submodules in a ModuleList and ModuleDict, a shared
// layer used twice, a frozen embedding, custom forward code. Three added lines record how its
// gradient flows; a fourth makes the program fail if the gradient goes bad.
#include <cstdio>
#include <string>

#include <torch/torch.h>

#include <gradflow/gradflow.h>

struct BlockImpl : torch::nn::Module {
  explicit BlockImpl(int width) : fc(register_module("fc", torch::nn::Linear(width, width))),
                                  norm(register_module("norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({width})))) {}
  torch::Tensor forward(const torch::Tensor& x) { return x + torch::gelu(norm(fc(x))); }
  torch::nn::Linear fc;
  torch::nn::LayerNorm norm;
};
TORCH_MODULE(Block);

struct NetImpl : torch::nn::Module {
  NetImpl(int inputs, int width, int depth) {
    embed = register_module("embed", torch::nn::Linear(inputs, width));
    embed->weight.set_requires_grad(false);  // frozen: gradflow skips it
    blocks = register_module("blocks", torch::nn::ModuleList());
    for (int i = 0; i < depth; ++i) blocks->push_back(Block(width));
    heads = register_module("heads", torch::nn::ModuleDict());
    heads->update({{"mean", torch::nn::Linear(width, 1).ptr()}, {"scale", torch::nn::Linear(width, 1).ptr()}});
    mix = register_module("mix", torch::nn::Linear(width, width));
  }
  torch::Tensor forward(torch::Tensor x) {
    x = embed(x);
    for (const auto& b : *blocks) x = b->as<Block>()->forward(x);
    x = torch::tanh(mix(torch::tanh(mix(x))));  // one layer applied twice: shared parameters
    return heads["mean"]->as<torch::nn::Linear>()->forward(x) * torch::softplus(heads["scale"]->as<torch::nn::Linear>()->forward(x));
  }
  torch::nn::Linear embed{nullptr}, mix{nullptr};
  torch::nn::ModuleList blocks{nullptr};
  torch::nn::ModuleDict heads{nullptr};
};
TORCH_MODULE(Net);

int run(int argc, char** argv) {
  const std::string out = argc > 1 ? argv[1] : "custom-model-report";
  torch::manual_seed(0);
  Net model(16, 64, 6);
  torch::optim::Adam optimizer(model->parameters(), 1e-3);
  const auto teacher = torch::randn({16, 1});

  // [readme-snippet]
  gradflow::Monitor monitor(*model);                      // + attach: hooks every parameter
  for (int step = 0; step < 300; ++step) {
    auto x = torch::randn({64, 16});
    optimizer.zero_grad();
    auto loss = torch::mse_loss(model->forward(x), torch::sin(x.mm(teacher)));
    monitor.watch(loss);                                  // + records the loss and dL/d(layer output)
    loss.backward();
    monitor.optimizer_step(optimizer);                    // + in place of optimizer.step(): the applied gradient too
  }
  auto findings = gradflow::save_report(monitor, out);     // + writes report.html, run.json, trace.csv
  gradflow::require_healthy(findings, {gradflow::FindingKind::vanishing, gradflow::FindingKind::non_finite});
  // [/readme-snippet]

  for (const auto& f : findings) std::printf("%s: %s\n", gradflow::to_string(f.kind), f.message.c_str());
  const auto& trace = monitor.trace();
  std::printf("custom_model: %zu recorded steps, %zu series, report in %s/report.html\n", trace.steps().size(),
              trace.series().size(), out.c_str());
  return 0;
}

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const gradflow::GradientHealthError& e) {
    std::fprintf(stderr, "custom_model: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "custom_model: %s\n", e.what());
    return 1;
  }
}
