#pragma once
// The diagnosis rules, one function per finding family, each judging only its own input.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "gradflow/diagnosis.h"

namespace gradflow::detail {

// Vanishing or exploding dL/dh across depth, at the first and the last recorded step.
std::vector<Finding> depth_rule(const DiagnosisInput& in, const DiagnosisOptions& o);
// Vanishing dL/dh across time steps, at the first recorded step and after training.
std::vector<Finding> time_rule(const DiagnosisInput& in, const DiagnosisOptions& o);
// Units inactive for the whole batch (ReLU-like activations) at the last recorded step.
std::optional<Finding> dead_units_rule(const DiagnosisInput& in, const DiagnosisOptions& o);
// Saturated squashing units at the last recorded step.
std::optional<Finding> saturation_rule(const DiagnosisInput& in, const DiagnosisOptions& o);
// The first non-finite gradient or loss.
std::optional<Finding> non_finite_rule(const DiagnosisInput& in, const DiagnosisOptions& o);
// The global gradient norm growing by orders of magnitude during training.
std::optional<Finding> norm_growth_rule(const DiagnosisInput& in, const DiagnosisOptions& o);
// A loss that diverges or oscillates.
std::optional<Finding> unstable_loss_rule(const DiagnosisInput& in, const DiagnosisOptions& o);
// A loss that barely moves.
std::optional<Finding> stalled_rule(const DiagnosisInput& in, const DiagnosisOptions& o);
// The sharpness at the step size's stability bound (stability_rule.cpp): gradient descent has
// left the gradient flow's path.
std::optional<Finding> edge_of_stability_rule(const DiagnosisInput& in, const DiagnosisOptions& o);
// A layer (its parameters and its output) that received exactly 0 gradient at every step of its
// longest such run of recorded steps, while a layer it feeds received a normal one (RMS above
// 1e-30: no underflow) or was dead itself.
struct DeadLayer {
  std::string layer;
  std::int64_t first_step = 0, last_step = 0;
  int steps = 0;
  /// The last recorded step before the run at which the layer received gradient; -1: dead from
  /// the first recorded step.
  std::int64_t last_alive_step = -1;
  /// Dead at the last recorded step too (within the run or after it).
  bool at_end = false;
  /// The gradient stops here: no layer this one feeds (SeriesInfo::inputs) is dead too, or none
  /// is known. A dead layer all of whose consumers are dead receives nothing through them: the
  /// cause is theirs.
  bool cut = true;
  /// Its place among the layers in forward order, and the run's first and last step as indices
  /// into Trace::steps().
  std::size_t position = 0, first_at = 0, last_at = 0;
};
// The layers dead for at least DiagnosisOptions::no_gradient_steps recorded steps in a row (every
// recorded step when there are fewer), in forward order (dead_layer_rule.cpp).
std::vector<DeadLayer> dead_layers(const DiagnosisInput& in, const DiagnosisOptions& o);
bool is_dead_layer(const std::vector<DeadLayer>& dead, const std::string& layer);
// Those layers, as one finding with the cause their numbers show.
std::optional<Finding> dead_layer_rule(const DiagnosisInput& in, const DiagnosisOptions& o);
// Every parameter's gradient exactly 0 for several recorded steps in a row: nothing trains.
std::optional<Finding> no_gradient_rule(const DiagnosisInput& in, const DiagnosisOptions& o);
// No step recorded at all: the report has nothing to say, and says why it may be.
std::optional<Finding> not_recorded_rule(const DiagnosisInput& in, const DiagnosisOptions& o);

// Data-parallel runs (rank_rules.cpp): a non-finite local gradient on some ranks only; ranks
// whose parameter checksums differ; a rank whose local gradient norm stands out for several steps.
std::optional<Finding> rank_non_finite_rule(const DiagnosisInput& in, const DiagnosisOptions& o);
std::optional<Finding> ranks_out_of_sync_rule(const DiagnosisInput& in, const DiagnosisOptions& o);
std::optional<Finding> rank_outlier_rule(const DiagnosisInput& in, const DiagnosisOptions& o);

// Whether any attenuation of the summary is past the vanishing threshold (the premise of a
// vanishing finding), judged from the summary alone.
bool gradient_vanishes(const DiagnosisInput& in, const DiagnosisOptions& o);

}  // namespace gradflow::detail
