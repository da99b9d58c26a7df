#include "gradflow/trace.h"

#include <algorithm>

#include "util/enum_names.h"
#include "gradflow/error.h"

namespace gradflow {

namespace {
constexpr detail::Named<SeriesKind> kKinds[] = {
    {SeriesKind::parameter, "parameter"}, {SeriesKind::activation, "activation"}, {SeriesKind::tap, "tap"}};
}  // namespace

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
  series_.push_back(SeriesInfo{name, kind, layer, std::move(shape)});
  index_.emplace(name, id);
  return id;
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
  Trace t = *this;
  t.steps_.clear();
  t.first_nonfinite_.reset();
  for (const auto& st : steps_)
    if (!st.partial) t.add_step(st);
  return t;
}

std::vector<int> Trace::series_of_kind(SeriesKind kind) const {
  std::vector<int> out;
  for (int i = 0; i < static_cast<int>(series_.size()); ++i)
    if (series_[i].kind == kind) out.push_back(i);
  return out;
}

}  // namespace gradflow
