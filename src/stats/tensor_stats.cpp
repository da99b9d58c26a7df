#include "gradflow/tensor_stats.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <limits>

#include "util/cpu_features.h"

#ifdef GRADFLOW_X86
// GCC 12 warns about _mm512_undefined_* inside its own intrinsic headers.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#endif

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

// Portable pass, also used for the tails of the vector kernels. `w` (may be null) is a second
// tensor of the same length whose finite sum of squares is returned in `w_sq`.
template <typename T>
void scalar_pass(const T* p, const T* w, std::int64_t n, TensorStats& s, double& w_sq) {
  constexpr T kMax = std::numeric_limits<T>::max();
  double m = s.max_abs;
  for (std::int64_t i = 0; i < n; ++i) {
    const T x = p[i];
    const T a = std::fabs(x);
    if (a <= kMax) {  // false for NaN and +-Inf
      const double d = static_cast<double>(x);
      s.sum += d;
      s.sum_sq += d * d;
      m = std::max(m, static_cast<double>(a));
      s.zeros += (x == T(0));
    } else {
      ++s.nonfinite;
    }
    if (w) {
      const T y = w[i];
      if (std::fabs(y) <= kMax) w_sq += static_cast<double>(y) * static_cast<double>(y);
    }
  }
  s.max_abs = m;
}

#ifdef GRADFLOW_X86

// 16 floats a step: finite mask, zero and non-finite counts from mask popcounts, the finite
// values widened to double for the sums, |x| max in float (exact: a max needs no rounding).
__attribute__((target("avx512f"))) void avx512_pass(const float* p, const float* w, std::int64_t n, TensorStats& s,
                                                    double& w_sq) {
  const __m512 fmax = _mm512_set1_ps(FLT_MAX);
  const __m512 zero = _mm512_setzero_ps();
  __m512d s0 = _mm512_setzero_pd(), s1 = s0, q0 = s0, q1 = s0, w0 = s0, w1 = s0;
  __m512 mx = zero;
  std::int64_t zeros = 0, finite = 0;
  std::int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 x = _mm512_loadu_ps(p + i);
    const __m512 a = _mm512_abs_ps(x);
    const __mmask16 fin = _mm512_cmp_ps_mask(a, fmax, _CMP_LE_OQ);
    const __mmask16 z = _mm512_cmp_ps_mask(x, zero, _CMP_EQ_OQ);
    finite += __builtin_popcount(fin);
    zeros += __builtin_popcount(z);
    const __m512 xs = _mm512_maskz_mov_ps(fin, x);
    mx = _mm512_max_ps(mx, _mm512_maskz_mov_ps(fin, a));
    const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(xs));
    const __m512d hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(xs), 1)));
    s0 = _mm512_add_pd(s0, lo);
    s1 = _mm512_add_pd(s1, hi);
    q0 = _mm512_fmadd_pd(lo, lo, q0);
    q1 = _mm512_fmadd_pd(hi, hi, q1);
    if (w) {
      const __m512 y = _mm512_loadu_ps(w + i);
      const __mmask16 wf = _mm512_cmp_ps_mask(_mm512_abs_ps(y), fmax, _CMP_LE_OQ);
      const __m512 ys = _mm512_maskz_mov_ps(wf, y);
      const __m512d ylo = _mm512_cvtps_pd(_mm512_castps512_ps256(ys));
      const __m512d yhi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(ys), 1)));
      w0 = _mm512_fmadd_pd(ylo, ylo, w0);
      w1 = _mm512_fmadd_pd(yhi, yhi, w1);
    }
  }
  s.numel = n;
  s.sum += _mm512_reduce_add_pd(_mm512_add_pd(s0, s1));
  s.sum_sq += _mm512_reduce_add_pd(_mm512_add_pd(q0, q1));
  s.max_abs = std::max(s.max_abs, static_cast<double>(_mm512_reduce_max_ps(mx)));
  s.zeros += zeros;
  s.nonfinite += i - finite;
  w_sq += _mm512_reduce_add_pd(_mm512_add_pd(w0, w1));
  scalar_pass(p + i, w ? w + i : nullptr, n - i, s, w_sq);
}

__attribute__((target("avx2,fma,popcnt"))) inline double hsum256(__m256d v) {
  const __m128d lo = _mm256_castpd256_pd128(v), hi = _mm256_extractf128_pd(v, 1);
  const __m128d s = _mm_add_pd(lo, hi);
  return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}

