#pragma once
/// \file
/// `gradflow flow` on a built-in network: the gradient-flow ODE against gradient descent.

#include <cstdint>
#include <string>
#include <vector>

#include "gradflow/flow.h"
#include "gradflow/sharpness.h"
#include "models/spec.h"

namespace gradflow::models {

struct FlowRunOptions {
  std::string task;                               ///< empty: the family's default
  std::int64_t samples = 256;                     ///< the fixed data set (full batch)
  std::int64_t seq_len = 20;
  double time = 20.0;                             ///< integrate to t = time
  std::vector<double> lrs = {0.05, 0.2, 1.0, 8.0};
  std::uint64_t seed = 0;
  int grid = 21;                                  ///< picture: grid × grid loss evaluations
  /// λ_max measured at this many evenly spaced times along the flow and along each gradient
  /// descent run (0: not measured).
  int sharpness_points = 20;
  SharpnessOptions sharpness;
  FlowOptions ode;
};

/// Builds the network in float64 (the ODE's error control needs it), samples the data set once,
/// integrates the flow, runs gradient descent with each learning rate, measures the sharpness
/// along both, and maps the loss on a plane through θ(0). Throws gradflow::UsageError for bad
/// options.
FlowResult run_flow(const ResolvedSpec& spec, const FlowRunOptions& options);

}  // namespace gradflow::models
