#include "gradflow/coord_check.h"

#include <cmath>

#include <gtest/gtest.h>

#include "gradflow/error.h"

namespace gradflow {
namespace {

// Three layers whose figures follow known powers of width at each step: value = c * w^p.
struct Powers {
  double activation[3];  // per step
  double change[3];
};

CoordCheck make_check(const std::vector<Powers>& layers, std::optional<OptimizerKind> opt = OptimizerKind::adam) {
  CoordCheck c;
  c.label = "synthetic";
  c.optimizer = "adam lr 0.01";
  c.optimizer_kind = opt;
  c.widths = {64, 128, 256, 512, 1024};
  c.steps = 3;
  const WeightKind kinds[] = {WeightKind::input, WeightKind::hidden, WeightKind::readout};
  for (std::size_t l = 0; l < layers.size(); ++l) c.layers.push_back({"fc" + std::to_string(l + 1), kinds[l % 3]});
  c.allocate();
  for (std::size_t l = 0; l < layers.size(); ++l)
    for (std::int64_t t = 0; t < c.steps; ++t)
      for (std::size_t w = 0; w < c.widths.size(); ++w) {
        const double x = static_cast<double>(c.widths[w]);
        c.at(CoordQuantity::activation, t, l, w) = 0.7 * std::pow(x, layers[l].activation[t]);
        c.at(CoordQuantity::change, t, l, w) = t == 0 ? 0.0 : 0.01 * std::pow(x, layers[l].change[t]);
        c.at(CoordQuantity::output_gradient, t, l, w) = 1.0 / x;
        c.at(CoordQuantity::weight_gradient, t, l, w) = 2.0 / x;
        c.at(CoordQuantity::update, t, l, w) = 0.01;
      }
  return c;
}

TEST(CoordCheck, SlopesAreTheGeneratingPowers) {
  const CoordCheck c = make_check({{{0, 0.3, 0.9}, {0, 0.1, -0.4}}});
  const WidthAnalysis a = analyse_widths(c);
  EXPECT_NEAR(*a.slopes[0][1][0], 0.3, 1e-12);
  EXPECT_NEAR(*a.slopes[0][2][0], 0.9, 1e-12);
  EXPECT_NEAR(*a.slopes[1][2][0], -0.4, 1e-12);
  EXPECT_NEAR(*a.slopes[2][0][0], -1.0, 1e-12);
  EXPECT_FALSE(a.slopes[1][0][0].has_value()) << "the change at step 0 is 0 at every width: no slope";
}

TEST(CoordCheck, VerdictJudgesGrowthOfOutputsAndBothDirectionsOfChange) {
  const CoordCheck c = make_check({
      {{0, 0.05, 0.1}, {0, 0.1, -0.1}},     // stable
      {{0, 0.2, 0.6}, {0, 0.1, 0.8}},       // output grows past 0.25 at step 2, change at step 2
      {{-0.5, -0.5, -0.5}, {0, -0.6, 0}},   // a vanishing output is allowed; a vanishing change is not
  });
  const WidthAnalysis a = analyse_widths(c);
  ASSERT_EQ(a.verdicts.size(), 3u);
  EXPECT_TRUE(a.verdicts[0].stable);
  EXPECT_FALSE(a.verdicts[1].stable);
  EXPECT_EQ(a.verdicts[1].quantity, CoordQuantity::change);
  EXPECT_NEAR(a.verdicts[1].slope, 0.8, 1e-12);
  EXPECT_EQ(a.verdicts[1].departs_at, 2);
  EXPECT_FALSE(a.verdicts[2].stable);
  EXPECT_EQ(a.verdicts[2].quantity, CoordQuantity::change);
  EXPECT_EQ(a.verdicts[2].step, 1);
  ASSERT_EQ(a.findings.size(), 2u);
  EXPECT_EQ(a.findings[0].kind, FindingKind::width_unstable);
  EXPECT_EQ(a.findings[0].where, "fc2");
  EXPECT_NE(a.findings[0].message.find("grows as width^0.80 at step 2"), std::string::npos) << a.findings[0].message;
  EXPECT_NE(a.findings[0].remedy.find("η/fan_in"), std::string::npos) << a.findings[0].remedy;
  EXPECT_NE(a.findings[1].message.find("shrinks"), std::string::npos) << a.findings[1].message;
  EXPECT_NE(a.findings[1].remedy.find("1/fan_in²"), std::string::npos) << "the readout's remedy is Table 3's readout column";
  // The message's figures are the check's own.
  EXPECT_DOUBLE_EQ(a.findings[0].evidence[3].second, c.at(CoordQuantity::change, 2, 1, 0));
  EXPECT_DOUBLE_EQ(a.findings[0].evidence[4].second, c.at(CoordQuantity::change, 2, 1, 4));
}

TEST(CoordCheck, ALayerWithoutFiguresIsNotMeasuredRatherThanStable) {
  CoordCheck c = make_check({{{0, 0.6, 0.6}, {0, 0.9, 0.9}}, {{0, 0, 0}, {0, 0, 0}}});
  for (int q = 0; q < kCoordQuantities; ++q)
    for (auto& step : c.values[static_cast<std::size_t>(q)]) step[0].assign(c.widths.size(), std::nan(""));
  const WidthAnalysis a = analyse_widths(c);
  EXPECT_FALSE(a.verdicts[0].measured);
  EXPECT_TRUE(a.verdicts[1].measured);
  ASSERT_TRUE(a.findings.empty());
  EXPECT_NE(coord_report_markdown({c}).find("| fc1 | input | n/a | n/a | n/a | not measured"), std::string::npos) << coord_report_markdown({c});
}

// An output already growing at step 0 grows from the initialisation (nanoGPT's fixed std 0.02):
// the remedy starts there, and the message names that first departure.
TEST(CoordCheck, GrowthAtInitialisationIsRemediedByTheVariance) {
  const CoordCheck c = make_check({{{0, 0, 0}, {0, 0, 0}}, {{0.5, 0.5, 0.5}, {0, 0.9, 0.9}}, {{0, 0, 0}, {0, 0.6, 0}}});
  const WidthAnalysis a = analyse_widths(c);
  ASSERT_EQ(a.findings.size(), 2u);
  const Finding& hidden = a.findings[0];
  EXPECT_EQ(a.verdicts[1].departs_at, 0);
  EXPECT_NE(hidden.message.find("first beyond the tolerance at step 0 (mean |h_t| as width^0.50)"), std::string::npos) << hidden.message;
  EXPECT_EQ(hidden.remedy.rfind("its output grows with width at initialisation", 0), 0u) << hidden.remedy;
  EXPECT_NE(hidden.remedy.find("proportional to 1/fan_in"), std::string::npos);
  // The read-out departs at step 1 by its change: its remedy is Table 3's, naming fc2 as the one to mend first.
  const Finding& readout = a.findings[1];
  EXPECT_EQ(readout.remedy.find("at initialisation"), std::string::npos) << readout.remedy;
  EXPECT_NE(readout.remedy.find("unstable from fc2 on (mean |h_t| beyond the tolerance from step 0)"), std::string::npos) << readout.remedy;
  EXPECT_EQ(readout.message.find("first beyond"), std::string::npos) << "it departed at the step of its steepest slope";
}

TEST(CoordCheck, ToleranceIsAnOption) {
  const CoordCheck c = make_check({{{0, 0.2, 0.2}, {0, 0.2, 0.2}}});
  EXPECT_TRUE(analyse_widths(c).verdicts[0].stable);
  EXPECT_FALSE(analyse_widths(c, {0.1}).verdicts[0].stable);
}

TEST(CoordCheck, RemedyFollowsTheOptimizer) {
  const CoordCheck sgd = make_check({{{0, 0, 0}, {0, 0, 0}}, {{0, 0, 0}, {0, 0.5, 0.5}}}, OptimizerKind::sgd);
  const auto a = analyse_widths(sgd);
  ASSERT_EQ(a.findings.size(), 1u);
  EXPECT_NE(a.findings[0].remedy.find("under SGD"), std::string::npos) << a.findings[0].remedy;
}

TEST(CoordCheck, JsonRoundTripKeepsEveryFigure) {
  CoordCheck c = make_check({{{0, 0.3, 0.9}, {0, 0.1, -0.4}}, {{0, 0, 0}, {0, 0, 0}}}, std::nullopt);
  c.at(CoordQuantity::update, 1, 1, 2) = std::nan("");
  const auto back = coord_checks_from_json(coord_checks_to_json({c, c}), "test");
  ASSERT_EQ(back.size(), 2u);
  EXPECT_EQ(back[0].label, c.label);
  EXPECT_EQ(back[0].widths, c.widths);
  EXPECT_FALSE(back[0].optimizer_kind.has_value());
  EXPECT_EQ(back[0].layers[1].kind, WeightKind::hidden);
  for (int q = 0; q < kCoordQuantities; ++q)
    for (std::int64_t t = 0; t < c.steps; ++t)
      for (std::size_t l = 0; l < c.layers.size(); ++l)
        for (std::size_t w = 0; w < c.widths.size(); ++w) {
          const double want = c.at(static_cast<CoordQuantity>(q), t, l, w), got = back[1].at(static_cast<CoordQuantity>(q), t, l, w);
          if (std::isnan(want)) EXPECT_TRUE(std::isnan(got));
          else EXPECT_DOUBLE_EQ(got, want);
        }
}

TEST(CoordCheck, BadInputIsRefusedWithItsName) {
  EXPECT_THROW(coord_checks_from_json("{}", "x.json"), Error);
  EXPECT_THROW(coord_checks_from_json("not json", "x.json"), Error);
  CoordCheck c = make_check({{{0, 0, 0}, {0, 0, 0}}});
  std::string text = coord_checks_to_json({c});
  text.replace(text.find("\"steps\": 3"), 10, "\"steps\": 4");
  try {
    coord_checks_from_json(text, "x.json");
    FAIL() << "a step count that does not match the figures must be refused";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("x.json"), std::string::npos);
  }
  c.widths = {64, 64, 128, 256, 512};
  EXPECT_THROW(analyse_widths(c), UsageError);
}

TEST(CoordCheck, ReportShowsEveryLayerChartAndFinding) {
  const CoordCheck c = make_check({{{0, 0, 0}, {0, 0, 0}}, {{0, 0.6, 0.6}, {0, 0.9, 0.9}}});
  const std::string html = coord_report_html({c});
  EXPECT_NE(html.find("fc1"), std::string::npos);
  EXPECT_NE(html.find("width_unstable"), std::string::npos);
  EXPECT_NE(html.find("mean |h_t − h_0| at step 1"), std::string::npos);
  EXPECT_EQ(html.find("mean |h_t − h_0| at step 0"), std::string::npos) << "the change at step 0 is 0 by definition: no panel";
  std::size_t svgs = 0;
  for (auto p = html.find("<svg viewBox"); p != std::string::npos; p = html.find("<svg viewBox", p + 1)) ++svgs;
  EXPECT_EQ(svgs, static_cast<std::size_t>(kCoordQuantities * c.steps - 1));
  const std::string md = coord_report_markdown({c});
  EXPECT_NE(md.find("| fc2 | hidden | +0.60 | +0.90 | +0.60 | unstable"), std::string::npos) << md;
}

}  // namespace
}  // namespace gradflow

