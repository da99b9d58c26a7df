#pragma once
/// \file
/// The Monitor: backward hooks that record how the gradient flows through a LibTorch model.

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

#include "gradflow/activation.h"
#include "gradflow/model_traits.h"
#include "gradflow/node_ref.h"
#include "gradflow/sharding.h"
#include "gradflow/sharpness.h"
#include "gradflow/trace.h"

namespace torch::nn {
class Module;
}
namespace torch::optim {
class Optimizer;
}
namespace torch::autograd {
struct Node;
}
namespace torch::jit {
struct Module;
}

namespace gradflow {

class DataParallel;

/// Where gradient statistics are computed.
enum class StatsBackend {
  automatic,  ///< fused CPU pass for float/double CPU tensors, ATen ops on the device otherwise
  aten,       ///< ATen reductions on the tensor's device, for every tensor (the CUDA path)
};

/// Configuration of a Monitor.
struct MonitorOptions {
  /// Record every k-th step (steps 0, k, 2k, ...). Steps in between cost one branch per hook.
  std::int64_t every = 1;
  /// Hook every trainable parameter (dL/dθ).
  bool parameters = true;
  /// In watch(), walk the autograd graph and record dL/d(output) of every parameterised layer.
  bool activations = true;
  /// Record each parameter's own L2 norm next to its gradient (and so ||g||/||w||).
  bool weight_norms = true;
  /// Record the size of each update the optimizer applies, ‖θ after − θ before‖, and so the
  /// update-to-weight ratio. Costs a copy of every parameter per recorded step; measured when
  /// the step closes (step(), or the next step's start in auto-step mode).
  bool update_norms = false;
  /// When true, each watch() (or a parameter's hook firing a second time) begins a new step, so
  /// a plain training loop needs no step() call. Set it to false for gradient accumulation and
  /// call step() once per optimizer step.
  bool auto_step = true;
  /// An element counts as saturated when its activation's derivative is below this fraction of
  /// the derivative's maximum (0.25 for the sigmoid); a unit is dead when it is so for every
  /// example of the batch.
  double saturation_threshold = 0.1;
  StatsBackend backend = StatsBackend::automatic;
  /// Compute CPU statistics on a worker thread while backward goes on; backward() still returns
  /// only once every statistic of the step is done, before the optimizer can touch a gradient or
  /// a weight. Off by default: measured on the 2-core reference machine (MLP 50x256, batch 128),
  /// the worker's 2.3 ms of vector work slowed the main thread's backward from 14.2 to 20.5 ms.
  /// Try it where cores do not share that much (`gradflow bench` shows the effect).
  bool async = false;
  /// Data-parallel training: the group whose average_gradients() the Monitor follows (it must
  /// outlive the Monitor). Each rank records its local gradient in its hooks; those figures ride
  /// in the average's last allreduce (no collective of their own) to every rank (Record::ranks,
  /// StepRecord::rank_losses), the records then hold the averaged gradient, the step's loss is
  /// the ranks' mean, and every `sync_check_every`-th recorded step compares the ranks'
  /// parameter checksums. Rank 0 writes the trace.
  DataParallel* data_parallel = nullptr;
  /// Examples per rank and step, for the gradient noise scale (0: unknown, no noise scale).
  std::int64_t batch_per_rank = 0;
  /// A folder to stream the recording to (empty: none, the default): each recorded step is
  /// appended to `out`/trace.jsonl once its backward completes (auto-step; at step() otherwise),
  /// so that a program that dies (an exception, SIGKILL, the OOM killer) leaves every such step;
  /// `gradflow report out` builds the report from it. In a data-parallel run only rank 0 writes.
  std::string out;
  /// Replace a recording already in `out` (otherwise the Monitor refuses to start on it).
  bool force = false;
  /// This process's rank in a data-parallel run whose group the Monitor does not follow (a
  /// program's own, or DistributedDataParallel's): only rank 0 streams and writes reports.
  /// -1: the rank of `data_parallel`, or 0.
  int rank = -1;

