#include "monitor/graph_walk.h"

#include <torch/torch.h>

#include "monitor/stats_path.h"
#include "torch_test_util.h"

namespace gradflow::detail {
namespace {

// Parameters of `named`, with each parameter's module given as the name up to its last '.'.
struct Lookup {
  ParamLookup params;
  std::vector<std::string> modules;
  explicit Lookup(const torch::nn::Module& m) {
    for (const auto& item : m.named_parameters()) {
      const std::string module = item.key().substr(0, item.key().rfind('.'));
      auto it = std::find(modules.begin(), modules.end(), module);
      if (it == modules.end()) it = modules.insert(modules.end(), module);
      params.index.emplace(item.value().unsafeGetTensorImpl(), static_cast<int>(params.module.size()));
      params.module.push_back(static_cast<int>(it - modules.begin()));
    }
    nest_modules(params, modules);
  }
  std::vector<std::string> names(const std::vector<LayerOutput>& outs) const {
    std::vector<std::string> v;
    for (const auto& o : outs) v.push_back(modules[o.module] + (o.call ? "#" + std::to_string(o.call) : ""));
    return v;
  }
};

// Linear layers under the given names, as one module to look parameters up in.
torch::nn::Sequential named(const std::vector<std::pair<std::string, torch::nn::Linear>>& layers) {
  torch::nn::Sequential holder;
  for (const auto& [name, layer] : layers) holder->push_back(std::string(name), layer);
  return holder;
}

class GraphWalkTest : public test::TorchTest {};

TEST_F(GraphWalkTest, FindsEachLinearLayersOutputInForwardOrder) {
  torch::nn::Linear l0(4, 8), l1(8, 8), l2(8, 2);
  torch::nn::Sequential net(l0, l1, l2);
  const Lookup lookup(*net);
  const auto h0 = l0->forward(torch::randn({5, 4}));
  const auto h1 = l1->forward(torch::tanh(h0));
  const auto h2 = l2->forward(torch::tanh(h1));
  const auto outs = find_layer_outputs(h2.pow(2).sum().grad_fn().get(), lookup.params);
  EXPECT_EQ(lookup.names(outs), (std::vector<std::string>{"0", "1", "2"}));
  // Each node found is the one that produced the layer's output: its input gradient is dL/d(output).
  ASSERT_EQ(outs.size(), 3u);
  EXPECT_EQ(outs[0].node, h0.grad_fn().get());
  EXPECT_EQ(outs[1].node, h1.grad_fn().get());
  EXPECT_EQ(outs[2].node, h2.grad_fn().get());
}

TEST_F(GraphWalkTest, AModuleCalledTwiceIsNumberedPerCall) {
  torch::nn::Linear shared(6, 6), head(6, 1);
  const Lookup lookup(*named({{"shared", shared}, {"head", head}}));
  const auto y = head->forward(torch::relu(shared->forward(torch::relu(shared->forward(torch::randn({3, 6}))))));
  const auto outs = find_layer_outputs(y.sum().grad_fn().get(), lookup.params);
  EXPECT_EQ(lookup.names(outs), (std::vector<std::string>{"shared#1", "shared#2", "head"}));
}

TEST_F(GraphWalkTest, ANodeFedByTwoModulesIsNamedAfterNeither) {
  torch::nn::Linear a(3, 3), b(3, 3);
  const Lookup lookup(*named({{"a", a}, {"b", b}}));
  const auto x = torch::randn({2, 3});
  // One op reads both modules' weights: x @ (Wa + Wb)^T is no single layer's output.
  const auto y = torch::matmul(x, (a->weight + b->weight).t());
  const auto outs = find_layer_outputs(y.sum().grad_fn().get(), lookup.params);
  for (const auto& name : lookup.names(outs)) EXPECT_TRUE(name != "a" && name != "b") << name;
  EXPECT_TRUE(outs.empty());
}

TEST_F(GraphWalkTest, AnAttentionEndsWhereItsOutProjectionEnds) {
  // torch::nn::MultiheadAttention applies its own in_proj weight first; its output is that of
  // its out_proj, the last parameterised module inside it.
  torch::nn::MultiheadAttention attn(8, 2);
  torch::nn::Linear head(8, 1);
  torch::nn::Sequential holder;
  holder->push_back("attn", attn);
  holder->push_back("head", head);
  const Lookup lookup(*holder);
  const auto x = torch::randn({5, 3, 8});
  const auto a = std::get<0>(attn->forward(x, x, x));
  const auto outs = find_layer_outputs(head->forward(torch::relu(a)).sum().grad_fn().get(), lookup.params);
  const auto names = lookup.names(outs);
  ASSERT_EQ(names, (std::vector<std::string>{"attn.out_proj", "attn", "head"}));
  EXPECT_EQ(outs[0].node, a.grad_fn().get());
  EXPECT_EQ(outs[1].node, a.grad_fn().get());
}

TEST_F(GraphWalkTest, AWeightComputedFromParametersAloneIsLookedThrough) {
  // W.repeat() and a weight norm's g * v / |v| are the module's weight, not its output: the op
  // applying them to the data is.
  torch::nn::Linear a(4, 4), g(4, 1);
  const Lookup lookup(*named({{"a", a}, {"g", g}}));
  const auto x = torch::randn({3, 4});
  const auto y0 = torch::mm(x, a->weight.repeat({1, 2}));
  const auto v = g->weight.t();  // 4 x 1, with g's bias as the gain
  const auto y1 = torch::mm(y0.narrow(1, 0, 4), v * g->bias / v.norm());
  const auto outs = find_layer_outputs(y1.sum().grad_fn().get(), lookup.params);
  ASSERT_EQ(lookup.names(outs), (std::vector<std::string>{"a", "g"}));
  EXPECT_EQ(outs[0].node, y0.grad_fn().get());
  EXPECT_EQ(outs[1].node, y1.grad_fn().get());
}

TEST_F(GraphWalkTest, ViewNodesAreLookedThrough) {
  torch::nn::Linear fc(4, 4);
  EXPECT_TRUE(fc->weight.t().grad_fn() != nullptr && is_view_like(*fc->weight.t().grad_fn()));
  const auto y = fc->forward(torch::randn({2, 4}));
  EXPECT_FALSE(is_view_like(*y.grad_fn()));
}

// The cache's answer, compared field by field with a fresh walk of the same graph.
void expect_same_as_fresh_walk(const std::vector<LayerOutput>& cached, torch::autograd::Node* root,
                               const ParamLookup& params) {
  const auto fresh = find_layer_outputs(root, params);
  ASSERT_EQ(cached.size(), fresh.size());
  for (std::size_t i = 0; i < fresh.size(); ++i) {
    EXPECT_EQ(cached[i].node, fresh[i].node) << i;
    EXPECT_EQ(cached[i].module, fresh[i].module) << i;
    EXPECT_EQ(cached[i].call, fresh[i].call) << i;
    EXPECT_EQ(cached[i].sequence_nr, fresh[i].sequence_nr) << i;
  }
}

TEST_F(GraphWalkTest, TheCacheAnswersLikeAFreshWalkAndWalksAgainWhenTheGraphChanges) {
  torch::nn::Linear l0(4, 8), l1(8, 8), l2(8, 2);
  const Lookup lookup(*named({{"l0", l0}, {"l1", l1}, {"l2", l2}}));
  LayerOutputCache cache;
  // skip: l1 left out; twice: l1 called twice (the same module, a different graph).
  auto forward = [&](bool skip, bool twice) {
    auto h = torch::tanh(l0->forward(torch::randn({5, 4})));
    if (!skip) h = torch::tanh(l1->forward(h));
    if (twice) h = torch::tanh(l1->forward(h));
    return l2->forward(h).pow(2).sum();
  };
  const std::vector<std::pair<bool, bool>> shapes = {{false, false}, {false, false}, {true, false}, {true, false},
                                                     {false, true},  {false, false}, {false, false}};
  const std::vector<bool> walks = {true, false, true, false, true, true, false};
  const std::vector<std::vector<std::string>> names = {
      {"l0", "l1", "l2"}, {"l0", "l1", "l2"}, {"l0", "l2"}, {"l0", "l2"}, {"l0", "l1#1", "l1#2", "l2"},
      {"l0", "l1", "l2"}, {"l0", "l1", "l2"}};
  for (std::size_t k = 0; k < shapes.size(); ++k) {
    const auto loss = forward(shapes[k].first, shapes[k].second);
    bool walked = false;
    const auto& outs = cache.find(loss.grad_fn().get(), lookup.params, &walked);
    EXPECT_EQ(walked, walks[k]) << "graph " << k;
    EXPECT_EQ(lookup.names(outs), names[k]) << "graph " << k;
    expect_same_as_fresh_walk(outs, loss.grad_fn().get(), lookup.params);
  }
}

TEST_F(GraphWalkTest, TheCacheTellsParametersApart) {
  // Two graphs of one shape that read different parameters are not the same graph.
  torch::nn::Linear a(4, 4), b(4, 4), head(4, 1);
  const Lookup lookup(*named({{"a", a}, {"b", b}, {"head", head}}));
  LayerOutputCache cache;
  const auto x = torch::randn({3, 4});
  bool walked = false;
  const auto la = head->forward(torch::relu(a->forward(x))).sum();
  EXPECT_EQ(lookup.names(cache.find(la.grad_fn().get(), lookup.params, &walked)), (std::vector<std::string>{"a", "head"}));
  const auto lb = head->forward(torch::relu(b->forward(x))).sum();
  EXPECT_EQ(lookup.names(cache.find(lb.grad_fn().get(), lookup.params, &walked)), (std::vector<std::string>{"b", "head"}));
  EXPECT_TRUE(walked);
}

TEST(StatsPath, OnePlaceDecidesWhereEachStatisticIsComputed) {
  const auto g = torch::randn({4, 4}), w = torch::randn({4, 4});
  MonitorOptions o;
  auto plan = plan_stats(o, g, w);
  EXPECT_EQ(plan.grad, StatsPath::fused);
  EXPECT_TRUE(plan.weight_in_same_pass);
  plan = plan_stats(o, g, w.to(torch::kDouble));  // different types: two passes
  EXPECT_FALSE(plan.weight_in_same_pass);
  EXPECT_EQ(plan.weight, StatsPath::fused);
  plan = plan_stats(o, g, torch::Tensor());
  EXPECT_FALSE(plan.weight_in_same_pass);
  EXPECT_EQ(plan_stats(o, g.to(torch::kHalf), w).grad, StatsPath::device);  // the fused pass reads float and double
  o.backend = StatsBackend::aten;
  plan = plan_stats(o, g, w);
  EXPECT_EQ(plan.grad, StatsPath::device);
  EXPECT_EQ(plan.weight, StatsPath::device);
  EXPECT_FALSE(plan.weight_in_same_pass);
  o.backend = StatsBackend::automatic;
  o.async = true;
  EXPECT_EQ(plan_stats(o, g, w).grad, std::thread::hardware_concurrency() > 1 ? StatsPath::worker : StatsPath::fused);
}

}  // namespace
}  // namespace gradflow::detail
