#pragma once
/// \file
/// The coordinate check's figure of a tensor: the mean |x| over its coordinates, computed where
/// the tensors are and fetched once (include/gradflow/coord_check.h holds what is done with it).
#include <vector>

#include <ATen/core/Tensor.h>

namespace gradflow {

/// mean |x| of each tensor, in double, computed on the tensors' devices and brought to the host
/// in one transfer per device; NaN for an undefined or empty tensor.
std::vector<double> coordinate_sizes(const std::vector<at::Tensor>& tensors);

}  // namespace gradflow
