#include "gradflow/save_report.h"

#include <cctype>
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

namespace {

void prepare_report_dir(const std::string& dir, bool force) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) throw Error("cannot create report folder '" + dir + "': " + ec.message());
  if (!force && std::filesystem::exists(std::filesystem::path(dir) / "report.html"))
    throw Error("'" + dir + "' already holds a report: choose another folder or set SaveOptions::force");
}

void write_run(const RunRecord& r, const std::string& dir) {
  write_file_atomic(dir + "/run.json", run_to_json(r) + "\n");
  write_trace_csv(r.trace, dir + "/trace.csv");
}

// A folder name from a label: letters, digits, '-', '_' and '.', others become '_'.
std::string folder_of(const std::string& label) {
  std::string s;
  for (char c : label) s += (std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.') ? c : '_';
  return s.empty() ? std::string("model") : s;
}

}  // namespace

std::vector<Finding> save_report(Monitor& monitor, const std::string& dir, const SaveOptions& o) {
  prepare_report_dir(dir, o.force);
  RunRecord r = make_run_record(monitor, o);
  write_run(r, dir);
  Comparison c = make_comparison({r}, {"."});
  c.kind = ReportKind::models;
  write_report(c, dir);
  return r.findings;
}

std::vector<std::vector<Finding>> save_report(const std::vector<std::pair<Monitor*, SaveOptions>>& models,
                                              const std::string& dir) {
  if (models.empty()) throw Error("save_report was given no model: pass at least one Monitor");
  prepare_report_dir(dir, models.front().second.force);
  std::vector<RunRecord> runs;
  std::vector<std::string> dirs;
  for (const auto& [monitor, options] : models) {
    runs.push_back(make_run_record(*monitor, options));
    dirs.push_back(folder_of(options.label));
    if (std::find(dirs.begin(), dirs.end() - 1, dirs.back()) != dirs.end() - 1)
      throw Error("two models are labelled '" + options.label + "': give each its own SaveOptions::label");
  }
  std::vector<std::vector<Finding>> findings;
  for (std::size_t i = 0; i < runs.size(); ++i) {
    std::filesystem::create_directories(std::filesystem::path(dir) / dirs[i]);
    write_run(runs[i], dir + "/" + dirs[i]);
    findings.push_back(runs[i].findings);
  }
  Comparison c = make_comparison(std::move(runs), std::move(dirs));
  c.kind = ReportKind::models;
  write_report(c, dir);
  return findings;
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
