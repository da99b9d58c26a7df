#pragma once
/// \file
/// Sharpness: the largest eigenvalue λ_max of the loss Hessian, from Hessian-vector products,
/// and the step size it allows. Gradient descent with step η follows the gradient flow while
/// η·λ_max < 2; under full-batch descent the sharpness tends to rise until it hovers at 2/η
/// (the edge of stability, Cohen et al. 2021). No LibTorch.

#include <cstdint>
#include <functional>
#include <vector>

namespace gradflow {

/// Writes H·v into `hv` (resized by the callee) for the Hessian H of a loss at a fixed point.
using HessianVectorProduct = std::function<void(const std::vector<double>& v, std::vector<double>& hv)>;

/// How hard the power iteration tries.
struct SharpnessOptions {
  int max_products = 100;  ///< Hessian-vector products at most
  double rtol = 1e-6;      ///< done once the estimate moves by less than this, relative
  std::uint64_t seed = 0;  ///< of the start vector
};

/// One measurement.
struct Sharpness {
  double lambda_max = 0;   ///< the Hessian's largest eigenvalue
  int products = 0;        ///< Hessian-vector products spent (each about two backward passes)
  bool converged = false;  ///< within rtol before max_products
};

/// λ_max of the n×n Hessian behind `hvp` by power iteration on the Rayleigh quotient. When the
/// eigenvalue largest in magnitude is negative (a saddle's), a second iteration on H − λI finds the
/// largest one. Throws gradflow::Error for n = 0 or a product that is not finite.
Sharpness top_hessian_eigenvalue(const HessianVectorProduct& hvp, std::size_t n, const SharpnessOptions& options = {});

/// The largest sharpness gradient descent with step `lr` is stable at: 2/η, and (2 + 2β)/η with
/// heavy-ball momentum β (a quadratic's stability bound). Throws gradflow::Error unless lr > 0
/// and 0 <= momentum < 1.
double stability_bound(double lr, double momentum = 0.0);

}  // namespace gradflow
