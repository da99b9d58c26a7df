#pragma once
// Here: the hooks a program puts on a parameter for after its gradient is accumulated (LibTorch
// 2.1+; Python's Tensor.register_post_accumulate_grad_hook). LibTorch 1.x has none.

#include <cstdint>
#include <functional>
#include <memory>
#include <utility>

#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/version.h>

namespace gradflow::compat {

#if TORCH_VERSION_MAJOR >= 2

namespace detail {

// Takes the tensor's one post-accumulate slot, in front of what the program put there.
struct RunFirst : torch::autograd::PostAccumulateGradHook {
  RunFirst(std::unique_ptr<torch::autograd::PostAccumulateGradHook> then, std::shared_ptr<std::function<void()>> first,
           std::uintptr_t key)
      : then(std::move(then)), first(std::move(first)), key(key) {}
  void operator()(const torch::autograd::Variable& tensor) override {
    (*first)();
    (*then)(tensor);
  }
  // Compiled autograd runs the program's hooks as without gradflow.
  void compiled_args(torch::dynamo::autograd::CompiledNodeArgs& args) const override { then->compiled_args(args); }
  void apply_with_saved(torch::autograd::Variable& tensor, torch::dynamo::autograd::SwapSavedVariables& saved) override {
    then->apply_with_saved(tensor, saved);
  }
  std::unique_ptr<torch::autograd::PostAccumulateGradHook> then;
  std::shared_ptr<std::function<void()>> first;
  std::uintptr_t key;
};

// The link of `slot`'s chain that holds the RunFirst with `key`, null when none does.
inline std::unique_ptr<torch::autograd::PostAccumulateGradHook>* find_link(
    std::unique_ptr<torch::autograd::PostAccumulateGradHook>& slot, std::uintptr_t key) {
  for (auto* link = &slot; *link;) {
    auto* run_first = dynamic_cast<RunFirst*>(link->get());
    if (!run_first) return nullptr;
    if (run_first->key == key) return link;
    link = &run_first->then;
  }
  return nullptr;
}

// On the parameter's gradient accumulator: before each accumulation, puts `first` in front of the
// program's post-accumulate hooks if they are there and it is not yet (the program may add its
// first one at any time).
struct PutFirst : torch::autograd::FunctionPreHook {
  PutFirst(at::Tensor param, std::function<void()> first)
      : param(std::move(param)), first(std::make_shared<std::function<void()>>(std::move(first))) {}
  torch::autograd::variable_list operator()(const torch::autograd::variable_list& grads) override {
    auto& slot = torch::autograd::impl::post_acc_grad_hooks(param);
    if (slot && !find_link(slot, key())) slot = std::make_unique<RunFirst>(std::move(slot), first, key());
    return grads;
  }
  std::uintptr_t key() const { return reinterpret_cast<std::uintptr_t>(this); }
  at::Tensor param;
  std::shared_ptr<std::function<void()>> first;
};

}  // namespace detail

/// Whether a program can hook a parameter for after its accumulation (LibTorch 2.x).
constexpr bool has_post_accumulate_hooks = true;

/// Runs `first` each time `accumulator` has added a gradient to `param`'s .grad, ahead of the
/// program's post-accumulate hooks on `param`, and only when it has some: those may step an
/// optimizer and free .grad (the optimizer in backward), and the gradient to record is the one
/// they are given. Returns the key that stop_running_first() takes.
inline std::uintptr_t run_first(torch::autograd::Node& accumulator, const at::Tensor& param, std::function<void()> first) {
  auto hook = std::make_unique<detail::PutFirst>(param, std::move(first));
  const std::uintptr_t key = hook->key();
  accumulator.add_pre_hook(std::move(hook));
  return key;
}

/// Undoes run_first(): the program's hooks stay, in their order.
inline void stop_running_first(torch::autograd::Node& accumulator, const at::Tensor& param, std::uintptr_t key) {
  auto& slot = torch::autograd::impl::post_acc_grad_hooks(param);
  if (auto* link = detail::find_link(slot, key)) {
    auto* run_first = static_cast<detail::RunFirst*>(link->get());
    *link = std::move(run_first->then);
  }
  auto& hooks = accumulator.pre_hooks();
  for (auto it = hooks.begin(); it != hooks.end(); ++it)
    if (reinterpret_cast<std::uintptr_t>(it->get()) == key) {
      hooks.erase(it);
      break;
    }
}

#else

constexpr bool has_post_accumulate_hooks = false;

inline std::uintptr_t run_first(torch::autograd::Node&, const at::Tensor&, std::function<void()>) { return 0; }
inline void stop_running_first(torch::autograd::Node&, const at::Tensor&, std::uintptr_t) {}

#endif

}  // namespace gradflow::compat
