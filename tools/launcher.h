#pragma once
// Runs a command once per rank on this machine, over a loopback store the launcher holds, as
// torchrun would: `gradflow run --ranks N` runs itself again, `gradflow launch` a user program.

#include <chrono>
#include <string>
#include <vector>

namespace gradflow::cli {

// The command line main() was given, for the ranks to run again.
void set_command_line(int argc, char** argv);

struct LaunchOptions {
  int ranks = 2;
  // The program and its arguments; empty: this very command again.
  std::vector<std::string> command;
  std::chrono::milliseconds timeout{60000};  // the ranks' collective timeout
};

// Starts the ranks, forwards SIGINT/SIGTERM to them, and waits; a rank that fails gives the
// others its timeout to stop (rank 0 writes what was recorded) before they are killed. Returns
// rank 0's exit code, or 1 when rank 0 itself was lost. No rank outlives it.
int launch_ranks(const LaunchOptions& options);

}  // namespace gradflow::cli
