#include "gradflow/monitor.h"

#include <cmath>
#include <limits>
#include <thread>

#include <torch/torch.h>

#include "gradflow/error.h"
#include "gradflow/option.h"
#include "gradflow/trace_io.h"
#include "monitor/stats_path.h"
#include "torch_test_util.h"

namespace gradflow {
namespace {

using test::expect_stats_equal;
using test::rel_close;

// A plain MLP whose forward keeps each layer's output, so tests can ask autograd for dL/d(output)
// independently of the Monitor.
struct MlpImpl : torch::nn::Module {
  explicit MlpImpl(int depth = 4, int width = 16) {
    for (int i = 0; i < depth; ++i)
      layers.push_back(register_module("fc" + std::to_string(i),
                                       torch::nn::Linear(i == 0 ? 8 : width, i + 1 == depth ? 3 : width)));
  }
  torch::Tensor forward(torch::Tensor x) {
    outputs.clear();
    for (std::size_t i = 0; i < layers.size(); ++i) {
      x = layers[i]->forward(x);
      outputs.push_back(x);
      if (i + 1 < layers.size()) x = torch::tanh(x);
    }
    return x;
  }
  std::vector<torch::nn::Linear> layers;
  std::vector<torch::Tensor> outputs;
};
TORCH_MODULE(Mlp);

// A small conv net with batch norm and one residual connection.
struct ResConvImpl : torch::nn::Module {
  ResConvImpl()
      : stem(register_module("stem", torch::nn::Conv2d(torch::nn::Conv2dOptions(3, 8, 3).padding(1)))),
        bn1(register_module("bn1", torch::nn::BatchNorm2d(8))),
        conv(register_module("block_conv", torch::nn::Conv2d(torch::nn::Conv2dOptions(8, 8, 3).padding(1).bias(false)))),
        bn2(register_module("block_bn", torch::nn::BatchNorm2d(8))),
        head(register_module("head", torch::nn::Linear(8, 4))) {}
  torch::Tensor forward(torch::Tensor x) {
    outputs.clear();
    auto a = stem->forward(x);
    outputs.push_back(a);
    auto b = bn1->forward(a);
    outputs.push_back(b);
    auto h = torch::relu(b);
    auto c = conv->forward(h);
    outputs.push_back(c);
    auto d = bn2->forward(c);
    outputs.push_back(d);
    auto r = torch::relu(h + d);  // residual
    auto pooled = r.mean({2, 3});
    auto out = head->forward(pooled);
    outputs.push_back(out);
    return out;
  }
  torch::nn::Conv2d stem;
  torch::nn::BatchNorm2d bn1;
  torch::nn::Conv2d conv;
  torch::nn::BatchNorm2d bn2;
  torch::nn::Linear head;
  std::vector<torch::Tensor> outputs;
};
TORCH_MODULE(ResConv);

class MonitorTest : public test::TorchTest {};

const Record& record_named(const Trace& t, const StepRecord& st, const std::string& name) {
  const int id = t.find(name);
  EXPECT_GE(id, 0) << "no series " << name;
  const Record* r = st.find(id);
  EXPECT_NE(r, nullptr) << "no record for " << name << " at step " << st.step;
  static const Record empty{};
  return r ? *r : empty;
}

void expect_parameters_match_grad(torch::nn::Module& model, Monitor& mon) {
  const Trace& t = mon.trace();
  ASSERT_FALSE(t.steps().empty());
  const auto& st = t.steps().back();
  int checked = 0;
  for (const auto& p : model.named_parameters()) {
    const Record& r = record_named(t, st, p.key());
    expect_stats_equal(r.grad, p.value().grad(), 1e-6, p.key());
    EXPECT_TRUE(rel_close(r.weight_norm, p.value().detach().to(torch::kDouble).norm().item<double>(), 1e-6))
        << p.key();
    ++checked;
  }
  EXPECT_GT(checked, 0);
}

TEST_F(MonitorTest, MlpParameterStatisticsEqualParamGrad) {
  Mlp model;
  Monitor mon(*model);
  auto x = torch::randn({32, 8});
  auto y = torch::randint(0, 3, {32});
  auto loss = torch::nn::functional::cross_entropy(model->forward(x), y);
  mon.watch(loss);
  loss.backward();
  expect_parameters_match_grad(*model, mon);
  EXPECT_TRUE(rel_close(*mon.trace().steps().back().loss, loss.item<double>(), 1e-12));
}

TEST_F(MonitorTest, MlpActivationGradientsEqualAutogradGrad) {
  Mlp model(5);
  Monitor mon(*model);
  auto x = torch::randn({16, 8});
  auto loss = model->forward(x).pow(2).sum();
  // Independent: autograd.grad w.r.t. every layer output, before the Monitor hooks the graph.
  auto expected = torch::autograd::grad({loss}, model->outputs, {}, /*retain_graph=*/true);
  mon.watch(loss);
  loss.backward();
  const Trace& t = mon.trace();
  for (std::size_t i = 0; i < expected.size(); ++i) {
    const std::string name = "fc" + std::to_string(i);
    const Record& r = record_named(t, t.steps().back(), name);
    expect_stats_equal(r.grad, expected[i], 1e-6, name);
  }
  // Activation series are listed in forward order.
  const auto acts = t.series_of_kind(SeriesKind::activation);
  ASSERT_EQ(acts.size(), expected.size());
  for (std::size_t i = 0; i < acts.size(); ++i) EXPECT_EQ(t.series()[acts[i]].name, "fc" + std::to_string(i));
}

// An MLP whose forward leaves out its middle layer when asked: the graph changes shape.
struct SkippingMlpImpl : torch::nn::Module {
  SkippingMlpImpl()
      : fc0(register_module("fc0", torch::nn::Linear(8, 16))),
        fc1(register_module("fc1", torch::nn::Linear(16, 16))),
        fc2(register_module("fc2", torch::nn::Linear(16, 3))) {}
  torch::Tensor forward(torch::Tensor x, bool skip) {
    outputs.clear();
    names.clear();
    auto keep = [&](const char* name, torch::Tensor h) {
      outputs.push_back(h);
      names.emplace_back(name);
      return h;
    };
    x = torch::tanh(keep("fc0", fc0->forward(x)));
    if (!skip) x = torch::tanh(keep("fc1", fc1->forward(x)));
    return keep("fc2", fc2->forward(x));
  }
  torch::nn::Linear fc0, fc1, fc2;
  std::vector<torch::Tensor> outputs;
  std::vector<std::string> names;
};
TORCH_MODULE(SkippingMlp);

TEST_F(MonitorTest, LayerOutputsStayRightWhileTheGraphKeepsOrChangesItsShape) {
  SkippingMlp model;
  Monitor mon(*model);
  const std::vector<bool> skips = {false, false, true, true, false, true, false, false};
  std::vector<std::vector<torch::Tensor>> expected;
  std::vector<std::vector<std::string>> names;
  for (bool skip : skips) {
    auto loss = model->forward(torch::randn({16, 8}), skip).pow(2).sum();
    expected.push_back(torch::autograd::grad({loss}, model->outputs, {}, /*retain_graph=*/true));
    names.push_back(model->names);
    mon.watch(loss);
    loss.backward();
  }
  const Trace& t = mon.trace();
  ASSERT_EQ(t.steps().size(), skips.size());
  for (std::size_t k = 0; k < skips.size(); ++k) {
    const StepRecord& st = t.steps()[k];
    int activations = 0;
    for (const auto& r : st.records) activations += t.series()[r.series].kind == SeriesKind::activation;
    EXPECT_EQ(activations, static_cast<int>(names[k].size())) << "step " << k;
    for (std::size_t i = 0; i < names[k].size(); ++i)
      expect_stats_equal(record_named(t, st, names[k][i]).grad, expected[k][i], 1e-6,
                         names[k][i] + " at step " + std::to_string(k));
  }
}

TEST_F(MonitorTest, ConvNetWithBatchNormAndResidualMatchesAutograd) {
  ResConv model;
  Monitor mon(*model);
  auto x = torch::randn({4, 3, 6, 6});
  auto loss = torch::nn::functional::cross_entropy(model->forward(x), torch::tensor({0, 1, 2, 3}));
  auto expected = torch::autograd::grad({loss}, model->outputs, {}, /*retain_graph=*/true);
  mon.watch(loss);
  loss.backward();
  expect_parameters_match_grad(*model, mon);
  const Trace& t = mon.trace();
  const char* names[] = {"stem", "bn1", "block_conv", "block_bn", "head"};
  for (int i = 0; i < 5; ++i) {
    const Record& r = record_named(t, t.steps().back(), names[i]);
    expect_stats_equal(r.grad, expected[i], 1e-6, names[i]);
  }
}

TEST_F(MonitorTest, ParameterUsedThreeTimesIsRecordedOnceWithTheSummedGradient) {
  struct Shared : torch::nn::Module {
    Shared() : fc(register_module("fc", torch::nn::Linear(6, 6))) {}
    torch::Tensor forward(torch::Tensor x) {
      calls.clear();
      for (int i = 0; i < 3; ++i) {
        calls.push_back(fc->forward(x));
        x = torch::sigmoid(calls.back());
      }
      return x;
    }
    torch::nn::Linear fc;
    std::vector<torch::Tensor> calls;
  };
  auto model = std::make_shared<Shared>();
  for (StatsBackend backend : {StatsBackend::automatic, StatsBackend::aten}) {
    model->zero_grad();
    Monitor mon(*model, MonitorOptions().with_backend(backend));
    auto loss = model->forward(torch::randn({5, 6})).sum();
    // Independent: autograd's dL/d(each call's output), before the Monitor hooks the graph.
    const auto per_call = torch::autograd::grad({loss}, model->calls, {}, /*retain_graph=*/true);
    mon.watch(loss);
    loss.backward();
    const Trace& t = mon.trace();
    const auto& st = t.steps().back();
    int weight_records = 0;
    for (const auto& r : st.records)
      if (t.series()[r.series].name == "fc.weight") ++weight_records;
    EXPECT_EQ(weight_records, 1);
    EXPECT_EQ(st.backwards, 1);
    expect_stats_equal(record_named(t, st, "fc.weight").grad, model->fc->weight.grad(), 1e-6, "fc.weight");
    // The module's three calls are one series, not three layers: its totals are the three outputs'
    // gradients taken together, its profile each call's norm in forward order.
    EXPECT_EQ(t.series_of_kind(SeriesKind::activation).size(), 1u);
    const Record& fc = record_named(t, st, "fc");
    expect_stats_equal(fc.grad, torch::cat({per_call[0], per_call[1], per_call[2]}), 1e-6, "fc");
    EXPECT_EQ(fc.profile_axis, ProfileAxis::calls);
    ASSERT_EQ(fc.profile.size(), 3u);
    for (int k = 0; k < 3; ++k)
      EXPECT_NEAR(fc.profile[k], per_call[k].to(torch::kDouble).norm().item<double>(),
                  1e-6 * per_call[k].to(torch::kDouble).norm().item<double>())
          << k;
  }
}

TEST_F(MonitorTest, SharedSubmoduleRegisteredTwiceIsHookedOnce) {
  struct Twice : torch::nn::Module {
    Twice() {
      auto fc = torch::nn::Linear(4, 4);
      a = register_module("a", fc);
      b = register_module("b", fc);
    }
    torch::nn::Linear a{nullptr}, b{nullptr};
  };
  auto model = std::make_shared<Twice>();
  Monitor mon(*model);
  auto loss = model->b->forward(model->a->forward(torch::randn({2, 4}))).sum();
  mon.watch(loss);
  loss.backward();
  const Trace& t = mon.trace();
  EXPECT_GE(t.find("a.weight"), 0);
  EXPECT_EQ(t.find("b.weight"), -1);
  expect_stats_equal(record_named(t, t.steps().back(), "a.weight").grad, model->a->weight.grad(), 1e-6, "a.weight");
}

TEST_F(MonitorTest, NothingFiresAfterDetach) {
  Mlp model;
  auto mon = std::make_unique<Monitor>(*model);
  auto run = [&] {
    model->zero_grad();
    auto loss = model->forward(torch::randn({4, 8})).sum();
    return loss;
  };
  auto loss = run();
  mon->watch(loss);
  loss.backward();
  ASSERT_GT(mon->trace().steps().back().records.size(), 0u);
  // A graph hooked before detach, run after it: its hooks must stay silent.
  auto hooked = run();
  mon->watch(hooked);
  mon->detach();
  EXPECT_FALSE(mon->attached());
  const std::string before = trace_to_json(mon->trace());
  hooked.backward();
  for (int i = 0; i < 3; ++i) run().backward();
  EXPECT_EQ(trace_to_json(mon->trace()), before);
  // Destroying the Monitor leaves the model trainable and hook-free.
  mon.reset();
  run().backward();
  EXPECT_TRUE(model->layers[0]->weight.grad().defined());
}

TEST_F(MonitorTest, NanInOneLayerIsReportedWithLayerAndStepAndTrainingGoesOn) {
  Mlp model(4);
  // Inject a NaN into fc2.weight's gradient at step 3 only. Hooks run in the order they were
  // registered: this one goes first, so the Monitor sees what the optimizer will see.
  int step = 0;
  model->layers[2]->weight.register_hook([&](torch::Tensor g) {
    if (step == 3) {
      g = g.clone();
      g.view({-1})[0] = std::numeric_limits<float>::quiet_NaN();
    }
    return g;
  });
  Monitor mon(*model, MonitorOptions{}.with_activations(false));
  torch::optim::SGD opt(model->parameters(), 0.01);
  for (step = 0; step < 5; ++step) {
    opt.zero_grad();
    auto loss = model->forward(torch::randn({8, 8})).pow(2).mean();
    mon.watch(loss);
    EXPECT_NO_THROW(loss.backward());
    opt.step();
  }
  const Trace& t = mon.trace();
  EXPECT_EQ(t.steps().size(), 5u);
  ASSERT_TRUE(t.first_nonfinite().has_value());
  EXPECT_EQ(t.first_nonfinite()->step, 3);
  EXPECT_EQ(t.first_nonfinite()->series, "fc2.weight");
  EXPECT_EQ(record_named(t, t.steps()[3], "fc2.weight").grad.nonfinite, 1);
  EXPECT_EQ(record_named(t, t.steps()[3], "fc1.weight").grad.nonfinite, 0);
}

TEST_F(MonitorTest, RecordingEveryKthOfNStepsRecordsCeilNOverK) {
  for (int k : {1, 2, 3, 4, 7}) {
    for (int n : {1, 5, 10, 13}) {
      Mlp model(2, 4);
      Monitor mon(*model, MonitorOptions{}.with_every(k));
      for (int s = 0; s < n; ++s) {
        auto loss = model->forward(torch::randn({2, 8})).sum();
        mon.watch(loss);
        loss.backward();
      }
      const Trace& t = mon.trace();
      EXPECT_EQ(static_cast<int>(t.steps().size()), (n + k - 1) / k) << "k=" << k << " n=" << n;
      for (std::size_t i = 0; i < t.steps().size(); ++i)
        EXPECT_EQ(t.steps()[i].step, static_cast<std::int64_t>(i) * k);
    }
  }
}

TEST_F(MonitorTest, AutoStepWorksWithoutWatchOrStep) {
  Mlp model(2, 4);
  Monitor mon(*model);
  for (int s = 0; s < 4; ++s) model->forward(torch::randn({2, 8})).sum().backward();
  EXPECT_EQ(mon.trace().steps().size(), 4u);
}

TEST_F(MonitorTest, GradientAccumulationRecordsTheSumTheOptimizerSees) {
  Mlp model(3, 6);
  Monitor mon(*model, MonitorOptions{}.with_auto_step(false));
  model->zero_grad();
  for (int micro = 0; micro < 3; ++micro) {
    auto loss = model->forward(torch::randn({4, 8})).pow(2).mean();
    mon.watch(loss);
    loss.backward();
  }
  mon.step();
  const Trace& t = mon.trace();
  ASSERT_EQ(t.steps().size(), 1u);
  EXPECT_EQ(t.steps()[0].backwards, 3);
  for (const auto& p : model->named_parameters())
    expect_stats_equal(record_named(t, t.steps()[0], p.key()).grad, p.value().grad(), 1e-6, p.key());
}

TEST_F(MonitorTest, FrozenParametersAreSkipped) {
  Mlp model(3, 6);
  model->layers[0]->weight.set_requires_grad(false);
  Monitor mon(*model);
  auto loss = model->forward(torch::randn({4, 8})).sum();
  mon.watch(loss);
  loss.backward();
  EXPECT_EQ(mon.trace().find("fc0.weight"), -1);
  EXPECT_GE(mon.trace().find("fc0.bias"), 0);
}

TEST_F(MonitorTest, TapRecordsTheGradientOfEachTappedTensor) {
  Mlp model(4);
  Monitor mon(*model);
  auto out = model->forward(torch::randn({8, 8}));
  auto loss = out.pow(2).sum();
  // Independent first: autograd.grad would also fire the taps' hooks.
  auto expected = torch::autograd::grad({loss}, model->outputs, {}, /*retain_graph=*/true);
  for (std::size_t i = 0; i < model->outputs.size(); ++i)
    mon.tap(model->outputs[i], "z." + std::to_string(i));
  mon.watch(loss);
  loss.backward();
  const Trace& t = mon.trace();
  for (std::size_t i = 0; i < expected.size(); ++i) {
    const std::string name = "z." + std::to_string(i);
    EXPECT_EQ(t.series()[t.find(name)].layer, "z");
    expect_stats_equal(record_named(t, t.steps().back(), name).grad, expected[i], 1e-6, name);
  }
}

TEST_F(MonitorTest, TapForwardStatisticsFollowTheirDefinitions) {
  Monitor mon;
  auto z = torch::randn({64, 10}, torch::requires_grad());
  auto zs = z * 4;  // push many sigmoid units into saturation
  auto h = torch::sigmoid(zs);
  // Columns 0-4 are shifted far negative: those five units are dead on every example.
  auto shift = torch::cat({torch::full({5}, 100.0), torch::zeros({5})});
  auto r = torch::relu(zs - shift);
  mon.tap(h, "sig", TapOptions{Activation::sigmoid, {}, {}, {}});
  mon.tap(r, "relu", TapOptions{Activation::relu, {}, {}, {}});
  auto loss = (h.sum() + r.sum());
  mon.watch(loss);
  loss.backward();
  const Trace& t = mon.trace();
  const auto& st = t.steps().back();
  const auto hd = h.detach().to(torch::kDouble);
  const auto deriv = hd * (1 - hd);
  const Record& rs = record_named(t, st, "sig");
  ASSERT_TRUE(rs.forward.has_value());
  EXPECT_TRUE(rel_close(rs.forward->mean_local_derivative, deriv.mean().item<double>(), 1e-9));
  EXPECT_TRUE(rel_close(rs.forward->saturated_fraction, (deriv < 0.025).to(torch::kDouble).mean().item<double>(), 1e-12));
  EXPECT_TRUE(rel_close(rs.forward->mean, hd.mean().item<double>(), 1e-9));
  EXPECT_TRUE(rel_close(rs.forward->std, hd.std(false).item<double>(), 1e-9));
  const Record& rr = record_named(t, st, "relu");
  const auto dead = (r.detach() <= 0).all(0).to(torch::kDouble).mean().item<double>();
  EXPECT_TRUE(rel_close(rr.forward->dead_fraction, dead, 1e-12));
  EXPECT_DOUBLE_EQ(dead, 0.5);
  EXPECT_LE(rs.forward->mean_local_derivative, 0.25);
}

TEST_F(MonitorTest, AtenBackendEqualsFusedBackend) {
  auto run = [](StatsBackend b) {
    torch::manual_seed(7);
    Mlp model(3, 12);
    Monitor mon(*model, MonitorOptions{}.with_backend(b));
    auto loss = model->forward(torch::randn({6, 8})).pow(2).sum();
    mon.watch(loss);
    loss.backward();
    return mon.trace();
  };
  const Trace a = run(StatsBackend::automatic);
  const Trace b = run(StatsBackend::aten);
  ASSERT_EQ(a.steps().size(), b.steps().size());
  const auto& sa = a.steps()[0];
  const auto& sb = b.steps()[0];
  ASSERT_EQ(sa.records.size(), sb.records.size());
  for (const auto& ra : sa.records) {
    const Record* rb = sb.find(b.find(a.series()[ra.series].name));
    ASSERT_NE(rb, nullptr);
    EXPECT_TRUE(rel_close(rb->grad.norm(), ra.grad.norm(), 1e-12));
    EXPECT_TRUE(rel_close(rb->grad.sum, ra.grad.sum, 1e-9, 1e-12 * ra.grad.norm()));
    EXPECT_EQ(rb->grad.max_abs, ra.grad.max_abs);
    EXPECT_EQ(rb->grad.zeros, ra.grad.zeros);
    EXPECT_EQ(rb->grad.numel, ra.grad.numel);
    if (!std::isnan(ra.weight_norm)) {
      EXPECT_TRUE(rel_close(rb->weight_norm, ra.weight_norm, 1e-12));
    }
  }
  EXPECT_DOUBLE_EQ(*sa.loss, *sb.loss);
}

TEST_F(MonitorTest, DoubleModelsAreMeasuredInDouble) {
  Mlp model(6, 8);
  model->to(torch::kDouble);
  Monitor mon(*model);
  auto loss = model->forward(torch::randn({4, 8}, torch::kDouble)).sum() * 1e-200;
  mon.watch(loss);
  loss.backward();
  expect_parameters_match_grad(*model, mon);
}

TEST_F(MonitorTest, MisuseIsAClearError) {
  Mlp model(2, 4);
  Monitor mon(*model);
  EXPECT_THROW(mon.attach(*model), Error);
  EXPECT_THROW(Monitor(MonitorOptions{}.with_every(0)), UsageError);
}

// The message of an option error names the option as the caller's language spells it.
std::string option_message(const MonitorOptions& o, Language language) {
  try {
    Monitor m(o);
  } catch (const OptionError& e) {
    return e.message(language);
  }
  return "no error";
}

TEST_F(MonitorTest, ArgumentsThatCannotMeanAnythingAreRefusedInTheCallersWords) {
  MonitorOptions o;
  for (double bad : {0.0, 1.0, -0.5, 2.0, std::numeric_limits<double>::quiet_NaN()}) {
    o.saturation_threshold = bad;
    EXPECT_NE(option_message(o, Language::cpp).find("MonitorOptions::saturation_threshold must lie strictly between 0 and 1"),
              std::string::npos) << bad;
    EXPECT_NE(option_message(o, Language::python).find("saturation_threshold= must lie"), std::string::npos) << bad;
  }
  EXPECT_NE(option_message(MonitorOptions{}.with_every(0), Language::python).find("every= must be at least 1"),
            std::string::npos);
  EXPECT_EQ(option_message(MonitorOptions{}.with_every(0), Language::cpp).find("every="), std::string::npos);

  Mlp model(2, 4);
  Monitor mon(*model);
  auto per_example = (model->forward(torch::randn({5, 8})) - torch::zeros({5, 3})).square();
  try {
    mon.watch(per_example);
    FAIL() << "a loss of 15 elements was accepted";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("tensor of 15 elements"), std::string::npos) << e.what();
  }
  EXPECT_THROW(mon.tap(torch::randn({2}, torch::requires_grad()), ""), UsageError);

