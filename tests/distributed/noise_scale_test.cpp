// The noise-scale estimators against an exact computation from per-example gradients, the
// smoothing of a trace's estimates, the rank block's round trip and the rank rules' premises.
#include <cmath>
#include <random>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "gradflow/diagnosis.h"
#include "gradflow/error.h"
#include "gradflow/noise_scale.h"
#include "gradflow/trace_io.h"
#include "distributed/rank_block.h"

namespace gradflow {
namespace {

// A linear least-squares model on a fixed population: each example's gradient in closed form.
struct Population {
  static constexpr int kDim = 5, kSize = 64;
  std::vector<std::array<double, kDim>> grads;
  explicit Population(std::mt19937& rng) {
    std::normal_distribution<double> n(0.0, 1.0);
    std::array<double, kDim> w{};
    for (auto& v : w) v = n(rng);
    for (int i = 0; i < kSize; ++i) {
      std::array<double, kDim> x{};
      double pred = 0;
      for (int j = 0; j < kDim; ++j) pred += w[j] * (x[j] = n(rng));
      const double err = pred - (0.5 * x[0] + n(rng));  // loss ½(w·x − y)²: gradient err·x
      std::array<double, kDim> g{};
      for (int j = 0; j < kDim; ++j) g[j] = err * x[j];
      grads.push_back(g);
    }
  }
  std::array<double, kDim> mean_of(const std::vector<int>& idx) const {
    std::array<double, kDim> m{};
    for (int i : idx)
      for (int j = 0; j < kDim; ++j) m[j] += grads[i][j] / static_cast<double>(idx.size());
    return m;
  }
  static double sq(const std::array<double, kDim>& v) {
    double s = 0;
    for (double e : v) s += e * e;
    return s;
  }
};

TEST(NoiseScale, TheEstimatorsAreUnbiasedForTheExactPopulationFigures) {
  std::mt19937 rng(5);
  const Population pop(rng);
  std::vector<int> all(Population::kSize);
  for (int i = 0; i < Population::kSize; ++i) all[i] = i;
  const auto G = pop.mean_of(all);
  double trace_sigma = 0;  // mean |g_i − G|²: the per-example covariance's trace
  for (const auto& g : pop.grads) {
    std::array<double, Population::kDim> d{};
    for (int j = 0; j < Population::kDim; ++j) d[j] = g[j] - G[j];
    trace_sigma += Population::sq(d) / Population::kSize;
  }
  const double true_sq = Population::sq(G);
  // Data-parallel draws: 4 ranks of 4 examples each, sampled with replacement.
  constexpr int kRanks = 4, kShard = 4, kDraws = 40000;
  std::uniform_int_distribution<int> pick(0, Population::kSize - 1);
  double sum_g2 = 0, sum_sigma = 0;
  for (int t = 0; t < kDraws; ++t) {
    std::vector<int> global;
    double small = 0;
    for (int r = 0; r < kRanks; ++r) {
      std::vector<int> shard;
      for (int k = 0; k < kShard; ++k) shard.push_back(pick(rng));
      small += Population::sq(pop.mean_of(shard)) / kRanks;
      global.insert(global.end(), shard.begin(), shard.end());
    }
    const NoiseEstimate e = estimate_noise(small, Population::sq(pop.mean_of(global)), kShard, kShard * kRanks);
    sum_g2 += e.true_grad_sq;
    sum_sigma += e.trace_sigma;
  }
  EXPECT_NEAR(sum_g2 / kDraws, true_sq, 0.03 * true_sq + 0.01 * trace_sigma / kShard);
  EXPECT_NEAR(sum_sigma / kDraws, trace_sigma, 0.03 * trace_sigma);
  EXPECT_THROW(estimate_noise(1, 1, 8, 8), Error);
}

// A two-rank trace with two layers of one parameter each; local and averaged squared norms given.
Trace two_rank_trace(const std::vector<std::array<double, 3>>& layer_a, const std::vector<std::array<double, 3>>& layer_b) {
  Trace t;
  t.world_size = 2;
  t.batch_per_rank = 8;
  const int a = t.intern("a.weight", SeriesKind::parameter, "a"), b = t.intern("b.weight", SeriesKind::parameter, "b");
  for (std::size_t s = 0; s < layer_a.size(); ++s) {
    StepRecord st;
    st.step = static_cast<std::int64_t>(s);
    for (auto [series, sums] : {std::pair{a, layer_a[s]}, std::pair{b, layer_b[s]}}) {
      Record r;
      r.series = series;
      r.grad.numel = 4;
      r.grad.sum_sq = sums[0];
      for (int k = 1; k <= 2; ++k) {
        TensorStats local;
        local.numel = 4;
        local.sum_sq = sums[k];
        r.ranks.push_back(local);
      }
      st.records.push_back(r);
    }
    t.add_step(st);
  }
  return t;
}

TEST(NoiseScale, EachLayerAndTheModelAreSmoothedBeforeTheRatio) {
  const Trace t = two_rank_trace({{1.0, 1.5, 1.7}, {0.8, 1.0, 1.4}}, {{2.0, 3.0, 2.6}, {1.0, 1.2, 1.6}});
  const auto scales = noise_scales(t, NoiseScaleOptions{0.5});
  ASSERT_EQ(scales.size(), 3u);
  EXPECT_EQ(scales[0].name, kWholeModel);
  EXPECT_EQ(scales[1].name, "a");
  EXPECT_EQ(scales[2].name, "b");
  auto est = [](double big, double r0, double r1) { return estimate_noise((r0 + r1) / 2, big, 8, 16); };
  const NoiseEstimate a0 = est(1.0, 1.5, 1.7), a1 = est(0.8, 1.0, 1.4);
  EXPECT_DOUBLE_EQ(scales[1].b_simple[0], a0.trace_sigma / a0.true_grad_sq);
  // Moving averages with weight 0.5: 0.25·x0 + 0.5·x1 after two steps, the same ratio as (0.5·x0 + x1)/1.5.
  const double g2 = (0.5 * a0.true_grad_sq + a1.true_grad_sq) / 1.5, sigma = (0.5 * a0.trace_sigma + a1.trace_sigma) / 1.5;
  EXPECT_DOUBLE_EQ(scales[1].b_simple[1], sigma / g2);
  const NoiseEstimate m0 = est(3.0, 4.5, 4.3);
  EXPECT_DOUBLE_EQ(scales[0].b_simple[0], m0.trace_sigma / m0.true_grad_sq);
  Trace one = t;
  one.world_size = 1;
  EXPECT_TRUE(noise_scales(one).empty());
}

TEST(RankBlock, EveryRanksFiguresEnterTheStepAndLayerOutputsAreAveraged) {
  Trace t;
  const int p = t.intern("fc.weight", SeriesKind::parameter, "fc"), h = t.intern("fc", SeriesKind::activation, "fc");
  auto local = [&](double loss, double scale) {
    StepRecord st;
    st.add_loss(loss);
    for (int series : {p, h}) {
      Record r;
      r.series = series;
      r.grad.numel = 10;
      r.grad.sum = scale;
      r.grad.sum_sq = scale * scale;
      r.grad.max_abs = scale;
      st.records.push_back(r);
    }
    return st;
  };
  StepRecord mine = local(2.0, 1.0);
  const auto b0 = detail::encode_local(mine, 7.0), b1 = detail::encode_local(local(4.0, 3.0), 7.5);
  detail::decode_ranks(mine, {b0, b1}, t);
  EXPECT_EQ(mine.rank_losses, (std::vector<double>{2.0, 4.0}));
  EXPECT_DOUBLE_EQ(*mine.loss, 3.0);
  EXPECT_EQ(mine.rank_checksums, (std::vector<double>{7.0, 7.5}));
  ASSERT_EQ(mine.records[0].ranks.size(), 2u);
  EXPECT_DOUBLE_EQ(mine.records[0].ranks[1].sum_sq, 9.0);
  EXPECT_DOUBLE_EQ(mine.records[0].grad.sum_sq, 1.0);  // parameters: left for the averaged gradient
  // dL/dh of the mean loss: both ranks' gradients together, halved.
  EXPECT_EQ(mine.records[1].grad.numel, 20);
  EXPECT_DOUBLE_EQ(mine.records[1].grad.sum_sq, (1.0 + 9.0) / 4);
  EXPECT_DOUBLE_EQ(mine.records[1].grad.max_abs, 1.5);
  StepRecord other = local(1.0, 1.0);
  other.records.pop_back();
  EXPECT_THROW(detail::decode_ranks(mine, {b0, detail::encode_local(other, std::nullopt)}, t), Error);
}

TEST(RankTrace, PerRankFiguresSurviveTheJsonRoundTrip) {
  Trace t = two_rank_trace({{1.0, 1.5, 1.7}}, {{2.0, 3.0, 2.6}});
  t.steps()[0].rank_losses = {0.5, 0.25};
  t.steps()[0].rank_checksums = {3.0, 3.0};
  const Trace back = trace_from_json(trace_to_json(t));
  EXPECT_EQ(back.world_size, 2);
  EXPECT_EQ(back.batch_per_rank, 8);
  EXPECT_EQ(back.steps()[0].rank_losses, t.steps()[0].rank_losses);
  EXPECT_EQ(back.steps()[0].rank_checksums, t.steps()[0].rank_checksums);
  ASSERT_EQ(back.steps()[0].records[1].ranks.size(), 2u);
  EXPECT_DOUBLE_EQ(back.steps()[0].records[1].ranks[1].sum_sq, 2.6);
  const std::string csv = trace_to_csv(t);
  EXPECT_NE(csv.find("0,b.weight,parameter,norm," + std::to_string(std::sqrt(2.6)).substr(0, 6)), std::string::npos);
  EXPECT_NE(csv.find("0,loss,step,loss,0.25,1,\n"), std::string::npos);
  EXPECT_NE(csv.find("0,b.weight,parameter,local_norm_max," + fmt::format("{}", std::sqrt(3.0)) + ",,local\n"), std::string::npos);
  EXPECT_NE(csv.find("0,b.weight,parameter,local_norm_min," + fmt::format("{}", std::sqrt(2.6)) + ",,local\n"), std::string::npos);
}

std::vector<Finding> rank_findings(const Trace& t) {
  std::vector<Finding> out;
  for (const auto& f : diagnose(t, {}, {}, ModelTraits{}))
    if (f.kind == FindingKind::rank_non_finite || f.kind == FindingKind::ranks_out_of_sync || f.kind == FindingKind::rank_outlier)
      out.push_back(f);
  return out;
}

TEST(RankRules, EachNeedsItsPremise) {
  // Every rank non-finite: the plain non_finite rule's, not a rank's.
  Trace all = two_rank_trace({{1, 1, 1}}, {{1, 1, 1}});
  for (auto& r : all.steps()[0].records)
    for (auto& local : r.ranks) local.nonfinite = 1;
  EXPECT_TRUE(rank_findings(all).empty());
  // Equal checksums: in sync.
  Trace sync = two_rank_trace({{1, 1, 1}}, {{1, 1, 1}});
  sync.steps()[0].rank_checksums = {5.0, 5.0};
  EXPECT_TRUE(rank_findings(sync).empty());
  sync.steps()[0].rank_checksums = {5.0, 5.0 + 1e-9};
  ASSERT_EQ(rank_findings(sync).size(), 1u);
  EXPECT_EQ(rank_findings(sync)[0].kind, FindingKind::ranks_out_of_sync);
  // An outlier for two steps, then not: below the three steps in a row it takes.
  Trace brief = two_rank_trace({{1, 1, 100}, {1, 1, 100}, {1, 1, 1}, {1, 1, 100}}, {{1, 1, 1}, {1, 1, 1}, {1, 1, 1}, {1, 1, 1}});
  EXPECT_TRUE(rank_findings(brief).empty());
  Trace lasting = two_rank_trace({{1, 1, 100}, {1, 1, 100}, {1, 1, 100}}, {{1, 1, 1}, {1, 1, 1}, {1, 1, 1}});
  ASSERT_EQ(rank_findings(lasting).size(), 1u);
  EXPECT_EQ(rank_findings(lasting)[0].where, "rank 1 up to step 2");
}

}  // namespace
}  // namespace gradflow
