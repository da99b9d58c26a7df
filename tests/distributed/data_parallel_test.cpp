// Two ranks over a loopback store, one thread each: the Monitor on DataParallel records the
// averaged gradient a one-process run records, each rank's local gradient as a single process
// computes it on that shard, the noise scale from those figures, and names a rank that goes wrong.
#include <filesystem>
#include <future>
#include <thread>

#include <unistd.h>

#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include "gradflow/data_parallel.h"
#include "gradflow/diagnosis.h"
#include "gradflow/monitor.h"
#include "gradflow/noise_scale.h"
#include "gradflow/run_record.h"
#include "gradflow/save_report.h"
#include "gradflow/trace_stream.h"
#include "torch_test_util.h"

namespace gradflow::test {
namespace {

constexpr int kWorld = 2, kShard = 8, kSteps = 5, kIn = 6, kOut = 3;

torch::nn::Sequential make_model(std::uint64_t seed) {
  torch::manual_seed(seed);
  torch::nn::Sequential m(torch::nn::Linear(kIn, 16), torch::nn::Tanh(), torch::nn::Linear(16, kOut));
  m->to(torch::kDouble);
  return m;
}

struct Data {
  std::vector<torch::Tensor> x, y;  // the global batch of each step
};

Data make_data() {
  torch::manual_seed(11);
  Data d;
  for (int s = 0; s < kSteps; ++s) {
    d.x.push_back(torch::randn({kWorld * kShard, kIn}, torch::kDouble));
    d.y.push_back(torch::randn({kWorld * kShard, kOut}, torch::kDouble));
  }
  return d;
}

// What a rank does to its shard before a step (to inject faults); the identity by default.
using Tamper = std::function<void(int rank, int step, torch::Tensor& x, torch::Tensor& y, torch::nn::Module& model)>;

struct Outcome {
  Trace trace;  // rank 0's
  std::vector<double> loss;
};

// What each rank does once it has trained (save a report, ...).
using Finish = std::function<void(int rank, DataParallel& dp, Monitor& mon)>;

// Trains one model per rank, rank 1 from another initialisation (the broadcast must fix it).
Outcome train_ranks(const Data& d, const Tamper& tamper = {}, int sync_check_every = 1, const Finish& finish = {},
                    const std::string& out = "") {
  c10d::TCPStoreOptions so;
  so.port = 0;
  so.isServer = true;
  so.waitWorkers = false;
  auto store = c10::make_intrusive<c10d::TCPStore>("127.0.0.1", so);
  std::vector<torch::nn::Sequential> models;
  for (int r = 0; r < kWorld; ++r) models.push_back(make_model(r == 0 ? 1 : 99));
  Outcome outcome;
  std::vector<std::string> errors(kWorld);
  std::vector<std::thread> threads;
  for (int r = 0; r < kWorld; ++r)
    threads.emplace_back([&, r] {
      try {
        DataParallelOptions o;
        o.rank = r;
        o.world_size = kWorld;
        o.master_port = store->getPort();
        o.agent_store = true;
        o.timeout = std::chrono::seconds(20);
        o.sync_check_every = sync_check_every;
        DataParallel dp(o);
        auto& model = models[r];
        dp.broadcast_parameters(*model);
        torch::optim::SGD opt(model->parameters(), 0.1);
        Monitor mon(*model, MonitorOptions{}.with_data_parallel(dp, kShard).with_out(out));
        for (int s = 0; s < kSteps; ++s) {
          torch::Tensor x = d.x[s].narrow(0, r * kShard, kShard).clone(), y = d.y[s].narrow(0, r * kShard, kShard).clone();
          if (tamper) tamper(r, s, x, y, *model);
          opt.zero_grad();
          auto loss = torch::mse_loss(model->forward(x), y);
          mon.watch(loss);
          loss.backward();
          dp.average_gradients(*model);
          opt.step();
        }
        if (r == 0) outcome.trace = mon.trace();
        if (finish) finish(r, dp, mon);
      } catch (const std::exception& e) {
        errors[r] = e.what();
      }
    });
  for (auto& t : threads) t.join();
  for (int r = 0; r < kWorld; ++r) EXPECT_EQ(errors[r], "") << "rank " << r;
  for (const auto& st : outcome.trace.steps()) outcome.loss.push_back(st.loss.value_or(NAN));
  return outcome;
}

std::vector<Finding> findings_of(const Outcome& o) { return diagnose(o.trace, o.loss, global_grad_norms(o.trace), ModelTraits{}); }

const Finding* find_kind(const std::vector<Finding>& fs, FindingKind k) {
  for (const auto& f : fs)
    if (f.kind == k) return &f;
  return nullptr;
}

double rel(double a, double b) { return std::abs(a - b) / std::max(std::abs(b), 1e-300); }

// One process: per step, each shard's gradient alone, then the global batch's (applied).
struct Reference {
  std::vector<std::vector<std::vector<double>>> local;  // [step][rank][param] norms
  std::vector<std::vector<double>> global;               // [step][param]
  std::vector<double> loss;
  Trace trace;  // a one-process Monitor on the global batch
};

Reference one_process(const Data& d) {
  Reference ref;
  auto model = make_model(1), shadow = make_model(1);
  torch::optim::SGD opt(model->parameters(), 0.1);
  Monitor mon(*model);
  const auto params = model->parameters(), shadow_params = shadow->parameters();
  for (int s = 0; s < kSteps; ++s) {
    std::vector<std::vector<double>> local;
    for (int r = 0; r < kWorld; ++r) {
      {
        torch::NoGradGuard ng;
        for (std::size_t i = 0; i < params.size(); ++i) shadow_params[i].copy_(params[i]);
      }
      shadow->zero_grad();
      torch::mse_loss(shadow->forward(d.x[s].narrow(0, r * kShard, kShard)), d.y[s].narrow(0, r * kShard, kShard)).backward();
      std::vector<double> norms;
      for (const auto& p : shadow_params) norms.push_back(independent(p.grad()).norm);
      local.push_back(norms);
    }
    ref.local.push_back(local);
    opt.zero_grad();
    auto loss = torch::mse_loss(model->forward(d.x[s]), d.y[s]);
    mon.watch(loss);
    loss.backward();
    std::vector<double> norms;
    for (const auto& p : params) norms.push_back(independent(p.grad()).norm);
    ref.global.push_back(norms);
    ref.loss.push_back(loss.item<double>());
    opt.step();
  }
  ref.trace = mon.trace();
  return ref;
}

class DataParallelTest : public TorchTest {};

TEST_F(DataParallelTest, RecordsTheAveragedGradientAndEachRanksLocalOne) {
  const Data d = make_data();
  const Reference ref = one_process(d);
  const Outcome dp = train_ranks(d);
  const Trace& t = dp.trace;
  ASSERT_EQ(t.steps().size(), static_cast<std::size_t>(kSteps));
  EXPECT_EQ(t.world_size, kWorld);
  EXPECT_EQ(t.batch_per_rank, kShard);
  const auto params = t.series_of_kind(SeriesKind::parameter);
  ASSERT_EQ(params.size(), 4u);
  for (int s = 0; s < kSteps; ++s) {
    const StepRecord& st = t.steps()[s];
    EXPECT_LE(rel(*st.loss, ref.loss[s]), 1e-12) << "step " << s;
    for (std::size_t i = 0; i < params.size(); ++i) {
      const Record* r = st.find(params[i]);
      ASSERT_NE(r, nullptr);
      EXPECT_LE(rel(r->grad.norm(), ref.global[s][i]), 1e-12) << t.series()[params[i]].name << " step " << s;
      ASSERT_EQ(r->ranks.size(), static_cast<std::size_t>(kWorld));
      for (int k = 0; k < kWorld; ++k)
        EXPECT_LE(rel(r->ranks[k].norm(), ref.local[s][k][i]), 1e-12) << "rank " << k << " step " << s;
    }
    // Layer outputs: the gradient of the averaged loss equals the one-process dL/dh.
    for (int a : t.series_of_kind(SeriesKind::activation)) {
      const int same = ref.trace.find(t.series()[a].name);
      ASSERT_GE(same, 0);
      EXPECT_LE(rel(st.find(a)->grad.norm(), ref.trace.steps()[s].find(same)->grad.norm()), 1e-12);
      EXPECT_EQ(st.find(a)->grad.numel, ref.trace.steps()[s].find(same)->grad.numel);
    }
    ASSERT_EQ(st.rank_checksums.size(), static_cast<std::size_t>(kWorld));
    EXPECT_EQ(st.rank_checksums[0], st.rank_checksums[1]);
  }
  // The noise scale at the first step, from the one process's own shard and global gradients.
  double small = 0, big = 0;
  for (std::size_t i = 0; i < params.size(); ++i) {
    big += ref.global[0][i] * ref.global[0][i];
    for (int k = 0; k < kWorld; ++k) small += ref.local[0][k][i] * ref.local[0][k][i] / kWorld;
  }
  const NoiseEstimate e = estimate_noise(small, big, kShard, kShard * kWorld);
  const auto scales = noise_scales(t);
  ASSERT_FALSE(scales.empty());
  EXPECT_EQ(scales[0].name, kWholeModel);
  EXPECT_LE(rel(scales[0].b_simple[0], e.trace_sigma / e.true_grad_sq), 1e-9);
  // A healthy run: no rank finding.
  const auto fs = findings_of(dp);
  for (auto k : {FindingKind::rank_non_finite, FindingKind::ranks_out_of_sync, FindingKind::rank_outlier})
    EXPECT_EQ(find_kind(fs, k), nullptr) << to_string(k);
}

TEST_F(DataParallelTest, ANonFiniteGradientOnOneRankIsNamedWithItsRankLayerAndStep) {
  const Data d = make_data();
  const Outcome o = train_ranks(d, [](int r, int s, torch::Tensor& x, torch::Tensor&, torch::nn::Module&) {
    if (r == 1 && s == 2) x[0][0] = std::numeric_limits<double>::quiet_NaN();
  });
  EXPECT_EQ(o.trace.steps().size(), static_cast<std::size_t>(kSteps));  // the run went on
  const auto fs = findings_of(o);
  const Finding* f = find_kind(fs, FindingKind::rank_non_finite);
  ASSERT_NE(f, nullptr);
  EXPECT_NE(f->where.find("at step 2 on rank 1"), std::string::npos) << f->where;
  // The tensor it names is one whose local gradient on rank 1, and only there, held the NaN.
  const std::string name = f->where.substr(0, f->where.find(" at step"));
  const Record* r = o.trace.steps()[2].find(o.trace.find(name));
  ASSERT_NE(r, nullptr) << name;
  EXPECT_GT(r->ranks[1].nonfinite, 0);
  EXPECT_EQ(r->ranks[0].nonfinite, 0);
  for (int s = 0; s < 2; ++s)
    for (const auto& rec : o.trace.steps()[s].records) EXPECT_EQ(rec.grad.nonfinite, 0);
}

TEST_F(DataParallelTest, ParametersThatDriftApartAreOutOfSync) {
  const Data d = make_data();
  const Outcome o = train_ranks(d, [](int r, int s, torch::Tensor&, torch::Tensor&, torch::nn::Module& m) {
    torch::NoGradGuard ng;
    if (r == 1 && s == 3) m.parameters()[0].add_(1e-3);
  });
  const auto fs = findings_of(o);
  const Finding* f = find_kind(fs, FindingKind::ranks_out_of_sync);
  ASSERT_NE(f, nullptr);
  EXPECT_EQ(f->where, "step 3");
  EXPECT_NE(f->message.find("rank 1"), std::string::npos);
}

TEST_F(DataParallelTest, ARankWhoseShardIsOffIsAnOutlier) {
  const Data d = make_data();
  const Outcome o = train_ranks(d, [](int r, int, torch::Tensor&, torch::Tensor& y, torch::nn::Module&) {
    if (r == 1) y.mul_(100);
  });
  const auto fs = findings_of(o);
  const Finding* f = find_kind(fs, FindingKind::rank_outlier);
  ASSERT_NE(f, nullptr);
  EXPECT_NE(f->where.find("rank 1"), std::string::npos);
  EXPECT_EQ(find_kind(fs, FindingKind::rank_non_finite), nullptr);
}

// One writer per run: save_report on every rank writes one folder, by rank 0 alone, and every
// rank returns rank 0's findings; only rank 0 streams.
TEST_F(DataParallelTest, SaveReportOnEveryRankWritesOneFolderAndReturnsTheSameFindings) {
  const Data d = make_data();
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("gradflow-dp-report-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  std::vector<std::vector<Finding>> findings(kWorld);
  std::vector<std::string> stream_dirs(kWorld);
  std::promise<void> rank1_waits;
  std::shared_future<void> go = rank1_waits.get_future().share();
  bool folder_before_rank0 = true;
  // Rank 1 goes first and must have written nothing when it starts waiting for rank 0.
  const Finish finish = [&](int rank, DataParallel& dp, Monitor& mon) {
    stream_dirs[rank] = mon.stream_dir();
    SaveOptions o;
    if (rank == 1) {
      o.share_findings = [&](const std::string& key, const std::string& text) {
        folder_before_rank0 = fs::exists(dir / "report.html") || fs::exists(dir / "run.json");
        rank1_waits.set_value();
        return dp.share_from_rank0(key, text);
      };
    } else {
      go.wait();
    }
    findings[rank] = save_report(mon, dir.string(), o);
  };
  // The findings need something to find: rank 1's shard is off by a factor of 100.
  train_ranks(d, [](int rank, int, torch::Tensor&, torch::Tensor& y, torch::nn::Module&) { if (rank == 1) y.mul_(100); },
              1, finish, dir.string());
  EXPECT_FALSE(folder_before_rank0);
  EXPECT_EQ(stream_dirs[0], dir.string());
  EXPECT_EQ(stream_dirs[1], "");
  EXPECT_TRUE(fs::exists(dir / "report.html"));
  EXPECT_TRUE(fs::exists(dir / kStreamFile));
  ASSERT_FALSE(findings[0].empty());
  ASSERT_EQ(findings[1].size(), findings[0].size());
  for (std::size_t i = 0; i < findings[0].size(); ++i) {
    EXPECT_EQ(findings[1][i].kind, findings[0][i].kind);
    EXPECT_EQ(findings[1][i].where, findings[0][i].where);
    EXPECT_EQ(findings[1][i].message, findings[0][i].message);
  }
  const StreamedRun streamed = read_trace_stream(dir.string());
  EXPECT_TRUE(streamed.finished);
  EXPECT_EQ(streamed.trace.steps().size(), static_cast<std::size_t>(kSteps));
  fs::remove_all(dir);
}

TEST(DataParallelEnv, AskingForNcclWhereLibTorchHasNoneIsAUsageError) {
#ifdef USE_C10D_NCCL
  GTEST_SKIP() << "this LibTorch has NCCL";
#else
  DataParallelOptions o;
  o.backend = CommBackend::nccl;
  EXPECT_THROW(DataParallel{o}, UsageError);
#endif
}

TEST(DataParallelEnv, ReadsTheLaunchersVariablesAndNamesAMalformedOne) {
  ::setenv("RANK", "1", 1);
  ::setenv("WORLD_SIZE", "4", 1);
  ::setenv("MASTER_ADDR", "10.0.0.2", 1);
  ::setenv("MASTER_PORT", "29501", 1);
  ::setenv("LOCAL_RANK", "1", 1);
  auto o = data_parallel_from_env();
  ASSERT_TRUE(o);
  EXPECT_EQ(o->rank, 1);
  EXPECT_EQ(o->world_size, 4);
  EXPECT_EQ(o->master_addr, "10.0.0.2");
  EXPECT_EQ(o->master_port, 29501);
  EXPECT_EQ(o->local_rank, 1);
  EXPECT_FALSE(o->agent_store);
  ::setenv("RANK", "4", 1);
  EXPECT_THROW(data_parallel_from_env(), UsageError);
  ::unsetenv("WORLD_SIZE");
  EXPECT_THROW(data_parallel_from_env(), UsageError);
  ::unsetenv("RANK");
  ::unsetenv("MASTER_ADDR");
  ::unsetenv("MASTER_PORT");
  ::unsetenv("LOCAL_RANK");
  EXPECT_FALSE(data_parallel_from_env());
}

}  // namespace
}  // namespace gradflow::test
