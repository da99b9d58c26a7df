#include "gradflow/flow.h"

#include <cmath>

#include <gtest/gtest.h>

#include "gradflow/error.h"
#include "test_util.h"

namespace gradflow {
namespace {

// L(θ) = ½ θᵀAθ with A = Q D Qᵀ (Q a Householder reflection, D from 0.1 to 10): the flow is
// θ(t) = Q e^{−Dt} Qᵀ θ(0).
struct Quadratic {
  std::vector<double> d = {0.1, 0.5, 1.0, 3.0, 10.0};
  std::vector<double> v = {1.0, -2.0, 0.5, 1.5, -1.0};
  std::size_t n() const { return d.size(); }
  std::vector<double> q_apply(const std::vector<double>& x) const {  // Q x = x − 2 v (vᵀx)/(vᵀv)
    double vx = 0, vv = 0;
    for (std::size_t i = 0; i < n(); ++i) vx += v[i] * x[i], vv += v[i] * v[i];
    std::vector<double> y(n());
    for (std::size_t i = 0; i < n(); ++i) y[i] = x[i] - 2 * v[i] * vx / vv;
    return y;
  }
  double operator()(const std::vector<double>& th, std::vector<double>& g) const {
    auto z = q_apply(th);  // Qᵀ = Q
    double loss = 0;
    for (std::size_t i = 0; i < n(); ++i) {
      loss += 0.5 * d[i] * z[i] * z[i];
      z[i] *= d[i];
    }
    g = q_apply(z);
    return loss;
  }
  std::vector<double> exact(const std::vector<double>& th0, double t) const {
    auto z = q_apply(th0);
    for (std::size_t i = 0; i < n(); ++i) z[i] *= std::exp(-d[i] * t);
    return q_apply(z);
  }
};

TEST(Flow, MatchesTheClosedFormOnAQuadratic) {
  const Quadratic q;
  const std::vector<double> th0 = {1.0, -0.5, 2.0, 0.3, -1.2};
  const std::vector<double> times = {0.0, 0.1, 0.5, 1.0, 2.0, 5.0};
  FlowStats stats;
  const auto pts = gradient_flow(q, th0, times, {}, &stats);
  ASSERT_EQ(pts.size(), times.size());
  for (const auto& p : pts) {
    const auto e = q.exact(th0, p.t);
    double num = 0, den = 0;
    for (std::size_t i = 0; i < e.size(); ++i) num += (p.theta[i] - e[i]) * (p.theta[i] - e[i]), den += e[i] * e[i];
    EXPECT_LE(std::sqrt(num / den), 1e-6) << "t=" << p.t;
    std::vector<double> g;
    EXPECT_TRUE(test::rel_close(p.loss, q(e, g), 1e-6)) << "t=" << p.t;
  }
  EXPECT_GT(stats.accepted, 5);
}

TEST(Flow, GradientDescentErrorShrinksLinearlyInTheStep) {
  const Quadratic q;
  const std::vector<double> th0 = {1.0, -0.5, 2.0, 0.3, -1.2};
  const auto runs = compare_descent_with_flow(q, th0, 1.0, {0.001, 0.002, 0.004, 0.008}, {}, nullptr, nullptr);
  for (std::size_t i = 1; i < runs.size(); ++i) {
    // Doubling the step roughly doubles the error: Euler's global error is O(lr).
    const double ratio = runs[i].max_distance / runs[i - 1].max_distance;
    EXPECT_GT(ratio, 1.8);
    EXPECT_LT(ratio, 2.2);
  }
  const auto order = fitted_order(runs);
  ASSERT_TRUE(order.has_value());
  EXPECT_NEAR(*order, 1.0, 0.05);
  // GD's own answer is the closed form of the Euler map: θ_k = (I − lr A)^k θ_0.
  const auto gd = gradient_descent(q, th0, 0.01, 3);
  auto z = q.q_apply(th0);
  for (std::size_t i = 0; i < z.size(); ++i) z[i] *= std::pow(1 - 0.01 * q.d[i], 3);
  const auto expect = q.q_apply(z);
  for (std::size_t i = 0; i < expect.size(); ++i) EXPECT_NEAR(gd.back().theta[i], expect[i], 1e-12);
}

TEST(Flow, LargeStepsOscillateAndDivergeWhereTheoryPredicts) {
  // Stable while lr < 2/λmax = 0.2; beyond it GD oscillates and blows up along the stiff direction.
  const Quadratic q;
  const std::vector<double> th0 = {1.0, -0.5, 2.0, 0.3, -1.2};
  // 1 - 0.25 * 10 = -1.5: the stiff component flips sign and grows 1.5x every step.
  const auto runs = compare_descent_with_flow(q, th0, 5.0, {0.01, 0.15, 0.25}, {}, nullptr, nullptr);
  EXPECT_FALSE(runs[0].diverged);
  EXPECT_FALSE(runs[1].diverged);
  EXPECT_TRUE(runs[2].diverged);
  ASSERT_TRUE(runs[2].departs_at.has_value());
  EXPECT_FALSE(runs[0].departs_at.has_value());
  EXPECT_GT(runs[2].max_loss_gap, 10 * runs[1].max_loss_gap);
  EXPECT_LT(runs[0].max_distance, runs[1].max_distance);
}

TEST(Flow, BadArgumentsAreUsageErrors) {
  const Quadratic q;
  const std::vector<double> th0(5, 1.0);
  EXPECT_THROW(compare_descent_with_flow(q, th0, 0.0, {0.1}, {}, nullptr, nullptr), UsageError);
  EXPECT_THROW(compare_descent_with_flow(q, th0, 1.0, {-0.1}, {}, nullptr, nullptr), UsageError);
  EXPECT_THROW(compare_descent_with_flow(q, th0, 1.0, {5.0}, {}, nullptr, nullptr), UsageError);
  const LossGradient nan = [](const std::vector<double>& t, std::vector<double>& g) {
    g.assign(t.size(), 0.0);
    return std::nan("");
  };
  EXPECT_THROW(gradient_flow(nan, th0, {1.0}), Error);
}

}  // namespace
}  // namespace gradflow
