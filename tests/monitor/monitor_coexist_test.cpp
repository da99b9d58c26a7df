// Attaching the Monitor changes nothing in training: the program's own gradient hooks (C++ ones,
// and ones installed the way Python installs its own) run as often and act as they would
// without gradflow, in either order of registration, and gradflow still records every parameter,
// with the gradient the optimizer applies.
#include <optional>

#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/script.h>
#include <torch/torch.h>

#include "compat/node.h"
#include "gradflow/monitor.h"
#include "torch_test_util.h"

namespace gradflow {
namespace {

using test::expect_stats_equal;

enum class HookKind { scale, clip_value, zero };
enum class Installed { cpp, python_like };
enum class Order { before_monitor, after_monitor, no_monitor };

torch::Tensor act(HookKind k, const torch::Tensor& g) {
  switch (k) {
    case HookKind::scale: return g * 0.5;
    case HookKind::clip_value: return g.clamp(-1e-3, 1e-3);
    case HookKind::zero: return torch::zeros_like(g);
  }
  return g;
}

// What Python's Tensor.register_hook does in LibTorch 1.x: the tensor's hook list is reset and
// one hook (the dict of Python hooks) put in its place.
struct PythonLikeHook : torch::autograd::FunctionPreHook {
  PythonLikeHook(HookKind k, int* calls) : kind(k), calls(calls) {}
  torch::autograd::variable_list operator()(const torch::autograd::variable_list& grads) override {
    ++*calls;
    return {act(kind, grads[0])};
  }
  HookKind kind;
  int* calls;
};

void install(const torch::Tensor& p, HookKind kind, Installed how, int* calls) {
  if (how == Installed::cpp) {
    p.register_hook([kind, calls](const torch::Tensor& g) {
      ++*calls;
      return act(kind, g);
    });
  } else {
    torch::autograd::impl::clear_hooks(p);
    torch::autograd::impl::add_hook(p, compat::make_tensor_pre_hook<PythonLikeHook>(kind, calls));
  }
}

struct Training {
  std::vector<torch::Tensor> params;  // after training
  int hook_calls = 0;
  int checked_records = 0;
};

constexpr int kSteps = 4;

// Trains a small MLP with the program's hook on every parameter of its first layer and, unless
// `order` says otherwise, a Monitor; every recorded parameter gradient is compared with .grad()
// where the optimizer reads it.
Training train(HookKind kind, Installed how, Order order) {
  torch::manual_seed(3);
  torch::nn::Sequential model(torch::nn::Linear(5, 8), torch::nn::Tanh(), torch::nn::Linear(8, 8), torch::nn::Tanh(),
                              torch::nn::Linear(8, 2));
  torch::optim::SGD opt(model->parameters(), torch::optim::SGDOptions(0.5).momentum(0.9));
  Training run;
  auto hook_first_layer = [&] {
    for (const auto& p : model[0]->parameters()) install(p, kind, how, &run.hook_calls);
  };
  std::unique_ptr<Monitor> mon;
  if (order != Order::after_monitor) hook_first_layer();
  if (order != Order::no_monitor) mon = std::make_unique<Monitor>(*model);
  if (order == Order::after_monitor) hook_first_layer();
  for (int s = 0; s < kSteps; ++s) {
    const auto x = torch::randn({16, 5}), y = torch::randn({16, 2});
    opt.zero_grad();
    auto loss = torch::mse_loss(model->forward(x), y);
    if (mon) mon->watch(loss);
    loss.backward();
    if (mon) {
      const Trace& t = mon->trace();
      for (const auto& p : model->named_parameters()) {
        const int id = t.find(p.key());
        const Record* r = id >= 0 ? t.steps().back().find(id) : nullptr;
        EXPECT_NE(r, nullptr) << p.key() << " not recorded at step " << s;
        if (!r) continue;
        expect_stats_equal(r->grad, p.value().grad(), 1e-9, p.key());
        ++run.checked_records;
      }
    }
    opt.step();
  }
  for (const auto& p : model->parameters()) run.params.push_back(p.detach().clone());
  return run;
}

struct Case {
  HookKind kind;
  Installed how;
  Order order;
};

class CoexistTest : public ::testing::TestWithParam<Case> {};

TEST_P(CoexistTest, TrainingIsBitIdenticalAndTheProgramsHooksRunAsOftenAsWithoutGradflow) {
  const Case c = GetParam();
  const Training bare = train(c.kind, c.how, Order::no_monitor);
  const Training watched = train(c.kind, c.how, c.order);
  EXPECT_EQ(bare.hook_calls, 2 * kSteps);  // weight and bias of the first layer, once a step
  EXPECT_EQ(watched.hook_calls, bare.hook_calls);
  ASSERT_EQ(watched.params.size(), bare.params.size());
  for (std::size_t i = 0; i < bare.params.size(); ++i)
    EXPECT_TRUE(torch::equal(watched.params[i], bare.params[i])) << "parameter " << i << " differs";
  EXPECT_EQ(watched.checked_records, 6 * kSteps);
}

std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  const Case& c = info.param;
  const char* kind = c.kind == HookKind::scale ? "Scale" : c.kind == HookKind::clip_value ? "ClipValue" : "Zero";
  const char* how = c.how == Installed::cpp ? "Cpp" : "PythonLike";
  const char* order = c.order == Order::before_monitor ? "BeforeMonitor" : "AfterMonitor";
  return std::string(kind) + how + order;
}

INSTANTIATE_TEST_SUITE_P(
    Hooks, CoexistTest,
    ::testing::Values(Case{HookKind::scale, Installed::cpp, Order::before_monitor},
                      Case{HookKind::scale, Installed::cpp, Order::after_monitor},
                      Case{HookKind::clip_value, Installed::python_like, Order::before_monitor},
                      Case{HookKind::clip_value, Installed::python_like, Order::after_monitor},
                      Case{HookKind::zero, Installed::python_like, Order::before_monitor},
                      Case{HookKind::zero, Installed::cpp, Order::after_monitor}),
    case_name);

// The Monitor's hooks live on the autograd graph's nodes: the tensor's own hook list, which a
// Python hook resets, stays as the program left it.
TEST(CoexistStructure, TheMonitorLeavesEveryTensorsOwnHookListAlone) {
  torch::nn::Linear layer(3, 2);
  Monitor mon(*layer);
  for (const auto& p : layer->parameters()) EXPECT_TRUE(torch::autograd::impl::hooks(p).empty());
  auto x = torch::randn({4, 3}, torch::requires_grad());
  auto h = layer->forward(x);
  mon.tap(h, "h.0");
  mon.tap(x, "input");
  EXPECT_TRUE(torch::autograd::impl::hooks(h).empty());
  EXPECT_TRUE(torch::autograd::impl::hooks(x).empty());
  auto loss = h.square().sum();
  mon.watch(loss);
  loss.backward();
  mon.step();
  const Trace& t = mon.trace();
  ASSERT_GE(t.find("input"), 0);
  const Record* r = t.steps().back().find(t.find("input"));
  ASSERT_NE(r, nullptr);
  expect_stats_equal(r->grad, x.grad(), 1e-9, "input tap");
}

// A tap on a tensor the program also hooks from Python sees the gradient and leaves the hook.
TEST(CoexistStructure, ATapAndTheProgramsHookOnTheSameTensorBothRun) {
  torch::nn::Linear layer(3, 2);
  Monitor mon(*layer);
  auto x = torch::randn({4, 3});
  auto h = layer->forward(x);
  int calls = 0;
  install(h, HookKind::scale, Installed::cpp, &calls);
  mon.tap(h, "h.0");
  auto loss = h.sum();
  mon.watch(loss);
  loss.backward();
  EXPECT_EQ(calls, 1);
  const Trace& t = mon.trace();
  const Record* r = t.steps().back().find(t.find("h.0"));
  ASSERT_NE(r, nullptr);
  // dL/dh is all ones; the program's hook, registered first, halves it before the tap sees it.
  EXPECT_DOUBLE_EQ(r->grad.max_abs, 0.5);
}

// A program's hook for after a parameter's accumulation (what Python's
// register_post_accumulate_grad_hook puts in the tensor's one slot) that steps the parameter and
// frees its gradient, as an optimizer stepped inside backward does.
#if TORCH_VERSION_MAJOR >= 2
struct StepInBackward : torch::autograd::PostAccumulateGradHook {
  explicit StepInBackward(std::vector<double>* seen) : seen(seen) {}
  void operator()(const torch::autograd::Variable& p) override {
    seen->push_back(p.grad().to(torch::kDouble).norm().item<double>());
    torch::NoGradGuard no_grad;
    p.sub_(0.1 * p.grad());
    p.mutable_grad() = at::Tensor();
  }
  std::vector<double>* seen;
};

std::vector<double> train_stepping_in_backward(torch::nn::Linear layer, bool attach, bool hook_after_attach,
                                               std::vector<double>* recorded) {
  std::vector<double> seen;
  auto install = [&] {
    torch::autograd::impl::set_post_acc_grad_hooks(layer->weight, std::make_unique<StepInBackward>(&seen));
  };
  if (!hook_after_attach) install();
  std::optional<Monitor> mon;
  if (attach) mon.emplace(*layer);
  if (hook_after_attach) install();
  torch::manual_seed(3);
  for (int step = 0; step < 3; ++step) {
    auto loss = layer->forward(torch::randn({8, 4})).square().mean();
    if (mon) mon->watch(loss);
    loss.backward();
    if (!mon) continue;
    const Trace& t = mon->trace();
    const Record* r = t.steps().back().find(t.find("weight"));
    recorded->push_back(r ? r->grad.norm() : -1);
  }
  if (mon) {
    mon->detach();
    // Detached, the slot holds the program's own hook again.
    EXPECT_NE(dynamic_cast<StepInBackward*>(torch::autograd::impl::post_acc_grad_hooks(layer->weight).get()), nullptr);
  }
  return seen;
}
#endif

TEST(CoexistStructure, AProgramsPostAccumulateHookThatFreesTheGradientSeesWhatGradflowRecords) {
#if TORCH_VERSION_MAJOR >= 2
  for (bool after : {false, true}) {
    torch::manual_seed(1);
    torch::nn::Linear bare(4, 2);
    torch::manual_seed(1);
    torch::nn::Linear watched(4, 2);
    std::vector<double> unused, recorded;
    const auto bare_seen = train_stepping_in_backward(bare, false, after, &unused);
    const auto seen = train_stepping_in_backward(watched, true, after, &recorded);
    ASSERT_EQ(bare_seen.size(), 3u);
    EXPECT_EQ(seen, bare_seen) << (after ? "hook after attach" : "hook before attach");
    EXPECT_TRUE(torch::equal(watched->weight, bare->weight));
    ASSERT_EQ(recorded.size(), 3u);
    for (int step = 0; step < 3; ++step) EXPECT_NEAR(recorded[step], seen[step], 1e-9 * seen[step]) << "step " << step;
  }
#else
  GTEST_SKIP() << "LibTorch " << TORCH_VERSION << " has no post-accumulate-grad hooks (2.1+)";
#endif
}

}  // namespace
}  // namespace gradflow

