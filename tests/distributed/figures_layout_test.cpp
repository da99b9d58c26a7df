// The block a step's figures ride in, summed over simulated ranks as an allreduce in float does:
// exact per-rank rows up to 64 ranks, each rank's norm, largest |g|, non-finite flag and loss beyond.
#include <cmath>
#include <limits>
#include <vector>

#include <gtest/gtest.h>

#include "distributed/exact_chunks.h"
#include "distributed/figures_layout.h"
#include "gradflow/error.h"

namespace gradflow::detail {
namespace {

constexpr int kFloatBits = 24;

Trace two_series() {
  Trace t;
  t.intern("fc.weight", SeriesKind::parameter, "fc");
  t.intern("fc", SeriesKind::activation, "fc");
  return t;
}

// Rank r's step: its own gradient figures and loss; rank `sick` has a NaN in the weight's gradient.
StepRecord rank_step(int r, int sick) {
  StepRecord st;
  st.step = 3;
  st.add_loss(1.0 + 0.01 * r);
  for (int series : {0, 1}) {
    Record rec;
    rec.series = series;
    rec.grad.numel = 100;
    rec.grad.sum = 0.5 * (r + 1) * (series + 1);
    rec.grad.sum_sq = 0.1 * (r + 1) + series;
    rec.grad.max_abs = 0.03 * (r + 2);
    rec.grad.zeros = r % 3;
    rec.grad.nonfinite = (r == sick && series == 0) ? 2 : 0;
    st.records.push_back(rec);
  }
  return st;
}

float as_float(double v) { return static_cast<float>(v); }

// Every rank's contribution converted to float and summed in float, as a float bucket's allreduce.
std::vector<double> allreduce_in_float(int world, int sick) {
  std::vector<float> sum;
  for (int r = 0; r < world; ++r) {
    const auto c = figures_contribution(rank_step(r, sick), std::nullopt, r, world, chunk_bits(kFloatBits));
    if (sum.empty()) sum.assign(c.size(), 0.0f);
    EXPECT_EQ(c.size(), sum.size()) << "every rank's block has one size";
    for (std::size_t i = 0; i < c.size(); ++i) sum[i] += as_float(c[i]);
  }
  return {sum.begin(), sum.end()};
}

TEST(FiguresLayout, UpTo64RanksEveryFigureOfEveryRankComesBackExactly) {
  const Trace t = two_series();
  for (int world : {2, 5, kExactRankRows}) {
    const auto summed = allreduce_in_float(world, 1);
    StepRecord mine = rank_step(0, 1);
    receive_figures(summed.data(), summed.size(), mine, t, world, chunk_bits(kFloatBits));
    ASSERT_EQ(mine.records[0].ranks.size(), static_cast<std::size_t>(world));
    EXPECT_FALSE(mine.records[0].ranks_compact);
    for (int r = 0; r < world; ++r) {
      const StepRecord truth = rank_step(r, 1);
      for (int i : {0, 1}) {
        const TensorStats &got = mine.records[i].ranks[r], &want = truth.records[i].grad;
        EXPECT_EQ(got.sum_sq, want.sum_sq);
        EXPECT_EQ(got.sum, want.sum);
        EXPECT_EQ(got.max_abs, want.max_abs);
        EXPECT_EQ(got.zeros, want.zeros);
        EXPECT_EQ(got.nonfinite, want.nonfinite);
      }
      EXPECT_EQ(mine.rank_losses[r], truth.losses[0]);
    }
  }
}

TEST(FiguresLayout, BeyondCarriesEachRanksNormLargestElementNonFiniteFlagAndLoss) {
  const Trace t = two_series();
  for (int world : {kExactRankRows + 1, 200}) {
    const int sick = world - 3;
    const auto summed = allreduce_in_float(world, sick);
    StepRecord mine = rank_step(0, sick);
    receive_figures(summed.data(), summed.size(), mine, t, world, chunk_bits(kFloatBits));
    const Record& w = mine.records[0];
    ASSERT_EQ(w.ranks.size(), static_cast<std::size_t>(world));
    EXPECT_TRUE(w.ranks_compact);
    double loss_mean = 0, act_sum_sq = 0;
    for (int r = 0; r < world; ++r) {
      const StepRecord truth = rank_step(r, sick);
      EXPECT_NEAR(w.ranks[r].norm(), truth.records[0].grad.norm(), 1e-6 * truth.records[0].grad.norm());
      EXPECT_FLOAT_EQ(static_cast<float>(w.ranks[r].max_abs), static_cast<float>(truth.records[0].grad.max_abs));
      EXPECT_EQ(w.ranks[r].nonfinite, r == sick ? 1 : 0) << r;  // exact: a bit per rank
      EXPECT_FLOAT_EQ(static_cast<float>(mine.rank_losses[r]), static_cast<float>(truth.losses[0]));
      loss_mean += truth.losses[0] / world;
      act_sum_sq += truth.records[1].grad.sum_sq;
    }
    EXPECT_NEAR(*mine.loss, loss_mean, 1e-6);
    // A layer output's record: the gradient of the averaged loss, from the ranks' figures.
    EXPECT_NEAR(mine.records[1].grad.norm(), std::sqrt(act_sum_sq) / world, 1e-6);
    EXPECT_EQ(mine.records[1].grad.numel, 100 * world);
  }
}

TEST(FiguresLayout, RanksThatRecordedOtherSeriesAreAClearError) {
  const Trace t = two_series();
  for (int world : {2, 100}) {
    const auto summed = allreduce_in_float(world, -1);
    StepRecord other = rank_step(0, -1);
    other.records.pop_back();
    EXPECT_THROW(receive_figures(summed.data(), summed.size(), other, t, world, chunk_bits(kFloatBits)), Error) << world;
  }
}

}  // namespace
}  // namespace gradflow::detail
