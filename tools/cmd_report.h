#pragma once
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

namespace gradflow::cli {

struct ReportOptions {
  std::vector<std::string> inputs;
  std::string out = "gradflow-out/report";
  bool force = false;
};

// `gradflow report RUN_DIR...`: rebuild the comparison from saved runs, without re-running.
void setup_report(CLI::App& app);
int run_report(const ReportOptions& options);

}  // namespace gradflow::cli
