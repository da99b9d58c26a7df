#pragma once
#include <string>

#include <CLI/CLI.hpp>

#include "models/train.h"
#include "ranks.h"

namespace gradflow::cli {

// Trainer options shared by run, compare and flow.
struct TrainFlags {
  models::TrainOptions train;
  bool force = false;
};
void add_train_flags(CLI::App& sub, TrainFlags& flags, bool with_every = true);

struct RunOptions {
  std::string spec;
  std::string out = "gradflow-out/run";
  std::string fail_on;
  TrainFlags flags;
  RankFlags placement;
};

// `gradflow run SPEC ...`: train one built-in model with the Monitor attached.
void setup_run(CLI::App& app);
int run_run(const RunOptions& options);

// Writes run.json and trace.csv into `dir` (atomically).
void write_run_dir(const RunRecord& run, const std::string& dir);
// Parses --fail-on "vanishing,non_finite" (or "any").
std::vector<FindingKind> parse_fail_on(const std::string& text);

}  // namespace gradflow::cli
