#include "gradflow/tensor_stats.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <limits>

namespace gradflow {

double TensorStats::norm() const { return std::sqrt(sum_sq); }

double TensorStats::rms() const {
  const auto n = finite();
  return n > 0 ? std::sqrt(sum_sq / static_cast<double>(n)) : 0.0;
}

double TensorStats::mean() const {
  const auto n = finite();
  return n > 0 ? sum / static_cast<double>(n) : 0.0;
}

double TensorStats::std() const {
  const auto n = finite();
  if (n <= 0) return 0.0;
  const double m = mean();
  // Gradients are centred near 0, so the one-pass formula loses nothing measurable; clamp the
  // rounding residue of a constant tensor.
  return std::sqrt(std::max(0.0, sum_sq / static_cast<double>(n) - m * m));
}

double TensorStats::zero_fraction() const {
  return numel > 0 ? static_cast<double>(zeros) / static_cast<double>(numel) : 0.0;
}

TensorStats& TensorStats::merge(const TensorStats& o) {
  numel += o.numel;
  nonfinite += o.nonfinite;
  zeros += o.zeros;
  sum += o.sum;
  sum_sq += o.sum_sq;
  max_abs = std::max(max_abs, o.max_abs);
  return *this;
}

namespace {

// The body is inlined into each target clone below, so the same source is compiled once per
// instruction set and the best one is picked when the library loads. `omp simd` lets the
// compiler reorder the double sums (it may not otherwise, without -ffast-math).
template <typename T>
__attribute__((always_inline)) inline TensorStats fused_pass(const T* p, std::int64_t n) {
  constexpr T kMax = std::numeric_limits<T>::max();
  double s = 0.0, ss = 0.0;
  T m = 0;
  std::int64_t z = 0, nf = 0;
#pragma omp simd reduction(+ : s, ss, z, nf) reduction(max : m)
  for (std::int64_t i = 0; i < n; ++i) {
    const T x = p[i];
    const T a = std::fabs(x);
    const bool fin = a <= kMax;  // false for NaN and +-Inf
    const double d = fin ? static_cast<double>(x) : 0.0;
    s += d;
    ss += d * d;
    m = std::max(m, fin ? a : T(0));
    z += (x == T(0));
    nf += !fin;
  }
  TensorStats r;
  r.numel = n;
  r.nonfinite = nf;
  r.zeros = z;
  r.sum = s;
  r.sum_sq = ss;
  r.max_abs = static_cast<double>(m);
  return r;
}

template <typename T>
__attribute__((always_inline)) inline double squares_pass(const T* p, std::int64_t n) {
  constexpr T kMax = std::numeric_limits<T>::max();
  double ss = 0.0;
#pragma omp simd reduction(+ : ss)
  for (std::int64_t i = 0; i < n; ++i) {
    const T x = p[i];
    const double d = std::fabs(x) <= kMax ? static_cast<double>(x) : 0.0;
    ss += d * d;
  }
  return ss;
}

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(GRADFLOW_NO_CLONES)
#define GRADFLOW_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define GRADFLOW_CLONES
#endif

GRADFLOW_CLONES TensorStats stats_f32(const float* p, std::int64_t n) { return fused_pass(p, n); }
GRADFLOW_CLONES TensorStats stats_f64(const double* p, std::int64_t n) { return fused_pass(p, n); }
GRADFLOW_CLONES double squares_f32(const float* p, std::int64_t n) { return squares_pass(p, n); }
GRADFLOW_CLONES double squares_f64(const double* p, std::int64_t n) { return squares_pass(p, n); }

}  // namespace

TensorStats compute_stats(const float* data, std::int64_t n) { return stats_f32(data, n); }
TensorStats compute_stats(const double* data, std::int64_t n) { return stats_f64(data, n); }
double sum_of_squares(const float* data, std::int64_t n) { return squares_f32(data, n); }
double sum_of_squares(const double* data, std::int64_t n) { return squares_f64(data, n); }

const char* stats_kernel_isa() {
#if defined(__GNUC__) && defined(__x86_64__)
  __builtin_cpu_init();
#if !defined(__clang__) && !defined(GRADFLOW_NO_CLONES)
  if (__builtin_cpu_supports("avx512f")) return "avx512f";
  if (__builtin_cpu_supports("avx2")) return "avx2";
#endif
#endif
  return "baseline";
}

}  // namespace gradflow
