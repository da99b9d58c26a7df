#include "models/train.h"

#include <cmath>

#include <torch/torch.h>

#include "gradflow/error.h"
#include "gradflow/trace_io.h"
#include "models/network.h"
#include "models/task.h"
#include "torch_test_util.h"

namespace gradflow::models {
namespace {

using test::rel_close;

class TrainTest : public test::TorchTest {};

TrainOptions quick(std::int64_t steps = 2) {
  TrainOptions o;
  o.steps = steps;
  o.batch = 8;
  o.seq_len = 5;
  return o;
}

// Small sizes of every family so that each option value builds and takes a training step.
std::string small(const std::string& family) {
  if (family == "mlp") return "mlp:depth=3,width=8";
  if (family == "cnn") return "cnn:depth=3,channels=4";
  if (family == "transformer") return "transformer:depth=2,width=8,heads=2";
  return "rnn:hidden=8";
}

TEST_F(TrainTest, EveryFamilyAndEveryOptionValueBuildsAndTrains) {
  int runs = 0;
  for (const auto& fam : families()) {
    for (const auto& opt : fam.options) {
      std::vector<std::string> values;
      if (opt.type == OptionType::choice) {
        for (const auto& c : opt.choices) values.push_back(c == models::kNormalChoice ? "normal:0.05" : c);
      } else if (opt.key == "forget_bias") {
        values = {"default", "0", "1"};
      } else if (opt.key == "scale") {
        values = {"0", "0.9"};
      } else {
        values = {std::to_string(static_cast<long long>(opt.min) + (opt.key == "depth" ? 1 : 0))};
      }
      for (const auto& v : values) {
        // Override the small spec's value for this key, keep the rest.
        Spec base = parse_spec(small(fam.name));
        std::string text = base.name;
        char sep = ':';
        bool replaced = false;
        for (auto& [k, val] : base.options) {
          text += sep + k + "=" + (k == opt.key ? v : val);
          replaced = replaced || k == opt.key;
          sep = ',';
        }
        if (!replaced) text += sep + opt.key + "=" + v;
        SCOPED_TRACE(text);
        RunRecord r;
        ASSERT_NO_THROW(r = train(resolve_spec(text), quick()));
        EXPECT_EQ(r.steps_done, 2);
        EXPECT_EQ(r.trace.steps().size(), 2u);
        EXPECT_TRUE(std::isfinite(r.loss.front()));
        ++runs;
      }
    }
  }
  EXPECT_GT(runs, 50);
}

TEST_F(TrainTest, EveryTaskTrainsWithItsFamily) {
  for (const auto& t : tasks()) {
    TrainOptions o = quick();
    o.task = t.name;
    const auto r = train(resolve_spec(small(t.family)), o);
    EXPECT_EQ(r.task, t.name);
    EXPECT_TRUE(std::isfinite(r.loss.back())) << t.name;
  }
  TrainOptions o = quick();
  o.task = "adding";
  EXPECT_THROW(train(resolve_spec("mlp:depth=3"), o), UsageError);
  o.task = "nope";
  EXPECT_THROW(train(resolve_spec("mlp:depth=3"), o), UsageError);
}

TEST_F(TrainTest, TaskInputsClassesAndNoiseAreConfigurable) {
  TrainOptions o = quick(3);
  o.inputs = 7;
  o.classes = 4;
  o.noise = 0.0;
  const auto r = train(resolve_spec("mlp:depth=3,width=8"), o);
  EXPECT_EQ(r.trace.series()[r.trace.find("fc0.weight")].shape, (std::vector<std::int64_t>{8, 7}));
  EXPECT_EQ(r.trace.series()[r.trace.find("fc2.weight")].shape, (std::vector<std::int64_t>{4, 8}));
  EXPECT_NEAR(r.baseline_loss, std::log(4.0), 1e-12);
  EXPECT_EQ(r.config_value("noise"), "0");
  o.noise = 2;
  EXPECT_THROW(train(resolve_spec("mlp:depth=3,width=8"), o), UsageError);
}

TEST_F(TrainTest, OneSeedGivesIdenticalTraces) {
  for (const char* spec : {"mlp:depth=4,width=16,norm=batch", "cnn:depth=3,channels=4", "lstm:hidden=8"}) {
    TrainOptions o = quick(5);
    o.seed = 42;
    const auto a = train(resolve_spec(spec), o);
    const auto b = train(resolve_spec(spec), o);
    EXPECT_EQ(trace_to_json(a.trace), trace_to_json(b.trace)) << spec;
    EXPECT_EQ(a.loss, b.loss) << spec;
    o.seed = 43;
    const auto c = train(resolve_spec(spec), o);
    EXPECT_NE(trace_to_json(a.trace), trace_to_json(c.trace)) << spec;
  }
}

// --sharpness-every: measured at every k-th recorded step on a batch drawn aside, the training
// itself bit-identical; SGD's step size recorded beside it, no bound for Adam.
TEST_F(TrainTest, SharpnessIsMeasuredWithoutChangingTraining) {
  TrainOptions o = quick();
  o.steps = 8;
  o.lr = 0.2;
  const auto spec = resolve_spec("mlp:depth=3,width=16,act=tanh,norm=batch");
  const RunRecord bare = train(spec, o);
  o.sharpness_every = 3;
  const RunRecord r = train(spec, o);
  EXPECT_EQ(r.loss, bare.loss);
  for (const auto& st : r.trace.steps()) {
    EXPECT_EQ(st.sharpness.has_value(), st.step % 3 == 0) << st.step;
    if (st.sharpness) EXPECT_GT(*st.sharpness, 0.0);
    EXPECT_EQ(st.learning_rate, 0.2);
    EXPECT_EQ(st.momentum, o.momentum);
  }
  o.optimizer = "adam";
  o.lr = 1e-3;
  const RunRecord adam = train(spec, o);
  for (const auto& st : adam.trace.steps()) EXPECT_FALSE(st.learning_rate.has_value());
  o.sharpness_every = -1;
  EXPECT_THROW(train(spec, o), UsageError);
}

TEST_F(TrainTest, BadTrainerOptionsAreUsageErrors) {
  const auto spec = resolve_spec("mlp:depth=3");
  auto bad = [&](auto mutate) {
    TrainOptions o = quick();
    mutate(o);
    EXPECT_THROW(train(spec, o), UsageError);
  };
  bad([](TrainOptions& o) { o.steps = 0; });
  bad([](TrainOptions& o) { o.batch = 0; });
  bad([](TrainOptions& o) { o.lr = -0.1; });
  bad([](TrainOptions& o) { o.every = 0; });
  bad([](TrainOptions& o) { o.optimizer = "lbfgs"; });
  bad([](TrainOptions& o) { o.clip_norm = -1; });
  bad([](TrainOptions& o) { o.seq_len = 0; });
  EXPECT_THROW(train(resolve_spec("mlp:depth=3,norm=batch"), [] { auto o = quick(); o.batch = 1; return o; }()), UsageError);
  EXPECT_THROW(train(resolve_spec("mlp:depth=1000,width=65536"), quick()), UsageError);
}

// Measured at seed 0, initialization, batch 64, teacher task: plain sigmoid depth 20 loses 15.3
// orders of dL/dh from h.19 to h.1 and 10.6 orders of weight-gradient norm from fc19 to fc0;
// ReLU+He 0.0, batch norm +0.3, residual +0.0 orders. The margins below leave a wide gap on both
// sides: vanishing below -8, "far less" above -2.
TEST_F(TrainTest, DeepSigmoidVanishesAndTheRemediesRecoverIt) {
  auto at_init = [](const std::string& spec) {
    TrainOptions o;
    o.steps = 1;
    return train(resolve_spec(spec), o).summary;
  };
  const auto plain = at_init("plain");
  ASSERT_TRUE(plain.depth && plain.depth->log10);
  EXPECT_LT(*plain.depth->log10, -8.0);
  ASSERT_TRUE(plain.grad_norm_first && plain.grad_norm_last);
  EXPECT_LT(std::log10(*plain.grad_norm_first / *plain.grad_norm_last), -6.0);
  for (const char* remedy : {"he", "batchnorm", "residual"}) {
    const auto s = at_init(remedy);
    ASSERT_TRUE(s.depth && s.depth->log10) << remedy;
    EXPECT_GT(*s.depth->log10, -2.0) << remedy;
    EXPECT_GT(*s.depth->log10, *plain.depth->log10 + 6) << remedy;
  }
}

// Measured (hidden 64, adding problem, seed 0, LibTorch's default init): log10(|dL/dh_1|/|dL/dh_T|)
// at initialization is -10.6 (tanh RNN), -10.5 (LSTM), -9.9 (GRU) at T = 50 and -20.7, -20.1,
// -19.6 at T = 100. Orthogonal recurrent init: -2.1 at T = 100; IRNN: -0.1; LSTM forget bias 1:
// -7.4 against -20.3 with 0.
TEST_F(TrainTest, RecurrentNetsAtInitializationVanishUnlessInitialisedForIt) {
  auto time_att = [](const std::string& spec, std::int64_t T) {
    TrainOptions o;
    o.steps = 1;
    o.seq_len = T;
    const auto s = train(resolve_spec(spec), o).summary;
    EXPECT_TRUE(s.time && s.time->log10) << spec;
    return s.time && s.time->log10 ? *s.time->log10 : 0.0;
  };
  for (const char* cell : {"rnn", "lstm", "gru"}) {
    EXPECT_LT(time_att(cell, 50), -7.0) << cell;
    EXPECT_LT(time_att(cell, 100), -15.0) << cell;
  }
  const double plain = time_att("rnn", 100);
  EXPECT_GT(time_att("rnn:init=orthogonal", 100), -4.0);
  EXPECT_GT(time_att("rnn:cell=rnn_relu,init=identity", 100), -1.0);
  EXPECT_GT(time_att("rnn:init=orthogonal", 100), plain + 10);
  EXPECT_GT(time_att("lstm:forget_bias=1", 100), time_att("lstm:forget_bias=0", 100) + 6);
}

// Measured (hidden 32, T = 20, 600 Adam steps at 3e-3, seed 0): after training the tanh RNN
// still loses 4.6 orders from h_T to h_1 while the LSTM loses 0.6 and the GRU 0.1; both reach
// MSE < 0.03 against the 0.167 of a constant answer.
TEST_F(TrainTest, TrainedGatedCellsCarryGradientAcrossTimeAndLearn) {
  auto trained = [](const std::string& spec) {
    TrainOptions o;
    o.steps = 600;
    o.seq_len = 20;
    o.every = 100;
    return train(resolve_spec(spec + ":hidden=32"), o);
  };
  const auto rnn = trained("rnn");
  ASSERT_TRUE(rnn.summary.time_final && rnn.summary.time_final->log10);
  const double vanilla = *rnn.summary.time_final->log10;
  EXPECT_LT(vanilla, -3.0);
  for (const char* cell : {"lstm", "gru"}) {
    const auto r = trained(cell);
    ASSERT_TRUE(r.summary.time_final && r.summary.time_final->log10) << cell;
    EXPECT_GT(*r.summary.time_final->log10, vanilla + 2.5) << cell;
    double tail = 0;
    for (std::size_t i = r.loss.size() - 50; i < r.loss.size(); ++i) tail += r.loss[i] / 50;
    EXPECT_LT(tail, 0.05) << cell;
  }
}

// Pascanu et al. 2013: with the recurrent matrix's largest singular value s < 1 and |tanh'| <= 1,
// |dL/dh_1| <= s^(T-1) |dL/dh_T| when the loss reads only the last step.
TEST_F(TrainTest, TanhRnnObeysThePascanuBound) {
  for (double s : {0.5, 0.9}) {
    TrainOptions o;
    o.steps = 20;
    o.seq_len = 30;
    o.every = 1;
    const auto r = train(resolve_spec("rnn:hidden=16,dtype=float64,scale=" + std::to_string(s)), o);
    const auto time = numbered_series(r.trace, "time");
    ASSERT_EQ(time.size(), 30u);
    // The bound is checked before the first update changes the matrix: step 0 only.
    const auto& st = r.trace.steps().front();
    const double h1 = st.find(time.front())->grad.norm();
    const double hT = st.find(time.back())->grad.norm();
    ASSERT_GT(hT, 0.0);
    EXPECT_LE(h1, std::pow(s, 29) * hT) << "s=" << s;
    // Every intermediate step obeys the same bound relative to h_T.
    for (std::size_t t = 0; t < time.size(); ++t)
      EXPECT_LE(st.find(time[t])->grad.norm(), std::pow(s, 29 - static_cast<double>(t)) * hT * (1 + 1e-12));
  }
}

TEST_F(TrainTest, ClippingIsCountedAndKeepsAnExplodingSetupFinite) {
  TrainOptions o;
  o.steps = 30;
  const auto wild = train(resolve_spec("exploding"), o);
  EXPECT_TRUE(has_any(wild.findings, {FindingKind::exploding}));
  o.clip_norm = 1.0;
  const auto clipped = train(resolve_spec("exploding"), o);
  EXPECT_GT(clipped.clipped_steps, 0);
  for (double l : clipped.loss) EXPECT_TRUE(std::isfinite(l));
}

TEST_F(TrainTest, ValueClippingIsCountedAndBoundsEveryGradient) {
  TrainOptions o = quick(6);
  o.clip_value = 1e-7;  // every step has a larger gradient element
  auto r = train(resolve_spec("mlp:depth=3,width=8"), o);
  EXPECT_EQ(r.clipped_steps, 6);
  o.clip_value = 1e6;  // none has
  r = train(resolve_spec("mlp:depth=3,width=8"), o);
  EXPECT_EQ(r.clipped_steps, 0);
  // The recorded gradients are those before clipping: the trace's max |g| exceeds the bound.
  o.clip_value = 1e-7;
  r = train(resolve_spec("mlp:depth=3,width=8"), o);
  EXPECT_GT(r.trace.steps().front().find(r.trace.find("fc0.weight"))->grad.max_abs, 1e-7);
  ASSERT_EQ(r.accuracy.size(), 6u);
  for (double a : r.accuracy) EXPECT_TRUE(a >= 0 && a <= 1);
}

TEST_F(TrainTest, NetworksTapEveryHiddenStateAndEveryTimeStep) {
  TrainOptions o = quick(1);
  const auto mlp = train(resolve_spec("mlp:depth=6,width=8"), o);
  EXPECT_EQ(numbered_series(mlp.trace, "h").size(), 5u);
  EXPECT_EQ(mlp.layers.size(), 6u);
  o.seq_len = 7;
  const auto lstm = train(resolve_spec("lstm:hidden=8"), o);
  EXPECT_EQ(numbered_series(lstm.trace, "time").size(), 7u);
  EXPECT_EQ(numbered_series(lstm.trace, "cell").size(), 7u);
}

// The tap on a hidden state must equal autograd's dL/dh for that tensor.
TEST_F(TrainTest, HiddenStateTapsEqualAutograd) {
  torch::manual_seed(3);
  auto net = make_network(resolve_spec("mlp:depth=5,width=8,act=tanh,residual=1"), 4, 3);
  Monitor mon(*net);
  auto x = torch::randn({6, 4});
  auto out = net->forward(x, &mon);
  auto loss = out.pow(2).sum();
  mon.watch(loss);
  // autograd::grad on this graph would fire the taps' hooks: rebuild the same net from the same
  // seed and recompute its hidden states by hand instead.
  loss.backward();
  const Trace& t = mon.trace();
  torch::manual_seed(3);
  auto net2 = make_network(resolve_spec("mlp:depth=5,width=8,act=tanh,residual=1"), 4, 3);
  auto params = net2->named_parameters();
  torch::Tensor h = x;
  std::vector<torch::Tensor> hs;
  for (int i = 0; i < 4; ++i) {
    auto z = torch::linear(h, params["fc" + std::to_string(i) + ".weight"], params["fc" + std::to_string(i) + ".bias"]);
    auto a = torch::tanh(z);
    h = i > 0 ? h + a : a;
    hs.push_back(h);
  }
  auto o2 = torch::linear(h, params["fc4.weight"], params["fc4.bias"]);
  auto grads = torch::autograd::grad({o2.pow(2).sum()}, hs);
  for (int i = 0; i < 4; ++i) {
    const Record* r = t.steps().back().find(t.find("h." + std::to_string(i + 1)));
    ASSERT_NE(r, nullptr);
    EXPECT_TRUE(rel_close(r->grad.norm(), grads[i].norm().item<double>(), 1e-5)) << i;
  }
}

}  // namespace
}  // namespace gradflow::models

