// The C++ side of the Python module's findings test: trains a TorchScript model with the C++
// Monitor in the loop the Python test runs (the model's buffers x and y, mean squared error,
// plain SGD written out) and saves the report.
//   gradflow_reference_run MODEL.pt STEPS LR OUT_DIR
#include <cstdio>
#include <string>

#include <torch/script.h>
#include <torch/torch.h>

#include "gradflow/save_report.h"

int main(int argc, char** argv) {
  if (argc != 5) {
    std::fprintf(stderr, "usage: gradflow_reference_run MODEL.pt STEPS LR OUT_DIR\n");
    return 2;
  }
  try {
    // The interpreter runs the module's ops one by one, as eager Python does: no fused graphs.
    torch::jit::setGraphExecutorOptimize(false);
    auto model = torch::jit::load(argv[1]);
    model.train();
    std::vector<std::pair<std::string, at::Tensor>> named;
    std::vector<at::Tensor> params;
    for (const auto& p : model.named_parameters(/*recurse=*/true)) {
      named.emplace_back(p.name, p.value);
      params.push_back(p.value);
    }
    gradflow::Monitor monitor;
    monitor.attach(named);
    const at::Tensor x = model.attr("x").toTensor(), y = model.attr("y").toTensor();
    const int steps = std::stoi(argv[2]);
    const double lr = std::stod(argv[3]);
    for (int i = 0; i < steps; ++i) {
      const at::Tensor loss = (model.forward({x}).toTensor() - y).pow(2).mean();
      monitor.watch(loss);
      loss.backward();
      torch::NoGradGuard no_grad;
      for (auto& p : params) {
        p.sub_(lr * p.grad());
        p.mutable_grad() = at::Tensor();
      }
    }
    gradflow::SaveOptions o;
    o.label = "cpp";
    gradflow::save_report(monitor, argv[4], o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "gradflow_reference_run: %s\n", e.what());
    return 1;
  }
  return 0;
}
