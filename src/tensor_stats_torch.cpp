#include "tensor_stats_torch.h"

#include <cmath>

#include <torch/torch.h>

#include "gradflow/error.h"

namespace gradflow::detail {

bool fused_applicable(const at::Tensor& t) {
  return t.device().is_cpu() && !t.is_sparse() &&
         (t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble);
}

TensorStats fused_stats(const at::Tensor& t) {
  const at::Tensor c = t.is_contiguous() ? t : t.contiguous();
  if (c.scalar_type() == at::kFloat) return compute_stats(c.data_ptr<float>(), c.numel());
  return compute_stats(c.data_ptr<double>(), c.numel());
}

double fused_sum_of_squares(const at::Tensor& t) {
  const at::Tensor c = t.is_contiguous() ? t : t.contiguous();
  if (c.scalar_type() == at::kFloat) return sum_of_squares(c.data_ptr<float>(), c.numel());
  return sum_of_squares(c.data_ptr<double>(), c.numel());
}

bool fused_stats_with_weight(const at::Tensor& g, const at::Tensor& w, TensorStats& stats, double& weight_sum_sq) {
  if (!fused_applicable(g) || !fused_applicable(w) || g.scalar_type() != w.scalar_type() || g.numel() != w.numel())
    return false;
  const at::Tensor gc = g.is_contiguous() ? g : g.contiguous();
  const at::Tensor wc = w.is_contiguous() ? w.detach() : w.detach().contiguous();
  if (gc.scalar_type() == at::kFloat)
    stats = compute_stats_with_weight(gc.data_ptr<float>(), wc.data_ptr<float>(), gc.numel(), weight_sum_sq);
  else
    stats = compute_stats_with_weight(gc.data_ptr<double>(), wc.data_ptr<double>(), gc.numel(), weight_sum_sq);
  return true;
}

at::Tensor aten_stats(const at::Tensor& t) {
  torch::NoGradGuard no_grad;
  const auto x = t.detach().reshape({-1}).to(torch::kDouble);
  const auto fin = torch::isfinite(x);
  const auto xf = torch::where(fin, x, torch::zeros({}, x.options()));
  const auto max_abs = x.numel() > 0 ? xf.abs().max() : torch::zeros({}, x.options());
  return torch::stack({xf.sum(), xf.square().sum(), max_abs, x.eq(0).sum().to(torch::kDouble),
                       fin.logical_not().sum().to(torch::kDouble)});
}

TensorStats stats_from_aten(const double* v, std::int64_t numel) {
  TensorStats s;
  s.numel = numel;
  s.sum = v[0];
  s.sum_sq = v[1];
  s.max_abs = v[2];
  s.zeros = static_cast<std::int64_t>(std::llround(v[3]));
  s.nonfinite = static_cast<std::int64_t>(std::llround(v[4]));
  return s;
}

at::Tensor aten_sum_of_squares(const at::Tensor& t) {
  torch::NoGradGuard no_grad;
  const auto x = t.detach().reshape({-1}).to(torch::kDouble);
  return torch::where(torch::isfinite(x), x, torch::zeros({}, x.options())).square().sum().reshape({1});
}

at::Tensor local_derivative(const at::Tensor& h, Activation act, const at::Tensor& preact) {
  switch (act) {
    case Activation::none:
    case Activation::identity: return torch::ones_like(h);
    case Activation::sigmoid: return h * (1 - h);
    case Activation::tanh: return 1 - h * h;
    case Activation::relu: return (h > 0).to(h.scalar_type());
    case Activation::leaky_relu: return torch::where(h > 0, torch::ones_like(h), torch::full_like(h, 0.01));
    case Activation::elu: return torch::where(h > 0, torch::ones_like(h), h + 1);
    case Activation::selu: {
      constexpr double lambda = 1.0507009873554805, alpha = 1.6732632423543772;
      return torch::where(h > 0, torch::full_like(h, lambda), h + lambda * alpha);
    }
    case Activation::softsign: {
      const auto one_minus = 1 - h.abs();
      return one_minus * one_minus;
    }
    case Activation::gelu: {
      if (!preact.defined())
        throw Error("GELU's derivative needs its input: pass TapOptions::preactivation");
      const auto z = preact.detach().to(h.scalar_type());
      const auto cdf = 0.5 * (1 + torch::erf(z / std::sqrt(2.0)));
      const auto pdf = torch::exp(-0.5 * z * z) / std::sqrt(2.0 * M_PI);
      return cdf + z * pdf;
    }
  }
  return torch::ones_like(h);
}

at::Tensor aten_activation_stats(const at::Tensor& h_in, Activation act, const at::Tensor& preact,
                                 double threshold) {
  torch::NoGradGuard no_grad;
  const auto h = h_in.detach().to(torch::kDouble);
  const auto d = local_derivative(h, act, preact);
  const auto low = d.abs() < threshold * max_derivative(act);
  // A unit is dead when it is saturated for every example: reduce over the batch (dim 0).
  const auto dead = h.dim() >= 2 ? low.all(0) : low;
  const auto mean = h.mean();
  const auto std = (h - mean).square().mean().sqrt();
  return torch::stack({mean, std, dead.to(torch::kDouble).mean(), low.to(torch::kDouble).mean(),
                       d.mean()});
}

}  // namespace gradflow::detail
