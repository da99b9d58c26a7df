// A small GAN on a ring of eight Gaussians, trained as DCGAN-style programs train: the
// discriminator takes a backward on real and one on fake samples, then its optimizer steps; the
// generator's loss goes through the discriminator. Each model gets its own Monitor; the
// discriminator's closes its steps by hand, since it takes two backwards per step.
#include <cmath>
#include <cstdio>
#include <string>

#include <torch/torch.h>

#include <gradflow/gradflow.h>

namespace {

torch::nn::Sequential mlp(int in, int width, int out) {
  return torch::nn::Sequential(torch::nn::Linear(in, width), torch::nn::LeakyReLU(torch::nn::LeakyReLUOptions().negative_slope(0.2)),
                               torch::nn::Linear(width, width), torch::nn::LeakyReLU(torch::nn::LeakyReLUOptions().negative_slope(0.2)),
                               torch::nn::Linear(width, out));
}

torch::Tensor real_batch(int n) {
  const auto k = torch::randint(0, 8, {n}, torch::kLong).to(torch::kFloat) * (2 * M_PI / 8);
  return torch::stack({torch::cos(k), torch::sin(k)}, 1) * 2 + 0.05 * torch::randn({n, 2});
}

torch::Tensor bce(const torch::Tensor& logits, double target) {
  return torch::binary_cross_entropy_with_logits(logits, torch::full_like(logits, target));
}

void print(const std::string& who, const std::vector<gradflow::Finding>& findings) {
  if (findings.empty()) std::printf("%s: no findings\n", who.c_str());
  for (const auto& f : findings)
    std::printf("%s: [%s] %s (%s): %s\n", who.c_str(), gradflow::to_string(f.severity), gradflow::to_string(f.kind), f.where.c_str(),
                f.message.c_str());
}

}  // namespace

int main(int argc, char** argv) {
  const std::string out = argc > 1 ? argv[1] : "gan-report";
  torch::manual_seed(0);
  auto gen = mlp(8, 64, 2), disc = mlp(2, 64, 1);
  torch::optim::Adam opt_g(gen->parameters(), torch::optim::AdamOptions(2e-4).betas({0.5, 0.999}));
  torch::optim::Adam opt_d(disc->parameters(), torch::optim::AdamOptions(2e-4).betas({0.5, 0.999}));
  // Each records the updates its optimizer applies too (the report's update-to-weight ratio).
  gradflow::Monitor monitor_g(*gen, gradflow::MonitorOptions{}.with_update_norms(true));
  gradflow::Monitor monitor_d(*disc, gradflow::MonitorOptions{}.with_auto_step(false).with_update_norms(true));
  for (int step = 0; step < 400; ++step) {
    opt_d.zero_grad();
    auto d_real = bce(disc->forward(real_batch(64)), 1.0);
    monitor_d.watch(d_real);
    d_real.backward();
    auto fake = gen->forward(torch::randn({64, 8}));
    auto d_fake = bce(disc->forward(fake.detach()), 0.0);
    monitor_d.watch(d_fake);
    d_fake.backward();
    opt_d.step();
    monitor_d.step();  // the discriminator's step: d_real + d_fake

    opt_g.zero_grad();
    auto g_loss = bce(disc->forward(fake), 1.0);
    monitor_g.watch(g_loss);
    g_loss.backward();  // reaches the discriminator's parameters too; its optimizer never applies it
    opt_g.step();
    if (step % 100 == 0) std::printf("step %d  D %.3f  G %.3f\n", step, (d_real + d_fake).item<float>(), g_loss.item<float>());
  }
  gradflow::SaveOptions g, d;
  g.traits.activation = d.traits.activation = gradflow::Activation::leaky_relu;
  g.traits.adversarial = d.traits.adversarial = true;  // each player's loss rises and falls by design
  g.force = true;
  g.label = "generator";
  d.label = "discriminator";
  // One report, the two models side by side.
  const auto findings = gradflow::save_report({{&monitor_g, g}, {&monitor_d, d}}, out);
  const auto& fg = findings[0];
  const auto& fd = findings[1];
  print("generator", fg);
  print("discriminator", fd);
  // A healthy GAN: any finding would be a false one.
  gradflow::require_healthy(fg);
  gradflow::require_healthy(fd);
  return 0;
}
