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

// The step lines of a stream, as written.
std::vector<Json> streamed_steps(const std::string& dir) {
  std::ifstream in(dir + "/trace.jsonl");
  std::vector<Json> steps;
  for (std::string line; std::getline(in, line);) {
    const Json j = Json::parse(line, nullptr, false);
    if (j.is_object() && j.contains("step")) steps.push_back(j["step"]);
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
  EXPECT_NE(md.find("at step " + std::to_string(kKillAt - 1)), std::string::npos) << md;
  EXPECT_EQ(md.find("at step " + std::to_string(kKillAt) + " "), std::string::npos) << md;

  // Killed while writing a step: the torn line is dropped.
  std::ofstream(killed + "/trace.jsonl", std::ios::app) << "{\"step\":{\"step\":7,\"backwa";
  const CliResult torn = run_cli({"report", killed, "--out", root + "/torn"});
  EXPECT_EQ(torn.exit_code, 0) << torn.err;
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
