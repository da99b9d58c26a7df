#pragma once
/// \file
/// Comparison of several runs: verdicts per remedy, ranking tables, and the report files
/// (self-contained HTML with SVG charts, Markdown, summary.json). No LibTorch.

#include <optional>
#include <string>
#include <vector>

#include "gradflow/flow.h"
#include "gradflow/run_record.h"

namespace gradflow {

inline constexpr const char* kSummarySchema = "gradflow.summary/1";

/// What a verdict is judged on.
enum class VerdictAxis {
  depth,      ///< dL/dh across layers, at initialization
  time,       ///< dL/dh across time steps, after training
  stability,  ///< whether the loss stayed finite (gradient clipping)
  profile,    ///< Transformer blocks' weight gradients across depth, at initialization
  training,   ///< the loss at the end of training (learning-rate warm-up)
};
const char* to_string(VerdictAxis axis);

/// What one remedy changed, measured on two runs that differ only by it.
struct Verdict {
  std::string remedy;         ///< "batch normalisation", "LSTM", "gradient clipping", ...
  std::string with_label;     ///< the run with the remedy
  std::string without_label;  ///< the run without it
  VerdictAxis axis = VerdictAxis::depth;
  std::optional<double> with_log10, without_log10;            ///< depth: at init; time: after training
  std::optional<double> with_init_log10, without_init_log10;  ///< time: at initialization
  /// profile: log10 of the last block's gradient over the first's (in with_log10, without_log10)
  /// and the last block's gradient norm here; training: the mean loss over the last tenth.
  std::optional<double> with_value, without_value;
  bool confirms = false;      ///< the remedy helped, as the literature says it should
  std::string text;           ///< one sentence with the figures
};

/// Attenuation against a swept parameter (depth or sequence length) for one architecture.
struct SweepFit {
  std::string label;
  std::vector<double> x, log10;  ///< sweep values and attenuation at initialization
  std::optional<double> slope;   ///< least-squares log10 attenuation per layer (per step)
  std::optional<double> gain() const;
};

/// What a report shows.
enum class ReportKind {
  comparison,  ///< runs trained to be compared: verdicts, rankings (`gradflow compare`)
  models,      ///< one model, or the models of one program, each on its own (save_report, inspect)
};

/// Several runs side by side.
struct Comparison {
  std::vector<RunRecord> runs;
  std::vector<std::string> dirs;  ///< each run's folder, as written in summary.json
  std::vector<Verdict> verdicts;
  SweepAxis sweep_axis = SweepAxis::none;
  std::vector<SweepFit> sweep;
  bool interrupted = false;       ///< a signal cut the comparison short
  std::optional<FlowResult> flow; ///< `compare --flow`: saved as flow/flow.json beside the report
  ReportKind kind = ReportKind::comparison;
};

/// Pairs up runs that differ by one remedy and fits sweeps. `dirs` may be empty.
Comparison make_comparison(std::vector<RunRecord> runs, std::vector<std::string> dirs);

/// The report of one model, or of the models of one program side by side ("Gradient flow of
/// generator and discriminator"): per-layer profiles with the layers' names, gradient norms and
/// gradient-to-weight ratios per layer over training, loss, heatmap, findings with their evidence.
std::string models_report_html(const std::vector<RunRecord>& runs);
std::string models_report_markdown(const std::vector<RunRecord>& runs);

/// The report as one HTML file that opens offline: no script, no external URL.
std::string report_html(const Comparison& comparison);
std::string report_markdown(const Comparison& comparison);
std::string summary_to_json(const Comparison& comparison);
/// The ranking tables and verdicts for a terminal.
std::string report_text(const Comparison& comparison);

/// Writes report.html, report.md and summary.json into `dir` (atomically, each): the comparison
/// report, or the models report when `comparison.kind` says so.
void write_report(const Comparison& comparison, const std::string& dir);

/// Loads runs for `gradflow report`: each input is a run folder (holding run.json) or a
/// comparison folder (holding summary.json, the run folders it names and, if it has one, its
/// flow/flow.json). A single run folder, or a models report's folder, gives a models report. Throws
/// gradflow::Error naming the input that is missing, corrupt or foreign.
Comparison load_comparison(const std::vector<std::string>& inputs);

}  // namespace gradflow
