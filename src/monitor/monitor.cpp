#include "gradflow/monitor.h"

#include <atomic>
#include <cstdio>

#include <torch/csrc/autograd/engine.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>
#include <fmt/format.h>
#include <torch/torch.h>

#include "gradflow/data_parallel.h"
#include "gradflow/error.h"
#include "gradflow/option.h"
#include "util/guarded.h"
#include "util/process.h"
#include "monitor/backward_context.h"
#include "monitor/script_outputs.h"
#include "monitor/sharpness_torch.h"
#include "monitor/step_recorder.h"

namespace gradflow {

// What the Monitor shares with the hooks it installs. Hooks hold it weakly (parameters) or
// for the life of one graph (layer outputs); everything mutable sits behind one lock.
struct Monitor::State : std::enable_shared_from_this<Monitor::State> {
  explicit State(MonitorOptions options)
      : opts(options), recorder(options, [this] { schedule_backward_end(); }) {}

  // Runs at the end of the current backward, before backward() returns to the caller.
  void schedule_backward_end() {
    std::weak_ptr<State> weak = weak_from_this();
    torch::autograd::Engine::get_default_engine().queue_callback([weak] {
      if (auto st = weak.lock(); st && !st->forked_copy()) st->recorder.lock()->on_backward_end();
    });
  }

  // Whether this process is a child that fork() copied the Monitor into: the Monitor, its hooks
  // and its stream then do nothing here (the parent's folder stays the parent's), and say so once.
  bool forked_copy() {
    if (detail::fork_generation() == generation) return false;
    if (!warned.exchange(true))
      std::fprintf(stderr,
                   "gradflow: process %lld inherited a Monitor from the process that created it (process %lld) through "
                   "fork(); it records nothing here and writes nothing to its folder: create a Monitor in this process, "
                   "with its own out= folder, to record its training\n",
                   static_cast<long long>(detail::process_id()), static_cast<long long>(owner));
    return true;
  }

  int rank() const {
    if (opts.data_parallel) return opts.data_parallel->rank();
    if (follow_rank > 0) return follow_rank;
    return opts.rank > 0 ? opts.rank : 0;
  }

  const MonitorOptions opts;
  detail::Guarded<detail::StepRecorder> recorder;
  int rider = -1;  // on opts.data_parallel
  int follow_rank = 0;  // follow_data_parallel()
  std::unique_ptr<detail::ScriptOutputs> script_outputs;  // attach(torch::jit::Module&)
  ModelTraits shown;  // what the attached module's tree shows
  std::vector<at::Tensor> buffers;  // left as they were by a sharpness measurement
  std::function<void(bool)> recomputation_listener;  // set_recomputation_listener
  bool listening = false;
  const std::uint64_t generation = detail::fork_generation();
  const std::int64_t owner = detail::process_id();
  // Monitors this thread created before this one (a rank is a process, or in tests a thread).
  const std::int64_t creation_index = next_creation_index();

