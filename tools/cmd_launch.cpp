#include "cmd_launch.h"

#include <memory>

#include "common.h"
#include "gradflow/error.h"
#include "ranks.h"

namespace gradflow::cli {

namespace {

struct LaunchFlags {
  RankFlags placement{2, 60};
  std::vector<std::string> command;
};

int run_launch(const LaunchFlags& f) {
  validate(f.placement);
  if (f.command.empty()) throw UsageError("give the program to run after --, e.g. gradflow launch --ranks 2 -- ./train");
  return launch(f.placement, f.command);
}

}  // namespace

void setup_launch(CLI::App& app) {
  auto f = std::make_shared<LaunchFlags>();
  auto* sub = app.add_subcommand("launch", "Run a data-parallel program once per rank on this machine (RANK, WORLD_SIZE, "
                                           "MASTER_ADDR, MASTER_PORT set as torchrun sets them)");
  add_rank_flags(*sub, f->placement, "Processes to start, ranks 0 to N-1");
  sub->add_option("command", f->command, "The program and its arguments, after --");
  sub->final_callback([f] { throw CLI::RuntimeError(run_launch(*f)); });
}

}  // namespace gradflow::cli
