#pragma once
// Runs the gradflow binary as a child process and captures what it printed.

#include <string>
#include <vector>

namespace gradflow::test {

struct CliResult {
  int exit_code = -1;  // the process's exit status; 128 + n if killed by signal n
  std::string out, err;
};

// Runs gradflow with `args`. If `signal_after_ms` > 0, sends `signal` once that much time has
// passed (or once `signal_when_file` exists, if given).
CliResult run_cli(const std::vector<std::string>& args, int signal_after_ms = 0, int signal = 0,
                  const std::string& signal_when_file = "");

// A gradflow process left running: start it, look at it, then finish() it.
struct Spawned {
  int pid = -1;
  std::string dir;  // its stdout and stderr files
};
// Starts gradflow with `args` and `env` ("NAME=value") added to this process's environment.
Spawned spawn_cli(const std::vector<std::string>& args, const std::vector<std::string>& env = {});
// The same for another program.
Spawned spawn_program(const std::string& program, const std::vector<std::string>& args,
                      const std::vector<std::string>& env = {});
// Runs `program` to its end, at most `limit_ms` (then kills it and reports exit code -1).
CliResult run_program(const std::string& program, const std::vector<std::string>& args, int limit_ms);
// Waits for it, at most `limit_ms` (then kills it and reports exit code -1).
CliResult finish(const Spawned& s, int limit_ms);
// The children of a process, and the value of one environment variable of a process ("" if none).
std::vector<int> child_pids(int pid);
std::string env_of(int pid, const std::string& name);
bool process_alive(int pid);

// A fresh empty folder under the system temp dir.
std::string temp_dir(const std::string& name);
std::string slurp(const std::string& path);

}  // namespace gradflow::test
