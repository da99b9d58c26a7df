#pragma once
/// \file
/// Findings over a recorded trace: where gradients vanish, explode, die or saturate, and the
/// remedy from the literature that fits. No LibTorch.

#include <string>
#include <utility>
#include <vector>

#include "gradflow/model_traits.h"
#include "gradflow/summary.h"
#include "gradflow/trace.h"

namespace gradflow {

/// What a finding is about.
enum class FindingKind {
  vanishing,
  exploding,
  dead_units,
  saturation,
  non_finite,
  stalled,
  unstable_loss,
  rank_non_finite,    ///< data-parallel: a non-finite local gradient on some ranks only
  ranks_out_of_sync,  ///< data-parallel: the ranks' parameters differ
  rank_outlier,       ///< data-parallel: one rank's local gradient norm far from the others'
  no_gradient,        ///< every parameter's gradient exactly 0 for several recorded steps
  edge_of_stability,  ///< the sharpness reached the step size's stability bound (2 + 2·momentum)/lr
  not_recorded,       ///< no step was recorded (the model trained in another process, or no backward reached it)
  dead_layer,         ///< a layer's gradient exactly 0 for several recorded steps while other layers receive one
  width_unstable,     ///< coordinate check: a layer's output or its change grows (or its change shrinks) with width
};
/// How bad it is.
enum class Severity { info, warning, error };

const char* to_string(FindingKind kind);
const char* to_string(Severity severity);
/// Parses a severity name; throws gradflow::UsageError listing the valid names.
Severity severity_from_string(const std::string& name);
/// Parses a kind name; throws gradflow::UsageError listing the valid names.
FindingKind finding_kind_from_string(const std::string& name);
/// Every kind, in declaration order.
const std::vector<FindingKind>& all_finding_kinds();

/// One diagnosis, with the numbers it rests on.
struct Finding {
  FindingKind kind = FindingKind::vanishing;
  Severity severity = Severity::warning;
  std::string where;    ///< layer, time-step range or step range
  std::string message;  ///< one sentence with the figure
  std::vector<std::pair<std::string, double>> evidence;
  std::string remedy;
};

/// Thresholds; every rule is documented in docs/diagnosis.md.
struct DiagnosisOptions {
  /// The backward signal dL/dh shrinks from the last hidden layer to the first by more than
  /// this many orders of magnitude: vanishing (warning; error past twice as many).
  double vanishing_orders = 2.0;
  /// ... or grows by more than this many: exploding (warning; error past twice as many).
  double exploding_orders = 2.0;
  /// Growth toward the input above this many orders is reported as information already.
  double exploding_info_orders = 1.0;
  /// Across time, for recurrent nets: dL/dh_1 vs dL/dh_T.
  double time_vanishing_orders = 2.0;
  /// A layer with more than this fraction of dead units (inactive for a whole batch).
  double dead_fraction = 0.5;
  /// A layer with more than this fraction of saturated elements.
  double saturated_fraction = 0.5;
  /// Dead or saturated findings are errors when the worst layer is past this fraction.
  double severe_unit_fraction = 0.9;
  /// Stalled: the loss moved, up or down, by less than this fraction of its start (averaged
  /// over the first and last tenth of the run), with at least `min_steps` steps.
  double stall_improvement = 0.02;
  /// Rising: the mean loss of the last tenth is above this multiple of the first tenth's.
  double rising_factor = 1.5;
  /// Unstable: a finite loss above this multiple of the first one ...
  double divergence_factor = 10.0;
  /// ... or, in the second half, more than this fraction of windows (n/20 steps, at least 5)
  /// whose mean loss is `oscillation_rise` above the previous window's.
  double oscillation_fraction = 0.3;
  double oscillation_rise = 0.25;
  int min_steps = 20;
  /// Steps a loss scaler skipped (StepRecord::skipped) are left out of every rule while fewer
  /// than this many come in a row: their overflow is the scaler's probing. From this many on,
  /// the gradient is non-finite at any scale: a non_finite finding.
  int persistent_skips = 10;
  /// The global gradient norm growing by more than this many orders during training: exploding.
  double norm_growth_orders = 3.0;
  /// Every parameter's gradient exactly 0 on this many recorded steps in a row: no_gradient;
  /// one layer's (parameters and output) while another layer's is not: dead_layer (every
  /// recorded step when there are fewer).
  int no_gradient_steps = 3;
  /// Data-parallel: a rank whose local gradient norm is above this multiple of the median of
  /// the other ranks' ...
  double rank_outlier_factor = 5.0;
  /// ... at this many consecutive recorded steps or more.
  int rank_outlier_steps = 3;
  /// Data-parallel: parameter checksums further apart than this (relative) are out of sync.
  double checksum_tolerance = 1e-12;
  /// The sharpness at or above this fraction of the stability bound (2 + 2·momentum)/lr at the
  /// last measurement: edge_of_stability (info while the loss still falls; warning past
  /// `unstable_edge_factor` times the bound, or when the loss did not fall).
  double edge_fraction = 0.9;
  double unstable_edge_factor = 2.0;
};

/// Everything the rules judge: the recording, its summary and the per-step series.
struct DiagnosisInput {
  const Trace& trace;
  const RunSummary& summary;
  const std::vector<double>& loss;       ///< per-step loss (may be empty)
  const std::vector<double>& grad_norm;  ///< global gradient norm per recorded step, before clipping
  const ModelTraits& traits;
};

/// Runs every rule. `loss` is the per-step loss series (may be empty), `grad_norm` the global
/// gradient norm per step before clipping (may be empty). Underflow bounds assume float32.
std::vector<Finding> diagnose(const Trace& trace, const std::vector<double>& loss,
                              const std::vector<double>& grad_norm, const ModelTraits& traits,
                              const DiagnosisOptions& options = {});

/// The same, judged on a summary already computed from the trace (with the run's own dtype for
/// underflow bounds): the findings then quote exactly the summary's figures.
std::vector<Finding> diagnose(const Trace& trace, const RunSummary& summary, const std::vector<double>& loss,
                              const std::vector<double>& grad_norm, const ModelTraits& traits,
                              const DiagnosisOptions& options = {});

/// True when any finding is of one of `kinds`.
bool has_any(const std::vector<Finding>& findings, const std::vector<FindingKind>& kinds);

}  // namespace gradflow
