// The `gradflow` Python module: the C++ Monitor on a live torch.nn.Module. Tensors cross as the
// same at::Tensor (torch's own pybind11 caster); hooks, statistics and the trace stay in C++.
#include <chrono>
#include <filesystem>
#include <cstring>
#include <optional>
#include <set>
#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <torch/csrc/autograd/python_cpp_function.h>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>
#include <torch/csrc/jit/python/module_python.h>
#include <torch/extension.h>

#include "gradflow/coord_check.h"
#include "gradflow/coord_figures.h"
#include "gradflow/data_parallel.h"
#include "gradflow/diagnosis.h"
#include "gradflow/error.h"
#include "gradflow/monitor.h"
#include "gradflow/option.h"
#include "gradflow/save_report.h"
#include "gradflow/trace_io.h"

namespace py = pybind11;

namespace gradflow::python {

namespace {

// torch.distributed, when the program initialised it: this process's rank and the store its
// ranks rendezvoused through.
struct Distributed {
  int rank = 0;
  c10::intrusive_ptr<c10d::Store> store;
};

std::optional<Distributed> torch_distributed() {
  py::module_ dist = py::module_::import("torch.distributed");
  if (!dist.attr("is_available")().cast<bool>() || !dist.attr("is_initialized")().cast<bool>()) return std::nullopt;
  Distributed d;
  d.rank = dist.attr("get_rank")().cast<int>();
  d.store = dist.attr("distributed_c10d").attr("_get_default_store")().cast<c10::intrusive_ptr<c10d::Store>>();
  return d;
}

// How long the other ranks wait in save_report for rank 0's findings.
constexpr std::chrono::seconds kFindingsWait{300};

// `model` when it is a torch.nn.parallel.DistributedDataParallel, None otherwise.
py::object ddp_of(const py::object& model) {
  const py::object ddp_type = py::module_::import("torch.nn.parallel").attr("DistributedDataParallel");
  return py::isinstance(model, ddp_type) ? model : py::object(py::none());
}

// traits= from Python: a dict with the names run.json's "traits" uses. An unknown key or value is
// a usage error naming the valid ones.
ModelTraits traits_from_dict(const py::dict& d) {
  ModelTraits t;
  for (const auto& [key, value] : d) {
    const std::string k = py::str(key).cast<std::string>();
    if (k == "activation") t.activation = activation_from_string(py::str(value).cast<std::string>());
    else if (k == "init") t.init = init_from_string(py::str(value).cast<std::string>());
    else if (k == "norm") t.norm = norm_from_string(py::str(value).cast<std::string>());
    else if (k == "cell") t.cell = cell_from_string(py::str(value).cast<std::string>());
    else if (k == "residual") t.residual = value.cast<bool>();
    else if (k == "recurrent") t.recurrent = value.cast<bool>();
    else if (k == "adversarial") t.adversarial = value.cast<bool>();
    else if (k == "clip_norm") t.clip_norm = value.cast<double>();
    else if (k == "clip_value") t.clip_value = value.cast<double>();
    else if (k == "forget_bias") t.forget_bias = value.cast<double>();
    else if (k == "norm_placement") t.norm_placement = norm_placement_from_string(py::str(value).cast<std::string>());
    else if (k == "warmup_steps") t.warmup_steps = value.cast<std::int64_t>();
    else
      throw UsageError("traits= has no '" + k + "': give some of activation, init, norm, cell, residual, recurrent, "
                       "adversarial, clip_norm, clip_value, forget_bias, norm_placement, warmup_steps");
  }
  return t;
}

// A Python function of one tensor, callable from any thread (the autograd engine's holds no GIL),
// and released under the GIL.
std::function<at::Tensor(const at::Tensor&)> tensor_function(const py::object& f) {
  std::shared_ptr<py::object> fn(new py::object(f), [](py::object* o) {
    py::gil_scoped_acquire gil;
    delete o;
  });
  return [fn](const at::Tensor& t) {
    py::gil_scoped_acquire gil;
    const py::object out = (*fn)(t);
    return out.is_none() ? at::Tensor() : out.cast<at::Tensor>();
  };
}

// gradflow._hooks.sharding()'s description of the model's sharded parameters.
Sharding sharding_from(const py::object& d) {
  Sharding s;
  s.rank = d["rank"].cast<int>();
  s.world_size = d["world_size"].cast<int>();
  s.counted = d["counted"].cast<std::unordered_map<std::string, std::vector<bool>>>();
  s.local_part = tensor_function(d["local_part"]);
  s.output_part = tensor_function(d["output_part"]);
  s.gather_rows = tensor_function(d["gather_rows"]);
  return s;
}

class PyMonitor;
// Live Monitors, so that the last whole step reaches their streams when the interpreter exits
// (also after an uncaught exception).
std::set<PyMonitor*>& live_monitors() {
  static std::set<PyMonitor*> monitors;
  return monitors;
}

// A Monitor on a Python module, with the data-parallel group it averages over (if any).
class PyMonitor {
 public:
  // `group`: None, or a torch.distributed process group (the same c10d object underneath).
  // `module`: the model inside its wrappers (DDP's, torch.compile's), whose names are recorded;
  // None: `given`, or a DistributedDataParallel's module.
  PyMonitor(const py::object& given, const py::object& module, const MonitorOptions& options, const py::object& group,
            std::int64_t batch_per_rank, const py::object& sharding) {
    MonitorOptions o = options;
    const auto dist = torch_distributed();
    const py::object ddp = ddp_of(given);
    // DistributedDataParallel: the model's own names (no `module.`), its engine followed.
    const py::object model = !module.is_none() ? module : ddp.is_none() ? given : py::object(ddp.attr("module"));
    if (!ddp.is_none() && !group.is_none())
      throw UsageError("gradflow.Monitor takes a DistributedDataParallel model or process_group=, not both: DDP "
                       "averages the gradients itself");
    if (!group.is_none()) {
      const auto pg = group.cast<c10::intrusive_ptr<c10d::ProcessGroup>>();
      dp_ = dist ? std::make_unique<DataParallel>(pg, dist->store) : std::make_unique<DataParallel>(pg);
      o.with_data_parallel(*dp_, batch_per_rank);
    } else if (dist) {
      o.rank = dist->rank;  // DistributedDataParallel, or the program's own averaging
    }
    if (!py::hasattr(model, "named_parameters"))
      throw UsageError("gradflow.Monitor needs a torch.nn.Module (an object with named_parameters()), got " +
                       py::str(py::type::of(model).attr("__name__")).cast<std::string>());
    for (const auto& item : model.attr("named_parameters")()) {
      auto pair = item.cast<py::tuple>();
      params_.emplace_back(pair[0].cast<std::string>(), pair[1].cast<at::Tensor>());
    }
    monitor_ = std::make_unique<Monitor>(o);
    if (!sharding.is_none()) monitor_->shard(sharding_from(sharding));
    if (py::hasattr(model, "buffers")) {
      std::vector<at::Tensor> buffers;
      for (const auto& b : model.attr("buffers")()) buffers.push_back(b.cast<at::Tensor>());
      monitor_->set_model_buffers(std::move(buffers));
    }
    // A TorchScript module has no forward hooks: the C++ Monitor names its submodules' outputs.
    if (auto script = torch::jit::as_module(model)) {
      monitor_->attach(*script);
    } else {
      monitor_->attach(params_);
    }
    live_monitors().insert(this);
    ddp_ = ddp;
  }
  // The DistributedDataParallel model given, or None.
  const py::object& ddp() const { return ddp_; }
  // What the program said of its model (traits=), for save_report.
  std::optional<ModelTraits> traits;
  // The program's loss scaler (grad_scaler=), or None: its scale is read before each backward and
  // whenever a step may close, so that a skipped step is known as such (also the last one).
  py::object scaler = py::none();
  void read_scale() {
    if (!scaler.is_none()) monitor_->set_loss_scale(scaler.attr("get_scale")().cast<double>());
  }
  ~PyMonitor() { live_monitors().erase(this); }
  PyMonitor(const PyMonitor&) = delete;
  PyMonitor& operator=(const PyMonitor&) = delete;