  static std::int64_t next_creation_index() {
    thread_local std::int64_t next = 0;
    return next++;
  }
  std::atomic<bool> warned{false};
};

namespace {

// Every hook sits on an autograd node, never in a tensor's own hook list: a tensor hook from
// Python resets that list in LibTorch 1.x (and a C++ one resets Python's), so a hook there
// would switch the program's hooks off or be switched off by them.

// dL/d(one output of a node): a layer output or a tap. Sees the gradient as it reaches the node,
// after the hooks registered on that output before it.
struct OutputGradHook : torch::autograd::FunctionPreHook {
  OutputGradHook(std::weak_ptr<Monitor::State> s, int series, std::int64_t step, std::size_t output,
                 detail::ProfileSlot slot = {})
      : state(std::move(s)), series(series), step(step), output(output), slot(slot) {}
  torch::autograd::variable_list operator()(const torch::autograd::variable_list& grads) override {
    if (output >= grads.size() || !grads[output].defined()) return grads;
    if (auto st = state.lock(); st && !st->forked_copy()) st->recorder.lock()->on_tensor_grad(series, step, grads[output], slot);
    return grads;
  }
  std::weak_ptr<Monitor::State> state;
  int series;
  std::int64_t step;
  std::size_t output;
  detail::ProfileSlot slot;
};

// The watched loss's node: the first to run in the step's backward, so the graph task running it
// is the step's (backwards nested in it, a checkpointed segment's, end before it does).
struct BackwardStartHook : torch::autograd::FunctionPreHook {
  explicit BackwardStartHook(std::weak_ptr<Monitor::State> s) : state(std::move(s)) {}
  torch::autograd::variable_list operator()(const torch::autograd::variable_list& grads) override {
    if (auto st = state.lock(); st && !st->forked_copy()) st->recorder.lock()->on_backward_start(detail::current_backward());
    return grads;
  }
  std::weak_ptr<Monitor::State> state;
};

// A reentrant checkpoint's segment node: its recomputation and nested backward run inside it.
struct SegmentEnterHook : torch::autograd::FunctionPreHook {
  SegmentEnterHook(std::weak_ptr<Monitor::State> s, int segment, std::int64_t step)
      : state(std::move(s)), segment(segment), step(step) {}
  torch::autograd::variable_list operator()(const torch::autograd::variable_list& grads) override {
    auto st = state.lock();
    if (!st || st->forked_copy()) return grads;
    const bool wanted = st->recorder.lock()->enter_segment(segment, step);
    // Outside the lock: the listener runs Python, whose forward hooks call back.
    if (wanted && st->recomputation_listener) {
      st->listening = true;
      st->recomputation_listener(true);
    }
    return grads;
  }
  std::weak_ptr<Monitor::State> state;
  int segment;
  std::int64_t step;
};

struct SegmentLeaveHook : torch::autograd::FunctionPostHook {
  SegmentLeaveHook(std::weak_ptr<Monitor::State> s, int segment, std::int64_t step)
      : state(std::move(s)), segment(segment), step(step) {}
  torch::autograd::variable_list operator()(const torch::autograd::variable_list& outputs,
                                            const torch::autograd::variable_list& /*inputs*/) override {
    auto st = state.lock();
    if (!st || st->forked_copy()) return outputs;
    st->recorder.lock()->leave_segment(segment, step);
    if (st->listening) {
      st->listening = false;
      st->recomputation_listener(false);
    }
    return outputs;
  }
  std::weak_ptr<Monitor::State> state;
  int segment;
  std::int64_t step;
};

// The sharpness, when the open step is due one, at the parameters its update produced: measured
// once its graph is gone (a forward in train mode updates BatchNorm's statistics in place, which
// a live graph forbids), and outside the recorder's lock, since the loss's forward may name
// outputs (forward hooks call back).
void measure_sharpness_if_due(Monitor::State& st) {
  std::vector<at::Tensor> params;
  {
    auto rec = st.recorder.lock();
    if (!rec->attached || !rec->sharpness_due()) return;
    for (const auto& p : rec->params()) params.push_back(p.tensor);
    rec->measuring = true;
  }
  Sharpness s;
  try {
    s = detail::measure_sharpness(st.opts.sharpness_loss, params, st.buffers, st.opts.sharpness);
  } catch (...) {
    st.recorder.lock()->measuring = false;
    throw;
  }
  auto rec = st.recorder.lock();
  rec->measuring = false;
  rec->set_sharpness(s.lambda_max, s.products);
}

// Plain or heavy-ball SGD with one step size and momentum in every group: (lr, momentum), what
// bounds the sharpness it is stable at. Other optimizers have no such single bound.
std::optional<std::pair<double, double>> sgd_step_size(torch::optim::Optimizer& optimizer) {
  if (!dynamic_cast<torch::optim::SGD*>(&optimizer) || optimizer.param_groups().empty()) return std::nullopt;
  std::optional<std::pair<double, double>> step;
  for (auto& group : optimizer.param_groups()) {
    const auto& o = static_cast<const torch::optim::SGDOptions&>(group.options());
    if (o.dampening() != 0 || o.nesterov()) return std::nullopt;
    const std::pair<double, double> here{o.lr(), o.momentum()};
    if (step && *step != here) return std::nullopt;
    step = here;
  }
  return step;
}

}  // namespace

Monitor::Monitor(MonitorOptions options) : state_(std::make_shared<State>(options)) {
  if (options.rank < -1) throw OptionError(Option::rank, "{} must be 0 or more (got " + std::to_string(options.rank) + ")");
  if (options.sharpness_every < 0 || (options.sharpness_every > 0 && !options.sharpness_loss))
    throw UsageError("sharpness_every needs a sharpness_loss (the loss on a fixed batch) and must be 0 or more");
  // One writer per run: the other ranks' figures reach rank 0's trace, or are their own.
  if (!options.out.empty() && state_->rank() == 0) {
    auto rec = state_->recorder.lock();
    rec->stream_to(std::make_unique<TraceStream>(options.out, rec->snapshot(), options.force));
  }
}

Monitor::Monitor(torch::nn::Module& module, MonitorOptions options) : Monitor(options) {
  attach(module);
}

Monitor::~Monitor() {
  // Unwinding from the program's exception, or its normal end: the last whole step reaches the stream.
  try {
    flush();
  } catch (const std::exception&) {
  }
  detach();
}

void Monitor::attach(torch::nn::Module& module) {
  std::vector<std::pair<std::string, at::Tensor>> named;
  for (const auto& item : module.named_parameters(/*recurse=*/true)) named.emplace_back(item.key(), item.value());
  attach(named);
  std::vector<std::string> kinds;
  for (const auto& m : module.modules()) kinds.push_back(m->name());
  state_->shown = traits_from_module_kinds(kinds);
  state_->buffers = module.buffers();
}

void Monitor::attach(torch::jit::Module& module) {
  attach(detail::trainable_parameters(module));
  state_->shown = traits_from_module_kinds(detail::module_kinds(module));
  state_->buffers = detail::buffers_of(module);
  if (state_->opts.activations) state_->script_outputs = std::make_unique<detail::ScriptOutputs>(module, *this);
}

void Monitor::attach(const std::vector<std::pair<std::string, at::Tensor>>& named) {
  auto rec = state_->recorder.lock();
  if (rec->attached) throw Error("Monitor is already attached: detach() it first or use a second Monitor");
  rec->set_params(named);
  if (rec->params().empty())
    throw UsageError(
        "the model has no trainable parameter (named_parameters() lists none that requires grad): register its layers "
        "as submodules, not in a plain list, and leave at least one trainable");
  if (state_->opts.parameters) {
    std::weak_ptr<State> weak = state_;
    // A parameter that outlives its Monitor keeps nothing alive.
    rec->hook_params([weak](int i, detail::AccumulatedAt at) {
      return std::function<void()>([weak, i, at] {
        if (auto st = weak.lock(); st && !st->forked_copy()) st->recorder.lock()->on_param_grad(i, at);
      });
    });
  }
  if (auto* dp = state_->opts.data_parallel) {
    std::weak_ptr<State> weak = state_;
    DataParallel::Rider rider;
    rider.block = [weak](const at::Tensor& bucket) {
      auto st = weak.lock();
      return st ? st->recorder.lock()->figures_block(bucket) : at::Tensor();
    };
    rider.receive = [weak](const at::Tensor& summed) {
      if (auto st = weak.lock()) {
        auto rec = st->recorder.lock();
        rec->receive_figures_block(summed);
        rec->on_gradients_averaged();
      }
    };
    state_->rider = dp->add_rider(std::move(rider));
  }
  rec->attached = true;
}

void Monitor::detach() {
  state_->script_outputs.reset();  // before the lock: its op names outputs under it
  auto rec = state_->recorder.lock();
  if (!rec->attached) return;
  rec->collect_worker();
  if (state_->opts.parameters) rec->unhook_params();
  if (state_->rider >= 0) state_->opts.data_parallel->remove_rider(state_->rider);
  state_->rider = -1;
  rec->attached = false;
}

bool Monitor::attached() const { return state_->recorder.lock()->attached; }

void Monitor::watch(const at::Tensor& loss) {
  // A loss computed inside a backward (a checkpointed segment's recomputation) is not the step's.
  if (state_->forked_copy() || detail::current_backward()) return;
  auto rec = state_->recorder.lock();
  rec->begin_forward();
  if (!rec->record_loss(loss)) return;
  if (!rec->attached || !loss.defined() || !loss.requires_grad() || !loss.grad_fn()) return;
  // Runs on the user's thread before backward: no hook of this graph can fire meanwhile.
  const std::int64_t step = rec->step();
  // Named outputs are hooked here, not as they are named: a backward the program runs before
  // (a gradient penalty's autograd.grad) is not the step's.
  // A TorchScript module whose calls named their outputs is read as forward hooks read a live
  // module: a submodule never called (an out_proj whose weight attention applies itself) has none.
  const bool walk = state_->opts.activations && !(state_->script_outputs && rec->has_named_outputs());
  for (const auto& o : rec->outputs_to_hook(loss.grad_fn().get(), walk))
    o.node->add_pre_hook(std::make_unique<OutputGradHook>(state_, o.series, step, o.output, o.slot));
  for (const auto& [node, segment] : rec->take_segments_to_hook()) {
    node->add_pre_hook(std::make_unique<SegmentEnterHook>(state_, segment, step));
    node->add_post_hook(std::make_unique<SegmentLeaveHook>(state_, segment, step));
  }
  loss.grad_fn()->add_pre_hook(std::make_unique<BackwardStartHook>(state_));
}

void Monitor::layer_output(const at::Tensor& output, const std::string& module, int time_dim) {
  if (module.empty()) throw UsageError("layer_output() needs the module's name, as named_modules() gives it");
  name_output(output.defined() ? output.grad_fn() : nullptr, output.defined() ? output.output_nr() : 0, module, module,
              time_dim);
}

void Monitor::name_output(const NodeRef& node, std::size_t output,
                          const std::string& name, const std::string& module, int time_dim) {
  if (state_->forked_copy()) return;
  auto rec = state_->recorder.lock();
  if (!node) {
    if (rec->attached) rec->note_series(name, module);
    return;
  }
  if (detail::current_backward()) {
    if (!rec->attached) return;
    const std::int64_t step = rec->step();
    if (auto o = rec->name_recomputed_output(node, output, name, module, time_dim))
      o->node->add_pre_hook(std::make_unique<OutputGradHook>(state_, o->series, step, o->output, o->slot));
    return;
  }
  rec->begin_forward();
  if (!rec->attached) return;
  rec->name_output(node, output, name, module, time_dim);
}

void Monitor::layer_output(const NodeRef& node, std::size_t output, const std::string& name,
                           const std::string& module, int time_dim) {
  if (name.empty() || module.empty())
    throw UsageError("layer_output() needs the series' name and its module's, as named_modules() gives it");
  name_output(node, output, name, module, time_dim);
}

void Monitor::names_layer_outputs() {
  if (state_->forked_copy()) return;
  state_->recorder.lock()->names_layer_outputs();
}

void Monitor::segment_output(const at::Tensor& output) {
  if (!output.defined() || !output.grad_fn() || state_->forked_copy()) return;
  state_->recorder.lock()->note_segment_output(output.grad_fn());
}

void Monitor::set_recomputation_listener(std::function<void(bool)> listener) {
  state_->recomputation_listener = std::move(listener);
}

void Monitor::tap(const at::Tensor& t, const std::string& name, const TapOptions& options) {
  if (state_->forked_copy()) return;
  auto rec = state_->recorder.lock();
  // A tap in the forward after the previous backward belongs to the next step; one inside a
  // backward (a recomputation) to the step whose backward it is.
  if (!detail::current_backward()) rec->begin_forward();
  const int series = rec->tap_series(t, name, options);
  if (series < 0 || !t.requires_grad()) return;
  const std::int64_t step = rec->step();
  // A leaf (an input that requires grad) has no node of its own until its accumulator exists:
  // the step keeps that accumulator alive until it closes.
  NodeRef node = t.grad_fn();
  const std::size_t output = node ? t.output_nr() : 0;
  if (!node) node = rec->keep_for_step(torch::autograd::impl::grad_accumulator(t));
  node->add_pre_hook(std::make_unique<OutputGradHook>(state_, series, step, output));
}

void Monitor::step() {
  if (state_->forked_copy()) return;
  measure_sharpness_if_due(*state_);
  state_->recorder.lock()->end_step();
}

void Monitor::begin_optimizer_step() {
  if (!state_->forked_copy()) state_->recorder.lock()->begin_optimizer_step();
}

void Monitor::end_optimizer_step(std::optional<double> returned_loss) {
  if (state_->forked_copy()) return;
  measure_sharpness_if_due(*state_);
  state_->recorder.lock()->end_optimizer_step(returned_loss);
}

at::Tensor Monitor::optimizer_step(torch::optim::Optimizer& optimizer, const std::function<at::Tensor()>& closure) {
  if (const auto sgd = sgd_step_size(optimizer)) set_learning_rate(sgd->first, sgd->second);
  begin_optimizer_step();
  at::Tensor loss;
  try {
    loss = closure ? optimizer.step(closure) : optimizer.step();
  } catch (...) {
    end_optimizer_step(std::nullopt);
    throw;
  }
  std::optional<double> value;
  if (loss.defined() && loss.numel() == 1) value = loss.item<double>();
  end_optimizer_step(value);
  return loss;
}

void Monitor::set_loss_scale(double scale) { state_->recorder.lock()->set_loss_scale(scale); }

void Monitor::set_learning_rate(double lr, double momentum) {
  stability_bound(lr, momentum);  // throws for a step size no bound exists for
  state_->recorder.lock()->set_learning_rate(lr, momentum);
}

void Monitor::set_model_buffers(std::vector<at::Tensor> buffers) { state_->buffers = std::move(buffers); }

void Monitor::follow_data_parallel(int rank, int world_size) {
  if (state_->opts.data_parallel)
    throw UsageError("this Monitor already follows a gradflow DataParallel group: give it one engine, not two");
  if (rank < 0 || rank >= world_size)
    throw UsageError(fmt::format("rank {} is not in a group of {}: ranks go from 0 to world size - 1", rank, world_size));
  state_->recorder.lock()->follow_ranks(rank, world_size);
  state_->follow_rank = rank;
}

at::Tensor Monitor::figures_block(const at::Tensor& bucket) { return state_->recorder.lock()->figures_block(bucket); }

void Monitor::receive_figures_block(const at::Tensor& summed) { state_->recorder.lock()->receive_figures_block(summed); }

void Monitor::shard(Sharding sharding) {
  if (!sharding.local_part || !sharding.output_part || !sharding.gather_rows)
    throw UsageError("a Sharding needs local_part, output_part and gather_rows: how to read a part, and how to bring "
                     "every rank's row");
  auto rec = state_->recorder.lock();
  if (rec->attached) throw UsageError("shard() comes before attach(): the sharded parameters are hooked otherwise");
  rec->set_sharding(std::move(sharding));
}

void Monitor::sharded_gradient(const std::string& name) {
  if (state_->forked_copy()) return;
  auto rec = state_->recorder.lock();
  const int param = rec->sharded_param(name);
  if (param < 0) throw UsageError("'" + name + "' is not a sharded parameter of this Monitor");
  rec->on_param_grad(param, detail::AccumulatedAt::after_accumulator);
}

void Monitor::expect_optimizer_steps() { state_->recorder.lock()->expects_optimizer_steps = true; }

void Monitor::flush() {
  if (!state_->forked_copy()) state_->recorder.lock()->close_whole_step();
}

bool Monitor::forked_copy() const { return state_->forked_copy(); }

std::int64_t Monitor::creation_index() const { return state_->creation_index; }

int Monitor::rank() const { return state_->rank(); }
const ModelTraits& Monitor::model_traits() const { return state_->shown; }

std::string Monitor::stream_dir() const {
  auto rec = state_->recorder.lock();
  return rec->stream() ? rec->stream()->dir() : std::string();
}

void Monitor::finish_stream() {
  if (state_->forked_copy()) return;
  auto rec = state_->recorder.lock();
  if (rec->stream()) rec->stream()->finish(rec->completed_steps());
}

bool Monitor::recording() const {
  if (state_->forked_copy()) return false;
  auto rec = state_->recorder.lock();
  // A forward inside a backward recomputes the step that backward belongs to.
  return detail::current_backward() ? rec->recording_now() : rec->next_forward_recorded();
}
bool Monitor::forward_closes_step() const { return state_->recorder.lock()->forward_closes_step(); }
std::int64_t Monitor::step_index() const { return state_->recorder.lock()->step(); }
std::int64_t Monitor::completed_steps() const { return state_->recorder.lock()->completed_steps(); }
const MonitorOptions& Monitor::options() const { return state_->opts; }

const Trace& Monitor::trace() { return state_->recorder.lock()->snapshot(); }

void Monitor::mark_interrupted() { state_->recorder.lock()->mark_interrupted(); }

void Monitor::abandon_step() { state_->recorder.lock()->abandon_step(); }

}  // namespace gradflow
