#include "gradflow/monitor.h"

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <typeindex>
#include <unordered_map>
#include <unordered_set>

#include <torch/csrc/autograd/engine.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/functions/accumulate_grad.h>
#include <torch/torch.h>

#include "gradflow/error.h"
#include "tensor_stats_torch.h"

namespace gradflow {

namespace {

using torch::autograd::Node;

// Which slot of the current step a pending device result fills.
enum class Field { grad, weight, forward, loss };
struct PendingSlot {
  int record;  // index into the step's records; -1 for the loss
  Field field;
  std::int64_t numel;
};

std::string module_of(const std::string& param_name) {
  const auto dot = param_name.rfind('.');
  return dot == std::string::npos ? std::string("(root)") : param_name.substr(0, dot);
}

// Nodes that only reshape, transpose or convert a parameter on its way to the op that uses it
// (TBackward0 in front of AddmmBackward0 for nn::Linear, say): they are not a layer's output.
bool is_view_like(const Node& node) {
  static std::mutex mu;
  static std::unordered_map<std::type_index, bool> cache;
  const std::type_index key(typeid(node));
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  static const char* const kViews[] = {
      "TBackward0",         "ViewBackward0",       "ReshapeAliasBackward0", "UnsafeViewBackward0",
      "TransposeBackward0", "PermuteBackward0",    "ExpandBackward0",       "SqueezeBackward0",
      "SqueezeBackward1",   "UnsqueezeBackward0",  "ToCopyBackward0",       "CloneBackward0",
      "SliceBackward0",     "SelectBackward0",     "AliasBackward0",        "ContiguousBackward0",
      "NarrowBackward0",    "SplitBackward0",      "UnbindBackward0",       "ChunkBackward0"};
  const std::string name = node.name();
  bool view = false;
  for (const char* v : kViews)
    if (name == v) view = true;
  cache.emplace(key, view);
  return view;
}

}  // namespace

struct Monitor::State : std::enable_shared_from_this<Monitor::State> {
  struct Param {
    at::Tensor tensor;
    std::string name;
    int module = 0;     // index into modules
    int series = -1;
    unsigned hook = 0;
    int seen = 0;       // hook firings in the current step
  };

  MonitorOptions opts;
  std::mutex mu;
  bool attached = false;
  Trace trace;
  std::int64_t step = 0;
  bool recording = true;
  std::vector<Param> params;
  std::vector<std::string> modules;
  std::unordered_map<const c10::TensorImpl*, int> param_index;

  // The step in progress.
  StepRecord cur;
  bool cur_active = false;     // anything happened in this step
  bool backward_seen = false;  // a gradient arrived in this step
  std::unordered_map<int, int> record_of;  // series -> index in cur.records
  std::vector<PendingSlot> slots;
  std::vector<at::Tensor> pending;

  // The statistics worker: jobs are queued by hooks during backward and drained by a callback
  // the engine runs when that backward ends.
  struct Job {
    int record;
    at::Tensor grad, weight;  // weight undefined: gradient only
    TensorStats stats;
    double weight_sq = 0;
  };
  std::mutex wmu;
  std::condition_variable wcv, wdone;
  std::deque<Job*> queue;
  std::vector<std::unique_ptr<Job>> jobs;  // this backward's jobs, owned here until drained
  std::size_t finished = 0;
  bool stop = false;
  bool drain_queued = false;
  std::thread worker;

  void worker_loop() {
    std::unique_lock<std::mutex> lock(wmu);
    while (true) {
      wcv.wait(lock, [&] { return stop || !queue.empty(); });
      if (queue.empty() && stop) return;
      Job* j = queue.front();
      queue.pop_front();
      lock.unlock();
      if (!j->weight.defined() || !detail::fused_stats_with_weight(j->grad, j->weight, j->stats, j->weight_sq))
        j->stats = detail::fused_stats(j->grad);
      lock.lock();
      ++finished;
      wdone.notify_all();
    }
  }

  // Called with `mu` held, from a hook.
  void enqueue(int record, const at::Tensor& grad, const at::Tensor& weight) {
    if (!worker.joinable()) worker = std::thread([this] { worker_loop(); });
    auto job = std::make_unique<Job>();
    job->record = record;
    job->grad = grad;
    job->weight = weight;
    {
      std::lock_guard<std::mutex> wl(wmu);
      queue.push_back(job.get());
      jobs.push_back(std::move(job));
    }
    wcv.notify_one();
    if (!drain_queued) {
      drain_queued = true;
      // Runs at the end of this backward, before backward() returns to the caller.
      std::weak_ptr<State> weak = weak_from_this();
      torch::autograd::Engine::get_default_engine().queue_callback([weak] {
        if (auto st = weak.lock()) {
          std::lock_guard<std::mutex> lock(st->mu);
          st->drain_locked();
        }
      });
    }
  }

