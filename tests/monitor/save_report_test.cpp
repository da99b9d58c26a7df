#include "gradflow/save_report.h"

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>
#include <torch/torch.h>
#include <unistd.h>

#include "gradflow/atomic_file.h"
#include "gradflow/report.h"
#include "torch_test_util.h"

namespace gradflow {
namespace {

class SaveReportTest : public test::TorchTest {};

TEST_F(SaveReportTest, WritesEveryFileAndDiagnosesAUserModel) {
  torch::nn::Sequential deep;
  deep->push_back(torch::nn::Linear(4, 16));
  for (int i = 0; i < 12; ++i) {
    deep->push_back(torch::nn::Sigmoid());
    deep->push_back(torch::nn::Linear(16, 16));
  }
  Monitor mon(*deep);
  for (int s = 0; s < 3; ++s) {
    auto loss = deep->forward(torch::randn({8, 4})).pow(2).mean();
    mon.watch(loss);
    loss.backward();
  }
  const auto dir = (std::filesystem::temp_directory_path() / ("gradflow_save_" + std::to_string(::getpid()))).string();
  SaveOptions o;
  o.label = "deep sigmoid";
  o.traits.activation = Activation::sigmoid;
  const auto findings = save_report(mon, dir, o);
  for (const char* f : {"run.json", "trace.csv", "report.html", "report.md", "summary.json"})
    EXPECT_TRUE(std::filesystem::exists(dir + "/" + f)) << f;
  {
    // gradflow does not know a program's constant-answer loss: whether it learned is not said.
    std::ifstream in(dir + "/summary.json");
    const auto summary = nlohmann::json::parse(in);
    EXPECT_TRUE(summary.at("runs").at(0).at("learned").is_null());
  }
  EXPECT_TRUE(has_any(findings, {FindingKind::vanishing}));
  EXPECT_THROW(require_healthy(findings, {FindingKind::vanishing}), GradientHealthError);
  EXPECT_NO_THROW(require_healthy(findings, {FindingKind::non_finite}));
  try {
    require_healthy(findings);
    ADD_FAILURE() << "require_healthy accepted a run with a vanishing gradient";
  } catch (const GradientHealthError& e) {
    EXPECT_FALSE(e.findings().empty());
    EXPECT_NE(std::string(e.what()).find("vanishing"), std::string::npos);
  }
  // A second report into the same folder needs force, as the CLI's --force.
  EXPECT_THROW(save_report(mon, dir, o), Error);
  SaveOptions again = o;
  again.force = true;
  EXPECT_NO_THROW(save_report(mon, dir, again));
  // The saved run loads back as a report input.
  const auto c = load_comparison({dir});
  ASSERT_EQ(c.runs.size(), 1u);
  EXPECT_EQ(c.runs[0].label, "deep sigmoid");
  EXPECT_EQ(c.runs[0].trace.steps().size(), 3u);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace gradflow
