#pragma once
// The Monitor's step state machine: which step is open, what it has recorded, and when it goes
// into the trace. Every member is reached under the Monitor's lock (see Guarded).

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>
#include <torch/csrc/autograd/function_hook.h>

#include "compat/node.h"
#include "monitor/deferred_results.h"
#include "gradflow/monitor.h"
#include "gradflow/sharding.h"
#include "gradflow/trace_stream.h"
#include "monitor/graph_walk.h"
#include "monitor/segment_links.h"
#include "monitor/stats_path.h"
#include "monitor/stats_worker.h"

namespace gradflow::detail {

struct HookedParam {
  at::Tensor tensor;
  std::string name;
  int series = -1;
  NodeRef accumulator;  // holds our hook on it
  std::uintptr_t hook = 0;
  std::uintptr_t first_hook = 0;  // ours ahead of the program's post-accumulate hooks (LibTorch 2)
  bool recorded_first = false;    // that one recorded the accumulation in progress
  int seen = 0;  // hook firings in the current step
  // A parameter held in parts across ranks: whether each rank's part counts (Sharding::counted);
  // empty for a whole parameter.
  std::vector<bool> counted;
  bool sharded() const { return !counted.empty(); }
};

// When a parameter's hook reports its accumulated gradient.
enum class AccumulatedAt {
  // ahead of the program's post-accumulate hooks, which may step an optimizer and free .grad
  before_program_hooks,
  // after the accumulator ran, every hook of the program's on it included
  after_accumulator,
};

// Where one gradient of a layer output sits in its record's profile (Record::profile).
struct ProfileSlot {
  int call = -1;      // the call's index within the step (forward order); -1: not a module call
  int time_dim = -1;  // the output's time dimension (a recurrent module's sequence); -1: none
};

class StepRecorder {
 public:
  // `schedule_backward_end` arranges for on_backward_end() to run, under the lock, when the
  // current backward ends (the engine's callback): the worker's results must be in before
  // backward returns, and a stream must know that the step's backward completed.
  StepRecorder(MonitorOptions options, std::function<void()> schedule_backward_end);

  // A layer output to hook: dL/d(output `output` of `node`) is one call of `series`.
  struct OutputToHook {
    NodeRef node;
    std::size_t output;
    int series;
    ProfileSlot slot;
  };

  const MonitorOptions& options() const { return opts_; }

  // Attachment: the parameters to hook, and the lookup the graph walk needs.
  void set_params(const std::vector<std::pair<std::string, at::Tensor>>& named);
  std::vector<HookedParam>& params() { return params_; }
  // Puts `make_hook(i, after_accumulator)` first among the post hooks of parameter i's gradient
  // accumulator and `make_hook(i, before_program_hooks)` ahead of its post-accumulate hooks.
  using ParamHookFactory = std::function<std::function<void()>(int, AccumulatedAt)>;
  void hook_params(ParamHookFactory make_hook);
  void unhook_params();
  // Hooks again each parameter whose accumulator LibTorch replaced since it was hooked: a
  // parameter moved to another dtype or device (model.to(...), .double()) gets a new one, and the
  // old one's hook would never fire again.
  void rehook_moved_params();
  // Hooks parameter i's accumulator (not one without elements yet: a lazy module's).
  void hook_param(int i);
  void unhook_param(HookedParam& p);
  const ParamLookup& lookup() const { return lookup_; }
  bool attached = false;

  // A backward has added its gradient to the parameter's .grad().
  void on_param_grad(int param, AccumulatedAt at);
  // A layer output's or a tap's hook fired; `hooked_at` is the step it was registered in.
  void on_tensor_grad(int series, std::int64_t hooked_at, const at::Tensor& grad, ProfileSlot slot = {});

