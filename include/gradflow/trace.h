#pragma once
/// \file
/// What a Monitor recorded: plain host data, no LibTorch types.

#include <cstdint>
#include <functional>
#include <limits>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "gradflow/activation.h"
#include "gradflow/tensor_stats.h"

namespace gradflow {

/// What a recorded series measures.
enum class SeriesKind {
  parameter,   ///< dL/dθ for one named parameter (backward hook on the leaf)
  activation,  ///< dL/d(layer output), found by walking the autograd graph
  tap,         ///< dL/dh for a tensor named explicitly with Monitor::tap (hidden states, time steps)
};

/// Name of a SeriesKind as written to JSON/CSV ("parameter", "activation", "tap").
const char* to_string(SeriesKind kind);
/// Inverse of to_string; throws gradflow::Error for an unknown name.
SeriesKind series_kind_from_string(const std::string& name);

/// One recorded quantity's identity: the same for every step.
struct SeriesInfo {
  std::string name;   ///< e.g. "layers.3.weight", "layers.3", "h.7", "time.12"
  SeriesKind kind = SeriesKind::parameter;
  std::string layer;  ///< owning module path ("layers.3"); for taps, the tap's group ("h", "time")
  std::vector<std::int64_t> shape;  ///< shape at first record
  /// Layer outputs: the layer-output series whose output reaches this module's input with no
  /// other module between them (the model's graph, one edge per pair). Parallel branches (a
  /// VAE's two heads) feed the same module but not each other. Only series recorded before this
  /// one (forward order). Empty when unknown.
  std::vector<int> inputs;
  /// Layer outputs found by the Monitor's graph walk (a torch::nn::Module's): the output of the
  /// op that applies the module's weights, which is the module's own output unless its forward
  /// computes on after that op (an activation or an aggregation inside it). False: what the
  /// module's call returned (forward hooks, a TorchScript model, Monitor::layer_output).
  bool found_by_walk = false;
  /// Taps: the activation the program declared for the tensor (TapOptions::activation), which
  /// decides whether its forward statistics are read as dead units or as saturation; none
  /// otherwise.
  Activation activation = Activation::none;
  /// Parameters held in parts across ranks (torch.distributed's DTensor: FSDP2, tensor
  /// parallelism): how many ranks' parts make the whole tensor (a replicated part counts once);
  /// 0 otherwise. The records' figures are then of the whole gradient, combined from every
  /// rank's part, and Record::ranks holds each rank's part (local, replicas included).
  int shards = 0;
};

/// Forward-pass statistics of a tapped activation, for dead and saturated units.
struct ActivationStats {
  double mean = 0.0;                  ///< mean of the activation
  double std = 0.0;                   ///< its population standard deviation
  double dead_fraction = 0.0;         ///< units inactive for every example in the batch (ReLU-like)
  double saturated_fraction = 0.0;    ///< elements whose local derivative is below the threshold
  double mean_local_derivative = 0.0; ///< mean of the activation's derivative (the chain-rule factor)
};

/// What the entries of Record::profile follow.
enum class ProfileAxis {
  calls,  ///< one entry per call of the module in the step, in forward order
  time,   ///< one entry per time step of the module's output sequence (a fused recurrent module)
};

/// Name of a ProfileAxis as written to JSON ("calls", "time").
const char* to_string(ProfileAxis axis);

/// One series at one recorded step.
struct Record {
  int series = 0;   ///< index into Trace::series()
  TensorStats grad; ///< the gradient's sums
  /// L2 norm of the parameter itself when the gradient arrived (parameters only; NaN otherwise).
  double weight_norm = std::numeric_limits<double>::quiet_NaN();
  /// ‖Δθ‖ of the optimizer step that applied this gradient (MonitorOptions::update_norms; NaN
  /// otherwise, and for a step not yet closed).
  double update_norm = std::numeric_limits<double>::quiet_NaN();
  std::optional<ActivationStats> forward;  ///< taps with an activation function only
  /// Parameters, when the Monitor saw the optimizer step (Monitor::begin_optimizer_step): the
  /// gradient as the optimizer found it in .grad(), after whatever the program did between
  /// backward and the step (clipping, unscaling, averaging). `grad` stays the gradient backward
  /// produced. Empty otherwise, and for a closure's evaluations (LBFGS applies its own combination of them).
  std::optional<TensorStats> applied;
  /// Data-parallel runs: each rank's local gradient, index = rank (before the average, for
  /// parameters); empty in a one-process run. `grad` then holds the averaged gradient the
  /// optimizer applies (parameters), or for layer outputs and taps the gradient of the averaged
  /// loss: every rank's local dL/dh taken together, divided by the number of ranks.
  std::vector<TensorStats> ranks;
  /// Beyond 64 ranks each rank's entry holds only its gradient's norm (sum_sq), largest |g|
  /// (max_abs), both rounded to the gradient's type, and whether it had a non-finite value
  /// (nonfinite 0 or 1); its other figures are not carried.
  bool ranks_compact = false;
  /// Layer outputs: the gradient's L2 norm along `profile_axis` within the step. A module called
  /// several times (a cell at every time step, a policy at every environment step, a siamese
  /// twin) is one series whose `grad` holds all its calls together and whose profile holds each
  /// call's norm, in forward order (the calls whose gradient the step's watched backward
  /// reached): a time profile, never depth. A recurrent module's output
  /// sequence (nn.LSTM) has one entry per time step. Empty for a module called once without a
  /// sequence, and in data-parallel runs (the profile would be one rank's).
  std::vector<double> profile;
  ProfileAxis profile_axis = ProfileAxis::calls;
};

/// Everything recorded at one step.
struct StepRecord {
  std::int64_t step = 0;                  ///< the Monitor's step index (0-based)
  /// The step's objective: the sum of the losses given to Monitor::watch in it, if any.
  std::optional<double> loss;
  /// Each watched loss on its own, in the order watched (one entry for a plain loop).
  std::vector<double> losses;
  std::optional<double> accuracy;         ///< set by trainers that know it
  int backwards = 0;                      ///< backward passes seen during the step
  /// The step was still open when the trace was read (no step() closed it, or no backward ran
  /// in it yet): its numbers are incomplete and no finding is drawn from it.
  bool partial = false;
  std::vector<Record> records;
  /// Data-parallel runs: each rank's own loss (index = rank); `loss` is then their mean.
  std::vector<double> rank_losses;
  /// The optimizer step this record belongs to (0-based, counted by the Monitor), -1 when the
  /// Monitor was not told of optimizer steps.
  std::int64_t optimizer_step = -1;
  /// Evaluations of a closure (`optimizer.step(closure)`): this one's index within its optimizer
  /// step, each evaluation being a record of its own; -1 for a step without closure.
  int evaluation = -1;
  /// A closure's optimizer step, on its last evaluation: the loss optimizer.step() returned.
  std::optional<double> step_loss;
  /// The loss scale this step's gradients were multiplied by (GradScaler) and that the recorded
  /// figures were divided by again: they are the unscaled gradient. Empty: no loss scaling.
  std::optional<double> loss_scale;
  /// The scale the loss scaler chose after this step (it lowers it when it skips a step).
  std::optional<double> scale_after;
  /// The loss scaler skipped this optimizer step (a non-finite scaled gradient): the optimizer
  /// applied nothing.
  bool skipped = false;
  /// Data-parallel runs, at the steps the ranks' parameters were compared: a checksum of each
  /// rank's parameters (index = rank); equal on every rank while they stay in sync.
  std::vector<double> rank_checksums;
  /// The loss Hessian's largest eigenvalue at the parameters this step's update produced
  /// (MonitorOptions::sharpness_every), and the Hessian-vector products its measurement took.
  std::optional<double> sharpness;
  int sharpness_products = 0;
  /// The step size of a plain or heavy-ball gradient step (SGD), and its momentum, when the
  /// Monitor was told of the optimizer: the sharpness it is stable at is (2 + 2·momentum)/lr.
  std::optional<double> learning_rate;
  double momentum = 0;
  /// Adds one watched loss: kept in `losses`, summed into `loss`.
  void add_loss(double value);
  /// The record of a series at this step, or nullptr when it was not recorded.
  const Record* find(int series) const;
};

/// The first place a non-finite value appeared in any gradient.
struct NonFiniteMark {
  std::int64_t step = 0;
  std::string series;
};

/// The whole recording: series, then steps. Memory grows with steps × series, never with the
/// size of a tensor.
class Trace {
 public:
  /// Index of the series with this name, adding it (with kind, layer and shape) on first sight.
  int intern(const std::string& name, SeriesKind kind, const std::string& layer,
             std::vector<std::int64_t> shape = {});
  /// Index of a series by name, or -1.
  int find(const std::string& name) const;
  /// Records that series `from`'s output feeds series `to` (SeriesInfo::inputs); false when it was
  /// known, or `from` was not recorded before `to` (edges follow forward order: no cycle).
  bool add_input(int to, int from);
  /// The series' shape, once known (a lazy module's parameter has one only after its first forward).
  void set_shape(int series, std::vector<std::int64_t> shape);
  /// Marks a layer output as found by the graph walk (SeriesInfo::found_by_walk).
  void mark_found_by_walk(int series);
  /// The activation declared for a tap (SeriesInfo::activation).
  void set_activation(int series, Activation activation);
  /// The number of ranks' parts a parameter is held in (SeriesInfo::shards).
  void set_shards(int series, int shards);