  // Waits for the worker and moves its results into the step's records. `mu` held.
  void drain_locked() {
    drain_queued = false;
    if (jobs.empty()) return;
    {
      std::unique_lock<std::mutex> wl(wmu);
      wdone.wait(wl, [&] { return finished == jobs.size(); });
    }
    for (auto& j : jobs) {
      Record& r = cur.records.at(j->record);
      r.grad = j->stats;
      if (j->weight.defined()) r.weight_norm = std::sqrt(j->weight_sq);
    }
    std::lock_guard<std::mutex> wl(wmu);
    jobs.clear();
    finished = 0;
  }

  ~State() {
    {
      std::lock_guard<std::mutex> wl(wmu);
      stop = true;
    }
    wcv.notify_all();
    if (worker.joinable()) worker.join();
  }

  bool use_worker(const at::Tensor& g) const {
    // hardware_concurrency() reads /sys on glibc: ask once, not in every hook.
    static const bool several_cores = std::thread::hardware_concurrency() > 1;
    return opts.async && several_cores && opts.backend == StatsBackend::automatic && detail::fused_applicable(g);
  }

  explicit State(MonitorOptions o) : opts(o) {
    if (opts.every < 1)
      throw UsageError("MonitorOptions::every must be at least 1 (got " + std::to_string(opts.every) +
                       "): record every k-th step with k >= 1");
    trace.every = opts.every;
    cur.step = 0;
  }

  Record& record_for(int series) {
    auto it = record_of.find(series);
    if (it != record_of.end()) return cur.records[it->second];
    record_of.emplace(series, static_cast<int>(cur.records.size()));
    cur.records.push_back(Record{});
    cur.records.back().series = series;
    return cur.records.back();
  }
  int record_index(int series) { return record_of.at(series); }

  // Computes the gradient's statistics into the record of `series` (replacing what was there).
  void record_grad(int series, const at::Tensor& g) {
    Record& r = record_for(series);
    const int idx = record_index(series);
    if (use_worker(g)) {
      r.grad.numel = g.numel();
      enqueue(idx, g, at::Tensor());
      return;
    }
    if (opts.backend == StatsBackend::automatic && detail::fused_applicable(g)) {
      r.grad = detail::fused_stats(g);
      return;
    }
    // Fill the record's count now; its sums arrive with the step's single transfer.
    r.grad = TensorStats{};
    r.grad.numel = g.numel();
    slots.push_back(PendingSlot{idx, Field::grad, g.numel()});
    pending.push_back(detail::aten_stats(g));
  }

  void record_weight(int series, const at::Tensor& w) {
    Record& r = record_for(series);
    if (opts.backend == StatsBackend::automatic && detail::fused_applicable(w)) {
      r.weight_norm = std::sqrt(detail::fused_sum_of_squares(w.detach()));
      return;
    }
    slots.push_back(PendingSlot{record_index(series), Field::weight, w.numel()});
    pending.push_back(detail::aten_sum_of_squares(w));
  }

  void on_param_grad(int idx, const at::Tensor& grad) {
    std::lock_guard<std::mutex> lock(mu);
    if (!attached) return;
    Param& p = params[idx];
    if (opts.auto_step && p.seen > 0) end_step_locked();
    ++p.seen;
    cur_active = true;
    backward_seen = true;
    cur.backwards = std::max(cur.backwards, p.seen);
    if (!recording || !grad.defined()) return;
    if (p.seen == 1 && opts.weight_norms && use_worker(grad) && detail::fused_applicable(p.tensor) &&
        p.tensor.scalar_type() == grad.scalar_type() && p.tensor.numel() == grad.numel()) {
      Record& r = record_for(p.series);
      r.grad.numel = grad.numel();
      enqueue(record_index(p.series), grad, p.tensor.detach());
      return;
    }
    if (p.seen == 1 && opts.weight_norms && opts.backend == StatsBackend::automatic) {
      TensorStats st;
      double wsq = 0;
      if (detail::fused_stats_with_weight(grad, p.tensor, st, wsq)) {
        Record& r = record_for(p.series);
        r.grad = st;
        r.weight_norm = std::sqrt(wsq);
        return;
      }
    }
    if (p.seen > 1 && p.tensor.grad().defined()) {
      drain_locked();
      // Gradient accumulation: this backward adds to what .grad() holds; record the sum the
      // optimizer will see. The hook runs before AccumulateGrad adds it.
      torch::NoGradGuard no_grad;
      record_grad(p.series, p.tensor.grad() + grad);
    } else {
      record_grad(p.series, grad);
    }
    if (opts.weight_norms && p.seen == 1) record_weight(p.series, p.tensor);
  }