  // A model whose layers sit in a plain container: nothing registered, nothing to record.
  struct Unregistered : torch::nn::Module {
    std::vector<torch::nn::Linear> layers{torch::nn::Linear(2, 2)};
  } unregistered;
  try {
    Monitor empty(unregistered);
    FAIL() << "a model with no trainable parameter was accepted";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("no trainable parameter"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace gradflow

namespace gradflow {
namespace {

// The diagnosis quotes the saturation threshold the forward statistics were computed with.
TEST_F(MonitorTest, TheTraceKeepsTheSaturationThreshold) {
  MonitorOptions o;
  o.saturation_threshold = 0.3;
  Monitor mon(o);
  EXPECT_EQ(mon.trace().saturation_threshold, 0.3);
  EXPECT_EQ(Monitor().trace().saturation_threshold, 0.1);
}

// The worker-thread path must give the same numbers, finished before backward() returns.
TEST_F(MonitorTest, AsyncStatisticsEqualSynchronousOnesAndAreDoneWhenBackwardReturns) {
  if (std::thread::hardware_concurrency() < 2) GTEST_SKIP() << "one core: the worker is never used";
  // The comparison below is worker against caller only if the Monitor picks the worker.
  const auto probe = torch::randn({4, 4});
  ASSERT_EQ(detail::plan_stats(MonitorOptions{}.with_async(true), probe, probe).grad, detail::StatsPath::worker);
  auto run = [](bool async) {
    torch::manual_seed(5);
    Mlp model(4, 32);
    Monitor mon(*model, MonitorOptions{}.with_async(async));
    torch::optim::SGD opt(model->parameters(), 0.1);
    std::vector<double> weight_norm_before_update;
    for (int s = 0; s < 3; ++s) {
      opt.zero_grad();
      auto loss = model->forward(torch::randn({16, 8})).pow(2).mean();
      mon.watch(loss);
      loss.backward();
      weight_norm_before_update.push_back(model->layers[0]->weight.detach().to(torch::kDouble).norm().item<double>());
      opt.step();  // changes weights in place: the recorded norm must predate it
    }
    return std::make_pair(mon.trace(), weight_norm_before_update);
  };
  const auto [a, wa] = run(false);
  const auto [b, wb] = run(true);
  ASSERT_EQ(a.steps().size(), b.steps().size());
  for (std::size_t i = 0; i < a.steps().size(); ++i) {
    for (const auto& ra : a.steps()[i].records) {
      const Record* rb = b.steps()[i].find(b.find(a.series()[ra.series].name));
      ASSERT_NE(rb, nullptr);
      EXPECT_EQ(rb->grad.sum_sq, ra.grad.sum_sq);
      EXPECT_EQ(rb->grad.max_abs, ra.grad.max_abs);
      if (!std::isnan(ra.weight_norm)) {
        EXPECT_EQ(rb->weight_norm, ra.weight_norm);
      }
    }
    const Record* w0 = b.steps()[i].find(b.find("fc0.weight"));
    EXPECT_TRUE(rel_close(w0->weight_norm, wb[i], 1e-6));
  }
}

}  // namespace
}  // namespace gradflow
