#include "gradflow/tensor_stats.h"

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "test_util.h"

namespace gradflow {
namespace {

using test::rel_close;

// An independent computation in long double, element by element.
struct Reference {
  long double sum = 0, sum_sq = 0, max_abs = 0;
  std::int64_t zeros = 0, nonfinite = 0, n = 0;
};
template <typename T>
Reference reference(const std::vector<T>& v) {
  Reference r;
  r.n = static_cast<std::int64_t>(v.size());
  for (T x : v) {
    if (!std::isfinite(x)) {
      ++r.nonfinite;
      continue;
    }
    if (x == 0) ++r.zeros;
    r.sum += x;
    r.sum_sq += static_cast<long double>(x) * x;
    r.max_abs = std::max<long double>(r.max_abs, std::fabs(x));
  }
  return r;
}

template <typename T>
void expect_matches(const std::vector<T>& v, double rel) {
  const auto s = compute_stats(v.data(), static_cast<std::int64_t>(v.size()));
  const auto r = reference(v);
  EXPECT_EQ(s.numel, r.n);
  EXPECT_EQ(s.nonfinite, r.nonfinite);
  EXPECT_EQ(s.zeros, r.zeros);
  EXPECT_TRUE(rel_close(s.sum, static_cast<double>(r.sum), rel, 1e-300 + rel * std::sqrt(static_cast<double>(r.sum_sq))));
  EXPECT_TRUE(rel_close(s.sum_sq, static_cast<double>(r.sum_sq), rel));
  EXPECT_EQ(s.max_abs, static_cast<double>(r.max_abs));
  EXPECT_TRUE(rel_close(sum_of_squares(v.data(), static_cast<std::int64_t>(v.size())),
                        static_cast<double>(r.sum_sq), rel));
}

TEST(TensorStats, FloatMatchesLongDoubleReference) {
  std::mt19937 rng(1);
  std::normal_distribution<float> d(0.3f, 2.0f);
  // Sizes around every vector width and remainder.
  for (int n : {1, 3, 7, 8, 15, 16, 17, 31, 33, 63, 64, 65, 1000, 4099}) {
    std::vector<float> v(n);
    for (auto& x : v) x = d(rng);
    v[n / 2] = 0.0f;
    expect_matches(v, 1e-12);
  }
}

TEST(TensorStats, DoubleMatchesLongDoubleReference) {
  std::mt19937 rng(2);
  std::normal_distribution<double> d(-1.0, 3.0);
  std::vector<double> v(1237);
  for (auto& x : v) x = d(rng);
  v[5] = 0.0;
  v[6] = -0.0;
  expect_matches(v, 1e-12);
}

TEST(TensorStats, NonFiniteAreCountedAndLeftOutOfSums) {
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> v = {1.0f, nan, -2.0f, inf, 0.0f, -inf, 3.0f, nan, 0.5f};
  const auto s = compute_stats(v.data(), static_cast<std::int64_t>(v.size()));
  EXPECT_EQ(s.numel, 9);
  EXPECT_EQ(s.nonfinite, 4);
  EXPECT_EQ(s.zeros, 1);
  EXPECT_DOUBLE_EQ(s.sum, 2.5);
  EXPECT_DOUBLE_EQ(s.sum_sq, 1 + 4 + 9 + 0.25);
  EXPECT_DOUBLE_EQ(s.max_abs, 3.0);
  EXPECT_DOUBLE_EQ(s.mean(), 2.5 / 5);
  expect_matches(v, 1e-15);
}

TEST(TensorStats, EmptyTensorGivesZeros) {
  const auto s = compute_stats(static_cast<const float*>(nullptr), 0);
  EXPECT_EQ(s.numel, 0);
  EXPECT_EQ(s.norm(), 0.0);
  EXPECT_EQ(s.rms(), 0.0);
  EXPECT_EQ(s.mean(), 0.0);
  EXPECT_EQ(s.std(), 0.0);
  EXPECT_EQ(s.zero_fraction(), 0.0);
}

TEST(TensorStats, VanishingFloatsDoNotUnderflow) {
  // Squares of 1e-22 are 1e-44: below float's smallest normal, representable in double.
  std::vector<float> v(4096, 1e-22f);
  const auto s = compute_stats(v.data(), static_cast<std::int64_t>(v.size()));
  const double expected = std::sqrt(4096.0) * static_cast<double>(1e-22f);
  EXPECT_TRUE(rel_close(s.norm(), expected, 1e-12));
  EXPECT_GT(s.sum_sq, 0.0);
}

TEST(TensorStats, DerivedStatisticsFollowTheirDefinitions) {
  std::vector<double> v = {1, 2, 3, 4, 0, 0};
  const auto s = compute_stats(v.data(), 6);
  EXPECT_DOUBLE_EQ(s.norm(), std::sqrt(30.0));
  EXPECT_DOUBLE_EQ(s.rms(), std::sqrt(30.0 / 6));
  EXPECT_DOUBLE_EQ(s.mean(), 10.0 / 6);
  const double m = 10.0 / 6;
  EXPECT_TRUE(rel_close(s.std(), std::sqrt(30.0 / 6 - m * m), 1e-14));
  EXPECT_DOUBLE_EQ(s.zero_fraction(), 2.0 / 6);
}

TEST(TensorStats, MergeOfPartsEqualsWhole) {
  std::vector<float> v(1000);
  for (int i = 0; i < 1000; ++i) v[i] = std::sin(static_cast<float>(i)) * (i % 7 == 0 ? 0.0f : 1.0f);
  auto a = compute_stats(v.data(), 400);
  a.merge(compute_stats(v.data() + 400, 600));
  const auto whole = compute_stats(v.data(), 1000);
  EXPECT_EQ(a.numel, whole.numel);
  EXPECT_EQ(a.zeros, whole.zeros);
  EXPECT_TRUE(rel_close(a.sum_sq, whole.sum_sq, 1e-14));
  EXPECT_EQ(a.max_abs, whole.max_abs);
}

#if defined(__x86_64__)
TEST(TensorStats, DispatchesToTheWidestInstructionSetThisCpuHas) {
  // Asked independently of the kernel's own dispatch: the CPU's feature flags.
  __builtin_cpu_init();
  const char* widest = __builtin_cpu_supports("avx512f")                                   ? "avx512f"
                       : __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? "avx2"
                                                                                          : "baseline";
  EXPECT_STREQ(stats_kernel_isa(), widest);
}
#endif

}  // namespace
}  // namespace gradflow

