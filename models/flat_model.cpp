#include "models/flat_model.h"

#include <algorithm>

#include <torch/torch.h>

#include "monitor/sharpness_torch.h"

namespace gradflow::models {

FlatModel::FlatModel(const ResolvedSpec& spec_in, const std::string& task, std::int64_t samples, std::int64_t seq_len,
                     std::uint64_t seed) {
  ResolvedSpec spec = spec_in;
  spec.values["dtype"] = "float64";  // the ODE's error control and the Hessian need it
  torch::manual_seed(seed);
  TaskOptions to;
  for (const auto& f : families())
    if (f.name == spec.family) to.name = task.empty() ? f.default_task : task;
  to.seq_len = seq_len;
  to.dtype = torch::kDouble;
  task_ = make_task(to, spec.family);
  net_ = make_network(spec, task_->input_dim(), task_->output_dim());
  net_->train();
  data_ = task_->sample(samples);
  for (auto& p : net_->parameters())
    if (p.requires_grad()) params_.push_back(p);
  for (const auto& p : params_) size_ += p.numel();
}

std::vector<double> FlatModel::theta() const { return detail::flatten_to_host(params_, params_); }

void FlatModel::set_theta(const std::vector<double>& th) {
  torch::NoGradGuard g;
  std::size_t off = 0;
  for (auto& p : params_) {
    p.copy_(torch::from_blob(const_cast<double*>(th.data() + off), p.sizes(), torch::kDouble));
    off += static_cast<std::size_t>(p.numel());
  }
}

torch::Tensor FlatModel::loss_now() { return task_->loss(net_->forward(data_.x, nullptr), data_); }

LossGradient FlatModel::loss_gradient() {
  return [this](const std::vector<double>& th, std::vector<double>& grad) {
    set_theta(th);
    const auto loss = loss_now();
    const auto g = torch::autograd::grad({loss}, params_, {}, false, false, /*allow_unused=*/true);
    grad = detail::flatten_to_host(g, params_);
    return loss.item<double>();
  };
}

HessianVectorProduct FlatModel::hessian_at(const std::vector<double>& th) {
  set_theta(th);
  return detail::hessian_vector_product(loss_now(), params_);
}

std::pair<std::vector<double>, std::vector<double>> FlatModel::layer_scaled_directions() {
  std::vector<torch::Tensor> d1, d2;
  for (const auto& p : params_)
    for (auto* d : {&d1, &d2}) {
      auto r = torch::randn_like(p);
      const double pn = p.detach().norm().item<double>();
      const double rn = r.norm().item<double>();
      d->push_back((pn > 0 && rn > 0) ? r * (pn / rn) : torch::zeros_like(p));
    }
  return {detail::flatten_to_host(d1, params_), detail::flatten_to_host(d2, params_)};
}

Sharpness FlatModel::sharpness_at(const std::vector<double>& th, const SharpnessOptions& options) {
  return top_hessian_eigenvalue(hessian_at(th), static_cast<std::size_t>(size_), options);
}

}  // namespace gradflow::models
