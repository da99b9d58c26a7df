// Rules that name a layer without an activation to read, and a loss judged against its start
// before any spike: dead_layer, unstable_loss's baseline, a tap's declared activation.
#include <cmath>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "gradflow/diagnosis.h"

namespace gradflow {
namespace {

const Finding* get(const std::vector<Finding>& fs, FindingKind k) {
  for (const auto& f : fs)
    if (f.kind == k) return &f;
  return nullptr;
}

std::string describe(const std::vector<Finding>& fs) {
  std::string out;
  for (const auto& f : fs) out += std::string(to_string(f.kind)) + " @ " + f.where + ": " + f.message + " | " + f.remedy + "\n";
  return out;
}

// An MLP fc1 -> relu -> fc2 -> relu -> fc3 as the Python Monitor records it: each layer's weight,
// bias and output, the outputs chained (SeriesInfo::inputs).
struct Mlp {
  Trace t;
  struct Layer {
    int weight, bias, output;
  };
  std::vector<Layer> layers;
  Mlp() {
    int previous = -1;
    for (const char* name : {"fc1", "fc2", "fc3"}) {
      const std::string n = name;
      Layer l{t.intern(n + ".weight", SeriesKind::parameter, n, {16, 16}),
              t.intern(n + ".bias", SeriesKind::parameter, n, {16}), t.intern(n, SeriesKind::activation, n, {8, 16})};
      if (previous >= 0) t.add_input(l.output, previous);
      previous = l.output;
      layers.push_back(l);
    }
  }
  // One figure per series: the gradient's RMS (0: exactly zero) and the parameter's own RMS.
  static Record rec(int series, std::int64_t numel, double rms, double weight_rms = std::nan("")) {
    Record r;
    r.series = series;
    r.grad.numel = numel;
    r.grad.sum_sq = rms * rms * static_cast<double>(numel);
    r.grad.max_abs = rms;
    if (rms == 0.0) r.grad.zeros = numel;
    r.weight_norm = weight_rms * std::sqrt(static_cast<double>(numel));
    return r;
  }
  // grad[k] = {weight, bias, output} RMS of layer k; bias_rms[k] the bias's own RMS.
  void step(std::int64_t s, const std::vector<std::vector<double>>& grad, const std::vector<double>& bias_rms = {0.05, 0.05, 0.05}) {
    StepRecord st;
    st.step = s;
    for (std::size_t k = 0; k < layers.size(); ++k) {
      st.records.push_back(rec(layers[k].weight, 256, grad[k][0], 0.15));  // rows of norm 0.6
      st.records.push_back(rec(layers[k].bias, 16, grad[k][1], bias_rms[k]));
      st.records.push_back(rec(layers[k].output, 128, grad[k][2]));
    }
    t.add_step(st);
  }
};

const std::vector<std::vector<double>> kHealthy = {{0.01, 0.02, 0.02}, {0.02, 0.03, 0.03}, {0.05, 0.1, 0.1}};
// fc2's ReLU inactive for every input: fc2 passes nothing back, fc1 receives nothing, fc3's
// weight sees only zero inputs; fc3's bias and output still receive the loss's gradient.
const std::vector<std::vector<double>> kDeadBelowFc3 = {{0, 0, 0}, {0, 0, 0}, {0, 0.1, 0.1}};

TEST(DeadLayer, AHealthyNetworkHasNone) {
  Mlp m;
  for (int s = 0; s < 10; ++s) m.step(s, kHealthy);
  const auto f = diagnose(m.t, {}, {}, ModelTraits{});
  EXPECT_EQ(get(f, FindingKind::dead_layer), nullptr) << describe(f);
}

TEST(DeadLayer, ALargeNegativeBiasKillsTheNetworkWithNoActivationDeclared) {
  Mlp m;
  for (int s = 0; s < 10; ++s) m.step(s, kDeadBelowFc3, {0.05, 20.0, 0.05});
  const auto f = diagnose(m.t, {}, {}, ModelTraits{});  // no activation told
  const Finding* d = get(f, FindingKind::dead_layer);
  ASSERT_NE(d, nullptr) << describe(f);
  EXPECT_EQ(d->severity, Severity::error);
  EXPECT_EQ(d->where, "fc1 .. fc2 (2 layers)");
  EXPECT_NE(d->message.find("the network died: no layer below its last one, fc3, received any gradient (fc1, fc2 at "
                            "every recorded step from 0 to 9 (10 steps))"),
            std::string::npos)
      << d->message;
  EXPECT_NE(d->message.find("the gradient stops at fc2"), std::string::npos) << d->message;
  // The cause the numbers show: fc2's bias (RMS 20) outweighs its weight rows (norm 0.6).
  EXPECT_NE(d->remedy.find("fc2.bias has RMS 20, above the norm of the weight rows (0.6)"), std::string::npos) << d->remedy;
  EXPECT_EQ(d->remedy.find("fc1"), std::string::npos) << "fc1 starves below fc2: " << d->remedy;
  // Not also a no_gradient (fc3's bias trains) nor a second finding for the same cut.
  EXPECT_EQ(get(f, FindingKind::no_gradient), nullptr);
  EXPECT_EQ(get(f, FindingKind::dead_units), nullptr) << describe(f);
}

TEST(DeadLayer, ADeathDuringTrainingIsBlamedOnTheUpdateThatCausedIt) {
  Mlp m;
  for (int s = 0; s < 5; ++s) m.step(s, kHealthy);
  for (int s = 5; s < 150; ++s) m.step(s, kDeadBelowFc3);
  const auto f = diagnose(m.t, {}, {}, ModelTraits{});
  const Finding* d = get(f, FindingKind::dead_layer);
  ASSERT_NE(d, nullptr) << describe(f);
  EXPECT_NE(d->message.find("from 5 to 149 (145 steps)"), std::string::npos) << d->message;
  EXPECT_NE(d->remedy.find("fc2 received gradient until step 4, then a training update"), std::string::npos) << d->remedy;
  EXPECT_NE(d->remedy.find("a smaller learning rate"), std::string::npos);
  // From the first step, with a small bias: the initialisation.
  Mlp born;
  for (int s = 0; s < 5; ++s) born.step(s, kDeadBelowFc3);
  const auto born_findings = diagnose(born.t, {}, {}, ModelTraits{});
  const Finding* b = get(born_findings, FindingKind::dead_layer);
  ASSERT_NE(b, nullptr);
  EXPECT_NE(b->remedy.find("fc2: dead from the first recorded step: an initialisation"), std::string::npos) << b->remedy;
}

TEST(DeadLayer, AFewZeroStepsOrAZeroThatIsOnlySmallAreNotDead) {
  Mlp brief;
  for (int s = 0; s < 10; ++s) brief.step(s, s == 3 || s == 4 ? kDeadBelowFc3 : kHealthy);
  EXPECT_EQ(get(diagnose(brief.t, {}, {}, ModelTraits{}), FindingKind::dead_layer), nullptr);
  Mlp tiny;
  const std::vector<std::vector<double>> small = {{1e-30, 1e-30, 1e-30}, {1e-30, 1e-30, 1e-30}, {0.05, 0.1, 0.1}};
  for (int s = 0; s < 10; ++s) tiny.step(s, small);
  EXPECT_EQ(get(diagnose(tiny.t, {}, {}, ModelTraits{}), FindingKind::dead_layer), nullptr);
  // Zero below a layer whose own gradient is already at float's smallest values: an underflow
  // that shrank gradually (vanishing), not a cut.
  Mlp underflow;
  const std::vector<std::vector<double>> denormal = {{0, 0, 0}, {0, 0, 0}, {1e-40, 1e-40, 1e-40}};
  for (int s = 0; s < 10; ++s) underflow.step(s, denormal);
  EXPECT_EQ(get(diagnose(underflow.t, {}, {}, ModelTraits{}), FindingKind::dead_layer), nullptr);
  // Every layer zero: nothing trains at all, which no_gradient says (no other layer to compare).
  Mlp none;
  const std::vector<std::vector<double>> zero = {{0, 0, 0}, {0, 0, 0}, {0, 0, 0}};
  for (int s = 0; s < 10; ++s) none.step(s, zero);
  const auto f = diagnose(none.t, {}, {}, ModelTraits{});
  EXPECT_EQ(get(f, FindingKind::dead_layer), nullptr);
  EXPECT_NE(get(f, FindingKind::no_gradient), nullptr);
}

// A recorded trace may give a tap as a layer's input (trace.json allows any earlier series): it is
// no layer and feeds none, and the rule reads the rest.
TEST(DeadLayer, AnInputThatIsNoLayerIsPassedOver) {
  Trace t;
  const int tap = t.intern("h.1", SeriesKind::tap, "h", {8, 16});
  const int fc1 = t.intern("fc1", SeriesKind::activation, "fc1", {8, 16});
  const int fc2 = t.intern("fc2", SeriesKind::activation, "fc2", {8, 16});
  t.add_input(fc1, tap);
  t.add_input(fc2, fc1);
  for (int s = 0; s < 5; ++s) {
    StepRecord st;
    st.step = s;
    for (int series : {tap, fc1, fc2}) st.records.push_back(Mlp::rec(series, 128, series == fc1 ? 0.0 : 0.1));
    t.add_step(st);
  }
  const auto f = diagnose(t, {}, {}, ModelTraits{});
  const Finding* d = get(f, FindingKind::dead_layer);
  ASSERT_NE(d, nullptr) << describe(f);
  EXPECT_EQ(d->where, "fc1");
}

TEST(DeadLayer, ALayerDeadInTheMiddleIsNamedWithItsWindow) {
  Mlp m;
  // fc1 alone receives 0 (a mask on its output) while fc2 and fc3 train.
  const std::vector<std::vector<double>> masked = {{0, 0, 0}, {0.02, 0.03, 0.03}, {0.05, 0.1, 0.1}};
  for (int s = 0; s < 20; ++s) m.step(s, s >= 8 && s < 14 ? masked : kHealthy);
  const auto f = diagnose(m.t, {}, {}, ModelTraits{});
  const Finding* d = get(f, FindingKind::dead_layer);
  ASSERT_NE(d, nullptr);
  EXPECT_EQ(d->where, "fc1");
  EXPECT_NE(d->message.find("1 layer(s) received exactly 0 gradient, parameters and output alike, while 2 other layer(s) "
                            "received some (fc2 among them): fc1 at every recorded step from 8 to 13 (6 steps)"),
            std::string::npos)
      << d->message;
}

TEST(DeadLayer, AStalledLossPointsAtTheDeadLayerNotAtTheLearningRate) {
  Mlp m;
  std::vector<double> loss;
  for (int s = 0; s < 40; ++s) {
    m.step(s, kDeadBelowFc3, {0.05, 20.0, 0.05});
    loss.push_back(2.30 + 0.001 * std::sin(s));
  }
  const auto f = diagnose(m.t, loss, {}, ModelTraits{});
  const Finding* st = get(f, FindingKind::stalled);
  ASSERT_NE(st, nullptr) << describe(f);
  EXPECT_EQ(st->remedy.find("a larger learning rate"), std::string::npos) << st->remedy;
  EXPECT_NE(st->remedy.find("fc1 .. fc2 (2 layers), see dead_layer"), std::string::npos) << st->remedy;
}

// Nothing receives gradient after the first steps (one update saturated a softmax): the stalled
// loss points at that, not at a larger learning rate.
TEST(DeadLayer, AStalledLossWithNoGradientPointsAtTheUpdateThatCausedIt) {
  Mlp m;
  const std::vector<std::vector<double>> zero = {{0, 0, 0}, {0, 0, 0}, {0, 0, 0}};
  for (int s = 0; s < 30; ++s) m.step(s, s < 2 ? kHealthy : zero);
  const auto f = diagnose(m.t, std::vector<double>(30, 0.69), {}, ModelTraits{});
  const Finding* none = get(f, FindingKind::no_gradient);
  ASSERT_NE(none, nullptr) << describe(f);
  EXPECT_NE(none->remedy.find("the gradient was not 0 until step 1: a training update"), std::string::npos) << none->remedy;
  const Finding* st = get(f, FindingKind::stalled);
  ASSERT_NE(st, nullptr) << describe(f);
  EXPECT_NE(st->remedy.find("nothing receives gradient (steps 2 .. 29, see no_gradient)"), std::string::npos) << st->remedy;
  EXPECT_EQ(st->remedy.find("a larger learning rate"), std::string::npos) << st->remedy;
}

// A tap's declared activation decides how its forward statistics are read, whatever the model's
// traits say (a C++ VAE tapped with Activation::sigmoid and no traits).
TEST(TapActivation, TheDeclaredActivationDrivesSaturationAndDeadUnits) {
  Trace t;
  const int sig = t.intern("h.1", SeriesKind::tap, "h", {8, 4});
  const int relu = t.intern("h.2", SeriesKind::tap, "h", {8, 4});
  t.set_activation(sig, Activation::sigmoid);
  t.set_activation(relu, Activation::relu);
  StepRecord st;
  for (int s : {sig, relu}) {
    Record r;
    r.series = s;
    r.grad.numel = 32;
    r.grad.sum_sq = 1;
    r.forward = ActivationStats{0.5, 0.4, 0.8, 0.85, 0.02};
    st.records.push_back(r);
  }
  t.add_step(st);
  for (Activation model : {Activation::none, Activation::sigmoid, Activation::relu}) {
    ModelTraits traits;
    traits.activation = model;
    const auto f = diagnose(t, {}, {}, traits);
    const Finding* s = get(f, FindingKind::saturation);
    const Finding* d = get(f, FindingKind::dead_units);
    ASSERT_NE(s, nullptr) << to_string(model) << "\n" << describe(f);
    ASSERT_NE(d, nullptr) << to_string(model) << "\n" << describe(f);
    EXPECT_EQ(s->where, "h.1");
    EXPECT_EQ(d->where, "h.2");
  }
}

// Losses of a real run: an MLP classifier fine-tuned with SGD (momentum 0.9) at a learning rate
// of 1 after 40 steps at 0.05; the loss leaves 0.63 at once, peaks at 720 and settles at chance,
// ln 10 = 2.3, the ReLUs dead (tests/python/real_models.py, run_mlp_finetune).
const std::vector<double> kDivergedEarly = {
    0.6276, 13.24, 27.92, 419.2, 720.3, 8.236, 18.34, 4.884, 19.4, 9.588, 3.686, 3.253, 13.9, 3.795, 2.783, 2.451,
    2.377, 2.419, 2.534, 3.843, 2.586, 2.443, 2.424, 2.508, 2.453, 2.442, 2.27, 2.273, 2.303, 2.339, 2.422, 2.565,
    2.329, 8.271, 2.385, 2.472, 2.371, 2.365, 24.16, 3.057, 2.359, 2.299, 2.345, 2.441, 2.356, 2.29, 2.283, 2.321,
    2.354, 2.356, 2.367, 2.308, 2.298, 2.267, 2.344, 2.337, 2.387, 2.484, 2.351, 2.322, 2.322, 2.299, 2.296,
    2.322, 2.298, 2.409, 2.377, 2.391, 2.271, 2.337, 2.327, 2.349, 2.364, 4.91, 2.313, 2.338, 2.338, 2.355, 2.366,
    2.364, 2.346, 2.341, 2.373, 2.366, 2.317, 2.39, 2.331, 2.377, 2.329, 2.27, 74.71, 2.457, 2.397, 2.265, 2.302,
    2.319, 2.33, 2.411, 2.351, 2.34, 2.368, 2.323, 2.309, 26.35, 2.348, 2.371, 2.356, 2.365, 2.324, 2.332, 2.372,
    2.397, 2.341, 2.32, 2.379, 2.329, 2.36, 2.424, 2.374, 2.388, 2.322, 2.324, 2.306, 2.359, 2.336, 2.389, 2.291,
    2.315, 2.364, 2.338, 2.377, 2.348, 2.291, 2.351, 2.359, 2.34, 2.39, 2.313, 2.315, 2.295, 2.276, 2.273, 2.389,
    2.31, 2.405, 2.356, 2.39, 2.27, 2.312, 2.342
};
// The same fine-tuning at 0.02, one batch of inputs scaled by 30 at step 20: a spike to 13 that
// training comes back from.
const std::vector<double> kSpikeThatRecovered = {
    0.6276, 1.016, 0.905, 0.4887, 0.5554, 0.6528, 0.3418, 0.5415, 0.4224, 0.4177, 0.5769, 0.6362, 0.5141, 0.5707,
    0.1587, 0.4536, 0.4961, 0.5983, 0.4489, 0.3845, 12.95, 1.805, 6.902, 9.951, 8.987, 8.366, 6.583, 5.292, 4.499,
    5.648, 3.373, 2.661, 2.85, 1.864, 1.849, 1.634, 1.732, 1.705, 1.71, 1.645, 1.839, 1.845, 1.937, 2.05, 1.641,
    1.703, 1.461, 1.498, 1.626, 1.371, 1.257, 1.376, 1.18, 1.122, 1.509, 1.379, 1.037, 1.337, 1.164, 1.114,
    0.9568, 1.166, 1.101, 1.352, 0.8423, 0.9659, 1.008, 1.424, 1.237, 1.007, 0.88, 1.113, 1.084, 0.7145, 0.8182,
    0.8967, 0.6544, 0.8334, 0.7084, 0.9589, 0.9026, 0.9406, 0.8216, 0.5849, 0.6326, 0.6034, 0.8248, 0.623, 0.501,
    0.5157, 0.5345, 0.7641, 0.743, 0.7776, 0.733, 0.4077, 0.6127, 0.9256, 0.8097, 0.6281, 0.6771, 0.7429, 0.7223,
    0.5535, 0.576, 0.3212, 0.4122, 0.441, 0.5422, 0.5532, 0.6077, 0.4792, 0.5464, 0.6928, 0.6288, 0.535, 0.656,
    0.4962, 0.6728, 0.4824, 0.2783, 0.4572, 0.4741, 0.4415, 0.604, 0.3825, 0.5098, 0.7695, 0.5689, 0.5169, 0.4716,
    0.6349, 0.4681, 0.4267, 0.5093, 0.6023, 0.6286, 0.5277, 0.5298, 0.5552, 0.3555, 0.4456, 0.7227, 0.5127,
    0.4033, 0.5449, 0.5611, 0.3682, 0.3188, 0.5182
};

TEST(LossBaseline, AnEarlyDivergenceThatStaysUpIsDivergedNotRecovered) {
  Mlp m;
  for (std::size_t s = 0; s < kDivergedEarly.size(); ++s) m.step(static_cast<std::int64_t>(s), kHealthy);
  const auto f = diagnose(m.t, kDivergedEarly, {}, ModelTraits{});
  const Finding* u = get(f, FindingKind::unstable_loss);
  ASSERT_NE(u, nullptr) << describe(f);
  EXPECT_EQ(u->severity, Severity::error);
  EXPECT_EQ(u->message.find("recovered"), std::string::npos) << u->message;
  EXPECT_NE(u->message.find("the loss diverged: it reached 720 at step 4, 1.15e+03x its level before the spike at step 0, "
                            "and did not come back: 2.332 over the last tenth of the run, 3.72x that level"),
            std::string::npos)
      << u->message;
}

TEST(LossBaseline, ASpikeThatCameBackNearItsStartRecovered) {
  Mlp m;
  for (std::size_t s = 0; s < kSpikeThatRecovered.size(); ++s) m.step(static_cast<std::int64_t>(s), kHealthy);
  const auto f = diagnose(m.t, kSpikeThatRecovered, {}, ModelTraits{});
  const Finding* u = get(f, FindingKind::unstable_loss);
  ASSERT_NE(u, nullptr) << describe(f);
  EXPECT_EQ(u->severity, Severity::warning);
  EXPECT_NE(u->message.find("the loss spiked to 12.9 (28.5x its level before the spike, the median of steps 13 .. 19)"),
            std::string::npos)
      << u->message;
  EXPECT_NE(u->message.find("at step 20 and recovered"), std::string::npos) << u->message;
}

TEST(LossBaseline, TheLevelIsTheMedianJustBeforeTheSpike) {
  Mlp m;
  for (int s = 0; s < 100; ++s) m.step(s, kHealthy);
  // 1.0 for steps 0..5, a spike at 6 (inside the first tenth), then 1.4 (near that level) or 3
  // (three times it) to the end.
  for (double plateau : {1.4, 3.0}) {
    std::vector<double> loss(100, plateau);
    for (int s = 0; s < 6; ++s) loss[s] = 1.0;
    loss[6] = 50;
    const auto f = diagnose(m.t, loss, {}, ModelTraits{});
    const Finding* u = get(f, FindingKind::unstable_loss);
    ASSERT_NE(u, nullptr);
    EXPECT_NE(u->message.find("its level before the spike, the median of steps 1 .. 5"), std::string::npos) << u->message;
    EXPECT_EQ(u->severity, plateau < 1.5 ? Severity::warning : Severity::error) << u->message;
  }
  // A late spike after training brought the loss down: judged against the trained level, not the
  // untrained start (a run back at chance level after it did not recover; one that keeps most of
  // what it had gained did).
  std::vector<double> late(100);
  for (int s = 0; s < 100; ++s) late[s] = s < 60 ? 2.3 * std::exp(-0.08 * s) + 0.05 : 2.2;
  late[60] = 190;
  const auto f = diagnose(m.t, late, {}, ModelTraits{});
  const Finding* u = get(f, FindingKind::unstable_loss);
  ASSERT_NE(u, nullptr);
  EXPECT_EQ(u->severity, Severity::error) << u->message;
  EXPECT_NE(u->message.find("did not come back: 2.2 over the last tenth"), std::string::npos) << u->message;
  for (int s = 61; s < 100; ++s) late[s] = 0.19;  // twice the level before the spike (0.09), far below the start
  const auto g = diagnose(m.t, late, {}, ModelTraits{});
  const Finding* v = get(g, FindingKind::unstable_loss);
  ASSERT_NE(v, nullptr);
  EXPECT_EQ(v->severity, Severity::warning) << v->message;
  EXPECT_NE(v->message.find("at step 60 and recovered: 0.19 over the last tenth"), std::string::npos) << v->message;
}

// Back at its level, but the blow-up killed the network: the loss sits at chance, not recovered.
TEST(LossBaseline, ALossBackAtItsLevelWithTheNetworkKilledDidNotRecover) {
  Mlp m;
  std::vector<double> loss;
  for (int s = 0; s < 60; ++s) {
    m.step(s, s < 5 ? kHealthy : kDeadBelowFc3);
    loss.push_back(s == 4 ? 1e4 : 2.30);
  }
  const auto f = diagnose(m.t, loss, {}, ModelTraits{});
  const Finding* u = get(f, FindingKind::unstable_loss);
  ASSERT_NE(u, nullptr) << describe(f);
  EXPECT_EQ(u->severity, Severity::error);
  EXPECT_NE(u->message.find("did not recover, though it ends at 2.3 (1x that level): fc1, fc2 received gradient before "
                            "and none at the end of the run (dead_layer)"),
            std::string::npos)
      << u->message;
}

}  // namespace
}  // namespace gradflow
