#pragma once
// A TorchScript module's submodule outputs, named to a Monitor as forward hooks would name them.

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

namespace torch::jit {
struct Module;
}

namespace gradflow {
class Monitor;
}

namespace gradflow::detail {

// What Monitor::attach hooks of a TorchScript module: its trainable parameters, by name.
std::vector<std::pair<std::string, at::Tensor>> trainable_parameters(const torch::jit::Module& module);
// Its buffers (BatchNorm's running statistics), every submodule's.
std::vector<at::Tensor> buffers_of(const torch::jit::Module& module);
// The class name of each of its modules (itself included), for traits_from_module_kinds.
std::vector<std::string> module_kinds(const torch::jit::Module& module);

// TorchScript has no forward hooks, and the op that applies a module's weight is not always its
// last (attention, an aggregation after the weight's): so an identity op goes after every call
// of a submodule's forward in the module's code (the method graphs of its types), and while this
// object lives, each call of a submodule with trainable parameters of its own names what it
// returned (its first tensor) to the Monitor (Monitor::layer_output). The code is put back as it
// was on destruction. A module whose code was run before, or frozen (its calls inlined), keeps
// the code it runs: none of its outputs is named, and the Monitor's graph walk names them.
class ScriptOutputs {
 public:
  ScriptOutputs(torch::jit::Module& module, Monitor& monitor);
  ~ScriptOutputs();
  ScriptOutputs(const ScriptOutputs&) = delete;
  ScriptOutputs& operator=(const ScriptOutputs&) = delete;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace gradflow::detail