namespace gradflow {
namespace {

TEST(TensorStats, GradientAndWeightInOnePassEqualTwoPasses) {
  for (int n : {0, 5, 16, 17, 1000, 4099}) {
    std::vector<float> g(n), w(n);
    for (int i = 0; i < n; ++i) {
      g[i] = std::sin(0.37f * i) * (i % 5 == 0 ? 0.0f : 1e-3f);
      w[i] = std::cos(0.11f * i);
    }
    if (n > 3) w[3] = std::numeric_limits<float>::quiet_NaN();  // a broken weight element is left out
    double wsq = -1;
    const auto s = compute_stats_with_weight(g.data(), w.data(), n, wsq);
    const auto ref = compute_stats(g.data(), n);
    EXPECT_EQ(s.numel, ref.numel);
    EXPECT_EQ(s.zeros, ref.zeros);
    EXPECT_DOUBLE_EQ(s.max_abs, ref.max_abs);
    EXPECT_TRUE(test::rel_close(s.sum_sq, ref.sum_sq, 1e-14));
    EXPECT_TRUE(test::rel_close(wsq, sum_of_squares(w.data(), n), 1e-14));
    std::vector<double> gd(g.begin(), g.end()), wd(w.begin(), w.end());
    double wsqd = -1;
    const auto sd = compute_stats_with_weight(gd.data(), wd.data(), n, wsqd);
    EXPECT_TRUE(test::rel_close(sd.sum_sq, ref.sum_sq, 1e-12));
    EXPECT_TRUE(test::rel_close(wsqd, wsq, 1e-12));
  }
}

}  // namespace
}  // namespace gradflow
