#pragma once
// What differs between the LibTorch versions gradflow builds with (Debian's 1.13 to the 2.x of a
// PyTorch wheel) lives in src/compat: the rest of the code names these and no version.
// Here: how an autograd node and a tensor's hooks are held.

#include <memory>
#include <optional>
#include <type_traits>
#include <utility>

#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/variable.h>

#include "gradflow/node_ref.h"

namespace gradflow::compat {

namespace detail {
template <class N>
std::shared_ptr<N> owning(N& node, std::shared_ptr<N>*) {
  return node.shared_from_this();
}
template <class N>
c10::intrusive_ptr<N> owning(N& node, c10::intrusive_ptr<N>*) {
  return c10::intrusive_ptr<N>::unsafe_reclaim_from_nonowning(&node);
}
template <class Ref>
struct WeakOf;
template <class N>
struct WeakOf<std::shared_ptr<N>> {
  using type = std::weak_ptr<N>;
};
template <class N>
struct WeakOf<c10::intrusive_ptr<N>> {
  using type = c10::weak_intrusive_ptr<N>;
};
}  // namespace detail

/// A handle that does not keep its node alive: lock() gives a NodeRef, null once the node is gone.
class WeakNodeRef {
 public:
  WeakNodeRef& operator=(const NodeRef& node) {
    weak_.emplace(node);
    return *this;
  }
  NodeRef lock() const { return weak_ ? weak_->lock() : NodeRef(); }
  void reset() { weak_.reset(); }

 private:
  // Optional: LibTorch 2's weak_intrusive_ptr has no empty state.
  std::optional<detail::WeakOf<NodeRef>::type> weak_;
};

/// A new owning handle on a node that its graph keeps alive (what shared_from_this() was in 1.x).
inline NodeRef owning(torch::autograd::Node& node) {
  return detail::owning(node, static_cast<NodeRef*>(nullptr));
}

namespace detail {
template <class F>
struct SecondParameter;
template <class R, class A, class B>
struct SecondParameter<R (*)(A, B)> {
  using type = std::decay_t<B>;
};
}  // namespace detail

/// What torch::autograd::impl::add_hook takes: a std::shared_ptr to a tensor's pre-hook in 1.x, a
/// std::unique_ptr in 2.x.
using TensorPreHookPtr = detail::SecondParameter<decltype(&torch::autograd::impl::add_hook)>::type;

template <class Hook, class... Args>
TensorPreHookPtr make_tensor_pre_hook(Args&&... args) {
  return TensorPreHookPtr(new Hook(std::forward<Args>(args)...));
}

}  // namespace gradflow::compat
