#pragma once
// The diagnosis rules, one function per finding family, each judging only its own input.

#include <optional>
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