namespace gradflow {
namespace {

// A TorchScript backbone (as torch::jit::load gives it) under a trainable C++ head: the Monitor
// takes both modules' named parameters and records each as the optimizer applies it.
TEST(TorchScriptBackbone, ItsParametersAndTheHeadsAreRecordedAsTheOptimizerAppliesThem) {
  torch::manual_seed(0);
  torch::jit::Module scripted("Backbone");
  scripted.register_parameter("weight", (torch::randn({8, 5}) * 0.3).requires_grad_(), false);
  scripted.register_parameter("bias", torch::zeros({8}, torch::requires_grad()), false);
  scripted.define(R"(
    def forward(self, x):
        return torch.tanh(torch.matmul(x, self.weight.t()) + self.bias)
  )");
  const std::string path = ::testing::TempDir() + "gradflow_backbone.pt";
  scripted.save(path);
  torch::jit::Module backbone = torch::jit::load(path);
  torch::nn::Linear head(8, 2);

  // [readme-jit]
  std::vector<std::pair<std::string, at::Tensor>> named;
  for (const auto& p : backbone.named_parameters()) named.emplace_back("backbone." + p.name, p.value);
  for (const auto& p : head->named_parameters()) named.emplace_back("head." + p.key(), p.value());
  gradflow::Monitor monitor;
  monitor.attach(named);
  // [/readme-jit]

  std::vector<at::Tensor> params;
  for (const auto& p : named) params.push_back(p.second);
  torch::optim::SGD opt(params, 0.1);
  for (int s = 0; s < 3; ++s) {
    opt.zero_grad();
    auto features = backbone.forward({torch::randn({16, 5})}).toTensor();
    auto loss = torch::mse_loss(head->forward(features), torch::randn({16, 2}));
    monitor.watch(loss);
    loss.backward();
    const Trace& t = monitor.trace();
    for (const auto& [name, p] : named) {
      const Record* r = t.steps().back().find(t.find(name));
      ASSERT_NE(r, nullptr) << name;
      expect_stats_equal(r->grad, p.grad(), 1e-9, name);
    }
    opt.step();
  }
  EXPECT_EQ(monitor.trace().series_of_kind(SeriesKind::parameter).size(), 4u);
}

}  // namespace
}  // namespace gradflow