  const std::vector<SeriesInfo>& series() const { return series_; }
  const std::vector<StepRecord>& steps() const { return steps_; }
  std::vector<StepRecord>& steps() { return steps_; }

  /// Appends a step; records keep their order. Updates first_nonfinite().
  void add_step(StepRecord step);

  /// The same trace without its partial steps (what findings are drawn from).
  Trace complete_steps() const;
  /// The same trace with only the steps `keep` accepts.
  Trace steps_where(const std::function<bool(const StepRecord&)>& keep) const;

  /// Series of one kind, in the order they were first recorded.
  std::vector<int> series_of_kind(SeriesKind kind) const;

  /// The first non-finite gradient value seen, if any.
  const std::optional<NonFiniteMark>& first_nonfinite() const { return first_nonfinite_; }

  std::int64_t every = 1;     ///< the Monitor recorded every k-th step
  bool interrupted = false;   ///< the run was stopped before it ended (signal)
  /// MonitorOptions::saturation_threshold the forward statistics were computed with.
  double saturation_threshold = 0.1;
  /// Processes that trained the model data-parallel (1: one process).
  int world_size = 1;
  /// Examples per rank and step, when known (0 otherwise): the gradient noise scale needs it.
  std::int64_t batch_per_rank = 0;
  /// The process that recorded it (its id; 0: not known). Only that process records and writes:
  /// a child that fork() copied the Monitor into records nothing.
  std::int64_t process_id = 0;
  /// No step was recorded, yet the model's parameters changed after the Monitor was attached:
  /// the model trained in another process (or through parameters the Monitor was not given).
  bool updated_elsewhere = false;
  /// The Monitor named layer outputs (MonitorOptions::activations): a module with parameters
  /// and no layer-output series was then not called in a recorded forward.
  bool layer_outputs = false;
  /// The Monitor hooked the parameters' gradients (MonitorOptions::parameters): closed steps
  /// without a single parameter record then mean that none reached it.
  bool parameter_gradients = false;

 private:
  std::vector<SeriesInfo> series_;
  std::unordered_map<std::string, int> index_;
  std::vector<StepRecord> steps_;
  std::optional<NonFiniteMark> first_nonfinite_;
};

/// How a record's parameter gradient relates to the one its optimizer step applied: the totals
/// over every parameter of the step.
struct AppliedChange {
  double produced_norm = 0;  ///< ‖g‖ as backward produced it (all parameters)
  double applied_norm = 0;   ///< ‖g‖ as the optimizer found it
  /// Parameters whose applied gradient differs from the produced one (norm or largest element,
  /// beyond rounding: 1e-6 relative).
  int changed = 0;
  /// applied_norm / produced_norm (1 when they are equal; NaN when either is not finite or zero).
  double factor() const;
};
/// The totals of a step whose records carry `applied`, nullopt when none does.
std::optional<AppliedChange> applied_change(const StepRecord& step, const Trace& trace);

/// What the gradient figures of a trace are, in words: "produced by backward", "averaged over 4
/// ranks", "unscaled (÷ the loss scale)", "applied by the optimizer beside it", "one record per
/// closure evaluation" (the labels the report and the CSV carry).
std::vector<std::string> gradient_labels(const Trace& trace);

}  // namespace gradflow
