#include "distributed/rank_figures.h"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "util/median.h"
#include "util/text.h"

namespace gradflow::detail {

std::string ranks_phrase(const std::vector<int>& ranks) {
  std::vector<std::string> names;
  for (int r : ranks) names.push_back(std::to_string(r));
  return (ranks.size() == 1 ? "rank " : "ranks ") + join_alternatives(names, "and");
}

std::vector<double> local_norms(const Trace& trace, const StepRecord& step) {
  std::vector<double> sq(static_cast<std::size_t>(trace.world_size), 0.0);
  for (const auto& r : step.records) {
    if (trace.series()[r.series].kind != SeriesKind::parameter) continue;
    for (std::size_t k = 0; k < sq.size(); ++k)
      sq[k] += k < r.ranks.size() && r.ranks[k].nonfinite == 0 ? r.ranks[k].sum_sq : NAN;
  }
  for (double& v : sq) v = std::sqrt(v);
  return sq;
}

std::optional<RankFigures> rank_figures(const Trace& trace) {
  if (trace.world_size < 2) return std::nullopt;
  RankFigures f;
  f.ranks = trace.world_size;
  f.batch_per_rank = trace.batch_per_rank;
  f.norms.resize(static_cast<std::size_t>(f.ranks));
  std::vector<double> spreads;
  for (const auto& st : trace.steps()) {
    if (st.partial) continue;
    const auto n = local_norms(trace, st);
    const auto [lo, hi] = std::minmax_element(n.begin(), n.end());
    if (!std::all_of(n.begin(), n.end(), [](double v) { return std::isfinite(v); }) || !(*lo > 0)) continue;
    f.steps.push_back(st.step);
    for (std::size_t k = 0; k < n.size(); ++k) f.norms[k].push_back(n[k]);
    spreads.push_back(*hi / *lo);
    if (spreads.back() > f.max_spread) f.max_spread = spreads.back(), f.max_spread_step = st.step;
  }
  if (!spreads.empty()) f.median_spread = detail::median(spreads);
  f.noise = noise_scales(trace);
  return f;
}

std::string ranks_sentence(const RankFigures& f) {
  std::string out = f.batch_per_rank > 0 ? fmt::format("{} ranks x {} examples (global batch {})", f.ranks, f.batch_per_rank,
                                                       f.batch_per_rank * f.ranks)
                                         : fmt::format("{} ranks", f.ranks);
  if (!f.steps.empty())
    out += fmt::format("; local gradient norms within {:.3g}x of each other (median over steps; {:.3g}x at most, step {})",
                       f.median_spread, f.max_spread, f.max_spread_step);
  if (f.noise.empty() || !std::isfinite(f.noise.front().last()))
    return out + (f.batch_per_rank > 0 ? "; no noise scale: the gradient's signal is below what the batch resolves" : "");
  const double b = f.noise.front().last(), global = static_cast<double>(f.batch_per_rank * f.ranks);
  return out + fmt::format("; gradient noise scale B_simple ~ {:.3g} examples at the last step, {} the global batch{}", b,
                           b > global ? "above" : "below",
                           b > global ? ": a larger batch would still cut the steps needed nearly in proportion"
                                      : ": a larger batch would mostly add compute, not speed");
}

}  // namespace gradflow::detail
