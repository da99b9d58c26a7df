#include "models/parametrise.h"

#include <cmath>
#include <map>

#include <torch/torch.h>

#include "models/generator_guard.h"
#include "models/network.h"

namespace gradflow::models {

namespace {

bool has_option(const ResolvedSpec& spec, const char* key) { return spec.values.count(key) > 0; }

std::vector<ParameterShape> shapes_of(Network& net) {
  std::vector<ParameterShape> out;
  for (const auto& p : net.parameters()) out.push_back({p.sizes().vec(), false});
  return out;
}

}  // namespace

Parametrisation parametrisation_of(const ResolvedSpec& spec) {
  return has_option(spec, "param") ? parametrisation_from_string(spec.get("param")) : Parametrisation::sp;
}

void parametrise_readout(at::Tensor& weight, const ResolvedSpec& spec) {
  const Parametrisation p = parametrisation_of(spec);
  if (p == Parametrisation::sp) return;
  const auto [fan_in, fan_out] = fans({weight.sizes().vec(), false});
  const WeightShape s{fan_in, fan_out, static_cast<double>(spec.get_int("base_width")), fan_out};
  // The optimizer does not change a weight's variance: SGD's row stands for both.
  const double ratio = weight_rule(p, WeightKind::readout, OptimizerKind::sgd, s).init_variance /
                       weight_rule(Parametrisation::sp, WeightKind::readout, OptimizerKind::sgd, s).init_variance;
  torch::NoGradGuard g;
  weight.mul_(std::sqrt(ratio));
}

double attention_scale_of(const ResolvedSpec& spec) {
  const double heads = static_cast<double>(spec.get_int("heads"));
  return attention_scale(parametrisation_of(spec), static_cast<double>(spec.get_int("width")) / heads,
                         static_cast<double>(spec.get_int("base_width")) / heads);
}

ParameterLayout parameter_layout(const ResolvedSpec& spec, std::int64_t in, std::int64_t out) {
  CpuGeneratorGuard put_back;
  const std::int64_t base = spec.get_int("base_width");
  ParameterLayout layout;
  layout.base_shapes = shapes_of(*make_network(spec.with_width(base), in, out));
  layout.kinds = weight_kinds(layout.base_shapes, shapes_of(*make_network(spec.with_width(2 * base), in, out)));
  return layout;
}

std::vector<ParameterGroup> parameter_groups(const ResolvedSpec& spec, Network& net, OptimizerKind optimizer, const ParameterLayout& layout) {
  const Parametrisation p = parametrisation_of(spec);
  const auto params = net.parameters();
  if (p == Parametrisation::sp) return {{params, 1.0}};
  std::map<double, std::size_t> slot;
  std::vector<ParameterGroup> groups;
  for (std::size_t i = 0; i < params.size(); ++i) {
    const auto [fan_in, fan_out] = fans({params[i].sizes().vec(), false});
    const auto [base_in, base_out] = fans(layout.base_shapes.at(i));
    const double m = weight_rule(p, layout.kinds.at(i), optimizer, {fan_in, fan_out, base_in, base_out}).lr_multiplier;
    auto [it, fresh] = slot.emplace(m, groups.size());
    if (fresh) groups.push_back({{}, m});
    groups[it->second].params.push_back(params[i]);
  }
  return groups;
}

}  // namespace gradflow::models
