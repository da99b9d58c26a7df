#pragma once
/// \file
/// A built-in network on a fixed data set as a function of one parameter vector θ (float64):
/// the full-batch loss, its gradient and Hessian-vector products, for the gradient-flow ODE and
/// the sharpness.

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <torch/types.h>

#include "gradflow/flow.h"
#include "gradflow/sharpness.h"
#include "models/network.h"
#include "models/spec.h"
#include "models/task.h"

namespace gradflow::models {

class FlatModel {
 public:
  /// The spec's network in float64 on `samples` examples of `task` (empty: the family's
  /// default), drawn once after seeding LibTorch with `seed`.
  FlatModel(const ResolvedSpec& spec, const std::string& task, std::int64_t samples, std::int64_t seq_len,
            std::uint64_t seed);

  std::int64_t size() const { return size_; }
  std::string task_name() const { return task_->name(); }
  /// The parameters now, one vector in registration order.
  std::vector<double> theta() const;
  void set_theta(const std::vector<double>& theta);
  /// L(θ) and ∇L(θ) on the whole data set.
  LossGradient loss_gradient();
  /// H(θ)·v by differentiating ∇L(θ)·v once more (double backward): the Hessian at θ.
  HessianVectorProduct hessian_at(const std::vector<double>& theta);
  /// Two random directions, each parameter's block scaled to that parameter's norm (Li et al.
  /// 2018), drawn from LibTorch's generator.
  std::pair<std::vector<double>, std::vector<double>> layer_scaled_directions();
  /// λ_max of the Hessian at θ.
  Sharpness sharpness_at(const std::vector<double>& theta, const SharpnessOptions& options);

 private:
  torch::Tensor loss_now();

  std::unique_ptr<Task> task_;
  std::shared_ptr<Network> net_;
  Batch data_;
  std::vector<torch::Tensor> params_;
  std::int64_t size_ = 0;
};

}  // namespace gradflow::models
