#pragma once
/// \file
/// Summary statistics of one tensor, computed in one pass (no LibTorch needed).

#include <cstdint>

namespace gradflow {

/// The raw sums of one pass over a tensor; every statistic derives from them.
///
/// Non-finite elements (NaN, +-Inf) are counted in `nonfinite` and left out of every sum, so one
/// NaN does not hide what the other elements say. Sums are accumulated in double, also for float
/// data: a vanishing gradient's squares underflow in float.
struct TensorStats {
  std::int64_t numel = 0;      ///< number of elements, finite or not
  std::int64_t nonfinite = 0;  ///< NaN or infinite elements
  std::int64_t zeros = 0;      ///< elements exactly 0 (either sign)
  double sum = 0.0;            ///< sum of the finite elements
  double sum_sq = 0.0;         ///< sum of squares of the finite elements
  double max_abs = 0.0;        ///< largest |x| over the finite elements (0 when none)

  /// Number of finite elements.
  std::int64_t finite() const { return numel - nonfinite; }
  /// L2 norm of the finite elements.
  double norm() const;
  /// Root mean square over the finite elements (0 when there are none).
  double rms() const;
  /// Mean over the finite elements (0 when there are none).
  double mean() const;
  /// Population standard deviation (divisor n, as `torch.std(unbiased=False)`).
  double std() const;
  /// Fraction of all elements that are exactly zero.
  double zero_fraction() const;
  /// Combines the sums of two disjoint parts of one tensor.
  TensorStats& merge(const TensorStats& other);
};

/// One fused pass over `n` contiguous floats: sums, max |x|, zero and non-finite counts.
/// AVX-512 or AVX2 code is chosen at run time for the CPU it runs on (the binary itself stays
/// baseline x86-64); sums are exact to double rounding.
TensorStats compute_stats(const float* data, std::int64_t n);
/// \overload
TensorStats compute_stats(const double* data, std::int64_t n);

/// The fused pass over a gradient and, in the same loop, the finite sum of squares of the
/// parameter it belongs to (same length): one read of each per recorded step.
TensorStats compute_stats_with_weight(const float* grad, const float* weight, std::int64_t n, double& weight_sum_sq);
/// \overload
TensorStats compute_stats_with_weight(const double* grad, const double* weight, std::int64_t n, double& weight_sum_sq);

/// Sum of squares of the finite elements only.
double sum_of_squares(const float* data, std::int64_t n);
/// \overload
double sum_of_squares(const double* data, std::int64_t n);

/// Which instruction set the fused pass dispatched to on this CPU ("avx512f", "avx2" or
/// "baseline"); reported by benchmarks so figures can be compared across machines.
const char* stats_kernel_isa();

}  // namespace gradflow
