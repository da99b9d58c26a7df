#include "cmd_bench.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <memory>
#include <random>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <unistd.h>

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
  bool stream = false;  // each recorded step appended to MonitorOptions::out
};

const std::vector<Mode> kModes = {
    {"bare", false, false, false, 1},
    {"params", true, false, false, 1},
    {"params+acts", true, true, false, 1},
    {"params+acts/10", true, true, false, 10},
    {"full", true, true, true, 1},
    {"params+acts+out", true, true, false, 1, true},
    {"params+acts/10+out", true, true, false, 10, true},
};

// Where the streaming modes write (one folder per bench run, removed at its end).
const std::string& stream_folder() {
  static const std::string dir = (std::filesystem::temp_directory_path() /
                                  ("gradflow-bench-stream-" + std::to_string(::getpid())))
                                     .string();
  return dir;
}

struct Setup {
  std::string name, spec, task;
  std::int64_t batch, seq_len;
  // Steps per timed block (each block with a fresh Monitor, attach and detach not timed), and
  // rounds per requested round: a small model's short steps need more of both to average out
  // the machine's drift.
  int block_steps = 10;
  int rounds_factor = 1;
};

// The models `--models` can name, in the order they are reported.
const std::vector<Setup> kSetups = {
    {"mlp", "mlp:depth=50,width=256,act=relu,init=he_normal", "teacher", 128, 50},
    {"mlp-small", "mlp:depth=10,width=64,act=relu,init=he_normal", "teacher", 128, 50, 20, 4},
    {"cnn", "cnn:depth=8,channels=32,act=relu,norm=batch", "images", 64, 50},
    {"lstm", "lstm:hidden=128", "adding", 32, 100},
};

std::vector<Setup> chosen_setups(const std::string& list) {
  std::vector<Setup> out;
  std::string known;
  for (const auto& s : kSetups) known += (known.empty() ? "" : ", ") + s.name;
  std::size_t start = 0;
  while (start <= list.size()) {
    const std::size_t end = std::min(list.find(',', start), list.size());
    const std::string name = list.substr(start, end - start);
    const auto it = std::find_if(kSetups.begin(), kSetups.end(), [&](const Setup& s) { return s.name == name; });
    if (it == kSetups.end())
      throw UsageError("--models: unknown model '" + name + "': name some of " + known + ", separated by commas");
    if (std::none_of(out.begin(), out.end(), [&](const Setup& s) { return s.name == name; })) out.push_back(*it);
    start = end + 1;
  }
  return out;
}

// What one mode's blocks measured.
struct Timing {
  double ms = 0;               // median milliseconds per step
  double tensors_per_step = 0;  // records in a recorded step
  double kernel_us = 0;         // the statistics kernels alone over those records' sizes, per step
};

