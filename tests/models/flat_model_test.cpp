// The Hessian-vector product and λ_max of a built-in network on its data set, against finite
// differences of the gradient and the explicit Hessian's eigenvalues (float64).
#include "models/flat_model.h"

#include <cmath>

#include <torch/torch.h>

#include "torch_test_util.h"

namespace gradflow::models {
namespace {

class FlatModelTest : public test::TorchTest {};

// (∇L(θ + εv) − ∇L(θ − εv)) / 2ε: H·v to O(ε²).
std::vector<double> central_difference(const LossGradient& f, const std::vector<double>& theta, const std::vector<double>& v,
                                       double eps) {
  std::vector<double> plus(theta), minus(theta), gp, gm;
  for (std::size_t i = 0; i < theta.size(); ++i) plus[i] += eps * v[i], minus[i] -= eps * v[i];
  f(plus, gp);
  f(minus, gm);
  std::vector<double> d(theta.size());
  for (std::size_t i = 0; i < d.size(); ++i) d[i] = (gp[i] - gm[i]) / (2 * eps);
  return d;
}

double relative_error(const std::vector<double>& got, const std::vector<double>& want) {
  double diff = 0, norm = 0;
  for (std::size_t i = 0; i < got.size(); ++i) diff += (got[i] - want[i]) * (got[i] - want[i]), norm += want[i] * want[i];
  return std::sqrt(diff / norm);
}

// Smooth activations: a difference of the gradient across a ReLU's kink is no second derivative.
TEST_F(FlatModelTest, HessianVectorProductsEqualFiniteDifferencesOfTheGradient) {
  for (const char* spec : {"mlp:depth=3,width=8,act=tanh", "rnn:hidden=6", "cnn:depth=3,channels=4,act=tanh"}) {
    FlatModel m(resolve_spec(spec), "", 32, 6, 1);
    const auto theta = m.theta();
    const auto hvp = m.hessian_at(theta);
    torch::manual_seed(2);
    const auto r = torch::randn({m.size()}, torch::kDouble);
    const std::vector<double> v(r.data_ptr<double>(), r.data_ptr<double>() + r.numel());
    std::vector<double> hv;
    hvp(v, hv);
    EXPECT_LT(relative_error(hv, central_difference(m.loss_gradient(), theta, v, 1e-4)), 1e-6) << spec;
  }
}

TEST_F(FlatModelTest, PowerIterationEqualsTheExplicitHessiansTopEigenvalue) {
  FlatModel m(resolve_spec("mlp:depth=3,width=6,act=tanh"), "", 64, 6, 4);
  const auto theta = m.theta();
  // The explicit Hessian, column by column from differences of the gradient, made symmetric.
  const auto n = static_cast<std::size_t>(m.size());
  const auto f = m.loss_gradient();
  auto h = torch::zeros({m.size(), m.size()}, torch::kDouble);
  for (std::size_t j = 0; j < n; ++j) {
    std::vector<double> e(n, 0.0);
    e[j] = 1.0;
    const auto col = central_difference(f, theta, e, 1e-4);
    h.select(1, static_cast<std::int64_t>(j)).copy_(torch::tensor(col, torch::kDouble));
  }
  const double top = torch::linalg_eigvalsh((h + h.t()) / 2).max().item<double>();
  SharpnessOptions o;
  o.max_products = 2000;
  o.rtol = 1e-10;
  const Sharpness s = m.sharpness_at(theta, o);
  EXPECT_NEAR(s.lambda_max, top, 1e-4 * std::fabs(top));
  EXPECT_TRUE(s.converged);
  // Measuring changes nothing: θ is as it was.
  EXPECT_EQ(m.theta(), theta);
}

}  // namespace
}  // namespace gradflow::models
