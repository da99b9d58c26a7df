#include "gradflow/report.h"

#include <cmath>
#include <map>
#include <regex>
#include <set>

#include "gradflow/atomic_file.h"
#include "gradflow/error.h"
#include "report/report_model.h"
#include "report/svg.h"

#include <filesystem>
#include <unistd.h>
#include <fmt/format.h>

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

// Each network keeps one colour in every chart of a report, whatever order a chart lists it in.
TEST(Report, EachNetworkKeepsOneColourInEveryChart) {
  // Run order differs from ranking order (the least attenuated first).
  const auto c = make_comparison({ff_run("plain", cfg("sigmoid", "default", "none", "0"), -6),
                                  ff_run("bn", cfg("sigmoid", "default", "batch", "0"), 0.2),
                                  ff_run("he", cfg("relu", "he_normal", "none", "0"), -0.1)},
                                 {});
  const std::string html = report_html(c);
  const std::regex line("<path d=\"[^\"]*\" fill=\"none\" stroke=\"(#[0-9A-Fa-f]{6})\"[^>]*><title>([^<]*)</title>");
  std::map<std::string, std::set<std::string>> colours;
  int charts_per_label = 0;
  for (auto it = std::sregex_iterator(html.begin(), html.end(), line); it != std::sregex_iterator(); ++it) {
    colours[(*it)[2]].insert((*it)[1]);
    charts_per_label += (*it)[2] == "plain";
  }
  ASSERT_EQ(colours.size(), 3u);
  EXPECT_GE(charts_per_label, 2) << "the profile and the loss chart both draw each run";
  std::set<std::string> all;
  for (const auto& [label, set] : colours) {
    EXPECT_EQ(set.size(), 1u) << label << " changes colour between charts";
    all.insert(*set.begin());
  }
  EXPECT_EQ(all.size(), 3u) << "two networks share a colour";
}

TEST(Report, LongRunsAreBinnedInTheHeatmap) {
  RunRecord r = ff_run("long", cfg("tanh", "default", "none", "0"), -1);
  StepRecord st = r.trace.steps().front();
  for (int s = 1; s < 400; ++s) {
    st.step = s;
    r.trace.add_step(st);
  }
  const std::string html = report_html(make_comparison({r}, {}));
  // 400 steps in 40 columns of 10: one cell per hidden layer and column, each saying its steps.
  int cells = 0;
  for (auto at = html.find("<title>h.1 at "); at != std::string::npos; at = html.find("<title>h.1 at ", at + 1)) ++cells;
  EXPECT_EQ(cells, 40);
  EXPECT_NE(html.find("<title>h.1 at 390-399: "), std::string::npos);
}

// A user's model: weight layers with names, recorded over several steps.
RunRecord user_run(const std::string& label) {
  RunRecord r;
  r.label = r.spec = label;
  r.family = r.task = "user";
  const std::vector<std::string> layers = {"encoder.conv1", "encoder.conv2", "head.fc"};
  std::vector<int> series;
  for (const auto& l : layers) series.push_back(r.trace.intern(l + ".weight", SeriesKind::parameter, l, {8, 8}));
  for (int s = 0; s < 7; ++s) {
    StepRecord st;
    st.step = s;
    st.add_loss(2.0 - 0.1 * s);
    for (std::size_t k = 0; k < series.size(); ++k) {
      Record rec;
      rec.series = series[k];
      rec.grad.numel = 64;
      rec.grad.sum_sq = std::pow(10.0, static_cast<double>(k) - 3);
      rec.weight_norm = 2.0;
      st.records.push_back(rec);
    }
    r.trace.add_step(st);
    r.loss.push_back(*st.loss);
  }
  r.steps_done = 7;
  r.analyse();
  return r;
}

TEST(Report, TheModelsReportNamesLayersAndComparesNothing) {
  const std::string html = models_report_html({user_run("my net")});
  EXPECT_NE(html.find("<h1>Gradient flow of my net</h1>"), std::string::npos);
  const std::string body = html.substr(html.find("</style>"));
  for (const char* comparison_words : {"comparison", "verdict", "Verdict", "constant answer", "remedy</th>"})
    EXPECT_EQ(body.find(comparison_words), std::string::npos) << comparison_words;
  // The parameters' names on the profile's axis, in forward order.
  const auto a = html.find(">encoder.conv1.weight<title>"), b = html.find(">encoder.conv2.weight<title>"),
             c = html.find(">head.fc.weight<title>");
  ASSERT_NE(a, std::string::npos);
  ASSERT_NE(b, std::string::npos);
  ASSERT_NE(c, std::string::npos);
  EXPECT_LT(a, b);
  EXPECT_LT(b, c);
  // Steps are counted: no tick between two whole steps.
  const std::regex tick("class=\"tick\" text-anchor=\"middle\">([0-9.e+-]+)</text>");
  int ticks = 0;
  for (auto it = std::sregex_iterator(html.begin(), html.end(), tick); it != std::sregex_iterator(); ++it, ++ticks)
    EXPECT_EQ((*it)[1].str().find('.'), std::string::npos) << (*it)[1];
  EXPECT_GT(ticks, 0);
  // The gradient-to-weight ratio is the recorded numbers': head.fc's is 10^-0.5 / 2.
  const std::string md = models_report_markdown({user_run("my net")});
  EXPECT_NE(md.find(fmt::format("| head.fc.weight | {:.3g} | {:.3g} | {:.3g} |", std::sqrt(0.1), std::sqrt(0.1), std::sqrt(0.1) / 2.0)),
            std::string::npos) << md;
}

