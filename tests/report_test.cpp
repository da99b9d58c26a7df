#include "gradflow/report.h"

#include <cmath>

#include "gradflow/error.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace gradflow {
namespace {

// A feed-forward run whose dL/dh falls by `orders` across 3 hidden layers.
// The spec options of a feed-forward run: the remedies typed, and as they show in its config.
struct Arch {
  ModelTraits traits;
  std::vector<ConfigEntry> config;
};

RunRecord ff_run(const std::string& label, const Arch& arch, double orders) {
  RunRecord r;
  r.label = r.spec = label;
  r.family = "mlp";
  r.task = "teacher";
  r.traits = arch.traits;
  r.config = arch.config;
  r.config.push_back({"steps", "1"});
  r.tiny = 1e-45;
  r.baseline_loss = 2.3;
  for (int i = 1; i <= 3; ++i) r.trace.intern("h." + std::to_string(i), SeriesKind::tap, "h");
  StepRecord st;
  for (int i = 0; i < 3; ++i) {
    Record rec;
    rec.series = i;
    rec.grad.numel = 4;
    const double n = std::pow(10.0, orders * (2 - i) / 2.0);
    rec.grad.sum_sq = n * n;
    st.records.push_back(rec);
  }
  r.trace.add_step(st);
  r.loss = {2.3};
  r.steps_done = 1;
  r.analyse();
  return r;
}

Arch cfg(const std::string& act, const std::string& init, const std::string& norm, const std::string& residual) {
  Arch a;
  a.traits.activation = activation_from_string(act);
  a.traits.init = init_from_string(init);
  a.traits.norm = norm_from_string(norm);
  a.traits.residual = residual == "1";
  const auto remedy = ConfigRole::remedy;
  a.config = {{"depth", "4"}, {"act", act, remedy}, {"init", init, remedy}, {"norm", norm, remedy}, {"residual", residual, remedy}};
  return a;
}

TEST(Report, PairsRunsThatDifferByOneRemedy) {
  const auto c = make_comparison({ff_run("plain", cfg("sigmoid", "default", "none", "0"), -6),
                                  ff_run("bn", cfg("sigmoid", "default", "batch", "0"), 0.2),
                                  ff_run("res", cfg("sigmoid", "default", "none", "1"), 0.0),
                                  ff_run("he", cfg("relu", "he_normal", "none", "0"), -0.1),
                                  ff_run("bn+res", cfg("sigmoid", "default", "batch", "1"), 0.0)},
                                 {});
  auto find = [&](const std::string& remedy, const std::string& without) -> const Verdict* {
    for (const auto& v : c.verdicts)
      if (v.remedy == remedy && v.without_label == without) return &v;
    return nullptr;
  };
  ASSERT_NE(find("batch normalisation", "plain"), nullptr);
  EXPECT_TRUE(find("batch normalisation", "plain")->confirms);
  EXPECT_NEAR(*find("batch normalisation", "plain")->without_log10, -6, 1e-12);
  ASSERT_NE(find("residual connections", "plain"), nullptr);
  ASSERT_NE(find("ReLU + He initialisation", "plain"), nullptr);
  ASSERT_NE(find("residual connections", "bn"), nullptr);  // bn -> bn+res differs by residual only
  // plain and bn+res differ in two keys that are not a known pair: no verdict between them.
  for (const auto& v : c.verdicts) EXPECT_FALSE(v.with_label == "bn+res" && v.without_label == "plain");
}

TEST(Report, RunsWithOtherTrainerSettingsAreNotPaired) {
  auto a = ff_run("plain", cfg("sigmoid", "default", "none", "0"), -6);
  auto b = ff_run("bn", cfg("sigmoid", "default", "batch", "0"), 0.0);
  b.config.push_back({"lr", "0.5"});
  a.config.push_back({"lr", "0.05"});
  EXPECT_TRUE(make_comparison({a, b}, {}).verdicts.empty());
}

TEST(Report, HtmlIsSelfContainedAndEscapesLabels) {
  auto r = ff_run("<script>x</script>", cfg("sigmoid", "default", "none", "0"), -6);
  const std::string html = report_html(make_comparison({r}, {}));
  EXPECT_EQ(html.find("<script"), std::string::npos);
  EXPECT_NE(html.find("&lt;script&gt;"), std::string::npos);
  EXPECT_EQ(html.find("http"), std::string::npos);
  EXPECT_NE(html.find("<svg"), std::string::npos);
}

TEST(Report, SummaryJsonListsRunsAndVerdicts) {
  const auto c = make_comparison({ff_run("plain", cfg("sigmoid", "default", "none", "0"), -6),
                                  ff_run("bn", cfg("sigmoid", "default", "batch", "0"), 0.0)},
                                 {"runs/plain", "runs/bn"});
  const auto j = nlohmann::json::parse(summary_to_json(c));
  EXPECT_EQ(j["schema"], kSummarySchema);
  ASSERT_EQ(j["runs"].size(), 2u);
  EXPECT_EQ(j["runs"][0]["dir"], "runs/plain");
  EXPECT_NEAR(j["runs"][0]["summary"]["attenuation_log10"].get<double>(), -6, 1e-12);
  EXPECT_TRUE(j["runs"][0]["findings"].size() >= 1);
  EXPECT_EQ(j["verdicts"][0]["remedy"], "batch normalisation");
}

TEST(Report, LoadingRefusesMissingAndForeignFolders) {
  EXPECT_THROW(load_comparison({}), Error);
  EXPECT_THROW(load_comparison({"/nonexistent-gradflow"}), Error);
  EXPECT_THROW(load_comparison({"/tmp"}), Error);
}

}  // namespace
}  // namespace gradflow