  /// Every k-th recorded step (0: never), the sharpness λ_max of the loss `sharpness_loss`
  /// returns, at the parameters the step's update produced: StepRecord::sharpness.
  /// `sharpness_loss` recomputes the loss on a fixed batch (a closure over the model and that
  /// batch); it is called when the Monitor learns that the optimizer step ended
  /// (optimizer_step(), end_optimizer_step(), Python's optimizer=) or at step(), once the step's
  /// graph is gone, and Hessian-vector products are taken by double backward (each about two
  /// backward passes; StepRecord::sharpness_products). The measurement leaves the parameters,
  /// their gradients, LibTorch's CPU random generator and the model's buffers (BatchNorm's running
  /// statistics, for a Monitor given a module) as they were, and records nothing of its own
  /// forward; hooks the program put on the model run for it as for any forward.
  std::int64_t sharpness_every = 0;
  std::function<at::Tensor()> sharpness_loss;
  SharpnessOptions sharpness;

  MonitorOptions& with_sharpness(std::int64_t every_k, std::function<at::Tensor()> loss) {
    sharpness_every = every_k;
    sharpness_loss = std::move(loss);
    return *this;
  }
  MonitorOptions& with_async(bool on) { async = on; return *this; }
  MonitorOptions& with_every(std::int64_t k) { every = k; return *this; }
  MonitorOptions& with_activations(bool on) { activations = on; return *this; }
  MonitorOptions& with_auto_step(bool on) { auto_step = on; return *this; }
  MonitorOptions& with_backend(StatsBackend b) { backend = b; return *this; }
  MonitorOptions& with_update_norms(bool on) { update_norms = on; return *this; }
  MonitorOptions& with_out(std::string folder, bool replace = false) {
    out = std::move(folder);
    force = replace;
    return *this;
  }
  MonitorOptions& with_data_parallel(DataParallel& group, std::int64_t examples_per_rank = 0) {
    data_parallel = &group;
    batch_per_rank = examples_per_rank;
    return *this;
  }
};

/// Options for one tapped tensor.
struct TapOptions {
  /// The activation that produced the tensor: enables dead/saturated-unit statistics.
  Activation activation = Activation::none;
  /// Its input, needed for the GELU's derivative; ignored otherwise.
  at::Tensor preactivation;
  /// The tap's group, stored as the series' layer ("h" for hidden states, "time" for steps).
  /// Empty: the part of the name before its first '.'.
  std::string group;
  /// The activation's own output when it differs from the tapped tensor (a residual block taps
  /// h + act(z) but its units are those of act(z)). Empty: the tapped tensor.
  at::Tensor activation_output;
};

/// Records the gradient flow of a model, step by step, into a Trace.
///
/// A *step* is one training step: everything between two step() calls. With
/// `MonitorOptions::auto_step` (the default) a new step begins at each watch(), so
///
/// \code
/// gradflow::Monitor monitor(*model);           // hooks every parameter
/// for (...) {
///   auto loss = criterion(model->forward(x), y);
///   monitor.watch(loss);                        // optional: also dL/d(layer output)
///   loss.backward();
///   optimizer.step();
/// }
/// gradflow::write_trace_json(monitor.trace(), "trace.json");
/// \endcode
///
/// What a step records, for every loop pattern (tested in tests/monitor/training_loops_test.cpp):
///
/// | loop | Monitor | a recorded step is |
/// |---|---|---|
/// | one loss, one backward per step | default (auto_step) | one backward |
/// | several losses and backwards per step | auto_step = false, step() after optimizer.step() | everything between two step() calls |
/// | gradient accumulation over micro-batches | auto_step = false, step() after optimizer.step() | the micro-batches of one optimizer step |
/// | two models whose graphs cross (GAN) | one Monitor per model; auto_step = false for one that takes several backwards | that model's optimizer step |
/// | optimizer.step(closure) calling backward several times | monitor.optimizer_step(optimizer, closure) | one evaluation of the closure (StepRecord::evaluation), grouped by StepRecord::optimizer_step |
/// | a backward whose gradient is zeroed without an optimizer step | auto_step = false | the step whose gradient the optimizer applied |
///
/// - A parameter's recorded gradient (Record::grad) is its .grad() once backward has added to
///   it: the sum of what every backward of the step added since the last zeroing, after the
///   program's tensor hooks; the gradient *produced*. What the program does to it afterwards
///   (clipping, unscaling, averaging) is seen only when the Monitor is told of the optimizer
///   step (optimizer_step(), or begin_optimizer_step()/end_optimizer_step()): the gradient the
///   optimizer found is then Record::applied.
/// - The step's loss is the sum of the losses watched in it (the objective whose gradient is
///   applied); each watched loss is also kept on its own (StepRecord::losses).
/// - A layer output's or tap's gradient from several backwards of one step (or a tap name given
///   twice) is recorded as one: the statistics of all those gradients taken together.
/// - A step enters the trace when it is closed: by step(), or in auto-step mode by the next
///   step's start. trace() shows the step still open as well, marked `partial` when it is
///   incomplete (no backward yet, or not closed by step() in manual mode: the discriminator's
///   monitor after the generator's backward ran through it); save_report() leaves partial steps
///   out, and no finding is ever drawn from one.
///
/// Parameter hooks fire once per backward with the summed gradient, also for a parameter used
/// several times. Statistics are computed while the hooks run; CPU tensors with the fused pass,
/// other devices with ATen ops whose results are fetched in one transfer per recorded step.
/// Non-finite gradients are counted, never thrown. Destroying the Monitor (or detach()) removes
/// every hook; hooks still attached to a live graph become inert.
///
/// Attaching changes nothing in training: every hook sits on an autograd node (a parameter's
/// gradient accumulator, a layer's or tap's grad_fn), never in a tensor's own hook list, so the
/// program's tensor hooks (C++ or Python), module hooks and DistributedDataParallel's run as
/// they would without it, in either order of registration. A parameter's gradient is read once
/// its accumulator has added it to .grad(): after the program's hooks changed it.
class Monitor {
 public:
  explicit Monitor(MonitorOptions options = {});
  /// Attaches to `module` at once (see attach()).
  explicit Monitor(torch::nn::Module& module, MonitorOptions options = {});
  ~Monitor();
  Monitor(const Monitor&) = delete;
  Monitor& operator=(const Monitor&) = delete;

