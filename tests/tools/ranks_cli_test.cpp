// `gradflow run --ranks N` and runs under an external launcher: two ranks on loopback record
// what one process records, and a lost, hung or interrupted rank ends the run cleanly.
#include <chrono>
#include <csignal>
#include <filesystem>
#include <thread>

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <nlohmann/json.hpp>
#include <sys/socket.h>
#include <unistd.h>

#include "cli_harness.h"

namespace gradflow::test {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;

constexpr int kLimitMs = 60000;

Json run_json(const std::string& dir) { return Json::parse(slurp(dir + "/run.json")); }

double rel(double a, double b) { return std::abs(a - b) / std::max(std::abs(b), 1e-30); }

// The ranks of a launcher, by rank, once it has started them all.
std::vector<int> ranks_of(int launcher, int n) {
  std::vector<int> by_rank(static_cast<std::size_t>(n), -1);
  for (int tries = 0; tries < 500; ++tries) {
    for (int c : child_pids(launcher)) {
      const std::string r = env_of(c, "RANK");
      if (!r.empty() && std::stoi(r) < n) by_rank[static_cast<std::size_t>(std::stoi(r))] = c;
    }
    if (std::count(by_rank.begin(), by_rank.end(), -1) == 0) return by_rank;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return by_rank;
}

int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

const std::vector<std::string> kTrain = {"run", "mlp:depth=4,width=32", "--batch", "32", "--seed", "3"};

std::vector<std::string> with(std::vector<std::string> args, const std::vector<std::string>& more) {
  args.insert(args.end(), more.begin(), more.end());
  return args;
}

TEST(RanksCli, TwoRanksRecordTheAveragedGradientOneProcessRecords) {
  const std::string dir = temp_dir("ranks_equal");
  const auto one = finish(spawn_cli(with(kTrain, {"--steps", "6", "--out", dir + "/one"})), kLimitMs);
  const auto two = finish(spawn_cli(with(kTrain, {"--steps", "6", "--ranks", "2", "--out", dir + "/two"})), kLimitMs);
  ASSERT_EQ(one.exit_code, 0) << one.err;
  ASSERT_EQ(two.exit_code, 0) << two.err;
  const Json a = run_json(dir + "/one")["trace"], b = run_json(dir + "/two")["trace"];
  EXPECT_EQ(b["world_size"], 2);
  EXPECT_EQ(b["batch_per_rank"], 16);
  ASSERT_EQ(a["series"].size(), b["series"].size());
  for (std::size_t k = 0; k < a["series"].size(); ++k) ASSERT_EQ(a["series"][k]["name"], b["series"][k]["name"]);
  ASSERT_EQ(a["steps"].size(), 6u);
  ASSERT_EQ(b["steps"].size(), 6u);
  int compared = 0;
  for (std::size_t s = 0; s < 6; ++s) {
    const Json &sa = a["steps"][s], &sb = b["steps"][s];
    EXPECT_LE(rel(sb["loss"], sa["loss"]), 1e-6) << "step " << s;
    ASSERT_EQ(sb["rank_losses"].size(), 2u);
    EXPECT_NEAR((sb["rank_losses"][0].get<double>() + sb["rank_losses"][1].get<double>()) / 2, sb["loss"].get<double>(), 1e-9);
    ASSERT_EQ(sa["records"].size(), sb["records"].size());
    for (std::size_t k = 0; k < sa["records"].size(); ++k) {
      const Json &ra = sa["records"][k], &rb = sb["records"][k];
      ASSERT_EQ(ra["series"], rb["series"]);
      EXPECT_LE(rel(rb["norm"], ra["norm"]), 1e-4) << a["series"][ra["series"].get<int>()]["name"] << " at step " << s;
      EXPECT_EQ(rb["numel"], ra["numel"]);
      ASSERT_EQ(rb["ranks"].size(), 2u);
      ++compared;
    }
    if (sb.contains("rank_checksums")) {
      EXPECT_EQ(sb["rank_checksums"][0], sb["rank_checksums"][1]);
    }
  }
  EXPECT_EQ(compared, 6 * 15);
  // The CSV's per-rank rows carry their rank; the averaged rows leave it empty.
  const std::string csv = slurp(dir + "/two/trace.csv");
  EXPECT_EQ(csv.substr(0, csv.find('\n')), "step,name,kind,quantity,value,rank,gradient");
  EXPECT_NE(csv.find("0,fc0.weight,parameter,norm,"), std::string::npos);
  EXPECT_NE(csv.find(",1,local\n"), std::string::npos);
  EXPECT_NE(csv.find(",,produced\n"), std::string::npos);
  fs::remove_all(dir);
}

TEST(RanksCli, UnderALauncherRankZeroWritesAndTheOthersWriteNothing) {
  const std::string dir = temp_dir("ranks_env");
  const std::string port = std::to_string(free_port());
  std::vector<Spawned> ranks;
  for (int r = 0; r < 2; ++r)
    ranks.push_back(spawn_cli(with(kTrain, {"--steps", "3", "--out", dir + "/r" + std::to_string(r)}),
                              {"RANK=" + std::to_string(r), "WORLD_SIZE=2", "MASTER_ADDR=127.0.0.1", "MASTER_PORT=" + port}));
  const auto r0 = finish(ranks[0], kLimitMs), r1 = finish(ranks[1], kLimitMs);
  EXPECT_EQ(r0.exit_code, 0) << r0.err;
  EXPECT_EQ(r1.exit_code, 0) << r1.err;
  EXPECT_EQ(run_json(dir + "/r0")["trace"]["world_size"], 2);
  EXPECT_FALSE(fs::exists(dir + "/r1"));
  EXPECT_TRUE(r1.out.empty()) << r1.out;
  fs::remove_all(dir);
}

// A long run whose rank `victim` gets `sig` once it trains; returns the launcher's result.
struct Stopped {
  CliResult result;
  double seconds = 0;
  std::vector<int> ranks;
};

Stopped stop_one_rank(const std::string& out, int victim, int sig, const std::string& timeout) {
  const auto s = spawn_cli(with(kTrain, {"--steps", "10000000", "--every", "5", "--ranks", "2", "--timeout", timeout, "--out", out}));
  Stopped st;
  st.ranks = ranks_of(s.pid, 2);
  std::this_thread::sleep_for(std::chrono::seconds(3));  // past the rendezvous, training
  const auto start = std::chrono::steady_clock::now();
  ::kill(victim < 0 ? s.pid : st.ranks[static_cast<std::size_t>(victim)], sig);
  st.result = finish(s, kLimitMs);
  st.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return st;
}

void expect_partial_trace(const std::string& out) {
  const Json run = run_json(out);
  EXPECT_TRUE(run["interrupted"].get<bool>());
  EXPECT_TRUE(run["trace"]["interrupted"].get<bool>());
  EXPECT_GT(run["trace"]["steps"].size(), 0u);
  for (const auto& st : run["trace"]["steps"]) EXPECT_FALSE(st.contains("partial"));
}

void expect_all_gone(const std::vector<int>& pids) {
  for (int p : pids) EXPECT_FALSE(process_alive(p)) << "rank process " << p << " is still running";
}

TEST(RanksCli, AKilledRankEndsTheRunNamingItAndTheTraceIsKept) {
  const std::string dir = temp_dir("ranks_kill");
  const Stopped st = stop_one_rank(dir + "/o", 1, SIGKILL, "10");
  EXPECT_EQ(st.result.exit_code, 1) << st.result.err;
  EXPECT_NE(st.result.err.find("lost rank 1"), std::string::npos) << st.result.err;
  EXPECT_LT(st.seconds, 10 + 5);
  expect_partial_trace(dir + "/o");
  expect_all_gone(st.ranks);
  fs::remove_all(dir);
}

TEST(RanksCli, AHungRankIsNamedOnceTheTimeoutPasses) {
  const std::string dir = temp_dir("ranks_hang");
  const Stopped st = stop_one_rank(dir + "/o", 1, SIGSTOP, "2");
  EXPECT_EQ(st.result.exit_code, 1) << st.result.err;
  EXPECT_NE(st.result.err.find("lost rank 1"), std::string::npos) << st.result.err;
  EXPECT_NE(st.result.err.find("within 2 s"), std::string::npos) << st.result.err;
  expect_partial_trace(dir + "/o");
  expect_all_gone(st.ranks);
  fs::remove_all(dir);
}

TEST(RanksCli, CtrlCOnTheLauncherStopsEveryRankAtTheSameStep) {
  const std::string dir = temp_dir("ranks_int");
  const Stopped st = stop_one_rank(dir + "/o", -1, SIGINT, "60");
  EXPECT_EQ(st.result.exit_code, 130) << st.result.err;
  EXPECT_LT(st.seconds, 10);
  const Json run = run_json(dir + "/o");
  EXPECT_TRUE(run["interrupted"].get<bool>());
  EXPECT_EQ(run["stop_reason"], "");
  expect_all_gone(st.ranks);
  fs::remove_all(dir);
}

TEST(RanksCli, LaunchStartsAProgramPerRankWithTheLaunchersVariables) {
  const std::string dir = temp_dir("ranks_launch");
  const auto ok = finish(spawn_cli({"launch", "--ranks", "2", "--", "/bin/sh", "-c",
                                    "echo \"$RANK/$WORLD_SIZE $MASTER_ADDR $TORCHELASTIC_USE_AGENT_STORE\" > " + dir + "/r$RANK"}),
                         kLimitMs);
  EXPECT_EQ(ok.exit_code, 0) << ok.err;
  EXPECT_EQ(slurp(dir + "/r0"), "0/2 127.0.0.1 True\n");
  EXPECT_EQ(slurp(dir + "/r1"), "1/2 127.0.0.1 True\n");
  const auto bad = finish(spawn_cli({"launch", "--ranks", "2", "--", "/bin/sh", "-c", "exit $RANK"}), kLimitMs);
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.err.find("rank 1 exited with code 1"), std::string::npos) << bad.err;
  fs::remove_all(dir);
}

}  // namespace
}  // namespace gradflow::test