  Monitor& monitor() { return *monitor_; }
  DataParallel& group() {
    if (!dp_) throw UsageError("this Monitor has no process group: pass process_group= to gradflow.Monitor");
    return *dp_;
  }
  std::vector<at::Tensor> parameters() const {
    std::vector<at::Tensor> out;
    for (const auto& p : params_) out.push_back(p.second);
    return out;
  }

 private:
  std::unique_ptr<DataParallel> dp_;  // outlives the Monitor, which listens to it
  std::unique_ptr<Monitor> monitor_;
  std::vector<std::pair<std::string, at::Tensor>> params_;
  py::object ddp_ = py::none();
};

void flush_live_monitors() {
  for (PyMonitor* p : live_monitors()) {
    try {
      p->read_scale();
      p->monitor().flush();
    } catch (const std::exception&) {
    }
  }
}

// save_report's options from Python: under torch.distributed, rank 0 writes and every rank
// returns its findings through the ranks' store.
SaveOptions save_options(const std::string& label, bool force) {
  SaveOptions o;
  o.label = label;
  o.force = force;
  if (const auto dist = torch_distributed()) {
    o.rank = dist->rank;
    o.share_findings = [d = *dist](const std::string& key, const std::string& text) {
      py::gil_scoped_release release;  // the other ranks' waiting must not hold up Python threads
      return share_from_rank0(*d.store, d.rank, key, text, kFindingsWait);
    };
  }
  return o;
}

// A numpy array holding a copy of `values` (one memcpy, no Python object per element).
template <typename T>
py::array_t<T> column(const std::vector<T>& values) {
  return py::array_t<T>(static_cast<py::ssize_t>(values.size()), values.data());
}

// Fixed-width unicode column (numpy '<U'), filled in C++.
py::array text_column(const std::vector<std::string>& values) {
  std::size_t width = 1;
  bool ascii = true;
  for (const auto& v : values) {
    width = std::max(width, v.size());
    for (unsigned char c : v) ascii = ascii && c < 0x80;
  }
  // Module paths are ASCII in practice; other names take numpy's own UTF-8 decoding.
  if (!ascii) return py::module_::import("numpy").attr("array")(py::cast(values));
  std::u32string cells(values.size() * width, U'\0');
  for (std::size_t i = 0; i < values.size(); ++i)
    for (std::size_t j = 0; j < values[i].size(); ++j) cells[i * width + j] = static_cast<unsigned char>(values[i][j]);
  return py::array(py::dtype("<U" + std::to_string(width)), {static_cast<py::ssize_t>(values.size())}, cells.data());
}

// One row of trace_frame(): one gradient of one record of one step (the one backward produced,
// the one the optimizer applied, or one rank's local one).
struct FrameRow {
  const StepRecord* step;
  const Record* record;
  const TensorStats* stats;
  const char* gradient;
  std::int64_t rank;  // -1: not one rank's
  // A rank's figures beyond 64 ranks: norm, largest |g| and a non-finite flag only.
  bool compact() const { return rank >= 0 && record->ranks_compact; }
};

std::vector<FrameRow> frame_rows(const Trace& t) {
  std::vector<FrameRow> rows;
  for (const auto& st : t.steps())
    for (const auto& r : st.records) {
      rows.push_back({&st, &r, &r.grad, "produced", -1});
      if (r.applied) rows.push_back({&st, &r, &*r.applied, "applied", -1});
      for (std::size_t k = 0; k < r.ranks.size(); ++k)
        rows.push_back({&st, &r, &r.ranks[k], "local", static_cast<std::int64_t>(k)});
    }
  return rows;
}

// The columns of trace_frame(), each read off one row.
struct IntColumn {
  const char* name;
  std::int64_t (*value)(const FrameRow&);
};
struct RealColumn {
  const char* name;
  double (*value)(const FrameRow&);
};
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
const IntColumn kIntColumns[] = {
    {"step", [](const FrameRow& f) { return f.step->step; }},
    {"rank", [](const FrameRow& f) { return f.rank; }},
    {"optimizer_step", [](const FrameRow& f) { return f.step->optimizer_step; }},
    {"evaluation", [](const FrameRow& f) { return static_cast<std::int64_t>(f.step->evaluation); }},
    {"skipped", [](const FrameRow& f) { return static_cast<std::int64_t>(f.step->skipped); }},
    // 0: a trailing step no optimizer step closed yet (StepRecord::partial): incomplete, and
    // left out of findings, run.json and trace.csv's complete steps.
    {"closed", [](const FrameRow& f) { return static_cast<std::int64_t>(!f.step->partial); }},
    {"numel", [](const FrameRow& f) { return f.stats->numel; }},
    {"nonfinite", [](const FrameRow& f) { return f.stats->nonfinite; }},
};
const RealColumn kRealColumns[] = {
    {"grad_norm", [](const FrameRow& f) { return f.stats->norm(); }},
    {"grad_mean", [](const FrameRow& f) { return f.compact() ? kNaN : f.stats->mean(); }},
    {"grad_std", [](const FrameRow& f) { return f.compact() ? kNaN : f.stats->std(); }},
    {"grad_max_abs", [](const FrameRow& f) { return f.stats->max_abs; }},
    {"zero_fraction", [](const FrameRow& f) { return f.compact() ? kNaN : f.stats->zero_fraction(); }},
    {"weight_norm", [](const FrameRow& f) { return f.rank < 0 ? f.record->weight_norm : kNaN; }},
    {"update_norm", [](const FrameRow& f) { return f.rank < 0 ? f.record->update_norm : kNaN; }},
    {"loss", [](const FrameRow& f) {
       const auto& st = *f.step;
       if (f.rank >= 0) return f.rank < static_cast<std::int64_t>(st.rank_losses.size()) ? st.rank_losses[f.rank] : kNaN;
       return st.loss ? *st.loss : kNaN;
     }},
    {"loss_scale", [](const FrameRow& f) { return f.step->loss_scale.value_or(kNaN); }},
};

// One row per recorded gradient and step, labelled: the columns of a pandas DataFrame.
py::dict trace_frame(Monitor& m) {
  const Trace& t = m.trace();
  const std::vector<FrameRow> rows = frame_rows(t);
  std::vector<std::string> name, kind, gradient;
  for (const auto& f : rows) {
    name.push_back(t.series()[f.record->series].name);
    kind.push_back(to_string(t.series()[f.record->series].kind));
    gradient.push_back(f.gradient);
  }
  py::dict d;
  d["name"] = text_column(name);
  d["kind"] = text_column(kind);
  d["gradient"] = text_column(gradient);
  auto fill = [&](const auto& columns) {
    for (const auto& c : columns) {
      std::vector<decltype(c.value(rows.front()))> values;
      for (const auto& f : rows) values.push_back(c.value(f));
      d[c.name] = column(values);
    }
  };
  fill(kIntColumns);
  fill(kRealColumns);
  return d;
}

std::vector<FindingKind> kinds_of(const std::vector<std::string>& names) {
  std::vector<FindingKind> kinds;
  for (const auto& n : names) kinds.push_back(finding_kind_from_string(n));
  return kinds;
}

void bind_errors(py::module_& m) {
  static py::exception<Error> error(m, "GradflowError", PyExc_RuntimeError);
  static py::exception<UsageError> usage(m, "UsageError", error.ptr());
  static py::exception<GradientHealthError> health(m, "GradientHealthError", error.ptr());
  // The last translator registered is tried first: the most specific types go last.
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const GradientHealthError& e) {
      py::object exc = py::handle(health.ptr())(e.what());
      exc.attr("findings") = py::cast(e.findings());
      PyErr_SetObject(health.ptr(), exc.ptr());
    } catch (const OptionError& e) {
      PyErr_SetString(usage.ptr(), e.message(Language::python).c_str());
    } catch (const UsageError& e) {
      PyErr_SetString(usage.ptr(), e.what());
    } catch (const Error& e) {
      PyErr_SetString(error.ptr(), e.what());
    }
  });
}

