// `gradflow compare` and `gradflow report`, end to end on the quick suite.
#include <cmath>
#include <filesystem>
#include <map>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "cli_harness.h"

namespace gradflow::test {
namespace {

using Json = nlohmann::json;

class CompareCli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(temp_dir("compare"));
    result_ = new CliResult(run_cli({"compare", "--suite", "quick", "--quiet", "--out", *dir_ + "/cmp"}));
  }
  static void TearDownTestSuite() {
    std::filesystem::remove_all(*dir_);
    delete dir_;
    delete result_;
  }
  static Json summary() { return Json::parse(slurp(*dir_ + "/cmp/summary.json")); }
  static const Json* run(const Json& s, const std::string& label_prefix) {
    for (const auto& r : s["runs"])
      if (r["label"].get<std::string>().rfind(label_prefix, 0) == 0 &&
          r["label"].get<std::string>().find("clip") == std::string::npos)
        return &r;
    return nullptr;
  }
  static const Json* verdict(const Json& s, const std::string& remedy, const std::string& without_prefix) {
    for (const auto& v : s["verdicts"])
      if (v["remedy"] == remedy && v["without"].get<std::string>().rfind(without_prefix, 0) == 0) return &v;
    return nullptr;
  }
  static std::string* dir_;
  static CliResult* result_;
};
std::string* CompareCli::dir_ = nullptr;
CliResult* CompareCli::result_ = nullptr;

TEST_F(CompareCli, FinishesAndWritesEveryProduct) {
  ASSERT_EQ(result_->exit_code, 0) << result_->err;
  for (const char* f : {"report.html", "report.md", "summary.json"})
    EXPECT_TRUE(std::filesystem::exists(*dir_ + "/cmp/" + f)) << f;
  const Json s = summary();
  EXPECT_EQ(s["schema"], "gradflow.summary/1");
  EXPECT_EQ(s["runs"].size(), 9u);
  for (const auto& r : s["runs"]) EXPECT_TRUE(std::filesystem::exists(*dir_ + "/cmp/" + r["dir"].get<std::string>() + "/run.json"));
}

// The seed's claims, read back from summary.json.
TEST_F(CompareCli, VerdictsMatchTheSeeds) {
  const Json s = summary();
  const Json* plain = run(s, "plain");
  ASSERT_NE(plain, nullptr);
  const double p = (*plain)["summary"]["attenuation_log10"].get<double>();
  EXPECT_LT(p, -4.0);
  for (const char* remedy : {"residual", "batchnorm", "he"}) {
    const Json* r = run(s, remedy);
    ASSERT_NE(r, nullptr) << remedy;
    const double a = (*r)["summary"]["attenuation_log10"].get<double>();
    EXPECT_LT(std::abs(a), std::abs(p) - 3) << remedy;
  }
  for (const auto& [remedy, without] : std::map<std::string, std::string>{
           {"residual connections", "plain"}, {"batch normalisation", "plain"}, {"ReLU + He initialisation", "plain"},
           {"LSTM", "rnn"}, {"GRU", "rnn"}, {"gradient clipping", "exploding"}}) {
    const Json* v = verdict(s, remedy, without);
    ASSERT_NE(v, nullptr) << remedy;
    EXPECT_TRUE((*v)["confirms"].get<bool>()) << remedy << ": " << (*v)["text"];
  }
  // At initialization all three recurrent cells vanish across time; after training the gated
  // ones carry gradient and learn, the vanilla RNN does neither.
  for (const char* cell : {"rnn", "lstm", "gru"}) {
    const Json* r = run(s, cell);
    ASSERT_NE(r, nullptr) << cell;
    EXPECT_LT((*r)["summary"]["time_attenuation_log10"].get<double>(), -2.0) << cell;
  }
  const double vanilla = (*run(s, "rnn"))["summary"]["time_attenuation_log10_final"].get<double>();
  for (const char* cell : {"lstm", "gru"}) {
    const Json* r = run(s, cell);
    EXPECT_GT((*r)["summary"]["time_attenuation_log10_final"].get<double>(), vanilla + 2) << cell;
    EXPECT_TRUE((*r)["learned"].get<bool>()) << cell;
  }
  EXPECT_FALSE((*run(s, "rnn"))["learned"].get<bool>());
  // The findings tell that trajectory: the gated cells' loss at initialisation is information
  // with its recovery, the vanilla RNN's an error at both ends.
  auto vanishing = [&](const char* cell) {
    std::vector<Json> found;
    for (const auto& f : (*run(s, cell))["findings"])
      if (f["kind"] == "vanishing") found.push_back(f);
    return found;
  };
  for (const char* cell : {"lstm", "gru"}) {
    const auto found = vanishing(cell);
    ASSERT_EQ(found.size(), 1u) << cell;
    EXPECT_EQ(found[0]["severity"], "info") << cell;
    EXPECT_NE(found[0]["message"].get<std::string>().find("training recovered it"), std::string::npos) << found[0]["message"];
  }
  const auto vanilla_findings = vanishing("rnn");
  ASSERT_EQ(vanilla_findings.size(), 2u);
  for (const auto& f : vanilla_findings) EXPECT_EQ(f["severity"], "error");
  // Clipping keeps the exploding setup finite.
  for (const auto& r : s["runs"])
    if (r["label"].get<std::string>().find("clip") != std::string::npos) {
      EXPECT_FALSE(r["summary"]["loss_last"].is_null());
      bool nonfinite = false;
      for (const auto& f : r["findings"]) nonfinite = nonfinite || f["kind"] == "non_finite";
      EXPECT_FALSE(nonfinite);
    }
}