namespace gradflow::models {
namespace {

// Issue-level check on real networks (depth 20, width 256, seed 0), measured here: residual
// sigmoid: log10 |dW_1|/|dW_20| = -2.78 but dL/dh +0.03 orders; ReLU + Xavier: weight ratio
// -0.03 but dL/dh -2.72 orders (525x); batch norm + ReLU: dL/dh grows +1.58 orders (38x).
TEST_F(TrainTest, DiagnosisJudgesTheBackwardSignalNotTheWeightRatio) {
  auto at_init = [](const std::string& spec) {
    TrainOptions o;
    o.steps = 1;
    return train(resolve_spec(spec), o);
  };
  const auto res = at_init("mlp:depth=20,width=256,act=sigmoid,residual=1");
  EXPECT_LT(std::log10(*res.summary.grad_norm_first / *res.summary.grad_norm_last), -2.0);
  EXPECT_LT(std::abs(*res.summary.depth->log10), 0.5);
  EXPECT_FALSE(has_any(res.findings, {FindingKind::vanishing}));
  const auto xav = at_init("mlp:depth=20,width=256,act=relu,init=xavier_normal");
  EXPECT_LT(std::abs(std::log10(*xav.summary.grad_norm_first / *xav.summary.grad_norm_last)), 0.5);
  EXPECT_LT(*xav.summary.depth->log10, -2.0);
  EXPECT_TRUE(has_any(xav.findings, {FindingKind::vanishing}));
  const auto bn = at_init("mlp:depth=20,width=256,act=relu,norm=batch");
  EXPECT_GT(*bn.summary.depth->log10, 1.0);
  EXPECT_TRUE(has_any(bn.findings, {FindingKind::exploding}));
  EXPECT_FALSE(has_any(bn.findings, {FindingKind::vanishing}));
}

}  // namespace
}  // namespace gradflow::models

