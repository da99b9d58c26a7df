#include "stats/tensor_stats_torch.h"

#include <limits>

#include "torch_test_util.h"

namespace gradflow {
namespace {

using test::expect_stats_equal;

class TensorStatsTorchTest : public test::TorchTest {};

std::vector<torch::Tensor> cases() {
  std::vector<torch::Tensor> out;
  for (auto dtype : {torch::kFloat, torch::kDouble}) {
    auto a = torch::randn({37, 19}, dtype);
    a.index_put_({0, 0}, 0.0);
    out.push_back(a);
    out.push_back(a.t());                          // non-contiguous
    out.push_back(a.index({torch::indexing::Slice(), torch::indexing::Slice(0, torch::indexing::None, 3)}));
    out.push_back(torch::empty({0, 4}, dtype));    // empty
    auto b = torch::randn({100}, dtype);
    b[3] = std::numeric_limits<double>::quiet_NaN();
    b[50] = std::numeric_limits<double>::infinity();
    b[51] = -std::numeric_limits<double>::infinity();
    out.push_back(b);
    out.push_back(torch::full({1000}, 1e-30, dtype) * torch::randn({1000}, dtype));
  }
  return out;
}

TEST_F(TensorStatsTorchTest, FusedPassEqualsSeparateReductions) {
  int i = 0;
  for (const auto& t : cases()) expect_stats_equal(detail::fused_stats(t), t, 1e-12, "case " + std::to_string(i++));
}

TEST_F(TensorStatsTorchTest, AtenPathEqualsSeparateReductions) {
  int i = 0;
  for (const auto& t : cases()) {
    auto v = detail::aten_stats(t).contiguous();
    expect_stats_equal(detail::stats_from_aten(v.data_ptr<double>(), t.numel()), t, 1e-12,
                       "case " + std::to_string(i++));
  }
}

TEST_F(TensorStatsTorchTest, HalfPrecisionGoesThroughAten) {
  auto t = torch::randn({64}).to(torch::kHalf);
  EXPECT_FALSE(detail::fused_applicable(t));
  auto v = detail::aten_stats(t).contiguous();
  expect_stats_equal(detail::stats_from_aten(v.data_ptr<double>(), t.numel()), t, 1e-12, "half");
}

TEST_F(TensorStatsTorchTest, SumOfSquaresMatchesNorm) {
  for (const auto& t : cases()) {
    const double expected = test::independent(t).norm;
    EXPECT_TRUE(test::rel_close(std::sqrt(detail::fused_sum_of_squares(t)), expected, 1e-12));
    EXPECT_TRUE(test::rel_close(std::sqrt(detail::aten_sum_of_squares(t).item<double>()), expected, 1e-12));
  }
}

}  // namespace
}  // namespace gradflow

namespace gradflow {
namespace {

TEST_F(TensorStatsTorchTest, HostActivationStatisticsEqualTheAtenOnes) {
  const auto z = torch::randn({32, 6, 5}) * 3;
  for (Activation act : all_activations()) {
    if (act == Activation::gelu) continue;
    torch::Tensor h;
    switch (act) {
      case Activation::sigmoid: h = torch::sigmoid(z); break;
      case Activation::tanh: h = torch::tanh(z); break;
      case Activation::relu: h = torch::relu(z - 2); break;
      case Activation::leaky_relu: h = torch::leaky_relu(z, 0.01); break;
      case Activation::elu: h = torch::elu(z); break;
      case Activation::selu: h = torch::selu(z); break;
      case Activation::softsign: h = z / (1 + z.abs()); break;
      default: h = z; break;
    }
    for (auto dtype : {torch::kFloat, torch::kDouble}) {
      const auto x = h.to(dtype);
      const auto host = detail::host_activation_stats(x, act, 0.1);
      ASSERT_TRUE(host) << to_string(act);
      const auto dev_values = detail::device_activation_stats(x, act, {}, 0.1).contiguous();
      const ActivationStats dev = detail::activation_stats_from(dev_values.data_ptr<double>());
      const double h[] = {host->mean, host->std, host->dead_fraction, host->saturated_fraction, host->mean_local_derivative};
      const double d[] = {dev.mean, dev.std, dev.dead_fraction, dev.saturated_fraction, dev.mean_local_derivative};
      for (int k = 0; k < detail::kActivationStatsSize; ++k)
        EXPECT_TRUE(test::rel_close(h[k], d[k], 1e-9, 1e-12)) << to_string(act) << " field " << k;
    }
  }
}

}  // namespace
}  // namespace gradflow