void bind_finding(py::module_& m) {
  py::class_<Finding>(m, "Finding", "One diagnosis, with the numbers it rests on")
      .def_property_readonly("kind", [](const Finding& f) { return std::string(to_string(f.kind)); })
      .def_property_readonly("severity", [](const Finding& f) { return std::string(to_string(f.severity)); })
      .def_readonly("where", &Finding::where)
      .def_readonly("message", &Finding::message)
      .def_readonly("evidence", &Finding::evidence)
      .def_readonly("remedy", &Finding::remedy)
      .def("__repr__", [](const Finding& f) {
        return std::string("<gradflow.Finding ") + to_string(f.kind) + " (" + to_string(f.severity) + ") " + f.where + ": " +
               f.message + ">";
      });
}

void bind_monitor(py::module_& m) {
  // gradflow.Monitor (gradflow/__init__.py) derives from it and adds what Python must do itself:
  // the optimizer's step, the loss scaler, DistributedDataParallel's communication hook.
  py::class_<PyMonitor>(m, "_Monitor", "Records the gradient flow of a torch.nn.Module's training")
      .def(py::init([](const py::object& model, const py::object& module, std::int64_t every, bool parameters, bool activations, bool weight_norms,
                       bool update_norms, bool auto_step, double saturation_threshold,
                       const py::object& process_group, std::int64_t batch_per_rank, const std::optional<std::string>& out,
                       bool force, const std::optional<py::dict>& traits, const py::object& grad_scaler,
                       std::int64_t sharpness_every, const py::object& sharpness_loss, const py::object& sharding) {
             MonitorOptions o;
             o.sharpness_every = sharpness_every;
             if (!sharpness_loss.is_none()) {
               if (!PyCallable_Check(sharpness_loss.ptr()))
                 throw UsageError("sharpness_loss= takes a function that returns the loss on a fixed batch");
               // Called from a measurement, which runs without the GIL (autograd must not hold it).
               auto fn = std::make_shared<py::object>(sharpness_loss);
               o.sharpness_loss = [fn]() {
                 py::gil_scoped_acquire gil;
                 return (*fn)().cast<at::Tensor>();
               };
             }
             o.every = every;
             o.parameters = parameters;
             o.activations = activations;
             o.weight_norms = weight_norms;
             o.update_norms = update_norms;
             o.auto_step = auto_step;
             o.saturation_threshold = saturation_threshold;
             o.out = out.value_or("");
             o.force = force;
             auto m = std::make_unique<PyMonitor>(model, module, o, process_group, batch_per_rank, sharding);
             if (traits) m->traits = traits_from_dict(*traits);
             if (!grad_scaler.is_none() && !py::hasattr(grad_scaler, "get_scale"))
               throw UsageError("grad_scaler= takes a torch.cuda.amp.GradScaler (an object with get_scale()), got " +
                                py::str(py::type::of(grad_scaler).attr("__name__")).cast<std::string>());
             m->scaler = grad_scaler;
             return m;
           }),
           py::arg("model"), py::kw_only(), py::arg("module") = py::none(), py::arg("every") = 1,
           py::arg("parameters") = true, py::arg("activations") = true, py::arg("weight_norms") = true,
           py::arg("update_norms") = false,
           py::arg("auto_step") = true, py::arg("saturation_threshold") = 0.1,
           py::arg("process_group") = py::none(), py::arg("batch_per_rank") = 0, py::arg("out") = py::none(),
           py::arg("force") = false, py::arg("traits") = py::none(), py::arg("grad_scaler") = py::none(),
           py::arg("sharpness_every") = 0, py::arg("sharpness_loss") = py::none(), py::arg("sharding") = py::none())
      .def("set_learning_rate", [](PyMonitor& p, double lr, double momentum) { p.monitor().set_learning_rate(lr, momentum); },
           py::arg("lr"), py::arg("momentum") = 0.0,
           "The optimizer's step size and heavy-ball momentum (SGD) for the step in progress: the sharpness is drawn "
           "against (2 + 2 momentum)/lr (attach_optimizer tells it of a torch.optim.SGD by itself)")
      .def("watch",
           [](PyMonitor& p, const at::Tensor& loss) {
             p.read_scale();
             p.monitor().watch(loss);
           },
           py::arg("loss"), "Record the loss (before scaling) and hook the layer outputs below it; call before loss.backward()")
      .def(
          "tap",
          [](PyMonitor& p, const at::Tensor& t, const std::string& name, const std::string& group,
             const std::optional<std::string>& activation, const std::optional<at::Tensor>& preactivation,
             const std::optional<at::Tensor>& activation_output) {
            TapOptions o;
            o.group = group;
            if (activation) o.activation = activation_from_string(*activation);
            if (preactivation) o.preactivation = *preactivation;
            if (activation_output) o.activation_output = *activation_output;
            p.monitor().tap(t, name, o);
          },
          py::arg("tensor"), py::arg("name"), py::arg("group") = "", py::arg("activation") = py::none(),
          py::arg("preactivation") = py::none(), py::arg("activation_output") = py::none(),
          "Record the gradient that reaches this tensor; activation= (\"relu\", \"sigmoid\", \"tanh\", \"gelu\" ...) "
          "names the function that produced it, for dead and saturated units (preactivation=: GELU's input)")
      .def("_layer_output",
           [](PyMonitor& p, const at::Tensor& output, const std::string& module, int time_dim) {
             // The step this forward closes learns its scaler's verdict first (as watch() does).
             if (p.monitor().forward_closes_step()) p.read_scale();
             p.monitor().layer_output(output, module, time_dim);
           })
      .def("_segment_output", [](PyMonitor& p, const at::Tensor& output) { p.monitor().segment_output(output); })
      .def("_names_layer_outputs", [](PyMonitor& p) { p.monitor().names_layer_outputs(); })
      .def("_set_recomputation_listener",
           [](PyMonitor& p, const py::function& listener) {
             // Called from the autograd engine's thread, which does not hold the GIL; the function
             // is released under it too.
             std::shared_ptr<py::function> fn(new py::function(listener), [](py::function* f) {
               py::gil_scoped_acquire gil;
               delete f;
             });
             p.monitor().set_recomputation_listener([fn](bool on) {
               py::gil_scoped_acquire gil;
               (*fn)(on);
             });
           })
      .def("_layer_sequence",
           [](PyMonitor& p, const py::object& grad_fn, const std::string& name, const std::string& module) {
             // None: the layer's output was computed without autograd; its series takes its place in forward order.
             if (grad_fn.is_none()) return p.monitor().layer_output(nullptr, 0, name, module, 0);
             if (!torch::autograd::THPCppFunction_Check(grad_fn.ptr()))
               throw UsageError("_layer_sequence() takes an autograd node implemented in C++ (a grad_fn)");
             if (p.monitor().forward_closes_step()) p.read_scale();
             // The node's one output is the layer's sequence, stacked along dimension 0 (time).
             p.monitor().layer_output(reinterpret_cast<torch::autograd::THPCppFunction*>(grad_fn.ptr())->cdata, 0, name,
                                      module, 0);
           })
      .def("step",
           [](PyMonitor& p) {
             p.read_scale();
             // A sharpness measurement runs autograd, which must not hold the GIL.
             py::gil_scoped_release no_gil;
             p.monitor().step();
           },
           "Close the step (only with auto_step=False)")
      .def("begin_optimizer_step", [](PyMonitor& p) { p.monitor().begin_optimizer_step(); },
           "Call right before the optimizer reads the gradients (attach_optimizer does it): the gradient it finds is "
           "recorded as the applied one, and each backward until end_optimizer_step() is an evaluation of its closure")
      .def("end_optimizer_step",
           [](PyMonitor& p, std::optional<double> loss) {
             py::gil_scoped_release no_gil;  // a sharpness measurement runs autograd
             p.monitor().end_optimizer_step(loss);
           },
           py::arg("loss") = py::none(), "Call right after the optimizer step; loss: what step(closure) returned")
      .def("set_loss_scale", [](PyMonitor& p, double scale) { p.monitor().set_loss_scale(scale); }, py::arg("scale"),
           "The loss scale of the coming backward (grad_scaler= does it): recorded gradients are divided by it")
      .def_property_readonly("_ddp", [](PyMonitor& p) { return p.ddp(); })
      .def("_follow_data_parallel", [](PyMonitor& p, int rank, int world) { p.monitor().follow_data_parallel(rank, world); })
      .def("_figures_block", [](PyMonitor& p, const at::Tensor& bucket) -> py::object {
        at::Tensor block = p.monitor().figures_block(bucket);
        if (!block.defined()) return py::none();
        return py::cast(block);
      })
      .def("_receive_figures_block", [](PyMonitor& p, const at::Tensor& summed) { p.monitor().receive_figures_block(summed); })
      .def("_sharded_gradient", [](PyMonitor& p, const std::string& name) { p.monitor().sharded_gradient(name); })
      .def("_expect_optimizer_steps", [](PyMonitor& p) { p.monitor().expect_optimizer_steps(); })
      .def("average_gradients", [](PyMonitor& p) { p.group().average_gradients(p.parameters()); },
           "Average the parameters' gradients over the process group (one collective per bucket); "
           "the Monitor then records the averaged gradient")
      .def("broadcast_parameters", [](PyMonitor& p) { p.group().broadcast_parameters(p.parameters()); },
           "Copy rank 0's parameters to every rank of the process group")
      .def("detach", [](PyMonitor& p) { p.monitor().detach(); })
      .def("flush",
           [](PyMonitor& p) {
             p.read_scale();
             p.monitor().flush();
           },
           "Close the step in progress if its backward completed, so that it reaches the trace and out= now")
      .def_property_readonly("rank", [](PyMonitor& p) { return p.monitor().rank(); },
                             "This process's rank under torch.distributed (0 otherwise): only rank 0 writes")
      .def_property_readonly("recording", [](PyMonitor& p) { return p.monitor().recording(); })
      .def_property_readonly("steps", [](PyMonitor& p) { return p.monitor().completed_steps(); })
      .def("trace_frame", [](PyMonitor& p) { return trace_frame(p.monitor()); },
           "The trace as columns of numpy arrays, one row per recorded gradient and step (gradient: produced, applied "
           "or local, with its rank): pandas.DataFrame(...)")
      .def("save_csv", [](PyMonitor& p, const std::string& path) { write_trace_csv(p.monitor().trace(), path); },
           py::arg("path"))
      .def("save_json", [](PyMonitor& p, const std::string& path) { write_trace_json(p.monitor().trace(), path); },
           py::arg("path"));
}


