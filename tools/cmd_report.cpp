#include "cmd_report.h"

#include <cstdio>

#include "common.h"
#include "gradflow/report.h"

namespace gradflow::cli {

int run_report(const ReportOptions& o) {
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
                  "Folders holding run.json, compare folders holding summary.json, or folders a Monitor streamed to "
                  "(trace.jsonl, also after the program died)")
      ->required();
  sub->add_option("--out", o->out, "Output folder")->capture_default_str();
  sub->add_flag("--force", o->force, "Replace a report already in --out");
  sub->final_callback([o] { throw CLI::RuntimeError(run_report(*o)); });
}

}  // namespace gradflow::cli
