#include "gradflow/noise_scale.h"

#include <cmath>
#include <limits>
#include <map>

#include "gradflow/error.h"

namespace gradflow {

NoiseEstimate estimate_noise(double small_sq, double big_sq, double b_small, double b_big) {
  if (!(b_small > 0 && b_big > b_small))
    throw Error("the noise scale needs a per-rank batch smaller than the global one (got " +
                std::to_string(b_small) + " and " + std::to_string(b_big) + ")");
  NoiseEstimate e;
  e.true_grad_sq = (b_big * big_sq - b_small * small_sq) / (b_big - b_small);
  e.trace_sigma = (small_sq - big_sq) / (1.0 / b_small - 1.0 / b_big);
  return e;
}

double NoiseScale::last() const {
  return b_simple.empty() ? std::numeric_limits<double>::quiet_NaN() : b_simple.back();
}

namespace {

// Squared norms of one group at one step: the averaged gradient's, and the mean of the ranks'.
struct GroupSums {
  double big = 0.0, small = 0.0;
  bool finite = true;
};

// An exponential moving average started at 0. Both averages of a group share the start-up bias,
// so it cancels in their ratio and needs no correction.
class Smoothed {
 public:
  explicit Smoothed(double beta) : beta_(beta) {}
  double add(double value) { return value_ = beta_ * value_ + (1.0 - beta_) * value; }

 private:
  double beta_, value_ = 0.0;
};

struct GroupState {
  NoiseScale scale;
  Smoothed g2, sigma;
  explicit GroupState(const std::string& name, double beta) : g2(beta), sigma(beta) { scale.name = name; }
};

void add_record(GroupSums& sums, const Record& r, int world) {
  if (static_cast<int>(r.ranks.size()) != world || r.grad.nonfinite > 0) {
    sums.finite = false;
    return;
  }
  sums.big += r.grad.sum_sq;
  for (const auto& local : r.ranks) {
    if (local.nonfinite > 0) sums.finite = false;
    sums.small += local.sum_sq / world;
  }
}

}  // namespace

std::vector<NoiseScale> noise_scales(const Trace& trace, const NoiseScaleOptions& options) {
  if (trace.world_size < 2 || trace.batch_per_rank < 1) return {};
  const double b_small = static_cast<double>(trace.batch_per_rank);
  const double b_big = b_small * trace.world_size;
  std::vector<GroupState> groups;
  std::map<std::string, int> group_of;
  groups.emplace_back(kWholeModel, options.smoothing);
  // Layers in the order their parameters were registered: forward order for a module.
  for (const auto& info : trace.series())
    if (info.kind == SeriesKind::parameter && group_of.emplace(info.layer, static_cast<int>(groups.size())).second)
      groups.emplace_back(info.layer, options.smoothing);
  for (const auto& step : trace.steps()) {
    if (step.partial) continue;
    std::map<int, GroupSums> sums;  // group -> sums (0 is the whole model)
    for (const auto& r : step.records) {
      const auto& info = trace.series()[r.series];
      if (info.kind != SeriesKind::parameter) continue;
      add_record(sums[0], r, trace.world_size);
      add_record(sums[group_of.at(info.layer)], r, trace.world_size);
    }
    for (auto& [g, s] : sums) {
      if (!s.finite) continue;
      const NoiseEstimate e = estimate_noise(s.small, s.big, b_small, b_big);
      const double g2 = groups[g].g2.add(e.true_grad_sq);
      const double sigma = groups[g].sigma.add(e.trace_sigma);
      groups[g].scale.steps.push_back(step.step);
      groups[g].scale.b_simple.push_back(g2 > 0 ? sigma / g2 : std::numeric_limits<double>::quiet_NaN());
    }
  }
  std::vector<NoiseScale> out;
  for (auto& g : groups)
    if (!g.scale.steps.empty()) out.push_back(std::move(g.scale));
  return out;
}

}  // namespace gradflow
