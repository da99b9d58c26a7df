#include "monitor/deferred_results.h"

#include <cmath>

#include <torch/torch.h>

#include "stats/tensor_stats_torch.h"
#include "torch_test_util.h"

namespace gradflow::detail {
namespace {

class DeferredResultsTest : public test::TorchTest {};

// Device results are stored as tensors and land in the step's records only when fetched; the
// numbers must equal what the host computes directly.
TEST_F(DeferredResultsTest, FetchFillsEachFieldOfTheRightRecord) {
  const auto g0 = torch::randn({6, 5}), g1 = torch::randn({7}), w = torch::randn({6, 5});
  const auto h = torch::sigmoid(torch::randn({16, 9}));
  StepRecord st;
  st.records.resize(2);
  DeferredResults d;
  d.add(1, ResultField::grad, g1.numel(), aten_stats(g1));
  d.add(0, ResultField::grad, g0.numel(), aten_stats(g0));
  d.add(0, ResultField::weight, w.numel(), aten_sum_of_squares(w));
  d.add(1, ResultField::forward, 0, device_activation_stats(h, Activation::sigmoid, {}, 0.1));
  d.add(-1, ResultField::loss, 1, torch::full({1}, 0.625, torch::kDouble));
  EXPECT_FALSE(d.empty());
  EXPECT_EQ(st.records[0].grad.numel, 0) << "nothing lands before the fetch";
  d.fetch_into(st);
  EXPECT_TRUE(d.empty());
  test::expect_stats_equal(st.records[0].grad, g0, 1e-12, "g0");
  test::expect_stats_equal(st.records[1].grad, g1, 1e-12, "g1");
  EXPECT_TRUE(test::rel_close(st.records[0].weight_norm, w.to(torch::kDouble).norm().item<double>(), 1e-12));
  EXPECT_TRUE(std::isnan(st.records[1].weight_norm));
  ASSERT_TRUE(st.records[1].forward.has_value());
  const auto hd = h.to(torch::kDouble);
  EXPECT_TRUE(test::rel_close(st.records[1].forward->mean, hd.mean().item<double>(), 1e-12));
  EXPECT_TRUE(test::rel_close(st.records[1].forward->mean_local_derivative, (hd * (1 - hd)).mean().item<double>(), 1e-12));
  EXPECT_EQ(st.loss, 0.625);
}

TEST_F(DeferredResultsTest, ActivationStatisticsKeepTheirNamedOrder) {
  const auto h = torch::relu(torch::randn({32, 10}));
  const auto v = device_activation_stats(h, Activation::relu, {}, 0.1).contiguous();
  const ActivationStats a = activation_stats_from(v.data_ptr<double>());
  const auto hd = h.to(torch::kDouble);
  EXPECT_TRUE(test::rel_close(a.mean, hd.mean().item<double>(), 1e-12));
  EXPECT_TRUE(test::rel_close(a.std, hd.std(/*unbiased=*/false).item<double>(), 1e-12));
  EXPECT_TRUE(test::rel_close(a.saturated_fraction, hd.eq(0).to(torch::kDouble).mean().item<double>(), 1e-12));
  EXPECT_TRUE(test::rel_close(a.dead_fraction, hd.eq(0).all(0).to(torch::kDouble).mean().item<double>(), 1e-12, 1e-15));
}

}  // namespace
}  // namespace gradflow::detail
