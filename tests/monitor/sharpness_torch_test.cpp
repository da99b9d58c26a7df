// The Monitor's sharpness: λ_max at the step's parameters, against the explicit Hessian's top
// eigenvalue; measuring changes nothing in training; the step size it is judged against.
#include <torch/torch.h>

#include "gradflow/error.h"
#include "gradflow/monitor.h"
#include "torch_test_util.h"

namespace gradflow {
namespace {

class SharpnessMonitorTest : public test::TorchTest {};

// A small net with dropout and batch norm: randomness and buffers a measurement must not touch.
torch::nn::Sequential small_net() {
  return torch::nn::Sequential(torch::nn::Linear(3, 5), torch::nn::BatchNorm1d(5), torch::nn::Tanh(),
                               torch::nn::Dropout(0.2), torch::nn::Linear(5, 1));
}

// The explicit Hessian of `loss` with respect to every parameter, row by row (double backward).
torch::Tensor explicit_hessian(const torch::Tensor& loss, const std::vector<torch::Tensor>& params) {
  const auto grads = torch::autograd::grad({loss}, params, {}, true, true);
  std::vector<torch::Tensor> flat;
  for (const auto& g : grads) flat.push_back(g.reshape(-1));
  const auto g = torch::cat(flat);
  std::vector<torch::Tensor> rows;
  for (std::int64_t i = 0; i < g.numel(); ++i) {
    std::vector<torch::Tensor> parts;
    for (const auto& r : torch::autograd::grad({g[i]}, params, {}, true, false)) parts.push_back(r.reshape(-1));
    rows.push_back(torch::cat(parts));
  }
  return torch::stack(rows);
}

TEST_F(SharpnessMonitorTest, ItIsTheTopEigenvalueOfTheExplicitHessian) {
  torch::manual_seed(0);
  auto net = small_net();
  net->to(torch::kDouble);
  net->eval();  // one deterministic loss, for the explicit Hessian to be of the same function
  const auto x = torch::randn({16, 3}, torch::kDouble), y = torch::randn({16, 1}, torch::kDouble);
  auto fixed_loss = [&] { return torch::mse_loss(net->forward(x), y); };
  MonitorOptions o;
  o.with_sharpness(1, fixed_loss).with_auto_step(false);
  o.sharpness.rtol = 1e-10;
  o.sharpness.max_products = 2000;
  Monitor monitor(*net, o);
  const double top = torch::linalg_eigvalsh(explicit_hessian(fixed_loss(), net->parameters())).max().item<double>();
  const auto loss = fixed_loss();
  monitor.watch(loss);
  loss.backward();
  monitor.step();  // the parameters the step left: no update here
  const auto& st = monitor.trace().steps().back();
  ASSERT_TRUE(st.sharpness.has_value());
  EXPECT_NEAR(*st.sharpness, top, 1e-4 * std::fabs(top));
  EXPECT_GT(st.sharpness_products, 2);
}

TEST_F(SharpnessMonitorTest, MeasuringChangesNothingInTraining) {
  // The same seeded loop with dropout and batch norm, without and with a measurement every
  // other step: bit-identical losses and parameters; the step size of momentum SGD recorded.
  auto train = [](bool measure) {
    torch::manual_seed(1);
    auto net = small_net();
    const auto xf = torch::randn({32, 3}), yf = torch::randn({32, 1});
    MonitorOptions o;
    if (measure) o.with_sharpness(2, [&] { return torch::mse_loss(net->forward(xf), yf); });
    Monitor monitor(*net, o);
    torch::optim::SGD opt(net->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
    std::vector<double> losses;
    for (int s = 0; s < 6; ++s) {
      const auto x = torch::randn({32, 3}), y = torch::randn({32, 1});
      opt.zero_grad();
      const auto loss = torch::mse_loss(net->forward(x), y);
      monitor.watch(loss);
      loss.backward();
      monitor.optimizer_step(opt);
      losses.push_back(loss.item<double>());
    }
    std::vector<torch::Tensor> state;
    for (const auto& p : net->parameters()) state.push_back(p.detach().clone());
    for (const auto& b : net->buffers()) state.push_back(b.detach().clone());
    monitor.flush();
    return std::make_tuple(losses, state, monitor.trace());
  };
  const auto [bare_losses, bare_state, bare_trace] = train(false);
  const auto [losses, state, trace] = train(true);
  EXPECT_EQ(losses, bare_losses);
  ASSERT_EQ(state.size(), bare_state.size());
  for (std::size_t k = 0; k < state.size(); ++k) EXPECT_TRUE(torch::equal(state[k], bare_state[k])) << k;
  // The closure's forward is not recorded: the same series either way.
  EXPECT_EQ(trace.series().size(), bare_trace.series().size());
  for (const auto& st : trace.steps()) {
    EXPECT_EQ(st.sharpness.has_value(), st.step % 2 == 0) << st.step;
    EXPECT_EQ(st.learning_rate, 0.1);
    EXPECT_EQ(st.momentum, 0.9);
  }
}

// SGD's stability bound needs one step size: groups with different ones record none.
TEST_F(SharpnessMonitorTest, OnlySgdWithOneStepSizeInEveryGroupRecordsIt) {
  auto recorded = [](double lr2, double momentum2) {
    auto net = small_net();
    Monitor monitor(*net);
    const auto params = net->parameters();
    std::vector<torch::optim::OptimizerParamGroup> groups;
    groups.emplace_back(std::vector<torch::Tensor>(params.begin(), params.begin() + 1),
                        std::make_unique<torch::optim::SGDOptions>(torch::optim::SGDOptions(0.1).momentum(0.5)));
    groups.emplace_back(std::vector<torch::Tensor>(params.begin() + 1, params.end()),
                        std::make_unique<torch::optim::SGDOptions>(torch::optim::SGDOptions(lr2).momentum(momentum2)));
    torch::optim::SGD opt(std::move(groups), torch::optim::SGDOptions(0.1));
    const auto loss = net->forward(torch::randn({4, 3})).pow(2).mean();
    monitor.watch(loss);
    loss.backward();
    monitor.optimizer_step(opt);
    monitor.flush();
    const auto& st = monitor.trace().steps().at(0);
    return std::make_pair(st.learning_rate, st.momentum);
  };
  const auto same = recorded(0.1, 0.5);
  EXPECT_EQ(same.first, 0.1);
  EXPECT_EQ(same.second, 0.5);
  EXPECT_FALSE(recorded(0.2, 0.5).first.has_value());
  EXPECT_FALSE(recorded(0.1, 0.9).first.has_value());
}

TEST_F(SharpnessMonitorTest, BadSetupsAreClearErrors) {
  auto net = small_net();
  MonitorOptions no_loss;
  no_loss.sharpness_every = 3;
  EXPECT_THROW(Monitor(*net, no_loss), UsageError);
  MonitorOptions vector_loss;
  vector_loss.with_sharpness(1, [&] { return net->forward(torch::randn({4, 3})); });
  Monitor monitor(*net, vector_loss);
  const auto loss = net->forward(torch::randn({4, 3})).sum();
  monitor.watch(loss);
  loss.backward();
  EXPECT_THROW(monitor.end_optimizer_step(), UsageError);
  EXPECT_THROW(monitor.set_learning_rate(0.0), Error);
}

}  // namespace
}  // namespace gradflow
