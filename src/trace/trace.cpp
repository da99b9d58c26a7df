#include "gradflow/trace.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "util/enum_names.h"
#include "gradflow/error.h"

namespace gradflow {

namespace {
constexpr detail::Named<SeriesKind> kKinds[] = {
    {SeriesKind::parameter, "parameter"}, {SeriesKind::activation, "activation"}, {SeriesKind::tap, "tap"}};
constexpr detail::Named<ProfileAxis> kAxes[] = {{ProfileAxis::calls, "calls"}, {ProfileAxis::time, "time"}};
}  // namespace

const char* to_string(ProfileAxis axis) { return detail::name_of(kAxes, axis); }

const char* to_string(SeriesKind kind) { return detail::name_of(kKinds, kind); }

SeriesKind series_kind_from_string(const std::string& name) {
  if (auto kind = detail::value_of(kKinds, name)) return *kind;
  throw Error("unknown series kind '" + name + "': expected parameter, activation or tap");
}

const Record* StepRecord::find(int series) const {
  for (const auto& r : records)
    if (r.series == series) return &r;
  return nullptr;
}

int Trace::intern(const std::string& name, SeriesKind kind, const std::string& layer,
                  std::vector<std::int64_t> shape) {
  auto it = index_.find(name);
  if (it != index_.end()) return it->second;
  const int id = static_cast<int>(series_.size());
  series_.push_back(SeriesInfo{name, kind, layer, std::move(shape), {}, false, Activation::none});
  index_.emplace(name, id);
  return id;
}

bool Trace::add_input(int to, int from) {
  auto& in = series_.at(static_cast<std::size_t>(to)).inputs;
  // Only from a series recorded before: forward order keeps the graph acyclic (a module called
  // again after its consumer, as in a loop, adds no edge back).
  if (from < 0 || from >= to || std::find(in.begin(), in.end(), from) != in.end()) return false;
  in.push_back(from);
  return true;
}

void Trace::set_shape(int series, std::vector<std::int64_t> shape) {
  series_.at(static_cast<std::size_t>(series)).shape = std::move(shape);
}

void Trace::set_shards(int series, int shards) { series_.at(static_cast<std::size_t>(series)).shards = shards; }

void Trace::mark_found_by_walk(int series) { series_.at(static_cast<std::size_t>(series)).found_by_walk = true; }

void Trace::set_activation(int series, Activation activation) {
  series_.at(static_cast<std::size_t>(series)).activation = activation;
}

int Trace::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? -1 : it->second;
}

void Trace::add_step(StepRecord step) {
  if (!first_nonfinite_) {
    for (const auto& r : step.records) {
      if (r.grad.nonfinite > 0) {
        first_nonfinite_ = NonFiniteMark{step.step, series_.at(r.series).name};
        break;
      }
    }
  }
  if (!steps_.empty() && steps_.back().step == step.step) {
    // The same step flushed in two parts (trace() read in the middle of a step).
    StepRecord& last = steps_.back();
    if (step.loss) last.loss = step.loss;
    if (step.accuracy) last.accuracy = step.accuracy;
    last.backwards = std::max(last.backwards, step.backwards);
    if (step.step_loss) last.step_loss = step.step_loss;
    if (step.scale_after) last.scale_after = step.scale_after;
    if (step.sharpness) last.sharpness = step.sharpness, last.sharpness_products = step.sharpness_products;
    if (step.learning_rate) last.learning_rate = step.learning_rate, last.momentum = step.momentum;
    last.skipped = last.skipped || step.skipped;
    for (auto& r : step.records) {
      auto it = std::find_if(last.records.begin(), last.records.end(),
                             [&](const Record& o) { return o.series == r.series; });
      if (it != last.records.end()) *it = std::move(r);
      else last.records.push_back(std::move(r));
    }
    return;
  }
  steps_.push_back(std::move(step));
}

void StepRecord::add_loss(double value) {
  losses.push_back(value);
  loss = loss.value_or(0.0) + value;
}

Trace Trace::complete_steps() const {
  return steps_where([](const StepRecord& st) { return !st.partial; });
}

Trace Trace::steps_where(const std::function<bool(const StepRecord&)>& keep) const {
  Trace t = *this;
  t.steps_.clear();
  t.first_nonfinite_.reset();
  for (const auto& st : steps_)
    if (keep(st)) t.add_step(st);
  return t;
}

double AppliedChange::factor() const {
  // (Two non-finite norms are equal, and still no factor.)
  if (!std::isfinite(produced_norm) || !std::isfinite(applied_norm)) return std::numeric_limits<double>::quiet_NaN();
  if (applied_norm == produced_norm) return 1.0;
  if (!(produced_norm > 0)) return std::numeric_limits<double>::quiet_NaN();
  return applied_norm / produced_norm;
}

namespace {
// Equal but for rounding: unscaling by a power of two, or reading one gradient twice, changes nothing.
bool same_figures(const TensorStats& a, const TensorStats& b) {
  const auto near = [](double x, double y) { return x == y || std::abs(x - y) <= 1e-6 * std::max(std::abs(x), std::abs(y)); };
  return a.numel == b.numel && a.nonfinite == b.nonfinite && near(a.sum_sq, b.sum_sq) && near(a.max_abs, b.max_abs);
}
}  // namespace

std::optional<AppliedChange> applied_change(const StepRecord& step, const Trace& trace) {
  std::optional<AppliedChange> c;
  double produced = 0, applied = 0;
  bool bad = false;
  for (const auto& r : step.records) {
    if (!r.applied || trace.series().at(r.series).kind != SeriesKind::parameter) continue;
    if (!c) c = AppliedChange{};
    produced += r.grad.sum_sq;
    applied += r.applied->sum_sq;
    bad = bad || r.grad.nonfinite > 0 || r.applied->nonfinite > 0;
    if (!same_figures(r.grad, *r.applied)) ++c->changed;
  }
  if (c) {
    const double inf = std::numeric_limits<double>::infinity();
    c->produced_norm = bad ? inf : std::sqrt(produced);
    c->applied_norm = bad ? inf : std::sqrt(applied);
  }
  return c;
}

std::vector<std::string> gradient_labels(const Trace& trace) {
  bool applied = false, unscaled = false, closure = false;
  for (const auto& st : trace.steps()) {
    unscaled = unscaled || st.loss_scale.has_value();
    closure = closure || st.evaluation >= 0;
    for (const auto& r : st.records) applied = applied || r.applied.has_value();
  }
  std::vector<std::string> labels{"produced by backward (after the program's tensor hooks)"};
  if (trace.world_size > 1)
    labels.push_back("averaged over " + std::to_string(trace.world_size) + " ranks, each rank's local gradient beside it");
  if (unscaled) labels.push_back("unscaled: divided by the step's loss scale");
  if (applied) labels.push_back("the gradient the optimizer applied beside it (after clipping, unscaling, averaging)");
  if (closure) labels.push_back("one record per evaluation of the optimizer's closure");
  return labels;
}

std::vector<int> Trace::series_of_kind(SeriesKind kind) const {
  std::vector<int> out;
  for (int i = 0; i < static_cast<int>(series_.size()); ++i)
    if (series_[i].kind == kind) out.push_back(i);
  return out;
}

}  // namespace gradflow
