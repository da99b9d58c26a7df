#pragma once
// What a data-parallel trace says about its ranks, computed once for the rules, the reports
// and the terminal.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "gradflow/noise_scale.h"
#include "gradflow/trace.h"

namespace gradflow::detail {

// "rank 1", "ranks 1 and 3": how messages name ranks.
std::string ranks_phrase(const std::vector<int>& ranks);

// Each rank's local gradient norm over every parameter at one step; NaN for a rank with a
// non-finite element or no local record.
std::vector<double> local_norms(const Trace& trace, const StepRecord& step);

struct RankFigures {
  int ranks = 1;
  std::int64_t batch_per_rank = 0;
  std::vector<std::int64_t> steps;         // complete steps with every rank's norm finite
  std::vector<std::vector<double>> norms;  // [rank][step]
  double median_spread = 1.0;              // max/min across ranks, median over steps
  double max_spread = 1.0;
  std::int64_t max_spread_step = 0;
  std::vector<NoiseScale> noise;  // the whole model's first, then each layer's
};

// Empty (nullopt) for a one-process trace.
std::optional<RankFigures> rank_figures(const Trace& trace);

// "2 ranks x 16 examples (global batch 32); local gradient norms within 1.12x of each other
// (median over steps; 1.4x at most, step 30); gradient noise scale B_simple ~ 51 examples at
// the last step, above the global batch: ..." The one sentence every output shows.
std::string ranks_sentence(const RankFigures& f);

}  // namespace gradflow::detail
