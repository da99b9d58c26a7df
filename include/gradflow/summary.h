#pragma once
/// \file
/// The headline numbers of a recorded run: how much gradient is lost across depth and time.

#include <optional>
#include <string>
#include <vector>

#include "gradflow/trace.h"

namespace gradflow {

/// log10 of a ratio of two gradient norms, honest about underflow.
///
/// When the numerator underflowed to 0 (float32 rounds gradients below ~1e-45 to zero), `log10`
/// holds an upper bound computed from the smallest representable value and `underflow` is set:
/// the gradient lost *at least* that many orders of magnitude. `overflow` marks an infinite or
/// non-finite norm; `log10` is then empty. No NaN or infinity is ever stored.
///
/// The two ends are compared per element (RMS, ‖g‖/sqrt(n)): layers of different sizes (a
/// 16×64×32×32 feature map and a 16×512×2×2 one) are then comparable; for equal sizes it is the
/// ratio of norms.
struct Attenuation {
  std::optional<double> log10;
  bool underflow = false;
  bool overflow = false;
  int span = 0;        ///< layers (or time steps) between the two ends
  double from = 0.0;   ///< RMS of the gradient at the far end (first hidden layer, first time step)
  double to = 0.0;     ///< RMS at the near end (last hidden layer, last time step)
  /// The one link of the chain (two neighbouring layers) that grows the gradient most toward the
  /// far end: its log10 RMS ratio, and the index of its far layer in the chain (-1: none). A
  /// constant scale in the graph (an embedding's × sqrt(d)) or one normalisation is such a link,
  /// not a gain that compounds with depth.
  double largest_link_log10 = 0.0;
  int largest_link_at = -1;
  /// Mean factor per layer (or step): 10^(log10/span); empty with log10 or span 0.
  std::optional<double> gain() const;
};

/// The gradient the optimizer applied against the one backward produced, over the steps where
/// the Monitor saw the optimizer step (see AppliedChange).
struct AppliedSummary {
  int steps = 0;          ///< steps with both gradients
  int changed_steps = 0;  ///< steps where they differ (clipping, unscaling, averaging between them)
  /// applied ‖g‖ / produced ‖g‖ over the changed steps (1 when none changed); `finite_factors`:
  /// how many changed steps had both norms finite, which alone give a factor.
  double smallest_factor = 1, median_factor = 1, largest_factor = 1;
  int finite_factors = 0;
};

/// The summary block of run.json (docs/run-schema.md documents each field).
struct RunSummary {
  std::optional<double> grad_norm_first;        ///< first weight layer's gradient norm, first recorded step
  std::optional<double> grad_norm_last;         ///< last weight layer's, first recorded step
  std::optional<double> grad_norm_first_final;  ///< the same at the last recorded step
  std::optional<double> grad_norm_last_final;
  std::optional<Attenuation> depth;        ///< first hidden layer vs last, first recorded step
  std::optional<Attenuation> depth_final;  ///< the same at the last recorded step
  std::optional<Attenuation> time;         ///< dL/dh_1 vs dL/dh_T, first recorded step
  std::optional<Attenuation> time_final;
  std::optional<double> loss_first;
  std::optional<double> loss_last;
  int recorded_steps = 0;
  std::optional<AppliedSummary> applied;
  /// Recorded steps the loss scaler skipped (non-finite scaled gradient, nothing applied).
  int skipped_steps = 0;
};

/// The AppliedSummary of a trace, nullopt when no step has an applied gradient.
std::optional<AppliedSummary> summarize_applied(const Trace& trace);

/// The hidden-state series across depth: taps of group "h" when the model has them, else the
/// layer outputs without the last one (the output layer), in forward order: along the longest
/// path through distinct modules where the trace knows which feeds which (SeriesInfo::inputs),
/// so that parallel branches are not chained; every layer output otherwise.
std::vector<int> depth_series(const Trace& trace);
/// Whether the layer outputs' graph (SeriesInfo::inputs) has a skip connection: a module fed
/// both by another and by one of that module's own ancestors (x + f(x) before it).
bool has_skip_connection(const Trace& trace);
/// The threshold a program clips the global gradient norm at, read from the run: every step on
/// which the optimizer's gradient differed from the one backward produced, it was smaller and its
/// norm the same (within 1%); nullopt otherwise.
std::optional<double> clip_norm_applied(const Trace& trace);
/// Taps of group `group` ("time", "cell") ordered by their numeric suffix.
std::vector<int> numbered_series(const Trace& trace, const std::string& group);
/// Every parameter series in forward order: the order in which their modules' outputs were
/// first recorded (a module whose output has no series takes its nearest ancestor's place, as
/// nn.MultiheadAttention's out_proj takes the attention's), then registration order.
std::vector<int> parameters_in_forward_order(const Trace& trace);
/// Weight series (parameters with 2 or more dimensions) in forward order.
std::vector<int> weight_series(const Trace& trace);

/// log10(rms(from)/rms(to)); `tiny` is the dtype's smallest positive value (for the bound).
Attenuation attenuation(double from, double to, int span, double tiny);

/// Computes the summary from a trace and the per-step loss series. `tiny`: see attenuation().
RunSummary summarize(const Trace& trace, const std::vector<double>& loss, double tiny);

}  // namespace gradflow