// The coordinate check's pieces that Python's gradflow.coord_check() drives: the figures, the
// weight kinds, and the analysis and report of the table it fills.
py::dict analysis_dict(const CoordCheck& c, const WidthAnalysis& a) {
  py::list verdicts;
  for (const auto& v : a.verdicts) {
    py::dict d;
    d["layer"] = v.layer;
    d["kind"] = to_string(v.kind);
    d["measured"] = v.measured;
    d["stable"] = v.stable;
    if (!v.stable) {
      d["quantity"] = to_string(v.quantity);
      d["slope"] = v.slope;
      d["step"] = v.step;
      d["departs_at"] = v.departs_at;
      d["departs_quantity"] = to_string(v.departs_quantity);
    }
    verdicts.append(d);
  }
  py::dict slopes;
  for (int q = 0; q < kCoordQuantities; ++q)
    for (std::int64_t t = 0; t < c.steps; ++t)
      for (std::size_t l = 0; l < c.layers.size(); ++l) {
        const auto& s = a.slopes[static_cast<std::size_t>(q)][static_cast<std::size_t>(t)][l];
        slopes[py::make_tuple(c.layers[l].name, to_string(static_cast<CoordQuantity>(q)), t)] = s ? py::cast(*s) : py::none();
      }
  py::dict out;
  out["label"] = c.label;
  out["verdicts"] = verdicts;
  out["slopes"] = slopes;
  out["findings"] = a.findings;
  return out;
}

