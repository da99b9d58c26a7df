// λ_max by power iteration, against matrices whose eigenvalues are known.
#include "gradflow/sharpness.h"

#include <cmath>
#include <random>

#include <gtest/gtest.h>

#include "gradflow/error.h"

namespace gradflow {
namespace {

// Q·diag(eigenvalues)·Qᵀ for a random orthogonal Q (Gram–Schmidt on Gaussian columns).
std::vector<std::vector<double>> with_eigenvalues(const std::vector<double>& eigenvalues, std::uint64_t seed) {
  const std::size_t n = eigenvalues.size();
  std::mt19937_64 gen(seed);
  std::normal_distribution<double> normal;
  std::vector<std::vector<double>> q(n, std::vector<double>(n));
  for (std::size_t c = 0; c < n; ++c) {
    for (auto& x : q[c]) x = normal(gen);
    for (std::size_t p = 0; p < c; ++p) {
      double d = 0;
      for (std::size_t i = 0; i < n; ++i) d += q[c][i] * q[p][i];
      for (std::size_t i = 0; i < n; ++i) q[c][i] -= d * q[p][i];
    }
    double norm = 0;
    for (double x : q[c]) norm += x * x;
    for (auto& x : q[c]) x /= std::sqrt(norm);
  }
  std::vector<std::vector<double>> h(n, std::vector<double>(n, 0.0));
  for (std::size_t c = 0; c < n; ++c)
    for (std::size_t i = 0; i < n; ++i)
      for (std::size_t j = 0; j < n; ++j) h[i][j] += eigenvalues[c] * q[c][i] * q[c][j];
  return h;
}

HessianVectorProduct product_with(const std::vector<std::vector<double>>& h, int* calls = nullptr) {
  return [&h, calls](const std::vector<double>& v, std::vector<double>& hv) {
    if (calls) ++*calls;
    hv.assign(v.size(), 0.0);
    for (std::size_t i = 0; i < v.size(); ++i)
      for (std::size_t j = 0; j < v.size(); ++j) hv[i] += h[i][j] * v[j];
  };
}

TEST(Sharpness, PowerIterationFindsTheLargestEigenvalue) {
  const auto h = with_eigenvalues({7.5, 6.0, 3.0, 1.0, 0.5, -0.25, -2.0, 0.0}, 3);
  int calls = 0;
  SharpnessOptions o;
  o.max_products = 1000;
  o.rtol = 1e-12;
  const Sharpness s = top_hessian_eigenvalue(product_with(h, &calls), h.size(), o);
  EXPECT_NEAR(s.lambda_max, 7.5, 7.5 * 1e-6);
  EXPECT_TRUE(s.converged);
  EXPECT_EQ(s.products, calls);
  // The default tolerance stops far earlier, still within 1e-4.
  const Sharpness quick = top_hessian_eigenvalue(product_with(h), h.size());
  EXPECT_NEAR(quick.lambda_max, 7.5, 7.5 * 1e-4);
  EXPECT_LT(quick.products, s.products);
}

TEST(Sharpness, AtASaddleTheLargestNotTheDominantEigenvalue) {
  // The eigenvalue largest in magnitude is −9: power iteration alone would return it.
  const auto h = with_eigenvalues({-9.0, 2.0, 1.5, -1.0, 0.25}, 5);
  SharpnessOptions o;
  o.max_products = 2000;
  o.rtol = 1e-12;
  EXPECT_NEAR(top_hessian_eigenvalue(product_with(h), h.size(), o).lambda_max, 2.0, 2.0 * 1e-5);
}

TEST(Sharpness, StabilityBoundsAndBadInput) {
  EXPECT_DOUBLE_EQ(stability_bound(0.01), 200.0);
  EXPECT_DOUBLE_EQ(stability_bound(0.1, 0.9), 38.0);  // (2 + 2β)/η
  EXPECT_THROW(stability_bound(0.0), Error);
  EXPECT_THROW(stability_bound(0.1, 1.0), Error);
  EXPECT_THROW(top_hessian_eigenvalue(product_with({}), 0), Error);
  const std::vector<std::vector<double>> zero(3, std::vector<double>(3, 0.0));
  EXPECT_THROW(top_hessian_eigenvalue(product_with(zero), 3), Error);
}

}  // namespace
}  // namespace gradflow
