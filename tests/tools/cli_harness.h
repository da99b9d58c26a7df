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

// A fresh empty folder under the system temp dir.
std::string temp_dir(const std::string& name);
std::string slurp(const std::string& path);

}  // namespace gradflow::test
