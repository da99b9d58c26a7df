#include "gradflow/summary.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>
#include <unordered_map>

#include "util/median.h"

namespace gradflow {

std::optional<double> Attenuation::gain() const {
  if (!log10 || span <= 0) return std::nullopt;
  return std::pow(10.0, *log10 / span);
}

std::vector<int> numbered_series(const Trace& trace, const std::string& group) {
  std::vector<std::pair<long, int>> v;
  for (int i = 0; i < static_cast<int>(trace.series().size()); ++i) {
    const auto& s = trace.series()[i];
    if (s.kind != SeriesKind::tap || s.layer != group) continue;
    const auto dot = s.name.rfind('.');
    if (dot == std::string::npos) continue;
    char* end = nullptr;
    const long n = std::strtol(s.name.c_str() + dot + 1, &end, 10);
    if (end && *end == '\0') v.emplace_back(n, i);
  }
  std::sort(v.begin(), v.end());
  std::vector<int> out;
  for (const auto& p : v) out.push_back(p.second);
  return out;
}

namespace {

// The longest path through the layer outputs' graph (SeriesInfo::inputs), ending at the layer
// closest to the output among the longest: depth counts distinct modules one after another,
// parallel branches (a VAE's two heads, an actor's and a critic's) are not chained.
std::vector<int> longest_path(const Trace& trace, const std::vector<int>& outputs) {
  std::unordered_map<int, int> length, previous;
  int end = -1;
  for (int s : outputs) {
    length[s] = 1;
    previous[s] = -1;
    for (int from : trace.series()[s].inputs)
      if (auto it = length.find(from); it != length.end() && it->second + 1 > length[s]) {
        length[s] = it->second + 1;
        previous[s] = from;
      }
    if (end < 0 || length[s] >= length[end]) end = s;
  }
  std::vector<int> path;
  for (int s = end; s >= 0; s = previous[s]) path.push_back(s);
  std::reverse(path.begin(), path.end());
  return path;
}

bool has_graph(const Trace& trace, const std::vector<int>& outputs) {
  return std::any_of(outputs.begin(), outputs.end(), [&](int s) { return !trace.series()[s].inputs.empty(); });
}

}  // namespace

namespace {

// Whether `ancestor` feeds `series`, directly or through other layer outputs.
bool feeds(const Trace& trace, int ancestor, int series) {
  std::vector<int> stack{series};
  std::vector<bool> seen(trace.series().size(), false);
  while (!stack.empty()) {
    const int s = stack.back();
    stack.pop_back();
    for (int from : trace.series()[s].inputs) {
      if (from == ancestor) return true;
      if (!seen[from]) seen[from] = true, stack.push_back(from);
    }
  }
  return false;
}

}  // namespace

bool has_skip_connection(const Trace& trace) {
  for (const auto& s : trace.series())
    for (int a : s.inputs)
      for (int b : s.inputs)
        if (a != b && feeds(trace, a, b)) return true;
  return false;
}

std::optional<double> clip_norm_applied(const Trace& trace) {
  std::vector<double> norms;
  for (const auto& st : trace.steps()) {
    const auto change = applied_change(st, trace);
    if (!change || change->changed == 0) continue;
    if (!(change->factor() < 1)) return std::nullopt;
    norms.push_back(change->applied_norm);
  }
  if (norms.empty()) return std::nullopt;
  const auto [lo, hi] = std::minmax_element(norms.begin(), norms.end());
  if (!(*hi <= 1.01 * *lo)) return std::nullopt;
  return detail::median(norms);
}

std::vector<int> depth_series(const Trace& trace) {
  auto h = numbered_series(trace, "h");
  if (!h.empty()) return h;
  auto acts = trace.series_of_kind(SeriesKind::activation);
  if (has_graph(trace, acts)) acts = longest_path(trace, acts);
  if (!acts.empty()) acts.pop_back();
  return acts;
}

namespace {

// Where a module's parameters stand in forward order: its output's position among the layer
// outputs, or its nearest ancestor's; after every layer output when none has one.
std::size_t forward_position(const std::unordered_map<std::string, std::size_t>& output_at, std::string module) {
  for (;;) {
    if (auto it = output_at.find(module); it != output_at.end()) return it->second;
    const auto dot = module.rfind('.');
    if (dot == std::string::npos) return output_at.size();
    module.resize(dot);
  }
}

}  // namespace

std::vector<int> parameters_in_forward_order(const Trace& trace) {
  std::unordered_map<std::string, std::size_t> output_at;
  for (int s : trace.series_of_kind(SeriesKind::activation)) output_at.emplace(trace.series()[s].layer, output_at.size());
  std::vector<int> params = trace.series_of_kind(SeriesKind::parameter);
  std::vector<std::size_t> at(trace.series().size(), 0);
  for (int p : params) at[static_cast<std::size_t>(p)] = forward_position(output_at, trace.series()[p].layer);
  std::stable_sort(params.begin(), params.end(), [&](int a, int b) { return at[a] < at[b]; });
  return params;
}

std::vector<int> weight_series(const Trace& trace) {
  std::vector<int> out;
  for (int i : parameters_in_forward_order(trace))
    if (trace.series()[i].shape.size() >= 2) out.push_back(i);
  return out;
}

Attenuation attenuation(double from, double to, int span, double tiny) {
  Attenuation a;
  a.from = from;
  a.to = to;
  a.span = span;
  if (!std::isfinite(from) || !std::isfinite(to)) {
    a.overflow = true;
    return a;
  }
  if (to <= 0.0) return a;  // nothing reached the near end: no ratio to speak of
  if (from <= 0.0) {
    // Every element rounded to zero, so each was below `tiny`: so was their RMS.
    a.underflow = true;
    a.log10 = std::log10(tiny) - std::log10(to);
    return a;
  }
  a.log10 = std::log10(from) - std::log10(to);
  return a;
}

namespace {

std::optional<double> norm_at(const StepRecord& st, int series) {
  if (series < 0) return std::nullopt;
  const Record* r = st.find(series);
  if (!r) return std::nullopt;
  if (r->grad.nonfinite > 0) return std::numeric_limits<double>::infinity();
  return r->grad.norm();
}

std::optional<double> rms_at(const StepRecord& st, int series) {
  const Record* r = series < 0 ? nullptr : st.find(series);
  if (!r) return std::nullopt;
  if (r->grad.nonfinite > 0) return std::numeric_limits<double>::infinity();
  return r->grad.rms();
}

// The link whose far layer's RMS exceeds its near neighbour's the most (log10).
void find_largest_link(Attenuation& a, const StepRecord& st, const std::vector<int>& chain) {
  for (std::size_t k = 0; k + 1 < chain.size(); ++k) {
    const auto far = rms_at(st, chain[k]), near = rms_at(st, chain[k + 1]);
    if (!far || !near || !(*far > 0) || !(*near > 0) || !std::isfinite(*far) || !std::isfinite(*near)) continue;
    const double link = std::log10(*far) - std::log10(*near);
    if (a.largest_link_at < 0 || link > a.largest_link_log10) {
      a.largest_link_log10 = link;
      a.largest_link_at = static_cast<int>(k);
    }
  }
}

std::optional<Attenuation> chain_attenuation(const StepRecord& st, const std::vector<int>& chain, double tiny) {
  if (chain.size() < 2) return std::nullopt;
  const auto from = rms_at(st, chain.front());
  const auto to = rms_at(st, chain.back());
  if (!from || !to) return std::nullopt;
  Attenuation a = attenuation(*from, *to, static_cast<int>(chain.size()) - 1, tiny);
  find_largest_link(a, st, chain);
  return a;
}

}  // namespace

std::optional<AppliedSummary> summarize_applied(const Trace& trace) {
  std::optional<AppliedSummary> a;
  std::vector<double> factors;
  for (const auto& st : trace.steps()) {
    const auto c = applied_change(st, trace);
    if (!c) continue;
    if (!a) a = AppliedSummary{};
    ++a->steps;
    if (c->changed == 0) continue;
    ++a->changed_steps;
    if (std::isfinite(c->factor())) factors.push_back(c->factor());
  }
  if (a) a->finite_factors = static_cast<int>(factors.size());
  if (a && !factors.empty()) {
    const auto [lo, hi] = std::minmax_element(factors.begin(), factors.end());
    a->smallest_factor = *lo;
    a->largest_factor = *hi;
    a->median_factor = detail::median(factors);
  }
  return a;
}

RunSummary summarize(const Trace& trace, const std::vector<double>& loss, double tiny) {
  RunSummary s;
  s.recorded_steps = static_cast<int>(trace.steps().size());
  s.applied = summarize_applied(trace);
  for (const auto& st : trace.steps()) s.skipped_steps += st.skipped ? 1 : 0;
  if (!loss.empty()) {
    if (std::isfinite(loss.front())) s.loss_first = loss.front();
    if (std::isfinite(loss.back())) s.loss_last = loss.back();
  }
  if (trace.steps().empty()) return s;
  const auto& first = trace.steps().front();
  const auto& last = trace.steps().back();
  const auto weights = weight_series(trace);
  auto finite = [](std::optional<double> v) -> std::optional<double> {
    if (v && std::isfinite(*v)) return v;
    return std::nullopt;
  };
  if (!weights.empty()) {
    s.grad_norm_first = finite(norm_at(first, weights.front()));
    s.grad_norm_last = finite(norm_at(first, weights.back()));
    s.grad_norm_first_final = finite(norm_at(last, weights.front()));
    s.grad_norm_last_final = finite(norm_at(last, weights.back()));
  }
  const auto depth = depth_series(trace);
  s.depth = chain_attenuation(first, depth, tiny);
  s.depth_final = chain_attenuation(last, depth, tiny);
  const auto time = numbered_series(trace, "time");
  s.time = chain_attenuation(first, time, tiny);
  s.time_final = chain_attenuation(last, time, tiny);
  return s;
}

}  // namespace gradflow
