#include "monitor/graph_walk.h"

#include <algorithm>
#include <map>
#include <mutex>
#include <string>
#include <typeindex>
#include <unordered_set>

#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/accumulate_grad.h>

namespace gradflow::detail {

using torch::autograd::Node;

namespace {

// Whether a node's type is one of `names`, cached by type.
template <std::size_t N>
bool type_in(const Node& node, const char* const (&names)[N], std::mutex& mu, std::unordered_map<std::type_index, bool>& cache) {
  const std::type_index key(typeid(node));
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  const std::string name = node.name();
  const bool in = std::any_of(std::begin(names), std::end(names), [&](const char* n) { return name == n; });
  cache.emplace(key, in);
  return in;
}

}  // namespace

bool is_view_like(const Node& node) {
  static std::mutex mu;
  static std::unordered_map<std::type_index, bool> cache;
  static const char* const kViews[] = {
      "TBackward0",         "ViewBackward0",       "ReshapeAliasBackward0", "UnsafeViewBackward0",
      "TransposeBackward0", "PermuteBackward0",    "ExpandBackward0",       "SqueezeBackward0",
      "SqueezeBackward1",   "UnsqueezeBackward0",  "ToCopyBackward0",       "CloneBackward0",
      "SliceBackward0",     "SelectBackward0",     "AliasBackward0",        "ContiguousBackward0",
      "NarrowBackward0",    "SplitBackward0",      "UnbindBackward0",       "ChunkBackward0"};
  return type_in(node, kViews, mu, cache);
}

// One-input ops that transform a weight by constants only. Others with one input may read data
// that is no input of the graph (an embedding's or index_select's indices): not in this list.
bool is_weight_transform(const Node& node) {
  static std::mutex mu;
  static std::unordered_map<std::type_index, bool> cache;
  static const char* const kTransforms[] = {"RepeatBackward0", "MulBackward1",  "DivBackward1", "NegBackward0",
                                            "PowBackward0",    "SqrtBackward0", "ExpBackward0", "NormBackward0",
                                            "NormBackward1",   "LinalgVectorNormBackward0"};
  return is_view_like(node) || type_in(node, kTransforms, mu, cache);
}

void nest_modules(ParamLookup& params, const std::vector<std::string>& modules) {
  params.nested.assign(modules.size(), {});
  for (std::size_t outer = 0; outer < modules.size(); ++outer)
    for (std::size_t inner = 0; inner < modules.size(); ++inner) {
      const std::string& o = modules[outer];
      const std::string& i = modules[inner];
      const bool inside = i.size() > o.size() && i.compare(0, o.size(), o) == 0 && i[o.size()] == '.';
      if (inside) params.nested[outer].push_back(static_cast<int>(inner));
    }
}

void note_fused_layers(ParamLookup& params, const std::vector<std::string>& names) {
  params.fused_layer.assign(names.size(), -1);
  params.fused_reverse.assign(names.size(), false);
  for (std::size_t p = 0; p < names.size(); ++p) {
    const std::string leaf = names[p].substr(names[p].rfind('.') + 1);
    for (const char* prefix : {"weight_hh_l", "bias_hh_l"}) {
      const std::string pre(prefix);
      if (leaf.compare(0, pre.size(), pre) != 0) continue;
      const std::string rest = leaf.substr(pre.size());
      const std::size_t digits = rest.find_first_not_of("0123456789");
      if (digits == 0) continue;
      const bool reverse = digits != std::string::npos && rest.substr(digits) == "_reverse";
      if (digits != std::string::npos && !reverse) continue;
      params.fused_layer[p] = std::stoi(rest.substr(0, digits));
      params.fused_reverse[p] = reverse;
    }
  }
}

namespace {

struct WalkNode {
  Node* node = nullptr;
  std::uint64_t seq = 0;
  std::vector<int> children;
  std::vector<int> parents;
  std::vector<int> direct_params;
  int edges = 0;
  int nonnull_edges = 0;
  bool pure = false;          // computed from one module's parameters alone: part of its weight
  std::vector<int> from;      // for a pure node, the parameters it is computed from
  std::vector<int> consumed;  // parameters this node applies (directly or through pure nodes)
  std::vector<int> above;     // parameters used by the nearest consumers above it
};

void add_unique(std::vector<int>& v, int x) {
  if (std::find(v.begin(), v.end(), x) == v.end()) v.push_back(x);
}

// Every node below the root, with the parameters each one reads directly.
std::vector<WalkNode> collect_nodes(Node* root, const ParamLookup& params) {
  std::vector<WalkNode> nodes;
  std::unordered_map<Node*, int> index;
  std::vector<int> stack;
  auto visit = [&](Node* n) {
    auto [it, fresh] = index.emplace(n, static_cast<int>(nodes.size()));
    if (fresh) {
      WalkNode w;
      w.node = n;
      w.seq = n->sequence_nr();
      nodes.push_back(std::move(w));
      stack.push_back(it->second);
    }
    return it->second;
  };
  visit(root);
  while (!stack.empty()) {
    const int i = stack.back();
    stack.pop_back();
    nodes[i].edges = static_cast<int>(nodes[i].node->next_edges().size());
    for (const auto& edge : nodes[i].node->next_edges()) {
      Node* f = edge.function.get();
      if (f == nullptr) continue;
      ++nodes[i].nonnull_edges;
      if (auto* acc = dynamic_cast<torch::autograd::AccumulateGrad*>(f)) {
        auto it = params.index.find(acc->variable.unsafeGetTensorImpl());
        if (it != params.index.end()) nodes[i].direct_params.push_back(it->second);
        continue;
      }
      const int c = visit(f);
      nodes[i].children.push_back(c);
      nodes[c].parents.push_back(i);
    }
  }
  return nodes;
}

// Inputs of a node were created before it, so ascending sequence numbers visit children first.
std::vector<int> forward_order(const std::vector<WalkNode>& nodes) {
  std::vector<int> order(nodes.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int>(i);
  std::sort(order.begin(), order.end(), [&](int a, int b) { return nodes[a].seq < nodes[b].seq; });
  return order;
}

// The parameters a node is computed from when it reads nothing else: every input is a parameter
// or such a node, and a node of one input transforms it by constants. Empty when it reads data,
// or a null input (a tensor without grad, which may be data), or parameters of several modules.
std::vector<int> weight_sources(const WalkNode& w, const std::vector<WalkNode>& nodes, const ParamLookup& params) {
  const bool one_input = w.nonnull_edges == 1;
  if (w.nonnull_edges == 0 || (one_input ? !is_weight_transform(*w.node) : w.nonnull_edges < w.edges)) return {};
  std::vector<int> from = w.direct_params;
  for (int c : w.children) {
    if (!nodes[c].pure) return {};
    for (int p : nodes[c].from) add_unique(from, p);
  }
  const bool one_module = std::all_of(from.begin(), from.end(), [&](int p) { return params.module[p] == params.module[from[0]]; });
  return one_module ? from : std::vector<int>{};
}

// Which parameters each node applies, looking through what is computed from weights alone.
void mark_consumed(std::vector<WalkNode>& nodes, const std::vector<int>& order, const ParamLookup& params) {
  for (int i : order) {
    WalkNode& w = nodes[i];
    w.from = weight_sources(w, nodes, params);
    w.pure = !w.from.empty();
    if (w.pure) continue;
    w.consumed = w.direct_params;
    for (int c : w.children)
      if (nodes[c].pure)
        for (int p : nodes[c].from) add_unique(w.consumed, p);
  }
}

// The modules whose output this node is.
std::vector<int> output_modules(const WalkNode& w, const ParamLookup& params) {
  std::vector<int> mods;
  for (int p : w.consumed) add_unique(mods, params.module[p]);
  // A node fed by several modules' parameters (a fused DifferentiableGraphBackward, say) is
  // no single layer's output: naming it after one of them would record a wrong number.
  if (mods.size() > 1) return {};
  // One call of a module can show as several nodes (x.matmul(W) + b): a node is that call's
  // output unless a consumer right above it uses a *different* parameter of the same module.
  std::vector<int> out;
  for (int m : mods) {
    const bool inner = std::any_of(w.above.begin(), w.above.end(), [&](int p) {
      return params.module[p] == m && std::find(w.consumed.begin(), w.consumed.end(), p) == w.consumed.end();
    });
    if (!inner) out.push_back(m);
  }
  return out;
}

// From the loss downwards: each node learns the parameters of the nearest consumers above it.
// Returns each output's module and node index.
std::vector<std::pair<int, int>> outputs_top_down(std::vector<WalkNode>& nodes, const std::vector<int>& order,
                                                  const ParamLookup& params) {
  std::vector<std::pair<int, int>> outputs;
  for (auto it = order.rbegin(); it != order.rend(); ++it) {
    WalkNode& w = nodes[*it];
    if (w.pure) continue;
    if (!w.consumed.empty())
      for (int m : output_modules(w, params)) outputs.emplace_back(m, *it);
    const std::vector<int>& pass = w.consumed.empty() ? w.above : w.consumed;
    for (int c : w.children)
      for (int p : pass) add_unique(nodes[c].above, p);
  }
  return outputs;
}

bool consumes_any(const WalkNode& w, const std::vector<int>& modules, const ParamLookup& params) {
  return std::any_of(w.consumed.begin(), w.consumed.end(), [&](int p) {
    return std::find(modules.begin(), modules.end(), params.module[p]) != modules.end();
  });
}

// Visits each node reached from `from` along `next` (&WalkNode::parents: up, &WalkNode::children:
// down) once, going on past a node while `visit` returns true for it.
template <class Visit>
void search(const std::vector<WalkNode>& nodes, int from, std::vector<int> WalkNode::*next, Visit visit) {
  std::vector<int> stack = nodes[from].*next;
  std::unordered_set<int> seen;
  while (!stack.empty()) {
    const int n = stack.back();
    stack.pop_back();
    if (seen.insert(n).second && visit(n)) stack.insert(stack.end(), (nodes[n].*next).begin(), (nodes[n].*next).end());
  }
}

template <class Visit>
void search_up(const std::vector<WalkNode>& nodes, int from, Visit visit) {
  search(nodes, from, &WalkNode::parents, visit);
}

// The nearest nodes above `from` that apply a parameter, searched without passing one; of those
// that apply a parameter of `inner`, the latest; -1 when none does.
int next_inner_consumer(const std::vector<WalkNode>& nodes, int from, const std::vector<int>& inner, const ParamLookup& params) {
  int best = -1;
  search_up(nodes, from, [&](int n) {
    const WalkNode& w = nodes[n];
    if (w.consumed.empty()) return true;
    if (consumes_any(w, inner, params) && (best < 0 || w.seq > nodes[best].seq)) best = n;
    return false;
  });
  return best;
}

// A call of a module with parameterised modules inside it (attention, whose out_proj comes
// last) ends where the last inner module it reaches ends: from the op applying the module's own
// parameters, up from inner consumer to inner consumer until none is left.
int call_end(const std::vector<WalkNode>& nodes, int start, const std::vector<int>& inner, const ParamLookup& params) {
  int at = start;
  for (int next = next_inner_consumer(nodes, at, inner, params); next >= 0; next = next_inner_consumer(nodes, at, inner, params))
    at = next;
  return at;
}

// The sequence one direction of a fused recurrent layer stacks: from its first step's recurrent
// op (the one applying weight_hh), up without passing another op that applies a parameter, the
// earliest StackBackward0 (the final states h_n, c_n are stacked after every layer). -1 when there
// is none (a fused kernel, cuDNN's, computes the whole module in one op; packed sequences
// concatenate their steps). A kernel computing the whole direction is its own sequence.
int direction_sequence(const std::vector<WalkNode>& nodes, const std::vector<int>& order, int module, int layer,
                       bool reverse, const ParamLookup& params) {
  const auto applies_hh = [&](const WalkNode& w) {
    return std::any_of(w.consumed.begin(), w.consumed.end(), [&](int p) {
      return params.module[p] == module && params.fused_layer[p] == layer && params.fused_reverse[p] == reverse;
    });
  };
  const auto first = std::find_if(order.begin(), order.end(), [&](int i) { return applies_hh(nodes[i]); });
  if (first == order.end()) return -1;
  // LibTorch 2 computes a float LSTM's direction on the CPU in one oneDNN op: its output 0 is the sequence.
  if (nodes[*first].node->name() == "MkldnnRnnLayerBackward0") return *first;
  int best = -1;
  search_up(nodes, *first, [&](int n) {
    if (!nodes[n].consumed.empty()) return false;
    if (nodes[n].node->name() != "StackBackward0") return true;
    if (best < 0 || nodes[n].seq < nodes[best].seq) best = n;
    return false;
  });
  return best;
}

// The CatBackward0 nodes right above `from`, looking through views.
std::vector<int> cats_above(const std::vector<WalkNode>& nodes, int from) {
  std::vector<int> cats;
  search_up(nodes, from, [&](int n) {
    if (nodes[n].node->name() != "CatBackward0") return is_view_like(*nodes[n].node);
    cats.push_back(n);
    return false;
  });
  return cats;
}

// A fused recurrent layer's output sequence: its one direction's, or the earliest CatBackward0
// joining both directions' (at::cat({forward, backward}, -1), what the next layer receives). -1
// when it does not show.
int layer_sequence(const std::vector<WalkNode>& nodes, const std::vector<int>& order, int module, int layer,
                   bool bidirectional, const ParamLookup& params) {
  const int forward = direction_sequence(nodes, order, module, layer, false, params);
  if (!bidirectional || forward < 0) return forward;
  const int backward = direction_sequence(nodes, order, module, layer, true, params);
  if (backward < 0) return -1;
  const std::vector<int> joined = cats_above(nodes, backward);
  int best = -1;
  for (int c : cats_above(nodes, forward))
    if (std::find(joined.begin(), joined.end(), c) != joined.end() && (best < 0 || nodes[c].seq < nodes[best].seq)) best = c;
  return best;
}

// A fused recurrent module's layers and directions, as its parameters name them.
struct FusedShape {
  int layers = 0;
  bool bidirectional = false;
};

std::unordered_map<int, FusedShape> fused_shapes(const ParamLookup& params) {
  std::unordered_map<int, FusedShape> shapes;
  for (std::size_t p = 0; p < params.fused_layer.size(); ++p) {
    if (params.fused_layer[p] < 0) continue;
    FusedShape& s = shapes[params.module[p]];
    s.layers = std::max(s.layers, params.fused_layer[p] + 1);
    s.bidirectional = s.bidirectional || params.fused_reverse[p];
  }
  return shapes;
}

// The layers of each fused recurrent module, in place of the ops that apply its weights: module
// -> its layers' output sequences, for modules whose every layer shows one.
std::unordered_map<int, std::vector<int>> fused_layer_outputs(const std::vector<WalkNode>& nodes, const std::vector<int>& order,
                                                               const ParamLookup& params) {
  std::unordered_map<int, std::vector<int>> out;
  for (const auto& [module, shape] : fused_shapes(params)) {
    std::vector<int> seqs;
    for (int k = 0; k < shape.layers; ++k) {
      const int s = layer_sequence(nodes, order, module, k, shape.bidirectional, params);
      if (s < 0) break;
      seqs.push_back(s);
    }
    if (static_cast<int>(seqs.size()) == shape.layers) out.emplace(module, std::move(seqs));
  }
  return out;
}

// Whether a node is one step of a fused recurrent module computed op by op: it applies weight_hh
// (and bias_hh) alone. A fused kernel applies the input weights too.
bool is_recurrent_step(const WalkNode& w, const ParamLookup& params) {
  return !w.consumed.empty() && std::all_of(w.consumed.begin(), w.consumed.end(), [&](int p) {
    return p < static_cast<int>(params.fused_layer.size()) && params.fused_layer[p] >= 0;
  });
}

// The output of a fused recurrent module whose layers do not show: the earliest CatBackward0 or
// StackBackward0 above its first step, searched without passing an op that applies a parameter,
// that has every one of its `steps` below it (packed sequences concatenate each direction's steps,
// then both directions). Checked downwards from each candidate: a search up from every step would
// follow an LSTM's cell-state chain to the end of the sequence, T times. -1 when none gathers all.
int gathered_output(const std::vector<WalkNode>& nodes, const std::vector<int>& steps) {
  std::vector<int> gathers;
  search_up(nodes, steps.front(), [&](int n) {
    if (!nodes[n].consumed.empty()) return false;
    const std::string name = nodes[n].node->name();
    if (name == "CatBackward0" || name == "StackBackward0") gathers.push_back(n);
    return true;
  });
  std::sort(gathers.begin(), gathers.end(), [&](int a, int b) { return nodes[a].seq < nodes[b].seq; });
  const std::unordered_set<int> wanted(steps.begin(), steps.end());
  for (int g : gathers) {
    std::size_t below = 0;
    search(nodes, g, &WalkNode::children, [&](int n) {
      if (nodes[n].consumed.empty()) return true;
      below += wanted.count(n);
      return false;
    });
    if (below == wanted.size()) return g;
  }
  return -1;
}

void number_calls(std::vector<LayerOutput>& outputs) {
  std::map<std::pair<int, int>, int> calls, nth;  // (module, layer) -> calls
  for (const auto& o : outputs) ++calls[{o.module, o.layer}];
  for (auto& o : outputs)
    if (calls[{o.module, o.layer}] > 1) o.call = ++nth[{o.module, o.layer}];
}

}  // namespace

std::vector<LayerOutput> find_layer_outputs(Node* root, const ParamLookup& params) {
  if (root == nullptr) return {};
  std::vector<WalkNode> nodes = collect_nodes(root, params);
  const std::vector<int> order = forward_order(nodes);
  mark_consumed(nodes, order, params);
  const auto fused = fused_layer_outputs(nodes, order, params);
  std::vector<LayerOutput> outputs;
  std::map<int, std::vector<int>> steps;  // module -> its recurrent steps, where its layers do not show
  for (auto [module, at] : outputs_top_down(nodes, order, params)) {
    if (fused.count(module)) continue;
    if (is_recurrent_step(nodes[at], params)) {
      steps[module].push_back(at);
      continue;
    }
    if (module < static_cast<int>(params.nested.size()) && !params.nested[module].empty())
      at = call_end(nodes, at, params.nested[module], params);
    outputs.push_back(LayerOutput{nodes[at].node, module, nodes[at].seq, 0});
  }
  for (const auto& [module, ops] : steps) {
    const int at = gathered_output(nodes, ops);
    if (at >= 0) outputs.push_back(LayerOutput{nodes[at].node, module, nodes[at].seq, 0});
  }
  for (const auto& [module, seqs] : fused)
    for (std::size_t k = 0; k < seqs.size(); ++k)
      outputs.push_back(LayerOutput{nodes[seqs[k]].node, module, nodes[seqs[k]].seq, 0,
                                    seqs.size() > 1 ? static_cast<int>(k) : -1, /*time_dim=*/0});
  // An outer module ending where an inner one ends comes after it, as its forward hook would.
  std::stable_sort(outputs.begin(), outputs.end(),
            [](const LayerOutput& a, const LayerOutput& b) { return a.sequence_nr < b.sequence_nr; });
  number_calls(outputs);
  return outputs;
}

void LayerOutputCache::clear() {
  cached_signature_.clear();
  outputs_.clear();
  output_nodes_.clear();
}

void LayerOutputCache::fingerprint(Node* root, const ParamLookup& params) {
  nodes_.clear();
  signature_.clear();
  visit_index_.clear();
  const std::uint64_t root_seq = root->sequence_nr();
  auto visit = [&](Node* n) {
    auto [it, fresh] = visit_index_.emplace(n, static_cast<int>(nodes_.size()));
    if (fresh) nodes_.push_back(n);
    return it->second;
  };
  visit(root);
  // Codes of an edge's target; a node's entries are its type, its offset and its edges.
  enum : std::int64_t { kNull = -1, kChild = 0, kParam = 1, kOtherLeaf = 2 };
  for (std::size_t i = 0; i < nodes_.size(); ++i) {
    Node* n = nodes_[i];
    // A type's type_info is one object: its address names the type without a string compare.
    signature_.push_back(static_cast<std::int64_t>(reinterpret_cast<std::intptr_t>(&typeid(*n))));
    signature_.push_back(static_cast<std::int64_t>(root_seq - n->sequence_nr()));
    signature_.push_back(static_cast<std::int64_t>(n->next_edges().size()));
    for (const auto& edge : n->next_edges()) {
      Node* f = edge.function.get();
      if (f == nullptr) {
        signature_.push_back(kNull);
      } else if (typeid(*f) == typeid(torch::autograd::AccumulateGrad)) {
        const auto* acc = static_cast<torch::autograd::AccumulateGrad*>(f);
        auto it = params.index.find(acc->variable.unsafeGetTensorImpl());
        signature_.push_back(it == params.index.end() ? kOtherLeaf : kParam);
        signature_.push_back(it == params.index.end() ? 0 : it->second);
      } else {
        signature_.push_back(kChild);
        signature_.push_back(visit(f));
      }
    }
  }
}

const std::vector<LayerOutput>& LayerOutputCache::find(Node* root, const ParamLookup& params, bool* walked) {
  if (walked) *walked = false;
  if (root == nullptr) {
    outputs_.clear();
    cached_signature_.clear();
    return outputs_;
  }
  fingerprint(root, params);
  if (signature_ == cached_signature_ && !cached_signature_.empty()) {
    for (std::size_t k = 0; k < outputs_.size(); ++k) {
      outputs_[k].node = nodes_[output_nodes_[k]];
      outputs_[k].sequence_nr = outputs_[k].node->sequence_nr();
    }
    return outputs_;
  }
  if (walked) *walked = true;
  outputs_ = find_layer_outputs(root, params);
  output_nodes_.clear();
  for (const auto& o : outputs_) output_nodes_.push_back(visit_index_.at(o.node));
  cached_signature_.swap(signature_);
  return outputs_;
}

}  // namespace gradflow::detail
