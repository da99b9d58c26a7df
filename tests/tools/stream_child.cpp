// A C++ training program with a Monitor streaming to a folder, for the tests of what survives a
// program's death: `stream_child OUT STEPS [KILL_AT]` trains STEPS steps, or kills itself with
// SIGKILL in the backward of step KILL_AT (a program hook), leaving whatever the stream holds.
#include <csignal>
#include <cstdlib>
#include <string>

#include <torch/torch.h>

#include "gradflow/monitor.h"

int main(int argc, char** argv) {
  if (argc < 3) return 2;
  const std::string out = argv[1];
  const int steps = std::atoi(argv[2]);
  const int kill_at = argc > 3 ? std::atoi(argv[3]) : -1;
  torch::manual_seed(7);
  torch::nn::Sequential model(torch::nn::Linear(6, 12), torch::nn::Tanh(), torch::nn::Linear(12, 12), torch::nn::Tanh(),
                              torch::nn::Linear(12, 3));
  torch::optim::SGD opt(model->parameters(), 0.1);
  int step = 0;
  model[0]->parameters()[0].register_hook([&](const torch::Tensor& g) {
    if (step == kill_at) std::raise(SIGKILL);
    return g;
  });
  gradflow::Monitor monitor(*model, gradflow::MonitorOptions{}.with_out(out));
  for (; step < steps; ++step) {
    const auto x = torch::randn({32, 6}), y = torch::randn({32, 3});
    opt.zero_grad();
    auto loss = torch::mse_loss(model->forward(x), y);
    monitor.watch(loss);
    loss.backward();
    opt.step();
  }
  return 0;
}
