// Which gradient a record holds, from C++: the one backward produced and the one the optimizer
// applied (clipping), one record per closure evaluation (LBFGS), the true gradient of a
// loss-scaled loop with a skipped step; and on gradflow's own data-parallel group, recording and
// the trainer's step figures add no collective to the gradient's own.
#include <atomic>
#include <thread>

#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include "gradflow/data_parallel.h"
#include "gradflow/monitor.h"
#include "models/spec.h"
#include "models/train.h"
#include "torch_test_util.h"

namespace gradflow::test {
namespace {

constexpr int kSteps = 6;

torch::nn::Sequential make_model() {
  torch::manual_seed(7);
  torch::nn::Sequential m(torch::nn::Linear(5, 24), torch::nn::Tanh(), torch::nn::Linear(24, 24), torch::nn::Tanh(),
                          torch::nn::Linear(24, 2));
  m->to(torch::kDouble);
  return m;
}

std::vector<std::pair<torch::Tensor, torch::Tensor>> batches(int n) {
  torch::manual_seed(21);
  std::vector<std::pair<torch::Tensor, torch::Tensor>> out;
  for (int i = 0; i < n; ++i) out.emplace_back(torch::randn({16, 5}, torch::kDouble), torch::randn({16, 2}, torch::kDouble));
  return out;
}

std::vector<torch::Tensor> grads_of(torch::nn::Module& m) {
  std::vector<torch::Tensor> g;
  for (const auto& p : m.parameters()) g.push_back(p.grad().detach().clone());
  return g;
}

const Record& record_of(const Trace& t, const StepRecord& st, const std::string& name) {
  const Record* r = st.find(t.find(name));
  if (!r) throw std::runtime_error(name + " not recorded at step " + std::to_string(st.step));
  return *r;
}

class WhichGradientTest : public TorchTest {};

TEST_F(WhichGradientTest, ClippedLoopRecordsProducedAndAppliedGradients) {
  auto model = make_model();
  torch::optim::SGD opt(model->parameters(), 0.5);
  Monitor mon(*model);
  std::vector<std::vector<torch::Tensor>> produced, applied;
  for (const auto& [x, y] : batches(kSteps)) {
    opt.zero_grad();
    auto loss = torch::mse_loss(model->forward(x), y);
    mon.watch(loss);
    loss.backward();
    produced.push_back(grads_of(*model));
    torch::nn::utils::clip_grad_norm_(model->parameters(), 0.05);
    applied.push_back(grads_of(*model));
    mon.optimizer_step(opt);
  }
  const Trace& t = mon.trace();
  ASSERT_EQ(t.steps().size(), static_cast<std::size_t>(kSteps));
  const auto names = model->named_parameters().keys();
  for (int s = 0; s < kSteps; ++s) {
    const StepRecord& st = t.steps()[s];
    EXPECT_EQ(st.optimizer_step, s);
    EXPECT_EQ(st.evaluation, -1);
    EXPECT_FALSE(st.partial);
    for (std::size_t i = 0; i < names.size(); ++i) {
      const Record& r = record_of(t, st, names[i]);
      expect_stats_equal(r.grad, produced[s][i], 1e-12, "produced " + names[i]);
      ASSERT_TRUE(r.applied.has_value());
      expect_stats_equal(*r.applied, applied[s][i], 1e-12, "applied " + names[i]);
    }
    const auto change = applied_change(st, t);
    ASSERT_TRUE(change.has_value());
    EXPECT_EQ(change->changed, static_cast<int>(names.size()));
    EXPECT_NEAR(change->applied_norm, 0.05, 1e-6);  // clip_grad_norm_ divides by norm + 1e-6
  }
}

TEST_F(WhichGradientTest, EachClosureEvaluationIsARecordOfItsOwn) {
  auto model = make_model();
  torch::optim::LBFGS opt(model->parameters(), torch::optim::LBFGSOptions(0.5).max_iter(5));
  Monitor mon(*model);
  const auto data = batches(1);
  struct Evaluation {
    double loss;
    std::vector<torch::Tensor> grads;
  };
  std::vector<Evaluation> evaluations;
  auto closure = [&] {
    opt.zero_grad();
    auto loss = torch::mse_loss(model->forward(data[0].first), data[0].second);
    mon.watch(loss);
    loss.backward();
    evaluations.push_back({loss.item<double>(), grads_of(*model)});
    return loss;
  };
  std::vector<double> returned;
  for (int s = 0; s < 3; ++s) returned.push_back(mon.optimizer_step(opt, closure).item<double>());
  const Trace& t = mon.trace();
  ASSERT_EQ(t.steps().size(), evaluations.size());
  ASSERT_GT(evaluations.size(), 3u);
  const auto names = model->named_parameters().keys();
  std::int64_t last_step = -1;
  int expected_evaluation = 0;
  for (std::size_t k = 0; k < evaluations.size(); ++k) {
    const StepRecord& st = t.steps()[k];
    if (st.optimizer_step != last_step) expected_evaluation = 0;
    EXPECT_EQ(st.evaluation, expected_evaluation++);
    last_step = st.optimizer_step;
    EXPECT_DOUBLE_EQ(*st.loss, evaluations[k].loss);
    for (std::size_t i = 0; i < names.size(); ++i)
      expect_stats_equal(record_of(t, st, names[i]).grad, evaluations[k].grads[i], 1e-12, names[i]);
    const bool last_of_step = k + 1 == evaluations.size() || t.steps()[k + 1].optimizer_step != st.optimizer_step;
    EXPECT_EQ(st.step_loss.has_value(), last_of_step) << k;
    if (last_of_step) {
      EXPECT_DOUBLE_EQ(*st.step_loss, returned.at(static_cast<std::size_t>(st.optimizer_step)));
    }
  }
  EXPECT_EQ(last_step, 2);
}

TEST_F(WhichGradientTest, ALossScaledLoopRecordsTheTrueGradientAndMarksTheSkippedStep) {
  auto model = make_model();
  torch::optim::SGD opt(model->parameters(), 0.1);
  Monitor mon(*model);
  double scale = 1024;
  constexpr int kOverflow = 2;
  std::vector<std::vector<torch::Tensor>> truth;
  int s = 0;
  for (const auto& [x, y] : batches(kSteps)) {
    opt.zero_grad();
    auto loss = torch::mse_loss(model->forward(x), y);
    mon.set_loss_scale(scale);
    mon.watch(loss);
    (loss * scale * (s == kOverflow ? std::numeric_limits<double>::infinity() : 1.0)).backward();
    std::vector<torch::Tensor> g;
    for (const auto& p : model->parameters()) g.push_back(p.grad() / scale);
    truth.push_back(g);
    bool finite = true;
    for (const auto& p : model->parameters()) finite = finite && torch::isfinite(p.grad()).all().item<bool>();
    if (finite) {
      for (const auto& p : model->parameters()) p.mutable_grad().div_(scale);
      mon.optimizer_step(opt);
    } else {
      scale /= 2;
    }
    ++s;
  }
  mon.flush();
  const Trace& t = mon.trace();
  ASSERT_EQ(t.steps().size(), static_cast<std::size_t>(kSteps));
  const auto names = model->named_parameters().keys();
  for (int k = 0; k < kSteps; ++k) {
    const StepRecord& st = t.steps()[k];
    EXPECT_EQ(st.skipped, k == kOverflow) << k;
    EXPECT_EQ(*st.loss_scale, k <= kOverflow ? 1024 : 512) << k;
    if (k == kOverflow) {
      EXPECT_EQ(*st.scale_after, 512);
      continue;
    }
    for (std::size_t i = 0; i < names.size(); ++i) {
      const Record& r = record_of(t, st, names[i]);
      expect_stats_equal(r.grad, truth[k][i], 1e-12, names[i]);
      // Unscaled before the step: the applied gradient is the true one too.
      EXPECT_TRUE(rel_close(r.applied->norm(), r.grad.norm(), 1e-12)) << names[i];
    }
  }
}

TEST_F(WhichGradientTest, OptimizerStepsThatDoNotNestAreAClearError) {
  auto model = make_model();
  Monitor mon(*model);
  EXPECT_THROW(mon.end_optimizer_step(), UsageError);
  mon.begin_optimizer_step();
  EXPECT_THROW(mon.begin_optimizer_step(), UsageError);
  EXPECT_THROW(mon.set_loss_scale(0), UsageError);
  EXPECT_THROW(mon.set_loss_scale(std::numeric_limits<double>::quiet_NaN()), UsageError);
}

// ---- gradflow's own data-parallel group: no collective of the Monitor's or the trainer's ----

// The group a rank built, with a count of the collectives that pass through it.
class CountingGroup : public c10d::ProcessGroup {
 public:
  explicit CountingGroup(c10d::ProcessGroup& inner)
      : ProcessGroup(inner.getRank(), inner.getSize()),
        inner_(c10::intrusive_ptr<c10d::ProcessGroup>::unsafe_reclaim_from_nonowning(&inner)) {}
  const std::string getBackendName() const override { return "counting"; }
  c10::intrusive_ptr<c10d::Work> allreduce(std::vector<at::Tensor>& t, const c10d::AllreduceOptions& o) override {
    ++calls;
    return inner_->allreduce(t, o);
  }
  c10::intrusive_ptr<c10d::Work> broadcast(std::vector<at::Tensor>& t, const c10d::BroadcastOptions& o) override {
    ++calls;
    return inner_->broadcast(t, o);
  }
  c10::intrusive_ptr<c10d::Work> allgather(std::vector<std::vector<at::Tensor>>& out, std::vector<at::Tensor>& in,
                                                         const c10d::AllgatherOptions& o) override {
    ++calls;
    return inner_->allgather(out, in, o);
  }
  c10::intrusive_ptr<c10d::Work> barrier(const c10d::BarrierOptions& o) override {
    ++calls;
    return inner_->barrier(o);
  }
  std::atomic<int> calls{0};

