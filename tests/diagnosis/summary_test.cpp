#include "gradflow/summary.h"

#include <cmath>
#include <limits>

#include <gtest/gtest.h>

namespace gradflow {
namespace {

Record rec(int series, double norm, std::int64_t numel = 4) {
  Record r;
  r.series = series;
  r.grad.numel = numel;
  r.grad.sum_sq = norm * norm;
  return r;
}

TEST(Summary, DepthSeriesPrefersHiddenTapsInNumericOrder) {
  Trace t;
  const int h10 = t.intern("h.10", SeriesKind::tap, "h");
  const int h2 = t.intern("h.2", SeriesKind::tap, "h");
  t.intern("fc0", SeriesKind::activation, "fc0");
  t.intern("time.1", SeriesKind::tap, "time");
  EXPECT_EQ(depth_series(t), (std::vector<int>{h2, h10}));
  Trace u;
  const int a = u.intern("fc0", SeriesKind::activation, "fc0");
  const int b = u.intern("fc1", SeriesKind::activation, "fc1");
  u.intern("fc2", SeriesKind::activation, "fc2");  // the output layer: not a hidden one
  EXPECT_EQ(depth_series(u), (std::vector<int>{a, b}));
}

TEST(Summary, AttenuationIsTheLog10RatioOfTheEndNormsWithItsGain) {
  Trace t;
  for (int i = 1; i <= 4; ++i) t.intern("h." + std::to_string(i), SeriesKind::tap, "h");
  StepRecord first, last;
  last.step = 9;
  for (int i = 0; i < 4; ++i) {
    first.records.push_back(rec(i, std::pow(10.0, -3.0 * (3 - i))));  // h.1 = 1e-9 .. h.4 = 1
    last.records.push_back(rec(i, 2.0));
  }
  t.add_step(first);
  t.add_step(last);
  const RunSummary s = summarize(t, {3.0, std::nan(""), 1.0}, std::numeric_limits<float>::denorm_min());
  ASSERT_TRUE(s.depth && s.depth->log10);
  EXPECT_NEAR(*s.depth->log10, -9.0, 1e-12);
  EXPECT_EQ(s.depth->span, 3);
  EXPECT_NEAR(*s.depth->gain(), 1e-3, 1e-15);
  EXPECT_FALSE(s.depth->underflow);
  EXPECT_NEAR(*s.depth_final->log10, 0.0, 1e-15);
  EXPECT_EQ(s.loss_first, 3.0);
  EXPECT_EQ(s.loss_last, 1.0);
  EXPECT_EQ(s.recorded_steps, 2);
  EXPECT_FALSE(s.time.has_value());
}

TEST(Summary, AZeroFarEndIsABoundNotMinusInfinity) {
  const double tiny = std::numeric_limits<float>::denorm_min();
  const Attenuation a = attenuation(0.0, 1.0, 19, tiny);
  ASSERT_TRUE(a.log10.has_value());
  EXPECT_TRUE(a.underflow);
  EXPECT_NEAR(*a.log10, std::log10(tiny), 1e-9);  // every element, so their RMS, below tiny
  const Attenuation inf = attenuation(std::numeric_limits<double>::infinity(), 1.0, 3, tiny);
  EXPECT_TRUE(inf.overflow);
  EXPECT_FALSE(inf.log10.has_value());
}

TEST(Summary, NonFiniteLossesAreLeftOutOfTheEnds) {
  const RunSummary s = summarize(Trace{}, {std::nan(""), 2.0, std::numeric_limits<double>::infinity()}, 1e-45);
  EXPECT_FALSE(s.loss_first.has_value());
  EXPECT_FALSE(s.loss_last.has_value());
  EXPECT_EQ(s.recorded_steps, 0);
}

// A step whose gradient is non-finite has no applied/produced factor: two infinite norms are not
// "1x"; the summary counts the changed steps that had one.
TEST(Summary, TheAppliedFactorLeavesOutNonFiniteSteps) {
  Trace t;
  const int w = t.intern("fc.weight", SeriesKind::parameter, "fc", {2, 2});
  for (const std::int64_t nonfinite : {0, 3}) {
    StepRecord st;
    st.step = static_cast<std::int64_t>(t.steps().size());
    Record r;
    r.series = w;
    r.grad.numel = 4;
    r.grad.sum_sq = 4.0;
    r.grad.nonfinite = nonfinite;
    TensorStats clipped = r.grad;
    clipped.sum_sq = 1.0;
    r.applied = clipped;
    st.records.push_back(r);
    t.add_step(st);
  }
  const RunSummary s = summarize(t, {}, 1e-45);
  ASSERT_TRUE(s.applied.has_value());
  EXPECT_EQ(s.applied->changed_steps, 2);
  EXPECT_EQ(s.applied->finite_factors, 1);
  EXPECT_DOUBLE_EQ(s.applied->median_factor, 0.5);
  EXPECT_DOUBLE_EQ(s.applied->largest_factor, 0.5);
}

}  // namespace
}  // namespace gradflow
