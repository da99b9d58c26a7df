// Every loop pattern of the Monitor's step table: the recorded steps are the optimizer's steps,
// each recorded parameter gradient is .grad() as the optimizer applied it, the step's loss is
// the objective, and no finding contradicts the run.
#include <cfloat>
#include <cmath>
#include <map>

#include <torch/torch.h>

#include "gradflow/monitor.h"
#include "gradflow/run_record.h"
#include "gradflow/save_report.h"
#include "torch_test_util.h"

namespace gradflow {
namespace {

using test::rel_close;

// What the optimizer applied at each step: every parameter's .grad() norm, and the objective.
struct Applied {
  std::vector<std::map<std::string, double>> grad_norms;
  std::vector<double> objective;
  void take(torch::nn::Module& m, double objective_value) {
    std::map<std::string, double> g;
    for (const auto& p : m.named_parameters())
      if (p.value().grad().defined()) g[p.key()] = p.value().grad().to(torch::kDouble).norm().item<double>();
    grad_norms.push_back(g);
    objective.push_back(objective_value);
  }
};

// These healthy little runs give no finding at all: any would be a false one.
void expect_no_finding(Monitor& mon) {
  const RunRecord r = make_run_record(mon);
  for (const auto& f : r.findings) ADD_FAILURE() << to_string(f.kind) << ": " << f.message;
}

void expect_matches(const Trace& trace, const Applied& applied) {
  ASSERT_EQ(trace.steps().size(), applied.grad_norms.size()) << "recorded steps != optimizer steps";
  for (std::size_t s = 0; s < applied.grad_norms.size(); ++s) {
    const StepRecord& st = trace.steps()[s];
    EXPECT_FALSE(st.partial) << "step " << s;
    ASSERT_TRUE(st.loss.has_value()) << "step " << s;
    EXPECT_TRUE(rel_close(*st.loss, applied.objective[s], 1e-6)) << "step " << s;
    for (const auto& [name, norm] : applied.grad_norms[s]) {
      const Record* r = st.find(trace.find(name));
      ASSERT_NE(r, nullptr) << name << " at step " << s;
      EXPECT_TRUE(rel_close(r->grad.norm(), norm, 1e-5)) << name << " at step " << s;
    }
  }
}

torch::nn::Sequential mlp(int in, int hidden, int out) {
  return torch::nn::Sequential(torch::nn::Linear(in, hidden), torch::nn::Tanh(), torch::nn::Linear(hidden, hidden),
                               torch::nn::Tanh(), torch::nn::Linear(hidden, out));
}

// A small MLP trained by SGD, with a Monitor on it.
struct Loop {
  Loop(int outputs, bool auto_step)
      : net(mlp(4, 16, outputs)), opt(net->parameters(), 0.05), mon(*net, MonitorOptions{}.with_auto_step(auto_step)) {}
  torch::nn::Sequential net;
  torch::optim::SGD opt;
  Monitor mon;
  Applied applied;
  // One optimizer step on one watched loss.
  void plain_step() {
    opt.zero_grad();
    auto loss = net->forward(torch::randn({8, 4})).pow(2).mean();
    mon.watch(loss);
    loss.backward();
    applied.take(*net, loss.item<double>());
    opt.step();
  }
};

class TrainingLoopsTest : public test::TorchTest {};

TEST_F(TrainingLoopsTest, OneLossPerStep) {
  Loop loop(1, /*auto_step=*/true);
  for (int s = 0; s < 5; ++s) loop.plain_step();
  expect_matches(loop.mon.trace(), loop.applied);
  EXPECT_EQ(loop.mon.completed_steps(), 5);
  expect_no_finding(loop.mon);
}

TEST_F(TrainingLoopsTest, SeveralLossesAndBackwardsPerStep) {
  Loop loop(2, /*auto_step=*/false);
  auto& [net, opt, mon, applied] = loop;
  for (int s = 0; s < 4; ++s) {
    opt.zero_grad();
    auto y = net->forward(torch::randn({8, 4}));
    auto a = y.select(1, 0).pow(2).mean(), b = (y.select(1, 1) - 1).abs().mean();
    mon.watch(a);
    a.backward({}, /*retain_graph=*/true);
    mon.watch(b);
    b.backward();
    applied.take(*net, a.item<double>() + b.item<double>());
    opt.step();
    mon.step();
  }
  const Trace& t = mon.trace();
  expect_matches(t, applied);
  EXPECT_EQ(t.steps()[0].losses.size(), 2u);  // each watched loss is kept too
  EXPECT_EQ(t.steps()[0].backwards, 2);
  expect_no_finding(mon);
}

TEST_F(TrainingLoopsTest, GradientAccumulationOverMicroBatches) {
  Loop loop(1, /*auto_step=*/false);
  auto& [net, opt, mon, applied] = loop;
  for (int s = 0; s < 3; ++s) {
    opt.zero_grad();
    double objective = 0;
    for (int micro = 0; micro < 4; ++micro) {
      auto loss = net->forward(torch::randn({4, 4})).pow(2).mean() / 4;
      mon.watch(loss);
      loss.backward();
      objective += loss.item<double>();
    }
    applied.take(*net, objective);
    opt.step();
    mon.step();
  }
  expect_matches(mon.trace(), applied);
  expect_no_finding(mon);
}

// A GAN: the discriminator takes two backwards per step; the generator's backward runs through
// it after its optimizer step and is zeroed before the discriminator's next step.
TEST_F(TrainingLoopsTest, TwoModelsWhoseGraphsCross) {
  auto gen = mlp(3, 16, 4), disc = mlp(4, 16, 1);
  torch::optim::Adam og(gen->parameters(), 1e-3), od(disc->parameters(), 1e-3);
  Monitor mg(*gen);
  Monitor md(*disc, MonitorOptions{}.with_auto_step(false));
  Applied ag, ad;
  const auto bce = [](const torch::Tensor& logits, double target) {
    return torch::binary_cross_entropy_with_logits(logits, torch::full_like(logits, target));
  };
  for (int s = 0; s < 4; ++s) {
    od.zero_grad();
    auto d_real = bce(disc->forward(torch::randn({8, 4}) + 2), 1.0);
    md.watch(d_real);
    d_real.backward();
    auto fake = gen->forward(torch::randn({8, 3}));
    auto d_fake = bce(disc->forward(fake.detach()), 0.0);
    md.watch(d_fake);
    d_fake.backward();
    ad.take(*disc, d_real.item<double>() + d_fake.item<double>());
    od.step();
    md.step();
    og.zero_grad();
    auto g_loss = bce(disc->forward(fake), 1.0);
    mg.watch(g_loss);
    g_loss.backward();  // also reaches the discriminator's parameters: a step nobody closes
    ag.take(*gen, g_loss.item<double>());
    og.step();
  }
  expect_matches(mg.trace(), ag);
  const Trace& dt = md.trace();
  ASSERT_EQ(dt.steps().size(), 5u);
  EXPECT_TRUE(dt.steps().back().partial);
  expect_matches(dt.complete_steps(), ad);
  // The report drawn from it quotes no finding about the open step.
  SaveOptions o;
  o.traits.adversarial = true;
  const RunRecord r = make_run_record(md, o);
  EXPECT_EQ(r.trace.steps().size(), 4u);
  EXPECT_EQ(r.steps_done, 4);
  EXPECT_EQ(md.completed_steps(), 4);
  EXPECT_EQ(mg.completed_steps(), 4);
  EXPECT_FALSE(has_any(r.findings, {FindingKind::non_finite, FindingKind::stalled, FindingKind::unstable_loss}));
  expect_no_finding(mg);
}

// optimizer.step(closure) calls backward several times; what it applies last is what .grad()
// holds when it returns.
TEST_F(TrainingLoopsTest, ClosureThatRunsBackwardSeveralTimes) {
  auto net = mlp(4, 8, 1);
  torch::optim::LBFGS opt(net->parameters(), torch::optim::LBFGSOptions(0.1).max_iter(4));
  Monitor mon(*net, MonitorOptions{}.with_auto_step(false));
  Applied applied;
  const auto x = torch::randn({16, 4}), y = torch::randn({16, 1});
  double last = 0;
  for (int s = 0; s < 3; ++s) {
    int calls = 0;
    opt.step([&] {
      opt.zero_grad();
      auto loss = torch::mse_loss(net->forward(x), y);
      loss.backward();
      last = loss.item<double>();
      ++calls;
      return loss;
    });
    EXPECT_GT(calls, 1);
    mon.step();
    applied.take(*net, last);
  }
  const Trace& t = mon.trace();
  ASSERT_EQ(t.steps().size(), 3u);
  for (std::size_t s = 0; s < 3; ++s)
    for (const auto& [name, norm] : applied.grad_norms[s])
      EXPECT_TRUE(rel_close(t.steps()[s].find(t.find(name))->grad.norm(), norm, 1e-5)) << name << " at step " << s;
}

TEST_F(TrainingLoopsTest, ABackwardZeroedWithoutAnOptimizerStep) {
  Loop loop(1, /*auto_step=*/false);
  for (int s = 0; s < 3; ++s) {
    loop.opt.zero_grad();
    loop.net->forward(torch::randn({8, 4})).sum().backward();  // a probe, thrown away
    loop.plain_step();                                         // zeroes it, then the real step
    loop.mon.step();
  }
  expect_matches(loop.mon.trace(), loop.applied);
  expect_no_finding(loop.mon);
}

// The update the optimizer applied, measured by the Monitor when the step closes.
TEST_F(TrainingLoopsTest, UpdateNormsAreTheStepsTheOptimizerTook) {
  auto net = mlp(4, 16, 1);
  torch::optim::Adam opt(net->parameters(), 1e-2);
  Monitor mon(*net, MonitorOptions{}.with_update_norms(true));
  std::vector<std::map<std::string, double>> taken;
  for (int s = 0; s < 4; ++s) {
    opt.zero_grad();
    auto loss = net->forward(torch::randn({8, 4})).pow(2).mean();
    mon.watch(loss);
    loss.backward();
    std::map<std::string, torch::Tensor> before;
    for (const auto& p : net->named_parameters()) before[p.key()] = p.value().detach().clone();
    opt.step();
    std::map<std::string, double> step;
    for (const auto& p : net->named_parameters())
      step[p.key()] = (p.value().detach() - before[p.key()]).to(torch::kDouble).norm().item<double>();
    taken.push_back(step);
  }
  const Trace& t = mon.trace();
  ASSERT_EQ(t.steps().size(), 4u);
  for (std::size_t s = 0; s < 3; ++s)  // closed by the next step's start
    for (const auto& [name, norm] : taken[s])
      EXPECT_TRUE(rel_close(t.steps()[s].find(t.find(name))->update_norm, norm, 1e-6)) << name << " at step " << s;
  EXPECT_TRUE(std::isnan(t.steps()[3].find(t.find("0.weight"))->update_norm)) << "the open step's update is not known yet";
  // Without the option nothing is copied and nothing recorded.
  Monitor plain(*net);
  opt.zero_grad();
  net->forward(torch::randn({2, 4})).sum().backward();
  EXPECT_TRUE(std::isnan(plain.trace().steps().front().find(plain.trace().find("0.weight"))->update_norm));
}

TEST_F(TrainingLoopsTest, WithPlainSgdTheUpdateIsTheLearningRateTimesTheGradient) {
  auto net = mlp(4, 16, 1);
  torch::optim::SGD opt(net->parameters(), 0.1);
  Monitor mon(*net, MonitorOptions{}.with_update_norms(true).with_auto_step(false));
  for (int s = 0; s < 3; ++s) {
    opt.zero_grad();
    net->forward(torch::randn({8, 4})).pow(2).mean().backward();
    opt.step();
    mon.step();
  }
  const Trace& t = mon.trace();
  ASSERT_EQ(t.steps().size(), 3u);
  // θ after = fl(θ before − lr·g): each element of the stored update is off by at most half a
  // float ulp of θ, so the norms agree within FLT_EPSILON·‖θ‖.
  for (const auto& st : t.steps())
    for (const auto& r : st.records)
      EXPECT_NEAR(r.update_norm, 0.1 * r.grad.norm(), FLT_EPSILON * r.weight_norm) << t.series()[r.series].name << " at step " << st.step;
}

}  // namespace
}  // namespace gradflow
