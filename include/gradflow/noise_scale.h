#pragma once
/// \file
/// The gradient noise scale of a data-parallel run (McCandlish et al. 2018, "An Empirical Model
/// of Large-Batch Training"), from each rank's local gradient and the averaged one.

#include <cstdint>
#include <string>
#include <vector>

#include "gradflow/trace.h"

namespace gradflow {

/// One step's unbiased estimates of |G|² (the true gradient's squared norm) and tr(Σ) (the
/// per-example gradient covariance's trace), from the squared norm of a gradient over a small
/// batch and over a big one.
struct NoiseEstimate {
  double true_grad_sq = 0.0;  ///< (B_big·|G_big|² − B_small·|G_small|²)/(B_big − B_small)
  double trace_sigma = 0.0;   ///< (|G_small|² − |G_big|²)/(1/B_small − 1/B_big)
};

/// `small_sq`: the mean over ranks of each rank's local |g|² (batch `b_small` each); `big_sq`:
/// |g|² of the averaged gradient (batch `b_big`). Throws gradflow::Error unless 0 < b_small < b_big.
NoiseEstimate estimate_noise(double small_sq, double big_sq, double b_small, double b_big);

/// The simple noise scale B_simple = tr(Σ)/|G|² of a group of parameters over training.
struct NoiseScale {
  std::string name;                 ///< a layer, or kWholeModel for every parameter together
  std::vector<std::int64_t> steps;  ///< recorded steps with a finite estimate
  /// B_simple after each of those steps, from exponential moving averages of |G|² and tr(Σ)
  /// (each smoothed before the ratio, as both are noisy); NaN while the smoothed |G|² is not
  /// positive (the gradient's signal is below what the batch can resolve).
  std::vector<double> b_simple;
  double last() const;
};

inline constexpr const char* kWholeModel = "(model)";

struct NoiseScaleOptions {
  /// Weight of the past in the moving averages.
  double smoothing = 0.9;
};

/// The whole model's noise scale first, then each layer's (parameters grouped by layer). Empty
/// when the trace has one rank or does not know its batch per rank.
std::vector<NoiseScale> noise_scales(const Trace& trace, const NoiseScaleOptions& options = {});

}  // namespace gradflow
