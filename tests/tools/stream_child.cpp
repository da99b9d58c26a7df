// A C++ training program with a Monitor streaming to a folder, for the tests of what survives a
// program's death: `stream_child OUT STEPS [KILL_AT [backward|start] [updates]]` trains STEPS
// steps, or kills itself with SIGKILL at step KILL_AT — in its backward (a program hook) or at its
// start, after the previous step's optimizer step — leaving whatever the stream holds. `updates`
// also records each update's norm.
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
  const bool in_backward = argc <= 4 || std::string(argv[4]) == "backward";
  const bool updates = argc > 5 && std::string(argv[5]) == "updates";
  torch::manual_seed(7);
  torch::nn::Sequential model(torch::nn::Linear(6, 12), torch::nn::Tanh(), torch::nn::Linear(12, 12), torch::nn::Tanh(),
                              torch::nn::Linear(12, 3));
  torch::optim::SGD opt(model->parameters(), 0.1);
  int step = 0;
  model[0]->parameters()[0].register_hook([&](const torch::Tensor& g) {
    if (step == kill_at && in_backward) std::raise(SIGKILL);
    return g;
  });
  gradflow::Monitor monitor(*model, gradflow::MonitorOptions{}.with_out(out).with_update_norms(updates));
  for (; step < steps; ++step) {
    if (step == kill_at && !in_backward) std::raise(SIGKILL);
    const auto x = torch::randn({32, 6}), y = torch::randn({32, 3});
    opt.zero_grad();
    auto loss = torch::mse_loss(model->forward(x), y);
    monitor.watch(loss);
    loss.backward();
    opt.step();
  }
  return 0;
}
