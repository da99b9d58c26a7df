#pragma once
// Where a command runs in a data-parallel training: alone, as the launcher of local ranks
// (--ranks N), or as one rank under a launcher (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT).

#include <memory>
#include <optional>

#include <CLI/CLI.hpp>

#include "gradflow/data_parallel.h"

namespace gradflow::cli {

struct RankFlags {
  int ranks = 1;        // data-parallel processes started on this machine
  double timeout = 60;  // seconds a collective waits for the other ranks
};
// `ranks_help` says what the ranks run (training of a built-in model, or a program).
void add_rank_flags(CLI::App& sub, RankFlags& flags,
                    const char* ranks_help = "Train data-parallel on N local processes (--batch is split into N shards)");

struct Placement {
  std::optional<DataParallelOptions> group;  // set in a rank
  bool launcher = false;                     // start the ranks, train nothing here
  int world = 1;
  bool writer() const { return !group || group->rank == 0; }
};

// Checks --ranks and --timeout (UsageError naming the flag).
void validate(const RankFlags& flags);
// Reads the launcher's variables and the flags; throws UsageError when they disagree or the
// global batch does not split into equal shards.
Placement place(const RankFlags& flags, std::int64_t batch);
// The launcher: runs `command` (empty: this command again) once per rank and returns rank 0's
// exit code.
int launch(const RankFlags& flags, const std::vector<std::string>& command = {});
// The group of a rank (null when alone).
std::unique_ptr<DataParallel> join(const Placement& placement);
// A rank's exit code when it writes nothing (not rank 0): failure when it stopped for
// `stop_reason`, the signal's code when interrupted.
int silent_exit_code(const std::string& stop_reason, bool interrupted);

}  // namespace gradflow::cli