TEST_F(CompareCli, ReportIsSelfContainedAndHasEveryChart) {
  const std::string html = slurp(*dir_ + "/cmp/report.html");
  EXPECT_EQ(html.find("http"), std::string::npos) << "the report must not reference anything outside the file";
  EXPECT_EQ(html.find("<script"), std::string::npos);
  EXPECT_EQ(html.find("src="), std::string::npos);
  for (const char* title : {"Backward signal |dL/dh| per hidden layer", "Weight-gradient norm", "per time step", "Training loss",
                            "Layer &times; step heatmaps"})
    EXPECT_NE(html.find(title), std::string::npos) << title;
  std::size_t svgs = 0;
  for (auto p = html.find("<svg"); p != std::string::npos; p = html.find("<svg", p + 1)) ++svgs;
  EXPECT_GE(svgs, 3u + 2u + 9u);  // profiles, time, loss per task, heatmap per run
  EXPECT_NE(html.find("<title>"), std::string::npos);  // hover values
  const std::string md = slurp(*dir_ + "/cmp/report.md");
  EXPECT_NE(md.find("## Ranking across depth"), std::string::npos);
  EXPECT_NE(md.find("## Ranking across time"), std::string::npos);
}

TEST_F(CompareCli, ReportRebuiltFromSavedRunsIsIdentical) {
  const std::string out = *dir_ + "/rebuilt";
  const auto r = run_cli({"report", *dir_ + "/cmp", "--out", out});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  for (const char* f : {"report.html", "report.md", "summary.json"})
    EXPECT_EQ(slurp(out + "/" + f), slurp(*dir_ + "/cmp/" + f)) << f;
  // From the run folders themselves, the charts and tables are the same too.
  std::vector<std::string> args = {"report"};
  const Json s = summary();
  for (const auto& run : s["runs"]) args.push_back(*dir_ + "/cmp/" + run["dir"].get<std::string>());
  args.insert(args.end(), {"--out", out + "2"});
  const auto r2 = run_cli(args);
  ASSERT_EQ(r2.exit_code, 0) << r2.err;
  EXPECT_EQ(slurp(out + "2/report.html"), slurp(*dir_ + "/cmp/report.html"));
}

