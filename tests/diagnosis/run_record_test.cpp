#include "gradflow/run_record.h"

#include <algorithm>
#include <cmath>
#include <map>

#include <gtest/gtest.h>

#include "gradflow/error.h"

namespace gradflow {
namespace {

// A run with every field set to something other than its default.
RunRecord full_run() {
  RunRecord r;
  r.spec = "mlp:depth=3,act=tanh";
  r.label = "tanh3";
  r.family = "mlp";
  r.task = "teacher";
  r.task_description = "labels from a teacher";
  r.config = {{"act", "tanh", ConfigRole::remedy}, {"depth", "3"}, {"lr", "0.05"}, {"every", "2", ConfigRole::recording}};
  r.sweep = {SweepAxis::depth, "tanh", 3};
  r.layers = {{"fc0", "linear", 1}, {"fc1", "linear", 2}};
  r.traits.activation = Activation::tanh;
  r.traits.init = InitSpec{Init::normal, 0.2};
  r.traits.norm = Norm::layer;
  r.traits.residual = true;
  r.traits.clip_norm = 1.5;
  r.traits.clip_value = 0.25;
  r.traits.forget_bias = 1.0;
  r.traits.recurrent_scale = 0.9;
  const int h1 = r.trace.intern("h.1", SeriesKind::tap, "h", {4, 8});
  const int h2 = r.trace.intern("h.2", SeriesKind::tap, "h", {4, 8});
  r.trace.saturation_threshold = 0.05;
  for (int s = 0; s < 3; ++s) {
    StepRecord st;
    st.step = 2 * s;
    st.loss = 2.0 - 0.5 * s;
    for (int series : {h1, h2}) {
      Record rec;
      rec.series = series;
      rec.grad.numel = 32;
      rec.grad.sum_sq = std::pow(10.0, series == h1 ? -12 - s : -s);  // dL/dh vanishes: a finding
      rec.grad.sum = 0.01 * (s + 1);
      rec.grad.max_abs = 0.3;
      rec.grad.zeros = series;
      rec.forward = ActivationStats{0.1, 0.9, 0.0, 0.25, 0.6};
      st.records.push_back(rec);
    }
    r.trace.add_step(st);
  }
  r.loss = {2.0, 1.7, 1.5, 1.2, 1.0, 0.9};
  r.accuracy = {0.1, 0.2, 0.3, 0.4, 0.5, 0.6};
  r.steps_requested = 8;
  r.steps_done = 6;
  r.clipped_steps = 2;
  r.baseline_loss = 2.3;
  r.tiny = 1e-45;
  r.wall_seconds = 1.25;
  r.interrupted = true;
  r.stopped_on_nonfinite = true;
  r.analyse();
  return r;
}

void expect_same_attenuation(const std::optional<Attenuation>& a, const std::optional<Attenuation>& b) {
  ASSERT_EQ(a.has_value(), b.has_value());
  if (!a) return;
  EXPECT_EQ(a->log10, b->log10);
  EXPECT_EQ(a->underflow, b->underflow);
  EXPECT_EQ(a->overflow, b->overflow);
  EXPECT_EQ(a->span, b->span);
  EXPECT_EQ(a->from, b->from);
  EXPECT_EQ(a->to, b->to);
}

TEST(RunRecord, SaveThenReloadGivesEveryFieldBack) {
  const RunRecord a = full_run();
  const RunRecord b = run_from_json(run_to_json(a));
  EXPECT_EQ(b.spec, a.spec);
  EXPECT_EQ(b.label, a.label);
  EXPECT_EQ(b.family, a.family);
  EXPECT_EQ(b.task, a.task);
  EXPECT_EQ(b.task_description, a.task_description);
  // JSON objects keep keys sorted: compare as a map, with roles.
  ASSERT_EQ(b.config.size(), a.config.size());
  for (const auto& e : a.config) {
    EXPECT_EQ(b.config_value(e.key), e.value) << e.key;
    const auto it = std::find_if(b.config.begin(), b.config.end(), [&](const ConfigEntry& x) { return x.key == e.key; });
    ASSERT_NE(it, b.config.end());
    EXPECT_EQ(it->role, e.role) << e.key;
  }
  EXPECT_EQ(b.sweep.axis, a.sweep.axis);
  EXPECT_EQ(b.sweep.base, a.sweep.base);
  EXPECT_EQ(b.sweep.value, a.sweep.value);
  ASSERT_EQ(b.layers.size(), a.layers.size());
  EXPECT_EQ(b.layers[1].name, "fc1");
  EXPECT_EQ(b.layers[1].depth, 2);
  EXPECT_EQ(b.traits.activation, Activation::tanh);
  EXPECT_EQ(b.traits.init, a.traits.init);
  EXPECT_EQ(b.traits.norm, Norm::layer);
  EXPECT_TRUE(b.traits.residual);
  EXPECT_EQ(b.traits.clip_norm, 1.5);
  EXPECT_EQ(b.traits.clip_value, 0.25);
  EXPECT_EQ(b.traits.forget_bias, a.traits.forget_bias);
  EXPECT_EQ(b.traits.recurrent_scale, 0.9);
  EXPECT_EQ(b.loss, a.loss);
  EXPECT_EQ(b.accuracy, a.accuracy);
  EXPECT_EQ(b.steps_requested, 8);
  EXPECT_EQ(b.steps_done, 6);
  EXPECT_EQ(b.clipped_steps, 2);
  EXPECT_EQ(b.baseline_loss, 2.3);
  EXPECT_EQ(b.tiny, 1e-45);
  EXPECT_EQ(b.wall_seconds, 1.25);
  EXPECT_TRUE(b.interrupted);
  EXPECT_TRUE(b.stopped_on_nonfinite);
  EXPECT_EQ(b.trace.saturation_threshold, 0.05);
  ASSERT_EQ(b.trace.steps().size(), 3u);
  for (std::size_t s = 0; s < 3; ++s) {
    const auto &sa = a.trace.steps()[s], &sb = b.trace.steps()[s];
    EXPECT_EQ(sb.step, sa.step);
    EXPECT_EQ(sb.loss, sa.loss);
    ASSERT_EQ(sb.records.size(), sa.records.size());
    for (std::size_t k = 0; k < sa.records.size(); ++k) {
      // The file stores the norm, not its square: equal to the last bit or two.
      EXPECT_NEAR(sb.records[k].grad.sum_sq, sa.records[k].grad.sum_sq, 1e-14 * sa.records[k].grad.sum_sq);
      EXPECT_EQ(sb.records[k].grad.zeros, sa.records[k].grad.zeros);
      ASSERT_TRUE(sb.records[k].forward.has_value());
      EXPECT_EQ(sb.records[k].forward->saturated_fraction, 0.25);
    }
  }
  expect_same_attenuation(b.summary.depth, a.summary.depth);
  expect_same_attenuation(b.summary.depth_final, a.summary.depth_final);
  EXPECT_EQ(b.summary.loss_first, a.summary.loss_first);
  EXPECT_EQ(b.summary.recorded_steps, a.summary.recorded_steps);
  ASSERT_EQ(b.findings.size(), a.findings.size());
  for (std::size_t i = 0; i < a.findings.size(); ++i) {
    EXPECT_EQ(b.findings[i].kind, a.findings[i].kind);
    EXPECT_EQ(b.findings[i].message, a.findings[i].message);
    // JSON objects sort their keys: compare the evidence as a map.
    using Evidence = std::map<std::string, double>;
    EXPECT_EQ(Evidence(b.findings[i].evidence.begin(), b.findings[i].evidence.end()),
              Evidence(a.findings[i].evidence.begin(), a.findings[i].evidence.end()));
  }
}

TEST(RunRecord, AnUnknownNameInTheFileIsACorruptFileNotAUsageError) {
  std::string text = run_to_json(full_run());
  const auto at = text.find("\"kind\": \"vanishing");
  ASSERT_NE(at, std::string::npos);
  text.replace(at, 9, "\"kind\": \"bogus_");
  try {
    run_from_json(text, "'x/run.json'");
    FAIL() << "a corrupt run.json was accepted";
  } catch (const UsageError& e) {
    FAIL() << "reported as a usage error: " << e.what();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("corrupt"), std::string::npos) << e.what();
  }
}

TEST(RunRecord, GlobalGradNormIsTheNormOfEveryParameterGradient) {
  Trace t;
  const int w = t.intern("fc.weight", SeriesKind::parameter, "fc", {2, 2});
  const int b = t.intern("fc.bias", SeriesKind::parameter, "fc", {2});
  const int h = t.intern("fc", SeriesKind::activation, "fc");
  StepRecord st;
  for (auto [series, ss] : {std::pair<int, double>{w, 9.0}, {b, 16.0}, {h, 100.0}}) {
    Record r;
    r.series = series;
    r.grad.numel = 2;
    r.grad.sum_sq = ss;
    st.records.push_back(r);
  }
  t.add_step(st);
  const auto g = global_grad_norms(t);
  ASSERT_EQ(g.size(), 1u);
  EXPECT_DOUBLE_EQ(g[0], 5.0);  // sqrt(9 + 16): the activation's gradient is no parameter's
}

}  // namespace
}  // namespace gradflow
