#include "cmd_launch.h"

#include <memory>

#include "common.h"
#include "gradflow/error.h"
#include "launcher.h"
#include "ranks.h"

namespace gradflow::cli {

namespace {

struct LaunchFlags {
  RankFlags placement{2, 60};
  std::vector<std::string> command;
};

int run_launch(const LaunchFlags& f) {
  if (f.placement.ranks < 1 || f.placement.ranks > 256)
    throw UsageError("--ranks must be between 1 and 256 (got " + std::to_string(f.placement.ranks) + ")");
  if (!(f.placement.timeout > 0 && f.placement.timeout <= 86400))
    throw UsageError("--timeout must be more than 0 and at most 86400 seconds");
  if (f.command.empty()) throw UsageError("give the program to run after --, e.g. gradflow launch --ranks 2 -- ./train");
  LaunchOptions lo;
  lo.ranks = f.placement.ranks;
  lo.timeout = std::chrono::milliseconds(static_cast<std::int64_t>(f.placement.timeout * 1000));
  lo.command = f.command;
  return launch_ranks(lo);
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
