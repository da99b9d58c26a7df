#include "distributed/rider_block.h"

#include <torch/torch.h>

#include "distributed/exact_chunks.h"
#include "distributed/figures_layout.h"
#include "gradflow/error.h"

namespace gradflow::detail {

namespace {

int bits_of(at::ScalarType type) {
  switch (type) {
    case at::kDouble: return chunk_bits(53);
    case at::kFloat: return chunk_bits(24);
    case at::kHalf: return chunk_bits(11);
    case at::kBFloat16: return chunk_bits(8);
    default: break;
  }
  throw UsageError(std::string("gradient buckets of type ") + c10::toString(type) +
                   " cannot carry gradflow's figures: train with floating-point parameters");
}

}  // namespace

at::Tensor figures_block(const StepRecord& step, std::optional<double> checksum, int rank, int world,
                         const at::Tensor& bucket) {
  const std::vector<double> block = figures_contribution(step, checksum, rank, world, bits_of(bucket.scalar_type()));
  return torch::tensor(block, torch::kDouble).to(bucket.options());
}

void receive_figures_block(const at::Tensor& summed, StepRecord& step, const Trace& trace, int world) {
  const at::Tensor host = summed.detach().to(torch::kCPU, torch::kDouble).contiguous();
  receive_figures(host.data_ptr<double>(), static_cast<std::size_t>(host.numel()), step, trace, world,
                  bits_of(summed.scalar_type()));
}

at::Tensor rider_block(const std::vector<double>& row, int rank, int world, const at::Tensor& bucket) {
  const int bits = bits_of(bucket.scalar_type());
  const auto width = static_cast<std::int64_t>(row.size() * chunks_per_value(bits));
  at::Tensor block = torch::zeros({world, width}, torch::kDouble);
  const std::vector<double> chunks = to_chunks(row, bits);
  std::copy(chunks.begin(), chunks.end(), block[rank].data_ptr<double>());
  // Integers below 2^bits: exact in the bucket's type.
  return block.reshape({-1}).to(bucket.options());
}

std::vector<std::vector<double>> rider_rows(const at::Tensor& summed, int world, std::size_t row_len) {
  const at::Tensor host = summed.detach().to(torch::kCPU, torch::kDouble).contiguous();
  const int bits = bits_of(summed.scalar_type());
  const std::size_t width = row_len * chunks_per_value(bits);
  if (host.numel() != static_cast<std::int64_t>(width) * world)
    throw Error("the figures that ride with the gradient have the wrong size: every rank must record the same series");
  std::vector<std::vector<double>> rows;
  for (int r = 0; r < world; ++r) rows.push_back(from_chunks(host.data_ptr<double>() + r * width, row_len, bits));
  return rows;
}

}  // namespace gradflow::detail
