#pragma once
/// \file
/// Parameters held in parts across processes (torch.distributed's DTensor: FSDP2's fully_shard,
/// distribute_module, parallelize_module), as the Python module describes them to a Monitor.

#include <functional>
#include <string>
#include <unordered_map>
#include <vector>

#include <ATen/core/Tensor.h>

namespace gradflow {

/// How a Monitor reads sharded parameters: each rank computes the sums of its own part, and one
/// collective per recorded step brings every rank's sums to every rank, where they are combined
/// into the whole tensor's figures (every TensorStats figure composes exactly: sums add, the
/// largest |g| is the largest part's).
struct Sharding {
  int rank = 0;
  int world_size = 1;
  /// For each sharded parameter, by its name in attach(): whether each rank's part (index =
  /// rank) counts toward the whole tensor. A part replicated on several ranks counts on one.
  std::unordered_map<std::string, std::vector<bool>> counted;
  /// The part of a sharded tensor (the parameter, its gradient) this process holds, as a plain
  /// tensor.
  std::function<at::Tensor(const at::Tensor&)> local_part;
  /// The same for a sharded layer output's gradient, without a collective: undefined where this
  /// rank holds no part of it but a summand (a partial sum).
  std::function<at::Tensor(const at::Tensor&)> output_part;
  /// One collective over the ranks: from this rank's 1-D double row (as long on every rank),
  /// every rank's row, as a world_size × length tensor.
  std::function<at::Tensor(const at::Tensor&)> gather_rows;
};

}  // namespace gradflow
