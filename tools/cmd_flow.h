#pragma once
#include <string>

#include <CLI/CLI.hpp>

#include "models/flow_run.h"

namespace gradflow::cli {

struct FlowCliOptions {
  std::string spec;
  std::string lrs = "0.05,0.2,1,8";
  std::string out = "gradflow-out/flow";
  bool force = false;
  models::FlowRunOptions flow;
};

// `gradflow flow SPEC`: gradient descent against the gradient-flow ODE it discretises.
void setup_flow(CLI::App& app);
int run_flow_cmd(const FlowCliOptions& options);
// Parses "0.01,0.05,0.2".
std::vector<double> parse_lrs(const std::string& text);

}  // namespace gradflow::cli
