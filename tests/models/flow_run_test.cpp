#include "models/flow_run.h"

#include <cmath>

#include "gradflow/error.h"
#include "torch_test_util.h"

namespace gradflow::models {
namespace {

class FlowRunTest : public test::TorchTest {};

TEST_F(FlowRunTest, TheFlowsLossNeverIncreasesOnASmallMlp) {
  FlowRunOptions o;
  o.time = 5;
  o.lrs = {0.05, 0.1, 0.2, 0.4};
  o.grid = 5;
  const auto r = run_flow(resolve_spec("mlp:depth=3,width=8,act=tanh"), o);
  ASSERT_GT(r.flow_loss.size(), 10u);
  for (std::size_t i = 1; i < r.flow_loss.size(); ++i)
    EXPECT_LE(r.flow_loss[i], r.flow_loss[i - 1] * (1 + 1e-12)) << "t=" << r.flow_t[i];
  EXPECT_LT(r.flow_loss.back(), r.flow_loss.front());
  // Small steps: first order, every run recorded with its distances.
  ASSERT_TRUE(r.order.has_value());
  EXPECT_NEAR(*r.order, 1.0, 0.15);
  ASSERT_EQ(r.runs.size(), 4u);
  for (const auto& d : r.runs) {
    EXPECT_EQ(d.steps, static_cast<std::int64_t>(std::llround(5 / d.lr)));
    EXPECT_EQ(d.distance.size(), static_cast<std::size_t>(d.steps + 1));
    EXPECT_EQ(d.final_distance, d.distance.back());
    EXPECT_FALSE(d.path.empty());
  }
  EXPECT_EQ(r.plane.loss.size(), 25u);
  // The flow file round-trips.
  const auto back = flow_from_json(flow_to_json(r));
  EXPECT_EQ(back.runs.size(), r.runs.size());
  EXPECT_DOUBLE_EQ(back.runs[2].max_distance, r.runs[2].max_distance);
  EXPECT_DOUBLE_EQ(*back.order, *r.order);
}

TEST_F(FlowRunTest, ItsGradientIsTheModelsGradient) {
  // The flow's right-hand side at t = 0 must be autograd's full-batch gradient: one Euler step
  // of size lr from θ(0) is exactly GD's first step, whose distance to the flow at t = lr is
  // O(lr^2); halving lr must divide it by about 4.
  FlowRunOptions o;
  o.time = 0.02;
  o.lrs = {0.02, 0.01};
  o.grid = 0;
  const auto r = run_flow(resolve_spec("mlp:depth=3,width=8"), o);
  const double one_step_big = r.runs[0].distance[1], one_step_small = r.runs[1].distance[1];
  EXPECT_GT(one_step_big / one_step_small, 3.5);
  EXPECT_LT(one_step_big / one_step_small, 4.5);
}

// The sharpness at every step of every run: a run stays below its stability bound exactly as long
// as its loss keeps falling (the descent lemma), and the measurement is in the flow file.
TEST_F(FlowRunTest, GradientDescentLeavesTheFlowWhereItsSharpnessPassesTwoOverEta) {
  FlowRunOptions o;
  o.time = 8;
  o.lrs = {0.1, 1.0, 8.0};  // λ_max starts near 0.35: 8 is past 2/λ_max from the first step
  o.grid = 3;
  o.sharpness_points = 1000;
  const auto r = run_flow(resolve_spec("mlp:depth=3,width=8,act=tanh"), o);
  ASSERT_FALSE(r.flow_sharpness.empty());
  bool some_edge = false, some_stable = false;
  for (const auto& d : r.runs) {
    ASSERT_EQ(d.sharpness.size(), static_cast<std::size_t>(d.steps + 1)) << d.lr;  // every step, the last included
    std::optional<double> edge;
    for (std::size_t k = 0; k < d.sharpness.size() && !edge; ++k)
      if (d.lr * d.sharpness[k] >= 2.0) edge = d.sharpness_t[k];
    EXPECT_EQ(d.edge_at, edge) << d.lr;
    bool rose = false;
    for (std::size_t k = 1; k < d.loss_gd.size(); ++k) rose = rose || d.loss_gd[k] > d.loss_gd[k - 1];
    if (rose) EXPECT_TRUE(d.edge_at.has_value()) << "lr " << d.lr << ": the loss rose below the stability bound";
    some_edge = some_edge || d.edge_at.has_value();
    some_stable = some_stable || (!d.edge_at && !rose);
  }
  EXPECT_TRUE(some_edge);
  EXPECT_TRUE(some_stable);
  EXPECT_EQ(r.sharpness_measurements,
            static_cast<std::int64_t>(r.flow_sharpness.size() + r.runs[0].sharpness.size() + r.runs[1].sharpness.size() +
                                      r.runs[2].sharpness.size()));
  EXPECT_GT(r.sharpness_products, r.sharpness_measurements);
  const auto back = flow_from_json(flow_to_json(r));
  EXPECT_EQ(back.flow_sharpness, r.flow_sharpness);
  EXPECT_EQ(back.runs[2].sharpness, r.runs[2].sharpness);
  EXPECT_EQ(back.runs[2].edge_at, r.runs[2].edge_at);
  EXPECT_EQ(back.sharpness_products, r.sharpness_products);
  EXPECT_NE(flow_page_html(r).find("Sharpness: the loss Hessian"), std::string::npos);
}

// Cohen et al. 2021, figure 1: under full-batch gradient descent the sharpness rises from below
// 2/η and then hovers at it, while the flow's own sharpness keeps rising: descent follows the flow
// until its sharpness reaches 2/η and leaves it there.
TEST_F(FlowRunTest, FullBatchDescentRisesToTheEdgeOfStabilityAndStaysThere) {
  FlowRunOptions o;
  o.samples = 64;
  o.seq_len = 5;
  o.time = 50;
  o.lrs = {0.01, 0.02};
  o.grid = 0;
  o.sharpness_points = 40;
  const auto r = run_flow(resolve_spec("rnn:cell=rnn_tanh,hidden=16"), o);
  for (const auto& d : r.runs) {
    SCOPED_TRACE("lr " + std::to_string(d.lr));
    const double bound = 2.0 / d.lr;
    ASSERT_GT(d.sharpness.size(), 20u);
    EXPECT_LT(d.sharpness.front(), 0.2 * bound);  // from well below
    ASSERT_TRUE(d.edge_at.has_value());
    // The level it settles at: the mean over the run's last fifth, computed here from the series.
    double sum = 0;
    int n = 0;
    for (std::size_t k = 0; k < d.sharpness.size(); ++k)
      if (d.sharpness_t[k] >= 0.8 * o.time) sum += d.sharpness[k], ++n;
    ASSERT_GT(n, 3);
    ASSERT_TRUE(d.final_sharpness().has_value());
    EXPECT_DOUBLE_EQ(*d.final_sharpness(), sum / n);
    EXPECT_NEAR(sum / n / bound, 1.0, 0.10);
    // Below the edge descent follows the flow; it leaves it where the sharpness reaches 2/η.
    ASSERT_TRUE(d.departs_at.has_value());
    EXPECT_GE(*d.departs_at, 0.5 * *d.edge_at);
  }
  // The flow has no step size to be stable against: its sharpness passes both bounds.
  ASSERT_FALSE(r.flow_sharpness.empty());
  EXPECT_GT(r.flow_sharpness.back(), 1.2 * 2.0 / 0.01);
}

TEST_F(FlowRunTest, BadOptionsAreUsageErrors) {
  FlowRunOptions o;
  o.samples = 1;
  EXPECT_THROW(run_flow(resolve_spec("mlp:depth=3"), o), UsageError);
  o = FlowRunOptions{};
  o.lrs = {};
  EXPECT_THROW(run_flow(resolve_spec("mlp:depth=3"), o), UsageError);
}

}  // namespace
}  // namespace gradflow::models
