#include "gradflow/trace.h"

#include <gtest/gtest.h>

#include "gradflow/error.h"

namespace gradflow {
namespace {

Record rec(int series, double v, std::int64_t nonfinite = 0) {
  Record r;
  r.series = series;
  r.grad.numel = 4;
  r.grad.sum = v;
  r.grad.sum_sq = v * v;
  r.grad.nonfinite = nonfinite;
  return r;
}

TEST(Trace, InternKeepsFirstSightOrderAndIsIdempotent) {
  Trace t;
  EXPECT_EQ(t.intern("b", SeriesKind::parameter, "l"), 0);
  EXPECT_EQ(t.intern("a", SeriesKind::activation, "l"), 1);
  EXPECT_EQ(t.intern("b", SeriesKind::parameter, "l"), 0);
  EXPECT_EQ(t.find("a"), 1);
  EXPECT_EQ(t.find("zzz"), -1);
  EXPECT_EQ(t.series_of_kind(SeriesKind::activation), std::vector<int>{1});
}

TEST(Trace, SameStepTwiceIsMergedNotDuplicated) {
  Trace t;
  t.intern("a", SeriesKind::parameter, "l");
  t.intern("b", SeriesKind::parameter, "l");
  StepRecord s1;
  s1.step = 3;
  s1.records = {rec(0, 1.0)};
  t.add_step(s1);
  StepRecord s2;
  s2.step = 3;
  s2.loss = 0.5;
  s2.records = {rec(0, 2.0), rec(1, 5.0)};
  t.add_step(s2);
  ASSERT_EQ(t.steps().size(), 1u);
  EXPECT_EQ(t.steps()[0].records.size(), 2u);
  EXPECT_DOUBLE_EQ(t.steps()[0].find(0)->grad.sum, 2.0);
  EXPECT_DOUBLE_EQ(*t.steps()[0].loss, 0.5);
}

TEST(Trace, FirstNonFiniteIsTheEarliestStepAndRecord) {
  Trace t;
  t.intern("a", SeriesKind::parameter, "l");
  t.intern("b", SeriesKind::parameter, "l");
  StepRecord s0;
  s0.step = 0;
  s0.records = {rec(0, 1.0), rec(1, 1.0)};
  t.add_step(s0);
  EXPECT_FALSE(t.first_nonfinite().has_value());
  StepRecord s1;
  s1.step = 1;
  s1.records = {rec(1, 1.0, 2), rec(0, 1.0, 1)};
  t.add_step(s1);
  StepRecord s2;
  s2.step = 2;
  s2.records = {rec(0, 1.0, 1)};
  t.add_step(s2);
  ASSERT_TRUE(t.first_nonfinite().has_value());
  EXPECT_EQ(t.first_nonfinite()->step, 1);
  EXPECT_EQ(t.first_nonfinite()->series, "b");
}

TEST(Trace, SeriesKindNamesRoundTrip) {
  for (auto k : {SeriesKind::parameter, SeriesKind::activation, SeriesKind::tap})
    EXPECT_EQ(series_kind_from_string(to_string(k)), k);
  EXPECT_THROW(series_kind_from_string("weights"), Error);
}

}  // namespace
}  // namespace gradflow
