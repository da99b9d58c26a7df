#pragma once
// The Monitor's step state machine: which step is open, what it has recorded, and when it goes
// into the trace. Every member is reached under the Monitor's lock (see Guarded).

#include <cstdint>
#include <functional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

#include "deferred_results.h"
#include "gradflow/monitor.h"
#include "graph_walk.h"
#include "stats_path.h"
#include "stats_worker.h"

namespace gradflow::detail {

struct HookedParam {
  at::Tensor tensor;
  std::string name;
  int series = -1;
  unsigned hook = 0;
  int seen = 0;  // hook firings in the current step
};

class StepRecorder {
 public:
  // `schedule_collect` arranges for collect_worker() to run, under the lock, when the current
  // backward ends (the engine's callback): the worker's results must be in before backward returns.
  StepRecorder(MonitorOptions options, std::function<void()> schedule_collect);

  const MonitorOptions& options() const { return opts_; }

  // Attachment: the parameters to hook, and the lookup the graph walk needs.
  void set_params(const std::vector<std::pair<std::string, at::Tensor>>& named);
  std::vector<HookedParam>& params() { return params_; }
  const ParamLookup& lookup() const { return lookup_; }
  bool attached = false;

  // A parameter's hook fired with the gradient of one backward.
  void on_param_grad(int param, const at::Tensor& grad);
  // A layer output's or a tap's hook fired; `hooked_at` is the step it was registered in.
  void on_tensor_grad(int series, std::int64_t hooked_at, const at::Tensor& grad);

  // A forward begins (watch, tap): in auto-step mode, after a backward it opens the next step.
  void begin_forward();
  // Records the loss of the current step; false when the step is not recorded.
  bool record_loss(const at::Tensor& loss);
  // The layer outputs found below the loss, as (node, series) pairs for hooking.
  std::vector<std::pair<torch::autograd::Node*, int>> layer_output_series(torch::autograd::Node* root);
  // The tap's series, with its forward statistics queued when it names an activation; -1 when
  // the step is not recorded.
  int tap_series(const at::Tensor& t, const std::string& name, const TapOptions& options);

  // Closes the open step: what it recorded enters the trace.
  void end_step();
  // Drops the open step unrecorded.
  void abandon_step();
  // Data-parallel: the gradients were just averaged; exchanges the step's local figures with
  // the other ranks (one collective) and records the averaged gradient.
  void on_gradients_averaged();
  // The closed steps, and the open one marked partial when it is incomplete (no backward yet,
  // or a manual-step Monitor whose step() has not closed it).
  const Trace& snapshot();
  void collect_worker();

  bool next_forward_recorded() const;
  std::int64_t step() const { return step_; }
  std::int64_t completed_steps() const { return step_ + (opts_.auto_step && backward_seen_ ? 1 : 0); }
  void mark_interrupted() { trace_.interrupted = true; }

 private:
  int record_index(int series);
  // The index of the series' record in the open step, -1 when it has none.
  int find_record(int series) const;
  // Computes the gradient's statistics into the record of `series`; with `merge`, they are
  // merged into what the record already holds (a second gradient of the same series in a step).
  void record(int series, const at::Tensor& grad, const at::Tensor& weight, bool merge = false);
  // Moves device and worker results into the open step.
  void gather();
  void record_weight(int index, StatsPath path, const at::Tensor& weight);
  // ‖θ now − θ at the step's first gradient‖ for every parameter copied in this step.
  void record_updates();
  // Sum of every parameter's elements and squares, in double: equal on ranks in sync.
  double parameter_checksum() const;
  void reset_step();

  MonitorOptions opts_;
  std::function<void()> schedule_collect_;
  bool collect_scheduled_ = false;
  Trace trace_;
  Trace view_;  // what snapshot() returns
  std::vector<HookedParam> params_;
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
  bool averaged_ = false;       // data-parallel: this step's ranks were already exchanged
  std::vector<int> record_of_;  // series -> index in cur_.records, -1 when it has none
  DeferredResults deferred_;
  StatsWorker worker_;
};

}  // namespace gradflow::detail