  void on_tensor_grad(int series, std::int64_t step_at_hook, const at::Tensor& grad) {
    std::lock_guard<std::mutex> lock(mu);
    if (!attached || step_at_hook != step || !recording || !grad.defined()) return;
    cur_active = true;
    backward_seen = true;
    // With several backwards in one step, a tensor's first gradient is the one recorded.
    auto it = record_of.find(series);
    if (it != record_of.end() && cur.records[it->second].grad.numel > 0) return;
    record_grad(series, grad);
  }

  void end_step_locked() {
    flush_locked();
    ++step;
    recording = (step % opts.every) == 0;
    cur = StepRecord{};
    cur.step = step;
    cur_active = false;
    backward_seen = false;
    record_of.clear();
    for (auto& p : params) p.seen = 0;
  }

  // Moves the step in progress into the trace: one device-to-host transfer per device used.
  void flush_locked() {
    drain_locked();
    if (!pending.empty()) {
      std::unordered_map<std::string, std::vector<std::size_t>> by_device;
      for (std::size_t i = 0; i < pending.size(); ++i) by_device[pending[i].device().str()].push_back(i);
      std::vector<double> host_offsets(pending.size());
      std::vector<at::Tensor> host_parts;
      std::vector<std::pair<std::size_t, std::size_t>> where(pending.size());  // part, offset
      for (auto& [dev, idxs] : by_device) {
        std::vector<at::Tensor> parts;
        std::size_t off = 0;
        for (auto i : idxs) {
          where[i] = {host_parts.size(), off};
          off += static_cast<std::size_t>(pending[i].numel());
          parts.push_back(pending[i].reshape({-1}).to(torch::kDouble));
        }
        host_parts.push_back(torch::cat(parts).to(torch::kCPU).contiguous());
      }
      for (std::size_t i = 0; i < pending.size(); ++i) {
        const double* v = host_parts[where[i].first].data_ptr<double>() + where[i].second;
        const PendingSlot& s = slots[i];
        if (s.field == Field::loss) {
          cur.loss = v[0];
          continue;
        }
        Record& r = cur.records.at(s.record);
        switch (s.field) {
          case Field::grad: r.grad = detail::stats_from_aten(v, s.numel); break;
          case Field::weight: r.weight_norm = std::sqrt(v[0]); break;
          case Field::forward:
            r.forward = ActivationStats{v[0], v[1], v[2], v[3], v[4]};
            break;
          case Field::loss: break;
        }
      }
      pending.clear();
      slots.clear();
    }
    if (cur_active && recording && (!cur.records.empty() || cur.loss)) trace.add_step(cur);
    // What was flushed must not be added twice if the step goes on after a trace() call.
    cur.records.clear();
    cur.loss.reset();
    record_of.clear();
  }

