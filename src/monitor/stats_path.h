#pragma once
// The one place that decides how a tensor's statistics are computed.

#include <ATen/core/Tensor.h>

#include "gradflow/monitor.h"

namespace gradflow::detail {

enum class StatsPath {
  fused,   // the fused host pass, now, on the calling thread
  worker,  // the fused host pass on the statistics worker, collected when backward ends
  device,  // ATen reductions on the tensor's device, fetched with the step's one transfer
};

struct StatsPlan {
  StatsPath grad = StatsPath::fused;
  // The weight's sum of squares read in the gradient's own pass (CPU tensors of one type and
  // length); otherwise `weight` says where it is computed on its own.
  bool weight_in_same_pass = false;
  StatsPath weight = StatsPath::fused;
};

// `weight` is undefined when no weight norm is wanted.
StatsPlan plan_stats(const MonitorOptions& options, const at::Tensor& grad, const at::Tensor& weight);

}  // namespace gradflow::detail
