#include "monitor/script_outputs.h"

#include <mutex>
#include <unordered_map>
#include <unordered_set>

#include <torch/csrc/jit/api/function_impl.h>
#include <torch/csrc/jit/api/module.h>
#include <torch/csrc/jit/ir/ir.h>
#include <torch/csrc/jit/runtime/custom_operator.h>

#include "gradflow/monitor.h"

namespace gradflow::detail {

namespace {

constexpr const char* kOpName = "gradflow::layer_output";
constexpr const char* kRootName = "(root)";  // the module path of the model's own parameters

// Where one submodule's outputs go.
struct Target {
  Monitor* monitor = nullptr;
  std::string module;
  int time_dim = -1;
};

// Submodule instances (their TorchScript objects) -> where their outputs go. The op below runs
// in any forward of any module; only registered instances name anything.
struct Registry {
  std::mutex mu;
  std::unordered_map<const c10::ivalue::Object*, Target> targets;
};

Registry& registry() {
  static Registry r;
  return r;
}

at::Tensor first_tensor(const c10::IValue& v) {
  if (v.isTensor()) return v.toTensor();
  if (v.isTuple())
    for (const auto& e : v.toTupleRef().elements())
      if (e.isTensor()) return e.toTensor();
  if (v.isTensorList() && !v.toTensorList().empty()) return v.toTensorList().get(0);
  return {};
}

// gradflow::layer_output(output, module) -> output: names `output` to the module's Monitor.
void name_output(torch::jit::Stack& stack) {
  const c10::IValue module = torch::jit::pop(stack);
  Target target;
  {
    Registry& r = registry();
    std::lock_guard<std::mutex> lock(r.mu);
    auto it = module.isObject() ? r.targets.find(module.toObject().get()) : r.targets.end();
    if (it == r.targets.end()) return;
    target = it->second;
  }
  const at::Tensor out = first_tensor(stack.back());
  if (out.defined()) target.monitor->layer_output(out, target.module, target.time_dim);
}

// Conservative: the op must stay where it is, after its call, through every graph pass.
const torch::jit::RegisterOperators kRegister({torch::jit::Operator(
    "gradflow::layer_output(Any output, Any module) -> Any",
    [](torch::jit::Stack& stack) { name_output(stack); }, c10::AliasAnalysisKind::CONSERVATIVE)});

// A submodule's forward, or one of its overloads (nn.LSTM's forward__0, forward__1): what a
// forward hook on a live module would fire on.
bool is_module_call(const torch::jit::Node* n) {
  if (n->kind() != c10::prim::CallMethod || n->s(c10::attr::name).rfind("forward", 0) != 0 || n->inputs().empty())
    return false;
  auto cls = n->input(0)->type()->cast<c10::ClassType>();
  return cls && cls->is_module() && n->outputs().size() == 1;
}

// A recurrent module's time dimension (its output is a sequence), -1 for others.
int time_dim_of(const torch::jit::Module& m) {
  const auto& name = m.type()->name();
  if (!name) return -1;
  const std::string q = name->qualifiedName();
  for (const char* kind : {".rnn.LSTM", ".rnn.GRU", ".rnn.RNN"}) {
    const std::string k(kind);
    if (q.size() >= k.size() && q.compare(q.size() - k.size(), k.size(), k) == 0)
      return m.hasattr("batch_first") && m.attr("batch_first").toBool() ? 1 : 0;
  }
  return -1;
}

bool has_own_trainable_parameter(const torch::jit::Module& m) {
  for (const auto& p : m.parameters(/*recurse=*/false))
    if (p.requires_grad()) return true;
  return false;
}

}  // namespace

std::vector<std::pair<std::string, at::Tensor>> trainable_parameters(const torch::jit::Module& module) {
  std::vector<std::pair<std::string, at::Tensor>> named;
  for (const auto& p : module.named_parameters(/*recurse=*/true))
    if (p.value.requires_grad()) named.emplace_back(p.name, p.value);
  return named;
}

std::vector<at::Tensor> buffers_of(const torch::jit::Module& module) {
  std::vector<at::Tensor> out;
  for (const auto& b : module.buffers(/*recurse=*/true)) out.push_back(b);
  return out;
}

std::vector<std::string> module_kinds(const torch::jit::Module& module) {
  std::vector<std::string> kinds;
  for (const auto& m : module.modules())
    if (const auto& name = m.type()->name()) kinds.push_back(name->qualifiedName());
  return kinds;
}

struct ScriptOutputs::Impl {
  // Held so that no other object takes a registered one's address while it is registered.
  std::vector<c10::intrusive_ptr<c10::ivalue::Object>> registered;
  // Each inserted op, with its graph kept alive until the op is taken out again.
  std::vector<std::pair<std::shared_ptr<torch::jit::Graph>, torch::jit::Node*>> inserted;

