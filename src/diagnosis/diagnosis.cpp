#include "gradflow/diagnosis.h"

#include <algorithm>
#include <limits>

#include "diagnosis/diagnosis_rules.h"
#include "util/enum_names.h"
#include "gradflow/error.h"
#include "gradflow/summary.h"
#include "util/text.h"

namespace gradflow {

namespace {
constexpr detail::Named<FindingKind> kKinds[] = {
    {FindingKind::vanishing, "vanishing"},   {FindingKind::exploding, "exploding"},
    {FindingKind::dead_units, "dead_units"}, {FindingKind::saturation, "saturation"},
    {FindingKind::non_finite, "non_finite"}, {FindingKind::stalled, "stalled"},
    {FindingKind::unstable_loss, "unstable_loss"},
    {FindingKind::rank_non_finite, "rank_non_finite"},
    {FindingKind::ranks_out_of_sync, "ranks_out_of_sync"},
    {FindingKind::rank_outlier, "rank_outlier"},
    {FindingKind::no_gradient, "no_gradient"},
    {FindingKind::edge_of_stability, "edge_of_stability"},
    {FindingKind::not_recorded, "not_recorded"},
    {FindingKind::dead_layer, "dead_layer"},
    {FindingKind::width_unstable, "width_unstable"},
};
}  // namespace

const char* to_string(FindingKind kind) { return detail::name_of(kKinds, kind); }

namespace {
constexpr detail::Named<Severity> kSeverities[] = {
    {Severity::info, "info"}, {Severity::warning, "warning"}, {Severity::error, "error"}};
}  // namespace

const char* to_string(Severity s) { return detail::name_of(kSeverities, s); }

Severity severity_from_string(const std::string& name) {
  if (auto s = detail::value_of(kSeverities, name)) return *s;
  throw UsageError("unknown severity '" + name + "': choose from " + detail::join(detail::names_of(kSeverities)));
}

FindingKind finding_kind_from_string(const std::string& name) {
  if (auto kind = detail::value_of(kKinds, name)) return *kind;
  throw UsageError("unknown finding kind '" + name + "': choose from " + detail::join(detail::names_of(kKinds)));
}

const std::vector<FindingKind>& all_finding_kinds() {
  static const std::vector<FindingKind> v = [] {
    std::vector<FindingKind> out;
    for (const auto& k : kKinds) out.push_back(k.value);
    return out;
  }();
  return v;
}

bool has_any(const std::vector<Finding>& findings, const std::vector<FindingKind>& kinds) {
  for (const auto& f : findings)
    if (std::find(kinds.begin(), kinds.end(), f.kind) != kinds.end()) return true;
  return false;
}

std::vector<Finding> diagnose(const Trace& trace, const std::vector<double>& loss,
                              const std::vector<double>& grad_norm, const ModelTraits& traits,
                              const DiagnosisOptions& o) {
  return diagnose(trace, summarize(trace, loss, std::numeric_limits<float>::denorm_min()), loss, grad_norm, traits, o);
}

std::vector<Finding> diagnose(const Trace& trace, const RunSummary& s, const std::vector<double>& loss,
                              const std::vector<double>& grad_norm, const ModelTraits& traits,
                              const DiagnosisOptions& o) {
  const DiagnosisInput in{trace, s, loss, grad_norm, traits};
  std::vector<Finding> out = detail::depth_rule(in, o);
  for (auto& f : detail::time_rule(in, o)) out.push_back(std::move(f));
  for (auto rule : {detail::dead_units_rule, detail::saturation_rule, detail::non_finite_rule, detail::norm_growth_rule,
                    detail::unstable_loss_rule, detail::stalled_rule, detail::rank_non_finite_rule,
                    detail::ranks_out_of_sync_rule, detail::rank_outlier_rule, detail::no_gradient_rule,
                    detail::dead_layer_rule, detail::edge_of_stability_rule, detail::not_recorded_rule})
    if (auto f = rule(in, o)) out.push_back(std::move(*f));
  return out;
}

}  // namespace gradflow
