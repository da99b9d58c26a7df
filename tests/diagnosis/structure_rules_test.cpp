// Rules read against a real model's structure: per-element comparisons, one link is a scale
// not a gain, recovery is told as recovery, a loss whose number of terms varies has no trend,
// and a gradient that stops dead is named as such.
#include <cmath>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "gradflow/diagnosis.h"
#include "gradflow/summary.h"

namespace gradflow {
namespace {

// A chain of activation series (layer outputs) with given RMS and element counts.
struct Chain {
  Trace t;
  std::vector<int> layers;
  std::vector<std::int64_t> sizes;
  explicit Chain(const std::vector<std::int64_t>& numels) : sizes(numels) {
    for (std::size_t i = 0; i < numels.size(); ++i)
      layers.push_back(t.intern("block" + std::to_string(i), SeriesKind::activation, "block" + std::to_string(i)));
    layers.push_back(t.intern("head", SeriesKind::activation, "head"));  // the output layer: not depth
    sizes.push_back(10);
  }
  // rms: one per layer (the head's is 1).
  void step(std::int64_t s, std::vector<double> rms, std::vector<std::size_t> calls = {}) {
    rms.push_back(1.0);
    StepRecord st;
    st.step = s;
    for (std::size_t i = 0; i < layers.size(); ++i) {
      Record r;
      r.series = layers[i];
      r.grad.numel = sizes[i];
      r.grad.sum_sq = rms[i] * rms[i] * static_cast<double>(sizes[i]);
      if (rms[i] == 0.0) r.grad.zeros = sizes[i];
      if (i < calls.size() && calls[i] > 1) r.profile.assign(calls[i], rms[i]);
      st.records.push_back(r);
    }
    t.add_step(st);
  }
  std::vector<Finding> diagnose(const std::vector<double>& loss = {}, ModelTraits traits = {}) const {
    return gradflow::diagnose(t, loss, {}, traits);
  }
};

const Finding* get(const std::vector<Finding>& fs, FindingKind k) {
  for (const auto& f : fs)
    if (f.kind == k) return &f;
  return nullptr;
}

TEST(StructureRules, LayersOfDifferentSizesAreComparedPerElement) {
  // Equal RMS, a 64x larger far layer: its norm is 8x (0.9 orders), its per-element gradient the same.
  Chain c({16 * 64 * 32 * 32, 16 * 128, 16 * 512 * 2 * 2});
  c.step(0, {0.01, 0.01, 0.01});
  const RunSummary s = summarize(c.t, {}, 1e-45);
  ASSERT_TRUE(s.depth && s.depth->log10);
  EXPECT_NEAR(*s.depth->log10, 0.0, 1e-12);
  EXPECT_NEAR(s.depth->from, 0.01, 1e-15);
  const auto none = c.diagnose();
  EXPECT_EQ(get(none, FindingKind::exploding), nullptr);
}

TEST(StructureRules, OneLinkIsAScaleNotAnExplosion) {
  // × sqrt(512) at the embedding, flat elsewhere: 1.35 orders at one link, nothing compounds.
  Chain c(std::vector<std::int64_t>(8, 64));
  std::vector<double> rms(8, 0.01);
  rms[0] = 0.01 * std::sqrt(512.0);
  c.step(0, rms);
  const RunSummary s = summarize(c.t, {}, 1e-45);
  ASSERT_TRUE(s.depth && s.depth->log10);
  EXPECT_NEAR(*s.depth->log10, std::log10(std::sqrt(512.0)), 1e-12);
  EXPECT_EQ(s.depth->largest_link_at, 0);
  EXPECT_NEAR(s.depth->largest_link_log10, std::log10(std::sqrt(512.0)), 1e-12);
  const auto scaled = c.diagnose();
  EXPECT_EQ(get(scaled, FindingKind::exploding), nullptr);
  // 2.5 orders spread over the chain compound: a finding.
  Chain g(std::vector<std::int64_t>(8, 64));
  std::vector<double> grow;
  for (int i = 0; i < 8; ++i) grow.push_back(0.01 * std::pow(10.0, 2.5 * (7 - i) / 7.0));
  g.step(0, grow);
  const auto findings = g.diagnose();
  const Finding* e = get(findings, FindingKind::exploding);
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->message.find("at one link"), std::string::npos) << e->message;
  EXPECT_EQ(e->severity, Severity::warning);
  // Growth that compounds beside a scale: the finding says what it is made of.
  std::vector<double> both = grow;
  both[0] *= std::sqrt(512.0);
  Chain h(std::vector<std::int64_t>(8, 64));
  h.step(0, both);
  const auto mixed = h.diagnose();
  const Finding* m = get(mixed, FindingKind::exploding);
  ASSERT_NE(m, nullptr);
  EXPECT_NE(m->message.find("1.7 of them at one link (block1 -> block0), 2.3x per layer elsewhere"), std::string::npos)
      << m->message;
}

TEST(StructureRules, ARemedyTheModelHasIsNotSuggested) {
  Chain g(std::vector<std::int64_t>(8, 64));
  std::vector<double> grow;
  for (int i = 0; i < 8; ++i) grow.push_back(0.01 * std::pow(10.0, 5.0 * (7 - i) / 7.0));
  g.step(0, grow);
  ModelTraits he;
  he.init = init_from_string("he_normal");
  he.clip_norm = 1.0;
  const auto with = g.diagnose({}, he), without = g.diagnose();
  const Finding* e = get(with, FindingKind::exploding);
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->remedy.find("clipping"), std::string::npos) << e->remedy;
  EXPECT_EQ(e->remedy.find("(He for ReLU"), std::string::npos) << e->remedy;
  ASSERT_NE(get(without, FindingKind::exploding), nullptr);
  EXPECT_NE(get(without, FindingKind::exploding)->remedy.find("clipping"), std::string::npos);
}

