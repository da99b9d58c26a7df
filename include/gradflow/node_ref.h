#pragma once
/// \file
/// LibTorch's owning handle on an autograd node.

#include <type_traits>
#include <utility>

#include <ATen/core/TensorBase.h>

namespace gradflow {

/// What `Tensor::grad_fn()` returns: `NodeRef` in LibTorch 1.x,
/// `c10::intrusive_ptr<torch::autograd::Node>` in 2.x. Spelled from that function, so that code
/// holding a node compiles against both without a version test.
using NodeRef = std::decay_t<decltype(std::declval<const at::TensorBase&>().grad_fn())>;

}  // namespace gradflow
