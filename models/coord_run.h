#pragma once
/// \file
/// The coordinate check of a built-in network: the same spec trained for a few steps at each
/// width on one batch, with the same seed and optimizer, every weight layer's figures recorded.

#include <cstdint>
#include <functional>
#include <vector>

#include "gradflow/coord_check.h"
#include "models/spec.h"
#include "models/train.h"

namespace gradflow::models {

/// What the sweep trains: the trainer's options (optimizer, lr, momentum, batch, seed, task,
/// seq_len; `steps` steps from initialisation) and the widths.
struct CoordRunOptions {
  std::vector<std::int64_t> widths;
  TrainOptions train;
  /// Each figure is the mean over this many initialisations (seeds train.seed + 1, + 2, ...).
  std::int64_t seeds = 1;
  /// Called after each width with (done, total).
  std::function<void(std::size_t, std::size_t)> progress;
};

/// Checks the widths, seeds and trainer options (throws gradflow::UsageError naming the bad one).
void validate(const CoordRunOptions& options);

/// Trains `spec` at each width and records every weight layer's figures (CoordCheck). Throws
/// gradflow::UsageError for recurrent families and widths the spec refuses.
CoordCheck run_coord_check(const ResolvedSpec& spec, const CoordRunOptions& options);

}  // namespace gradflow::models
