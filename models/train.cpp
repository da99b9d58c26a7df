#include "models/train.h"

#include <chrono>
#include <cmath>
#include <limits>

#include <fmt/format.h>
#include <torch/torch.h>

#include "gradflow/error.h"
#include "gradflow/monitor.h"
#include "models/network.h"
#include "models/task.h"

namespace gradflow::models {

namespace {

std::string fmt_num(double v) { return fmt::format("{}", v); }

std::string default_task(const std::string& family) {
  for (const auto& f : families())
    if (f.name == family) return f.default_task;
  return "teacher";
}

}  // namespace

void validate(const TrainOptions& o) {
  if (o.steps < 1 || o.steps > 10000000)
    throw UsageError("--steps must be between 1 and 10000000 (got " + std::to_string(o.steps) + ")");
  if (o.batch < 1 || o.batch > 1000000)
    throw UsageError("--batch must be between 1 and 1000000 (got " + std::to_string(o.batch) + ")");
  if (o.lr && !(*o.lr > 0 && *o.lr < 1e6))
    throw UsageError("--lr must be a positive number below 1e6 (got " + fmt_num(*o.lr) + ")");
  if (!o.optimizer.empty() && o.optimizer != "sgd" && o.optimizer != "adam")
    throw UsageError("unknown optimizer '" + o.optimizer + "': choose sgd or adam");
  if (!(o.momentum >= 0 && o.momentum < 1)) throw UsageError("--momentum must be in [0, 1)");
  if (!(o.clip_norm >= 0) || !std::isfinite(o.clip_norm))
    throw UsageError("--clip-norm must be a positive number (0 turns clipping off)");
  if (!(o.clip_value >= 0) || !std::isfinite(o.clip_value))
    throw UsageError("--clip-value must be a positive number (0 turns clipping off)");
  if (o.every < 1) throw UsageError("--every must be at least 1 (record every k-th step)");
  if (o.seq_len < 1 || o.seq_len > 100000)
    throw UsageError("--seq-len must be between 1 and 100000 (got " + std::to_string(o.seq_len) + ")");
}

RunRecord train(const ResolvedSpec& spec, const TrainOptions& o) {
  validate(o);
  const auto start = std::chrono::steady_clock::now();
  torch::manual_seed(o.seed);
  const bool f64 = spec.get("dtype") == "float64";
  TaskOptions to;
  to.name = o.task.empty() ? default_task(spec.family) : o.task;
  to.seq_len = o.seq_len;
  to.inputs = o.inputs;
  to.classes = o.classes;
  to.noise = o.noise;
  to.dtype = f64 ? torch::kDouble : torch::kFloat;
  auto task = make_task(to, spec.family);
  if (spec.traits().norm == Norm::batch && o.batch < 2)
    throw UsageError("batch norm needs --batch 2 or more in training mode");
  auto net = make_network(spec, task->input_dim(), task->output_dim());

  const bool rnn = spec.family == "rnn";
  const std::string opt_name = !o.optimizer.empty() ? o.optimizer : (rnn ? "adam" : "sgd");
  const double lr = o.lr ? *o.lr : (opt_name == "adam" ? 3e-3 : 0.05);
  std::unique_ptr<torch::optim::Optimizer> opt;
  if (opt_name == "adam")
    opt = std::make_unique<torch::optim::Adam>(net->parameters(), torch::optim::AdamOptions(lr));
  else
    opt = std::make_unique<torch::optim::SGD>(net->parameters(), torch::optim::SGDOptions(lr).momentum(o.momentum));

  RunRecord r;
  r.family = spec.family;
  r.label = spec.label();
  r.task = task->name();
  r.task_description = task->describe();
  r.baseline_loss = task->baseline_loss();
  r.tiny = f64 ? std::numeric_limits<double>::denorm_min() : std::numeric_limits<float>::denorm_min();
  r.steps_requested = o.steps;
  for (const auto& [k, v] : spec.values)
    r.config.push_back({k, v, spec.is_remedy(k) ? ConfigRole::remedy : ConfigRole::setting});
  auto setting = [&](std::string key, std::string value, ConfigRole role = ConfigRole::setting) {
    r.config.push_back({std::move(key), std::move(value), role});
  };
  setting("task", r.task);
  if (!task->sequential()) {
    setting("classes", std::to_string(o.classes));
    setting("noise", fmt_num(o.noise));
    if (r.task != "images") setting("inputs", std::to_string(o.inputs));
  }
  if (task->sequential()) setting("seq_len", std::to_string(o.seq_len));
  setting("steps", std::to_string(o.steps));
  setting("batch", std::to_string(o.batch));
  setting("optimizer", opt_name);
  setting("lr", fmt_num(lr));
  if (opt_name == "sgd") setting("momentum", fmt_num(o.momentum));
  setting("clip_norm", fmt_num(o.clip_norm), ConfigRole::remedy);
  setting("clip_value", fmt_num(o.clip_value), ConfigRole::remedy);
  setting("seed", std::to_string(o.seed));
  setting("every", std::to_string(o.every), ConfigRole::recording);
  for (const auto& l : net->layers()) r.layers.push_back({l.name, l.kind, l.depth});
  r.traits = spec.traits();
  r.traits.clip_norm = o.clip_norm;
  r.traits.clip_value = o.clip_value;

  MonitorOptions mo;
  mo.every = o.every;
  // Recurrent nets are measured per time step through their taps; the graph walk would name
  // every cell call separately.
  mo.activations = o.activations && !rnn;
  Monitor mon(*net, mo);
  net->train();
  const auto params = net->parameters();
  for (std::int64_t step = 0; step < o.steps; ++step) {
    if (o.should_stop && o.should_stop()) {
      r.interrupted = true;
      break;
    }
    Batch b = task->sample(o.batch);
    opt->zero_grad();
    torch::Tensor out = net->forward(b.x, &mon);
    torch::Tensor loss = task->loss(out, b);
    mon.watch(loss);
    loss.backward();
    if (o.clip_norm > 0) {
      const double total = torch::nn::utils::clip_grad_norm_(params, o.clip_norm);
      if (total > o.clip_norm) ++r.clipped_steps;
    }
    torch::Tensor clip_peak;  // largest |g| before value clipping, still on the device
    if (o.clip_value > 0) {
      std::vector<torch::Tensor> peaks;
      for (const auto& p : params)
        if (p.grad().defined()) peaks.push_back(p.grad().abs().max());
      if (!peaks.empty()) clip_peak = torch::stack(peaks).max();
      torch::nn::utils::clip_grad_value_(params, o.clip_value);
    }
    opt->step();
    // One host transfer for what the step reports, not one per parameter.
    const torch::Tensor acc = task->accuracy(out, b);
    // Built by push_back: GCC 12 warns (wrongly) inside c10 on a one-element initializer list.
    std::vector<torch::Tensor> parts;
    parts.push_back(loss.detach().to(torch::kDouble).reshape({1}));
    if (acc.defined()) parts.push_back(acc.detach().to(torch::kDouble).reshape({1}));
    if (clip_peak.defined()) parts.push_back(clip_peak.to(torch::kDouble).reshape({1}));
    const torch::Tensor host = torch::cat(parts).to(torch::kCPU).contiguous();
    const double* v = host.data_ptr<double>();
    const double lv = v[0];
    r.loss.push_back(lv);
    if (acc.defined()) r.accuracy.push_back(v[1]);
    if (clip_peak.defined() && v[parts.size() - 1] > o.clip_value && !(o.clip_norm > 0)) ++r.clipped_steps;
    ++r.steps_done;
    if (o.progress) o.progress(step + 1, o.steps);
    if (!std::isfinite(lv) && o.stop_on_nonfinite) {
      r.stopped_on_nonfinite = true;
      break;
    }
  }
  mon.detach();
  if (r.interrupted) mon.mark_interrupted();
  r.trace = mon.trace();
  r.wall_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  r.analyse();
  return r;
}

}  // namespace gradflow::models