  // A forward begins (watch, tap): in auto-step mode, after a backward it opens the next step.
  void begin_forward();
  // A layer output computed without autograd (a reentrant checkpoint's first forward): nothing
  // to hook, but its series takes its place in forward order, where its recomputation records it.
  void note_series(const std::string& name, const std::string& module);
  // The watched loss's node runs: the backward of graph task `task` (current_backward()) is the
  // step's. Backwards nested in it (a checkpointed segment's) end with it.
  void on_backward_start(const void* task);
  // A layer output computed again inside the step's backward (a checkpointed segment's forward):
  // the output to hook at once as one call of the series `name`, or nothing when the step is not
  // recorded. In the reentrant mode its gradient arrives in the nested backward that follows; in
  // the other, the original forward's output carries it and this one's hook never fires.
  std::optional<OutputToHook> name_recomputed_output(NodeRef node, std::size_t output,
                                                     const std::string& name, const std::string& module, int time_dim);
  // The segment nodes of reentrant checkpointing that the last watch() found, with their ids:
  // the Monitor hooks each, so that their recomputation is known as theirs.
  std::vector<std::pair<NodeRef, int>> take_segments_to_hook() {
    return std::move(segments_to_hook_);
  }
  // A segment's recomputation begins and ends (its node's hooks), in the step `step`; entering
  // says whether the segment's output is wanted (note_segment_output), which only the first
  // recorded step's segments are.
  bool enter_segment(int segment, std::int64_t step);
  // A call inside the recomputation returned `node`'s output: the last one before the nested
  // backward is the segment's output.
  void note_segment_output(const NodeRef& node);
  void leave_segment(int segment, std::int64_t step);
  // Whether the step in progress is recorded (what a recomputation inside its backward asks).
  bool recording_now() const { return recording_ && !measuring; }
  // Records the loss of the current step; false when the step is not recorded.
  bool record_loss(const at::Tensor& loss);
  // Notes output `output` of `node` as one call of the series `name` of `module` (a layer output
  // the program names: Monitor::layer_output), to be hooked at the next watch(); nothing when the
  // step is not recorded.
  void name_output(NodeRef node, std::size_t output, const std::string& name,
                   const std::string& module, int time_dim);
  // The step's layer outputs below `root`, in forward order: those named since the last call,
  // then, when `walk`, those the graph walk finds of modules none was named for. The first time
  // a series is among them, which of them feed it is added to the trace (SeriesInfo::inputs).
  std::vector<OutputToHook> outputs_to_hook(torch::autograd::Node* root, bool walk);
  bool has_named_outputs() const { return !named_outputs_.empty(); }
  // The index of the next call of a layer output's series in the open step.
  int next_call(int series);
  // The tap's series, with its forward statistics queued when it names an activation; -1 when
  // the step is not recorded.
  int tap_series(const at::Tensor& t, const std::string& name, const TapOptions& options);
  // Keeps `node` alive until the open step closes; returns it.
  NodeRef keep_for_step(NodeRef node);

  // Closes the open step: what it recorded enters the trace. `collective`: every rank closes
  // it here (the program's own step, forward or optimizer step), so the sharded parameters'
  // parts can be combined; flush() closes it on one rank only.
  void end_step(bool collective = true);

  // Parameters held in parts across ranks: set before set_params().
  void set_sharding(Sharding sharding) { sharding_ = std::move(sharding); }
  // The index of the sharded parameter `name`, -1 when there is none.
  int sharded_param(const std::string& name) const;
  // The program tells of its optimizer steps: the parts are combined after each, not at the
  // end of backward.
  bool expects_optimizer_steps = false;
  // Drops the open step unrecorded.
  void abandon_step();
  // Data-parallel: this rank's figures of the open step as a block of `bucket`'s type, to ride in
  // the gradient's allreduce (undefined when the step is not recorded: every rank takes the
  // same branch).
  at::Tensor figures_block(const at::Tensor& bucket);
  // The summed block: each record's ranks, the ranks' losses and checksums.
  void receive_figures_block(const at::Tensor& summed);
  // The gradients were just averaged: the records take the averaged gradient.
  void on_gradients_averaged();
  // Data-parallel training on an engine the Monitor does not own (DistributedDataParallel):
  // the averaged gradient is read once the engine's own end-of-backward work is done.
  void follow_ranks(int rank, int world_size);
  int world_size() const { return trace_.world_size; }

  // The optimizer step begins: the gradient it finds in .grad() is recorded as `applied`, and
  // each backward until end_optimizer_step() is an evaluation of its closure, a record of its own.
  void begin_optimizer_step();
  void end_optimizer_step(std::optional<double> returned_loss);
  // The loss scaler's scale now (see Monitor::set_loss_scale).
  void set_loss_scale(double scale);
  // Sharpness: whether the open step is due a measurement (recorded, the sharpness_every-th,
  // none taken yet); while `measuring`, forwards name no output and tap nothing.
  bool sharpness_due() const;
  bool measuring = false;
  void set_sharpness(double lambda_max, int products);
  void set_learning_rate(double lr, double momentum);
  // The closed steps, and the open one marked partial when it is incomplete (no backward yet,
  // or a manual-step Monitor whose step() has not closed it).
  const Trace& snapshot();
  void collect_worker();
  // The current backward has completed.
  void on_backward_end();

