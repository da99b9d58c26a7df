#include "models/train.h"

#include <chrono>
#include <cmath>
#include <limits>

#include <fmt/format.h>

#include <torch/torch.h>

#include "gradflow/data_parallel.h"
#include "gradflow/error.h"
#include "gradflow/monitor.h"
#include "models/generator_guard.h"
#include "models/network.h"
#include "models/parametrise.h"
#include "models/task.h"

namespace gradflow::models {

namespace {

std::string fmt_num(double v) { return fmt::format("{}", v); }

std::string default_task(const std::string& family) {
  for (const auto& f : families())
    if (f.name == family) return f.default_task;
  return "teacher";
}


// The record's identity and configuration, before any step.
RunRecord describe_run(const ResolvedSpec& spec, const TrainOptions& o, const Task& task, const Network& net,
                       const OptimizerChoice& opt, int ranks) {
  RunRecord r;
  r.family = spec.family;
  r.label = spec.label();
  r.task = task.name();
  r.task_description = task.describe();
  r.baseline_loss = task.baseline_loss();
  r.tiny = spec.get("dtype") == "float64" ? std::numeric_limits<double>::denorm_min() : std::numeric_limits<float>::denorm_min();
  r.steps_requested = o.steps;
  for (const auto& [k, v] : spec.values)
    r.config.push_back({k, v, spec.is_remedy(k) ? ConfigRole::remedy : ConfigRole::setting});
  auto setting = [&](std::string key, std::string value, ConfigRole role = ConfigRole::setting) {
    r.config.push_back({std::move(key), std::move(value), role});
  };
  setting("task", r.task);
  if (!task.sequential()) {
    setting("classes", std::to_string(o.classes));
    setting("noise", fmt_num(o.noise));
    if (r.task != "images") setting("inputs", std::to_string(o.inputs));
  }
  if (task.sequential()) setting("seq_len", std::to_string(o.seq_len));
  setting("steps", std::to_string(o.steps));
  setting("batch", std::to_string(o.batch));
  if (ranks > 1) setting("ranks", std::to_string(ranks));
  setting("optimizer", opt.name);
  setting("lr", fmt_num(opt.lr));
  if (opt.name == "sgd") setting("momentum", fmt_num(o.momentum));
  setting("clip_norm", fmt_num(o.clip_norm), ConfigRole::remedy);
  setting("clip_value", fmt_num(o.clip_value), ConfigRole::remedy);
  setting("seed", std::to_string(o.seed));
  setting("every", std::to_string(o.every), ConfigRole::recording);
  for (const auto& l : net.layers()) r.layers.push_back({l.name, l.kind, l.depth});
  r.traits = spec.traits();
  r.traits.clip_norm = o.clip_norm;
  r.traits.clip_value = o.clip_value;
  return r;
}

// This rank's examples of the step's batch: what a one-process run draws, cut into equal shards.
Batch shard_of(Batch b, const DataParallel* dp) {
  if (!dp || dp->world_size() == 1) return b;
  const std::int64_t n = b.x.size(0) / dp->world_size(), start = n * dp->rank();
  return {b.x.narrow(0, start, n), b.y.narrow(0, start, n)};
}

// What one step reports, fetched from the device in one transfer (and, data-parallel, summed
// over the ranks inside the gradient's own allreduce).
struct StepFigures {
  double loss = 0;
  std::optional<double> accuracy;
  std::optional<double> clip_peak;  // largest |g| before value clipping
  bool stop = false;                // some rank asked to stop
};

// The loss, then the accuracy and the clipping peak where defined, in one transfer.
std::vector<double> host_figures(const torch::Tensor& loss, const torch::Tensor& acc, const torch::Tensor& clip_peak) {
  // Built by push_back: GCC 12 warns (wrongly) inside c10 on a one-element initializer list.
  std::vector<torch::Tensor> parts;
  parts.push_back(loss.detach().to(torch::kDouble).reshape({1}));
  if (acc.defined()) parts.push_back(acc.detach().to(torch::kDouble).reshape({1}));
  if (clip_peak.defined()) parts.push_back(clip_peak.to(torch::kDouble).reshape({1}));
  const torch::Tensor host = torch::cat(parts).to(torch::kCPU).contiguous();
  return {host.data_ptr<double>(), host.data_ptr<double>() + host.numel()};
}

// `v`: host_figures' values, then the stop flag.
StepFigures figures_from(const std::vector<double>& v, bool has_accuracy, bool has_peak) {
  StepFigures f;
  std::size_t i = 0;
  f.loss = v.at(i++);
  if (has_accuracy) f.accuracy = v.at(i++);
  if (has_peak) f.clip_peak = v.at(i++);
  f.stop = v.at(i) > 0;
  return f;
}

// Data-parallel: averages the gradients, and the ranks' loss, accuracy and stop requests with
// them (the figures ride in the last bucket: no collective of their own).
StepFigures average_step(DataParallel& dp, const std::vector<torch::Tensor>& params, const torch::Tensor& loss,
                         const torch::Tensor& acc, bool stop) {
  std::vector<double> v = host_figures(loss, acc, torch::Tensor());
  v.push_back(stop ? 1.0 : 0.0);
  v = dp.average_gradients(params, v);
  for (std::size_t i = 0; i + 1 < v.size(); ++i) v[i] /= dp.world_size();
  return figures_from(v, acc.defined(), false);
}

// Clips as asked; returns the largest |g| before value clipping (undefined without it) and
// counts a step whose gradient norm clipping changed.
torch::Tensor clip(const std::vector<torch::Tensor>& params, const TrainOptions& o, RunRecord& r) {
  if (o.clip_norm > 0) {
    const double total = torch::nn::utils::clip_grad_norm_(params, o.clip_norm);
    if (total > o.clip_norm) ++r.clipped_steps;
  }
  torch::Tensor peak;
  if (o.clip_value > 0) {
    std::vector<torch::Tensor> peaks;
    for (const auto& p : params)
      if (p.grad().defined()) peaks.push_back(p.grad().abs().max());
    if (!peaks.empty()) peak = torch::stack(peaks).max();
    torch::nn::utils::clip_grad_value_(params, o.clip_value);
  }
  return peak;
}

// `n` examples of the task, drawn with LibTorch's CPU generator put back afterwards: the
// training's batches are the same with or without them.
Batch aside_batch(Task& task, std::int64_t n) {
  CpuGeneratorGuard put_back;
  return task.sample(n);
}

// Linear warm-up: step s (from 0) trains each group at its lr · min(1, (s + 1) / steps).
void set_warmup_lr(torch::optim::Optimizer& opt, const std::vector<ParameterGroup>& groups, double lr, std::int64_t warmup_steps,
                   std::int64_t step) {
  if (warmup_steps <= 0 || step > warmup_steps) return;
  const double now = lr * std::min(1.0, static_cast<double>(step + 1) / static_cast<double>(warmup_steps));
  for (std::size_t g = 0; g < groups.size(); ++g) opt.param_groups()[g].options().set_lr(now * groups[g].lr_multiplier);
}

MonitorOptions monitor_options(const ResolvedSpec& spec, const TrainOptions& o) {
  MonitorOptions mo;
  mo.every = o.every;
  // Recurrent nets are measured per time step through their taps; the graph walk would name
  // every cell call separately.
  mo.activations = o.activations && spec.family != "rnn";
  if (o.data_parallel) mo.with_data_parallel(*o.data_parallel, o.batch / o.data_parallel->world_size());
  return mo;
}

}  // namespace

OptimizerChoice choose_optimizer(const ResolvedSpec& spec, const TrainOptions& o) {
  const bool sequences = sequence_family(spec.family);
  OptimizerChoice c;
  c.name = !o.optimizer.empty() ? o.optimizer : (sequences ? "adam" : "sgd");
  c.lr = o.lr ? *o.lr : (c.name == "adam" ? 3e-3 : 0.05);
  return c;
}

OptimizerKind optimizer_kind(const OptimizerChoice& c) { return c.name == "adam" ? OptimizerKind::adam : OptimizerKind::sgd; }

// One parameter group per learning rate the spec's parametrisation gives.
std::unique_ptr<torch::optim::Optimizer> make_optimizer(const OptimizerChoice& c, const std::vector<ParameterGroup>& groups,
                                                        double momentum) {
  std::vector<torch::optim::OptimizerParamGroup> pg;
  for (const auto& g : groups) {
    if (c.name == "adam")
      pg.emplace_back(g.params, std::make_unique<torch::optim::AdamOptions>(c.lr * g.lr_multiplier));
    else
      pg.emplace_back(g.params, std::make_unique<torch::optim::SGDOptions>(torch::optim::SGDOptions(c.lr * g.lr_multiplier).momentum(momentum)));
  }
  if (c.name == "adam") return std::make_unique<torch::optim::Adam>(std::move(pg), torch::optim::AdamOptions(c.lr));
  return std::make_unique<torch::optim::SGD>(std::move(pg), torch::optim::SGDOptions(c.lr).momentum(momentum));
}

std::unique_ptr<Task> make_task_for(const ResolvedSpec& spec, const TrainOptions& o) {
  TaskOptions to;
  to.name = o.task.empty() ? default_task(spec.family) : o.task;
  to.seq_len = o.seq_len;
  to.inputs = o.inputs;
  to.classes = o.classes;
  to.noise = o.noise;
  to.dtype = spec.get("dtype") == "float64" ? torch::kDouble : torch::kFloat;
  return make_task(to, spec.family);
}

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
  if (o.sharpness_every < 0) throw UsageError("--sharpness-every must be 0 (off) or more");
  if (o.sharpness_every > 0 && o.data_parallel)
    throw UsageError("--sharpness-every measures one process's full-batch Hessian: run it without --ranks");
  if (o.seq_len < 1 || o.seq_len > 100000)
    throw UsageError("--seq-len must be between 1 and 100000 (got " + std::to_string(o.seq_len) + ")");
}

