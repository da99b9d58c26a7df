#include "models/flow_run.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include <torch/torch.h>

#include "gradflow/error.h"
#include "models/flat_model.h"

namespace gradflow::models {

namespace {

using Clock = std::chrono::steady_clock;

double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

void check_options(const FlowRunOptions& o) {
  if (o.samples < 2 || o.samples > 100000) throw UsageError("--samples must be between 2 and 100000");
  if (o.grid < 0 || o.grid > 101) throw UsageError("--grid must be between 0 and 101");
  if (o.lrs.empty()) throw UsageError("--lr needs at least one learning rate");
  if (o.sharpness_points < 0 || o.sharpness_points > 1000) throw UsageError("--sharpness must be between 0 and 1000 points");
}

// The picture's plane through θ(0): two random directions, each layer's block scaled to that
// layer's norm (Li et al. 2018) so that one unit means "as large as the weights" everywhere.
class Plane {
 public:
  Plane(FlatModel& model, std::vector<double> theta0) : theta0_(std::move(theta0)) {
    std::tie(d1_, d2_) = model.layer_scaled_directions();
    g11_ = dot(d1_, d1_), g12_ = dot(d1_, d2_), g22_ = dot(d2_, d2_);
    det_ = g11_ * g22_ - g12_ * g12_;
  }
  // A vector's coordinates in the plane (least squares).
  std::pair<double, double> project(const std::vector<double>& v) const {
    const double r1 = dot(d1_, v), r2 = dot(d2_, v);
    if (!(std::fabs(det_) > 0)) return {0.0, 0.0};
    return {(g22_ * r1 - g12_ * r2) / det_, (g11_ * r2 - g12_ * r1) / det_};
  }
  // θ's offset from θ(0), in the plane.
  std::pair<double, double> offset(const std::vector<double>& th) const {
    std::vector<double> v(th.size());
    for (std::size_t i = 0; i < th.size(); ++i) v[i] = th[i] - theta0_[i];
    return project(v);
  }
  std::vector<double> point(double a, double b) const {
    std::vector<double> th(theta0_.size());
    for (std::size_t q = 0; q < th.size(); ++q) th[q] = theta0_[q] + a * d1_[q] + b * d2_[q];
    return th;
  }

 private:
  std::vector<double> theta0_, d1_, d2_;
  double g11_ = 0, g12_ = 0, g22_ = 0, det_ = 0;
};

// Measures λ_max where asked, adding its cost to the result.
class SharpnessMeter {
 public:
  SharpnessMeter(FlatModel& model, const FlowRunOptions& o, FlowResult& r) : model_(model), o_(o), r_(r) {}
  // Every how many of `points` points one measurement is taken; 0: none.
  std::size_t stride(std::size_t points) const {
    if (o_.sharpness_points == 0 || points == 0) return 0;
    return std::max<std::size_t>(1, points / static_cast<std::size_t>(o_.sharpness_points));
  }
  double at(const std::vector<double>& theta) {
    const auto start = Clock::now();
    const Sharpness s = model_.sharpness_at(theta, o_.sharpness);
    ++r_.sharpness_measurements;
    r_.sharpness_products += s.products;
    r_.sharpness_seconds += std::chrono::duration<double>(Clock::now() - start).count();
    return s.lambda_max;
  }

 private:
  FlatModel& model_;
  const FlowRunOptions& o_;
  FlowResult& r_;
};

// The flow as sampled: its loss, its path on the plane, its sharpness; returns how far it went.
double trace_flow(FlowResult& r, const std::vector<FlowPoint>& flow, const Plane& plane, SharpnessMeter& meter) {
  double reach = 0;
  const std::size_t every = meter.stride(flow.size());
  for (std::size_t k = 0; k < flow.size(); ++k) {
    const auto& p = flow[k];
    r.flow_t.push_back(p.t);
    r.flow_loss.push_back(p.loss);
    r.flow_path.push_back(plane.offset(p.theta));
    reach = std::max({reach, std::fabs(r.flow_path.back().first), std::fabs(r.flow_path.back().second)});
    if (every && k % every == 0) {
      r.flow_sharpness_t.push_back(p.t);
      r.flow_sharpness.push_back(meter.at(p.theta));
    }
  }
  return reach;
}

// One gradient-descent run again, step by step: its path on the plane and its sharpness; returns
// how far it went (0 for a run that diverged, which is not framed).
double trace_descent(DescentVsFlow& d, const LossGradient& f, const std::vector<double>& theta0, const Plane& plane,
                     SharpnessMeter& meter) {
  double reach = 0;
  const auto gd = gradient_descent(f, theta0, d.lr, d.steps);
  const std::size_t every = meter.stride(gd.size());
  for (std::size_t k = 0; k < gd.size() && std::isfinite(gd[k].loss); ++k) {
    d.path.push_back(plane.offset(gd[k].theta));
    if (!d.diverged) reach = std::max({reach, std::fabs(d.path.back().first), std::fabs(d.path.back().second)});
    if (!every || k % every != 0) continue;
    d.sharpness_t.push_back(gd[k].t);
    d.sharpness.push_back(meter.at(gd[k].theta));
    if (!d.edge_at && d.lr * d.sharpness.back() >= 2.0) d.edge_at = gd[k].t;
  }
  return reach;
}

// The loss and the projected negative gradient on a grid × grid square of the plane.
FlowPlane map_plane(const LossGradient& f, const Plane& plane, double reach, int grid) {
  FlowPlane pl;
  // Frame the trajectories: they fill most of the picture, with the landscape around them.
  pl.extent = std::max(1.5 * reach, 1e-3);
  pl.grid = grid;
  std::vector<double> g;
  for (int j = 0; j < grid; ++j)
    for (int i = 0; i < grid; ++i) {
      const double a = -pl.extent + 2 * pl.extent * i / std::max(1, grid - 1);
      const double b = -pl.extent + 2 * pl.extent * j / std::max(1, grid - 1);
      const double loss = f(plane.point(a, b), g);
      for (auto& x : g) x = -x;
      const auto [u, w] = plane.project(g);
      pl.loss.push_back(loss);
      pl.da.push_back(u);
      pl.db.push_back(w);
    }
  return pl;
}

}  // namespace

FlowResult run_flow(const ResolvedSpec& spec, const FlowRunOptions& o) {
  check_options(o);
  const auto start = Clock::now();
  FlatModel model(spec, o.task, o.samples, o.seq_len, o.seed);
  const LossGradient f = model.loss_gradient();
  const std::vector<double> theta0 = model.theta();
  FlowResult r;
  ResolvedSpec in_double = spec;
  in_double.values["dtype"] = "float64";
  r.spec = in_double.canonical();
  r.task = model.task_name();
  r.time = o.time;
  r.seed = o.seed;
  r.parameters = model.size();
  r.samples = o.samples;
  std::vector<FlowPoint> flow;
  r.runs = compare_descent_with_flow(f, theta0, o.time, o.lrs, o.ode, &flow, &r.stats);
  r.order = fitted_order(r.runs);

  torch::manual_seed(o.seed + 1);
  const Plane plane(model, theta0);
  SharpnessMeter meter(model, o, r);
  double reach = trace_flow(r, flow, plane, meter);
  for (auto& d : r.runs) reach = std::max(reach, trace_descent(d, f, theta0, plane, meter));
  r.plane = map_plane(f, plane, reach, o.grid);
  model.set_theta(theta0);
  r.wall_seconds = std::chrono::duration<double>(Clock::now() - start).count();
  return r;
}

}  // namespace gradflow::models