void bind_width(py::module_& m) {
  m.def("_coordinate_sizes", &coordinate_sizes, py::arg("tensors"),
        "mean |x| of each tensor in double, computed on its device and fetched once (NaN for None)");
  m.def(
      "_weight_kinds",
      [](const std::vector<std::pair<std::vector<std::int64_t>, bool>>& a, const std::vector<std::pair<std::vector<std::int64_t>, bool>>& b) {
        auto shapes = [](const auto& v) {
          std::vector<ParameterShape> out;
          for (const auto& [sizes, embedding] : v) out.push_back({sizes, embedding});
          return out;
        };
        std::vector<std::string> names;
        for (auto k : weight_kinds(shapes(a), shapes(b))) names.emplace_back(to_string(k));
        return names;
      },
      py::arg("at_a"), py::arg("at_b"), "Each parameter's kind from its (sizes, is_embedding) at two widths");
  m.def("_optimizer_text", &optimizer_text, py::arg("name"), py::arg("first_rates"), py::arg("first_width"), py::arg("last_rates"),
        py::arg("last_width"), "How a coordinate check names its optimizer, with the rates at both ends where they differ");
  m.def(
      "_analyse_coord_checks",
      [](const std::string& json, double tolerance) {
        py::list out;
        for (const auto& c : coord_checks_from_json(json, "coord_check")) out.append(analysis_dict(c, analyse_widths(c, {tolerance})));
        return out;
      },
      py::arg("json"), py::arg("tolerance"));
  m.def(
      "_write_coord_report",
      [](const std::string& json, const std::string& dir, double tolerance, bool force) {
        const auto checks = coord_checks_from_json(json, "coord_check");
        if (!force && std::filesystem::exists(dir + "/coord_check.json"))
          throw UsageError("'" + dir + "' already holds coord_check.json: choose another out= or pass force=True to replace it");
        std::filesystem::create_directories(dir);
        write_coord_report(checks, dir, {tolerance});
      },
      py::arg("json"), py::arg("dir"), py::arg("tolerance"), py::arg("force"));
}

}  // namespace

}  // namespace gradflow::python