  /// Hooks every parameter of `module` and its submodules that requires grad (frozen ones are
  /// skipped). Shared parameters are hooked once, under their first name. Throws gradflow::Error
  /// if already attached.
  void attach(torch::nn::Module& module);
  /// A TorchScript module (torch::jit::load): hooks its trainable parameters and, when
  /// activations are on, names each call's output of its submodules as a forward hook would see
  /// it (what the call returned; its first tensor), through an identity op put after each
  /// submodule call in the module's code until detach(). Attach before the module's first
  /// forward: code TorchScript already ran, or froze, keeps no such op, and its layer outputs
  /// are then found by the graph walk of watch(). Save the module after detach(): code saved
  /// while attached calls gradflow's op.
  void attach(torch::jit::Module& module);
  /// Hooks the given named tensors as parameters (for modules that are not torch::nn::Module).
  /// Module paths are the names without their last component.
  void attach(const std::vector<std::pair<std::string, at::Tensor>>& named_parameters);
  /// Removes every hook; nothing fires after it. Recorded data stays.
  void detach();
  bool attached() const;

  /// Call after the forward, before backward(): records the loss and, when activations are on,
  /// hooks the graph so that dL/d(output) of every parameterised layer is recorded under the
  /// layer's name: the outputs named by layer_output() since the last watch(), and for every
  /// other module the graph walk's, the output of the op that applies its parameters (for a
  /// module with parameterised modules inside it, such as attention, that of the last of them).
  /// Name a module's output with layer_output() where its forward computes on after that op.
  /// In auto-step mode it first ends the previous step.
  void watch(const at::Tensor& loss);
  /// Records dL/dt for a tensor computed in the forward (a hidden state, a time step). Call it in
  /// the forward on every step: the hook belongs to this step's tensor. No-op when the step is not
  /// recorded or `t` does not require grad.
  void tap(const at::Tensor& t, const std::string& name, const TapOptions& options = {});
  /// Names `output` as one call's output of the module `module`: the next watch(loss) hooks it,
  /// and its series then holds dL/d(output) as a forward hook on the module receives it (the
  /// gradflow Python module calls it from forward hooks, in place of the graph walk of watch();
  /// a backward the program runs before watch(), such as a gradient penalty's, is not recorded).
  /// Each call in a step adds to the module's one series, and its norm to the record's profile
  /// (Record::profile); `time_dim` >= 0 names the time dimension of a sequence output, whose time
  /// steps are then the profile of a module called once. No-op when the step is not recorded.
  /// An output without grad_fn (computed under no_grad, as a reentrant checkpoint's first forward
  /// is) only gives the module's series its place in forward order. Called inside a backward (the
  /// recomputation of a torch.utils.checkpoint segment), the output is hooked at once for the step
  /// that backward belongs to, and the step goes on: recomputation never splits a step.
  void layer_output(const at::Tensor& output, const std::string& module, int time_dim = -1);
  /// The same for an output the program cannot reach as a tensor: output `output` of the
  /// autograd node `node`, recorded as the series `name` of `module` (a fused recurrent module's
  /// layer k, "rnn.l0", whose sequence only its grad_fn holds).
  void layer_output(const NodeRef& node, std::size_t output, const std::string& name,
                    const std::string& module, int time_dim = -1);
  /// Declares that the program names every parameterised module's output with layer_output()
  /// (forward hooks on each module, as the gradflow Python module installs them) in place of the
  /// graph walk: a module with parameters and no layer-output series was then not called in a
  /// recorded forward, and the report lists it (Trace::layer_outputs).
  void names_layer_outputs();
  /// Reentrant activation checkpointing (torch.utils.checkpoint with use_reentrant=True) runs a
  /// segment's forward without autograd and computes it again inside the step's backward, where
  /// the step's graph cannot show what the segment's layers feed. While the first recorded step's
  /// segments are recomputed, the Monitor calls the listener with true (and with false once each
  /// ends); give it, meanwhile, the output of every call that returns (any module's): the last
  /// one before the segment's own backward is the segment's output, and the layers it reaches
  /// first feed what the segment feeds. The gradflow Python module does both.
  void set_recomputation_listener(std::function<void(bool)> listener);
  void segment_output(const at::Tensor& output);
  /// Ends the current step: its statistics are fetched (one host transfer) into the trace.
  void step();
  /// Runs `optimizer.step()` (or `optimizer.step(closure)`) between begin_optimizer_step() and
  /// end_optimizer_step(): the gradient the optimizer applies is recorded beside the one backward
  /// produced, and with a closure each evaluation is a record. Returns what step() returned.
  /// In place of `optimizer.step()` in a loop: `monitor.optimizer_step(optimizer);`.
  at::Tensor optimizer_step(torch::optim::Optimizer& optimizer, const std::function<at::Tensor()>& closure = nullptr);
  /// Call right before the optimizer reads the gradients (any optimizer, or a manual update):
  /// each recorded parameter's .grad() as it is now (after clipping, unscaling, averaging) is
  /// recorded as Record::applied. Until end_optimizer_step(), each further backward (a closure's
  /// evaluation, as LBFGS makes) opens a record of its own, numbered StepRecord::evaluation.
  void begin_optimizer_step();
  /// Call right after the optimizer step; `returned_loss`: what a closure's step returned (the
  /// step's loss, kept as StepRecord::step_loss). In auto-step mode the step closes here.
  void end_optimizer_step(std::optional<double> returned_loss = std::nullopt);
  /// The optimizer's step size and heavy-ball momentum for the step in progress (SGD; an
  /// adaptive optimizer has no such bound): the report draws the sharpness against
  /// (2 + 2·momentum)/lr. optimizer_step() tells it of a torch::optim::SGD by itself.
  void set_learning_rate(double lr, double momentum = 0.0);
  /// Tensors a sharpness measurement must leave as they were besides the parameters (a model's
  /// buffers; attach(torch::nn::Module&) and attach(torch::jit::Module&) take the module's).
  void set_model_buffers(std::vector<at::Tensor> buffers);
  /// Loss scaling (mixed precision): the scaler's scale now, before each backward. The recorded
  /// gradients (parameters, layer outputs, taps) are divided by the scale their backward ran at,
  /// so they are the true gradient. When it is lower than the open step's (the scaler backed off
  /// after a non-finite gradient), that step is marked skipped: StepRecord::skipped.
  void set_loss_scale(double scale);

