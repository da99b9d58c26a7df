#pragma once
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "cmd_run.h"

namespace gradflow::cli {

struct CompareOptions {
  std::vector<std::string> specs;
  std::string suite = "default";
  std::string sweep;  // "depth=5,10,20", "seq-len=25,50" or "width=64,128,256"
  std::string out = "gradflow-out/compare";
  std::string fail_on;
  std::string flow;   // a spec: add a gradient-flow section for it
  bool steps_given = false;
  bool seq_len_given = false;
  std::int64_t seeds = 1;  // --sweep width: figures averaged over this many initialisations
  bool quiet = false;
  TrainFlags flags;
  RankFlags placement;
};

// `gradflow compare`: run several architectures on the same task and seed, write the report.
void setup_compare(CLI::App& app);
int run_compare(const CompareOptions& options);

// One entry of a comparison: a spec and what it changes in the trainer.
struct SuiteEntry {
  std::string spec;
  double clip_norm = 0;
  std::int64_t steps = -1;    // -1: the suite's default for the family
  std::int64_t seq_len = -1;
  std::int64_t every = -1;
};
// The built-in suites: default, quick, mlp, rnn.
std::vector<SuiteEntry> suite(const std::string& name);
std::vector<std::string> suite_names();

}  // namespace gradflow::cli