TEST_F(CompareCli, SecondRunIntoTheSameFolderIsRefusedWithoutForce) {
  const auto r = run_cli({"compare", "plain:depth=3", "--steps", "1", "--out", *dir_ + "/cmp"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("--force"), std::string::npos) << r.err;
  EXPECT_TRUE(std::filesystem::exists(*dir_ + "/cmp/report.html"));
}

TEST(CompareFlow, ReportHasAFlowSectionThatReportRebuilds) {
  const std::string dir = temp_dir("cflow");
  const auto r = run_cli({"compare", "plain:depth=4,width=8", "--steps", "2", "--flow", "mlp:depth=3,width=8,act=tanh", "--quiet",
                          "--out", dir + "/c"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const Json f = Json::parse(slurp(dir + "/c/flow/flow.json"));
  EXPECT_EQ(f["schema"], "gradflow.flow/1");
  ASSERT_EQ(f["runs"].size(), 4u);
  for (const auto& run : f["runs"]) {
    EXPECT_TRUE(run.contains("max_distance"));
    EXPECT_TRUE(run.contains("final_distance"));
  }
  EXPECT_TRUE(f["order"].is_number());
  const std::string html = slurp(dir + "/c/report.html");
  EXPECT_NE(html.find("Gradient flow: gradient descent as a discretisation"), std::string::npos);
  EXPECT_EQ(html.find("http"), std::string::npos);
  const auto rb = run_cli({"report", dir + "/c", "--out", dir + "/r"});
  ASSERT_EQ(rb.exit_code, 0) << rb.err;
  EXPECT_EQ(slurp(dir + "/r/report.html"), html);
  std::filesystem::remove_all(dir);
}

TEST(CompareSweep, FitsAGainPerLayer) {
  const std::string dir = temp_dir("sweep");
  const auto r = run_cli({"compare", "plain:width=16", "he:width=16", "--sweep", "depth=4,8,12", "--quiet", "--out", dir + "/s"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const Json s = Json::parse(slurp(dir + "/s/summary.json"));
  ASSERT_EQ(s["sweep"]["key"], "depth");
  ASSERT_EQ(s["sweep"]["fits"].size(), 2u);
  const auto& plain = s["sweep"]["fits"][0];
  EXPECT_EQ(plain["x"].size(), 3u);
  // The fit is the least-squares slope of the points it reports.
  const auto& x = plain["x"];
  const auto& y = plain["log10"];
  double mx = 0, my = 0;
  for (int i = 0; i < 3; ++i) mx += x[i].get<double>() / 3, my += y[i].get<double>() / 3;
  double sxy = 0, sxx = 0;
  for (int i = 0; i < 3; ++i) {
    sxy += (x[i].get<double>() - mx) * (y[i].get<double>() - my);
    sxx += (x[i].get<double>() - mx) * (x[i].get<double>() - mx);
  }
  EXPECT_NEAR(plain["slope"].get<double>(), sxy / sxx, 1e-9);
  EXPECT_LT(plain["gain"].get<double>(), 0.5);           // a sigmoid net loses most of dL/dh per layer
  EXPECT_GT(s["sweep"]["fits"][1]["gain"].get<double>(), 0.8);  // ReLU + He keeps it
  EXPECT_NE(slurp(dir + "/s/report.html").find("Sweep over depth"), std::string::npos);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace gradflow::test

namespace gradflow::test {
namespace {

TEST(CompareSweep, SequenceLengthSweepFitsAGainPerStep) {
  const std::string dir = temp_dir("sweepT");
  const auto r = run_cli({"compare", "rnn:hidden=8", "--sweep", "seq-len=5,10,20", "--quiet", "--out", dir + "/s"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto s = nlohmann::json::parse(slurp(dir + "/s/summary.json"));
  ASSERT_EQ(s["sweep"]["key"], "seq_len");
  const auto& fit = s["sweep"]["fits"][0];
  EXPECT_EQ(fit["x"], nlohmann::json({5.0, 10.0, 20.0}));
  // Longer sequences lose more: the attenuation falls with T, so the fitted gain is below 1.
  EXPECT_GT(fit["log10"][0].get<double>(), fit["log10"][2].get<double>());
  EXPECT_LT(fit["gain"].get<double>(), 1.0);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace gradflow::test

namespace gradflow::test {
namespace {

double fitted_slope(const std::vector<double>& widths, const nlohmann::json& figures) {
  double mx = 0, my = 0;
  const double n = static_cast<double>(widths.size());
  for (std::size_t i = 0; i < widths.size(); ++i) mx += std::log(widths[i]) / n, my += std::log(figures[i].get<double>()) / n;
  double sxy = 0, sxx = 0;
  for (std::size_t i = 0; i < widths.size(); ++i) {
    sxy += (std::log(widths[i]) - mx) * (std::log(figures[i].get<double>()) - my);
    sxx += (std::log(widths[i]) - mx) * (std::log(widths[i]) - mx);
  }
  return sxy / sxx;
}

// Tensor Programs V's coordinate check: with Adam, SP's hidden layers and read-out change with
// width after one step; µP's do not.
TEST(CompareSweep, WidthSweepTellsSpFromMup) {
  const std::string dir = temp_dir("sweepW");
  const std::string base = "mlp:depth=3,act=relu,init=he_normal,base_width=32,param=";
  const auto r = run_cli({"compare", base + "sp", base + "mup", "--sweep", "width=32,64,128,256", "--quiet", "--out", dir + "/w"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto j = nlohmann::json::parse(slurp(dir + "/w/coord_check.json"));
  ASSERT_EQ(j["checks"].size(), 2u);
  const std::vector<double> widths = {32, 64, 128, 256};
  const auto& sp = j["checks"][0];
  const auto& mup = j["checks"][1];
  EXPECT_EQ(sp["optimizer"], "adam lr 0.003");
  ASSERT_EQ(sp["layers"][1]["kind"], "hidden");
  ASSERT_EQ(sp["layers"][2]["kind"], "readout");
  for (int layer : {1, 2}) {
    SCOPED_TRACE(layer);
    EXPECT_GT(fitted_slope(widths, sp["figures"]["change"][1][layer]), 0.5);
    EXPECT_LT(std::abs(fitted_slope(widths, mup["figures"]["change"][1][layer])), 0.25);
  }
  const std::string md = slurp(dir + "/w/report.md");
  const auto second = md.find("param=mup");
  ASSERT_NE(second, std::string::npos);
  EXPECT_NE(md.find("width_unstable**: fc1 (hidden)"), std::string::npos) << md;
  EXPECT_NE(md.find("width_unstable**: fc2 (readout)"), std::string::npos) << md;
  EXPECT_EQ(md.find("width_unstable", second), std::string::npos) << "µP is width-stable:\n" << md;
  EXPECT_NE(slurp(dir + "/w/report.html").find("<svg"), std::string::npos);
  // 'gradflow report' rebuilds it from coord_check.json, byte for byte.
  const auto rebuilt = run_cli({"report", dir + "/w", "--out", dir + "/r"});
  ASSERT_EQ(rebuilt.exit_code, 0) << rebuilt.err;
  EXPECT_EQ(slurp(dir + "/r/report.html"), slurp(dir + "/w/report.html"));
  EXPECT_EQ(slurp(dir + "/r/coord_check.json"), slurp(dir + "/w/coord_check.json"));
  // '--sweep width' alone: 64 to 2048.
  const auto plain = run_cli({"compare", "mlp:depth=2", "--sweep", "width", "--steps", "1", "--quiet", "--out", dir + "/d"});
  ASSERT_EQ(plain.exit_code, 0) << plain.err;
  EXPECT_EQ(nlohmann::json::parse(slurp(dir + "/d/coord_check.json"))["checks"][0]["widths"], nlohmann::json({64, 128, 256, 512, 1024, 2048}));
  const auto failing = run_cli({"compare", base + "sp", "--sweep", "width=32,64,128", "--fail-on", "width_unstable", "--quiet", "--out", dir + "/f"});
  EXPECT_EQ(failing.exit_code, 1) << failing.err;
  EXPECT_NE(failing.err.find("--fail-on width_unstable"), std::string::npos) << failing.err;
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace gradflow::test