  /// Data-parallel training on an engine the program owns (DistributedDataParallel, through
  /// the gradflow Python module's communication hook): this process is `rank` of `world_size`.
  /// The records hold the averaged gradient, read once the engine's end-of-backward work is done;
  /// each rank's local figures arrive through figures_block()/receive_figures_block().
  void follow_data_parallel(int rank, int world_size);
  /// This rank's figures of the open step in a zero-padded ranks × figures block of `bucket`'s
  /// type and device, to append to the gradient bucket of the engine's last allreduce (sum);
  /// undefined when the step is not recorded. Every rank's figures come back exactly.
  at::Tensor figures_block(const at::Tensor& bucket);
  /// The summed block, after the allreduce.
  void receive_figures_block(const at::Tensor& summed);

  /// Parameters held in parts across ranks (see Sharding); call before attach(). Their
  /// accumulators are not hooked: sharded_gradient() says when a gradient arrived (FSDP2 assigns
  /// it outside autograd). Each recorded step's parts are combined by one collective: after the
  /// optimizer step when the program tells the Monitor of its steps (expect_optimizer_steps()),
  /// else at the end of the step's backward. A step closed elsewhere (flush(), save_report) before
  /// that keeps no figures of them: every rank must reach the collective, and only the program's
  /// own steps reach it on every rank.
  void shard(Sharding sharding);
  /// The sharded parameter `name` has its gradient in .grad (its post-accumulate hook).
  void sharded_gradient(const std::string& name);
  /// The program tells the Monitor of each optimizer step (begin_optimizer_step), from now on.
  void expect_optimizer_steps();