 private:
  c10::intrusive_ptr<c10d::ProcessGroup> inner_;
};

// Runs `body` on two ranks over loopback, each with a DataParallel on a counting group.
void two_ranks(const std::function<void(int rank, DataParallel& dp, CountingGroup& counting)>& body) {
  c10d::TCPStoreOptions so;
  so.port = 0;
  so.isServer = true;
  so.waitWorkers = false;
  auto store = c10::make_intrusive<c10d::TCPStore>("127.0.0.1", so);
  std::vector<std::string> errors(2);
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r)
    threads.emplace_back([&, r] {
      try {
        DataParallelOptions o;
        o.rank = r;
        o.world_size = 2;
        o.master_port = store->getPort();
        o.agent_store = true;
        o.timeout = std::chrono::seconds(20);
        DataParallel base(o);
        auto counting = c10::make_intrusive<CountingGroup>(base.group());
        DataParallel dp(counting, o);
        body(r, dp, *counting);
      } catch (const std::exception& e) {
        errors[r] = e.what();
      }
    });
  for (auto& t : threads) t.join();
  for (int r = 0; r < 2; ++r) EXPECT_EQ(errors[r], "") << "rank " << r;
}

// Collectives of each step, training with or without a Monitor.
std::vector<int> collectives_per_step(int rank, DataParallel& dp, CountingGroup& counting, bool monitored) {
  auto model = make_model();
  dp.broadcast_parameters(*model);
  torch::optim::SGD opt(model->parameters(), 0.1);
  std::optional<Monitor> mon;
  if (monitored) mon.emplace(*model, MonitorOptions{}.with_data_parallel(dp, 8));
  std::vector<int> calls;
  for (const auto& [x, y] : batches(kSteps)) {
    const int before = counting.calls;
    opt.zero_grad();
    auto loss = torch::mse_loss(model->forward(x.narrow(0, rank * 8, 8)), y.narrow(0, rank * 8, 8));
    if (mon) mon->watch(loss);
    loss.backward();
    dp.average_gradients(*model);
    opt.step();
    calls.push_back(counting.calls - before);
  }
  if (mon) {
    // The figures still reached every rank.
    const Trace& t = mon->trace();
    EXPECT_EQ(t.steps().back().rank_losses.size(), 2u);
    EXPECT_EQ(t.steps().back().records.front().ranks.size(), 2u);
  }
  return calls;
}

TEST_F(WhichGradientTest, RecordingAddsNoCollectiveToADataParallelStep) {
  two_ranks([](int rank, DataParallel& dp, CountingGroup& counting) {
    const auto bare = collectives_per_step(rank, dp, counting, false);
    const auto monitored = collectives_per_step(rank, dp, counting, true);
    EXPECT_EQ(monitored, bare);
    EXPECT_EQ(bare, std::vector<int>(kSteps, 1));  // one bucket: one allreduce
  });
}

TEST_F(WhichGradientTest, TheTrainersLossAndStopFlagRideInTheGradientsAllreduce) {
  two_ranks([](int, DataParallel& dp, CountingGroup& counting) {
    auto run = [&](std::int64_t steps) {
      models::TrainOptions o;
      o.steps = steps;
      o.batch = 8;
      o.data_parallel = &dp;
      const int before = counting.calls;
      const RunRecord r = models::train(models::resolve_spec("mlp:depth=3,width=8"), o);
      EXPECT_EQ(r.loss.size(), static_cast<std::size_t>(steps));
      return counting.calls - before;
    };
    const int three = run(3), six = run(6);
    EXPECT_EQ(six - three, 3);  // one collective per further step: the gradient's
  });
}

}  // namespace
}  // namespace gradflow::test
