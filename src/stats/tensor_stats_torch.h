#pragma once
// Statistics of LibTorch tensors: the fused CPU pass where it applies, ATen ops elsewhere.

#include <optional>

#include <ATen/core/Tensor.h>

#include "gradflow/activation.h"
#include "gradflow/tensor_stats.h"
#include "gradflow/trace.h"

namespace gradflow::detail {

// True when the fused host pass can read the tensor as it is (CPU, float or double).
bool fused_applicable(const at::Tensor& t);
// The fused pass on a CPU float/double tensor (made contiguous if it is not).
TensorStats fused_stats(const at::Tensor& t);
double fused_sum_of_squares(const at::Tensor& t);
// The gradient's statistics and the parameter's sum of squares in one pass, when both are CPU
// tensors of the same float type and length (returns false otherwise, touching nothing).
bool fused_stats_with_weight(const at::Tensor& grad, const at::Tensor& weight, TensorStats& stats, double& weight_sum_sq);

// The same sums as ATen ops on the tensor's device, as a double tensor
// [sum, sum_sq, max_abs, zeros, nonfinite]; no host synchronisation. A sparse tensor (an
// nn.Embedding(sparse=True)'s gradient) is summed over its stored elements, every element it
// does not store counted as a zero: the sums of the dense tensor it stands for.
at::Tensor aten_stats(const at::Tensor& t);
constexpr int kAtenStatsSize = 5;
TensorStats stats_from_aten(const double* v, std::int64_t numel);
// Sum of squares of the finite elements, as a 1-element double tensor on the device.
at::Tensor aten_sum_of_squares(const at::Tensor& t);

// Where each forward statistic sits in the tensors below.
enum ActivationStatsIndex : int { kActMean, kActStd, kActDead, kActSaturated, kActMeanDerivative, kActivationStatsSize };
// The statistics as a struct, from the values in ActivationStatsIndex order.
ActivationStats activation_stats_from(const double* values);

// Forward statistics of an activation in one host pass, for CPU float/double tensors and every
// activation but GELU (whose derivative needs its input); nullopt where that does not apply.
// `threshold` is relative to the activation's largest derivative.
std::optional<ActivationStats> host_activation_stats(const at::Tensor& h, Activation act, double threshold);

// The same statistics as ATen ops on the tensor's device, in ActivationStatsIndex order, without
// a host synchronisation (any device, and GELU given its input).
at::Tensor device_activation_stats(const at::Tensor& h, Activation act, const at::Tensor& preact,
                                   double threshold);

// The activation's derivative, computed from its output (and the input for GELU).
at::Tensor local_derivative(const at::Tensor& h, Activation act, const at::Tensor& preact);

}  // namespace gradflow::detail