  // Each closed step is appended to `stream` from now on.
  void stream_to(std::unique_ptr<TraceStream> stream) { stream_ = std::move(stream); }
  TraceStream* stream() { return stream_.get(); }
  // Closes the open step when it is whole: auto-step mode, its backward completed. What the
  // program did so far then reaches the stream (before a report, or as the program ends).
  void close_whole_step();
  // Once the Monitor is told of optimizer steps, a step is closed by its own: a trailing backward
  // without one is incomplete (no applied gradient, no update) and stays open.
  bool awaits_optimizer_step() const;

  bool next_forward_recorded() const;
  bool forward_closes_step() const { return (opts_.auto_step || in_optimizer_) && backward_seen_; }
  std::int64_t step() const { return step_; }
  std::int64_t completed_steps() const { return step_ + (opts_.auto_step && backward_seen_ ? 1 : 0); }
  void mark_interrupted() { trace_.interrupted = true; }
  void names_layer_outputs() { trace_.layer_outputs = true; }

 private:
  int record_index(int series);
  // The index of the series' record in the open step, -1 when it has none.
  int find_record(int series) const;
  // Computes the gradient's statistics into the record of `series`; with `merge`, they are
  // merged into what the record already holds (a second gradient of the same series in a step).
  // `call` >= 0: the gradient of that call of a layer output, whose norm enters the profile.
  // `now`: computed before returning (the program's hooks run next and may change the tensors).
  void record(int series, const at::Tensor& grad, const at::Tensor& weight, bool merge = false, int call = -1,
              bool now = false);
  // A layer output's gradient merged into its record, or one call's: its sums and its call's norm
  // from the one pass.
  void record_call(int index, const at::Tensor& grad, StatsPath path, bool merge, int call);
  // Moves device and worker results into the open step.
  void gather();
  void record_weight(int index, StatsPath path, const at::Tensor& weight);
  void schedule_backward_end();
  // Appends the open step to the stream (auto-step mode: it is whole once its backward ended, so
  // a program killed before its next forward still leaves it).
  void stream_open_step();
  bool has_content() const { return cur_active_ && recording_ && (!cur_.records.empty() || cur_.loss); }
  // The gradient each recorded parameter holds now, as `applied`.
  void record_applied();
  // Inside an optimizer step, the open record is an evaluation of its closure.
  void stamp_evaluation();
  // The open step's loss scale, once it has a gradient or a loss.
  void stamp_loss_scale();
  double unscale_factor() const { return cur_.loss_scale.value_or(1.0); }
  // The gradient's norm at each step along `time_dim`, into the record's profile.
  void record_time_profile(int index, const at::Tensor& grad, int time_dim);
  // Adds, for each output whose series was never linked, the outputs reached below it before
  // any other output: the modules that feed it (through a reentrant checkpoint's segment, once
  // the segment's recomputation shows what lies inside it).
  void link_outputs(const std::vector<OutputToHook>& outputs);
  bool linked(int series) const;
  void mark_linked(int series);
  // Calls `on_output` for each output of `series_of` reached below `start` before any other
  // output, and `on_segment` for each segment node reached so (neither is looked below).
  void walk_to_outputs(const torch::autograd::Node* start,
                       const std::unordered_map<const torch::autograd::Node*, int>& series_of,
                       const std::function<void(int)>& on_output,
                       const std::function<void(const torch::autograd::Node*)>& on_segment);
  // The segment's id; a segment met for the first time joins `met` and the segments to hook.
  int note_segment(const torch::autograd::Node* node, std::vector<const torch::autograd::Node*>& met);
  // A layer output recomputed inside a reentrant segment: what inside the segment feeds it, and
  // whether it reaches the segment's inputs.
  void link_recomputed(const torch::autograd::Node* node, int series);
  // In the current segment's nested backward: which layers its outputs reach first (SegmentLinks::set_outputs).
  void read_segment_outputs();
  // An input of a reentrant segment's recomputation: a leaf that is no parameter.
  bool is_segment_input(const torch::autograd::Node* n) const;
  // The walk's layer outputs below `root` of modules without a series in `named`.
  void add_walked_outputs(torch::autograd::Node* root, std::vector<OutputToHook>& outputs);
  // `step` as the trace keeps it: without the profiles that say nothing beyond a record's totals
  // (one call) or that would be one rank's.
  StepRecord closed_view(StepRecord step) const;
  // ‖θ now − θ at the step's first gradient‖ for every parameter copied in this step.
  void record_updates();
  // Sum of every parameter's elements and squares, in double: equal on ranks in sync.
  double parameter_checksum() const;
  // No step recorded, and the parameters differ from what they were at attach.
  bool updated_elsewhere() const;
  void reset_step();
  // A sharded parameter's tensor as this rank holds it; any other tensor as it is.
  at::Tensor local(const HookedParam& p, const at::Tensor& t) const;
  // The sums of this rank's part of sharded parameter `param`'s `field` (grad, applied, weight,
  // update), to combine with the other ranks' at the next exchange; a later one replaces it.
  void record_part(int param, ResultField field, const at::Tensor& part);
  // One collective: every rank's parts come to every rank and become the records' figures.
  void exchange_parts();
  // The figures combined from every rank's row of `rows` into the open step's records.
  void combine_parts(const at::Tensor& rows);

