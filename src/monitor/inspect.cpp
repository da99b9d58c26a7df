#include "gradflow/inspect.h"

#include <filesystem>
#include <fstream>
#include <iterator>

#include <torch/script.h>
#include <torch/torch.h>

#include "gradflow/error.h"
#include "util/text.h"
#include "gradflow/monitor.h"
#include "gradflow/summary.h"
#include "monitor/script_outputs.h"
#include "util/json_util.h"
#include "diagnosis/run_json.h"
#include "trace/trace_json.h"

namespace gradflow {

namespace {

std::string shape_text(const std::vector<std::int64_t>& s) {
  std::vector<std::string> sizes;
  for (auto d : s) sizes.push_back(std::to_string(d));
  return "[" + detail::join(sizes, ",") + "]";
}

// The loss is taken on the output, or on its first tensor when it returns a tuple or list.
at::Tensor first_tensor(const c10::IValue& v) {
  if (v.isTensor()) return v.toTensor();
  if (v.isTuple())
    for (const auto& e : v.toTupleRef().elements()) {
      auto t = first_tensor(e);
      if (t.defined()) return t;
    }
  if (v.isList())
    for (const auto& e : v.toListRef()) {
      auto t = first_tensor(e);
      if (t.defined()) return t;
    }
  return {};
}

at::Tensor load_input(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw UsageError("input file '" + path + "' cannot be read: give a tensor saved with torch.save(tensor, path)");
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  c10::IValue v;
  try {
    v = torch::pickle_load(bytes);
  } catch (const c10::Error& e) {
    throw UsageError("input file '" + path + "' is not a tensor saved by torch.save (" + detail::first_line(e.what_without_backtrace()) + ")");
  }
  if (!v.isTensor()) throw UsageError("input file '" + path + "' holds no tensor: save a single tensor with torch.save");
  return v.toTensor();
}

}  // namespace

const char* to_string(InspectLoss loss) {
  switch (loss) {
    case InspectLoss::sum: return "sum";
    case InspectLoss::mean: return "mean";
    case InspectLoss::mse: return "mse";
    case InspectLoss::ce: return "ce";
  }
  return "sum";
}

InspectLoss inspect_loss_from_string(const std::string& name) {
  for (auto l : {InspectLoss::sum, InspectLoss::mean, InspectLoss::mse, InspectLoss::ce})
    if (name == to_string(l)) return l;
  throw UsageError("unknown loss '" + name + "': choose sum, mean, mse or ce");
}

std::vector<std::int64_t> parse_shape(const std::string& text) {
  std::vector<std::int64_t> shape;
  for (const auto& item : detail::split(text)) {
    char* end = nullptr;
    const long long v = std::strtoll(item.c_str(), &end, 10);
    if (item.empty() || *end != '\0' || v < 1 || v > (1LL << 31))
      throw UsageError("input shape '" + text + "': write positive sizes separated by commas, e.g. 8,3,32,32");
    shape.push_back(v);
  }
  std::int64_t n = 1;
  for (auto d : shape) {
    if (n > (1LL << 31) / d) throw UsageError("input shape '" + text + "' is too large: keep it under 2^31 elements");
    n *= d;
  }
  return shape;
}

namespace {

void check_options(const InspectOptions& o) {
  if (o.input_shape.empty() && o.input_file.empty())
    throw UsageError("no input: give an input shape N,C,... (random input) or an input file (a tensor saved by torch.save)");
  if (o.steps < 0 || o.steps > 1000000) throw UsageError("steps must be between 0 and 1000000 (got " + std::to_string(o.steps) + ")");
  if (!(o.lr > 0)) throw UsageError("the learning rate must be a positive number");
}

torch::jit::Module load_module(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec))
    throw Error("model file '" + path + "' does not exist: give a file saved with torch.jit.save");
  // The profiling executor rewrites the graph after its first runs (fusing nodes into
  // DifferentiableGraphBackward). With profiling off, LibTorch 1.13 picks its simple executor,
  // which keeps one autograd node per op: what the graph walk names layers by. (Executor mode
  // off would pick the legacy executor, which builds DifferentiableGraphs from the first run.)
  torch::jit::getProfilingMode() = false;
  try {
    return torch::jit::load(path);
  } catch (const c10::Error& e) {
    throw Error("'" + path + "' is not a TorchScript archive (" + detail::first_sentence(e.what_without_backtrace()) +
                "): save it with torch.jit.save(torch.jit.script(model), path)");
  }
}

// The model's output for `x`, checked to be a floating tensor that depends on a parameter.
at::Tensor forward_output(torch::jit::Module& m, const at::Tensor& x) {
  c10::IValue out;
  try {
    out = m.forward({x});
  } catch (const c10::Error& e) {
    throw UsageError("the model rejected an input of shape " + shape_text(x.sizes().vec()) + ": " +
                     detail::first_line(e.what_without_backtrace()));
  } catch (const std::runtime_error& e) {
    // TorchScript's own exceptions; std::bad_alloc and the like are no usage error.
    throw UsageError("the model rejected an input of shape " + shape_text(x.sizes().vec()) + ": " + detail::first_line(e.what()));
  }
  at::Tensor y = first_tensor(out);
  if (!y.defined()) throw Error("the model's output holds no tensor: gradflow needs a floating tensor to take a loss of");
  if (!y.is_floating_point())
    throw Error(std::string("the model's output is a ") + c10::toString(y.scalar_type()) +
                " tensor, not a floating one: there is no gradient to take");
  if (!y.requires_grad()) throw Error("the model's output does not depend on any trainable parameter");
  return y;
}

