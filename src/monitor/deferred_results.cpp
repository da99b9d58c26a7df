#include "monitor/deferred_results.h"

#include <cmath>
#include <string>
#include <unordered_map>
#include <utility>

#include <torch/torch.h>

#include "distributed/rank_block.h"
#include "stats/tensor_stats_torch.h"

namespace gradflow::detail {

void add_profile_squares(Record& r, std::size_t at, const double* squares, std::size_t n, double unscale) {
  if (r.profile.size() < at + n) r.profile.resize(at + n, kNoGradient);
  for (std::size_t k = 0; k < n; ++k) {
    const double old = r.profile[at + k] == kNoGradient ? 0.0 : r.profile[at + k];
    r.profile[at + k] = std::sqrt(old * old + squares[k] / (unscale * unscale));
  }
}

void DeferredResults::add(int record, ResultField field, std::int64_t numel, const at::Tensor& values, int slot) {
  slots_.push_back(Slot{record, field, numel, slot});
  values_.push_back(values);
}

void DeferredResults::fetch_into(StepRecord& step) {
  if (values_.empty()) return;
  std::unordered_map<c10::Device, std::vector<std::size_t>> by_device;
  for (std::size_t i = 0; i < values_.size(); ++i) by_device[values_[i].device()].push_back(i);
  std::vector<at::Tensor> host_parts;
  std::vector<std::pair<std::size_t, std::size_t>> where(values_.size());  // part, offset
  for (auto& [device, indices] : by_device) {
    std::vector<at::Tensor> parts;
    std::size_t offset = 0;
    for (auto i : indices) {
      where[i] = {host_parts.size(), offset};
      offset += static_cast<std::size_t>(values_[i].numel());
      parts.push_back(values_[i].reshape({-1}).to(torch::kDouble));
    }
    host_parts.push_back(torch::cat(parts).to(torch::kCPU).contiguous());
  }
  for (std::size_t i = 0; i < values_.size(); ++i)
    fill(step, slots_[i], host_parts[where[i].first].data_ptr<double>() + where[i].second);
  slots_.clear();
  values_.clear();
}

void DeferredResults::fill(StepRecord& step, const Slot& slot, const double* v) const {
  if (slot.field == ResultField::loss) {
    step.add_loss(v[0]);
    return;
  }
  Record& r = step.records.at(slot.record);
  const double unscale = step.loss_scale.value_or(1.0);
  switch (slot.field) {
    case ResultField::grad: r.grad = scaled(stats_from_aten(v, slot.numel), unscale); break;
    case ResultField::grad_merge: r.grad.merge(scaled(stats_from_aten(v, slot.numel), unscale)); break;
    case ResultField::applied: r.applied = stats_from_aten(v, slot.numel); break;
    case ResultField::weight: r.weight_norm = std::sqrt(v[0]); break;
    case ResultField::update: r.update_norm = std::sqrt(v[0]); break;
    case ResultField::forward: r.forward = activation_stats_from(v); break;
    case ResultField::call_norm: add_profile_squares(r, static_cast<std::size_t>(slot.slot), v + 1, 1, unscale); break;
    case ResultField::time_norms: add_profile_squares(r, 0, v, static_cast<std::size_t>(slot.numel), unscale); break;
    case ResultField::loss: break;
  }
}

}  // namespace gradflow::detail
