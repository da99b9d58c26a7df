#include "monitor/step_recorder.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string_view>
#include <unordered_map>
#include <unordered_set>

#include <fmt/format.h>
#include <torch/torch.h>
#include <torch/csrc/autograd/functions/accumulate_grad.h>
#include <torch/csrc/autograd/graph_task.h>

#include "compat/post_accumulate.h"
#include "gradflow/data_parallel.h"
#include "gradflow/error.h"
#include "gradflow/option.h"
#include "distributed/rank_block.h"
#include "distributed/rider_block.h"
#include "monitor/backward_context.h"
#include "stats/tensor_stats_torch.h"
#include "util/process.h"

namespace gradflow::detail {

namespace {

// The module a parameter belongs to. A weight computed by torch.nn.utils.parametrize keeps its
// parameters under "<module>.parametrizations.<tensor>.": they are the module's, whose weight they
// compute, and never a layer of their own.
std::string module_of(const std::string& param_name) {
  constexpr std::string_view kParametrizations = "parametrizations.";
  const auto at = param_name.find(kParametrizations);
  if (at != std::string::npos && (at == 0 || param_name[at - 1] == '.'))
    return at == 0 ? std::string("(root)") : param_name.substr(0, at - 1);
  const auto dot = param_name.rfind('.');
  return dot == std::string::npos ? std::string("(root)") : param_name.substr(0, dot);
}

std::vector<std::int64_t> shape_of(const at::Tensor& t) { return {t.sizes().begin(), t.sizes().end()}; }

// A sharded parameter's part in the ranks' rows: [parameter, field, numel] then its aten_stats.
constexpr std::int64_t kPartHeader = 3;
constexpr std::int64_t kPartEntry = kPartHeader + kAtenStatsSize;

// A tensor subclass (a DTensor, a collective's pending result, a quantized weight): its memory is
// not its values.
bool is_subclass(const at::Tensor& t) { return t.key_set().has(c10::DispatchKey::Python); }

// A part's aten_stats figures: from the fused host pass on a CPU part (one read, no temporaries),
// as ATen ops on the part's device otherwise. A weight or an update needs its sum of squares only.
at::Tensor part_stats(const at::Tensor& part, ResultField field) {
  if (!fused_applicable(part)) return aten_stats(part);
  TensorStats s;
  if (field == ResultField::weight || field == ResultField::update)
    s.sum_sq = fused_sum_of_squares(part);
  else
    s = fused_stats(part);
  return at::tensor({s.sum, s.sum_sq, s.max_abs, static_cast<double>(s.zeros), static_cast<double>(s.nonfinite)},
                    at::kDouble);
}

// Which ranks' parts of parameter `name` count toward it; empty when it is not sharded.
std::vector<bool> counted_parts(const Sharding& sharding, const std::string& name) {
  const auto it = sharding.counted.find(name);
  if (it == sharding.counted.end()) return {};
  if (static_cast<int>(it->second.size()) != sharding.world_size ||
      std::find(it->second.begin(), it->second.end(), true) == it->second.end())
    throw UsageError(fmt::format("sharded parameter '{}' names {} ranks' parts, none counted or not one per rank of {}: "
                                 "give each rank's whether it counts", name, it->second.size(), sharding.world_size));
  return it->second;
}

}  // namespace

StepRecorder::StepRecorder(MonitorOptions options, std::function<void()> schedule_backward_end)
    : opts_(options), schedule_backward_end_(std::move(schedule_backward_end)) {
  if (opts_.every < 1)
    throw OptionError(Option::every, "{} must be at least 1 (got " + std::to_string(opts_.every) +
                                         "): record every k-th step with k >= 1");
  if (!(opts_.saturation_threshold > 0 && opts_.saturation_threshold < 1))
    throw OptionError(Option::saturation_threshold,
                      fmt::format("{{}} must lie strictly between 0 and 1 (got {}): it is a fraction of the "
                                  "activation's largest derivative, 0.1 by default",
                                  opts_.saturation_threshold));
  trace_.every = opts_.every;
  trace_.saturation_threshold = opts_.saturation_threshold;
  trace_.process_id = process_id();
  trace_.layer_outputs = opts_.activations;
  trace_.parameter_gradients = opts_.parameters;
  if (opts_.data_parallel) {
    trace_.world_size = opts_.data_parallel->world_size();
    rank_ = opts_.data_parallel->rank();
    trace_.batch_per_rank = opts_.batch_per_rank;
  }
}

void StepRecorder::set_params(const std::vector<std::pair<std::string, at::Tensor>>& named) {
  params_.clear();
  modules_.clear();
  lookup_ = ParamLookup{};
  layer_outputs_.clear();
  std::unordered_map<std::string, int> module_ids;
  std::vector<std::string> unreadable;
  for (const auto& [name, t] : named) {
    if (!t.defined() || !t.requires_grad()) continue;
    // A module registered twice lists its parameters twice: hook each tensor once.
    if (lookup_.index.count(t.unsafeGetTensorImpl())) continue;
    if (is_subclass(t) && !(sharding_ && sharding_->counted.count(name))) {
      unreadable.push_back(name);
      continue;
    }
    const std::string mod = module_of(name);
    auto [mit, fresh] = module_ids.emplace(mod, static_cast<int>(modules_.size()));
    if (fresh) modules_.push_back(mod);
    HookedParam p;
    p.tensor = t;
    p.name = name;
    p.series = trace_.intern(name, SeriesKind::parameter, mod, shape_of(t));
    if (sharding_) p.counted = counted_parts(*sharding_, name);
    if (p.sharded()) trace_.set_shards(p.series, static_cast<int>(std::count(p.counted.begin(), p.counted.end(), true)));
    lookup_.index.emplace(t.unsafeGetTensorImpl(), static_cast<int>(params_.size()));
    lookup_.module.push_back(mit->second);
    params_.push_back(std::move(p));
  }
  if (!unreadable.empty())
    std::fprintf(stderr,
                 "gradflow: %zu parameter(s) are tensor subclasses (%s%s), whose values only their own operations "
                 "read: gradflow records neither them nor any gradient that arrives as a tensor subclass\n",
                 unreadable.size(), unreadable.front().c_str(), unreadable.size() > 1 ? ", ..." : "");
  nest_modules(lookup_, modules_);
  std::vector<std::string> names;
  for (const auto& p : params_) names.push_back(p.name);
  note_fused_layers(lookup_, names);
  before_.assign(params_.size(), at::Tensor());
}

namespace {

// Calls `then` once the accumulator has added a gradient (not for an undefined one).
struct AfterAccumulation : torch::autograd::FunctionPostHook {
  explicit AfterAccumulation(std::function<void()> then) : then(std::move(then)) {}
  torch::autograd::variable_list operator()(const torch::autograd::variable_list& outputs,
                                            const torch::autograd::variable_list& inputs) override {
    if (!inputs.empty() && inputs[0].defined()) then();
    return outputs;
  }
  std::function<void()> then;
};

// Ours go first among the accumulator's post hooks, so that DistributedDataParallel's (which may
// start reducing .grad in place) has not run yet; the program's hooks keep their order.
std::uintptr_t add_first_post_hook(torch::autograd::Node& node, std::unique_ptr<torch::autograd::FunctionPostHook> hook) {
  const auto key = reinterpret_cast<std::uintptr_t>(hook.get());
  auto& hooks = node.post_hooks();
  hooks.insert(hooks.begin(), std::move(hook));
  return key;
}

using torch::autograd::Node;

// Visits each node below `stack` once, depth first, the nodes of `stack` first; `stop(n)` true:
// nothing below n is visited.
template <class Stop>
void walk_below(std::vector<const Node*> stack, Stop stop) {
  std::unordered_set<const Node*> seen;
  while (!stack.empty()) {
    const Node* n = stack.back();
    stack.pop_back();
    if (!seen.insert(n).second || stop(n)) continue;
    for (const auto& edge : n->next_edges())
      if (edge.function) stack.push_back(edge.function.get());
  }
}

std::vector<const Node*> inputs_of(const Node* n) {
  std::vector<const Node*> out;
  for (const auto& edge : n->next_edges())
    if (edge.function) out.push_back(edge.function.get());
  return out;
}

}  // namespace

bool StepRecorder::is_segment_input(const torch::autograd::Node* n) const {
  // A segment's inputs are detached leaves; parameters are leaves the lookup knows.
  const auto* acc = dynamic_cast<const torch::autograd::AccumulateGrad*>(n);
  return acc && !lookup_.index.count(acc->variable.unsafeGetTensorImpl());
}

void StepRecorder::hook_params(ParamHookFactory make_hook) {
  make_param_hook_ = std::move(make_hook);
  for (int i = 0; i < static_cast<int>(params_.size()); ++i) {
    if (!params_[i].tensor.is_leaf())
      throw UsageError("parameter '" + params_[i].name + "' is not a leaf tensor: give the Monitor the model's own parameters");
    hook_param(i);
  }
  attach_checksum_ = parameter_checksum();
}

void StepRecorder::hook_param(int i) {
  HookedParam& p = params_[i];
  // A lazy module's parameter has no elements until its first forward: an accumulator made now
  // would expect gradients of no elements, and backward would fail. It is hooked once it has some.
  // A sharded parameter's gradient is assigned outside autograd (FSDP2): its hook is the
  // program's post-accumulate one (Monitor::sharded_gradient).
  if (p.tensor.numel() == 0 || p.sharded()) return;
  // Held here so that the accumulator, and our hook on it, outlive each step's graph.
  p.accumulator = torch::autograd::impl::grad_accumulator(p.tensor);
  p.hook = add_first_post_hook(*p.accumulator,
                               std::make_unique<AfterAccumulation>(make_param_hook_(i, AccumulatedAt::after_accumulator)));
  if (compat::has_post_accumulate_hooks)
    p.first_hook = compat::run_first(*p.accumulator, p.tensor, make_param_hook_(i, AccumulatedAt::before_program_hooks));
  trace_.set_shape(p.series, shape_of(p.tensor));
}

void StepRecorder::unhook_param(HookedParam& p) {
  if (p.accumulator) {
    p.accumulator->del_post_hook(p.hook);
    compat::stop_running_first(*p.accumulator, p.tensor, p.first_hook);
  }
  p.accumulator.reset();
  p.recorded_first = false;
}

void StepRecorder::unhook_params() {
  for (auto& p : params_) unhook_param(p);
  make_param_hook_ = nullptr;
}

void StepRecorder::rehook_moved_params() {
  if (!make_param_hook_) return;
  for (int i = 0; i < static_cast<int>(params_.size()); ++i) {
    HookedParam& p = params_[i];
    if (p.accumulator && torch::autograd::impl::try_get_grad_accumulator(p.tensor) == p.accumulator) continue;
    unhook_param(p);
    hook_param(i);
  }
}

int StepRecorder::find_record(int series) const {
  return series < static_cast<int>(record_of_.size()) ? record_of_[series] : -1;
}

int StepRecorder::record_index(int series) {
  changed_ = true;
  if (series >= static_cast<int>(record_of_.size())) record_of_.resize(trace_.series().size(), -1);
  int& index = record_of_[series];
  if (index < 0) {
    index = static_cast<int>(cur_.records.size());
    cur_.records.push_back(Record{});
    cur_.records.back().series = series;
  }
  return index;
}

void StepRecorder::record(int series, const at::Tensor& grad, const at::Tensor& weight, bool merge, int call, bool now) {
  StatsPlan plan = plan_stats(opts_, grad, weight);
  // The worker replaces what a record holds, and a call's norm is wanted here: both are computed here instead.
  if ((merge || call >= 0 || now) && plan.grad == StatsPath::worker) plan.grad = StatsPath::fused;
  if (now && plan.weight == StatsPath::worker) plan.weight = StatsPath::fused;
  const int index = record_index(series);
  Record& r = cur_.records[index];
  if (merge || call >= 0) {
    record_call(index, grad, plan.grad, merge, call);
    return;
  }
  switch (plan.grad) {
    case StatsPath::worker:
      r.grad.numel = grad.numel();
      worker_.submit(index, grad, plan.weight_in_same_pass ? weight.detach() : at::Tensor());
      schedule_backward_end();
      break;
    case StatsPath::fused:
      if (plan.weight_in_same_pass) {
        double weight_sq = 0;
        fused_stats_with_weight(grad, weight, r.grad, weight_sq);
        r.weight_norm = std::sqrt(weight_sq);
      } else {
        r.grad = fused_stats(grad);
      }
      r.grad = scaled(r.grad, unscale_factor());
      break;
    case StatsPath::device:
      // The count now; the sums arrive with the step's single transfer.
      r.grad = TensorStats{};
      r.grad.numel = grad.numel();
      deferred_.add(index, ResultField::grad, grad.numel(), aten_stats(grad));
      break;
  }
  if (weight.defined() && !plan.weight_in_same_pass) record_weight(index, plan.weight, weight);
}

void StepRecorder::record_call(int index, const at::Tensor& grad, StatsPath path, bool merge, int call) {
  Record& r = cur_.records[index];
  if (path == StatsPath::fused) {
    const TensorStats s = scaled(fused_stats(grad), unscale_factor());
    if (merge) r.grad.merge(s);
    else r.grad = s;
    if (call >= 0) add_profile_squares(r, static_cast<std::size_t>(call), &s.sum_sq, 1, 1.0);
    return;
  }
  // The call's norm is the same sums' sum of squares: fetched with them, no second pass.
  const at::Tensor stats = aten_stats(grad);
  if (!merge) {
    r.grad = TensorStats{};
    r.grad.numel = grad.numel();
  }
  deferred_.add(index, merge ? ResultField::grad_merge : ResultField::grad, grad.numel(), stats);
  if (call >= 0) deferred_.add(index, ResultField::call_norm, grad.numel(), stats, call);
}

void StepRecorder::record_weight(int index, StatsPath path, const at::Tensor& weight) {
  if (path == StatsPath::device)
    deferred_.add(index, ResultField::weight, weight.numel(), aten_sum_of_squares(weight));
  else
    cur_.records[index].weight_norm = std::sqrt(fused_sum_of_squares(weight.detach()));
}

void StepRecorder::on_param_grad(int param, AccumulatedAt at) {
  if (!attached) return;
  HookedParam& p = params_[param];
  // The accumulation the hook ahead of the program's recorded already.
  if (at == AccumulatedAt::after_accumulator && std::exchange(p.recorded_first, false)) return;
  p.recorded_first = at == AccumulatedAt::before_program_hooks;
  if (segments_.wants_outputs()) read_segment_outputs();
  // A second gradient for a parameter: the next step, or the closure's next evaluation.
  if ((opts_.auto_step || in_optimizer_) && p.seen > 0) end_step();
  stamp_evaluation();
  stamp_loss_scale();
  ++p.seen;
  cur_active_ = true;
  backward_seen_ = true;
  cur_.backwards = std::max(cur_.backwards, p.seen);
  const at::Tensor& grad = p.tensor.grad();
  // (A plain parameter's gradient computed through a tensor subclass is one too: not read.)
  if (!recording_ || !grad.defined() || (!p.sharded() && is_subclass(grad))) return;
  // The end of backward makes the step whole (flush() may close it), streams it, and reads a
  // followed engine's averaged gradient.
  schedule_backward_end();
  if (opts_.update_norms && p.seen == 1) {
    torch::NoGradGuard no_grad;
    before_[param] = local(p, p.tensor.detach()).clone();
  }
  // .grad() now holds what every backward of the step added since the last zeroing, after the
  // program's own hooks: the gradient the optimizer will apply. A later backward replaces it.
  if (p.seen > 1) collect_worker();
  if (p.sharded()) {
    record_part(param, ResultField::grad, local(p, grad));
    if (opts_.weight_norms && p.seen == 1) record_part(param, ResultField::weight, local(p, p.tensor.detach()));
    return;
  }
  record(p.series, grad, opts_.weight_norms && p.seen == 1 ? p.tensor : at::Tensor(), false, -1,
         at == AccumulatedAt::before_program_hooks);
}

void StepRecorder::on_tensor_grad(int series, std::int64_t hooked_at, const at::Tensor& given, ProfileSlot slot) {
  if (!attached || hooked_at != step_ || !recording_ || !given.defined()) return;
  // A tensor subclass's gradient: a DTensor's is read through this rank's part of it, any other's
  // is not read (its values are its own operations' to compute).
  const at::Tensor grad = !is_subclass(given) ? given : sharding_ ? sharding_->output_part(given) : at::Tensor();
  if (!grad.defined()) return;
  if (segments_.wants_outputs()) read_segment_outputs();
  stamp_loss_scale();
  cur_active_ = true;
  backward_seen_ = true;
  // A further gradient of the same layer output or tap in this step (another backward, or a
  // tap name given twice): the record becomes the statistics of all of them taken together.
  const int existing = find_record(series);
  const bool merge = existing >= 0 && cur_.records[existing].grad.numel > 0;
  if (merge) collect_worker();
  // A module called several times profiles its calls; a sequence only its one call's time steps.
  const bool by_time = slot.time_dim >= 0 && slot.time_dim < grad.dim() &&
                       std::max(calls_[series], recomputed_calls_[series]) <= 1;
  record(series, grad, at::Tensor(), merge, by_time ? -1 : slot.call);
  const int index = record_index(series);
  cur_.records[index].profile_axis = by_time ? ProfileAxis::time : ProfileAxis::calls;
  if (by_time) record_time_profile(index, grad, slot.time_dim);
}

void StepRecorder::record_time_profile(int index, const at::Tensor& grad, int time_dim) {
  torch::NoGradGuard no_grad;
  std::vector<std::int64_t> others;
  for (std::int64_t d = 0; d < grad.dim(); ++d)
    if (d != time_dim) others.push_back(d);
  const at::Tensor squares = grad.detach().to(at::kDouble).pow(2).sum(others);
  if (!squares.device().is_cpu()) {
    deferred_.add(index, ResultField::time_norms, squares.numel(), squares);
    return;
  }
  const at::Tensor host = squares.contiguous();
  add_profile_squares(cur_.records[index], 0, host.data_ptr<double>(), static_cast<std::size_t>(host.numel()),
                      unscale_factor());
}

int StepRecorder::next_call(int series) { return calls_[series]++; }

void StepRecorder::name_output(NodeRef node, std::size_t output, const std::string& name,
                               const std::string& module, int time_dim) {
  if (!recording_ || measuring) return;
  const int series = trace_.intern(name, SeriesKind::activation, module);
  named_outputs_.push_back(OutputToHook{std::move(node), output, series, ProfileSlot{next_call(series), time_dim}});
}

std::vector<StepRecorder::OutputToHook> StepRecorder::outputs_to_hook(torch::autograd::Node* root, bool walk) {
  std::vector<OutputToHook> out;
  out.swap(named_outputs_);
  if (walk && root) add_walked_outputs(root, out);
  link_outputs(out);
  return out;
}

bool StepRecorder::linked(int series) const {
  return series < static_cast<int>(linked_.size()) && linked_[series];
}

void StepRecorder::mark_linked(int series) {
  if (series >= static_cast<int>(linked_.size())) linked_.resize(trace_.series().size(), false);
  linked_[series] = true;
}

void StepRecorder::link_outputs(const std::vector<OutputToHook>& outputs) {
  using torch::autograd::Node;
  // Once every module was linked, a step pays this one pass.
  if (std::all_of(outputs.begin(), outputs.end(), [&](const OutputToHook& o) { return linked(o.series); })) return;
  std::unordered_map<const Node*, int> series_of;
  for (const auto& o : outputs) series_of.emplace(o.node.get(), o.series);
  std::vector<const Node*> segments_below;
  for (const auto& o : outputs) {
    if (linked(o.series)) continue;
    walk_to_outputs(o.node.get(), series_of, [&](int from) { trace_.add_input(o.series, from); },
                    [&](const Node* segment) {
                      segments_.segment_feeds_series(note_segment(segment, segments_below), o.series);
                    });
  }
  // What feeds each segment met (more may be met on the way down).
  for (std::size_t k = 0; k < segments_below.size(); ++k) {
    const int id = segments_.segment_id(segments_below[k]);
    walk_to_outputs(segments_below[k], series_of, [&](int from) { segments_.series_feeds_segment(from, id); },
                    [&](const Node* below) { segments_.segment_feeds_segment(note_segment(below, segments_below), id); });
  }
  for (const auto& o : outputs) mark_linked(o.series);
}

int StepRecorder::note_segment(const torch::autograd::Node* node, std::vector<const torch::autograd::Node*>& met) {
  const int before = segments_.segments();
  const int id = segments_.segment_id(node);
  if (id == before) {
    met.push_back(node);
    segments_to_hook_.emplace_back(compat::owning(const_cast<torch::autograd::Node&>(*node)), id);
  }
  return id;
}

void StepRecorder::walk_to_outputs(const torch::autograd::Node* start,
                                   const std::unordered_map<const torch::autograd::Node*, int>& series_of,
                                   const std::function<void(int)>& on_output,
                                   const std::function<void(const torch::autograd::Node*)>& on_segment) {
  walk_below(inputs_of(start), [&](const Node* n) {
    if (auto it = series_of.find(n); it != series_of.end()) {
      on_output(it->second);
      return true;  // another module's output: what lies below it feeds that module
    }
    if (!SegmentLinks::is_segment(*n)) return false;
    on_segment(n);
    return true;  // what lies below a segment feeds the segment
  });
}

void StepRecorder::link_recomputed(const torch::autograd::Node* node, int series) {
  if (segments_.current() < 0) return;  // recomputed in the non-reentrant mode: the step's graph holds it
  const bool walk = !linked(series);
  recomputed_nodes_.emplace(node, series);
  if (!walk) return;
  std::vector<int> inside;
  bool reaches_input = false;
  walk_below(inputs_of(node), [&](const Node* n) {
    if (auto it = recomputed_nodes_.find(n); it != recomputed_nodes_.end()) {
      trace_.add_input(series, it->second);
      inside.push_back(it->second);
      return true;
    }
    reaches_input = reaches_input || is_segment_input(n);
    return false;
  });
  segments_.recomputed(series, inside, reaches_input);
  mark_linked(series);
}

void StepRecorder::note_segment_output(const NodeRef& node) {
  if (node && segments_.wants_outputs()) segment_output_ = node;
}

void StepRecorder::read_segment_outputs() {
  // The nested backward's graph: every node below its root (not the root itself).
  const auto* nodes = torch::autograd::get_current_graph_task_nodes_in_graph();
  if (!nodes || current_backward() == outer_backward_) return;
  // The root is the segment's output: the last call's output its recomputation named, when the
  // nested graph holds what that node feeds on. Otherwise the nodes nothing else in the graph
  // consumes stand for it (a residual addition around the whole segment is then not seen).
  const auto output = segment_output_.lock();
  segment_output_.reset();
  const bool output_is_root = output && !output->next_edges().empty() &&
                              std::all_of(output->next_edges().begin(), output->next_edges().end(), [&](const auto& e) {
                                return !e.function || nodes->count(e.function.get());
                              });
  std::vector<const Node*> roots;
  if (output_is_root) {
    roots.push_back(output.get());
  } else {
    std::unordered_set<const Node*> consumed;
    for (const Node* n : *nodes)
      for (const Node* in : inputs_of(n)) consumed.insert(in);
    for (const Node* n : *nodes)
      if (!consumed.count(n)) roots.push_back(n);
  }
  std::vector<int> tops;
  bool reaches_input = false;
  walk_below(roots, [&](const Node* n) {
    if (auto it = recomputed_nodes_.find(n); it != recomputed_nodes_.end()) {
      if (std::find(tops.begin(), tops.end(), it->second) == tops.end()) tops.push_back(it->second);
      return true;
    }
    reaches_input = reaches_input || is_segment_input(n);
    return false;
  });
  segments_.set_outputs(std::move(tops), reaches_input);
}

bool StepRecorder::enter_segment(int segment, std::int64_t step) {
  if (step != step_) return false;
  recomputed_nodes_.clear();
  segment_output_.reset();
  segments_.enter(segment);
  return segments_.wants_outputs();
}

void StepRecorder::leave_segment(int segment, std::int64_t step) {
  if (step != step_) return;
  recomputed_nodes_.clear();
  segments_.leave(segment, trace_);
}

StepRecord StepRecorder::closed_view(StepRecord step) const {
  // A sharded parameter's record holds nothing until every rank's part is in: no figure at all
  // rather than one rank's part taken for the whole.
  std::unordered_set<int> waiting;
  for (const auto& [key, part] : parts_) waiting.insert(params_[key.first].series);
  step.records.erase(std::remove_if(step.records.begin(), step.records.end(),
                                    [&](const Record& r) { return waiting.count(r.series) > 0; }),
                     step.records.end());
  for (auto& r : step.records) {
    // A call whose gradient never arrived (its backward ran before watch(), or was not the
    // step's) is no entry: the profile lists the calls whose gradient the step recorded.
    r.profile.erase(std::remove(r.profile.begin(), r.profile.end(), kNoGradient), r.profile.end());
    if ((r.profile_axis == ProfileAxis::calls && r.profile.size() <= 1) || trace_.world_size > 1) r.profile.clear();
  }
  return step;
}

void StepRecorder::begin_forward() {
  if (measuring) return;  // the sharpness loss's forward belongs to no step
  outer_backward_ = nullptr;  // a forward outside backward: any earlier backward is over
  if ((opts_.auto_step || in_optimizer_) && backward_seen_) end_step();
  if (!accumulators_checked_) {
    rehook_moved_params();
    accumulators_checked_ = true;
  }
  stamp_evaluation();
}

void StepRecorder::note_series(const std::string& name, const std::string& module) {
  if (next_forward_recorded() && !measuring) trace_.intern(name, SeriesKind::activation, module);
}

void StepRecorder::on_backward_start(const void* task) {
  outer_backward_ = task;
  end_scheduled_ = false;  // one queued on an earlier task that failed never runs
  schedule_backward_end();
}

std::optional<StepRecorder::OutputToHook> StepRecorder::name_recomputed_output(
    NodeRef node, std::size_t output, const std::string& name, const std::string& module,
    int time_dim) {
  if (!recording_now()) return std::nullopt;
  const int series = trace_.intern(name, SeriesKind::activation, module);
  link_recomputed(node.get(), series);
  // Numbered apart from the original forward's calls: in the non-reentrant mode those carry the
  // gradient, and a recomputed call must not shift them.
  return OutputToHook{std::move(node), output, series, ProfileSlot{recomputed_calls_[series]++, time_dim}};
}

void StepRecorder::stamp_evaluation() {
  if (!in_optimizer_ || cur_.evaluation >= 0) return;
  cur_.optimizer_step = optimizer_steps_;
  cur_.evaluation = evaluations_++;
}

void StepRecorder::stamp_loss_scale() {
  if (scale_ && !cur_.loss_scale) cur_.loss_scale = scale_;
}

bool StepRecorder::sharpness_due() const {
  const auto k = opts_.sharpness_every;
  return k > 0 && recording_ && (step_ / opts_.every) % k == 0 && !cur_.sharpness;
}

void StepRecorder::set_sharpness(double lambda_max, int products) {
  cur_active_ = true;
  changed_ = true;
  cur_.sharpness = lambda_max;
  cur_.sharpness_products = products;
}

void StepRecorder::set_learning_rate(double lr, double momentum) {
  if (!recording_) return;
  cur_.learning_rate = lr;
  cur_.momentum = momentum;
}

void StepRecorder::set_loss_scale(double scale) {
  if (!(scale > 0) || !std::isfinite(scale))
    throw UsageError(fmt::format("the loss scale must be a positive finite number (got {}): pass the scaler's current "
                                 "scale (GradScaler.get_scale())",
                                 scale));
  // The open step ran its backward at its own scale: a lower one now means the scaler skipped it.
  if (backward_seen_ && cur_.loss_scale) {
    cur_.scale_after = scale;
    cur_.skipped = scale < *cur_.loss_scale;
    changed_ = true;
  }
  scale_ = scale;
}

void StepRecorder::begin_optimizer_step() {
  if (in_optimizer_)
    throw UsageError("an optimizer step began inside another: call begin_optimizer_step() and end_optimizer_step() "
                     "once around each optimizer.step()");
  // The open record is the previous optimizer step's last closure evaluation.
  if (cur_.optimizer_step >= 0) end_step();
  in_optimizer_ = true;
  evaluations_ = 0;
  if (!backward_seen_) return;  // a closure: its evaluations are the records
  cur_.optimizer_step = optimizer_steps_;
  changed_ = true;
  if (recording_) record_applied();
}

void StepRecorder::end_optimizer_step(std::optional<double> returned_loss) {
  if (!in_optimizer_)
    throw UsageError("end_optimizer_step() without begin_optimizer_step(): call them around each optimizer.step()");
  in_optimizer_ = false;
  if (evaluations_ > 0 && returned_loss && has_content()) {
    cur_.step_loss = returned_loss;
    changed_ = true;
  }
  ++optimizer_steps_;
  // The step is whole: its update is measured and it reaches the stream now.
  if (opts_.auto_step && backward_seen_) end_step();
}

void StepRecorder::record_applied() {
  collect_worker();
  torch::NoGradGuard no_grad;
  for (int i = 0; i < static_cast<int>(params_.size()); ++i) {
    const HookedParam& p = params_[i];
    const int index = find_record(p.series);
    const at::Tensor& g = p.tensor.grad();
    if (index < 0 || !g.defined() || (!p.sharded() && is_subclass(g))) continue;
    if (p.sharded()) {
      record_part(i, ResultField::applied, local(p, g));
    } else if (fused_applicable(g)) {
      cur_.records[index].applied = fused_stats(g);
    } else {
      cur_.records[index].applied = TensorStats{};
      deferred_.add(index, ResultField::applied, g.numel(), aten_stats(g));
    }
  }
}

bool StepRecorder::record_loss(const at::Tensor& loss) {
  if (loss.defined() && loss.numel() != 1)
    throw UsageError("watch() takes the loss as one number, got a tensor of " + std::to_string(loss.numel()) +
                     " elements: reduce it first (.mean() or .sum())");
  cur_active_ = true;
  if (!recording_) return false;
  changed_ = true;
  stamp_loss_scale();
  if (loss.defined()) {
    if (loss.device().is_cpu())
      cur_.add_loss(loss.item<double>());  // a float widens to double exactly
    else
      deferred_.add(-1, ResultField::loss, 1, loss.detach().reshape({1}));
  }
  return true;
}

void StepRecorder::add_walked_outputs(torch::autograd::Node* root, std::vector<OutputToHook>& outputs) {
  bool walked = false;
  const std::vector<LayerOutput>& found = layer_outputs_.find(root, lookup_, &walked);
  if (walked) {
    // A new graph shape: its names are interned once, and kept while the shape lasts. Every call
    // of a module is the module's one series (its calls are the record's profile, not depth).
    layer_output_series_.clear();
    for (const auto& o : found) {
      const std::string& module = modules_[o.module];
      const std::string name = o.layer >= 0 ? module + ".l" + std::to_string(o.layer) : module;
      layer_output_series_.push_back(trace_.intern(name, SeriesKind::activation, module));
    }
  }
  std::unordered_set<int> named;
  for (const auto& o : outputs) named.insert(o.series);
  // Outputs come in forward order, so calls are numbered in forward order. A node outlives this
  // call: it belongs to the graph the program is about to run backward through.
  for (std::size_t k = 0; k < found.size(); ++k) {
    const int series = layer_output_series_[k];
    if (named.count(series)) continue;
    trace_.mark_found_by_walk(series);
    outputs.push_back(
        OutputToHook{compat::owning(*found[k].node), 0, series, ProfileSlot{next_call(series), found[k].time_dim}});
  }
}

int StepRecorder::tap_series(const at::Tensor& t, const std::string& name, const TapOptions& options) {
  if (name.empty()) throw UsageError("tap() needs a name for the tensor: give it one, such as \"h.3\" or \"time.12\"");
  if (!recording_ || measuring || !t.defined()) return -1;
  const std::string group = options.group.empty() ? name.substr(0, name.find('.')) : options.group;
  const int series = trace_.intern(name, SeriesKind::tap, group, shape_of(t));
  if (options.activation != Activation::none) {
    trace_.set_activation(series, options.activation);
    const at::Tensor& a = options.activation_output.defined() ? options.activation_output : t;
    if (is_subclass(a) || (options.preactivation.defined() && is_subclass(options.preactivation))) return series;
    const int index = record_index(series);
    if (auto host = host_activation_stats(a, options.activation, opts_.saturation_threshold))
      cur_.records[index].forward = *host;
    else
      deferred_.add(index, ResultField::forward, 0,
                    device_activation_stats(a, options.activation, options.preactivation, opts_.saturation_threshold));
  }
  return series;
}

NodeRef StepRecorder::keep_for_step(NodeRef node) {
  kept_.push_back(node);
  return node;
}

void StepRecorder::gather() {
  collect_worker();
  deferred_.fetch_into(cur_);
}

void StepRecorder::record_updates() {
  torch::NoGradGuard no_grad;
  for (std::size_t i = 0; i < params_.size(); ++i) {
    if (!before_[i].defined()) continue;
    const at::Tensor delta = local(params_[i], params_[i].tensor.detach()) - before_[i];
    const int index = record_index(params_[i].series);
    if (params_[i].sharded())
      record_part(static_cast<int>(i), ResultField::update, delta);
    else if (fused_applicable(delta))
      cur_.records[index].update_norm = std::sqrt(fused_sum_of_squares(delta));
    else
      deferred_.add(index, ResultField::update, delta.numel(), aten_sum_of_squares(delta));
    before_[i] = at::Tensor();
  }
}

void StepRecorder::end_step(bool collective) {
  record_updates();
  if (collective) exchange_parts();
  gather();
  if (has_content()) {
    trace_.add_step(closed_view(cur_));
    if (stream_ && (!streamed_ || changed_)) stream_->append(trace_, trace_.steps().back());
  }
  ++step_;
  recording_ = (step_ % opts_.every) == 0;
  reset_step();
  // A loop that never calls watch() or tap() still finds its moved parameters (not mid-backward:
  // the engine may be running an accumulator's hooks).
  if (!current_backward()) rehook_moved_params();
}

void StepRecorder::abandon_step() {
  gather();
  reset_step();
}

void StepRecorder::reset_step() {
  for (const auto& r : cur_.records) record_of_[r.series] = -1;
  parts_.clear();  // a step closed on one rank only (flush) keeps none of them
  // The next step records about as many tensors: keep the storage.
  std::vector<Record> storage = std::move(cur_.records);
  storage.clear();
  cur_ = StepRecord{};
  cur_.records = std::move(storage);
  cur_.step = step_;
  cur_active_ = false;
  backward_seen_ = false;
  backward_done_ = false;
  streamed_ = false;
  changed_ = false;
  averaged_ = false;
  engine_done_ = false;
  ranks_in_ = false;
  kept_.clear();
  calls_.clear();
  recomputed_calls_.clear();
  recomputed_nodes_.clear();
  segments_.clear();
  segments_to_hook_.clear();
  accumulators_checked_ = false;
  named_outputs_.clear();
  for (auto& p : params_) p.seen = 0;
}

double StepRecorder::parameter_checksum() const {
  torch::NoGradGuard no_grad;
  std::vector<at::Tensor> sums;
  for (const auto& p : params_) {
    if (p.tensor.is_meta()) continue;  // no values yet (deferred initialisation)
    // Summed in double without a double copy of the parameter: the attach-time snapshot of a
    // large model must not need memory the training does not.
    const at::Tensor v = local(p, p.tensor.detach());
    sums.push_back(v.sum(at::kDouble) + v.square().sum(at::kDouble));
  }
  return sums.empty() ? 0.0 : torch::stack(sums).sum().item<double>();
}

bool StepRecorder::updated_elsewhere() const {
  if (!trace_.steps().empty() || backward_seen_ || params_.empty()) return false;
  const double now = parameter_checksum();
  return !(now == attach_checksum_ || (std::isnan(now) && std::isnan(attach_checksum_)));
}

at::Tensor StepRecorder::figures_block(const at::Tensor& bucket) {
  // Every rank runs the same loop, so every rank takes the same branch here.
  if (!attached || !recording_ || averaged_ || !backward_seen_) return at::Tensor();
  gather();
  std::optional<double> checksum;
  if (DataParallel* dp = opts_.data_parallel) {
    const int k = dp->options().sync_check_every;
    if (k > 0 && (step_ / opts_.every) % k == 0) checksum = parameter_checksum();
  }
  return detail::figures_block(cur_, checksum, rank_, trace_.world_size, bucket);
}

void StepRecorder::receive_figures_block(const at::Tensor& summed) {
  if (!attached) return;
  gather();
  detail::receive_figures_block(summed, cur_, trace_, trace_.world_size);
  ranks_in_ = true;
  changed_ = true;
}

void StepRecorder::on_gradients_averaged() {
  if (!attached || !recording_ || averaged_ || !ranks_in_) return;
  averaged_ = true;
  changed_ = true;
  // The averaged gradient, computed here and not on the worker: backward is over.
  for (const auto& p : params_) {
    const int index = find_record(p.series);
    if (index < 0 || !p.tensor.grad().defined()) continue;
    const at::Tensor& g = p.tensor.grad();
    if (fused_applicable(g))
      cur_.records[index].grad = scaled(fused_stats(g), unscale_factor());
    else
      deferred_.add(index, ResultField::grad, g.numel(), aten_stats(g));
  }
  if (stream_ && opts_.auto_step) stream_open_step();
}

void StepRecorder::follow_ranks(int rank, int world_size) {
  follow_world_ = world_size;
  rank_ = rank;
  trace_.world_size = world_size;
}

const Trace& StepRecorder::snapshot() {
  gather();
  view_ = trace_;
  view_.updated_elsewhere = updated_elsewhere();
  if (has_content()) {
    StepRecord open = closed_view(cur_);
    open.partial = !opts_.auto_step || !backward_seen_ || awaits_optimizer_step();
    view_.add_step(std::move(open));
  }
  return view_;
}

void StepRecorder::schedule_backward_end() {
  if (end_scheduled_) return;
  // A backward nested in the watched one (a checkpointed segment's) ends before the step's does.
  if (outer_backward_ && current_backward() != outer_backward_) return;
  end_scheduled_ = true;
  schedule_backward_end_();
}

void StepRecorder::on_backward_end() {
  end_scheduled_ = false;
  outer_backward_ = nullptr;
  collect_worker();
  backward_done_ = backward_seen_;
  // DistributedDataParallel copies the averaged gradient into .grad, and FSDP2 reduces its last
  // groups' gradients, in end-of-backward callbacks of their own that may be queued after ours:
  // run once more after them (the engine runs callbacks queued by callbacks).
  if ((follow_world_ > 0 || sharding_) && backward_seen_ && !engine_done_) {
    engine_done_ = true;
    schedule_backward_end();
    return;
  }
  engine_done_ = false;
  // Without the program's optimizer steps, the step's parts are whole once backward is over; an
  // update is known only when the next step begins, where they all go in one collective.
  if (!expects_optimizer_steps && !opts_.update_norms) exchange_parts();
  if (follow_world_ > 0 && backward_seen_) {
    on_gradients_averaged();
    return;
  }
  // A data-parallel step is whole once its gradients are averaged (on_gradients_averaged).
  if (stream_ && opts_.auto_step && backward_done_ && !opts_.data_parallel) stream_open_step();
}

void StepRecorder::stream_open_step() {
  gather();
  if (!has_content()) return;
  stream_->append(trace_, closed_view(cur_));
  streamed_ = true;
  changed_ = false;
}

void StepRecorder::close_whole_step() {
  if (opts_.auto_step && backward_seen_ && backward_done_ && !awaits_optimizer_step()) end_step(false);
}

bool StepRecorder::awaits_optimizer_step() const { return optimizer_steps_ > 0 && cur_.optimizer_step < 0; }

void StepRecorder::collect_worker() {
  end_scheduled_ = false;
  for (const auto& res : worker_.collect()) {
    Record& r = cur_.records.at(res.record);
    r.grad = scaled(res.grad, unscale_factor());
    if (res.weight_sum_sq) r.weight_norm = std::sqrt(*res.weight_sum_sq);
  }
}

bool StepRecorder::next_forward_recorded() const {
  // In auto-step mode, once the step's backward has run the next forward belongs to the next
  // step: answer for that one, so that models can skip their taps cheaply and correctly.
  if (opts_.auto_step && backward_seen_) return ((step_ + 1) % opts_.every) == 0;
  return recording_;
}

int StepRecorder::sharded_param(const std::string& name) const {
  for (int i = 0; i < static_cast<int>(params_.size()); ++i)
    if (params_[i].sharded() && params_[i].name == name) return i;
  return -1;
}

at::Tensor StepRecorder::local(const HookedParam& p, const at::Tensor& t) const {
  return p.sharded() ? sharding_->local_part(t) : t;
}

void StepRecorder::record_part(int param, ResultField field, const at::Tensor& part) {
  torch::NoGradGuard no_grad;
  record_index(params_[param].series);
  parts_[{param, static_cast<int>(field)}] = Part{part.numel(), part_stats(part, field)};
}

void StepRecorder::exchange_parts() {
  if (!sharding_ || parts_.empty()) return;
  // Every rank lists the same keys, in the same order (the map's). The row lives where the parts'
  // figures do: on the host, or on their device, gathered there without a host round trip.
  c10::Device device(c10::kCPU);
  for (const auto& [key, part] : parts_)
    if (!part.stats.device().is_cpu()) device = part.stats.device();
  std::vector<at::Tensor> row;
  for (const auto& [key, part] : parts_) {
    const at::Tensor header = at::tensor({static_cast<double>(key.first), static_cast<double>(key.second),
                                          static_cast<double>(part.numel)}, at::kDouble);
    row.push_back(header.to(device));
    row.push_back(part.stats.reshape({-1}).to(device));
  }
  const at::Tensor rows = sharding_->gather_rows(at::cat(row));
  combine_parts(rows.to(at::kCPU).contiguous());
}

void StepRecorder::combine_parts(const at::Tensor& rows) {
  const std::int64_t world = sharding_->world_size;
  const std::int64_t n = static_cast<std::int64_t>(parts_.size()) * kPartEntry;
  if (rows.dim() != 2 || rows.size(0) != world || rows.size(1) != n)
    throw Error(fmt::format("the ranks' rows of sharded figures came back as {} values, expected {} ranks x {}: every "
                            "rank must record the same sharded parameters at the same steps (one Monitor per rank, "
                            "the same options)", rows.numel(), world, n));
  const double* v = rows.data_ptr<double>();
  std::int64_t at = 0;
  for (const auto& [key, part] : parts_) {
    const HookedParam& p = params_[key.first];
    std::vector<TensorStats> each(static_cast<std::size_t>(world));
    TensorStats whole;
    for (std::int64_t r = 0; r < world; ++r) {
      const double* e = v + r * n + at;
      if (e[0] != key.first || e[1] != key.second)
        throw Error(fmt::format("rank {} recorded another sharded figure than rank {} at step {} ('{}'): every rank "
                                "must record the same sharded parameters at the same steps", r, sharding_->rank, step_, p.name));
      each[r] = stats_from_aten(e + kPartHeader, static_cast<std::int64_t>(e[2]));
      if (p.counted[static_cast<std::size_t>(r)]) whole.merge(each[r]);
    }
    at += kPartEntry;
    Record& rec = cur_.records[record_index(p.series)];
    switch (static_cast<ResultField>(key.second)) {
      case ResultField::grad:
        rec.grad = scaled(whole, unscale_factor());
        rec.ranks.clear();
        for (const auto& s : each) rec.ranks.push_back(scaled(s, unscale_factor()));
        break;
      case ResultField::applied: rec.applied = whole; break;
      case ResultField::weight: rec.weight_norm = std::sqrt(whole.sum_sq); break;
      case ResultField::update: rec.update_norm = std::sqrt(whole.sum_sq); break;
      default: break;
    }
  }
  parts_.clear();
  changed_ = true;
}

}  // namespace gradflow::detail
