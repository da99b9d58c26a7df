#pragma once
// The sharpness of a model's loss, measured with LibTorch: Hessian-vector products by double
// backward, fed to the power iteration of gradflow/sharpness.h.

#include <functional>
#include <vector>

#include <ATen/core/Tensor.h>

#include "gradflow/sharpness.h"

namespace gradflow::detail {

// λ_max of the Hessian of `loss()` with respect to `params`. The parameters' gradients, LibTorch's
// CPU random generator and `buffers` are as they were afterwards, also when it throws.
// Throws gradflow::UsageError when `loss()` is no scalar that depends on the parameters.
Sharpness measure_sharpness(const std::function<at::Tensor()>& loss, const std::vector<at::Tensor>& params,
                            const std::vector<at::Tensor>& buffers, const SharpnessOptions& options);

}  // namespace gradflow::detail
