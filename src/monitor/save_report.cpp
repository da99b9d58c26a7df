#include "gradflow/save_report.h"

#include <cctype>
#include <cerrno>
#include <cstring>
#include <algorithm>
#include <filesystem>
#include <limits>

#include "gradflow/atomic_file.h"
#include "gradflow/data_parallel.h"
#include "gradflow/option.h"
#include "gradflow/trace_stream.h"
#include "util/json_util.h"
#include "diagnosis/run_json.h"
#include "gradflow/report.h"
#include "gradflow/trace_io.h"

namespace gradflow {

RunRecord make_run_record(Monitor& monitor, const SaveOptions& o) {
  if (monitor.forked_copy())
    throw UsageError("this process inherited its Monitor through fork() from the process that created it, which "
                     "alone records and reports: create a Monitor in this process (with its own out= folder) and "
                     "save its report");
  return user_run_record(monitor.trace(), monitor.completed_steps(), o.label,
                         with_shown_traits(o.traits, monitor.model_traits()), o.diagnosis);
}

namespace {

void prepare_report_dir(const std::string& dir, bool force) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) throw Error("cannot create report folder '" + dir + "': " + ec.message());
  if (!force && std::filesystem::exists(std::filesystem::path(dir) / "report.html"))
    throw OptionError(Option::save_force, "'" + dir + "' already holds a report: choose another folder or set {}");
}

bool same_folder(const std::string& a, const std::string& b) {
  std::error_code ec;
  return !a.empty() && !b.empty() && std::filesystem::equivalent(a, b, ec);
}

int rank_of(const Monitor& monitor, const SaveOptions& o) { return o.rank >= 0 ? o.rank : monitor.rank(); }

// Rank 0's findings on every rank, when the ranks can meet; this rank's own otherwise.
std::vector<Finding> shared_findings(Monitor& monitor, const SaveOptions& o, const std::string& key,
                                     std::vector<Finding> own) {
  auto share = o.share_findings;
  if (!share && monitor.options().data_parallel && monitor.options().data_parallel->has_store()) {
    DataParallel* dp = monitor.options().data_parallel;
    share = [dp](const std::string& k, const std::string& text) { return dp->share_from_rank0(k, text); };
  }
  if (!share) return own;
  const bool writer = rank_of(monitor, o) == 0;
  std::string text;
  if (writer) {
    detail::Json j = detail::Json::array();
    for (const auto& f : own) j.push_back(detail::finding_json(f));
    text = j.dump();
  }
  const std::string got = share(key, text);
  if (writer) return own;
  const std::string where = "rank 0's findings";
  std::vector<Finding> findings;
  for (const auto& j : detail::parse_json(got, where)) findings.push_back(detail::finding_from(j, where));
  return findings;
}

// The same on every rank that runs the same loop, whatever folder each names; a later report of
// the run, or another Monitor's (of the same steps and label), gets another.
std::string findings_key(const Monitor& monitor, const SaveOptions& o) {
  return "gradflow/findings/" + std::to_string(monitor.creation_index()) + "/" + o.label + "/" +
         std::to_string(monitor.completed_steps());
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

void write_models_report(const RunRecord& r, const std::string& dir) {
  write_run(r, dir);
  Comparison c = make_comparison({r}, {"."});
  c.kind = ReportKind::models;
  write_report(c, dir);
}

}  // namespace

std::vector<Finding> save_report(Monitor& monitor, const std::string& dir, const SaveOptions& o) {
  monitor.flush();
  const std::string key = findings_key(monitor, o);
  RunRecord r = make_run_record(monitor, o);
  if (rank_of(monitor, o) == 0) {
    const bool own_stream = same_folder(monitor.stream_dir(), dir);
    // A report the Monitor itself wrote into its folder is replaced by a later one.
    prepare_report_dir(dir, o.force || (own_stream && has_trace_stream(dir)));
    write_models_report(r, dir);
    if (!monitor.stream_dir().empty()) monitor.finish_stream();
  }
  return shared_findings(monitor, o, key, r.findings);
}

std::vector<Finding> report_from_stream(const std::string& dir, const std::string& out, const SaveOptions& o) {
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec))
    throw UsageError("'" + dir + "' is not a folder: give the folder a Monitor streamed to (its out)");
  if (!has_trace_stream(dir))
    throw UsageError("'" + dir + "' holds no recording (" + kStreamFile + "): give the folder a Monitor streamed to");
  StreamedRun run = read_trace_stream(dir);
  const std::string target = out.empty() ? dir : out;
  // A label left as it is (or empty) names the run after its folder, as `gradflow report` does.
  const std::string label = o.label.empty() || o.label == SaveOptions{}.label ? stream_label(dir) : o.label;
  RunRecord r = user_run_record(run.trace, run.completed_steps, label, o.traits, o.diagnosis);
  prepare_report_dir(target, o.force || same_folder(target, dir));
  write_models_report(r, target);
  return r.findings;
}

namespace {

using Models = std::vector<std::pair<Monitor*, SaveOptions>>;

// Each model's run, and the folder it goes in (after its label).
std::pair<std::vector<RunRecord>, std::vector<std::string>> model_runs(const Models& models) {
  std::vector<RunRecord> runs;
  std::vector<std::string> dirs;
  for (const auto& [monitor, options] : models) {
    runs.push_back(make_run_record(*monitor, options));
    dirs.push_back(folder_of(options.label));
    if (std::find(dirs.begin(), dirs.end() - 1, dirs.back()) != dirs.end() - 1)
      throw OptionError(Option::label, "two models are labelled '" + options.label + "': give each its own {}");
  }
  return {std::move(runs), std::move(dirs)};
}

void write_models(const Models& models, std::vector<RunRecord> runs, std::vector<std::string> dirs,
                  const std::string& dir) {
  for (const auto& m : models)
    if (!m.first->stream_dir().empty()) m.first->finish_stream();
  for (std::size_t i = 0; i < runs.size(); ++i) {
    std::filesystem::create_directories(std::filesystem::path(dir) / dirs[i]);
    write_run(runs[i], dir + "/" + dirs[i]);
  }
  Comparison c = make_comparison(std::move(runs), std::move(dirs));
  c.kind = ReportKind::models;
  write_report(c, dir);
}

}  // namespace

std::vector<std::vector<Finding>> save_report(const Models& models, const std::string& dir) {
  if (models.empty()) throw Error("save_report was given no model: pass at least one Monitor");
  for (const auto& m : models) m.first->flush();
  const bool writer = rank_of(*models.front().first, models.front().second) == 0;
  if (writer) prepare_report_dir(dir, models.front().second.force);
  auto [runs, dirs] = model_runs(models);
  std::vector<std::vector<Finding>> own;
  for (const auto& r : runs) own.push_back(r.findings);
  if (writer) write_models(models, std::move(runs), std::move(dirs), dir);
  std::vector<std::vector<Finding>> findings;
  for (std::size_t i = 0; i < models.size(); ++i)
    findings.push_back(shared_findings(*models[i].first, models[i].second, findings_key(*models[i].first, models[i].second),
                                       std::move(own[i])));
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
