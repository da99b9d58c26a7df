#include "cmd_report.h"

#include <cstdio>
#include <filesystem>

#include "common.h"
#include "gradflow/atomic_file.h"
#include "gradflow/coord_check.h"
#include "gradflow/error.h"
#include "gradflow/report.h"

namespace gradflow::cli {

namespace {

constexpr const char* kCoordFile = "coord_check.json";

bool holds_width_sweep(const std::string& dir) { return std::filesystem::exists(dir + "/" + kCoordFile); }

// Every input a width sweep's folder: their checks, in order, in one report.
int rebuild_width_report(const ReportOptions& o) {
  std::vector<CoordCheck> checks;
  for (const auto& in : o.inputs) {
    if (!holds_width_sweep(in))
      throw UsageError("'" + in + "' holds no " + kCoordFile + ": give only folders of 'gradflow compare --sweep width', or none");
    for (auto& c : coord_checks_from_json(read_file(in + "/" + kCoordFile), in + "/" + kCoordFile)) checks.push_back(std::move(c));
  }
  prepare_out_dir(o.out, o.force, {kCoordFile, "report.html", "report.md"});
  write_coord_report(checks, o.out);
  std::printf("%s\n%zu checks; wrote %s/report.html, report.md and %s\n", coord_report_markdown(checks).c_str(), checks.size(), o.out.c_str(), kCoordFile);
  return kExitOk;
}

}  // namespace

int run_report(const ReportOptions& o) {
  if (!o.inputs.empty() && holds_width_sweep(o.inputs.front())) return rebuild_width_report(o);
  // Load and check every input before touching --out.
  Comparison c = load_comparison(o.inputs);
  prepare_out_dir(o.out, o.force, {"summary.json", "report.html", "report.md"});
  write_report(c, o.out);
  std::printf("%s\n%zu runs; wrote %s/report.html, report.md and summary.json\n", report_text(c).c_str(), c.runs.size(), o.out.c_str());
  return kExitOk;
}

void setup_report(CLI::App& app) {
  auto o = std::make_shared<ReportOptions>();
  auto* sub = app.add_subcommand("report", "Rebuild the comparison report from saved run or compare folders, or a Monitor's out folder");
  sub->add_option("inputs", o->inputs,
                  "Folders holding run.json, compare folders holding summary.json, folders a Monitor streamed to "
                  "(trace.jsonl, also after the program died), or width sweeps' folders (coord_check.json)")
      ->required();
  sub->add_option("--out", o->out, "Output folder")->capture_default_str();
  sub->add_flag("--force", o->force, "Replace a report already in --out");
  sub->final_callback([o] { throw CLI::RuntimeError(run_report(*o)); });
}

}  // namespace gradflow::cli
