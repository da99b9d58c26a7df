#pragma once
/// \file
/// Activation functions by name, for tapping hidden states with forward statistics.

#include <string>
#include <vector>

namespace gradflow {

/// The element-wise activations gradflow knows the derivative of.
enum class Activation {
  none,        ///< no forward statistics
  identity,
  sigmoid,
  tanh,
  relu,
  leaky_relu,  ///< negative slope 0.01 (LibTorch's default)
  elu,         ///< alpha 1
  selu,
  gelu,        ///< needs the pre-activation to know its derivative
  softsign,
};

/// Name as used in specs and JSON ("sigmoid", "leaky_relu", ...).
const char* to_string(Activation act);
/// Inverse of to_string; throws gradflow::UsageError listing the valid names.
Activation activation_from_string(const std::string& name);
/// Every activation except `none`, in declaration order.
const std::vector<Activation>& all_activations();
/// Sigmoid, tanh and softsign: bounded functions whose derivative vanishes for large inputs.
bool is_squashing(Activation act);
/// Largest value the activation's derivative takes (0.25 for the sigmoid, 1 for tanh and ReLU,
/// about 1.0507 for SELU, about 1.129 for GELU).
double max_derivative(Activation act);

}  // namespace gradflow