at::Tensor loss_of(const at::Tensor& y, const InspectOptions& o) {
  switch (o.loss) {
    case InspectLoss::sum: return y.sum();
    case InspectLoss::mean: return y.mean();
    case InspectLoss::mse: return torch::mse_loss(y, torch::randn_like(y));
    case InspectLoss::ce: break;
  }
  if (y.dim() != 2) throw UsageError("the cross-entropy loss needs an output of shape [N, classes], got " + shape_text(y.sizes().vec()));
  const auto k = o.classes > 0 ? o.classes : y.size(1);
  if (k != y.size(1)) throw UsageError(std::to_string(k) + " classes do not match the output's " + std::to_string(y.size(1)) + " columns");
  return torch::nn::functional::cross_entropy(y, torch::randint(0, k, {y.size(0)}, torch::kLong));
}

// The first step on the given (or a seeded random) input, then `steps` SGD steps on fresh
// random inputs of the same shape; returns each step's loss.
std::vector<double> measure(torch::jit::Module& m, const std::vector<at::Tensor>& params, Monitor& mon, const InspectOptions& o) {
  torch::optim::SGD opt(params, torch::optim::SGDOptions(o.lr));
  torch::manual_seed(o.seed);
  std::vector<double> losses;
  // The file is read once: later steps draw fresh random inputs of its shape.
  const at::Tensor file_input = o.input_file.empty() ? at::Tensor() : load_input(o.input_file);
  for (std::int64_t step = 0; step <= o.steps; ++step) {
    const at::Tensor x = file_input.defined() && step == 0 ? file_input
                         : o.input_shape.empty()          ? torch::randn_like(file_input)
                                                          : torch::randn(o.input_shape);
    const at::Tensor loss = loss_of(forward_output(m, x), o);
    opt.zero_grad();
    mon.watch(loss);
    loss.backward();
    losses.push_back(loss.item<double>());
    if (step < o.steps) opt.step();
  }
  return losses;
}

ParameterGradient parameter_gradient(const std::string& name, const at::Tensor& t, const Record* rec) {
  ParameterGradient pg;
  pg.name = name;
  pg.shape = t.sizes().vec();
  if (!rec) {
    pg.zero_fraction = 1.0;  // no gradient reached it at all
    return pg;
  }
  pg.grad_norm = rec->grad.norm();
  pg.grad_max_abs = rec->grad.max_abs;
  pg.grad_mean = rec->grad.mean();
  pg.zero_fraction = rec->grad.zero_fraction();
  pg.nonfinite = rec->grad.nonfinite;
  return pg;
}

}  // namespace

InspectResult inspect_torchscript(const std::string& path, const InspectOptions& o) {
  check_options(o);
  torch::jit::Module m = load_module(path);
  if (o.eval) m.eval();
  InspectResult res;
  res.model = path;
  res.training_mode = m.is_training();
  const std::vector<std::pair<std::string, at::Tensor>> named = detail::trainable_parameters(m);
  if (named.empty()) throw Error("'" + path + "' has no trainable parameter: there is no gradient to inspect");
  std::vector<at::Tensor> params;
  for (const auto& item : named) params.push_back(item.second);

  Monitor mon;
  mon.attach(m);
  const std::vector<double> losses = measure(m, params, mon, o);
  mon.detach();
  RunRecord& r = res.run;
  r.spec = r.label = std::filesystem::path(path).filename().string();
  r.family = "torchscript";
  r.task = to_string(o.loss);
  r.trace = mon.trace();
  r.loss = losses;
  r.steps_requested = r.steps_done = o.steps + 1;
  r.tiny = std::numeric_limits<float>::denorm_min();
  r.config = {{"loss", to_string(o.loss)}, {"input_shape", shape_text(o.input_shape)}, {"steps", std::to_string(o.steps)},
              {"lr", std::to_string(o.lr)}, {"seed", std::to_string(o.seed)}, {"mode", res.training_mode ? "train" : "eval"}};
  r.traits = mon.model_traits();
  r.traits.residual = has_skip_connection(r.trace);
  r.analyse();
  res.loss = losses.front();
  const auto& first = r.trace.steps().front();
  for (const auto& [name, t] : named) {
    const int s = r.trace.find(name);
    res.parameters.push_back(parameter_gradient(name, t, s >= 0 ? first.find(s) : nullptr));
  }
  for (int s : r.trace.series_of_kind(SeriesKind::activation))
    if (const Record* rec = first.find(s)) res.activations.emplace_back(r.trace.series()[s].name, rec->grad.norm());
  return res;
}

std::string inspect_to_json(const InspectResult& res, const InspectOptions& o) {
  using detail::Json;
  using detail::num;
  Json params = Json::array();
  for (const auto& p : res.parameters)
    params.push_back({{"name", p.name}, {"shape", p.shape}, {"grad_norm", num(p.grad_norm)}, {"grad_max_abs", num(p.grad_max_abs)},
                      {"grad_mean", num(p.grad_mean)}, {"zero_fraction", num(p.zero_fraction)}, {"nonfinite", p.nonfinite}});
  Json acts = Json::array();
  for (const auto& [n, v] : res.activations) acts.push_back({{"name", n}, {"grad_norm", num(v)}});
  Json findings = Json::array();
  for (const auto& f : res.run.findings) findings.push_back(detail::finding_json(f));
  Json j = {{"schema", kInspectSchema},
            {"model", res.model},
            {"input_shape", o.input_shape},
            {"input_file", o.input_file},
            {"loss_kind", to_string(o.loss)},
            {"loss", num(res.loss)},
            {"mode", res.training_mode ? "train" : "eval"},
            {"steps", o.steps},
            {"seed", o.seed},
            {"parameters", params},
            {"activations", acts},
            {"findings", findings},
            {"summary", detail::summary_to_json(res.run.summary)},
            {"trace", detail::trace_to_json_value(res.run.trace)}};
  return j.dump(1);
}

}  // namespace gradflow