// Every parameter gets a row named after it (an LSTM's input and recurrent weights, biases):
// no two rows of the table share a name.
TEST(Report, EveryLayerRowHasItsOwnName) {
  RunRecord r = user_run("lstm");
  const int ih = r.trace.intern("rnn.weight_ih_l0", SeriesKind::parameter, "rnn", {16, 4});
  const int hh = r.trace.intern("rnn.weight_hh_l0", SeriesKind::parameter, "rnn", {16, 4});
  for (auto& st : r.trace.steps())
    for (int s : {ih, hh}) {
      Record rec;
      rec.series = s;
      rec.grad.numel = 64;
      rec.grad.sum_sq = 1.0;
      rec.weight_norm = 1.0;
      st.records.push_back(rec);
    }
  const std::string md = models_report_markdown({r});
  EXPECT_NE(md.find("| rnn.weight_ih_l0 | 1 | 1 |"), std::string::npos) << md;
  EXPECT_NE(md.find("| rnn.weight_hh_l0 | 1 | 1 |"), std::string::npos) << md;
  EXPECT_EQ(md.find("| rnn |"), std::string::npos) << md;
  EXPECT_NE(md.find("| head.fc.weight |"), std::string::npos) << md;
  // A layer with no record at a step: a dash, not "nan".
  r.trace.steps().front().records.pop_back();
  const std::string gap = models_report_markdown({r});
  EXPECT_NE(gap.find("| rnn.weight_hh_l0 | — | 1 | — |"), std::string::npos) << gap;
  EXPECT_EQ(gap.find("nan"), std::string::npos);
}

// A real model's report: parameters in the order their modules ran (the embedding first, though
// registered last), a module's calls drawn as a profile, a negative loss drawn, at most 20 names
// under an axis however many layers.
TEST(Report, ARealModelsReportFollowsItsStructure) {
  RunRecord r = user_run("lm");
  const int emb_w = r.trace.intern("embedding.weight", SeriesKind::parameter, "embedding", {100, 8});
  std::vector<int> outputs;
  for (const char* m : {"embedding", "encoder.conv1", "encoder.conv2", "head.fc"})
    outputs.push_back(r.trace.intern(m, SeriesKind::activation, m));
  std::vector<int> many;
  for (int k = 0; k < 45; ++k) many.push_back(r.trace.intern(fmt::format("blocks.{}.mlp.c_fc", k), SeriesKind::activation,
                                                              fmt::format("blocks.{}.mlp.c_fc", k)));
  for (auto& st : r.trace.steps()) {
    for (int s : outputs) {
      Record rec;
      rec.series = s;
      rec.grad.numel = 16;
      rec.grad.sum_sq = 1.0;
      if (s == outputs[1]) rec.profile = {0.5, 0.6, 0.7};
      st.records.push_back(rec);
    }
    for (int s : many) {
      Record rec;
      rec.series = s;
      rec.grad.numel = 16;
      rec.grad.sum_sq = 4.0;
      st.records.push_back(rec);
    }
    Record rec;
    rec.series = emb_w;
    rec.grad.numel = 800;
    rec.grad.sum_sq = 1.0;
    st.records.push_back(rec);
  }
  for (auto& st : r.trace.steps()) st.loss = -1.0 - 0.1 * static_cast<double>(st.step);
  r.loss.clear();
  for (const auto& st : r.trace.steps()) r.loss.push_back(*st.loss);
  r.analyse();
  const std::string md = models_report_markdown({r});
  EXPECT_LT(md.find("| embedding.weight |"), md.find("| encoder.conv1.weight |")) << md;
  EXPECT_EQ(md.find("found by walking the autograd graph"), std::string::npos) << md;
  // Layer outputs the C++ graph walk found are said to be the op applying the weights.
  r.trace.mark_found_by_walk(outputs[1]);
  r.trace.mark_found_by_walk(outputs[2]);
  EXPECT_NE(models_report_markdown({r}).find("2 of the 49 layer outputs were found by walking the autograd graph"),
            std::string::npos);
  const std::string html = models_report_html({r});
  EXPECT_NE(html.find("dL/d(output) at each call of a module within a step"), std::string::npos);
  EXPECT_NE(html.find("encoder.conv1 (step 6)"), std::string::npos);
  // The loss, all below 0, on a linear axis.
  const auto loss_at = html.find("Loss at each recorded step");
  ASSERT_NE(loss_at, std::string::npos);
  const std::string loss_svg = html.substr(loss_at, html.find("</svg>", loss_at) - loss_at);
  EXPECT_EQ(loss_svg.find("log scale"), std::string::npos);
  EXPECT_NE(loss_svg.find("<path d="), std::string::npos);
  // 49 layer outputs, at most 20 names under the axis, long ones shown by their end.
  const auto outputs_at = html.find("RMS of dL/d(output) per layer");
  const std::string outputs_svg = html.substr(outputs_at, html.find("</svg>", outputs_at) - outputs_at);
  int names = 0;
  for (auto at = outputs_svg.find("rotate(-35)"); at != std::string::npos; at = outputs_svg.find("rotate(-35)", at + 1)) ++names;
  EXPECT_EQ(names, 17);  // every third of 49
  EXPECT_EQ(detail::tick_label("transformer_encoder.layers.11.self_attn"), "\u2026encoder.layers.11.self_attn");
}

