#include "gradflow/monitor.h"

#include <torch/csrc/autograd/engine.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/torch.h>

#include "gradflow/data_parallel.h"
#include "gradflow/error.h"
#include "guarded.h"
#include "step_recorder.h"

namespace gradflow {

// What the Monitor shares with the hooks it installs. Hooks hold it weakly (parameters) or
// for the life of one graph (layer outputs); everything mutable sits behind one lock.
struct Monitor::State : std::enable_shared_from_this<Monitor::State> {
  explicit State(MonitorOptions options)
      : opts(options), recorder(options, [this] { schedule_collect(); }) {}

  // Runs at the end of the current backward, before backward() returns to the caller.
  void schedule_collect() {
    std::weak_ptr<State> weak = weak_from_this();
    torch::autograd::Engine::get_default_engine().queue_callback([weak] {
      if (auto st = weak.lock()) st->recorder.lock()->collect_worker();
    });
  }

  const MonitorOptions opts;
  detail::Guarded<detail::StepRecorder> recorder;
  int listener = -1;  // on opts.data_parallel
};

namespace {

struct ActivationHook : torch::autograd::FunctionPreHook {
  ActivationHook(std::shared_ptr<Monitor::State> s, int series, std::int64_t step)
      : state(std::move(s)), series(series), step(step) {}
  torch::autograd::variable_list operator()(const torch::autograd::variable_list& grads) override {
    if (!grads.empty() && grads[0].defined()) state->recorder.lock()->on_tensor_grad(series, step, grads[0]);
    return grads;
  }
  std::shared_ptr<Monitor::State> state;
  int series;
  std::int64_t step;
};

}  // namespace

Monitor::Monitor(MonitorOptions options) : state_(std::make_shared<State>(options)) {}

Monitor::Monitor(torch::nn::Module& module, MonitorOptions options) : Monitor(options) {
  attach(module);
}

Monitor::~Monitor() { detach(); }

void Monitor::attach(torch::nn::Module& module) {
  std::vector<std::pair<std::string, at::Tensor>> named;
  for (const auto& item : module.named_parameters(/*recurse=*/true)) named.emplace_back(item.key(), item.value());
  attach(named);
}

void Monitor::attach(const std::vector<std::pair<std::string, at::Tensor>>& named) {
  auto rec = state_->recorder.lock();
  if (rec->attached) throw Error("Monitor is already attached: detach() it first or use a second Monitor");
  rec->set_params(named);
  if (state_->opts.parameters) {
    std::weak_ptr<State> weak = state_;
    auto& params = rec->params();
    for (int i = 0; i < static_cast<int>(params.size()); ++i) {
      // Hooks hold the state weakly: a parameter that outlives its Monitor keeps nothing alive.
      params[i].hook = params[i].tensor.register_hook([weak, i](const at::Tensor& g) {
        if (auto st = weak.lock()) st->recorder.lock()->on_param_grad(i, g);
      });
    }
  }
  if (auto* dp = state_->opts.data_parallel) {
    std::weak_ptr<State> weak = state_;
    state_->listener = dp->add_listener([weak] {
      if (auto st = weak.lock()) st->recorder.lock()->on_gradients_averaged();
    });
  }
  rec->attached = true;
}

void Monitor::detach() {
  auto rec = state_->recorder.lock();
  if (!rec->attached) return;
  rec->collect_worker();
  if (state_->opts.parameters)
    for (auto& p : rec->params()) p.tensor.remove_hook(p.hook);
  if (state_->listener >= 0) state_->opts.data_parallel->remove_listener(state_->listener);
  state_->listener = -1;
  rec->attached = false;
}

bool Monitor::attached() const { return state_->recorder.lock()->attached; }

void Monitor::watch(const at::Tensor& loss) {
  auto rec = state_->recorder.lock();
  rec->begin_forward();
  if (!rec->record_loss(loss)) return;
  if (!state_->opts.activations || !rec->attached || !loss.defined() || !loss.requires_grad() || !loss.grad_fn())
    return;
  // Runs on the user's thread before backward: no hook of this graph can fire meanwhile.
  const std::int64_t step = rec->step();
  for (const auto& [node, series] : rec->layer_output_series(loss.grad_fn().get()))
    node->add_pre_hook(std::make_unique<ActivationHook>(state_, series, step));
}

void Monitor::tap(const at::Tensor& t, const std::string& name, const TapOptions& options) {
  auto rec = state_->recorder.lock();
  // A tap in the forward after the previous backward belongs to the next step.
  rec->begin_forward();
  const int series = rec->tap_series(t, name, options);
  if (series < 0 || !t.requires_grad()) return;
  std::weak_ptr<State> weak = state_;
  const std::int64_t step = rec->step();
  rec.unlock();
  t.register_hook([weak, series, step](const at::Tensor& g) {
    if (auto st = weak.lock()) st->recorder.lock()->on_tensor_grad(series, step, g);
  });
}

void Monitor::step() { state_->recorder.lock()->end_step(); }

bool Monitor::recording() const { return state_->recorder.lock()->next_forward_recorded(); }
std::int64_t Monitor::step_index() const { return state_->recorder.lock()->step(); }
std::int64_t Monitor::completed_steps() const { return state_->recorder.lock()->completed_steps(); }
const MonitorOptions& Monitor::options() const { return state_->opts; }

const Trace& Monitor::trace() { return state_->recorder.lock()->snapshot(); }

void Monitor::mark_interrupted() { state_->recorder.lock()->mark_interrupted(); }

void Monitor::abandon_step() { state_->recorder.lock()->abandon_step(); }

}  // namespace gradflow
