#pragma once
/// \file
/// The last line of a user's training loop: diagnose what the Monitor recorded and write the report.

#include <functional>
#include <string>
#include <vector>

#include "gradflow/diagnosis.h"
#include "gradflow/error.h"
#include "gradflow/monitor.h"
#include "gradflow/run_record.h"

namespace gradflow {

/// How save_report() labels and judges the run.
struct SaveOptions {
  std::string label = "model";  ///< the run's name in the report
  ModelTraits traits;           ///< what is known of the model, to choose remedies
  DiagnosisOptions diagnosis;
  bool force = false;           ///< replace an earlier report in the same folder (as the CLI's --force)
  /// Data-parallel runs: this process's rank (-1: the Monitor's). Only rank 0 writes the folder;
  /// every rank returns rank 0's findings when `share_findings` (or the Monitor's group's store)
  /// can bring them, its own otherwise.
  int rank = -1;
  /// Brings rank 0's text to every rank: called as (key, text) on each rank with the same key,
  /// rank 0 passes its findings and does not wait, the others pass "" and wait for rank 0's.
  /// Empty: the store of the Monitor's DataParallel group, if it has one (the Python module
  /// sets it from torch.distributed's store).
  std::function<std::string(const std::string& key, const std::string& text)> share_findings;
};

/// The Monitor's trace as a run record, diagnosed (loss from the recorded steps).
RunRecord make_run_record(Monitor& monitor, const SaveOptions& options = {});

/// Writes `dir`/run.json, trace.csv, report.html, report.md and summary.json (creating `dir`) and
/// returns the findings. Every file is written atomically. The step in progress is closed first
/// when it is whole (Monitor::flush); a Monitor that streams to `dir` marks its stream finished
/// there and writes no step of it again. In a data-parallel run only rank 0 writes.
///
/// \code
/// gradflow::Monitor monitor(*model);
/// ...                                    // train, calling monitor.watch(loss) before backward
/// auto findings = gradflow::save_report(monitor, "gradflow-report");
/// gradflow::require_healthy(findings, {gradflow::FindingKind::vanishing});
/// \endcode
std::vector<Finding> save_report(Monitor& monitor, const std::string& dir, const SaveOptions& options = {});

/// Several models of one program (a GAN's generator and discriminator) in one report, side by
/// side: each model's run.json and trace.csv go into `dir`/LABEL, report.html, report.md and
/// summary.json into `dir`. Returns each model's findings, in order. The first model's
/// SaveOptions::force decides whether an earlier report may be replaced.
///
/// \code
/// gradflow::save_report({{&monitor_g, generator_options}, {&monitor_d, discriminator_options}}, "gan-report");
/// \endcode
std::vector<std::vector<Finding>> save_report(const std::vector<std::pair<Monitor*, SaveOptions>>& models,
                                              const std::string& dir);

/// The report of a folder a Monitor streamed to (MonitorOptions::out), also after its program
/// died: reads `dir`/trace.jsonl, writes run.json, trace.csv, report.html, report.md and
/// summary.json into `out` (empty: `dir`) and returns the findings. A run that did not reach
/// save_report is marked interrupted. The run is named after `dir`, as `gradflow report` names
/// it, unless SaveOptions::label is set to another name.
std::vector<Finding> report_from_stream(const std::string& dir, const std::string& out = "", const SaveOptions& options = {});

/// Thrown by require_healthy(): the gradient is not healthy in a way the caller ruled out.
class GradientHealthError : public Error {
 public:
  GradientHealthError(const std::string& what, std::vector<Finding> findings)
      : Error(what), findings_(std::move(findings)) {}
  const std::vector<Finding>& findings() const { return findings_; }

 private:
  std::vector<Finding> findings_;
};

/// Throws GradientHealthError naming every finding of one of `kinds` (all kinds when empty).
void require_healthy(const std::vector<Finding>& findings, const std::vector<FindingKind>& kinds = {});

}  // namespace gradflow
