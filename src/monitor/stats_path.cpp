#include "monitor/stats_path.h"

#include <thread>

#include "stats/tensor_stats_torch.h"

namespace gradflow::detail {

StatsPlan plan_stats(const MonitorOptions& o, const at::Tensor& grad, const at::Tensor& weight) {
  // hardware_concurrency() reads /sys on glibc: ask once, not in every hook.
  static const bool several_cores = std::thread::hardware_concurrency() > 1;
  const bool host = o.backend == StatsBackend::automatic && fused_applicable(grad);
  StatsPlan plan;
  plan.grad = !host ? StatsPath::device : (o.async && several_cores) ? StatsPath::worker : StatsPath::fused;
  if (!weight.defined()) return plan;
  plan.weight_in_same_pass = host && fused_applicable(weight) && weight.scalar_type() == grad.scalar_type() &&
                             weight.numel() == grad.numel();
  plan.weight = o.backend == StatsBackend::automatic && fused_applicable(weight) ? StatsPath::fused : StatsPath::device;
  return plan;
}

}  // namespace gradflow::detail
