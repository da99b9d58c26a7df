#include "models/flow_run.h"

#include <chrono>
#include <cmath>

#include <torch/torch.h>

#include "gradflow/error.h"
#include "models/network.h"
#include "models/task.h"

namespace gradflow::models {

namespace {

double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

}  // namespace

FlowResult run_flow(const ResolvedSpec& spec_in, const FlowRunOptions& o) {
  if (o.samples < 2 || o.samples > 100000) throw UsageError("--samples must be between 2 and 100000");
  if (o.grid < 0 || o.grid > 101) throw UsageError("--grid must be between 0 and 101");
  if (o.lrs.empty()) throw UsageError("--lr needs at least one learning rate");
  const auto start = std::chrono::steady_clock::now();
  ResolvedSpec spec = spec_in;
  spec.values["dtype"] = "float64";
  torch::manual_seed(o.seed);
  TaskOptions to;
  for (const auto& f : families())
    if (f.name == spec.family) to.name = o.task.empty() ? f.default_task : o.task;
  to.seq_len = o.seq_len;
  to.dtype = torch::kDouble;
  auto task = make_task(to, spec.family);
  auto net = make_network(spec, task->input_dim(), task->output_dim());
  net->train();
  const Batch data = task->sample(o.samples);
  std::vector<torch::Tensor> params;
  for (auto& p : net->parameters())
    if (p.requires_grad()) params.push_back(p);
  std::int64_t total = 0;
  for (auto& p : params) total += p.numel();

  auto get_theta = [&] {
    std::vector<double> th;
    th.reserve(static_cast<std::size_t>(total));
    for (auto& p : params) {
      auto c = p.detach().contiguous();
      th.insert(th.end(), c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
    }
    return th;
  };
  auto set_theta = [&](const std::vector<double>& th) {
    torch::NoGradGuard g;
    std::size_t off = 0;
    for (auto& p : params) {
      auto src = torch::from_blob(const_cast<double*>(th.data() + off), p.sizes(), torch::kDouble);
      p.copy_(src);
      off += static_cast<std::size_t>(p.numel());
    }
  };
  const LossGradient f = [&](const std::vector<double>& th, std::vector<double>& grad) {
    set_theta(th);
    for (auto& p : params) p.mutable_grad() = torch::Tensor();
    auto loss = task->loss(net->forward(data.x, nullptr), data);
    loss.backward();
    grad.resize(th.size());
    std::size_t off = 0;
    for (auto& p : params) {
      auto g = p.grad().defined() ? p.grad().contiguous() : torch::zeros_like(p);
      std::copy(g.data_ptr<double>(), g.data_ptr<double>() + g.numel(), grad.begin() + static_cast<std::ptrdiff_t>(off));
      off += static_cast<std::size_t>(p.numel());
    }
    return loss.item<double>();
  };

  const std::vector<double> theta0 = get_theta();
  FlowResult r;
  r.spec = spec.canonical();
  r.task = task->name();
  r.time = o.time;
  r.seed = o.seed;
  r.parameters = total;
  r.samples = o.samples;
  std::vector<FlowPoint> flow;
  r.runs = compare_descent_with_flow(f, theta0, o.time, o.lrs, o.ode, &flow, &r.stats);
  r.order = fitted_order(r.runs);
  for (const auto& p : flow) {
    r.flow_t.push_back(p.t);
    r.flow_loss.push_back(p.loss);
  }

  // The plane: two random directions, each layer's block scaled to that layer's norm (Li et
  // al. 2018) so that one unit means "as large as the weights" everywhere.
  torch::manual_seed(o.seed + 1);
  std::vector<double> d1, d2;
  for (auto& p : params) {
    for (auto* d : {&d1, &d2}) {
      auto r0 = torch::randn_like(p);
      const double pn = p.detach().norm().item<double>();
      const double rn = r0.norm().item<double>();
      r0 = (pn > 0 && rn > 0) ? r0 * (pn / rn) : torch::zeros_like(p);
      auto c = r0.contiguous();
      d->insert(d->end(), c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
    }
  }
  const double g11 = dot(d1, d1), g12 = dot(d1, d2), g22 = dot(d2, d2);
  const double det = g11 * g22 - g12 * g12;
  auto project = [&](const std::vector<double>& v) -> std::pair<double, double> {
    const double r1 = dot(d1, v), r2 = dot(d2, v);
    if (!(std::fabs(det) > 0)) return {0.0, 0.0};
    return {(g22 * r1 - g12 * r2) / det, (g11 * r2 - g12 * r1) / det};
  };
  auto offset = [&](const std::vector<double>& th) {
    std::vector<double> v(th.size());
    for (std::size_t i = 0; i < th.size(); ++i) v[i] = th[i] - theta0[i];
    return project(v);
  };
  double reach = 0;
  for (const auto& p : flow) {
    r.flow_path.push_back(offset(p.theta));
    reach = std::max({reach, std::fabs(r.flow_path.back().first), std::fabs(r.flow_path.back().second)});
  }
  for (std::size_t k = 0; k < r.runs.size(); ++k) {
    const auto gd = gradient_descent(f, theta0, r.runs[k].lr, r.runs[k].steps);
    for (const auto& p : gd) {
      if (!std::isfinite(p.loss)) break;
      r.runs[k].path.push_back(offset(p.theta));
      if (!r.runs[k].diverged)
        reach = std::max({reach, std::fabs(r.runs[k].path.back().first), std::fabs(r.runs[k].path.back().second)});
    }
  }
  // Frame the trajectories: they fill most of the picture, with the landscape around them.
  r.plane.extent = std::max(1.5 * reach, 1e-3);
  r.plane.grid = o.grid;
  const int n = o.grid;
  std::vector<double> th(theta0.size()), g;
  for (int j = 0; j < n; ++j)
    for (int i = 0; i < n; ++i) {
      const double a = -r.plane.extent + 2 * r.plane.extent * i / std::max(1, n - 1);
      const double b = -r.plane.extent + 2 * r.plane.extent * j / std::max(1, n - 1);
      for (std::size_t q = 0; q < th.size(); ++q) th[q] = theta0[q] + a * d1[q] + b * d2[q];
      const double loss = f(th, g);
      for (auto& x : g) x = -x;
      const auto [u, w] = project(g);
      r.plane.loss.push_back(loss);
      r.plane.da.push_back(u);
      r.plane.db.push_back(w);
    }
  set_theta(theta0);
  r.wall_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return r;
}

}  // namespace gradflow::models
