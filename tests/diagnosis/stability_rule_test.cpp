// edge_of_stability: the measured sharpness against the bound (2 + 2·momentum)/lr, from the
// trace's own numbers; and those numbers survive the trace's files.
#include <gtest/gtest.h>

#include "gradflow/diagnosis.h"
#include "gradflow/trace_io.h"

namespace gradflow {
namespace {

// A trace whose steps measured these sharpnesses (every step) with step size lr.
Trace measured(const std::vector<double>& sharpness, double lr, double momentum = 0.0) {
  Trace t;
  const int w = t.intern("fc.weight", SeriesKind::parameter, "fc", {4});
  for (std::size_t k = 0; k < sharpness.size(); ++k) {
    StepRecord st;
    st.step = static_cast<std::int64_t>(k);
    st.add_loss(1.0 / static_cast<double>(k + 1));
    Record r;
    r.series = w;
    r.grad.numel = 4;
    r.grad.sum_sq = 1.0;
    st.records.push_back(r);
    st.sharpness = sharpness[k];
    st.sharpness_products = 12;
    st.learning_rate = lr;
    st.momentum = momentum;
    t.add_step(st);
  }
  return t;
}

std::vector<double> losses_of(const Trace& t) {
  std::vector<double> l;
  for (const auto& st : t.steps()) l.push_back(*st.loss);
  return l;
}

const Finding* edge(const std::vector<Finding>& fs) {
  for (const auto& f : fs)
    if (f.kind == FindingKind::edge_of_stability) return &f;
  return nullptr;
}

TEST(EdgeOfStability, AtTheBoundWithAFallingLossIsInformation) {
  // lr 0.01: the bound is 200; the sharpness rises to it and hovers.
  const Trace t = measured({13, 40, 120, 185, 205, 198}, 0.01);
  const auto fs = diagnose(t, losses_of(t), {}, ModelTraits{});
  const Finding* f = edge(fs);
  ASSERT_NE(f, nullptr);
  EXPECT_EQ(f->severity, Severity::info);
  EXPECT_EQ(f->where, "steps 3 .. 5");  // 185 is 0.925 of the bound, 120 is 0.6
  EXPECT_NE(f->message.find("0.99× the stability bound (2 + 2·momentum)/lr = 200"), std::string::npos) << f->message;
  EXPECT_NE(f->remedy.find("below 0.0101"), std::string::npos) << f->remedy;  // 2/198
}

TEST(EdgeOfStability, FarPastTheBoundIsAWarningAndBelowItNothing) {
  const Trace past = measured({50, 300, 900}, 0.01);
  const auto fs = diagnose(past, losses_of(past), {}, ModelTraits{});
  const Finding* f = edge(fs);
  ASSERT_NE(f, nullptr);
  EXPECT_EQ(f->severity, Severity::warning);
  EXPECT_EQ(f->where, "steps 1 .. 2");
  const Trace below = measured({50, 120, 170}, 0.01);
  EXPECT_EQ(edge(diagnose(below, losses_of(below), {}, ModelTraits{})), nullptr);
  // At lr 0.1 the bound is 20, and 38 with heavy-ball momentum 0.9: 30 is past the one, within the other.
  const Trace plain = measured({10, 30}, 0.1);
  EXPECT_NE(edge(diagnose(plain, losses_of(plain), {}, ModelTraits{})), nullptr);
  const Trace momentum = measured({10, 30}, 0.1, 0.9);
  EXPECT_EQ(edge(diagnose(momentum, losses_of(momentum), {}, ModelTraits{})), nullptr);
  // ... and no bound without a step size.
  Trace no_lr = measured({500, 900}, 0.01);
  for (auto& st : no_lr.steps()) st.learning_rate.reset();
  EXPECT_EQ(edge(diagnose(no_lr, losses_of(no_lr), {}, ModelTraits{})), nullptr);
}

TEST(EdgeOfStability, TheMeasurementsSurviveTheTraceFiles) {
  const Trace t = measured({13, 205}, 0.01, 0.5);
  const Trace back = trace_from_json(trace_to_json(t));
  ASSERT_EQ(back.steps().size(), 2u);
  EXPECT_EQ(back.steps()[1].sharpness, 205.0);
  EXPECT_EQ(back.steps()[1].sharpness_products, 12);
  EXPECT_EQ(back.steps()[1].learning_rate, 0.01);
  EXPECT_EQ(back.steps()[1].momentum, 0.5);
  EXPECT_NE(trace_to_csv(t).find("1,sharpness,step,sharpness,205,,"), std::string::npos) << trace_to_csv(t);
}

}  // namespace
}  // namespace gradflow