// One model with its data and optimizer, able to run a training step in any mode.
// The trace must hold what was promised, or the timing measured nothing.
void check_recorded(Monitor& mon, const Mode& mode, int steps) {
  const auto recorded = mon.trace().steps().size();
  const auto expected = static_cast<std::size_t>((steps + mode.every - 1) / mode.every);
  if (recorded != expected)
    throw Error(fmt::format("bench: {} recorded {} steps instead of {}", mode.name, recorded, expected));
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const auto n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// The statistics kernels alone over buffers of the recorded sizes: what a recorded step must
// spend whatever the bookkeeping around them; median over rounds, microseconds.
double kernel_us(const std::vector<std::pair<std::int64_t, bool>>& tensors) {
  std::int64_t largest = 1;
  for (const auto& t : tensors) largest = std::max(largest, t.first);
  const at::Tensor g = torch::randn({largest}) * 1e-3, w = torch::randn({largest});
  const float* gp = g.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  std::vector<double> rounds;
  double sink = 0;
  for (int r = 0; r < 51; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    for (const auto& [n, param] : tensors) {
      double wsq = 0;
      sink += param ? compute_stats_with_weight(gp, wp, n, wsq).sum + wsq : compute_stats(gp, n).sum;
    }
    rounds.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
  }
  if (!std::isfinite(sink)) throw Error("bench: the kernel timing read non-finite data");
  return median(rounds);
}

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
      if (mode.stream) o.with_out(stream_folder(), /*replace=*/true);
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
    if (mon) check_recorded(*mon, mode, steps);
    return std::chrono::duration<double, std::milli>(t1 - t0).count() / steps;
  }
  // The sizes of what one recorded step of `mode` records, and whether each is a parameter
  // (whose pass reads the weight too).
  std::vector<std::pair<std::int64_t, bool>> recorded_tensors(const Mode& mode) {
    MonitorOptions o;
    o.activations = mode.activations;
    Monitor mon(*net_, o);
    opt_->zero_grad();
    auto loss = task_->loss(net_->forward(batch_.x, mode.taps ? &mon : nullptr), batch_);
    mon.watch(loss);
    loss.backward();
    mon.step();
    const Trace& t = mon.trace();
    std::vector<std::pair<std::int64_t, bool>> out;
    for (const auto& r : t.steps().back().records)
      out.emplace_back(r.grad.numel, t.series()[r.series].kind == SeriesKind::parameter);
    return out;
  }
  // One sharpness measurement on this step's batch against one forward and backward: the
  // median milliseconds of each over `rounds`, and the products a measurement took.
  struct SharpnessCost {
    double measure_ms = 0, backward_ms = 0;
    int products = 0;
  };
  SharpnessCost sharpness_cost(int rounds) {
    MonitorOptions o;
    o.with_sharpness(1, [this] { return task_->loss(net_->forward(batch_.x, nullptr), batch_); }).with_auto_step(false);
    o.activations = false;
    Monitor mon(*net_, o);
    std::vector<double> measure, backward;
    SharpnessCost c;
    for (int r = 0; r < rounds; ++r) {
      opt_->zero_grad();
      const auto t0 = std::chrono::steady_clock::now();
      auto loss = task_->loss(net_->forward(batch_.x, nullptr), batch_);
      mon.watch(loss);
      loss.backward();
      const auto t1 = std::chrono::steady_clock::now();
      mon.step();  // measures
      const auto t2 = std::chrono::steady_clock::now();
      backward.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
      measure.push_back(std::chrono::duration<double, std::milli>(t2 - t1).count());
      c.products = mon.trace().steps().back().sharpness_products;
    }
    c.measure_ms = median(measure);
    c.backward_ms = median(backward);
    return c;
  }
  const Setup& setup() const { return setup_; }

 private:
  Setup setup_;
  std::unique_ptr<models::Task> task_;
  std::shared_ptr<models::Network> net_;
  models::Batch batch_;
  std::unique_ptr<torch::optim::SGD> opt_;
};

void print_header(const BenchOptions& o, int reps) {
  std::printf("gradflow bench: %s, %d LibTorch thread(s), BLAS %s with %d thread(s), statistics kernel %s\n",
              o.quick ? "quick" : "full", at::get_num_threads(), blas_name(), blas_threads(), stats_kernel_isa());
  std::printf("each mode runs in interleaved blocks (%d rounds, more for small models); ms = median per step;\n"
              "overhead = median over rounds of monitored / bare in the same round, - 1\n", reps);
  std::printf("per tensor: overhead x bare / tensors recorded a step; kernels = the statistics passes alone\n"
              "over those tensors' sizes; fixed = per tensor - kernels (every-step modes without taps)\n\n");
  std::printf("%-9s %-16s %8s %10s %9s %8s %10s %9s %9s\n", "model", "mode", "bare ms", "monitored", "overhead",
              "tensors", "us/tensor", "kernels", "fixed");
}

// What the interleaved rounds measured, per mode: the median milliseconds per step, and the
// median over rounds of its ratio to the bare step of the same round (drift cancels in it).
struct ModeTimes {
  std::vector<double> ms, ratio;
};

