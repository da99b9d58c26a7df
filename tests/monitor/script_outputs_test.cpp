// A TorchScript module's layer outputs are what each submodule's call returned, as a forward hook
// on a live module sees them, also where the op applying the weight is not the module's last.
#include <torch/script.h>
#include <torch/torch.h>

#include "gradflow/monitor.h"
#include "torch_test_util.h"

namespace gradflow {
namespace {

using test::expect_stats_equal;

// One submodule of `parent`, with a weight of its own and the forward given.
void add_submodule(torch::jit::Module& parent, const std::string& name, const std::vector<std::int64_t>& weight_shape,
                   const std::string& forward) {
  torch::jit::Module sub("Sub_" + name);
  sub.register_parameter("weight", (torch::randn(weight_shape, torch::kDouble) * 0.4).requires_grad_(), false);
  sub.register_buffer("adj", torch::softmax(torch::randn({6, 6}, torch::kDouble), 1));
  sub.define(forward);
  parent.register_module(name, sub);
}

// Modules whose last op is not the one that applies their weight: a graph convolution
// (aggregation after the weight's), an activation inside the module, a weight expanded with
// repeat; `scale`, a parameter of the model's own.
torch::jit::Module save_and_load() {
  torch::manual_seed(5);
  torch::jit::Module m("Net");
  add_submodule(m, "gcn", {4, 5}, "def forward(self, x):\n  return torch.mm(self.adj, torch.mm(x, self.weight))\n");
  add_submodule(m, "act", {5, 5}, "def forward(self, x):\n  return torch.tanh(torch.mm(x, self.weight))\n");
  add_submodule(m, "rep", {5, 3}, "def forward(self, x):\n  return torch.mm(x, self.weight.repeat(1, 2))\n");
  add_submodule(m, "head", {6, 2}, "def forward(self, x):\n  return torch.mm(x, self.weight)\n");
  m.register_parameter("scale", torch::full({1}, 1.5, torch::kDouble).requires_grad_(), false);
  m.define(R"(
    def forward(self, x):
        h = self.act.forward(self.gcn.forward(x))
        return self.head.forward(self.rep.forward(h)) * self.scale
  )");
  const std::string path = ::testing::TempDir() + "gradflow_script_outputs.pt";
  m.save(path);
  return torch::jit::load(path);
}

// The same forward in plain ops on the module's parameters: the outputs a forward hook sees.
std::vector<std::pair<std::string, torch::Tensor>> hook_outputs(torch::jit::Module& m, const torch::Tensor& x) {
  auto w = [&](const char* sub) { return m.attr(sub).toModule().attr("weight").toTensor(); };
  const auto adj = m.attr("gcn").toModule().attr("adj").toTensor();
  const auto gcn = torch::mm(adj, torch::mm(x, w("gcn")));
  const auto act = torch::tanh(torch::mm(gcn, w("act")));
  const auto rep = torch::mm(act, w("rep").repeat({1, 2}));
  const auto head = torch::mm(rep, w("head"));
  const auto out = head * m.attr("scale").toTensor();
  return {{"gcn", gcn}, {"act", act}, {"rep", rep}, {"head", head}, {"(root)", out}};
}

torch::Tensor loss_of(const torch::Tensor& y) { return (y - 0.3).pow(2).sum(); }

class ScriptOutputsTest : public test::TorchTest {};

// Every step of a training run, on TorchScript's default executor (which profiles the first
// runs and optimises the code after them).
TEST_F(ScriptOutputsTest, EachSeriesIsWhatTheModulesCallReturned) {
  torch::jit::Module m = save_and_load();
  Monitor monitor;
  monitor.attach(m);
  for (int step = 0; step < 4; ++step) {
    const auto x = torch::randn({6, 4}, torch::kDouble);
    const auto loss = loss_of(m.forward({x}).toTensor());
    monitor.watch(loss);
    loss.backward();

    const auto truth = hook_outputs(m, x);
    std::vector<torch::Tensor> outs;
    for (const auto& item : truth) outs.push_back(item.second);
    const auto grads = torch::autograd::grad({loss_of(truth.back().second)}, outs);
    const Trace& t = monitor.trace();
    ASSERT_EQ(t.series_of_kind(SeriesKind::activation).size(), truth.size());
    for (std::size_t k = 0; k < truth.size(); ++k) {
      const Record* r = t.steps().back().find(t.find(truth[k].first));
      ASSERT_NE(r, nullptr) << truth[k].first << " step " << step;
      expect_stats_equal(r->grad, grads[k], 1e-9, truth[k].first);
    }
    for (int s : t.series_of_kind(SeriesKind::activation)) EXPECT_FALSE(t.series()[s].found_by_walk);
    // The model's graph: each module is fed by the one called before it.
    EXPECT_EQ(t.series()[t.find("act")].inputs, (std::vector<int>{t.find("gcn")}));
    EXPECT_EQ(t.series()[t.find("head")].inputs, (std::vector<int>{t.find("rep")}));
    torch::NoGradGuard no_grad;
    for (auto p : m.parameters()) {
      p.sub_(p.grad() * 0.05);
      p.grad().zero_();
    }
  }
}

TEST_F(ScriptOutputsTest, TheOpApplyingTheWeightIsNotTheModulesOutput) {
  // The graph walk alone (the parameters given by name) names the op that applies each weight:
  // for the graph convolution and the activation inside a module, another gradient than the
  // module's output gets; the test above would fail on it.
  torch::jit::Module m = save_and_load();
  Monitor monitor;
  std::vector<std::pair<std::string, at::Tensor>> named;
  for (const auto& p : m.named_parameters()) named.emplace_back(p.name, p.value);
  monitor.attach(named);
  const auto x = torch::randn({6, 4}, torch::kDouble);
  const auto loss = loss_of(m.forward({x}).toTensor());
  monitor.watch(loss);
  loss.backward();
  const auto truth = hook_outputs(m, x);
  const auto grads = torch::autograd::grad({loss_of(truth.back().second)}, {truth[0].second, truth[1].second});
  const Trace& t = monitor.trace();
  for (int k = 0; k < 2; ++k) {
    const Record* r = t.steps().back().find(t.find(truth[k].first));
    ASSERT_NE(r, nullptr) << truth[k].first;
    EXPECT_GT(std::abs(r->grad.norm() / grads[k].norm().item<double>() - 1), 1e-3) << truth[k].first;
  }
}

TEST_F(ScriptOutputsTest, DetachPutsTheCodeBackAndTrainingIsUnchanged) {
  const auto x = torch::randn({6, 4}, torch::kDouble);
  torch::jit::Module bare = save_and_load();
  const auto expected = bare.forward({x}).toTensor();
  torch::jit::Module m = save_and_load();
  auto code = [&] { return m.get_method("forward").graph()->toString() + m.attr("gcn").toModule().get_method("forward").graph()->toString(); };
  const std::string before = code();
  {
    Monitor monitor;
    monitor.attach(m);
    EXPECT_NE(code().find("gradflow::layer_output"), std::string::npos);
    const auto y = m.forward({x}).toTensor();
    EXPECT_TRUE(torch::equal(y, expected));
    monitor.watch(loss_of(y));
  }
  EXPECT_EQ(code(), before);
  // Saved after detach, the module loads where gradflow is not.
  const std::string path = ::testing::TempDir() + "gradflow_script_outputs_after.pt";
  m.save(path);
  EXPECT_TRUE(torch::equal(torch::jit::load(path).forward({x}).toTensor(), expected));
}

TEST_F(ScriptOutputsTest, CodeRunBeforeAttachingIsReadByTheGraphWalk) {
  // The walk names one node per op: TorchScript's simple executor (as gradflow inspect runs).
  const bool profiling = torch::jit::getProfilingMode();
  torch::jit::getProfilingMode() = false;
  struct Restore {
    bool on;
    ~Restore() { torch::jit::getProfilingMode() = on; }
  } restore{profiling};
  torch::jit::Module m = save_and_load();
  const auto x = torch::randn({6, 4}, torch::kDouble);
  m.forward({x});  // TorchScript keeps the code it ran: no op is inserted into it
  Monitor monitor;
  monitor.attach(m);
  const auto loss = loss_of(m.forward({x}).toTensor());
  monitor.watch(loss);
  loss.backward();
  const auto truth = hook_outputs(m, x);
  const auto grads = torch::autograd::grad({loss_of(truth.back().second)}, {truth[3].second});
  const Trace& t = monitor.trace();
  // The walk's series: the op applying each weight; for the head, its output.
  for (const char* name : {"gcn", "act", "rep", "head"}) {
    ASSERT_GE(t.find(name), 0) << name;
    EXPECT_TRUE(t.series()[t.find(name)].found_by_walk) << name;
  }
  const Record* head = t.steps().back().find(t.find("head"));
  ASSERT_NE(head, nullptr);
  expect_stats_equal(head->grad, grads[0], 1e-9, "head");
}

}  // namespace
}  // namespace gradflow
