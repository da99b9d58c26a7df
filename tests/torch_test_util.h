#pragma once
// Helpers for tests that run LibTorch: a seeded fixture and independent statistics.

#include <torch/torch.h>

#include <gtest/gtest.h>

#include "gradflow/tensor_stats.h"
#include "test_util.h"

namespace gradflow::test {

class TorchTest : public ::testing::Test {
 protected:
  void SetUp() override { torch::manual_seed(0); }
};

// Every statistic of the Monitor, computed separately with ATen in double.
struct IndependentStats {
  double norm, rms, max_abs, mean, std, zero_fraction;
  std::int64_t nonfinite;
};

inline IndependentStats independent(const torch::Tensor& t) {
  // A sparse gradient stands for its dense tensor.
  const auto x = (t.is_sparse() ? t.detach().to_dense() : t.detach()).to(torch::kDouble).reshape({-1});
  const auto fin = torch::isfinite(x);
  const auto xf = x.masked_select(fin);
  IndependentStats s{};
  s.nonfinite = (~fin).sum().item<std::int64_t>();
  s.zero_fraction = x.numel() ? x.eq(0).to(torch::kDouble).mean().item<double>() : 0.0;
  if (xf.numel() > 0) {
    s.norm = xf.norm().item<double>();
    s.rms = xf.square().mean().sqrt().item<double>();
    s.max_abs = xf.abs().max().item<double>();
    s.mean = xf.mean().item<double>();
    s.std = xf.std(/*unbiased=*/false).item<double>();
  }
  return s;
}

inline void expect_stats_equal(const TensorStats& got, const torch::Tensor& t, double rel,
                               const std::string& what) {
  const auto e = independent(t);
  SCOPED_TRACE(what);
  EXPECT_EQ(got.numel, t.numel());
  EXPECT_EQ(got.nonfinite, e.nonfinite);
  EXPECT_TRUE(rel_close(got.norm(), e.norm, rel));
  EXPECT_TRUE(rel_close(got.rms(), e.rms, rel));
  EXPECT_TRUE(rel_close(got.max_abs, e.max_abs, rel));
  // mean and std are differences of sums: compare relative to the tensor's scale.
  EXPECT_TRUE(rel_close(got.mean(), e.mean, rel, rel * e.rms));
  EXPECT_TRUE(rel_close(got.std(), e.std, rel, rel * e.rms));
  EXPECT_TRUE(rel_close(got.zero_fraction(), e.zero_fraction, 1e-12));
}

}  // namespace gradflow::test