// The modes run in a fresh order each round so that drift hits all of them alike.
ModeTimes time_modes(Bench& b, int rounds, std::mt19937& rng) {
  const int steps = b.setup().block_steps;
  for (const auto& m : kModes) b.run(m, steps);  // warm up every path (allocator, first graph walk)
  std::vector<std::vector<double>> times(kModes.size()), ratios(kModes.size());
  std::vector<std::size_t> order(kModes.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  for (int r = 0; r < rounds; ++r) {
    std::shuffle(order.begin(), order.end(), rng);
    for (auto i : order) times[i].push_back(b.run(kModes[i], steps));
    for (std::size_t i = 0; i < kModes.size(); ++i) ratios[i].push_back(times[i].back() / times[0].back());
    if (interrupted()) throw Error("bench interrupted");
  }
  ModeTimes out;
  for (std::size_t i = 0; i < kModes.size(); ++i) {
    out.ms.push_back(median(times[i]));
    out.ratio.push_back(median(ratios[i]));
  }
  return out;
}

nlohmann::json report_mode(Bench& b, const Mode& m, double bare, double mon, double ratio, int rounds) {
  const double overhead = ratio - 1;
  nlohmann::json rec = {{"model", b.setup().name}, {"spec", b.setup().spec}, {"mode", m.name}, {"bare_ms", bare},
                        {"monitored_ms", mon}, {"overhead", overhead}, {"rounds", rounds}, {"block_steps", b.setup().block_steps}};
  std::string per_tensor = fmt::format("{:>8} {:>10} {:>9} {:>9}", "", "", "", "");
  if (m.every == 1) {
    const auto tensors = b.recorded_tensors(m);
    const double n = static_cast<double>(std::max<std::size_t>(tensors.size(), 1));
    const double us = 1000 * overhead * bare / n;
    const double kernels = kernel_us(tensors) / n;
    rec["tensors_per_step"] = tensors.size();
    rec["overhead_us_per_tensor"] = us;
    rec["kernel_us_per_tensor"] = kernels;
    if (!m.taps) rec["fixed_us_per_tensor"] = us - kernels;
    per_tensor = fmt::format("{:>8} {:>10.2f} {:>9.2f} {:>9}", tensors.size(), us, kernels,
                             m.taps ? std::string("-") : fmt::format("{:.2f}", us - kernels));
  }
  std::printf("%-9s %-16s %8.2f %10.2f %+8.1f%% %s\n", b.setup().name.c_str(), m.name.c_str(), bare, mon, 100 * overhead,
              per_tensor.c_str());
  return rec;
}

// What one sharpness measurement costs, in backward passes (a forward and its backward) and in
// bare training steps.
nlohmann::json report_sharpness(Bench& b, double bare_step_ms, int rounds) {
  const Bench::SharpnessCost c = b.sharpness_cost(rounds);
  const double passes = c.measure_ms / c.backward_ms;
  std::printf("%-9s %-16s one measurement %.2f ms: %d Hessian-vector products = %.1f forward+backward passes = %.1f bare steps\n",
              b.setup().name.c_str(), "sharpness", c.measure_ms, c.products, passes, c.measure_ms / bare_step_ms);
  return {{"model", b.setup().name}, {"mode", "sharpness"}, {"measure_ms", c.measure_ms}, {"backward_ms", c.backward_ms},
          {"hessian_vector_products", c.products}, {"backward_passes", passes}, {"bare_steps", c.measure_ms / bare_step_ms}};
}

}  // namespace

int run_bench(const BenchOptions& o) {
  const std::vector<Setup> setups = chosen_setups(o.models);
  const int reps = o.reps > 0 ? o.reps : (o.quick ? 7 : 25);
  print_header(o, reps);
  nlohmann::json records = nlohmann::json::array();
  std::mt19937 rng(1);
  for (const auto& s : setups) {
    Bench b(s);
    const int rounds = reps * s.rounds_factor;
    const ModeTimes t = time_modes(b, rounds, rng);
    for (std::size_t i = 1; i < kModes.size(); ++i)
      records.push_back(report_mode(b, kModes[i], t.ms[0], t.ms[i], t.ratio[i], rounds));
    records.push_back(report_sharpness(b, t.ms[0], std::max(3, reps / 3)));
    std::fflush(stdout);
  }
  std::error_code ec;
  std::filesystem::remove_all(stream_folder(), ec);
  if (!o.json.empty()) write_file_atomic(o.json, records.dump(1) + "\n");
  return kExitOk;
}

void setup_bench(CLI::App& app) {
  auto o = std::make_shared<BenchOptions>();
  auto* sub = app.add_subcommand("bench", "Measure the Monitor's cost against a bare LibTorch training step");
  sub->add_flag("--quick", o->quick, "Fewer repetitions (under a minute)");
  sub->add_option("--json", o->json, "Write the records {model, mode, bare_ms, monitored_ms, overhead} to this file");
  sub->add_option("--models", o->models, "Comma-separated: mlp (50x256), mlp-small (10x64), cnn, lstm")->capture_default_str();
  sub->add_option("--reps", o->reps, "Interleaved rounds (default 25, 7 with --quick)");
  sub->final_callback([o] { throw CLI::RuntimeError(run_bench(*o)); });
}

}  // namespace gradflow::cli