TEST(StructureRules, AVanishingThatTrainingRecoveredIsInformation) {
  Chain c(std::vector<std::int64_t>(6, 64));
  c.step(0, {1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2});
  c.step(1, {1e-3, 1e-3, 1e-3, 1e-3, 1e-3, 1e-2});
  const auto f = c.diagnose();
  const Finding* v = get(f, FindingKind::vanishing);
  ASSERT_NE(v, nullptr);
  EXPECT_EQ(v->severity, Severity::info);
  EXPECT_NE(v->message.find("training recovered it: 1.0 orders"), std::string::npos) << v->message;
  // Still lost at the end: one error.
  Chain d(std::vector<std::int64_t>(6, 64));
  d.step(0, {1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2});
  d.step(1, {1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2});
  const auto g = d.diagnose();
  EXPECT_EQ(std::count_if(g.begin(), g.end(), [](const Finding& x) { return x.kind == FindingKind::vanishing; }), 1);
  EXPECT_EQ(get(g, FindingKind::vanishing)->severity, Severity::error);
}

TEST(StructureRules, AGradientThatStopsDeadIsADeadLayerNotUnderflow) {
  // One recorded step: dead at every recorded step, told once as dead_layer.
  Chain c(std::vector<std::int64_t>(5, 64));
  c.step(0, {0.0, 0.0, 0.0, 0.02, 0.02});
  const auto f = c.diagnose();
  EXPECT_EQ(get(f, FindingKind::vanishing), nullptr);
  EXPECT_EQ(get(f, FindingKind::dead_units), nullptr);
  const Finding* d = get(f, FindingKind::dead_layer);
  ASSERT_NE(d, nullptr);
  EXPECT_EQ(d->where, "block0 .. block2 (3 layers)");
  // Zero at one step of many: the depth rule's cut at that step.
  Chain e(std::vector<std::int64_t>(5, 64));
  e.step(0, {0.0, 0.0, 0.0, 0.02, 0.02});
  for (int s = 1; s < 5; ++s) e.step(s, {0.01, 0.01, 0.01, 0.02, 0.02});
  const auto g = e.diagnose();
  EXPECT_EQ(get(g, FindingKind::dead_layer), nullptr);
  const Finding* cut = get(g, FindingKind::dead_units);
  ASSERT_NE(cut, nullptr);
  EXPECT_EQ(cut->where, "block2");
  EXPECT_NE(cut->message.find("while block3 receives 0.02"), std::string::npos) << cut->message;
}

TEST(StructureRules, DepthFollowsTheLongestPathAndKeepsParallelBranchesApart) {
  // A VAE: fc1 -> (fc21 | fc22) -> fc3 -> fc4. Depth is fc1, fc21, fc3 (fc4 the output).
  Trace t;
  const int fc1 = t.intern("fc1", SeriesKind::activation, "fc1"), fc21 = t.intern("fc21", SeriesKind::activation, "fc21"),
            fc22 = t.intern("fc22", SeriesKind::activation, "fc22"), fc3 = t.intern("fc3", SeriesKind::activation, "fc3"),
            fc4 = t.intern("fc4", SeriesKind::activation, "fc4");
  EXPECT_EQ(depth_series(t), (std::vector<int>{fc1, fc21, fc22, fc3}));  // no graph known: every layer output
  EXPECT_TRUE(t.add_input(fc21, fc1));
  t.add_input(fc22, fc1);
  t.add_input(fc3, fc21);
  t.add_input(fc3, fc22);
  t.add_input(fc4, fc3);
  EXPECT_FALSE(t.add_input(fc1, fc3));  // against forward order: no cycle
  EXPECT_FALSE(t.add_input(fc3, fc21));  // known
  EXPECT_EQ(depth_series(t), (std::vector<int>{fc1, fc21, fc3}));
  // Two heads on one trunk (an actor and a critic): no depth to speak of.
  Trace ac;
  const int trunk = ac.intern("affine1", SeriesKind::activation, "affine1");
  const int actor = ac.intern("action_head", SeriesKind::activation, "action_head");
  const int critic = ac.intern("value_head", SeriesKind::activation, "value_head");
  ac.add_input(actor, trunk);
  ac.add_input(critic, trunk);
  EXPECT_EQ(depth_series(ac), (std::vector<int>{trunk}));
}

