// The statistics kernel against separate ATen reductions, the graph walk, and the per-step
// host transfer of the device path. Sizes: the 50x256 MLP's 4.8 M gradient floats in one tensor,
// and its 150 parameter tensors.
#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include "gradflow/monitor.h"
#include "gradflow/tensor_stats.h"
#include "gradflow/threads.h"
#include "tensor_stats_torch.h"

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
  for (auto _ : state) benchmark::DoNotOptimize(gradflow::detail::aten_activation_stats(h, gradflow::Activation::relu, {}, 0.1));
}
BENCHMARK(BM_ActivationStats)->Unit(benchmark::kMicrosecond);

void BM_ActivationStatsAten(benchmark::State& state) {
  auto h = torch::relu(torch::randn({128, 256}));
  for (auto _ : state) benchmark::DoNotOptimize(gradflow::detail::device_activation_stats(h, gradflow::Activation::relu, {}, 0.1));
}
BENCHMARK(BM_ActivationStatsAten)->Unit(benchmark::kMicrosecond);

// Walking the autograd graph of a 50-layer MLP and hooking each layer's output node.
void BM_GraphWalk(benchmark::State& state) {
  torch::nn::Sequential net;
  net->push_back(torch::nn::Linear(32, 256));
  for (int i = 0; i < 48; ++i) {
    net->push_back(torch::nn::ReLU());
    net->push_back(torch::nn::Linear(256, 256));
  }
  net->push_back(torch::nn::Linear(256, 10));
  gradflow::Monitor mon(*net, gradflow::MonitorOptions{}.with_auto_step(false));
  auto x = torch::randn({8, 32});
  for (auto _ : state) {
    state.PauseTiming();
    auto loss = net->forward(x).sum();
    state.ResumeTiming();
    mon.watch(loss);
  }
}
BENCHMARK(BM_GraphWalk)->Unit(benchmark::kMicrosecond);

}  // namespace

int main(int argc, char** argv) {
  gradflow::set_threads(1, 1);
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
