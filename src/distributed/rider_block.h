#pragma once
// Figures that ride with the gradients in the last bucket's allreduce: every rank's row in a
// zero-padded ranks × row block of the bucket's own type (see exact_chunks.h), so that
// recording adds no collective to a data-parallel step.

#include <cstddef>
#include <vector>

#include <ATen/core/Tensor.h>

namespace gradflow::detail {

// Elements the block takes in a bucket like `bucket`, for rows of `row_len` doubles.
std::int64_t rider_block_numel(std::size_t row_len, int world, const at::Tensor& bucket);
// The block with this rank's `row` in its place and zeros elsewhere, on the bucket's device.
at::Tensor rider_block(const std::vector<double>& row, int rank, int world, const at::Tensor& bucket);
// Every rank's row, by rank, out of the summed block.
std::vector<std::vector<double>> rider_rows(const at::Tensor& summed, int world, std::size_t row_len);

}  // namespace gradflow::detail