TEST(StructureRules, ASkipConnectionAndAProgramsClippingAreReadFromTheRun) {
  // block: conv1 -> conv2, and conv2's input joined by conv1's producer (stem): x + f(x).
  Trace t;
  const int stem = t.intern("stem", SeriesKind::activation, "stem"), c1 = t.intern("conv1", SeriesKind::activation, "conv1"),
            c2 = t.intern("conv2", SeriesKind::activation, "conv2"), head = t.intern("head", SeriesKind::activation, "head");
  t.add_input(c1, stem);
  t.add_input(c2, c1);
  t.add_input(head, c2);
  EXPECT_FALSE(has_skip_connection(t));
  t.add_input(head, stem);  // head(stem + conv2(conv1(stem)))
  EXPECT_TRUE(has_skip_connection(t));
  // Two siblings joined (a VAE's heads) are no skip.
  Trace vae;
  const int fc1 = vae.intern("fc1", SeriesKind::activation, "fc1"), mu = vae.intern("mu", SeriesKind::activation, "mu"),
            lv = vae.intern("logvar", SeriesKind::activation, "logvar"), fc3 = vae.intern("fc3", SeriesKind::activation, "fc3");
  vae.add_input(mu, fc1);
  vae.add_input(lv, fc1);
  vae.add_input(fc3, mu);
  vae.add_input(fc3, lv);
  EXPECT_FALSE(has_skip_connection(vae));

  // clip_grad_norm_(0.25): the applied norm is 0.25 wherever it changed the gradient.
  Trace run;
  const int w = run.intern("fc.weight", SeriesKind::parameter, "fc", {2, 2});
  auto step = [&](std::int64_t s, double produced, double applied) {
    StepRecord st;
    st.step = s;
    Record r;
    r.series = w;
    r.grad.numel = 4;
    r.grad.sum_sq = produced * produced;
    TensorStats a = r.grad;
    a.sum_sq = applied * applied;
    r.applied = a;
    st.records.push_back(r);
    run.add_step(st);
  };
  step(0, 3.0, 0.25);
  step(1, 0.1, 0.1);  // under the threshold: unchanged
  step(2, 7.0, 0.25);
  ASSERT_TRUE(clip_norm_applied(run).has_value());
  EXPECT_DOUBLE_EQ(*clip_norm_applied(run), 0.25);
  step(3, 2.0, 0.5);  // a second threshold: not one clipping by norm
  EXPECT_FALSE(clip_norm_applied(run).has_value());
}

std::vector<double> healthy_loss(std::size_t n) {
  std::vector<double> v;
  for (std::size_t i = 0; i < n; ++i) v.push_back(2.0 * std::exp(-0.05 * static_cast<double>(i)) + 0.1);
  return v;
}

TEST(StructureRules, ASpikeThatRecoveredIsASpike) {
  Chain c(std::vector<std::int64_t>(3, 8));
  for (int s = 0; s < 40; ++s) c.step(s, {0.01, 0.01, 0.01});
  auto loss = healthy_loss(40);
  loss[12] = 60.0;
  const auto spiked = c.diagnose(loss);
  const Finding* u = get(spiked, FindingKind::unstable_loss);
  ASSERT_NE(u, nullptr);
  EXPECT_EQ(u->severity, Severity::warning);
  EXPECT_NE(u->message.find("spiked to 60 (43.6x its level before the spike, the median of steps 7 .. 11) at step 12 and "
                            "recovered"),
            std::string::npos)
      << u->message;
  // One that stays up diverged.
  for (std::size_t i = 12; i < loss.size(); ++i) loss[i] = 60.0;
  const auto diverged = c.diagnose(loss);
  ASSERT_NE(get(diverged, FindingKind::unstable_loss), nullptr);
  EXPECT_EQ(get(diverged, FindingKind::unstable_loss)->severity, Severity::error);
}

TEST(StructureRules, ALossWhoseTermsVaryHasNoTrend) {
  // An episode's summed loss: the policy is called once per environment step, episodes grow.
  Chain c(std::vector<std::int64_t>(3, 8));
  std::vector<double> loss;
  for (int s = 0; s < 40; ++s) {
    const std::size_t length = 5 + static_cast<std::size_t>(s);
    c.step(s, {0.01, 0.01, 0.01}, {length, length, length});
    loss.push_back(0.5 * static_cast<double>(length));
  }
  const auto varying = c.diagnose(loss);
  EXPECT_EQ(get(varying, FindingKind::unstable_loss), nullptr);
  // The same losses with a fixed number of terms: the rise is a finding.
  Chain fixed(std::vector<std::int64_t>(3, 8));
  for (int s = 0; s < 40; ++s) fixed.step(s, {0.01, 0.01, 0.01}, {5, 5, 5});
  const auto rising = fixed.diagnose(loss);
  EXPECT_NE(get(rising, FindingKind::unstable_loss), nullptr);
}

}  // namespace
}  // namespace gradflow
