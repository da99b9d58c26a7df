// Tensor Programs V's invariance, numerically: a read-out trained in Table 3's form and the same
// read-out with an output multiplier (with_output_multiplier's variance and learning rate) compute
// the same function at every step, under SGD and under Adam.
#include <cmath>

#include <torch/torch.h>

#include "gradflow/parametrisation.h"
#include "torch_test_util.h"

namespace gradflow {
namespace {

class ReparametriseTest : public test::TorchTest {};

// x -> relu(W1 x) -> m · W2 h, W2 initialised at the rule's variance; returns the outputs after
// each of `steps` steps on one batch.
std::vector<torch::Tensor> train(const WeightRule& readout, OptimizerKind opt, std::int64_t width, std::int64_t steps) {
  torch::manual_seed(5);
  const auto x = torch::randn({32, 16}, torch::kDouble), y = torch::randn({32, 3}, torch::kDouble);
  auto w1 = (torch::randn({width, 16}, torch::kDouble) / 4.0).requires_grad_();
  torch::manual_seed(6);
  auto w2 = (torch::randn({3, width}, torch::kDouble) * std::sqrt(readout.init_variance)).requires_grad_();
  const double lr = 0.01;
  std::vector<torch::optim::OptimizerParamGroup> groups;
  auto options = [&](double rate) -> std::unique_ptr<torch::optim::OptimizerOptions> {
    if (opt == OptimizerKind::sgd) return std::make_unique<torch::optim::SGDOptions>(rate);
    return std::make_unique<torch::optim::AdamOptions>(torch::optim::AdamOptions(rate).eps(1e-30));
  };
  groups.emplace_back(std::vector<torch::Tensor>{w1}, options(lr));
  groups.emplace_back(std::vector<torch::Tensor>{w2}, options(lr * readout.lr_multiplier));
  std::unique_ptr<torch::optim::Optimizer> o;
  if (opt == OptimizerKind::sgd) o = std::make_unique<torch::optim::SGD>(std::move(groups), torch::optim::SGDOptions(lr));
  else o = std::make_unique<torch::optim::Adam>(std::move(groups), torch::optim::AdamOptions(lr));
  std::vector<torch::Tensor> outputs;
  for (std::int64_t t = 0; t < steps; ++t) {
    o->zero_grad();
    const auto f = readout.output_multiplier * torch::matmul(torch::relu(torch::matmul(x, w1.t())), w2.t());
    outputs.push_back(f.detach().clone());
    torch::mse_loss(f, y).backward();
    o->step();
  }
  return outputs;
}

TEST_F(ReparametriseTest, ReadoutWithAnOutputMultiplierTrainsTheSameFunction) {
  const std::int64_t width = 256;
  for (auto opt : {OptimizerKind::sgd, OptimizerKind::adam}) {
    SCOPED_TRACE(to_string(opt));
    const WeightRule table3 = weight_rule(Parametrisation::mup, WeightKind::readout, opt, {double(width), 3});
    const WeightRule multiplied = with_output_multiplier(table3, 1.0 / width, opt);
    ASSERT_DOUBLE_EQ(multiplied.init_variance, 1.0);
    const auto a = train(table3, opt, width, 4), b = train(multiplied, opt, width, 4);
    for (std::size_t t = 0; t < a.size(); ++t) {
      const double diff = (a[t] - b[t]).abs().max().item<double>(), scale = a[t].abs().max().item<double>();
      EXPECT_LT(diff, 1e-12 * scale) << "step " << t;
    }
    // The same rates without the change of variance differ: the check can fail.
    WeightRule wrong = multiplied;
    wrong.lr_multiplier = table3.lr_multiplier;
    const auto c = train(wrong, opt, width, 4);
    EXPECT_GT((a.back() - c.back()).abs().max().item<double>(), 1e-6 * a.back().abs().max().item<double>());
  }
}

}  // namespace
}  // namespace gradflow
