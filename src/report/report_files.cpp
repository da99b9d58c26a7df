#include <filesystem>

#include "gradflow/atomic_file.h"
#include "gradflow/error.h"
#include "gradflow/report.h"
#include "gradflow/trace_stream.h"
#include "report/report_model.h"
#include "diagnosis/run_json.h"

namespace gradflow {

using detail::Json;
using detail::num;

namespace {

Json opt_json(const std::optional<double>& x) { return x ? num(*x) : Json(nullptr); }

// Whether the run learned its task; null for a program's own model, whose constant-answer loss
// gradflow does not know.
Json learned_json(const RunRecord& r) { return r.baseline_loss > 0 ? Json(detail::learned(r)) : Json(nullptr); }

Json run_summary_json(const RunRecord& r, const std::string& dir) {
  Json findings = Json::array();
  for (const auto& f : r.findings) findings.push_back(detail::finding_json(f));
  Json config = Json::object();
  for (const auto& e : r.config) config[e.key] = e.value;
  return {{"label", r.label}, {"spec", r.spec}, {"family", r.family}, {"task", r.task}, {"dir", dir},
          {"config", config}, {"learned", learned_json(r)}, {"summary", detail::summary_to_json(r.summary)}, {"findings", findings}};
}

Json verdict_json(const Verdict& v) {
  return {{"remedy", v.remedy}, {"with", v.with_label}, {"without", v.without_label}, {"axis", to_string(v.axis)},
          {"with_log10", opt_json(v.with_log10)}, {"without_log10", opt_json(v.without_log10)},
          {"with_init_log10", opt_json(v.with_init_log10)}, {"without_init_log10", opt_json(v.without_init_log10)},
          {"with_value", opt_json(v.with_value)}, {"without_value", opt_json(v.without_value)},
          {"confirms", v.confirms}, {"text", v.text}};
}

Json sweep_json(const Comparison& c) {
  Json fits = Json::array();
  for (const auto& f : c.sweep)
    fits.push_back({{"label", f.label}, {"x", f.x}, {"log10", f.log10}, {"slope", opt_json(f.slope)}, {"gain", opt_json(f.gain())}});
  return {{"key", to_string(c.sweep_axis)}, {"fits", fits}};
}

}  // namespace

std::string summary_to_json(const Comparison& c) {
  Json runs = Json::array();
  for (std::size_t i = 0; i < c.runs.size(); ++i) runs.push_back(run_summary_json(c.runs[i], c.dirs[i]));
  Json verdicts = Json::array();
  for (const auto& v : c.verdicts) verdicts.push_back(verdict_json(v));
  Json j = {{"schema", kSummarySchema}, {"interrupted", c.interrupted}, {"runs", runs}, {"verdicts", verdicts}};
  if (c.kind == ReportKind::models) j["kind"] = "models";
  if (c.sweep_axis != SweepAxis::none) j["sweep"] = sweep_json(c);
  return j.dump(1);
}

void write_report(const Comparison& c, const std::string& dir) {
  write_file_atomic(dir + "/summary.json", summary_to_json(c) + "\n");
  const bool models = c.kind == ReportKind::models;
  write_file_atomic(dir + "/report.md", models ? models_report_markdown(c.runs) : report_markdown(c));
  write_file_atomic(dir + "/report.html", models ? models_report_html(c.runs) : report_html(c));
}

namespace {

namespace fs = std::filesystem;

// What load_comparison gathers from its inputs.
struct Loaded {
  std::vector<RunRecord> runs;
  std::vector<std::string> dirs;
  bool interrupted = false;
  bool models = false;  // a models report's summary.json was read
  std::optional<FlowResult> flow;
};

RunRecord load_run(const fs::path& path) {
  return run_from_json(read_file(path.string()), "'" + path.string() + "'");
}

// A folder a Monitor streamed to, its program dead or not: labelled after the folder.
RunRecord load_stream(const std::string& dir) {
  StreamedRun run = read_trace_stream(dir);
  return user_run_record(run.trace, run.completed_steps, stream_label(dir), ModelTraits{}, DiagnosisOptions{});
}

// A comparison folder: its summary.json, the run folders it names and its flow, if any.
void load_compare_dir(const std::string& in, Loaded& out) {
  std::error_code ec;
  const std::string summary = (fs::path(in) / "summary.json").string();
  if (!fs::exists(summary, ec))
    throw UsageError("'" + in + "' holds neither run.json, summary.json nor " + kStreamFile +
                     ": give folders written by 'gradflow run', 'gradflow compare' or a Monitor's out folder");
  const std::string where = "'" + summary + "'";
  const Json j = detail::parse_json(read_file(summary), where);
  if (!j.is_object() || !j.contains("schema") || !j["schema"].is_string() || j["schema"].get<std::string>() != kSummarySchema)
    throw Error(where + " is not a gradflow summary (schema " + kSummarySchema + " expected)");
  if (auto it = j.find("interrupted"); it != j.end() && it->is_boolean()) out.interrupted = out.interrupted || it->get<bool>();
  if (auto it = j.find("kind"); it != j.end() && it->is_string() && it->get<std::string>() == "models") out.models = true;
  const std::string flow_path = (fs::path(in) / "flow" / "flow.json").string();
  if (fs::exists(flow_path, ec)) out.flow = flow_from_json(read_file(flow_path), "'" + flow_path + "'");
  for (const auto& r : detail::get_array(j, "runs", where)) {
    const std::string d = detail::get_str(r, "dir", where);
    const fs::path path = fs::path(in) / d / "run.json";
    if (!fs::exists(path, ec)) throw Error(where + " names run folder '" + d + "' but " + path.string() + " is missing");
    out.runs.push_back(load_run(path));
    out.dirs.push_back(d);
  }
}

}  // namespace

Comparison load_comparison(const std::vector<std::string>& inputs) {
  if (inputs.empty()) throw UsageError("no run folder given: name folders written by 'gradflow run' or 'gradflow compare'");
  Loaded loaded;
  for (const auto& in : inputs) {
    std::error_code ec;
    if (!fs::is_directory(in, ec))
      throw UsageError("'" + in + "' is not a folder: give folders written by 'gradflow run' or 'gradflow compare'");
    if (fs::exists(fs::path(in) / "run.json", ec)) {
      loaded.runs.push_back(load_run(fs::path(in) / "run.json"));
      loaded.dirs.push_back(in);
    } else if (has_trace_stream(in)) {
      loaded.runs.push_back(load_stream(in));
      loaded.dirs.push_back(in);
    } else {
      load_compare_dir(in, loaded);
    }
  }
  for (const auto& r : loaded.runs) loaded.interrupted = loaded.interrupted || r.interrupted;
  const bool one_run = inputs.size() == 1 && loaded.runs.size() == 1 && loaded.dirs.front() == inputs.front();
  Comparison c = make_comparison(std::move(loaded.runs), std::move(loaded.dirs));
  c.kind = loaded.models || one_run ? ReportKind::models : ReportKind::comparison;
  c.interrupted = loaded.interrupted;
  c.flow = std::move(loaded.flow);
  return c;
}

}  // namespace gradflow
