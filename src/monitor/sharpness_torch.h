#pragma once
// The sharpness of a model's loss, measured with LibTorch: Hessian-vector products by double
// backward, fed to the power iteration of gradflow/sharpness.h.

#include <functional>
#include <vector>

#include <ATen/core/Tensor.h>

#include "gradflow/sharpness.h"

namespace gradflow::detail {

// The tensors as one float64 host vector, in order; an undefined tensor counts as zeros shaped
// like its entry in `like`.
std::vector<double> flatten_to_host(const std::vector<at::Tensor>& tensors, const std::vector<at::Tensor>& like);

// H·v of `loss` with respect to `params` by double backward (v and H·v flat, parameters in
// order): the gradient's graph is built once, kept by the function, and differentiated along
// each v. Parameters the loss does not depend on contribute zeros.
HessianVectorProduct hessian_vector_product(const at::Tensor& loss, const std::vector<at::Tensor>& params);

// λ_max of the Hessian of `loss()` with respect to `params`. The parameters' gradients, LibTorch's
// CPU random generator and `buffers` are as they were afterwards, also when it throws.
// Throws gradflow::UsageError when `loss()` is no scalar that depends on the parameters.
Sharpness measure_sharpness(const std::function<at::Tensor()>& loss, const std::vector<at::Tensor>& params,
                            const std::vector<at::Tensor>& buffers, const SharpnessOptions& options);

}  // namespace gradflow::detail
