#pragma once
/// \file
/// One training run as saved in `run.json` (schema in docs/run-schema.md). No LibTorch.

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "gradflow/diagnosis.h"
#include "gradflow/model_traits.h"
#include "gradflow/summary.h"
#include "gradflow/trace.h"

namespace gradflow {

inline constexpr const char* kRunSchema = "gradflow.run/1";

/// What a configuration entry is for, when two runs are compared.
enum class ConfigRole {
  setting,    ///< must be equal for two runs to be compared (depth, task, learning rate, ...)
  remedy,     ///< one of the remedies a comparison names (ModelTraits holds it typed)
  recording,  ///< how the run was recorded, not trained (every): ignored by comparisons
};
const char* to_string(ConfigRole role);
/// Inverse of to_string; throws gradflow::Error for an unknown name.
ConfigRole config_role_from_string(const std::string& name);

/// One resolved setting, as text for display.
struct ConfigEntry {
  std::string key;
  std::string value;
  ConfigRole role = ConfigRole::setting;
};

/// Which axis `gradflow compare --sweep` varied, and where this run sits on it.
enum class SweepAxis { none, depth, seq_len };
const char* to_string(SweepAxis axis);
SweepAxis sweep_axis_from_string(const std::string& name);
struct SweepPoint {
  SweepAxis axis = SweepAxis::none;
  std::string base;  ///< the architecture's label without the swept value
  double value = 0;  ///< the depth or sequence length of this run
};

/// The kind of a Transformer block's attention weights: a depth holding one is a block.
inline constexpr const char* kAttentionLayerKind = "attention";
inline constexpr const char* kRecurrentLayerKind = "recurrent";
inline constexpr const char* kConvLayerKind = "conv";
/// A model gradflow did not build: a 2-dimensional weight (a linear layer, an embedding, an
/// attention projection: the weight alone does not tell them apart).
inline constexpr const char* kMatrixLayerKind = "matrix";

/// A weight layer in forward order.
struct LayerEntry {
  std::string name;  ///< module path: for built-in models its weight is the parameter `name + ".weight"`
  std::string kind;  ///< "linear", kConvLayerKind, kRecurrentLayerKind, kAttentionLayerKind; kMatrixLayerKind
  int depth = 0;     ///< 1-based position among weight layers; a built-in Transformer's block number
};

/// Everything one run produced.
struct RunRecord {
  std::string spec;     ///< as given on the command line
  std::string label;    ///< preset name or canonical spec
  std::string family;   ///< mlp, cnn, rnn (or "torchscript", "user")
  std::string task;
  std::string task_description;
  /// The fully resolved configuration, in order (spec options, task and trainer settings).
  std::vector<ConfigEntry> config;
  SweepPoint sweep;  ///< set by `gradflow compare --sweep`
  std::vector<LayerEntry> layers;
  ModelTraits traits;
  Trace trace;
  std::vector<double> loss;      ///< every step
  std::vector<double> accuracy;  ///< every step, where the task has one
  std::int64_t steps_requested = 0;
  std::int64_t steps_done = 0;
  std::int64_t clipped_steps = 0;  ///< steps where clipping changed the gradient
  double baseline_loss = 0.0;      ///< the loss of the best constant answer
  double tiny = 0.0;               ///< smallest positive value of the run's dtype
  double wall_seconds = 0.0;
  bool interrupted = false;
  bool stopped_on_nonfinite = false;
  /// Why the run stopped early with an error (a data-parallel rank lost), or "".
  std::string stop_reason;
  RunSummary summary;
  std::vector<Finding> findings;

  /// Recomputes summary and findings from the trace and the loss series.
  void analyse(const DiagnosisOptions& options = {});
  /// The value of a config key, or "" when absent.
  std::string config_value(const std::string& key) const;
};

/// A user's program's run, from what its Monitor recorded (`completed_steps` optimizer steps),
/// diagnosed; its loss is that of the recorded steps. What save_report and a report read from a
/// streamed folder both write.
RunRecord user_run_record(const Trace& trace, std::int64_t completed_steps, const std::string& label,
                          const ModelTraits& traits, const DiagnosisOptions& diagnosis);

/// run.json text; non-finite numbers become null.
std::string run_to_json(const RunRecord& run, int indent = 1);
/// Parses run.json; throws gradflow::Error naming the file part that is wrong.
RunRecord run_from_json(const std::string& text, const std::string& where = "run.json");

/// Global gradient norm per recorded step, from the parameter records (before any clipping).
std::vector<double> global_grad_norms(const Trace& trace);

}  // namespace gradflow
