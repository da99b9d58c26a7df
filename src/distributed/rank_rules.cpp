#include <algorithm>
#include <cmath>
#include <vector>

#include <fmt/format.h>

#include "diagnosis/diagnosis_rules.h"
#include "distributed/rank_figures.h"

namespace gradflow::detail {

namespace {

double median_of_others(const std::vector<double>& values, std::size_t skip) {
  std::vector<double> others;
  for (std::size_t k = 0; k < values.size(); ++k)
    if (k != skip) others.push_back(values[k]);
  std::sort(others.begin(), others.end());
  const std::size_t n = others.size();
  return n % 2 ? others[n / 2] : 0.5 * (others[n / 2 - 1] + others[n / 2]);
}

}  // namespace

namespace {

// The ranks whose local gradient of `r` has a non-finite element, when not every rank's has.
std::vector<int> ranks_only(const Record& r) {
  std::vector<int> bad;
  for (std::size_t k = 0; k < r.ranks.size(); ++k)
    if (r.ranks[k].nonfinite > 0) bad.push_back(static_cast<int>(k));
  return bad.size() == r.ranks.size() ? std::vector<int>{} : bad;
}

}  // namespace

std::optional<Finding> rank_non_finite_rule(const DiagnosisInput& in, const DiagnosisOptions&) {
  const Trace& t = in.trace;
  if (t.world_size < 2) return std::nullopt;
  for (const auto& step : t.steps()) {
    const Record* first = nullptr;
    std::vector<int> bad;
    int tensors = 0;
    for (const auto& r : step.records) {
      const auto ranks = ranks_only(r);
      if (ranks.empty()) continue;
      if (!first) first = &r, bad = ranks;
      ++tensors;
    }
    if (!first) continue;
    const std::string& name = t.series()[first->series].name;
    Finding f;
    f.kind = FindingKind::rank_non_finite;
    f.severity = Severity::error;
    f.where = fmt::format("{} at step {} on {}", name, step.step, ranks_phrase(bad));
    f.message = fmt::format("a non-finite local gradient at step {} on {} only, of {} ranks, in {} of {} recorded tensors "
                            "(first in backward order: {}): the average spreads it to every rank",
                            step.step, ranks_phrase(bad), t.world_size, tensors, step.records.size(), name);
    f.evidence.emplace_back("step", static_cast<double>(step.step));
    f.evidence.emplace_back("tensors", static_cast<double>(tensors));
    for (int k : bad) f.evidence.emplace_back(fmt::format("nonfinite.rank{}", k), static_cast<double>(first->ranks[k].nonfinite));
    f.remedy = "check the data shard of " + ranks_phrase(bad) +
               " at that step (a corrupt example, a division by zero in its preprocessing)";
    return f;
  }
  return std::nullopt;
}

std::optional<Finding> ranks_out_of_sync_rule(const DiagnosisInput& in, const DiagnosisOptions& o) {
  for (const auto& step : in.trace.steps()) {
    const auto& c = step.rank_checksums;
    std::vector<int> off;
    double worst = 0;
    for (std::size_t k = 1; k < c.size(); ++k) {
      const double rel = std::abs(c[k] - c[0]) / std::max(std::abs(c[0]), 1e-300);
      if (rel > o.checksum_tolerance || std::isnan(rel)) {
        off.push_back(static_cast<int>(k));
        worst = std::isnan(rel) ? rel : std::max(worst, rel);
      }
    }
    if (off.empty()) continue;
    Finding f;
    f.kind = FindingKind::ranks_out_of_sync;
    f.severity = Severity::error;
    f.where = fmt::format("step {}", step.step);
    f.message = fmt::format("the parameters of {} differ from rank 0's at step {} (checksums {:.3g} apart, relative): "
                            "the ranks no longer train one model",
                            ranks_phrase(off), step.step, worst);
    f.evidence = {{"step", static_cast<double>(step.step)}, {"relative_difference", worst}};
    f.remedy = "broadcast rank 0's parameters before training and average every gradient before each optimizer "
               "step; nothing may change one rank's parameters alone";
    return f;
  }
  return std::nullopt;
}

std::optional<Finding> rank_outlier_rule(const DiagnosisInput& in, const DiagnosisOptions& o) {
  const Trace& t = in.trace;
  if (t.world_size < 2) return std::nullopt;
  std::vector<int> run(static_cast<std::size_t>(t.world_size), 0);
  std::vector<double> peak(run.size(), 0.0);
  for (const auto& step : t.steps()) {
    const auto norms = local_norms(t, step);
    for (std::size_t k = 0; k < norms.size(); ++k) {
      const double ratio = norms[k] / median_of_others(norms, k);
      if (!(ratio > o.rank_outlier_factor)) {
        run[k] = 0;
        peak[k] = 0;
        continue;
      }
      peak[k] = std::max(peak[k], ratio);
      if (++run[k] < o.rank_outlier_steps) continue;
      Finding f;
      f.kind = FindingKind::rank_outlier;
      f.severity = Severity::warning;
      f.where = fmt::format("rank {} up to step {}", k, step.step);
      f.message = fmt::format("rank {}'s local gradient norm was {:.3g}x the other ranks' median or more for {} "
                              "recorded steps in a row (up to step {})",
                              k, o.rank_outlier_factor, run[k], step.step);
      f.evidence = {{"rank", static_cast<double>(k)}, {"peak_ratio", peak[k]}, {"steps", static_cast<double>(run[k])},
                    {"last_step", static_cast<double>(step.step)}};
      f.remedy = fmt::format("check rank {}'s data shard (mislabelled, unnormalised or duplicated examples)", k);
      return f;
    }
  }
  return std::nullopt;
}

}  // namespace gradflow::detail