namespace gradflow {
namespace {

// A change that is a + b/w (a Θ(1) change plus a finite-width correction) slopes down over all
// widths but flattens at the wide end: not a scaling. c·w^-0.5 keeps its slope: a scaling.
TEST(CoordCheck, AFiniteWidthCorrectionThatFadesIsNotAScaling) {
  CoordCheck c;
  c.label = "corrections";
  c.widths = {64, 128, 256, 512, 1024, 2048};
  c.steps = 2;
  c.layers = {{"fading", WeightKind::readout}, {"vanishing", WeightKind::input}};
  c.allocate();
  for (std::size_t w = 0; w < c.widths.size(); ++w) {
    const double x = static_cast<double>(c.widths[w]);
    for (std::size_t l = 0; l < 2; ++l)
      for (std::int64_t t = 0; t < 2; ++t) c.at(CoordQuantity::activation, t, l, w) = 1.0;
    c.at(CoordQuantity::change, 1, 0, w) = 1.0 + 128.0 / x;
    c.at(CoordQuantity::change, 1, 1, w) = 3.0 / std::sqrt(x);
  }
  const WidthAnalysis a = analyse_widths(c);
  ASSERT_LT(*a.slopes[1][1][0], -0.25) << "over all widths the correction looks like a scaling";
  EXPECT_TRUE(a.verdicts[0].stable);
  EXPECT_FALSE(a.verdicts[1].stable);
  // With three widths there is no wider half to tell them apart: both are judged on their slope.
  c.widths = {64, 128, 256};
  for (int q = 0; q < kCoordQuantities; ++q)
    for (auto& step : c.values[static_cast<std::size_t>(q)])
      for (auto& row : step) row.resize(3);
  EXPECT_FALSE(analyse_widths(c).verdicts[0].stable);
}

}  // namespace
}  // namespace gradflow