PYBIND11_MODULE(_gradflow, m) {
  using namespace gradflow;
  using namespace gradflow::python;
  m.doc() = "gradflow: how gradients flow backward through a torch.nn.Module, recorded in C++";
  bind_errors(m);
  bind_finding(m);
  bind_monitor(m);
  bind_width(m);
  m.def(
      "save_report",
      [](PyMonitor& p, const std::string& dir, const std::string& label, bool force, const std::optional<py::dict>& traits) {
        SaveOptions o = save_options(label, force);
        if (traits) o.traits = traits_from_dict(*traits);
        else if (p.traits) o.traits = *p.traits;
        p.read_scale();
        return save_report(p.monitor(), dir, o);
      },
      py::arg("monitor"), py::arg("dir"), py::kw_only(), py::arg("label") = "model", py::arg("force") = false,
      py::arg("traits") = py::none(),
      "Diagnose the trace, write run.json, trace.csv, report.html, report.md and summary.json, return the findings "
      "(traits=: what the model is, e.g. {\"activation\": \"relu\", \"init\": \"he_normal\", \"norm\": \"batch\", "
      "\"residual\": True}, else the Monitor's; remedies are chosen to fit it); "
      "under torch.distributed only rank 0 writes and every rank returns rank 0's findings");
  m.def(
      "report",
      [](const std::string& dir, const std::optional<std::string>& out, const std::optional<std::string>& label, bool force) {
        SaveOptions o;
        o.label = label.value_or("");
        o.force = force;
        return report_from_stream(dir, out.value_or(""), o);
      },
      py::arg("dir"), py::kw_only(), py::arg("out") = py::none(), py::arg("label") = py::none(), py::arg("force") = false,
      "The report of a folder a Monitor streamed to (out=), also after its program died: written into out "
      "(default: dir), labelled after the folder unless label= is given, findings returned");
  py::module_::import("atexit").attr("register")(py::cpp_function(&flush_live_monitors));
  m.def(
      "require_healthy",
      [](const std::vector<Finding>& findings, const std::vector<std::string>& kinds) {
        require_healthy(findings, kinds_of(kinds));
      },
      py::arg("findings"), py::arg("kinds") = std::vector<std::string>{},
      "Raise GradientHealthError naming every finding of these kinds (all kinds when empty)");
}
