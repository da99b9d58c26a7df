#include "gradflow/coord_figures.h"

#include <cmath>
#include <map>
#include <string>

#include <torch/torch.h>

namespace gradflow {

std::vector<double> coordinate_sizes(const std::vector<at::Tensor>& tensors) {
  std::vector<double> out(tensors.size(), std::nan(""));
  // Per device: the positions and the 0-dim sizes to stack there.
  std::map<std::string, std::pair<std::vector<std::size_t>, std::vector<torch::Tensor>>> by_device;
  torch::NoGradGuard no_grad;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const auto& t = tensors[i];
    if (!t.defined() || t.numel() == 0) continue;
    auto& slot = by_device[t.device().str()];
    slot.first.push_back(i);
    slot.second.push_back(t.detach().abs().mean(torch::kDouble));
  }
  for (auto& [device, slot] : by_device) {
    const torch::Tensor host = torch::stack(slot.second).cpu();
    const double* v = host.data_ptr<double>();
    for (std::size_t k = 0; k < slot.first.size(); ++k) out[slot.first[k]] = v[k];
  }
  return out;
}

}  // namespace gradflow
