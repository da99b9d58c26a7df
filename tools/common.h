#pragma once
// Shared by the subcommands: output folders, signals, progress and terminal tables.

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "gradflow/run_record.h"

namespace gradflow::cli {

// Exit codes: 0 ok, 1 failure, 2 usage, 128+signal when interrupted.
inline constexpr int kExitOk = 0, kExitFailure = 1, kExitUsage = 2;

// Creates `dir` if needed. Refuses (UsageError) when it already holds one of `products` and
// `force` is false, so a second run never overwrites the first by accident.
void prepare_out_dir(const std::string& dir, bool force, const std::vector<std::string>& products);
// Removes `dir` if this process created it and it is still empty (nothing left half-done).
void cleanup_out_dir(const std::string& dir);

// SIGINT/SIGTERM set a flag that long loops poll; the run then writes what it has.
void install_signal_handlers();
bool interrupted();
int interrupt_exit_code();  // 130 for SIGINT, 143 for SIGTERM

// A one-line progress bar on a terminal, nothing when stderr is piped.
class Progress {
 public:
  explicit Progress(std::string label);
  ~Progress();
  void update(std::int64_t done, std::int64_t total);
  void finish();

 private:
  std::string label_;
  bool tty_;
  int last_ = -1;
};

// "1.2e-08" style, "-" for missing, never "nan".
std::string sci(double v);
std::string sci(const std::optional<double>& v);
// A bar for log10(v) on [lo, hi] (log10 units), `width` cells.
std::string log_bar(double v, double lo, double hi, int width);

// The per-layer table, attenuation and findings of one run.
void print_run(const RunRecord& run, std::FILE* out);
void print_findings(const std::vector<Finding>& findings, std::FILE* out, const std::string& indent = "  ");
std::string attenuation_text(const std::optional<Attenuation>& a);

// The model's threads: 1 for LibTorch and 2 for OpenBLAS unless GRADFLOW_THREADS="T,B" says
// otherwise (see docs/performance.md, "Threads").
void configure_threads();

}  // namespace gradflow::cli