  void watch(const at::Tensor& loss);
  void walk_graph(const at::Tensor& loss);
};

namespace {

struct ActivationHook : torch::autograd::FunctionPreHook {
  ActivationHook(std::shared_ptr<Monitor::State> s, int series, std::int64_t step)
      : state(std::move(s)), series(series), step(step) {}
  torch::autograd::variable_list operator()(const torch::autograd::variable_list& grads) override {
    if (!grads.empty() && grads[0].defined()) state->on_tensor_grad(series, step, grads[0]);
    return grads;
  }
  std::shared_ptr<Monitor::State> state;
  int series;
  std::int64_t step;
};

}  // namespace

void Monitor::State::watch(const at::Tensor& loss) {
  {
    std::lock_guard<std::mutex> lock(mu);
    if (opts.auto_step && backward_seen) end_step_locked();
    cur_active = true;
    if (!recording) return;
    if (loss.defined() && loss.numel() == 1) {
      if (loss.device().is_cpu()) {
        cur.loss = loss.detach().to(torch::kDouble).item<double>();
      } else {
        slots.push_back(PendingSlot{-1, Field::loss, 1});
        pending.push_back(loss.detach().reshape({1}));
      }
    }
  }
  if (opts.activations && attached && loss.defined() && loss.requires_grad() && loss.grad_fn())
    walk_graph(loss);
}

// Finds, for every parameterised module, the autograd node that produced its output, and hooks
// it so that dL/d(output) is recorded under the module's name. Runs on the user's thread before
// backward: no hook can fire meanwhile.
void Monitor::State::walk_graph(const at::Tensor& loss) {
  struct WNode {
    Node* node = nullptr;
    std::uint64_t seq = 0;
    std::vector<int> children;
    std::vector<int> direct_params;
    int nonnull_edges = 0;
    int pure_param = -1;  // for a view-like node over exactly one parameter
    std::vector<int> consumed;  // parameters this node uses (directly or through views)
    std::vector<int> above;     // parameters used by the nearest consumers above it
  };
  std::vector<WNode> nodes;
  std::unordered_map<Node*, int> index;
  std::vector<int> stack;
  auto visit = [&](Node* n) {
    auto [it, fresh] = index.emplace(n, static_cast<int>(nodes.size()));
    if (fresh) {
      WNode w;
      w.node = n;
      w.seq = n->sequence_nr();
      nodes.push_back(std::move(w));
      stack.push_back(it->second);
    }
    return it->second;
  };
  visit(loss.grad_fn().get());
  while (!stack.empty()) {
    const int i = stack.back();
    stack.pop_back();
    for (const auto& edge : nodes[i].node->next_edges()) {
      Node* f = edge.function.get();
      if (f == nullptr) continue;
      ++nodes[i].nonnull_edges;
      if (auto* acc = dynamic_cast<torch::autograd::AccumulateGrad*>(f)) {
        auto it = param_index.find(acc->variable.unsafeGetTensorImpl());
        if (it != param_index.end()) nodes[i].direct_params.push_back(it->second);
        continue;
      }
      const int c = visit(f);
      nodes[i].children.push_back(c);
    }
  }
  // Inputs of a node were created before it, so ascending sequence numbers visit children first.
  std::vector<int> order(nodes.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int>(i);
  std::sort(order.begin(), order.end(), [&](int a, int b) { return nodes[a].seq < nodes[b].seq; });
  for (int i : order) {
    WNode& w = nodes[i];
    if (w.nonnull_edges == 1 && is_view_like(*w.node)) {
      if (w.direct_params.size() == 1) w.pure_param = w.direct_params[0];
      else if (w.children.size() == 1) w.pure_param = nodes[w.children[0]].pure_param;
    }
    if (w.pure_param >= 0) continue;
    w.consumed = w.direct_params;
    for (int c : w.children)
      if (nodes[c].pure_param >= 0) w.consumed.push_back(nodes[c].pure_param);
  }
  auto add_unique = [](std::vector<int>& v, int x) {
    if (std::find(v.begin(), v.end(), x) == v.end()) v.push_back(x);
  };
  // Propagate "parameters used by the nearest consumers above" from the loss downwards.
  struct Out {
    std::uint64_t seq;
    int module;
    Node* node;
  };
  std::vector<Out> outputs;
  for (auto it = order.rbegin(); it != order.rend(); ++it) {
    WNode& w = nodes[*it];
    if (w.pure_param >= 0) continue;
    if (!w.consumed.empty()) {
      // One call of a module can show as several nodes (x.matmul(W) + b): a node is that call's
      // output unless a consumer right above it uses a *different* parameter of the same module.
      std::vector<int> mods;
      for (int p : w.consumed) add_unique(mods, params[p].module);
      // A node fed by several modules' parameters (a fused DifferentiableGraphBackward, say) is
      // no single layer's output: naming it after one of them would record a wrong number.
      if (mods.size() > 1) mods.clear();
      for (int m : mods) {
        bool inner = false;
        for (int p : w.above)
          if (params[p].module == m &&
              std::find(w.consumed.begin(), w.consumed.end(), p) == w.consumed.end())
            inner = true;
        if (!inner) outputs.push_back(Out{w.seq, m, w.node});
      }
    }
    const std::vector<int>& pass = w.consumed.empty() ? w.above : w.consumed;
    for (int c : w.children)
      for (int p : pass) add_unique(nodes[c].above, p);
  }
  std::sort(outputs.begin(), outputs.end(), [](const Out& a, const Out& b) { return a.seq < b.seq; });

  std::unordered_map<int, int> calls;
  for (const auto& o : outputs) ++calls[o.module];
  std::unordered_map<int, int> nth;
  std::lock_guard<std::mutex> lock(mu);
  auto self = shared_from_this();
  for (const auto& o : outputs) {
    std::string name = modules[o.module];
    if (calls[o.module] > 1) name += "#" + std::to_string(++nth[o.module]);
    const int series = trace.intern(name, SeriesKind::activation, modules[o.module]);
    o.node->add_pre_hook(std::make_unique<ActivationHook>(self, series, step));
  }
}

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
  auto& s = *state_;
  std::lock_guard<std::mutex> lock(s.mu);
  if (s.attached) throw Error("Monitor is already attached: detach() it first or use a second Monitor");
  s.params.clear();
  s.param_index.clear();
  s.modules.clear();
  std::unordered_map<std::string, int> module_ids;
  for (const auto& [name, t] : named) {
    if (!t.defined() || !t.requires_grad()) continue;
    // A module registered twice lists its parameters twice: hook each tensor once.
    if (s.param_index.count(t.unsafeGetTensorImpl())) continue;
    State::Param p;
    p.tensor = t;
    p.name = name;
    const std::string mod = module_of(p.name);
    auto [mit, fresh] = module_ids.emplace(mod, static_cast<int>(s.modules.size()));
    if (fresh) s.modules.push_back(mod);
    p.module = mit->second;
    std::vector<std::int64_t> shape(t.sizes().begin(), t.sizes().end());
    p.series = s.trace.intern(p.name, SeriesKind::parameter, mod, shape);
    s.param_index.emplace(t.unsafeGetTensorImpl(), static_cast<int>(s.params.size()));
    s.params.push_back(std::move(p));
  }
  if (s.opts.parameters) {
    std::weak_ptr<State> weak = state_;
    for (int i = 0; i < static_cast<int>(s.params.size()); ++i) {
      // Hooks hold the state weakly: a parameter that outlives its Monitor keeps nothing alive.
      s.params[i].hook = s.params[i].tensor.register_hook([weak, i](const at::Tensor& g) {
        if (auto st = weak.lock()) st->on_param_grad(i, g);
      });
    }
  }
  s.attached = true;
}

void Monitor::detach() {
  auto& s = *state_;
  std::lock_guard<std::mutex> lock(s.mu);
  if (!s.attached) return;
  s.drain_locked();
  if (s.opts.parameters)
    for (auto& p : s.params) p.tensor.remove_hook(p.hook);
  s.attached = false;
}

bool Monitor::attached() const { return state_->attached; }

void Monitor::watch(const at::Tensor& loss) { state_->watch(loss); }

void Monitor::tap(const at::Tensor& t, const std::string& name, const TapOptions& options) {
  auto& s = *state_;
  std::unique_lock<std::mutex> lock(s.mu);
  // A tap in the forward after the previous backward belongs to the next step.
  if (s.opts.auto_step && s.backward_seen) s.end_step_locked();
  if (!s.recording || !t.defined()) return;
  const std::string group = options.group.empty() ? name.substr(0, name.find('.')) : options.group;
  std::vector<std::int64_t> shape(t.sizes().begin(), t.sizes().end());
  const int series = s.trace.intern(name, SeriesKind::tap, group, shape);
  if (options.activation != Activation::none) {
    s.record_for(series);
    s.slots.push_back(PendingSlot{s.record_index(series), Field::forward, 0});
    const at::Tensor& a = options.activation_output.defined() ? options.activation_output : t;
    s.pending.push_back(detail::aten_activation_stats(a, options.activation, options.preactivation,
                                                      s.opts.saturation_threshold));
  }
  if (!t.requires_grad()) return;
  std::weak_ptr<State> weak = state_;
  const std::int64_t step = s.step;
  lock.unlock();
  t.register_hook([weak, series, step](const at::Tensor& g) {
    if (auto st = weak.lock()) st->on_tensor_grad(series, step, g);
  });
}

void Monitor::step() {
  std::lock_guard<std::mutex> lock(state_->mu);
  state_->end_step_locked();
}

bool Monitor::recording() const {
  auto& s = *state_;
  std::lock_guard<std::mutex> lock(s.mu);
  // In auto-step mode, once the step's backward has run the next forward belongs to the next
  // step: answer for that one, so that models can skip their taps cheaply and correctly.
  if (s.opts.auto_step && s.backward_seen) return ((s.step + 1) % s.opts.every) == 0;
  return s.recording;
}
std::int64_t Monitor::step_index() const { return state_->step; }
const MonitorOptions& Monitor::options() const { return state_->opts; }

const Trace& Monitor::trace() {
  std::lock_guard<std::mutex> lock(state_->mu);
  state_->flush_locked();
  return state_->trace;
}

void Monitor::mark_interrupted() {
  std::lock_guard<std::mutex> lock(state_->mu);
  state_->trace.interrupted = true;
}

}  // namespace gradflow