  // Puts the op on `value` (an output of `after`, or the graph's own output when `after` is null),
  // with `module` the object that produced it.
  void name_value(const std::shared_ptr<torch::jit::Graph>& g, torch::jit::Value* value, torch::jit::Value* module,
                  torch::jit::Node* after) {
    torch::jit::Node* op = g->create(c10::Symbol::fromQualString(kOpName), {value, module}, 1);
    // The value's type (Value::setType's inline body needs RTTI LibTorch does not export, in a
    // debug build); the value keeps its own name.
    const std::string name = value->hasDebugName() ? value->debugName() : std::string();
    op->output()->copyMetadata(value);
    if (!name.empty()) value->setDebugName(name);
    if (after) {
      op->insertAfter(after);
      value->replaceAllUsesAfterNodeWith(op, op->output());
    } else {
      op->insertBefore(g->return_node());
      g->return_node()->replaceInputWith(value, op->output());
    }
    inserted.emplace_back(g, op);
  }

  void instrument(const std::shared_ptr<torch::jit::Graph>& g, torch::jit::Block* block) {
    std::vector<torch::jit::Node*> calls;
    for (torch::jit::Node* n : block->nodes()) {
      for (torch::jit::Block* inner : n->blocks()) instrument(g, inner);
      if (is_module_call(n)) calls.push_back(n);
    }
    for (torch::jit::Node* call : calls) name_value(g, call->output(), call->input(0), call);
  }

  // `root`: the model's own forward, whose result is its own parameters' output.
  void instrument(torch::jit::GraphFunction& fn, bool root) {
    const std::shared_ptr<torch::jit::Graph> g = fn.graph();
    instrument(g, g->block());
    if (root && g->outputs().size() == 1 && !g->inputs().empty()) name_value(g, g->outputs()[0], g->inputs()[0], nullptr);
    fn.clear_optimized_graphs();
  }

  void name(const torch::jit::Module& m, const std::string& path, Monitor& monitor) {
    Registry& r = registry();
    std::lock_guard<std::mutex> lock(r.mu);
    r.targets[m._ivalue().get()] = Target{&monitor, path, time_dim_of(m)};
    registered.push_back(m._ivalue());
  }
};

ScriptOutputs::ScriptOutputs(torch::jit::Module& module, Monitor& monitor) : impl_(std::make_unique<Impl>()) {
  std::unordered_set<const torch::jit::Graph*> done;  // one graph per type, shared by its instances
  for (const auto& item : module.named_modules()) {
    const bool root = item.name.empty();
    const bool named = has_own_trainable_parameter(item.value);
    // Every method: a TransformerEncoderLayer calls its attention from _sa_block.
    for (const auto& method : item.value.get_methods()) {
      auto& fn = torch::jit::toGraphFunction(method.function());
      if (done.insert(fn.graph().get()).second) impl_->instrument(fn, root && named && method.name() == "forward");
    }
    if (named) impl_->name(item.value, root ? kRootName : item.name, monitor);
  }
}

ScriptOutputs::~ScriptOutputs() {
  {
    Registry& r = registry();
    std::lock_guard<std::mutex> lock(r.mu);
    for (const auto& object : impl_->registered) r.targets.erase(object.get());
  }
  for (auto& [graph, op] : impl_->inserted) {
    op->output()->replaceAllUsesWith(op->input(0));
    op->destroy();
  }
}

}  // namespace gradflow::detail
