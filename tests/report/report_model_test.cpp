#include "report/report_model.h"

#include <cmath>

#include <gtest/gtest.h>

namespace gradflow::detail {
namespace {

RunRecord run(const std::string& label, bool recurrent, std::optional<double> init, std::optional<double> end) {
  RunRecord r;
  r.label = label;
  r.traits.recurrent = recurrent;
  auto att = [](std::optional<double> v) {
    Attenuation a;
    a.log10 = v;
    a.span = 4;
    return a;
  };
  (recurrent ? r.summary.time : r.summary.depth) = att(init);
  (recurrent ? r.summary.time_final : r.summary.depth_final) = att(end);
  return r;
}

TEST(ReportModel, DepthRankingPutsTheLeastAttenuatedFirstAndLeavesRecurrentRunsOut) {
  Comparison c;
  c.runs = {run("plain", false, -15.3, -15.3), run("he", false, -0.02, -0.5), run("exploding", false, 3.6, std::nullopt),
            run("lstm", true, -10.5, -0.4), run("nodata", false, std::nullopt, std::nullopt)};
  const auto rows = depth_ranking(c);
  ASSERT_EQ(rows.size(), 4u);
  EXPECT_EQ(rows[0].run->label, "he");
  EXPECT_EQ(rows[1].run->label, "exploding");  // |+3.6| < |-15.3|
  EXPECT_EQ(rows[2].run->label, "plain");
  EXPECT_EQ(rows[3].run->label, "nodata");
  EXPECT_EQ(rows[3].rank, 4);
  EXPECT_NEAR(*rows[0].init->log10, -0.02, 1e-15);
  EXPECT_NEAR(*rows[0].end->log10, -0.5, 1e-15);
}

TEST(ReportModel, TimeRankingPutsTheMostGradientAfterTrainingFirst) {
  Comparison c;
  c.runs = {run("rnn", true, -10.6, -8.8), run("gru", true, -9.9, -0.5), run("lstm", true, -10.5, -0.4),
            run("plain", false, -15.0, -15.0)};
  const auto rows = time_ranking(c);
  ASSERT_EQ(rows.size(), 3u);
  EXPECT_EQ(rows[0].run->label, "lstm");
  EXPECT_EQ(rows[1].run->label, "gru");
  EXPECT_EQ(rows[2].run->label, "rnn");
  EXPECT_EQ(rows[2].rank, 3);
}

TEST(ReportModel, LearnedComparesTheTailLossWithHalfTheBaseline) {
  RunRecord r;
  r.baseline_loss = 1.0;
  r.loss = std::vector<double>(20, 0.9);
  EXPECT_FALSE(learned(r));
  r.loss[18] = r.loss[19] = 0.1;  // the last tenth: mean 0.1
  EXPECT_NEAR(tail_loss(r), 0.1, 1e-15);
  EXPECT_TRUE(learned(r));
  r.loss[19] = std::nan("");
  EXPECT_FALSE(learned(r));
  EXPECT_TRUE(diverged(r));
}

TEST(ReportModel, FindingKindsAreSortedAndUnique) {
  RunRecord r;
  EXPECT_EQ(finding_kinds_text(r), "none");
  Finding v, e;
  v.kind = FindingKind::vanishing;
  e.kind = FindingKind::exploding;
  r.findings = {v, e, v};
  EXPECT_EQ(finding_kinds_text(r), "exploding, vanishing");
}

}  // namespace
}  // namespace gradflow::detail
