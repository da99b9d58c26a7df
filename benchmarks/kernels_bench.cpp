// The statistics kernel against separate ATen reductions, the graph walk, and the per-step
// host transfer of the device path. Sizes: the 50x256 MLP's 4.8 M gradient floats in one tensor,
// and its 150 parameter tensors.
#include <algorithm>
#include <chrono>
#include <filesystem>

#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include "monitor/graph_walk.h"
#include "gradflow/monitor.h"
#include "gradflow/tensor_stats.h"
#include "gradflow/threads.h"
#include "stats/tensor_stats_torch.h"

namespace {

constexpr std::int64_t kFloats = 4800000;

void BM_FusedPass(benchmark::State& state) {
  auto g = torch::randn({kFloats}) * 1e-3;
  for (auto _ : state) benchmark::DoNotOptimize(gradflow::compute_stats(g.data_ptr<float>(), kFloats));
  state.SetBytesProcessed(state.iterations() * kFloats * 4);
  state.SetLabel(gradflow::stats_kernel_isa());
}
BENCHMARK(BM_FusedPass)->Unit(benchmark::kMillisecond);

void BM_FusedPassWithWeight(benchmark::State& state) {
  auto g = torch::randn({kFloats}) * 1e-3;
  auto w = torch::randn({kFloats});
  double wsq = 0;
  for (auto _ : state)
    benchmark::DoNotOptimize(gradflow::compute_stats_with_weight(g.data_ptr<float>(), w.data_ptr<float>(), kFloats, wsq));
  state.SetBytesProcessed(state.iterations() * kFloats * 8);
}
BENCHMARK(BM_FusedPassWithWeight)->Unit(benchmark::kMillisecond);

// What a straightforward implementation would do: one ATen reduction per statistic.
void BM_SeparateAtenReductions(benchmark::State& state) {
  auto g = torch::randn({kFloats}) * 1e-3;
  for (auto _ : state) {
    auto d = g.to(torch::kDouble);
    benchmark::DoNotOptimize(d.norm().item<double>());
    benchmark::DoNotOptimize(d.abs().max().item<double>());
    benchmark::DoNotOptimize(d.mean().item<double>());
    benchmark::DoNotOptimize(d.std().item<double>());
    benchmark::DoNotOptimize(g.eq(0).sum().item<std::int64_t>());
    benchmark::DoNotOptimize(torch::isfinite(g).logical_not().sum().item<std::int64_t>());
  }
  state.SetBytesProcessed(state.iterations() * kFloats * 4);
}
BENCHMARK(BM_SeparateAtenReductions)->Unit(benchmark::kMillisecond);

// The device path (ATen ops, here on the CPU) for 150 tensors and its one transfer per step.
void BM_AtenPathAndOneTransfer(benchmark::State& state) {
  std::vector<torch::Tensor> grads;
  for (int i = 0; i < 150; ++i) grads.push_back(torch::randn({kFloats / 150}));
  for (auto _ : state) {
    std::vector<torch::Tensor> pending;
    for (const auto& g : grads) pending.push_back(gradflow::detail::aten_stats(g));
    benchmark::DoNotOptimize(torch::cat(pending).to(torch::kCPU).contiguous().data_ptr<double>());
  }
}
BENCHMARK(BM_AtenPathAndOneTransfer)->Unit(benchmark::kMillisecond);

// Forward statistics of one hidden state (a tap with an activation): 128 x 256 ReLU outputs.
void BM_ActivationStats(benchmark::State& state) {
  auto h = torch::relu(torch::randn({128, 256}));
  for (auto _ : state) benchmark::DoNotOptimize(gradflow::detail::host_activation_stats(h, gradflow::Activation::relu, 0.1));
}
BENCHMARK(BM_ActivationStats)->Unit(benchmark::kMicrosecond);

void BM_ActivationStatsAten(benchmark::State& state) {
  auto h = torch::relu(torch::randn({128, 256}));
  for (auto _ : state) benchmark::DoNotOptimize(gradflow::detail::device_activation_stats(h, gradflow::Activation::relu, {}, 0.1));
}
BENCHMARK(BM_ActivationStatsAten)->Unit(benchmark::kMicrosecond);

torch::nn::Sequential relu_mlp(int layers, int width) {
  torch::nn::Sequential net;
  net->push_back(torch::nn::Linear(32, width));
  for (int i = 0; i < layers - 2; ++i) {
    net->push_back(torch::nn::ReLU());
    net->push_back(torch::nn::Linear(width, width));
  }
  net->push_back(torch::nn::ReLU());
  net->push_back(torch::nn::Linear(width, 10));
  return net;
}

// The parameter lookup the Monitor builds at attach, for the graph-walk cases.
gradflow::detail::ParamLookup lookup_of(torch::nn::Module& m) {
  gradflow::detail::ParamLookup lookup;
  int module = 0;
  for (const auto& child : m.children()) {
    for (const auto& p : child->parameters()) {
      lookup.index.emplace(p.unsafeGetTensorImpl(), static_cast<int>(lookup.module.size()));
      lookup.module.push_back(module);
    }
    ++module;
  }
  return lookup;
}

// The full walk against the cache's check that a graph has the shape of the last one.
void BM_GraphWalkFresh(benchmark::State& state) {
  auto net = relu_mlp(50, 256);
  const auto lookup = lookup_of(*net);
  auto loss = net->forward(torch::randn({8, 32})).sum();
  for (auto _ : state) benchmark::DoNotOptimize(gradflow::detail::find_layer_outputs(loss.grad_fn().get(), lookup));
}
BENCHMARK(BM_GraphWalkFresh)->Unit(benchmark::kMicrosecond);

void BM_GraphWalkCached(benchmark::State& state) {
  auto net = relu_mlp(50, 256);
  const auto lookup = lookup_of(*net);
  auto loss = net->forward(torch::randn({8, 32})).sum();
  gradflow::detail::LayerOutputCache cache;
  for (auto _ : state) benchmark::DoNotOptimize(cache.find(loss.grad_fn().get(), lookup).size());
}
BENCHMARK(BM_GraphWalkCached)->Unit(benchmark::kMicrosecond);

// Seconds of one forward and backward of `net` on `x`, watched by `mon` when it is given.
double timed_step(torch::nn::Sequential& net, const torch::Tensor& x, gradflow::Monitor* mon) {
  const auto t0 = std::chrono::steady_clock::now();
  net->zero_grad();
  auto loss = net->forward(x).square().mean();
  if (mon) mon->watch(loss);
  loss.backward();
  loss = torch::Tensor();  // the graph is freed inside the timing, as in a training loop
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

double median_of(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

// The small MLP (10 layers of 64, batch 128: 20 parameter tensors, 10 layer outputs), one step
// of a bare copy and one of a watched copy in turn, so that the machine's drift cancels in each
// pair's difference. Arg: 1 the Monitor attached but not recording (hook dispatch, the lock,
// the step's bookkeeping); 2 parameters recorded; 3 parameters and layer outputs recorded; 4 the
// same, each step also appended to MonitorOptions::out.
// The time shown is the watched step; counters: the bare step, and the median difference in
// all and per recorded tensor.
void BM_SmallMlpOverhead(benchmark::State& state) {
  auto bare = relu_mlp(10, 64), watched = relu_mlp(10, 64);
  const auto x = torch::randn({128, 32});
  const int mode = static_cast<int>(state.range(0));
  gradflow::MonitorOptions o;
  o.activations = mode >= 3;
  o.every = mode == 1 ? 1000000000 : 1;
  const std::string out = (std::filesystem::temp_directory_path() / "gradflow-kernels-bench-stream").string();
  if (mode == 4) o.with_out(out, /*replace=*/true);
  auto mon = std::make_unique<gradflow::Monitor>(*watched, o);
  std::vector<double> bare_s, diff_s;
  for (auto _ : state) {
    const double tb = timed_step(bare, x, nullptr);
    const double tw = timed_step(watched, x, mon.get());
    bare_s.push_back(tb);
    diff_s.push_back(tw - tb);
    state.SetIterationTime(tw);
    // A long run's trace grows; start a fresh one now and then, outside the timing.
    if (bare_s.size() % 2000 == 0) mon = std::make_unique<gradflow::Monitor>(*watched, o);
  }
  mon.reset();
  std::filesystem::remove_all(out);
  const double tensors = mode >= 3 ? 30 : 20;
  state.counters["bare_us"] = 1e6 * median_of(bare_s);
  state.counters["overhead_us"] = 1e6 * median_of(diff_s);
  state.counters["per_tensor_us"] = 1e6 * median_of(diff_s) / tensors;
  state.SetLabel(mode == 1   ? "attached, not recording"
                 : mode == 2 ? "parameters"
                 : mode == 3 ? "parameters + layer outputs"
                             : "parameters + layer outputs, streamed");
}
BENCHMARK(BM_SmallMlpOverhead)->DenseRange(1, 4)->UseManualTime()->Unit(benchmark::kMicrosecond);

// The statistics pass alone over one of that MLP's 64 x 64 weight gradients, with the weight.
void BM_FusedPassSmall(benchmark::State& state) {
  auto g = torch::randn({64 * 64}) * 1e-3;
  auto w = torch::randn({64 * 64});
  double wsq = 0;
  for (auto _ : state)
    benchmark::DoNotOptimize(gradflow::compute_stats_with_weight(g.data_ptr<float>(), w.data_ptr<float>(), 64 * 64, wsq));
}
BENCHMARK(BM_FusedPassSmall)->Unit(benchmark::kMicrosecond);

}  // namespace

int main(int argc, char** argv) {
  gradflow::set_threads(1, 1);
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
