#include "gradflow/activation.h"

#include "gradflow/error.h"
#include "util/text.h"

namespace gradflow {

namespace {
struct Entry {
  Activation act;
  const char* name;
  double max_deriv;
};
// GELU's derivative peaks at z = sqrt(2): Phi(z) + z phi(z) = 1.1289...
constexpr Entry kTable[] = {
    {Activation::none, "none", 1.0},           {Activation::identity, "identity", 1.0},
    {Activation::sigmoid, "sigmoid", 0.25},    {Activation::tanh, "tanh", 1.0},
    {Activation::relu, "relu", 1.0},           {Activation::leaky_relu, "leaky_relu", 1.0},
    {Activation::elu, "elu", 1.0},             {Activation::selu, "selu", 1.0507009873554805},
    {Activation::gelu, "gelu", 1.1289}, {Activation::softsign, "softsign", 1.0},
};
}  // namespace

const char* to_string(Activation act) {
  for (const auto& e : kTable)
    if (e.act == act) return e.name;
  return "none";
}

Activation activation_from_string(const std::string& name) {
  for (const auto& e : kTable)
    if (name == e.name && e.act != Activation::none) return e.act;
  std::vector<std::string> valid;
  for (const auto& e : kTable)
    if (e.act != Activation::none) valid.emplace_back(e.name);
  throw UsageError("unknown activation '" + name + "': choose one of " + detail::join(valid));
}

bool is_squashing(Activation act) {
  return act == Activation::sigmoid || act == Activation::tanh || act == Activation::softsign;
}

const std::vector<Activation>& all_activations() {
  static const std::vector<Activation> all = [] {
    std::vector<Activation> v;
    for (const auto& e : kTable)
      if (e.act != Activation::none) v.push_back(e.act);
    return v;
  }();
  return all;
}

double max_derivative(Activation act) {
  for (const auto& e : kTable)
    if (e.act == act) return e.max_deriv;
  return 1.0;
}

}  // namespace gradflow
