// A C++ program killed with SIGKILL in the backward of step k: its streamed folder holds steps
// 0..k-1, figure for figure those of the same program run to its end, and `gradflow report`
// builds the report from it, also with a torn last line.
#include <csignal>
#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "cli_harness.h"

namespace gradflow::test {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;

// The steps of a stream, as a reader takes them: a step written again as it closed replaces the
// line its backward's end wrote.
std::vector<Json> streamed_steps(const std::string& dir, int* lines = nullptr) {
  std::ifstream in(dir + "/trace.jsonl");
  std::vector<Json> steps;
  for (std::string line; std::getline(in, line);) {
    const Json j = Json::parse(line, nullptr, false);
    if (!j.is_object() || !j.contains("step")) continue;
    if (lines) ++*lines;
    if (!steps.empty() && steps.back()["step"] == j["step"]["step"]) steps.pop_back();
    steps.push_back(j["step"]);
  }
  return steps;
}

TEST(StreamCli, AProgramKilledAtStepKLeavesStepsBeforeKAndGradflowReportReadsThem) {
  const std::string root = temp_dir("stream_kill");
  const std::string killed = root + "/killed", full = root + "/full";
  constexpr int kSteps = 12, kKillAt = 7;
  const CliResult dead = run_program(GRADFLOW_STREAM_CHILD, {killed, std::to_string(kSteps), std::to_string(kKillAt)}, 120000);
  ASSERT_EQ(dead.exit_code, 128 + SIGKILL) << dead.err;
  const CliResult done = run_program(GRADFLOW_STREAM_CHILD, {full, std::to_string(kSteps)}, 120000);
  ASSERT_EQ(done.exit_code, 0) << done.err;

  const auto kept = streamed_steps(killed), all = streamed_steps(full);
  ASSERT_EQ(all.size(), static_cast<std::size_t>(kSteps));  // the last one written as the program ended
  ASSERT_EQ(kept.size(), static_cast<std::size_t>(kKillAt));
  for (int s = 0; s < kKillAt; ++s) {
    EXPECT_EQ(kept[s]["step"], s);
    EXPECT_EQ(kept[s].dump(), all[s].dump()) << "step " << s;
  }

  const CliResult report = run_cli({"report", killed, "--out", root + "/report"});
  ASSERT_EQ(report.exit_code, 0) << report.err;
  const Json summary = Json::parse(slurp(root + "/report/summary.json"));
  EXPECT_TRUE(summary["interrupted"].get<bool>());
  EXPECT_TRUE(fs::exists(root + "/report/report.html"));
  const std::string md = slurp(root + "/report/report.md");
  EXPECT_NE(md.find("The program stopped before it finished: this report holds the steps recorded until then, the last at step " +
                    std::to_string(kKillAt - 1)),
            std::string::npos)
      << md;
  EXPECT_NE(slurp(root + "/report/report.html").find("The program stopped before it finished"), std::string::npos);
  EXPECT_NE(md.find("at step " + std::to_string(kKillAt - 1)), std::string::npos) << md;
  EXPECT_EQ(md.find("at step " + std::to_string(kKillAt) + " "), std::string::npos) << md;

  // Killed while writing a step: the torn line is dropped.
  std::ofstream(killed + "/trace.jsonl", std::ios::app) << "{\"step\":{\"step\":7,\"backwa";
  const CliResult torn = run_cli({"report", killed, "--out", root + "/torn"});
  EXPECT_EQ(torn.exit_code, 0) << torn.err;
  fs::remove_all(root);
}

// Killed between steps (the previous step's optimizer step done, the next forward not begun):
// that last step is in the folder too, as its backward left it.
TEST(StreamCli, AProgramKilledBetweenStepsKeepsTheStepItFinished) {
  const std::string root = temp_dir("stream_between");
  constexpr int kSteps = 10, kKillAt = 6;
  for (const std::string updates : {"plain", "updates"}) {
    SCOPED_TRACE(updates);
    const std::string killed = root + "/killed-" + updates, full = root + "/full-" + updates;
    const CliResult dead =
        run_program(GRADFLOW_STREAM_CHILD, {killed, std::to_string(kSteps), std::to_string(kKillAt), "start", updates}, 120000);
    ASSERT_EQ(dead.exit_code, 128 + SIGKILL) << dead.err;
    ASSERT_EQ(run_program(GRADFLOW_STREAM_CHILD, {full, std::to_string(kSteps), "-1", "start", updates}, 120000).exit_code, 0);
    int lines = 0;
    const auto kept = streamed_steps(killed), all = streamed_steps(full, &lines);
    ASSERT_EQ(kept.size(), static_cast<std::size_t>(kKillAt));
    // One write per step; with update norms a second as each closes (the update is known then).
    EXPECT_EQ(lines, updates == "updates" ? 2 * kSteps : kSteps);
    for (int s = 0; s + 1 < kKillAt; ++s) EXPECT_EQ(kept[s].dump(), all[s].dump()) << "step " << s;
    // The last one as its backward left it: the same gradients; its update was never measured.
    Json last = kept.back(), whole = all[kKillAt - 1];
    if (updates == "updates") {
      for (auto* j : {&last, &whole})
        for (auto& row : (*j)["rows"]) row[8] = nullptr;
    }
    EXPECT_EQ(last.dump(), whole.dump());
  }
  fs::remove_all(root);
}

TEST(StreamCli, AFileThatIsNoRecordingIsAClearError) {
  const std::string root = temp_dir("stream_bad");
  std::ofstream(root + "/trace.jsonl") << "{\"schema\":\"gradflow.stream/9\",\"every\":1}\n";
  const CliResult r = run_cli({"report", root, "--out", root + "/out"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("newer gradflow"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(root + "/out/report.html"));
  fs::remove_all(root);
}

}  // namespace
}  // namespace gradflow::test