__attribute__((target("avx2,fma,popcnt"))) void avx2_pass(const float* p, const float* w, std::int64_t n, TensorStats& s,
                                                          double& w_sq) {
  const __m256 sign = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256 fmax = _mm256_set1_ps(FLT_MAX);
  const __m256 zero = _mm256_setzero_ps();
  __m256d s0 = _mm256_setzero_pd(), s1 = s0, q0 = s0, q1 = s0, w0 = s0, w1 = s0;
  __m256 mx = zero;
  std::int64_t zeros = 0, finite = 0;
  std::int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 x = _mm256_loadu_ps(p + i);
    const __m256 a = _mm256_and_ps(x, sign);
    const __m256 fin = _mm256_cmp_ps(a, fmax, _CMP_LE_OQ);
    finite += __builtin_popcount(static_cast<unsigned>(_mm256_movemask_ps(fin)));
    zeros += __builtin_popcount(static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(x, zero, _CMP_EQ_OQ))));
    const __m256 xs = _mm256_and_ps(x, fin);
    mx = _mm256_max_ps(mx, _mm256_and_ps(a, fin));
    const __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(xs));
    const __m256d hi = _mm256_cvtps_pd(_mm256_extractf128_ps(xs, 1));
    s0 = _mm256_add_pd(s0, lo);
    s1 = _mm256_add_pd(s1, hi);
    q0 = _mm256_fmadd_pd(lo, lo, q0);
    q1 = _mm256_fmadd_pd(hi, hi, q1);
    if (w) {
      const __m256 y = _mm256_loadu_ps(w + i);
      const __m256 ys = _mm256_and_ps(y, _mm256_cmp_ps(_mm256_and_ps(y, sign), fmax, _CMP_LE_OQ));
      const __m256d ylo = _mm256_cvtps_pd(_mm256_castps256_ps128(ys));
      const __m256d yhi = _mm256_cvtps_pd(_mm256_extractf128_ps(ys, 1));
      w0 = _mm256_fmadd_pd(ylo, ylo, w0);
      w1 = _mm256_fmadd_pd(yhi, yhi, w1);
    }
  }
  alignas(32) float m8[8];
  _mm256_store_ps(m8, mx);
  s.numel = n;
  s.sum += hsum256(_mm256_add_pd(s0, s1));
  s.sum_sq += hsum256(_mm256_add_pd(q0, q1));
  s.max_abs = std::max(s.max_abs, static_cast<double>(*std::max_element(m8, m8 + 8)));
  s.zeros += zeros;
  s.nonfinite += i - finite;
  w_sq += hsum256(_mm256_add_pd(w0, w1));
  scalar_pass(p + i, w ? w + i : nullptr, n - i, s, w_sq);
}

#endif

using F32Pass = void (*)(const float*, const float*, std::int64_t, TensorStats&, double&);

void baseline_f32(const float* p, const float* w, std::int64_t n, TensorStats& s, double& w_sq) {
  s.numel = n;
  scalar_pass(p, w, n, s, w_sq);
}

// Chosen once, at first use, for the CPU the process runs on.
struct Dispatch {
  F32Pass f32 = baseline_f32;
  const char* isa = "baseline";
  Dispatch() {
#ifdef GRADFLOW_X86
    if (detail::cpu_has_avx512f()) {
      f32 = avx512_pass;
      isa = "avx512f";
    } else if (detail::cpu_has_avx2_fma()) {
      f32 = avx2_pass;
      isa = "avx2";
    }
#endif
  }
};

const Dispatch& dispatch() {
  static const Dispatch d;
  return d;
}

}  // namespace

TensorStats compute_stats(const float* data, std::int64_t n) {
  TensorStats s;
  double unused = 0;
  dispatch().f32(data, nullptr, n, s, unused);
  s.numel = n;
  return s;
}

TensorStats compute_stats(const double* data, std::int64_t n) {
  TensorStats s;
  double unused = 0;
  s.numel = n;
  scalar_pass<double>(data, nullptr, n, s, unused);
  return s;
}

TensorStats compute_stats_with_weight(const float* grad, const float* weight, std::int64_t n, double& weight_sum_sq) {
  TensorStats s;
  weight_sum_sq = 0;
  dispatch().f32(grad, weight, n, s, weight_sum_sq);
  s.numel = n;
  return s;
}

TensorStats compute_stats_with_weight(const double* grad, const double* weight, std::int64_t n, double& weight_sum_sq) {
  TensorStats s;
  weight_sum_sq = 0;
  s.numel = n;
  scalar_pass<double>(grad, weight, n, s, weight_sum_sq);
  return s;
}

double sum_of_squares(const float* data, std::int64_t n) { return compute_stats(data, n).sum_sq; }
double sum_of_squares(const double* data, std::int64_t n) { return compute_stats(data, n).sum_sq; }

const char* stats_kernel_isa() { return dispatch().isa; }

}  // namespace gradflow
