#include "gradflow/diagnosis.h"

#include <cmath>
#include <limits>
#include <random>

#include <gtest/gtest.h>

#include "gradflow/error.h"
#include "gradflow/run_record.h"
#include "gradflow/summary.h"

#include <fmt/format.h>

namespace gradflow {
namespace {

// A trace with hidden-state taps h.1..h.n whose gradient norms are given, weights whose norms
// are given, over `steps` identical recorded steps.
struct TraceBuilder {
  Trace t;
  std::vector<int> h, w;
  TraceBuilder(std::size_t hidden, std::size_t weights) {
    for (std::size_t i = 0; i < weights; ++i)
      w.push_back(t.intern("fc" + std::to_string(i) + ".weight", SeriesKind::parameter, "fc" + std::to_string(i), {4, 4}));
    for (std::size_t i = 0; i < hidden; ++i)
      h.push_back(t.intern("h." + std::to_string(i + 1), SeriesKind::tap, "h", {8, 4}));
  }
  static Record rec(int series, double norm, std::int64_t nonfinite = 0) {
    Record r;
    r.series = series;
    r.grad.numel = 32;
    r.grad.sum_sq = norm * norm;
    r.grad.nonfinite = nonfinite;
    return r;
  }
  void step(std::int64_t s, const std::vector<double>& hn, const std::vector<double>& wn,
            std::optional<ActivationStats> fwd = std::nullopt) {
    StepRecord st;
    st.step = s;
    for (std::size_t i = 0; i < w.size(); ++i) st.records.push_back(rec(w[i], wn[i]));
    for (std::size_t i = 0; i < h.size(); ++i) {
      Record r = rec(h[i], hn[i]);
      r.forward = fwd;
      st.records.push_back(r);
    }
    t.add_step(st);
  }
};

std::vector<double> geometric(std::size_t n, double first, double ratio) {
  std::vector<double> v;
  for (std::size_t i = 0; i < n; ++i) v.push_back(first * std::pow(ratio, static_cast<double>(i)));
  return v;
}

bool has(const std::vector<Finding>& f, FindingKind k) { return has_any(f, {k}); }
const Finding* get(const std::vector<Finding>& fs, FindingKind k) {
  for (const auto& f : fs)
    if (f.kind == k) return &f;
  return nullptr;
}

TEST(Diagnosis, VanishingIsJudgedOnTheBackwardSignal) {
  // h.1 is 1e-6 of h.19: vanishing, with the figure and a remedy that fits a sigmoid net.
  TraceBuilder b(19, 20);
  b.step(0, geometric(19, 1e-6, std::pow(1e6, 1.0 / 18)), std::vector<double>(20, 1.0));
  ModelTraits sig;
  sig.activation = Activation::sigmoid;
  const auto f = diagnose(b.t, {}, {}, sig);
  const Finding* v = get(f, FindingKind::vanishing);
  ASSERT_NE(v, nullptr);
  EXPECT_EQ(v->severity, Severity::error);
  EXPECT_NEAR(v->evidence[0].second, -6.0, 1e-9);
  EXPECT_NE(v->remedy.find("ReLU"), std::string::npos);
  EXPECT_NE(v->remedy.find("residual"), std::string::npos);
  // One order of magnitude is within the threshold: no finding.
  TraceBuilder ok(19, 20);
  ok.step(0, geometric(19, 0.1, std::pow(10.0, 1.0 / 18)), std::vector<double>(20, 1.0));
  EXPECT_FALSE(has(diagnose(ok.t, {}, {}, sig), FindingKind::vanishing));
}

// Measured in PyTorch (depth 20, width 256): a residual sigmoid MLP has |dW_1|/|dW_20| < 1e-2 while
// |dL/dh_1|/|dL/dh_19| ~ 1.1; a ReLU MLP with Xavier init has a weight ratio ~ 1 while dL/dh shrinks
// ~500x. A rule on the weight ratio gets both wrong.
TEST(Diagnosis, WeightGradientRatioDoesNotDecide) {
  TraceBuilder residual(19, 20);
  auto wn = geometric(20, 1e-3, std::pow(1e3, 1.0 / 19));  // first/last weight ratio 1e-3
  residual.step(0, geometric(19, 1.1, std::pow(1 / 1.1, 1.0 / 18)), wn);
  EXPECT_FALSE(has(diagnose(residual.t, {}, {}, ModelTraits{}), FindingKind::vanishing));
  TraceBuilder xavier(19, 20);
  xavier.step(0, geometric(19, 1.0 / 500, std::pow(500.0, 1.0 / 18)), std::vector<double>(20, 1.0));
  ModelTraits relu;
  relu.activation = Activation::relu;
  relu.init = InitSpec{Init::xavier_normal};
  const auto f = diagnose(xavier.t, {}, {}, relu);
  ASSERT_TRUE(has(f, FindingKind::vanishing));
  EXPECT_NE(get(f, FindingKind::vanishing)->remedy.find("He initialisation"), std::string::npos);
}

TEST(Diagnosis, GrowthTowardTheInputIsReportedHonestly) {
  TraceBuilder bn(19, 20);
  bn.step(0, geometric(19, 30.0, std::pow(1 / 30.0, 1.0 / 18)), std::vector<double>(20, 1.0));  // 30x growth
  ModelTraits t;
  t.norm = Norm::batch;
  t.activation = Activation::relu;
  const auto f = diagnose(bn.t, {}, {}, t);
  const Finding* e = get(f, FindingKind::exploding);
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->severity, Severity::info);  // 1.5 orders: reported, not alarmed
  EXPECT_NE(e->remedy.find("batch norm"), std::string::npos);
  TraceBuilder big(19, 20);
  big.step(0, geometric(19, 1e5, std::pow(1e-5, 1.0 / 18)), std::vector<double>(20, 1.0));
  EXPECT_EQ(get(diagnose(big.t, {}, {}, ModelTraits{}), FindingKind::exploding)->severity, Severity::error);
}

TEST(Diagnosis, TimeVanishingForRecurrentNets) {
  Trace t;
  std::vector<int> ts;
  for (int i = 1; i <= 50; ++i) ts.push_back(t.intern("time." + std::to_string(i), SeriesKind::tap, "time"));
  auto add = [&](std::int64_t step, double ratio) {
    StepRecord st;
    st.step = step;
    for (int i = 0; i < 50; ++i) st.records.push_back(TraceBuilder::rec(ts[i], std::pow(ratio, 49 - i)));
    t.add_step(st);
  };
  add(0, 0.6);   // 0.6^49 ~ 1e-11
  ModelTraits rnn;
  rnn.recurrent = true;
  rnn.cell = Cell::rnn_tanh;
  auto f = diagnose(t, {}, {}, rnn);
  ASSERT_TRUE(has(f, FindingKind::vanishing));
  EXPECT_NE(get(f, FindingKind::vanishing)->remedy.find("LSTM"), std::string::npos);
  Trace healthy;
  for (int i = 1; i <= 50; ++i) healthy.intern("time." + std::to_string(i), SeriesKind::tap, "time");
  StepRecord st;
  for (int i = 0; i < 50; ++i) st.records.push_back(TraceBuilder::rec(i, 1.0));
  healthy.add_step(st);
  EXPECT_FALSE(has(diagnose(healthy, {}, {}, rnn), FindingKind::vanishing));
}

TEST(Diagnosis, DeadUnitsForReluAndSaturationForSigmoid) {
  ActivationStats dead{0.1, 0.2, 0.8, 0.9, 0.1};
  TraceBuilder b(3, 4);
  b.step(0, {1, 1, 1}, {1, 1, 1, 1}, dead);
  ModelTraits relu;
  relu.activation = Activation::relu;
  auto f = diagnose(b.t, {}, {}, relu);
  ASSERT_TRUE(has(f, FindingKind::dead_units));
  EXPECT_FALSE(has(f, FindingKind::saturation));  // inactive ReLUs are not "saturated"
  EXPECT_NE(get(f, FindingKind::dead_units)->where.find("3 layers"), std::string::npos);
  ModelTraits sig;
  sig.activation = Activation::sigmoid;
  f = diagnose(b.t, {}, {}, sig);
  EXPECT_TRUE(has(f, FindingKind::saturation));
  EXPECT_FALSE(has(f, FindingKind::dead_units));
  ActivationStats fine{0.5, 0.2, 0.0, 0.1, 0.2};
  TraceBuilder ok(3, 4);
  ok.step(0, {1, 1, 1}, {1, 1, 1, 1}, fine);
  EXPECT_FALSE(has(diagnose(ok.t, {}, {}, relu), FindingKind::dead_units));
  EXPECT_FALSE(has(diagnose(ok.t, {}, {}, sig), FindingKind::saturation));
}

TEST(Diagnosis, SaturationQuotesTheThresholdTheMonitorUsed) {
  ActivationStats sat{0.5, 0.4, 0.0, 0.8, 0.05};
  TraceBuilder b(2, 2);
  b.t.saturation_threshold = 0.3;
  b.step(0, {1, 1}, {1, 1}, sat);
  ModelTraits sig;
  sig.activation = Activation::sigmoid;
  const auto f = diagnose(b.t, {}, {}, sig);
  ASSERT_TRUE(has(f, FindingKind::saturation));
  EXPECT_NE(get(f, FindingKind::saturation)->message.find("under 30% of its maximum"), std::string::npos)
      << get(f, FindingKind::saturation)->message;
  // The severity follows DiagnosisOptions::severe_unit_fraction.
  EXPECT_EQ(get(f, FindingKind::saturation)->severity, Severity::warning);
  DiagnosisOptions strict;
  strict.severe_unit_fraction = 0.7;
  EXPECT_EQ(get(diagnose(b.t, {}, {}, sig, strict), FindingKind::saturation)->severity, Severity::error);
}

TEST(Diagnosis, NonFiniteGradientOrLoss) {
  TraceBuilder b(2, 2);
  b.step(0, {1, 1}, {1, 1});
  EXPECT_FALSE(has(diagnose(b.t, {1.0, 0.9}, {}, ModelTraits{}), FindingKind::non_finite));
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const auto f = diagnose(b.t, {1.0, nan}, {}, ModelTraits{});
  ASSERT_TRUE(has(f, FindingKind::non_finite));
  EXPECT_NE(get(f, FindingKind::non_finite)->where.find("step 1"), std::string::npos);
  StepRecord st;
  st.step = 1;
  st.records.push_back(TraceBuilder::rec(b.w[1], 1.0, 3));
  b.t.add_step(st);
  const auto g = diagnose(b.t, {}, {}, ModelTraits{});
  ASSERT_TRUE(has(g, FindingKind::non_finite));
  EXPECT_NE(get(g, FindingKind::non_finite)->where.find("fc1.weight at step 1"), std::string::npos);
}

// A parameter held in parts across ranks: the finding names the ranks whose part held the first
// non-finite value; a whole parameter's names none.
TEST(Diagnosis, NonFiniteGradientOfAShardedParameterNamesTheRanksHoldingIt) {
  for (const bool sharded : {true, false}) {
    TraceBuilder b(0, 2);
    if (sharded) b.t.set_shards(b.w[1], 4);
    b.step(0, {}, {1, 1});
    StepRecord st;
    st.step = 1;
    Record r = TraceBuilder::rec(b.w[1], 1.0, 2);
    for (std::int64_t nonfinite : {0, 1, 0, 1}) {
      TensorStats part;
      part.numel = 8;
      part.nonfinite = nonfinite;
      r.ranks.push_back(part);
    }
    st.records.push_back(r);
    b.t.add_step(st);
    const auto f = diagnose(b.t, {}, {}, ModelTraits{});
    ASSERT_TRUE(has(f, FindingKind::non_finite));
    const std::string& message = get(f, FindingKind::non_finite)->message;
    const std::string named = "in fc1.weight at step 1 (in the parts held by ranks 1, 3, of 4 ranks)";
    EXPECT_EQ(message.find(named) != std::string::npos, sharded) << message;
    EXPECT_EQ(message.find("rank") != std::string::npos, sharded) << message;
  }
}

// Several tensors non-finite in the first such step: all are counted and named, none called the
// first (the records' order is not backward's). At step 0, before any update, the remedy is the
// initialisation, not the step size; later, the step size.
TEST(Diagnosis, NonFiniteAtTheFirstStepNamesEveryTensorAndPointsAtTheInitialisation) {
  for (const std::int64_t first : {0, 1}) {
    TraceBuilder b(0, 4);
    if (first == 1) b.step(0, {}, {1, 1, 1, 1});
    StepRecord st;
    st.step = first;
    for (std::size_t i = 0; i < b.w.size(); ++i) st.records.push_back(TraceBuilder::rec(b.w[i], 1.0, i == 0 ? 0 : 5));
    b.t.add_step(st);
    const auto f = diagnose(b.t, {}, {}, ModelTraits{});
    ASSERT_TRUE(has(f, FindingKind::non_finite));
    const Finding* nf = get(f, FindingKind::non_finite);
    EXPECT_NE(nf->message.find(fmt::format("first non-finite gradients at step {}, in 3 of 4 recorded tensors "
                                           "(fc1.weight, fc2.weight, fc3.weight)", first)),
              std::string::npos)
        << nf->message;
    EXPECT_EQ(nf->remedy.find("initialisation") != std::string::npos, first == 0) << nf->remedy;
  }
}

// Steps recorded, the parameters hooked, and not one parameter gradient: not_recorded says so;
// one parameter record, or a Monitor that did not hook parameters, silences it.
TEST(Diagnosis, StepsWithoutASingleParameterGradientAreNotRecorded) {
  for (const int variant : {0, 1, 2}) {
    TraceBuilder b(2, 1);
    b.t.parameter_gradients = variant != 2;
    for (std::int64_t s = 0; s < 3; ++s) {
      StepRecord st;
      st.step = s;
      for (int h : b.h) st.records.push_back(TraceBuilder::rec(h, 1.0));
      if (variant == 1 && s == 2) st.records.push_back(TraceBuilder::rec(b.w[0], 1.0));
      b.t.add_step(st);
    }
    const auto f = diagnose(b.t, {}, {}, ModelTraits{});
    const Finding* nr = get(f, FindingKind::not_recorded);
    ASSERT_EQ(nr != nullptr, variant == 0) << variant;
    if (nr) {
      EXPECT_EQ(nr->where, "every parameter");
      EXPECT_NE(nr->message.find("3 steps were recorded, but not one parameter gradient"), std::string::npos) << nr->message;
    }
  }
}

// Gradients exactly 0 (a zero count equal to the element count), not merely small.
TEST(Diagnosis, EveryGradientExactlyZeroForSeveralStepsIsNoGradient) {
  const auto zero_step = [](TraceBuilder& b, std::int64_t s, bool one_alive) {
    StepRecord st;
    st.step = s;
    for (std::size_t i = 0; i < b.w.size(); ++i) {
      Record r = TraceBuilder::rec(b.w[i], one_alive && i == 0 ? 1e-30 : 0.0);
      r.grad.zeros = one_alive && i == 0 ? 31 : r.grad.numel;
      st.records.push_back(r);
    }
    b.t.add_step(st);
  };
  TraceBuilder dead(0, 3);
  for (int s = 0; s < 6; ++s) zero_step(dead, 10 * s, s == 0 || s == 5);
  const auto f = diagnose(dead.t, {}, {}, ModelTraits{});
  const Finding* g = get(f, FindingKind::no_gradient);
  ASSERT_NE(g, nullptr);
  EXPECT_EQ(g->severity, Severity::error);
  EXPECT_EQ(g->where, "steps 10 .. 40");
  EXPECT_NE(g->message.find("4 of 6 recorded steps"), std::string::npos) << g->message;
  // Two zero steps in a row are not enough; a gradient of 1e-30 is not zero.
  TraceBuilder brief(0, 3);
  for (int s = 0; s < 6; ++s) zero_step(brief, s, s % 3 == 2);
  EXPECT_FALSE(has(diagnose(brief.t, {}, {}, ModelTraits{}), FindingKind::no_gradient));
  TraceBuilder tiny(0, 3);
  for (int s = 0; s < 6; ++s) zero_step(tiny, s, true);
  EXPECT_FALSE(has(diagnose(tiny.t, {}, {}, ModelTraits{}), FindingKind::no_gradient));
}

TEST(Diagnosis, ExplodingGradientNormDuringTraining) {
  TraceBuilder b(1, 1);
  b.step(0, {1}, {1});
  const auto grew = diagnose(b.t, {}, {1.0, 10.0, 1e4, 1e5, 1e5}, ModelTraits{});
  ASSERT_TRUE(has(grew, FindingKind::exploding));
  EXPECT_EQ(get(grew, FindingKind::exploding)->severity, Severity::error);
  EXPECT_FALSE(has(diagnose(b.t, {}, {1.0, 10.0, 100.0}, ModelTraits{}), FindingKind::exploding));
  // One step's peak (a corrupt batch) that is gone at the next: information, not an explosion.
  const auto once = diagnose(b.t, {}, {1.0, 1.2, 0.9, 5e3, 1.5, 1.1, 1.0}, ModelTraits{});
  ASSERT_TRUE(has(once, FindingKind::exploding));
  EXPECT_EQ(get(once, FindingKind::exploding)->severity, Severity::info);
  EXPECT_NE(get(once, FindingKind::exploding)->message.find("fell back within 3 recorded steps"), std::string::npos);
}

TEST(Diagnosis, StalledAndUnstableLoss) {
  TraceBuilder b(1, 1);
  b.step(0, {1}, {1});
  std::vector<double> flat(100, 2.3), falling, diverging, oscillating;
  for (int i = 0; i < 100; ++i) {
    falling.push_back(2.3 * std::exp(-i / 30.0));
    diverging.push_back(i < 50 ? 2.0 : 2.0 * std::pow(1.2, i - 50));
    oscillating.push_back((i / 5) % 2 ? 3.0 : 1.0);
  }
  EXPECT_TRUE(has(diagnose(b.t, flat, {}, ModelTraits{}), FindingKind::stalled));
  EXPECT_FALSE(has(diagnose(b.t, falling, {}, ModelTraits{}), FindingKind::stalled));
  EXPECT_FALSE(has(diagnose(b.t, falling, {}, ModelTraits{}), FindingKind::unstable_loss));
  EXPECT_EQ(get(diagnose(b.t, diverging, {}, ModelTraits{}), FindingKind::unstable_loss)->severity, Severity::error);
  EXPECT_TRUE(has(diagnose(b.t, oscillating, {}, ModelTraits{}), FindingKind::unstable_loss));
  // Mini-batch noise of +-20% around a falling trend is not oscillation.
  std::vector<double> noisy;
  for (int i = 0; i < 200; ++i) noisy.push_back(falling[i / 2] * (i % 2 ? 1.2 : 0.8));
  EXPECT_FALSE(has(diagnose(b.t, noisy, {}, ModelTraits{}), FindingKind::unstable_loss));
  // Too few steps to judge a trend.
  EXPECT_FALSE(has(diagnose(b.t, std::vector<double>(10, 2.3), {}, ModelTraits{}), FindingKind::stalled));
}

TEST(Diagnosis, ANoisyConvergedLossIsNotOscillationButARealOscillationIsEvenWhenNoisy) {
  TraceBuilder b(1, 1);
  b.step(0, {1}, {1});
  // pytorch/examples' MNIST net and loop (Adadelta, dropout) on synthetic digits, its loss recorded
  // every 5th of 300 steps: healthy, converging, and near 0.01 noisy enough that two of the
  // second half's five window pairs rise by over 25% from sampling alone.
  const std::vector<double> converged = {
      2.28888,   2.26025,    1.92958,   1.90814,   1.34025,   1.30843,    0.916606,  0.18777,   0.39361,   0.127325,
      0.0680175, 0.147437,   0.105811,  0.0463817, 0.0481474, 0.0384404,  0.0715224, 0.072471,  0.0135859, 0.0589923,
      0.0322929, 0.053003,   0.0928875, 0.0095081, 0.0167123, 0.0232265,  0.0339319, 0.0586371, 0.0161494, 0.0286487,
      0.0168456, 0.0224942,  0.051798,  0.0017254, 0.0142452, 0.0406488,  0.0270798, 0.0014434, 0.0062525, 0.0187155,
      0.0098039, 0.0479776,  0.0027335, 0.0584803, 0.007875,  0.0102551,  0.0259323, 0.0210874, 0.003224,  0.0036641,
      0.0074043, 0.00608742, 0.0007589, 0.0034934, 0.0131867, 0.00767505, 0.0254238, 0.0138379, 0.0078952, 0.0462106};
  EXPECT_FALSE(has(diagnose(b.t, converged, {}, ModelTraits{}), FindingKind::unstable_loss));
  std::mt19937 rng(7);
  std::uniform_real_distribution<double> scatter(0.4, 1.6);
  std::vector<double> oscillating;
  // Windows that alternate between 1 and 2 under the same scatter are oscillation.
  for (int i = 0; i < 60; ++i) oscillating.push_back(((i / 5) % 2 ? 2.0 : 1.0) * (1 + 0.2 * (scatter(rng) - 1)));
  EXPECT_TRUE(has(diagnose(b.t, oscillating, {}, ModelTraits{}), FindingKind::unstable_loss));
}

TEST(Diagnosis, StepRangesNameTrainingStepsWhenTheLossIsOnePerRecordedStep) {
  // Recorded every 5th step, as save_report's loss series: one loss per trace step.
  TraceBuilder b(1, 1);
  for (int k = 0; k < 60; ++k) b.step(5 * k, {1}, {1});
  const auto recorded = diagnose(b.t, std::vector<double>(60, 2.3), {}, ModelTraits{});
  const Finding* stalled = get(recorded, FindingKind::stalled);
  ASSERT_TRUE(stalled);
  EXPECT_EQ(stalled->where, "steps 0 .. 295");
  // The trainer's loss of every step: indices are steps.
  const auto per_step = diagnose(b.t, std::vector<double>(300, 2.3), {}, ModelTraits{});
  const Finding* every_step = get(per_step, FindingKind::stalled);
  ASSERT_TRUE(every_step);
  EXPECT_EQ(every_step->where, "steps 0 .. 299");
  // The gradient norm is one per recorded step: its peak is named by the trace's step.
  std::vector<double> norms(60, 1.0);
  for (int k = 12; k < 60; ++k) norms[k] = 1e5;
  const auto grown = diagnose(b.t, {}, norms, ModelTraits{});
  const Finding* exploding = get(grown, FindingKind::exploding);
  ASSERT_TRUE(exploding);
  EXPECT_EQ(exploding->where, "steps 0 .. 60");
  EXPECT_NE(exploding->message.find("at step 60"), std::string::npos) << exploding->message;
}

// Each loss rule tested on a run where its premise is false.
TEST(Diagnosis, ARisingLossIsNotStalledAndAnAdversarialOneIsNotJudgedOnItsTrend) {
  TraceBuilder b(1, 1);
  b.step(0, {1}, {1});
  std::vector<double> rising;
  for (int i = 0; i < 100; ++i) rising.push_back(1.78 + 4.91 * i / 99.0);  // 1.78 -> 6.69, a GAN generator's
  const auto f = diagnose(b.t, rising, {}, ModelTraits{});
  EXPECT_FALSE(has(f, FindingKind::stalled));
  ASSERT_TRUE(has(f, FindingKind::unstable_loss));
  const Finding& rose = *get(f, FindingKind::unstable_loss);
  EXPECT_NE(rose.message.find("the loss rose"), std::string::npos) << rose.message;
  // The message quotes the numbers it was judged on: the means of the first and last tenth.
  double head = 0, tail = 0;
  for (int i = 0; i < 10; ++i) head += rising[i] / 10, tail += rising[90 + i] / 10;
  EXPECT_NE(rose.message.find(fmt::format("{:.4g} -> {:.4g}", head, tail)), std::string::npos) << rose.message;
  ModelTraits gan;
  gan.adversarial = true;
  const auto g = diagnose(b.t, rising, {}, gan);
  EXPECT_FALSE(has(g, FindingKind::unstable_loss));
  EXPECT_FALSE(has(g, FindingKind::stalled));
  EXPECT_FALSE(has(diagnose(b.t, std::vector<double>(100, 0.7), {}, gan), FindingKind::stalled));
  // A loss that falls 1% is stalled; one that rises 1% too (it barely moved either way).
  std::vector<double> up1;
  for (int i = 0; i < 100; ++i) up1.push_back(2.0 * (1 + 0.01 * i / 99.0));
  EXPECT_TRUE(has(diagnose(b.t, up1, {}, ModelTraits{}), FindingKind::stalled));
  EXPECT_FALSE(has(diagnose(b.t, up1, {}, ModelTraits{}), FindingKind::unstable_loss));
}

TEST(Diagnosis, APartialStepIsNeverJudged) {
  TraceBuilder b(2, 2);
  b.step(0, {1, 1}, {1, 1});
  StepRecord open;  // still open when the trace was read: one backward of a step nobody closed
  open.step = 1;
  open.partial = true;
  open.records.push_back(TraceBuilder::rec(b.w[0], 1.0, /*nonfinite=*/4));
  b.t.add_step(open);
  RunRecord r;
  r.trace = b.t;
  r.loss = {1.0};
  r.analyse();
  EXPECT_FALSE(has(r.findings, FindingKind::non_finite));
  EXPECT_EQ(r.summary.recorded_steps, 1);
  ASSERT_EQ(r.trace.steps().size(), 2u);  // kept, marked
  EXPECT_TRUE(r.trace.steps().back().partial);
  EXPECT_EQ(r.trace.complete_steps().steps().size(), 1u);
}

TEST(Diagnosis, ThresholdsAreConfigurable) {
  TraceBuilder b(10, 11);
  b.step(0, geometric(10, 1e-3, std::pow(1e3, 1.0 / 9)), std::vector<double>(11, 1.0));
  EXPECT_TRUE(has(diagnose(b.t, {}, {}, ModelTraits{}), FindingKind::vanishing));
  DiagnosisOptions lax;
  lax.vanishing_orders = 4;
  EXPECT_FALSE(has(diagnose(b.t, {}, {}, ModelTraits{}, lax), FindingKind::vanishing));
}

TEST(Diagnosis, KindNamesRoundTrip) {
  for (auto k : all_finding_kinds()) EXPECT_EQ(finding_kind_from_string(to_string(k)), k);
  EXPECT_THROW(finding_kind_from_string("sad"), Error);
}

TEST(Summary, UnderflowIsABoundNeverNaN) {
  const auto a = attenuation(0.0, 1e-3, 18, std::numeric_limits<float>::denorm_min());
  ASSERT_TRUE(a.log10.has_value());
  EXPECT_TRUE(a.underflow);
  EXPECT_NEAR(*a.log10, std::log10(static_cast<double>(std::numeric_limits<float>::denorm_min())) + 3, 1e-9);
  const auto inf = attenuation(std::numeric_limits<double>::infinity(), 1.0, 3, 1e-45);
  EXPECT_TRUE(inf.overflow);
  EXPECT_FALSE(inf.log10.has_value());
  const auto none = attenuation(0.0, 0.0, 3, 1e-45);
  EXPECT_FALSE(none.log10.has_value());
  const auto plain = attenuation(1e-4, 1.0, 4, 1e-45);
  EXPECT_NEAR(*plain.log10, -4.0, 1e-12);
  EXPECT_NEAR(*plain.gain(), 0.1, 1e-12);
}

}  // namespace
}  // namespace gradflow

#include "gradflow/run_record.h"

namespace gradflow {
namespace {

// A float64 run whose first hidden gradient is exactly zero: the finding must quote the bound the
// summary computed with the run's own dtype, not a float32 one (they differ by ~280 orders).
TEST(Diagnosis, FindingsQuoteTheRunSummaryFigures) {
  TraceBuilder b(5, 6);
  b.step(0, {0.0, 1e-3, 1e-2, 1e-1, 1.0}, std::vector<double>(6, 1.0));
  RunRecord r;
  r.trace = b.t;
  r.tiny = std::numeric_limits<double>::denorm_min();
  r.analyse();
  ASSERT_TRUE(r.summary.depth && r.summary.depth->underflow && r.summary.depth->log10);
  EXPECT_LT(*r.summary.depth->log10, -300.0);
  const Finding* v = nullptr;
  for (const auto& f : r.findings)
    if (f.kind == FindingKind::vanishing) v = &f;
  ASSERT_NE(v, nullptr);
  EXPECT_EQ(v->evidence[0].first, "attenuation_log10");
  EXPECT_DOUBLE_EQ(v->evidence[0].second, *r.summary.depth->log10);
}

}  // namespace
}  // namespace gradflow
