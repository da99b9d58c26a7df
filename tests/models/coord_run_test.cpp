#include "models/coord_run.h"

#include <cmath>

#include <torch/torch.h>

#include "gradflow/error.h"
#include "models/network.h"
#include "models/parametrise.h"
#include "models/task.h"
#include "torch_test_util.h"

namespace gradflow::models {
namespace {

using test::rel_close;

class CoordRunTest : public test::TorchTest {};

// mean |x| with a plain loop in double.
double mean_abs(const torch::Tensor& t) {
  const auto x = t.detach().to(torch::kDouble).contiguous().reshape({-1});
  const double* p = x.data_ptr<double>();
  double s = 0;
  for (std::int64_t i = 0; i < x.numel(); ++i) s += std::abs(p[i]);
  return s / static_cast<double>(x.numel());
}

// Adam written out (Kingma & Ba, with torch's defaults), one state per parameter.
struct HandAdam {
  double lr;
  torch::Tensor m, v;
  int t = 0;
  void step(torch::Tensor& p, const torch::Tensor& g) {
    torch::NoGradGuard no_grad;
    if (!m.defined()) m = torch::zeros_like(p), v = torch::zeros_like(p);
    ++t;
    m = 0.9 * m + 0.1 * g;
    v = 0.999 * v + 0.001 * g * g;
    const double c1 = 1 - std::pow(0.9, t), c2 = 1 - std::pow(0.999, t);
    p -= lr / c1 * m / (v.sqrt() / std::sqrt(c2) + 1e-8);
  }
};

// A three-layer ReLU MLP under µP, its coordinate check against a hand-written run: the forward
// by matrix products, gradients by autograd.grad, Adam by hand at Table 3's rates (input weights
// and biases η, the hidden matrix and the read-out η·base/width, the read-out's bias η).
TEST_F(CoordRunTest, FiguresEqualAHandWrittenRun) {
  const ResolvedSpec spec = resolve_spec("mlp:depth=3,act=relu,init=he_normal,param=mup,base_width=8");
  CoordRunOptions o;
  o.widths = {8, 16, 32};
  o.train.steps = 3;
  o.train.batch = 16;
  o.train.optimizer = "adam";
  o.train.lr = 0.01;
  const CoordCheck c = run_coord_check(spec, o);
  ASSERT_EQ(c.layers.size(), 3u);
  EXPECT_EQ(c.label, "mlp:depth=3,act=relu,init=he_normal,norm=none,residual=0,param=mup,base_width=8,dtype=float32");
  EXPECT_EQ(c.layers[0].kind, WeightKind::input);
  EXPECT_EQ(c.layers[1].kind, WeightKind::hidden);
  EXPECT_EQ(c.layers[2].kind, WeightKind::readout);

  torch::manual_seed(o.train.seed);
  auto task = make_task_for(spec, o.train);
  const Batch b = task->sample(o.train.batch);
  for (std::size_t wi = 0; wi < o.widths.size(); ++wi) {
    const double width = static_cast<double>(o.widths[wi]);
    torch::manual_seed(o.train.seed + 1);
    auto net = make_network(spec.with_width(o.widths[wi]), task->input_dim(), task->output_dim());
    auto params = net->named_parameters();
    std::vector<torch::Tensor> W = {params["fc0.weight"], params["fc1.weight"], params["fc2.weight"]};
    std::vector<torch::Tensor> B = {params["fc0.bias"], params["fc1.bias"], params["fc2.bias"]};
    const double shrink = 8.0 / width;
    std::vector<HandAdam> adam_w = {{0.01}, {0.01 * shrink}, {0.01 * shrink}}, adam_b = {{0.01}, {0.01}, {0.01}};
    std::vector<torch::Tensor> h0;
    for (std::int64_t t = 0; t < o.train.steps; ++t) {
      std::vector<torch::Tensor> h(3);
      h[0] = torch::matmul(b.x, W[0].t()) + B[0];
      h[1] = torch::matmul(torch::relu(h[0]), W[1].t()) + B[1];
      h[2] = torch::matmul(torch::relu(h[1]), W[2].t()) + B[2];
      if (t == 0) for (const auto& x : h) h0.push_back(x.detach().clone());
      const auto loss = task->loss(h[2], b);
      const auto g = torch::autograd::grad({loss}, {h[0], h[1], h[2], W[0], W[1], W[2], B[0], B[1], B[2]});
      for (std::size_t l = 0; l < 3; ++l) {
        SCOPED_TRACE("width " + std::to_string(o.widths[wi]) + ", step " + std::to_string(t) + ", layer " + std::to_string(l));
        EXPECT_TRUE(rel_close(c.at(CoordQuantity::activation, t, l, wi), mean_abs(h[l]), 1e-5));
        if (t > 0) EXPECT_TRUE(rel_close(c.at(CoordQuantity::change, t, l, wi), mean_abs(h[l] - h0[l]), 1e-4));
        else EXPECT_TRUE(std::isnan(c.at(CoordQuantity::change, t, l, wi)));
        EXPECT_TRUE(rel_close(c.at(CoordQuantity::output_gradient, t, l, wi), mean_abs(g[l]), 1e-5));
        EXPECT_TRUE(rel_close(c.at(CoordQuantity::weight_gradient, t, l, wi), mean_abs(g[3 + l]), 1e-5));
        const auto before = W[l].detach().clone();
        adam_w[l].step(W[l], g[3 + l]);
        adam_b[l].step(B[l], g[6 + l]);
        EXPECT_TRUE(rel_close(c.at(CoordQuantity::update, t, l, wi), mean_abs(W[l] - before), 1e-4));
      }
    }
  }
}

TEST_F(CoordRunTest, MupScalesOnlyTheReadoutsInitialisationAndEqualsSpAtTheBaseWidth) {
  for (const char* family : {"mlp:depth=3,init=he_normal", "cnn:depth=3,init=he_normal", "transformer:depth=1,heads=2"}) {
    SCOPED_TRACE(family);
    const ResolvedSpec sp = resolve_spec(std::string(family) + ",param=sp,base_width=8");
    const ResolvedSpec mup = resolve_spec(std::string(family) + ",param=mup,base_width=8");
    const std::string readout = sp.family == "mlp" ? "fc2.weight" : "head.weight";
    for (std::int64_t width : {8, 32}) {
      torch::manual_seed(3);
      auto a = make_network(sp.with_width(width), 6, 5);
      torch::manual_seed(3);
      auto b = make_network(mup.with_width(width), 6, 5);
      const auto pa = a->named_parameters(), pb = b->named_parameters();
      for (const auto& item : pa) {
        const double factor = item.key() == readout ? std::sqrt(8.0 / static_cast<double>(width)) : 1.0;
        EXPECT_TRUE(torch::allclose(pb[item.key()], item.value() * factor, 0, 0)) << item.key() << " at width " << width;
      }
    }
  }
}

TEST_F(CoordRunTest, OptimizerGroupsCarryTable3sRates) {
  const ResolvedSpec spec = resolve_spec("mlp:depth=3,param=mup,base_width=8").with_width(32);
  auto net = make_network(spec, 6, 5);
  // fc0: input (and its bias), fc1: hidden (bias input-like), fc2: read-out (bias fixed).
  const std::map<std::string, std::pair<double, double>> want = {  // name -> (SGD, Adam) multiplier
      {"fc0.weight", {4, 1}}, {"fc0.bias", {4, 1}}, {"fc1.weight", {1, 0.25}}, {"fc1.bias", {4, 1}},
      {"fc2.weight", {0.25, 0.25}}, {"fc2.bias", {1, 1}}};
  for (auto opt : {OptimizerKind::sgd, OptimizerKind::adam}) {
    std::size_t seen = 0;
    for (const auto& g : parameter_groups(spec, *net, opt, parameter_layout(spec, 6, 5)))
      for (const auto& p : g.params)
        for (const auto& item : net->named_parameters())
          if (item.value().is_same(p)) {
            const auto& w = want.at(item.key());
            EXPECT_DOUBLE_EQ(g.lr_multiplier, opt == OptimizerKind::sgd ? w.first : w.second) << item.key() << " " << to_string(opt);
            ++seen;
          }
    EXPECT_EQ(seen, want.size());
  }
  const ResolvedSpec sp_spec = resolve_spec("mlp:depth=3").with_width(32);
  const auto sp = parameter_groups(sp_spec, *net, OptimizerKind::adam, parameter_layout(sp_spec, 6, 5));
  ASSERT_EQ(sp.size(), 1u);
  EXPECT_EQ(sp[0].lr_multiplier, 1.0);
}

// µP equals SP at the base width: the same training, batch for batch, which also needs the
// networks µP reads its weight kinds from to leave the random sequence alone.
TEST_F(CoordRunTest, MupTrainsAsSpAtTheBaseWidth) {
  TrainOptions o;
  o.steps = 5;
  o.batch = 16;
  o.optimizer = "adam";
  for (const char* family : {"mlp:depth=3,width=16", "transformer:depth=1,width=16,heads=2"}) {
    SCOPED_TRACE(family);
    const RunRecord sp = train(resolve_spec(std::string(family) + ",base_width=16,param=sp"), o);
    const RunRecord mup = train(resolve_spec(std::string(family) + ",base_width=16,param=mup"), o);
    EXPECT_EQ(sp.loss, mup.loss);
    const RunRecord wider = train(resolve_spec(std::string(family) + ",base_width=8,param=mup"), o);
    EXPECT_NE(sp.loss, wider.loss) << "away from the base width µP trains otherwise";
  }
}

TEST_F(CoordRunTest, AttentionLogitsScaleAsOneOverDUnderMup) {
  const ResolvedSpec spec = resolve_spec("transformer:heads=2,param=mup,base_width=8");
  EXPECT_DOUBLE_EQ(attention_scale_of(spec.with_width(8)), 1.0 / 2.0);            // 1/sqrt(4): SP's at the base
  EXPECT_DOUBLE_EQ(attention_scale_of(spec.with_width(32)), std::sqrt(4.0) / 16);  // sqrt(base d_head)/d_head
  EXPECT_DOUBLE_EQ(attention_scale_of(resolve_spec("transformer:heads=2,width=32")), 0.25);
}

TEST_F(CoordRunTest, RecurrentFamiliesAreRefused) {
  CoordRunOptions o;
  o.widths = {8, 16};
  EXPECT_THROW(run_coord_check(resolve_spec("lstm"), o), UsageError);
}

}  // namespace
}  // namespace gradflow::models