void validate_shards(std::int64_t batch, int ranks) {
  if (ranks < 1) throw UsageError("a group needs at least one rank (got " + std::to_string(ranks) + ")");
  if (batch % ranks != 0)
    throw UsageError(fmt::format("--batch {} does not split into {} equal shards: give a multiple of {}", batch, ranks, ranks));
}

RunRecord train(const ResolvedSpec& spec, const TrainOptions& o) {
  validate(o);
  DataParallel* dp = o.data_parallel;
  const int ranks = dp ? dp->world_size() : 1;
  validate_shards(o.batch, ranks);
  const auto start = std::chrono::steady_clock::now();
  torch::manual_seed(o.seed);
  auto task = make_task_for(spec, o);
  if (spec.traits().norm == Norm::batch && o.batch / ranks < 2)
    throw UsageError("batch norm needs 2 or more examples per rank in training mode: raise --batch");
  auto net = make_network(spec, task->input_dim(), task->output_dim());
  const OptimizerChoice choice = choose_optimizer(spec, o);
  RunRecord r = describe_run(spec, o, *task, *net, choice, ranks);
  if (dp) dp->broadcast_parameters(*net);
  const auto params = net->parameters();
  // Only µP's rates depend on the weights' kinds.
  const ParameterLayout layout = parametrisation_of(spec) == Parametrisation::mup ? parameter_layout(spec, task->input_dim(), task->output_dim())
                                                                                  : ParameterLayout{};
  const auto groups = parameter_groups(spec, *net, optimizer_kind(choice), layout);
  auto opt = make_optimizer(choice, groups, o.momentum);

  MonitorOptions mo = monitor_options(spec, o);
  Batch fixed;
  if (o.sharpness_every > 0) {
    fixed = aside_batch(*task, o.batch);
    mo.with_sharpness(o.sharpness_every, [&] { return task->loss(net->forward(fixed.x, nullptr), fixed); });
  }
  Monitor mon(*net, mo);
  net->train();
  try {
    for (std::int64_t step = 0; step < o.steps; ++step) {
      // Data-parallel ranks stop together, at the end of a step: see fetch_figures.
      if (!dp && o.should_stop && o.should_stop()) {
        r.interrupted = true;
        break;
      }
      const Batch b = shard_of(task->sample(o.batch), dp);
      set_warmup_lr(*opt, groups, choice.lr, r.traits.warmup_steps, step);
      opt->zero_grad();
      torch::Tensor out = net->forward(b.x, &mon);
      torch::Tensor loss = task->loss(out, b);
      mon.watch(loss);
      loss.backward();
      const torch::Tensor acc = task->accuracy(out, b);
      StepFigures f;
      if (dp) f = average_step(*dp, params, loss, acc, o.should_stop && o.should_stop());
      const torch::Tensor peak = clip(params, o, r);
      mon.optimizer_step(*opt);  // the applied (averaged, clipped) gradient beside the produced one
      if (!dp) {
        std::vector<double> v = host_figures(loss, acc, peak);
        v.push_back(0.0);
        f = figures_from(v, acc.defined(), peak.defined());
      } else if (peak.defined()) {
        f.clip_peak = peak.item<double>();  // of the averaged gradient: the same on every rank
      }
      r.loss.push_back(f.loss);
      if (f.accuracy) r.accuracy.push_back(*f.accuracy);
      if (f.clip_peak && *f.clip_peak > o.clip_value && !(o.clip_norm > 0)) ++r.clipped_steps;
      ++r.steps_done;
      if (o.progress) o.progress(step + 1, o.steps);
      if (!std::isfinite(f.loss) && o.stop_on_nonfinite) {
        r.stopped_on_nonfinite = true;
        break;
      }
      if (f.stop) {
        r.interrupted = true;
        break;
      }
    }
  } catch (const RankLost& e) {
    mon.abandon_step();
    r.interrupted = true;
    r.stop_reason = e.what();
  }
  mon.detach();
  if (r.interrupted) mon.mark_interrupted();
  r.trace = mon.trace();
  r.wall_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  r.analyse();
  return r;
}

}  // namespace gradflow::models
