#pragma once
#include <string>

#include <CLI/CLI.hpp>

#include "gradflow/inspect.h"

namespace gradflow::cli {

struct InspectCliOptions {
  std::string model;
  std::string input_shape;
  std::string loss = "sum";
  std::string out = "gradflow-out/inspect";
  std::string fail_on;
  bool force = false;
  InspectOptions inspect;
};

// `gradflow inspect MODEL.pt`: does the gradient reach the first layers of a TorchScript model?
void setup_inspect(CLI::App& app);
int run_inspect(const InspectCliOptions& options);

}  // namespace gradflow::cli
