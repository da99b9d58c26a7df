#include "gradflow/parametrisation.h"

#include <cmath>

#include "gradflow/error.h"
#include "util/enum_names.h"
#include "util/text.h"

namespace gradflow {

namespace {

constexpr detail::Named<Parametrisation> kParametrisations[] = {{Parametrisation::sp, "sp"}, {Parametrisation::mup, "mup"}};
constexpr detail::Named<WeightKind> kKinds[] = {
    {WeightKind::fixed, "fixed"}, {WeightKind::input, "input"}, {WeightKind::hidden, "hidden"}, {WeightKind::readout, "readout"}};
constexpr detail::Named<OptimizerKind> kOptimizers[] = {{OptimizerKind::sgd, "sgd"}, {OptimizerKind::adam, "adam"}};

// Table 3's learning rates; a width-free weight keeps η under either optimizer.
double mup_lr(WeightKind kind, OptimizerKind optimizer, const WeightShape& s) {
  const double in = s.fan_in / s.base_fan_in, out = s.fan_out / s.base_fan_out;
  switch (kind) {
    case WeightKind::fixed: return 1.0;
    case WeightKind::input: return optimizer == OptimizerKind::sgd ? out : 1.0;
    case WeightKind::hidden: return optimizer == OptimizerKind::sgd ? 1.0 : 1.0 / in;
    case WeightKind::readout: return 1.0 / in;
  }
  return 1.0;
}

}  // namespace

const char* to_string(Parametrisation p) { return detail::name_of(kParametrisations, p); }
const char* to_string(WeightKind k) { return detail::name_of(kKinds, k); }
const char* to_string(OptimizerKind k) { return detail::name_of(kOptimizers, k); }
std::optional<OptimizerKind> optimizer_kind_from_string(const std::string& name) { return detail::value_of(kOptimizers, name); }

Parametrisation parametrisation_from_string(const std::string& name) {
  if (auto p = detail::value_of(kParametrisations, name)) return *p;
  throw UsageError("unknown parametrisation '" + name + "': choose " + detail::join(detail::names_of(kParametrisations)));
}

WeightKind weight_kind_from_string(const std::string& name) {
  if (auto k = detail::value_of(kKinds, name)) return *k;
  throw Error("unknown weight kind '" + name + "': expected " + detail::join(detail::names_of(kKinds)));
}

WeightRule weight_rule(Parametrisation p, WeightKind kind, OptimizerKind optimizer, const WeightShape& s) {
  WeightRule r;
  r.init_variance = 1.0 / s.fan_in;
  if (p == Parametrisation::sp) return r;
  if (kind == WeightKind::readout) r.init_variance *= s.base_fan_in / s.fan_in;
  r.lr_multiplier = mup_lr(kind, optimizer, s);
  return r;
}

WeightRule with_output_multiplier(const WeightRule& rule, double multiplier, OptimizerKind optimizer) {
  if (!(multiplier > 0) || !std::isfinite(multiplier)) throw Error("an output multiplier must be a positive number");
  const double c = (rule.output_multiplier / multiplier) * (rule.output_multiplier / multiplier);
  WeightRule r;
  r.init_variance = rule.init_variance * c;
  r.output_multiplier = multiplier;
  r.lr_multiplier = rule.lr_multiplier * (optimizer == OptimizerKind::sgd ? c : std::sqrt(c));
  return r;
}

double attention_scale(Parametrisation p, double d_head, double base_d_head) {
  return p == Parametrisation::sp ? 1.0 / std::sqrt(d_head) : std::sqrt(base_d_head) / d_head;
}

std::pair<double, double> fans(const ParameterShape& shape) {
  const auto& s = shape.sizes;
  if (s.empty()) return {1.0, 1.0};
  if (s.size() == 1) return {1.0, static_cast<double>(s[0])};
  if (shape.embedding) return {static_cast<double>(s[0]), static_cast<double>(s[1])};
  double field = 1.0;
  for (std::size_t i = 2; i < s.size(); ++i) field *= static_cast<double>(s[i]);
  return {static_cast<double>(s[1]) * field, static_cast<double>(s[0]) * field};
}

std::vector<WeightKind> weight_kinds(const std::vector<ParameterShape>& at_a, const std::vector<ParameterShape>& at_b) {
  if (at_a.size() != at_b.size())
    throw Error("the models at two widths have " + std::to_string(at_a.size()) + " and " + std::to_string(at_b.size()) +
                " parameters: a width sweep needs the same parameters at every width");
  std::vector<WeightKind> kinds;
  for (std::size_t i = 0; i < at_a.size(); ++i) {
    const auto& a = at_a[i].sizes;
    const auto& b = at_b[i].sizes;
    if (a.size() != b.size())
      throw Error("parameter " + std::to_string(i) + " has " + std::to_string(a.size()) + " dimensions at one width and " +
                  std::to_string(b.size()) + " at another");
    std::vector<bool> grows(a.size());
    int growing = 0;
    for (std::size_t d = 0; d < a.size(); ++d) growing += (grows[d] = a[d] != b[d]) ? 1 : 0;
    // In [out, in, ...] the fan-in is dimension 1; an embedding table's width is its dimension 1 too.
    const bool fan_in_only = a.size() >= 2 && !at_a[i].embedding && grows[1] && !grows[0];
    if (growing == 0) kinds.push_back(WeightKind::fixed);
    else if (a.size() >= 2 && grows[0] && grows[1]) kinds.push_back(WeightKind::hidden);
    else kinds.push_back(fan_in_only ? WeightKind::readout : WeightKind::input);
  }
  return kinds;
}

}  // namespace gradflow
