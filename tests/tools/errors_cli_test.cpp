// Every bad input gets one line on stderr naming the problem and the fix, exit code 2 (usage) or
// 1 (failure), never a crash, and no output left behind. docs/errors.md is generated from this
// table: run with GRADFLOW_UPDATE_DOCS=1 to rewrite it after changing a case.
#include <csignal>
#include <set>
#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "cli_harness.h"

namespace gradflow::test {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;

struct Case {
  std::string what;
  std::vector<std::string> args;  // "@" is replaced by the case's scratch folder
  int code;
  std::string says;               // a phrase the message must contain
};

std::vector<Case> cases() {
  return {
      {"no subcommand", {}, 2, "give a command"},
      {"unknown subcommand", {"frobnicate"}, 2, "frobnicate"},
      {"unknown option", {"run", "plain", "--bogus", "--out", "@/o"}, 2, "--bogus"},
      {"non-numeric option value", {"run", "plain", "--steps", "abc", "--out", "@/o"}, 2, "abc"},
      {"unknown model family", {"run", "mamba", "--out", "@/o"}, 2, "unknown model 'mamba'"},
      {"heads that do not divide the width", {"run", "transformer:width=10,heads=4", "--out", "@/o"}, 2, "does not divide width=10"},
      {"unknown spec key", {"run", "mlp:colour=red", "--out", "@/o"}, 2, "valid options are"},
      {"unknown spec value", {"run", "mlp:act=swish", "--out", "@/o"}, 2, "choose one of"},
      {"malformed spec", {"run", "mlp:depth", "--out", "@/o"}, 2, "has no value"},
      {"depth 0", {"run", "mlp:depth=0", "--out", "@/o"}, 2, "out of range"},
      {"negative width", {"run", "mlp:width=-3", "--out", "@/o"}, 2, "out of range"},
      {"non-numeric depth", {"run", "mlp:depth=ten", "--out", "@/o"}, 2, "not a whole number"},
      {"global batch not divisible by the ranks", {"run", "plain", "--ranks", "3", "--batch", "32", "--out", "@/o"}, 2, "equal shards"},
      {"ranks out of range", {"run", "plain", "--ranks", "0", "--out", "@/o"}, 2, "--ranks must be"},
      {"collective timeout out of range", {"run", "plain", "--ranks", "2", "--timeout", "0", "--out", "@/o"}, 2, "--timeout must be"},
      {"model too large for memory", {"run", "mlp:depth=1000,width=65536", "--out", "@/o"}, 2, "parameters"},
      {"bad init", {"run", "mlp:init=normal:-1", "--out", "@/o"}, 2, "standard deviation"},
      {"sequence length 0", {"run", "rnn", "--seq-len", "0", "--out", "@/o"}, 2, "--seq-len"},
      {"--every 0", {"run", "plain", "--every", "0", "--out", "@/o"}, 2, "--every"},
      {"negative learning rate", {"run", "plain", "--lr", "-1", "--out", "@/o"}, 2, "--lr"},
      {"zero steps", {"run", "plain", "--steps", "0", "--out", "@/o"}, 2, "--steps"},
      {"task for another family", {"run", "plain", "--task", "adding", "--out", "@/o"}, 2, "is for rnn models"},
      {"unknown task", {"run", "plain", "--task", "imagenet", "--out", "@/o"}, 2, "unknown task"},
      {"unknown --fail-on kind", {"run", "plain", "--fail-on", "sad", "--out", "@/o"}, 2, "unknown finding kind"},
      {"--out is a file", {"run", "plain", "--steps", "1", "--out", "@/file"}, 2, "is a file"},
      {"--out holds a run", {"run", "plain", "--steps", "1", "--out", "@/done"}, 2, "--force"},
      {"--out not writable", {"run", "plain", "--steps", "1", "--out", "/proc/gradflow-out"}, 1, "cannot create"},
      {"unknown suite", {"compare", "--suite", "nope", "--out", "@/o"}, 2, "unknown suite"},
      {"sweep with one value", {"compare", "--sweep", "depth=5", "--out", "@/o"}, 2, "at least two values"},
      {"malformed sweep", {"compare", "--sweep", "breadth=5,6", "--out", "@/o"}, 2, "--sweep"},
      {"width sweep with one width", {"compare", "--sweep", "width=64", "--out", "@/o"}, 2, "at least two widths"},
      {"width sweep not increasing", {"compare", "--sweep", "width=128,64", "--out", "@/o"}, 2, "increasing widths"},
      {"width sweep of a recurrent model", {"compare", "lstm", "--sweep", "width=32,64", "--out", "@/o"}, 2, "is recurrent"},
      {"width sweep past the heads", {"compare", "transformer:heads=4", "--sweep", "width=32,66", "--out", "@/o"}, 2, "does not divide width=66"},
      {"width sweep of a suite", {"compare", "--suite", "quick", "--sweep", "width=32,64", "--out", "@/o"}, 2, "--sweep width takes specs"},
      {"width sweep on several ranks", {"compare", "--sweep", "width=32,64", "--ranks", "2", "--out", "@/o"}, 2, "without --ranks"},
      {"width sweep with clipping", {"compare", "--sweep", "width=32,64", "--clip-norm", "1", "--out", "@/o"}, 2, "belong to training runs"},
      {"report mixing a width sweep with runs", {"report", "@/width", "@/empty", "--out", "@/o"}, 2, "holds no coord_check.json"},
      {"report of a corrupt coord_check.json", {"report", "@/badwidth", "--out", "@/o"}, 1, "badwidth/coord_check.json"},
      {"unknown parametrisation", {"run", "mlp:param=ntk", "--out", "@/o"}, 2, "choose one of"},
      {"report of a missing folder", {"report", "@/missing", "--out", "@/o"}, 2, "is not a folder"},
      {"report of a folder without runs", {"report", "@/empty", "--out", "@/o"}, 2, "holds neither run.json, summary.json nor trace.jsonl"},
      {"report of a recording from a newer gradflow", {"report", "@/newer", "--out", "@/o"}, 1, "written by a newer gradflow"},
      {"report of another program's trace.jsonl", {"report", "@/alien", "--out", "@/o"}, 1, "is not a gradflow recording"},
      {"report of a program that died before its first step", {"report", "@/stepless", "--out", "@/o"}, 1, "holds no recorded step"},
      {"report of a recording changed by hand", {"report", "@/edited", "--out", "@/o"}, 1, "line 2 is corrupt"},
      {"report of a corrupt run.json", {"report", "@/corrupt", "--out", "@/o"}, 1, "not valid JSON"},
      {"report of a foreign run.json", {"report", "@/foreign", "--out", "@/o"}, 1, "not a gradflow run"},
      {"report of a run.json with wrong field types", {"report", "@/badtypes", "--out", "@/o"}, 1, "corrupt"},
      {"report of a run.json with an unknown finding kind", {"report", "@/badkind", "--out", "@/o"}, 1, "corrupt"},
      {"summary.json naming a missing run", {"report", "@/dangling", "--out", "@/o"}, 1, "is missing"},
      {"inspect a missing file", {"inspect", "@/missing.pt", "--input-shape", "2,3", "--out", "@/o"}, 1, "does not exist"},
      {"inspect a file that is not TorchScript", {"inspect", "@/file", "--input-shape", "2,3", "--out", "@/o"}, 1, "not a TorchScript archive"},
      {"inspect without an input", {"inspect", "@/file", "--out", "@/o"}, 2, "--input-shape"},
      {"inspect with a malformed shape", {"inspect", "@/file", "--input-shape", "2,a", "--out", "@/o"}, 2, "write positive sizes"},
      {"flow with a non-positive learning rate", {"flow", "mlp:depth=3", "--lr", "0,1", "--out", "@/o"}, 2, "--lr"},
      {"flow with a step longer than the time", {"flow", "mlp:depth=3", "--time", "1", "--lr", "5", "--out", "@/o"}, 2, "larger than the flow time"},
      {"bench of an unknown model", {"bench", "--models", "mlp,transformer"}, 2, "unknown model 'transformer'"},
      {"inspect with an unknown loss", {"inspect", "@/file", "--input-shape", "2,3", "--loss", "hinge", "--out", "@/o"}, 2, "unknown loss"},
  };
}

std::string scratch() {
  const std::string d = temp_dir("errors");
  std::ofstream(d + "/file") << "not a folder and not a model";
  fs::create_directories(d + "/done");
  std::ofstream(d + "/done/run.json") << "{}";
  fs::create_directories(d + "/empty");
  fs::create_directories(d + "/width");
  std::ofstream(d + "/width/coord_check.json") << R"({"schema": "gradflow.coord_check/1", "checks": []})";
  fs::create_directories(d + "/badwidth");
  std::ofstream(d + "/badwidth/coord_check.json") << R"({"schema": "gradflow.coord_check/1", "checks": [{"label": "x", "widths": [)";
  fs::create_directories(d + "/corrupt");
  std::ofstream(d + "/corrupt/run.json") << "{\"schema\": \"gradflow.run/1\", \"spec\": ";
  fs::create_directories(d + "/foreign");
  std::ofstream(d + "/foreign/run.json") << R"({"schema": "someone.else/2", "hello": 1})";
  fs::create_directories(d + "/badtypes");
  std::ofstream(d + "/badtypes/run.json")
      << R"({"schema":"gradflow.run/1","spec":"x","label":"x","family":"mlp","task":"t","traits":{"cell":true},"layers":[],)"
      << R"("steps_requested":1,"steps_done":1,"loss":[],"findings":[],"trace":{"schema":"gradflow.trace/1","every":1,"series":[],"steps":[]}})";
  fs::create_directories(d + "/badkind");
  std::ofstream(d + "/badkind/run.json")
      << R"({"schema":"gradflow.run/1","spec":"x","label":"x","family":"mlp","task":"t","layers":[],"steps_requested":1,)"
      << R"("steps_done":1,"loss":[],"findings":[{"kind":"gloomy","severity":"error","where":"","message":"","remedy":""}],)"
      << R"("trace":{"schema":"gradflow.trace/1","every":1,"series":[],"steps":[]}})";
  fs::create_directories(d + "/newer");
  std::ofstream(d + "/newer/trace.jsonl") << "{\"schema\":\"gradflow.stream/2\",\"every\":1}\n";
  fs::create_directories(d + "/alien");
  std::ofstream(d + "/alien/trace.jsonl") << "{\"event\":\"epoch\",\"loss\":0.3}\n";
  fs::create_directories(d + "/stepless");
  std::ofstream(d + "/stepless/trace.jsonl") << "{\"schema\":\"gradflow.stream/1\",\"every\":1,\"world_size\":1,\"batch_per_rank\":0}\n";
  fs::create_directories(d + "/edited");
  std::ofstream(d + "/edited/trace.jsonl")
      << "{\"schema\":\"gradflow.stream/1\",\"every\":1,\"world_size\":1,\"batch_per_rank\":0}\nloss=0.3\n"
      << "{\"end\":{\"completed_steps\":1}}\n";
  fs::create_directories(d + "/dangling");
  std::ofstream(d + "/dangling/summary.json") << R"({"schema":"gradflow.summary/1","runs":[{"dir":"runs/gone"}]})";
  return d;
}

TEST(ErrorsCli, EveryBadInputGetsOneClearLineAndTheRightExitCode) {
  const std::string d = scratch();
  std::string table =
      "# What bad input gets\n\nGenerated from `tests/tools/errors_cli_test.cpp`, which runs each case and checks it: one line on stderr, "
      "the exit code, and no output folder left behind (`@` is a scratch folder).\n\n| case | command | exit | message |\n|---|---|---|---|\n";
  for (const auto& c : cases()) {
    std::vector<std::string> args;
    std::string shown = "gradflow";
    for (auto a : c.args) {
      shown += " " + a;
      for (std::size_t p; (p = a.find('@')) != std::string::npos;) a.replace(p, 1, d);
      args.push_back(a);
    }
    const auto r = run_cli(args);
    SCOPED_TRACE(c.what + ": " + shown + "\nstderr: " + r.err);
    EXPECT_EQ(r.exit_code, c.code);
    ASSERT_FALSE(r.err.empty());
    EXPECT_EQ(r.err.find('\n'), r.err.size() - 1) << "more than one line";
    EXPECT_EQ(r.err.rfind("gradflow: ", 0), 0u);
    EXPECT_NE(r.err.find(c.says), std::string::npos);
    EXPECT_EQ(r.err.find("terminate"), std::string::npos);
    EXPECT_FALSE(fs::exists(d + "/o")) << "output left behind";
    std::string msg = r.err.substr(0, r.err.size() - 1);
    for (std::size_t p; (p = msg.find(d)) != std::string::npos;) msg.replace(p, d.size(), "@");
    for (std::size_t p = 0; (p = msg.find('|', p)) != std::string::npos; p += 2) msg.replace(p, 1, "\\|");
    table += "| " + c.what + " | `" + shown + "` | " + std::to_string(r.exit_code) + " | " + msg + " |\n";
  }
  fs::remove_all(d);
  const std::string doc = std::string(GRADFLOW_SOURCE_DIR) + "/docs/errors.md";
  // The part after the CLI's table is written by hand (the library's errors, checked by its own tests).
  const std::string text = slurp(doc), api = "\n## From the C++ and Python APIs";
  const std::string rest = text.find(api) == std::string::npos ? "" : text.substr(text.find(api));
  if (std::getenv("GRADFLOW_UPDATE_DOCS")) std::ofstream(doc) << table + rest;
  EXPECT_EQ(text.substr(0, text.size() - rest.size()), table)
      << "docs/errors.md is out of date: rerun this test with GRADFLOW_UPDATE_DOCS=1";
}

TEST(ErrorsCli, AnExplodingRunIsDiagnosedToTheEnd) {
  const std::string d = temp_dir("explode");
  auto r = run_cli({"run", "exploding", "--steps", "30", "--out", d + "/a"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  Json j = Json::parse(slurp(d + "/a/run.json"));
  EXPECT_EQ(j["steps_done"], 30);
  ASSERT_FALSE(j["trace"]["first_nonfinite"].is_null());
  EXPECT_GE(j["trace"]["first_nonfinite"]["step"].get<int>(), 0);
  EXPECT_FALSE(j["trace"]["first_nonfinite"]["series"].get<std::string>().empty());
  std::set<std::string> kinds;
  for (const auto& f : j["findings"]) kinds.insert(f["kind"]);
  EXPECT_TRUE(kinds.count("exploding"));
  EXPECT_TRUE(kinds.count("non_finite"));
  EXPECT_EQ(slurp(d + "/a/run.json").find("NaN"), std::string::npos);
  // The same run, stopped cleanly at the first non-finite loss.
  r = run_cli({"run", "exploding", "--steps", "30", "--stop-on-nonfinite", "--out", d + "/b"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  j = Json::parse(slurp(d + "/b/run.json"));
  EXPECT_TRUE(j["stopped_on_nonfinite"].get<bool>());
  EXPECT_LT(j["steps_done"].get<int>(), 30);
  // And --fail-on turns the finding into exit 1, the results still written.
  r = run_cli({"run", "exploding", "--steps", "5", "--fail-on", "non_finite", "--out", d + "/c"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(fs::exists(d + "/c/run.json"));
  fs::remove_all(d);
}

TEST(ErrorsCli, SigintDuringARunSavesWhatWasRecorded) {
  const std::string d = temp_dir("sigint");
  // Long enough that it cannot finish before the signal, which is sent once the run has made its
  // output folder (after every check, before the first step).
  const auto r = run_cli({"run", "lstm", "--steps", "1000000", "--every", "50", "--out", d + "/run"}, 1, SIGINT, d + "/run");
  EXPECT_EQ(r.exit_code, 130) << r.err;
  EXPECT_NE(r.err.find("interrupted"), std::string::npos) << r.err;
  const Json j = Json::parse(slurp(d + "/run/run.json"));
  EXPECT_TRUE(j["interrupted"].get<bool>());
  EXPECT_TRUE(j["trace"]["interrupted"].get<bool>());
  const auto done = j["steps_done"].get<std::size_t>();
  EXPECT_LT(done, 1000000u);
  EXPECT_EQ(j["loss"].size(), done);
  // Every 50th step of those done is in the trace, no more and no fewer.
  EXPECT_EQ(j["trace"]["steps"].size(), (done + 49) / 50);
  EXPECT_TRUE(fs::exists(d + "/run/trace.csv"));
  for (const auto& e : fs::directory_iterator(d + "/run"))
    EXPECT_EQ(e.path().filename().string().find(".tmp."), std::string::npos) << "temporary file left: " << e.path();
  fs::remove_all(d);
}

TEST(ErrorsCli, SigtermDuringACompareWritesAnInterruptedReport) {
  const std::string d = temp_dir("sigterm");
  const auto r = run_cli({"compare", "plain", "he", "lstm", "--steps", "1000000", "--quiet", "--out", d + "/cmp"}, 1, SIGTERM,
                         d + "/cmp");
  EXPECT_EQ(r.exit_code, 143) << r.err;
  const Json s = Json::parse(slurp(d + "/cmp/summary.json"));
  EXPECT_TRUE(s["interrupted"].get<bool>());
  EXPECT_GE(s["runs"].size(), 1u);
  EXPECT_NE(slurp(d + "/cmp/report.html").find("interrupted"), std::string::npos);
  fs::remove_all(d);
}

}  // namespace
}  // namespace gradflow::test