TEST(Report, HeatmapsSideBySideShareOneColourScale) {
  detail::Heatmap a, b;
  a.rows = b.rows = {"h.1"};
  a.cols = b.cols = {"0", "1"};
  a.log10_values = {{-1.0, -2.0}};
  b.log10_values = {{-5.0, -6.0}};
  const std::string both = detail::render_on_one_scale({a, b});
  // The darkest colour is b's -6, not a's -2; the colour bar of each reads 0.1 .. 1e-06.
  EXPECT_EQ(both.find("fill=\"#440154\"><title>h.1 at 1: 0.01"), std::string::npos);
  EXPECT_NE(both.find("fill=\"#440154\"><title>h.1 at 1: 1e-06"), std::string::npos);
  int bars = 0;
  for (auto at = both.find(">0.1</text>"); at != std::string::npos; at = both.find(">0.1</text>", at + 1)) ++bars;
  EXPECT_EQ(bars, 2);
  EXPECT_NE(both.find(">1e-06</text>"), std::string::npos);
}

TEST(Report, TwoModelsOfOneProgramShareOneReport) {
  const std::string html = models_report_html({user_run("generator"), user_run("discriminator")});
  EXPECT_NE(html.find("<h1>Gradient flow of generator and discriminator</h1>"), std::string::npos);
  EXPECT_NE(html.find("<h2>generator</h2>"), std::string::npos);
  EXPECT_NE(html.find("<h2>discriminator</h2>"), std::string::npos);
  const std::string md = models_report_markdown({user_run("generator"), user_run("discriminator")});
  EXPECT_NE(md.find("| encoder.conv2.weight |"), std::string::npos);
  // A model whose Monitor recorded the updates shows the update-to-weight ratio; the other the
  // gradient-to-weight ratio, named as such.
  RunRecord with_updates = user_run("with updates");
  for (auto& st : with_updates.trace.steps())
    for (auto& rec : st.records) rec.update_norm = 1e-3 * rec.weight_norm;
  const std::string both = models_report_html({with_updates, user_run("without")});
  EXPECT_NE(both.find("update-to-weight ratio |dW| / |W| per layer"), std::string::npos);
  EXPECT_NE(both.find("gradient-to-weight ratio |dL/dW| / |W| per layer"), std::string::npos);
  EXPECT_NE(models_report_markdown({with_updates}).find("| encoder.conv1.weight | 0.0316 | 0.0316 | 0.001 |"), std::string::npos);
}

TEST(Report, ASingleRunFolderIsReportedOnItsOwn) {
  const auto dir = std::filesystem::temp_directory_path() / ("gradflow_single_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  write_file_atomic((dir / "run.json").string(), run_to_json(user_run("alone")));
  const Comparison c = load_comparison({dir.string()});
  EXPECT_EQ(c.kind, ReportKind::models);
  write_report(c, dir.string());
  EXPECT_NE(read_file((dir / "report.html").string()).find("Gradient flow of alone"), std::string::npos);
  EXPECT_EQ(load_comparison({dir.string(), dir.string()}).kind, ReportKind::comparison);
  std::filesystem::remove_all(dir);
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