namespace gradflow::models {
namespace {

// A 60-layer sigmoid net loses more orders than float32 can hold: the attenuation becomes an
// upper bound with the underflow flag, while float64 measures the real figure below that bound.
TEST_F(TrainTest, Float32UnderflowIsABoundAndFloat64MeasuresIt) {
  TrainOptions o;
  o.steps = 1;
  const auto f32 = train(resolve_spec("mlp:depth=60,width=32,act=sigmoid"), o);
  ASSERT_TRUE(f32.summary.depth.has_value());
  EXPECT_TRUE(f32.summary.depth->underflow);
  ASSERT_TRUE(f32.summary.depth->log10.has_value());
  EXPECT_TRUE(std::isfinite(*f32.summary.depth->log10));
  const std::string json = run_to_json(f32);
  EXPECT_NE(json.find("\"attenuation_log10_underflow\": true"), std::string::npos);
  EXPECT_EQ(json.find("NaN"), std::string::npos);
  EXPECT_EQ(json.find("Infinity"), std::string::npos);
  const auto f64 = train(resolve_spec("mlp:depth=60,width=32,act=sigmoid,dtype=float64"), o);
  ASSERT_TRUE(f64.summary.depth && f64.summary.depth->log10);
  EXPECT_FALSE(f64.summary.depth->underflow);
  EXPECT_LT(*f64.summary.depth->log10, *f32.summary.depth->log10);
}

}  // namespace
}  // namespace gradflow::models
