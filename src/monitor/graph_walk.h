#pragma once
// Finds the layer outputs of a model in the autograd graph of one forward pass.

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

namespace c10 {
struct TensorImpl;
}
namespace torch::autograd {
struct Node;
}

namespace gradflow::detail {

// What the walk needs to know of the model's parameters.
struct ParamLookup {
  std::unordered_map<const c10::TensorImpl*, int> index;  // a parameter's tensor -> its index
  std::vector<int> module;                                 // parameter index -> module index
  std::vector<std::vector<int>> nested;                    // module index -> the modules inside it
  // parameter index -> k for a fused recurrent module's weight_hh_lk / bias_hh_lk, of either
  // direction, -1 for any other parameter (see note_fused_layers)
  std::vector<int> fused_layer;
  // parameter index -> whether it is a backward direction's (weight_hh_lk_reverse, bias_hh_lk_reverse)
  std::vector<bool> fused_reverse;
};

// Fills `params.nested` from the modules' names (module index -> name, as named_modules() gives
// them): "attn.out_proj" is inside "attn".
void nest_modules(ParamLookup& params, const std::vector<std::string>& modules);

// Fills `params.fused_layer` and `params.fused_reverse` from the parameters' names (parameter
// index -> name), as torch::nn::LSTM / GRU / RNN name them.
void note_fused_layers(ParamLookup& params, const std::vector<std::string>& names);

// The node whose input gradient is dL/d(output) of one call of a parameterised module.
struct LayerOutput {
  torch::autograd::Node* node = nullptr;
  int module = 0;
  std::uint64_t sequence_nr = 0;
  // 0 when the module is called once in the graph; 1..n in forward order when it is called n times.
  int call = 0;
  // A fused recurrent module of several layers: which layer's output sequence this is; -1 otherwise.
  int layer = -1;
  // The time dimension of a recurrent module's output sequence; -1 for other outputs.
  int time_dim = -1;
};

// Walks the graph below `root` and returns each parameterised module's output nodes in forward
// order. AccumulateGrad nodes map back to parameters; what is computed from one module's
// parameters alone (a view, W.repeat(), a weight norm's g * v / |v|) is looked through to the op
// that applies it to data; that op is the module's output unless a node right above it consumes
// a different parameter of the same module (one call split in two ops); a node fed by several
// modules is named after none of them. A module with parameterised modules inside it (attention
// and its out_proj) ends where the last of them that its call reaches ends. A fused recurrent
// module computed op by op, as LibTorch does on the CPU, has one output per layer: the sequence
// that layer stacks (StackBackward0), its time steps along dimension 0; of a bidirectional layer,
// the CatBackward0 joining its two directions' sequences along the features. Where the layers do
// not show (packed sequences), the ops applying weight_hh, one per step and direction, are no
// outputs: the module's one output is the earliest node gathering all of them (CatBackward0 or
// StackBackward0). A fused kernel (cuDNN's) is one op, the module's output.
std::vector<LayerOutput> find_layer_outputs(torch::autograd::Node* root, const ParamLookup& params);

// The walk's result kept while the training loop builds graphs of the same shape, so that a
// step pays one light pass over the graph instead of the full walk (and no names are rebuilt).
// Two graphs have the same shape when a depth-first pass from the root meets the same node
// types, in the same order, with the same edges (to the same parameters) and the same
// sequence-number offsets from the root; then the walk's answer is the same, node for node.
class LayerOutputCache {
 public:
  // The layer outputs below `root`, with this graph's nodes; true in `*walked` when the shape
  // was new and the full walk ran.
  const std::vector<LayerOutput>& find(torch::autograd::Node* root, const ParamLookup& params, bool* walked = nullptr);
  // Forgets the cached shape (the parameters changed).
  void clear();

 private:
  // Fills nodes_ (visit order) and signature_ for the graph below `root`.
  void fingerprint(torch::autograd::Node* root, const ParamLookup& params);

  std::vector<std::int64_t> signature_, cached_signature_;
  std::vector<torch::autograd::Node*> nodes_;
  std::unordered_map<torch::autograd::Node*, int> visit_index_;
  std::vector<int> output_nodes_;  // visit index of each output
  std::vector<LayerOutput> outputs_;
};

// Nodes that only reshape, transpose or convert a tensor on its way to the op that uses it.
bool is_view_like(const torch::autograd::Node& node);

}  // namespace gradflow::detail
