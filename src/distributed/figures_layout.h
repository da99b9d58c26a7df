#pragma once
// Where a rank's figures of one recorded step lie in the block that rides in the gradient's last
// allreduce (a sum): each rank contributes the whole block, zeros where the others write.
//
// Up to kExactRankRows ranks every rank's row of encode_local() travels whole, each double as
// exact chunks (exact_chunks.h): every figure of every rank comes back bit for bit. Beyond, a row
// per rank would grow the block with ranks × records × 7 figures, so each record carries each
// rank's gradient norm and largest |g| (a slot per rank, rounded to the bucket's type: their
// maximum and which rank holds it), the sums over ranks of the gradient's sum and zero count, and
// the ranks with a non-finite value as bits (exact); each rank's loss has its slot too.

#include <cstddef>
#include <optional>
#include <vector>

#include "gradflow/trace.h"

namespace gradflow::detail {

inline constexpr int kExactRankRows = 64;

// This rank's contribution to the block, for a bucket type whose chunks are `bits` wide.
std::vector<double> figures_contribution(const StepRecord& step, std::optional<double> checksum, int rank, int world,
                                         int bits);
// Fills `step` from the summed block (`n` values): each record's ranks, the ranks' losses (the
// step's loss becomes their mean). Throws gradflow::Error when the ranks recorded other series.
void receive_figures(const double* summed, std::size_t n, StepRecord& step, const Trace& trace, int world, int bits);

}  // namespace gradflow::detail
