#pragma once
// Figures that ride with the gradients in the last bucket's allreduce: every rank's row in a
// zero-padded ranks × row block of the bucket's own type (see exact_chunks.h), so that
// recording adds no collective to a data-parallel step.

#include <cstddef>
#include <vector>

#include <optional>

#include <ATen/core/Tensor.h>

#include "gradflow/trace.h"

namespace gradflow::detail {

// The Monitor's block for this step (figures_layout.h), in the bucket's type and on its device.
at::Tensor figures_block(const StepRecord& step, std::optional<double> checksum, int rank, int world,
                         const at::Tensor& bucket);
// The summed block into `step`.
void receive_figures_block(const at::Tensor& summed, StepRecord& step, const Trace& trace, int world);

// Figures to be summed over the ranks: the block with this rank's `row` in its place and zeros
// elsewhere (exact chunks), on the bucket's device.
at::Tensor rider_block(const std::vector<double>& row, int rank, int world, const at::Tensor& bucket);
// Every rank's row, by rank, out of the summed block.
std::vector<std::vector<double>> rider_rows(const at::Tensor& summed, int world, std::size_t row_len);

}  // namespace gradflow::detail
