#include "gradflow/save_report.h"

#include <cerrno>
#include <cstring>
#include <algorithm>
#include <filesystem>
#include <limits>

#include "gradflow/atomic_file.h"
#include "gradflow/report.h"
#include "gradflow/trace_io.h"

namespace gradflow {

RunRecord make_run_record(Monitor& monitor, const SaveOptions& o) {
  RunRecord r;
  r.spec = r.label = o.label;
  r.family = "user";
  r.task = "user";
  r.traits = o.traits;
  // A step still open (a manual-step Monitor after its last step()) is not a step the optimizer took.
  r.trace = monitor.trace().complete_steps();
  for (const auto& st : r.trace.steps()) r.loss.push_back(st.loss ? *st.loss : std::numeric_limits<double>::quiet_NaN());
  r.steps_done = r.steps_requested = monitor.completed_steps();
  r.tiny = std::numeric_limits<float>::denorm_min();
  r.config = {{"every", std::to_string(monitor.options().every), ConfigRole::recording}};
  r.analyse(o.diagnosis);
  // The loss series holds recorded steps only: a trend rule over them would misjudge sparse traces.
  return r;
}

std::vector<Finding> save_report(Monitor& monitor, const std::string& dir, const SaveOptions& o) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) throw Error("cannot create report folder '" + dir + "': " + ec.message());
  if (!o.force && std::filesystem::exists(std::filesystem::path(dir) / "run.json"))
    throw Error("'" + dir + "' already holds a report: choose another folder or set SaveOptions::force");
  RunRecord r = make_run_record(monitor, o);
  write_file_atomic(dir + "/run.json", run_to_json(r) + "\n");
  write_trace_csv(r.trace, dir + "/trace.csv");
  write_report(make_comparison({r}, {"."}), dir);
  return r.findings;
}

void require_healthy(const std::vector<Finding>& findings, const std::vector<FindingKind>& kinds) {
  std::vector<Finding> bad;
  for (const auto& f : findings)
    if (kinds.empty() || std::find(kinds.begin(), kinds.end(), f.kind) != kinds.end()) bad.push_back(f);
  if (bad.empty()) return;
  std::string msg = "gradient check failed: ";
  for (std::size_t i = 0; i < bad.size(); ++i)
    msg += (i ? "; " : "") + std::string(to_string(bad[i].kind)) + " at " + bad[i].where;
  throw GradientHealthError(msg, bad);
}

}  // namespace gradflow
