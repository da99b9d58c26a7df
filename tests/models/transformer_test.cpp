#include "models/transformer.h"

#include <cmath>
#include <cstdio>

#include <torch/torch.h>

#include "gradflow/error.h"
#include "gradflow/report.h"
#include "models/task.h"
#include "models/train.h"
#include "report/report_model.h"
#include "torch_test_util.h"

namespace gradflow::models {
namespace {

using test::rel_close;

class TransformerTest : public test::TorchTest {};

TrainOptions at_init(std::uint64_t seed) {
  TrainOptions o;
  o.steps = 1;
  o.seq_len = 16;
  o.seed = seed;
  return o;
}

// Autograd's |dL/dW| of each block's MLP output weight on the first batch train() draws.
std::vector<double> autograd_profile(const ResolvedSpec& spec, const TrainOptions& o) {
  torch::manual_seed(o.seed);
  TaskOptions to;
  to.name = "count";
  to.seq_len = o.seq_len;
  auto task = make_task(to, spec.family);
  auto net = make_network(spec, task->input_dim(), task->output_dim());
  const Batch b = task->sample(o.batch);
  task->loss(net->forward(b.x, nullptr), b).backward();
  std::vector<double> norms;
  for (std::int64_t k = 0; k < spec.get_int("depth"); ++k)
    norms.push_back(net->named_parameters()["block" + std::to_string(k) + ".fc2.weight"].grad().norm().item<double>());
  return norms;
}

TEST_F(TransformerTest, TheRecordedBlockProfileIsAutogradsGradient) {
  for (const char* ln : {"post", "pre"}) {
    const auto spec = resolve_spec(std::string("transformer:depth=4,width=32,ln=") + ln);
    const auto o = at_init(3);
    const RunRecord r = train(spec, o);
    const auto recorded = detail::norms_at_init(r, detail::block_series(r));
    const auto truth = autograd_profile(spec, o);
    ASSERT_EQ(recorded.size(), truth.size()) << ln;
    for (std::size_t k = 0; k < truth.size(); ++k) EXPECT_TRUE(rel_close(recorded[k], truth[k], 1e-5)) << ln << " block " << k;
  }
}

struct Profile {
  std::vector<double> log10;  // per block, mean over seeds
  double slope = 0, last_over_first = 0, spread = 0;
};

// Xiong et al.'s bound is on the expected gradient: the mean of log10 |dL/dW| over five nets.
Profile mean_profile(const std::string& spec_text, int seeds) {
  const auto spec = resolve_spec(spec_text);
  Profile p;
  for (int s = 0; s < seeds; ++s) {
    const RunRecord r = train(spec, at_init(static_cast<std::uint64_t>(s)));
    EXPECT_TRUE(r.findings.empty()) << spec_text << " seed " << s << ": " << detail::finding_kinds_text(r);
    const auto norms = detail::norms_at_init(r, detail::block_series(r));
    p.log10.resize(norms.size(), 0.0);
    for (std::size_t k = 0; k < norms.size(); ++k) p.log10[k] += std::log10(norms[k]) / seeds;
  }
  const double n = static_cast<double>(p.log10.size());
  double mx = 0, my = 0, sxy = 0, sxx = 0;
  for (std::size_t k = 0; k < p.log10.size(); ++k) mx += k / n, my += p.log10[k] / n;
  for (std::size_t k = 0; k < p.log10.size(); ++k) sxy += (k - mx) * (p.log10[k] - my), sxx += (k - mx) * (k - mx);
  p.slope = sxy / sxx;
  p.last_over_first = std::pow(10.0, p.log10.back() - p.log10.front());
  const auto [lo, hi] = std::minmax_element(p.log10.begin(), p.log10.end());
  p.spread = std::pow(10.0, *hi - *lo);
  return p;
}

// Xiong et al. 2020 at initialization: post-LN's gradient at the last blocks exceeds pre-LN's and
// grows toward the output; pre-LN's stays within a factor 3 across the blocks.
TEST_F(TransformerTest, PostLnGrowsTowardTheOutputWhilePreLnStaysFlat) {
  for (int depth : {6, 12}) {
    const std::string d = std::to_string(depth);
    const Profile post = mean_profile("post_ln:depth=" + d, 5), pre = mean_profile("pre_ln:depth=" + d, 5);
    SCOPED_TRACE("depth " + d);
    std::printf("depth %d: post-LN last/first %.2f, slope %+.3f/block; pre-LN spread %.2f, last/first %.2f; last block post/pre %.2f\n",
                depth, post.last_over_first, post.slope, pre.spread, pre.last_over_first,
                std::pow(10.0, post.log10.back() - pre.log10.back()));
    EXPECT_GT(post.slope, 0.0);
    EXPECT_GT(post.last_over_first, 1.1);
    EXPECT_GT(post.log10.back(), pre.log10.back() + std::log10(1.5));  // at the last block
    EXPECT_LE(pre.spread, 3.0);
    EXPECT_LE(pre.slope, 0.0);
  }
}

TEST_F(TransformerTest, TheComparisonNamesPreLnAndItsProfile) {
  const RunRecord post = train(resolve_spec("post_ln"), at_init(0)), pre = train(resolve_spec("pre_ln"), at_init(0));
  const Comparison c = make_comparison({post, pre}, {});
  ASSERT_EQ(c.verdicts.size(), 1u);
  const Verdict& v = c.verdicts[0];
  EXPECT_EQ(v.remedy, "pre-LN");
  EXPECT_EQ(v.axis, VerdictAxis::profile);
  const auto pw = detail::norms_at_init(pre, detail::block_series(pre));
  const auto pwo = detail::norms_at_init(post, detail::block_series(post));
  ASSERT_TRUE(v.with_log10 && v.without_log10 && v.with_value && v.without_value);
  EXPECT_DOUBLE_EQ(*v.with_log10, std::log10(pw.back() / pw.front()));
  EXPECT_DOUBLE_EQ(*v.without_log10, std::log10(pwo.back() / pwo.front()));
  EXPECT_DOUBLE_EQ(*v.without_value, pwo.back());
  // Seed 0: post-LN grows (last/first 1.41), pre-LN is within 1.74 and 2.05 times smaller at the end.
  EXPECT_EQ(v.confirms, pwo.back() > pwo.front() && pwo.back() > pw.back()) << v.text;
  EXPECT_NE(v.text.find("grows toward the output"), std::string::npos) << v.text;
}

// The warm-up verdict reads the runs' own losses: learned means under half the constant answer's.
TEST_F(TransformerTest, TheWarmupVerdictJudgesByTheEndOfTraining) {
  TrainOptions o = at_init(0);
  o.steps = 4;
  RunRecord without = train(resolve_spec("post_ln:depth=2,width=16"), o);
  RunRecord with = train(resolve_spec("post_ln:depth=2,width=16,warmup=3"), o);
  EXPECT_EQ(with.traits.warmup_steps, 3);
  // Same first step (the warm-up scales the update, not the gradient), different updates after it.
  EXPECT_DOUBLE_EQ(with.loss.front(), without.loss.front());
  EXPECT_NE(with.loss[1], without.loss[1]);
  auto verdict = [&] {
    const Comparison c = make_comparison({with, without}, {});
    EXPECT_EQ(c.verdicts.size(), 1u);
    return c.verdicts.at(0);
  };
  with.loss.assign(40, 0.2 * with.baseline_loss);
  without.loss.assign(40, 0.9 * without.baseline_loss);
  Verdict v = verdict();
  EXPECT_EQ(v.remedy, "learning-rate warm-up");
  EXPECT_EQ(v.axis, VerdictAxis::training);
  EXPECT_TRUE(v.confirms) << v.text;
  EXPECT_DOUBLE_EQ(*v.with_value, 0.2 * with.baseline_loss);
  without.loss.assign(40, 0.3 * without.baseline_loss);  // both learned: warm-up was not needed
  EXPECT_FALSE(verdict().confirms);
}

TEST_F(TransformerTest, WarmupRaisesTheLearningRateLinearly) {
  // The Monitor reads SGD's step size from the optimizer at each step: lr · min(1, (k + 1) / 4).
  TrainOptions o = at_init(1);
  o.optimizer = "sgd";
  o.lr = 0.1;
  o.steps = 6;
  const RunRecord r = train(resolve_spec("post_ln:depth=2,width=16,warmup=4"), o);
  ASSERT_EQ(r.trace.steps().size(), 6u);
  for (std::size_t k = 0; k < 6; ++k) {
    ASSERT_TRUE(r.trace.steps()[k].learning_rate.has_value()) << k;
    EXPECT_DOUBLE_EQ(*r.trace.steps()[k].learning_rate, 0.1 * std::min(1.0, (k + 1) / 4.0)) << k;
  }
}

TEST_F(TransformerTest, TheCountTaskCountsAndItsBaselineIsTheCountsEntropy) {
  TaskOptions to;
  to.name = "count";
  to.seq_len = 12;
  auto task = make_task(to, "transformer");
  torch::manual_seed(5);
  const Batch b = task->sample(4000);
  const auto tokens = b.x.argmax(-1);
  for (std::int64_t i = 0; i < 3; ++i)
    for (std::int64_t t = 0; t < 12; ++t) {
      std::int64_t n = 0;
      for (std::int64_t u = 0; u < 12; ++u) n += u != t && tokens[i][u].item<std::int64_t>() == tokens[i][t].item<std::int64_t>();
      EXPECT_EQ(b.y[i][t].item<std::int64_t>(), n);
    }
  // The best constant answer is the empirical count distribution: its cross-entropy is its entropy.
  const auto freq = torch::bincount(b.y.reshape({-1}), {}, 12).to(torch::kDouble) / static_cast<double>(b.y.numel());
  const double entropy = -(freq * torch::log(freq.clamp_min(1e-300))).sum().item<double>();
  EXPECT_NEAR(task->baseline_loss(), entropy, 0.01);
  EXPECT_THROW(make_task(to, "mlp"), UsageError);
}

TEST_F(TransformerTest, HeadsMustDivideTheWidth) {
  EXPECT_THROW(resolve_spec("transformer:width=10,heads=4"), UsageError);
  EXPECT_NO_THROW(resolve_spec("transformer:width=12,heads=4"));
  const auto t = resolve_spec("pre_ln").traits();
  EXPECT_EQ(t.norm_placement, NormPlacement::pre);
  EXPECT_TRUE(t.residual);
  EXPECT_EQ(t.norm, Norm::layer);
}

}  // namespace
}  // namespace gradflow::models
