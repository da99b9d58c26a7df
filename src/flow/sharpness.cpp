#include "gradflow/sharpness.h"

#include <cmath>
#include <random>

#include <fmt/format.h>

#include "gradflow/error.h"

namespace gradflow {

namespace {

double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

void normalise(std::vector<double>& v) {
  const double n = std::sqrt(dot(v, v));
  if (!(n > 0) || !std::isfinite(n)) throw Error("the Hessian-vector product is zero or not finite: no sharpness to measure");
  for (auto& x : v) x /= n;
}

// Power iteration on H + shift·I from `v`; returns its dominant eigenvalue, with H's products
// counted in `s`.
double power_iteration(const HessianVectorProduct& hvp, std::vector<double> v, double shift, const SharpnessOptions& o,
                       Sharpness& s) {
  std::vector<double> hv;
  double lambda = 0;
  s.converged = false;
  while (s.products < o.max_products) {
    normalise(v);
    hvp(v, hv);
    ++s.products;
    if (hv.size() != v.size()) throw Error("the Hessian-vector product has the wrong size");
    for (std::size_t i = 0; i < v.size(); ++i) hv[i] += shift * v[i];
    const double next = dot(v, hv);
    if (!std::isfinite(next)) throw Error("the Hessian-vector product is not finite: no sharpness to measure");
    const bool close = s.products > 1 && std::fabs(next - lambda) <= o.rtol * std::fabs(next);
    lambda = next;
    v.swap(hv);
    if (close) {
      s.converged = true;
      break;
    }
  }
  return lambda;
}

}  // namespace

Sharpness top_hessian_eigenvalue(const HessianVectorProduct& hvp, std::size_t n, const SharpnessOptions& o) {
  if (n == 0) throw Error("no parameter: no Hessian to measure");
  std::mt19937_64 gen(o.seed);
  std::normal_distribution<double> normal;
  std::vector<double> v(n);
  for (auto& x : v) x = normal(gen);
  Sharpness s;
  const double dominant = power_iteration(hvp, v, 0.0, o, s);
  s.lambda_max = dominant;
  // The dominant eigenvalue is the most negative one: the largest is found on H − dominant·I,
  // whose eigenvalues are all >= 0.
  if (dominant < 0 && s.products < o.max_products) s.lambda_max = power_iteration(hvp, v, -dominant, o, s) + dominant;
  return s;
}

double stability_bound(double lr, double momentum) {
  if (!(lr > 0) || !std::isfinite(lr)) throw Error(fmt::format("a learning rate must be positive (got {})", lr));
  if (!(momentum >= 0 && momentum < 1)) throw Error(fmt::format("momentum must be in [0, 1) (got {})", momentum));
  return (2.0 + 2.0 * momentum) / lr;
}

}  // namespace gradflow
