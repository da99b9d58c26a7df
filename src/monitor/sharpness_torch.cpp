#include "monitor/sharpness_torch.h"

#include <mutex>

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include "gradflow/error.h"

namespace gradflow::detail {

namespace {

// Puts the CPU generator's state and the buffers back when it goes out of scope.
class Restore {
 public:
  explicit Restore(const std::vector<at::Tensor>& buffers) : buffers_(buffers) {
    auto gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    rng_ = gen.get_state();
    for (const auto& b : buffers_) saved_.push_back(b.detach().clone());
  }
  ~Restore() {
    auto gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(rng_);
    torch::NoGradGuard no_grad;
    for (std::size_t k = 0; k < buffers_.size(); ++k) buffers_[k].detach().copy_(saved_[k]);
  }
  Restore(const Restore&) = delete;
  Restore& operator=(const Restore&) = delete;

 private:
  const std::vector<at::Tensor>& buffers_;
  std::vector<at::Tensor> saved_;
  at::Tensor rng_;
};

}  // namespace

std::vector<double> flatten_to_host(const std::vector<at::Tensor>& tensors, const std::vector<at::Tensor>& like) {
  std::vector<double> flat;
  for (std::size_t k = 0; k < like.size(); ++k) {
    const auto t = (tensors[k].defined() ? tensors[k].detach() : torch::zeros_like(like[k])).to(torch::kCPU, torch::kDouble).contiguous();
    flat.insert(flat.end(), t.data_ptr<double>(), t.data_ptr<double>() + t.numel());
  }
  return flat;
}

HessianVectorProduct hessian_vector_product(const at::Tensor& loss, const std::vector<at::Tensor>& params) {
  const auto grads = torch::autograd::grad({loss}, params, {}, /*retain_graph=*/true, /*create_graph=*/true, /*allow_unused=*/true);
  std::vector<at::Tensor> outputs;
  std::vector<std::size_t> offsets;
  std::size_t n = 0;
  for (std::size_t k = 0; k < params.size(); ++k) {
    if (grads[k].defined() && grads[k].requires_grad()) {
      outputs.push_back(grads[k]);
      offsets.push_back(n);
    }
    n += static_cast<std::size_t>(params[k].numel());
  }
  return [outputs, offsets, params](const std::vector<double>& v, std::vector<double>& hv) {
    if (outputs.empty()) {
      hv.assign(v.size(), 0.0);
      return;
    }
    std::vector<at::Tensor> directions;
    for (std::size_t j = 0; j < outputs.size(); ++j) {
      const auto& g = outputs[j];
      const auto host = torch::from_blob(const_cast<double*>(v.data() + offsets[j]), g.sizes(), torch::kDouble);
      directions.push_back(host.to(g.device(), g.scalar_type()));
    }
    hv = flatten_to_host(torch::autograd::grad(outputs, params, directions, /*retain_graph=*/true, false, /*allow_unused=*/true), params);
  };
}

Sharpness measure_sharpness(const std::function<at::Tensor()>& loss_fn, const std::vector<at::Tensor>& params,
                            const std::vector<at::Tensor>& buffers, const SharpnessOptions& options) {
  const Restore restore(buffers);
  const at::Tensor loss = loss_fn();
  if (!loss.defined() || loss.numel() != 1 || !loss.requires_grad())
    throw UsageError("the sharpness loss must return a scalar that depends on the model's parameters (the loss on a fixed batch)");
  std::size_t n = 0;
  for (const auto& p : params) n += static_cast<std::size_t>(p.numel());
  return top_hessian_eigenvalue(hessian_vector_product(loss, params), n, options);
}

}  // namespace gradflow::detail
