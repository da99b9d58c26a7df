#include "stats/tensor_stats_torch.h"

#include <cmath>
#include <optional>
#include <vector>

#include <torch/torch.h>

#include "util/cpu_features.h"
#include "gradflow/error.h"
#include "gradflow/option.h"

namespace gradflow::detail {

namespace {
// A dense CPU tensor whose memory holds its elements: not a tensor subclass (a DTensor, a
// collective's pending result), whose data only its own operations know how to read.
bool host_readable(const at::Tensor& t) {
  return t.device().is_cpu() && !t.is_sparse() && !t.key_set().has(c10::DispatchKey::Python);
}
}  // namespace

bool fused_applicable(const at::Tensor& t) {
  return host_readable(t) && (t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble);
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
  // Reading a parameter's data needs no detached alias (an allocation in every hook) unless it
  // must be copied to be contiguous.
  const at::Tensor wc = w.is_contiguous() ? w : w.detach().contiguous();
  if (gc.scalar_type() == at::kFloat)
    stats = compute_stats_with_weight(gc.data_ptr<float>(), wc.data_ptr<float>(), gc.numel(), weight_sum_sq);
  else
    stats = compute_stats_with_weight(gc.data_ptr<double>(), wc.data_ptr<double>(), gc.numel(), weight_sum_sq);
  return true;
}

namespace {

// The stored elements of a sparse tensor, duplicates summed (COO), and how many of the dense
// tensor's elements it leaves out: each of those is an exact zero. A dense tensor: all of it.
std::pair<at::Tensor, std::int64_t> stored_elements(const at::Tensor& t) {
  if (t.layout() == at::kStrided) return {t, 0};
  if (t.is_sparse()) {
    const at::Tensor values = t.coalesce().values();
    return {values, t.numel() - values.numel()};
  }
  return {t.to_dense(), 0};  // compressed layouts (CSR, ...): rare for gradients
}

}  // namespace

at::Tensor aten_stats(const at::Tensor& t) {
  torch::NoGradGuard no_grad;
  const auto [stored, implicit_zeros] = stored_elements(t.detach());
  const auto x = stored.reshape({-1}).to(torch::kDouble);
  const auto fin = torch::isfinite(x);
  const auto xf = torch::where(fin, x, torch::zeros({}, x.options()));
  const auto max_abs = x.numel() > 0 ? xf.abs().max() : torch::zeros({}, x.options());
  return torch::stack({xf.sum(), xf.square().sum(), max_abs,
                       x.eq(0).sum().to(torch::kDouble) + static_cast<double>(implicit_zeros),
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
  const auto x = stored_elements(t.detach()).first.reshape({-1}).to(torch::kDouble);
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
        throw OptionError(Option::preactivation, "GELU's derivative needs its input: pass {}");
      const auto z = preact.detach().to(h.scalar_type());
      const auto cdf = 0.5 * (1 + torch::erf(z / std::sqrt(2.0)));
      const auto pdf = torch::exp(-0.5 * z * z) / std::sqrt(2.0 * M_PI);
      return cdf + z * pdf;
    }
  }
  return torch::ones_like(h);
}

namespace {

// The activation's derivative from its output, element by element (GELU needs its input: not here).
template <Activation act, typename T>
inline double derivative_of(T h) {
  constexpr double lambda = 1.0507009873554805, alpha = 1.6732632423543772;
  switch (act) {
    case Activation::sigmoid: return static_cast<double>(h) * (1.0 - static_cast<double>(h));
    case Activation::tanh: return 1.0 - static_cast<double>(h) * static_cast<double>(h);
    case Activation::relu: return h > 0 ? 1.0 : 0.0;
    case Activation::leaky_relu: return h > 0 ? 1.0 : 0.01;
    case Activation::elu: return h > 0 ? 1.0 : static_cast<double>(h) + 1.0;
    case Activation::selu: return h > 0 ? lambda : static_cast<double>(h) + lambda * alpha;
    case Activation::softsign: {
      const double m = 1.0 - std::fabs(static_cast<double>(h));
      return m * m;
    }
    default: return 1.0;
  }
}

// The sums one host pass collects; `active` counts, per unit, the examples on which it is not
// saturated.
struct ActivationSums {
  double sum = 0, sum_sq = 0, dsum = 0, low = 0;
};

// The pass itself, inlined into each instruction-set variant below so that the compiler
// vectorises it for that variant. `omp simd` lets it vectorise the double sums without
// -ffast-math; every lane is a double, like the sums.
template <Activation act, typename T>
__attribute__((always_inline)) inline void accumulate_rows(const T* p, std::int64_t rows, std::int64_t cols, double thr,
                                                           double* active, ActivationSums& out) {
  double sum = 0, sum_sq = 0, dsum = 0, low = 0;
  for (std::int64_t r = 0; r < rows; ++r) {
    const T* row = p + r * cols;
    // Two loops: GCC does not vectorise an `omp simd` reduction loop that also stores to an
    // array (measured: 109 us against 10.5 us for 128 x 256).
#pragma omp simd reduction(+ : sum, sum_sq, dsum, low)
    for (std::int64_t c = 0; c < cols; ++c) {
      const double x = static_cast<double>(row[c]);
      const double d = derivative_of<act>(x);
      sum += x;
      sum_sq += x * x;
      dsum += d;
      low += std::fabs(d) < thr ? 1.0 : 0.0;
    }
    for (std::int64_t c = 0; c < cols; ++c)
      active[c] += std::fabs(derivative_of<act>(static_cast<double>(row[c]))) < thr ? 0.0 : 1.0;
  }
  out = ActivationSums{sum, sum_sq, dsum, low};
}

#ifdef GRADFLOW_X86
// Four doubles a lane instead of two, chosen at run time like the gradient kernel's variants.
template <Activation act, typename T>
__attribute__((target("avx2,fma"))) void accumulate_rows_avx2(const T* p, std::int64_t rows, std::int64_t cols,
                                                               double thr, double* active, ActivationSums& out) {
  accumulate_rows<act, T>(p, rows, cols, thr, active, out);
}
#endif

template <Activation act, typename T>
void accumulate_rows_dispatch(const T* p, std::int64_t rows, std::int64_t cols, double thr, double* active,
                              ActivationSums& out) {
#ifdef GRADFLOW_X86
  if (cpu_has_avx2_fma()) return accumulate_rows_avx2<act, T>(p, rows, cols, thr, active, out);
#endif
  accumulate_rows<act, T>(p, rows, cols, thr, active, out);
}

// One host pass: [mean, std, dead fraction, saturated fraction, mean derivative], as the ATen
// version below computes them. Units are the elements of one example (dimension 0 is the batch).
template <Activation act, typename T>
ActivationStats host_pass(const at::Tensor& h, double threshold) {
  const std::int64_t n = h.numel();
  const std::int64_t rows = h.dim() >= 2 ? h.size(0) : 1;
  const std::int64_t cols = rows > 0 ? n / rows : 0;
  std::vector<double> active(static_cast<std::size_t>(cols), 0.0);
  ActivationSums s;
  accumulate_rows_dispatch<act, T>(h.data_ptr<T>(), rows, cols, threshold * max_derivative(act), active.data(), s);
  const double nd = static_cast<double>(std::max<std::int64_t>(n, 1));
  ActivationStats a;
  a.mean = s.sum / nd;
  a.std = std::sqrt(std::max(0.0, s.sum_sq / nd - a.mean * a.mean));
  std::int64_t dead = 0;
  for (double v : active) dead += v == 0.0;
  a.dead_fraction = cols ? static_cast<double>(dead) / static_cast<double>(cols) : 0.0;
  a.saturated_fraction = s.low / nd;
  a.mean_local_derivative = s.dsum / nd;
  return a;
}

}  // namespace

std::optional<ActivationStats> host_activation_stats(const at::Tensor& h_in, Activation act, double threshold) {
  if (act == Activation::gelu || act == Activation::none || !host_readable(h_in) || h_in.numel() == 0 ||
      (h_in.scalar_type() != at::kFloat && h_in.scalar_type() != at::kDouble))
    return std::nullopt;
  const at::Tensor h = h_in.is_contiguous() ? h_in : h_in.detach().contiguous();
  // The activation is a template parameter so that its derivative is not a branch per element.
  auto run = [&](auto tag) {
    using T = decltype(tag);
    switch (act) {
      case Activation::sigmoid: return host_pass<Activation::sigmoid, T>(h, threshold);
      case Activation::tanh: return host_pass<Activation::tanh, T>(h, threshold);
      case Activation::relu: return host_pass<Activation::relu, T>(h, threshold);
      case Activation::leaky_relu: return host_pass<Activation::leaky_relu, T>(h, threshold);
      case Activation::elu: return host_pass<Activation::elu, T>(h, threshold);
      case Activation::selu: return host_pass<Activation::selu, T>(h, threshold);
      case Activation::softsign: return host_pass<Activation::softsign, T>(h, threshold);
      default: return host_pass<Activation::identity, T>(h, threshold);
    }
  };
  return h.scalar_type() == at::kFloat ? run(float{}) : run(double{});
}

at::Tensor device_activation_stats(const at::Tensor& h_in, Activation act, const at::Tensor& preact,
                                   double threshold) {
  torch::NoGradGuard no_grad;
  const auto h = h_in.detach().to(torch::kDouble);
  const auto d = local_derivative(h, act, preact);
  const auto low = d.abs() < threshold * max_derivative(act);
  // A unit is dead when it is saturated for every example: reduce over the batch (dim 0).
  const auto dead = h.dim() >= 2 ? low.all(0) : low;
  const auto mean = h.mean();
  const auto std = (h - mean).square().mean().sqrt();
  // Stacked in ActivationStatsIndex order.
  return torch::stack({mean, std, dead.to(torch::kDouble).mean(), low.to(torch::kDouble).mean(),
                       d.mean()});
}

ActivationStats activation_stats_from(const double* v) {
  ActivationStats a;
  a.mean = v[kActMean];
  a.std = v[kActStd];
  a.dead_fraction = v[kActDead];
  a.saturated_fraction = v[kActSaturated];
  a.mean_local_derivative = v[kActMeanDerivative];
  return a;
}

}  // namespace gradflow::detail
