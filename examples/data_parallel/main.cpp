// Data-parallel training of a user model: one process per rank, started by a launcher that sets
// RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT (torchrun, `gradflow launch --ranks N -- ...`).
// Each rank trains on its own shard; the Monitor records each rank's local gradient and the
// averaged one, and rank 0 writes the report.
#include <cstdio>
#include <string>

#include <torch/torch.h>

#include <gradflow/gradflow.h>

int main(int argc, char** argv) {
  const std::string out = argc > 1 ? argv[1] : "data-parallel-report";
  const auto group = gradflow::data_parallel_from_env();
  if (!group) {
    std::fprintf(stderr, "start one process per rank: gradflow launch --ranks 2 -- %s %s\n", argv[0], out.c_str());
    return 2;
  }
  gradflow::DataParallel dp(*group);
  torch::manual_seed(0);
  torch::nn::Sequential net(torch::nn::Linear(20, 64), torch::nn::ReLU(), torch::nn::Linear(64, 64), torch::nn::ReLU(),
                            torch::nn::Linear(64, 5));
  const auto teacher = torch::randn({20, 5});
  dp.broadcast_parameters(*net);
  torch::manual_seed(1000 + dp.rank());  // each rank draws its own examples
  const std::int64_t batch = 32;         // per rank
  torch::optim::Adam opt(net->parameters(), 1e-3);
  gradflow::Monitor monitor(*net, gradflow::MonitorOptions{}.with_data_parallel(dp, batch));
  for (int step = 0; step < 300; ++step) {
    auto x = torch::randn({batch, 20});
    auto loss = torch::nn::functional::cross_entropy(net->forward(x), x.mm(teacher).argmax(1));
    monitor.watch(loss);
    opt.zero_grad();
    loss.backward();
    dp.average_gradients(*net);
    opt.step();
  }
  if (dp.rank() != 0) return 0;
  const auto scales = gradflow::noise_scales(monitor.trace());
  std::printf("rank 0 of %d: %zu recorded steps; gradient noise scale B_simple ~ %.3g examples (global batch %lld)\n",
              dp.world_size(), monitor.trace().steps().size(), scales.empty() ? 0.0 : scales.front().last(),
              static_cast<long long>(batch * dp.world_size()));
  gradflow::SaveOptions o;
  o.label = "data-parallel MLP";
  o.traits.activation = gradflow::Activation::relu;
  o.force = true;
  const auto findings = gradflow::save_report(monitor, out, o);
  if (findings.empty()) std::printf("no findings\n");
  for (const auto& f : findings)
    std::printf("[%s] %s (%s): %s\n", gradflow::to_string(f.severity), gradflow::to_string(f.kind), f.where.c_str(), f.message.c_str());
  gradflow::require_healthy(findings);
  return 0;
}
