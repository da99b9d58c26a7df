#include "gradflow/flow.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include <fmt/format.h>

#include "gradflow/error.h"
#include "util/line_fit.h"

namespace gradflow {

namespace {

double dist(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += (a[i] - b[i]) * (a[i] - b[i]);
  return std::sqrt(s);
}

// Dormand & Prince (1980), the RK5(4)7M pair.
constexpr double c2 = 1.0 / 5, c3 = 3.0 / 10, c4 = 4.0 / 5, c5 = 8.0 / 9;
constexpr double a21 = 1.0 / 5;
constexpr double a31 = 3.0 / 40, a32 = 9.0 / 40;
constexpr double a41 = 44.0 / 45, a42 = -56.0 / 15, a43 = 32.0 / 9;
constexpr double a51 = 19372.0 / 6561, a52 = -25360.0 / 2187, a53 = 64448.0 / 6561, a54 = -212.0 / 729;
constexpr double a61 = 9017.0 / 3168, a62 = -355.0 / 33, a63 = 46732.0 / 5247, a64 = 49.0 / 176, a65 = -5103.0 / 18656;
constexpr double b1 = 35.0 / 384, b3 = 500.0 / 1113, b4 = 125.0 / 192, b5 = -2187.0 / 6784, b6 = 11.0 / 84;
// Differences between the 5th- and the embedded 4th-order weights.
constexpr double e1 = 71.0 / 57600, e3 = -71.0 / 16695, e4 = 71.0 / 1920, e5 = -17253.0 / 339200, e6 = 22.0 / 525,
                 e7 = -1.0 / 40;

}  // namespace

std::vector<FlowPoint> gradient_flow(const LossGradient& f, const std::vector<double>& theta0, const std::vector<double>& times,
                                     const FlowOptions& o, FlowStats* stats) {
  FlowStats local;
  FlowStats& st = stats ? *stats : local;
  const std::size_t n = theta0.size();
  std::vector<double> y = theta0, g(n);
  // k_i hold dθ/dt = −∇L at the stages.
  std::vector<double> k1(n), k2(n), k3(n), k4(n), k5(n), k6(n), k7(n), tmp(n), ynew(n);
  auto rhs = [&](const std::vector<double>& x, std::vector<double>& k) {
    const double loss = f(x, g);
    ++st.evaluations;
    if (!std::isfinite(loss)) throw Error("the loss became non-finite while integrating the gradient flow");
    for (std::size_t i = 0; i < n; ++i) k[i] = -g[i];
    return loss;
  };
  double loss = rhs(y, k1);
  std::vector<FlowPoint> out;
  double t = 0, h = o.first_step;
  std::size_t next = 0;
  while (next < times.size() && times[next] <= 0) out.push_back({times[next++], loss, y});
  while (next < times.size()) {
    if (st.accepted + st.rejected >= o.max_steps) throw Error("the gradient flow needed more than max_steps steps");
    const double target = times[next];
    const bool hits = t + h >= target;
    const double hs = hits ? target - t : h;
    auto stage = [&](std::vector<double>& k, std::initializer_list<std::pair<double, const std::vector<double>*>> terms) {
      for (std::size_t i = 0; i < n; ++i) {
        double s = y[i];
        for (const auto& [a, kv] : terms) s += hs * a * (*kv)[i];
        tmp[i] = s;
      }
      rhs(tmp, k);
    };
    stage(k2, {{a21, &k1}});
    stage(k3, {{a31, &k1}, {a32, &k2}});
    stage(k4, {{a41, &k1}, {a42, &k2}, {a43, &k3}});
    stage(k5, {{a51, &k1}, {a52, &k2}, {a53, &k3}, {a54, &k4}});
    stage(k6, {{a61, &k1}, {a62, &k2}, {a63, &k3}, {a64, &k4}, {a65, &k5}});
    for (std::size_t i = 0; i < n; ++i) ynew[i] = y[i] + hs * (b1 * k1[i] + b3 * k3[i] + b4 * k4[i] + b5 * k5[i] + b6 * k6[i]);
    const double new_loss = rhs(ynew, k7);
    double err = 0;
    for (std::size_t i = 0; i < n; ++i) {
      const double e = hs * (e1 * k1[i] + e3 * k3[i] + e4 * k4[i] + e5 * k5[i] + e6 * k6[i] + e7 * k7[i]);
      const double sc = o.atol + o.rtol * std::max(std::fabs(y[i]), std::fabs(ynew[i]));
      err += (e / sc) * (e / sc);
    }
    err = n ? std::sqrt(err / static_cast<double>(n)) : 0.0;
    const double factor = err == 0 ? 5.0 : std::clamp(0.9 * std::pow(err, -0.2), 0.2, 5.0);
    if (err <= 1.0) {
      ++st.accepted;
      t = hits ? target : t + hs;
      y.swap(ynew);
      k1.swap(k7);  // first same as last
      loss = new_loss;
      while (next < times.size() && times[next] <= t + 1e-15 * std::max(1.0, t)) out.push_back({times[next++], loss, y});
      if (!hits) h = hs * factor;
      else h = std::max(h, hs * factor);  // a step cut short to hit a sample says nothing about h
    } else {
      ++st.rejected;
      h = hs * factor;
    }
  }
  return out;
}

std::vector<FlowPoint> gradient_descent(const LossGradient& f, const std::vector<double>& theta0, double lr, std::int64_t steps) {
  std::vector<double> th = theta0, g(theta0.size());
  std::vector<FlowPoint> out;
  for (std::int64_t k = 0; k <= steps; ++k) {
    const double loss = f(th, g);
    out.push_back({static_cast<double>(k) * lr, loss, th});
    if (!std::isfinite(loss)) break;
    for (std::size_t i = 0; i < th.size(); ++i) th[i] -= lr * g[i];
  }
  return out;
}

std::vector<DescentVsFlow> compare_descent_with_flow(const LossGradient& f, const std::vector<double>& theta0, double time,
                                                     const std::vector<double>& lrs, const FlowOptions& o,
                                                     std::vector<FlowPoint>* flow_out, FlowStats* stats) {
  if (!(time > 0)) throw UsageError("the flow time must be positive");
  std::vector<double> times = {0.0};
  std::vector<std::int64_t> steps;
  for (double lr : lrs) {
    if (!(lr > 0)) throw UsageError("learning rates must be positive");
    const auto k = static_cast<std::int64_t>(std::llround(time / lr));
    if (k < 1)
      throw UsageError(fmt::format("learning rate {:g} is larger than the flow time {:g}: a gradient-descent step must fit in it", lr, time));
    if (k > 1000000)
      throw UsageError(fmt::format("learning rate {:g} needs over a million steps to reach the flow time {:g}", lr, time));
    steps.push_back(k);
    for (std::int64_t i = 1; i <= k; ++i) times.push_back(static_cast<double>(i) * lr);
  }
  std::sort(times.begin(), times.end());
  times.erase(std::unique(times.begin(), times.end(), [](double a, double b) { return std::fabs(a - b) <= 1e-12 * std::max(1.0, b); }),
              times.end());
  const auto flow = gradient_flow(f, theta0, times, o, stats);
  auto at = [&](double t) -> const FlowPoint& {
    auto it = std::lower_bound(flow.begin(), flow.end(), t - 1e-12 * std::max(1.0, t),
                               [](const FlowPoint& p, double v) { return p.t < v; });
    return it == flow.end() ? flow.back() : *it;
  };
  std::vector<DescentVsFlow> out;
  for (std::size_t r = 0; r < lrs.size(); ++r) {
    DescentVsFlow d;
    d.lr = lrs[r];
    d.steps = steps[r];
    const auto gd = gradient_descent(f, theta0, d.lr, d.steps);
    const double start_loss = gd.front().loss;
    for (std::size_t k = 0; k < gd.size(); ++k) {
      const auto& fp = at(gd[k].t);
      const bool finite = std::isfinite(gd[k].loss);
      const double dd = finite ? dist(gd[k].theta, fp.theta) : std::numeric_limits<double>::infinity();
      d.t.push_back(gd[k].t);
      d.distance.push_back(dd);
      d.loss_gd.push_back(gd[k].loss);
      d.loss_flow.push_back(fp.loss);
      d.max_distance = std::max(d.max_distance, dd);
      d.max_loss_gap = std::max(d.max_loss_gap, finite ? std::fabs(gd[k].loss - fp.loss) : std::numeric_limits<double>::infinity());
      if (!finite || gd[k].loss > 10 * std::max(start_loss, 1e-300)) d.diverged = true;
      if (!d.departs_at) {
        const double moved = dist(fp.theta, theta0);
        if (!finite) {
          d.departs_at = gd[k].t;
          d.departs_why = "the loss became non-finite";
        } else if (k > 0 && gd[k].loss > gd[k - 1].loss * (1 + 1e-9)) {
          d.departs_at = gd[k].t;
          d.departs_why = "the loss rose (oscillation)";
        } else if (moved > 0 && dd > 0.1 * moved) {
          d.departs_at = gd[k].t;
          d.departs_why = "the distance to the flow passed 10% of how far the flow moved";
        }
      }
    }
    d.final_distance = d.distance.back();
    d.final_loss_gap = std::isfinite(d.loss_gd.back()) ? std::fabs(d.loss_gd.back() - d.loss_flow.back())
                                                        : std::numeric_limits<double>::infinity();
    out.push_back(std::move(d));
  }
  if (flow_out) *flow_out = flow;
  return out;
}

std::optional<double> DescentVsFlow::final_sharpness() const {
  const double from = 0.8 * lr * static_cast<double>(steps);
  double sum = 0;
  int n = 0;
  for (std::size_t k = 0; k < sharpness.size() && k < sharpness_t.size(); ++k)
    if (sharpness_t[k] >= from) sum += sharpness[k], ++n;
  if (n == 0) return std::nullopt;
  return sum / n;
}

std::optional<double> fitted_order(const std::vector<DescentVsFlow>& runs) {
  std::vector<double> x, y;
  for (const auto& r : runs)
    if (!r.diverged && r.max_distance > 0 && std::isfinite(r.max_distance)) {
      x.push_back(std::log(r.lr));
      y.push_back(std::log(r.max_distance));
    }
  return detail::least_squares_slope(x, y);
}

}  // namespace gradflow
