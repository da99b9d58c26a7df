#include "cmd_bench.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <memory>
#include <random>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "common.h"
#include "gradflow/atomic_file.h"
#include "gradflow/error.h"
#include "gradflow/monitor.h"
#include "gradflow/tensor_stats.h"
#include "gradflow/threads.h"
#include "models/network.h"
#include "models/task.h"

namespace gradflow::cli {

namespace {

struct Mode {
  std::string name;
  bool monitored;
  bool activations;  // graph-walk dL/d(layer output)
  bool taps;         // the model's hidden-state taps with forward statistics
  std::int64_t every;
};

const std::vector<Mode> kModes = {
    {"bare", false, false, false, 1},
    {"params", true, false, false, 1},
    {"params+acts", true, true, false, 1},
    {"params+acts/10", true, true, false, 10},
    {"full", true, true, true, 1},
};

struct Setup {
  std::string name, spec, task;
  std::int64_t batch, seq_len;
};

// One model with its data and optimizer, able to run a training step in any mode.
class Bench {
 public:
  explicit Bench(const Setup& s) : setup_(s) {
    torch::manual_seed(0);
    const auto spec = models::resolve_spec(s.spec);
    models::TaskOptions to;
    to.name = s.task;
    to.seq_len = s.seq_len;
    task_ = models::make_task(to, spec.family);
    net_ = models::make_network(spec, task_->input_dim(), task_->output_dim());
    net_->train();
    batch_ = task_->sample(s.batch);
    opt_ = std::make_unique<torch::optim::SGD>(net_->parameters(), torch::optim::SGDOptions(1e-4));
  }
  // Runs `steps` steps in `mode` and returns the mean milliseconds per step.
  double run(const Mode& mode, int steps) {
    std::unique_ptr<Monitor> mon;
    if (mode.monitored) {
      MonitorOptions o;
      o.activations = mode.activations;
      o.every = mode.every;
      mon = std::make_unique<Monitor>(*net_, o);
    }
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < steps; ++i) {
      opt_->zero_grad();
      auto out = net_->forward(batch_.x, mode.taps ? mon.get() : nullptr);
      auto loss = task_->loss(out, batch_);
      if (mon) mon->watch(loss);
      loss.backward();
      opt_->step();
    }
    const auto t1 = std::chrono::steady_clock::now();
    if (mon) {
      // The trace must hold what was promised, or the timing measured nothing.
      const auto recorded = mon->trace().steps().size();
      const auto expected = static_cast<std::size_t>((steps + mode.every - 1) / mode.every);
      if (recorded != expected)
        throw Error(fmt::format("bench: {} recorded {} steps instead of {}", mode.name, recorded, expected));
    }
    return std::chrono::duration<double, std::milli>(t1 - t0).count() / steps;
  }
  const Setup& setup() const { return setup_; }

 private:
  Setup setup_;
  std::unique_ptr<models::Task> task_;
  std::shared_ptr<models::Network> net_;
  models::Batch batch_;
  std::unique_ptr<torch::optim::SGD> opt_;
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const auto n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

}  // namespace

int run_bench(const BenchOptions& o) {
  std::vector<Setup> setups;
  for (const auto& m : {std::string("mlp"), std::string("cnn"), std::string("lstm")}) {
    if (o.models.find(m) == std::string::npos) continue;
    if (m == "mlp") setups.push_back({"mlp", "mlp:depth=50,width=256,act=relu,init=he_normal", "teacher", 128, 50});
    if (m == "cnn") setups.push_back({"cnn", "cnn:depth=8,channels=32,act=relu,norm=batch", "images", 64, 50});
    if (m == "lstm") setups.push_back({"lstm", "lstm:hidden=128", "adding", 32, 100});
  }
  if (setups.empty()) throw UsageError("--models '" + o.models + "' names none of mlp, cnn, lstm");
  const int reps = o.reps > 0 ? o.reps : (o.quick ? 7 : 25);
  std::printf("gradflow bench: %s, %d LibTorch thread(s), BLAS %s with %d thread(s), statistics kernel %s\n",
              o.quick ? "quick" : "full", at::get_num_threads(), blas_name(), blas_threads(), stats_kernel_isa());
  std::printf("each figure: median over %d interleaved blocks of 10 steps; overhead = monitored / bare - 1\n\n", reps);
  std::printf("%-6s %-16s %10s %13s %9s\n", "model", "mode", "bare ms", "monitored ms", "overhead");
  nlohmann::json records = nlohmann::json::array();
  std::mt19937 rng(1);
  for (const auto& s : setups) {
    Bench b(s);
    for (const auto& m : kModes) b.run(m, 10);  // warm up every path (allocator, first graph walk)
    std::vector<std::vector<double>> times(kModes.size());
    for (int r = 0; r < reps; ++r) {
      // Interleave the modes in a fresh order each round so drift hits all of them alike.
      std::vector<std::size_t> order(kModes.size());
      for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
      std::shuffle(order.begin(), order.end(), rng);
      for (auto i : order) times[i].push_back(b.run(kModes[i], 10));
      if (interrupted()) throw Error("bench interrupted");
    }
    const double bare = median(times[0]);
    for (std::size_t i = 1; i < kModes.size(); ++i) {
      const double mon = median(times[i]);
      const double overhead = mon / bare - 1;
      std::printf("%-6s %-16s %10.2f %13.2f %+8.1f%%\n", s.name.c_str(), kModes[i].name.c_str(), bare, mon, 100 * overhead);
      records.push_back({{"model", s.name}, {"spec", s.spec}, {"mode", kModes[i].name}, {"bare_ms", bare}, {"monitored_ms", mon},
                         {"overhead", overhead}, {"reps", reps}});
    }
    std::fflush(stdout);
  }
  if (!o.json.empty()) write_file_atomic(o.json, records.dump(1) + "\n");
  return kExitOk;
}

void setup_bench(CLI::App& app) {
  auto o = std::make_shared<BenchOptions>();
  auto* sub = app.add_subcommand("bench", "Measure the Monitor's cost against a bare LibTorch training step");
  sub->add_flag("--quick", o->quick, "Fewer repetitions (under a minute)");
  sub->add_option("--json", o->json, "Write the records {model, mode, bare_ms, monitored_ms, overhead} to this file");
  sub->add_option("--models", o->models, "Which of mlp,cnn,lstm")->capture_default_str();
  sub->add_option("--reps", o->reps, "Interleaved rounds (default 25, 7 with --quick)");
  sub->final_callback([o] { throw CLI::RuntimeError(run_bench(*o)); });
}

}  // namespace gradflow::cli
