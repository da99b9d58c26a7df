#pragma once
#include <string>

#include <CLI/CLI.hpp>

namespace gradflow::cli {

struct BenchOptions {
  bool quick = false;
  std::string json;
  std::string models = "mlp,mlp-small,cnn,lstm";
  int reps = 0;  // 0: default for --quick or not
};

// `gradflow bench`: the Monitor's cost against a bare LibTorch training step, interleaved A/B.
void setup_bench(CLI::App& app);
int run_bench(const BenchOptions& options);

}  // namespace gradflow::cli