  /// Closes the step in progress if it is whole (auto-step mode, its backward completed), so
  /// that it reaches the trace and the stream now rather than at the next forward. save_report
  /// and the destructor call it; a program that goes on training loses nothing by it.
  void flush();

  /// Whether the step the next forward belongs to is recorded (its index % every == 0). Models
  /// check it before tapping, so steps in between cost nothing.
  bool recording() const;
  /// Whether the next forward (watch, tap, layer_output) closes the open step: auto-step mode,
  /// after its backward. A loss scaler's scale must be given before then to mark the step skipped.
  bool forward_closes_step() const;
  std::int64_t step_index() const;
  /// Steps closed so far: step() calls, plus in auto-step mode the current step once its
  /// backward has run (the optimizer steps of a plain loop).
  std::int64_t completed_steps() const;
  const MonitorOptions& options() const;
  /// This process's rank: that of the data-parallel group, MonitorOptions::rank, or 0.
  int rank() const;
  /// What the attached module's tree shows (normalisation layers, a recurrent cell, its one
  /// activation module kind: traits_from_module_kinds); save_report() fills what SaveOptions::traits
  /// leaves unset from it. Empty when the Monitor was given named parameters.
  const ModelTraits& model_traits() const;
  /// The folder the recording streams to; empty when it does not (no `out`, or not rank 0).
  std::string stream_dir() const;
  /// Marks the stream finished by the program (save_report does): a report read from the
  /// folder then does not call the run interrupted.
  void finish_stream();

  /// The recording so far, including the step in progress.
  const Trace& trace();
  /// Marks the trace as cut short (a signal) before it is written.
  void mark_interrupted();
  /// Drops the step in progress without recording it: its gradient never reached the optimizer
  /// (a rank was lost in the middle of it).
  void abandon_step();

  /// Whether this process is a child that fork() copied the Monitor into (a worker of
  /// torch.multiprocessing's fork start method): the Monitor belongs to the process that created
  /// it, so here its hooks record nothing, its stream writes nothing, and it says so once on stderr.
  bool forked_copy() const;
  /// How many Monitors this thread created before this one: the same on every rank of a program
  /// that creates its Monitors in the same order, so that each names its own findings to the others.
  std::int64_t creation_index() const;

  /// Implementation state, shared with the hooks it installs (opaque to users).
  struct State;

 private:
  // layer_output()'s work: a forward inside a backward (a checkpointed segment's recomputation)
  // hooks the output at once for the step that backward belongs to; any other names it for watch().
  void name_output(const NodeRef& node, std::size_t output, const std::string& name,
                   const std::string& module, int time_dim);
  std::shared_ptr<State> state_;
};

}  // namespace gradflow