  MonitorOptions opts_;
  std::optional<Sharding> sharding_;
  // The parts recorded since the last exchange, by (parameter, field): the same keys, in the
  // same order, on every rank.
  struct Part {
    std::int64_t numel;
    at::Tensor stats;  // aten_stats of this rank's part
  };
  std::map<std::pair<int, int>, Part> parts_;
  std::function<void()> schedule_backward_end_;
  bool end_scheduled_ = false;
  std::unique_ptr<TraceStream> stream_;
  Trace trace_;
  Trace view_;  // what snapshot() returns
  std::vector<HookedParam> params_;
  ParamHookFactory make_param_hook_;
  double attach_checksum_ = 0;
  bool accumulators_checked_ = false;  // rehook_moved_params() ran in this step
  const void* outer_backward_ = nullptr;  // the graph task of the watched backward, while it runs
  std::unordered_map<int, int> recomputed_calls_;  // layer-output series -> its recomputed calls in the open step
  std::vector<at::Tensor> before_;  // parameters as they were when this step's gradient arrived
  std::vector<std::string> modules_;
  ParamLookup lookup_;
  LayerOutputCache layer_outputs_;
  std::vector<int> layer_output_series_;  // the series of each of layer_outputs_' outputs

  std::int64_t step_ = 0;
  bool recording_ = true;
  StepRecord cur_;
  bool cur_active_ = false;     // anything happened in this step
  bool backward_seen_ = false;  // a gradient arrived in this step
  bool backward_done_ = false;  // a backward of this step completed
  // The stream holds this step as it was at the end of its backward; `changed_` says whether
  // anything was recorded into it since (then its closing writes it again).
  bool streamed_ = false;
  bool changed_ = false;
  bool averaged_ = false;       // data-parallel: this step's ranks were already exchanged
  int follow_world_ = 0;        // > 0: ranks of an engine the Monitor does not own
  int rank_ = 0;                // this process's rank in a data-parallel group
  bool engine_done_ = false;    // that engine's end-of-backward work has run for this backward
  bool ranks_in_ = false;       // the ranks' rows of this step arrived
  std::int64_t optimizer_steps_ = 0;  // optimizer steps begun
  bool in_optimizer_ = false;
  int evaluations_ = 0;               // closure evaluations in the current optimizer step
  std::optional<double> scale_;       // the loss scaler's latest scale
  std::vector<int> record_of_;  // series -> index in cur_.records, -1 when it has none
  std::unordered_map<int, int> calls_;  // layer-output series -> its calls hooked in the open step
  std::vector<OutputToHook> named_outputs_;  // see name_output
  std::vector<bool> linked_;                // series -> its inputs were looked for
  SegmentLinks segments_;                   // reentrant checkpointing's segments in the open step
  std::vector<std::pair<NodeRef, int>> segments_to_hook_;
  std::unordered_map<const torch::autograd::Node*, int> recomputed_nodes_;  // the segment's outputs so far
  compat::WeakNodeRef segment_output_;  // see note_segment_output
  std::vector<NodeRef> kept_;  // see keep_for_step
  DeferredResults deferred_;
  StatsWorker worker_;
};

}  // namespace gradflow::detail
