#pragma once
/// \file
/// "Does the gradient reach my first layers?" for a TorchScript file saved from Python.

#include <cstdint>
#include <string>
#include <vector>

#include "gradflow/run_record.h"

namespace gradflow {

inline constexpr const char* kInspectSchema = "gradflow.inspect/1";

/// How the model's output becomes a loss.
enum class InspectLoss {
  sum,   ///< y.sum()
  mean,  ///< y.mean()
  mse,   ///< mean squared error against seeded randn
  ce,    ///< cross-entropy against seeded labels
};
const char* to_string(InspectLoss loss);
/// Inverse of to_string; throws gradflow::UsageError listing the valid names.
InspectLoss inspect_loss_from_string(const std::string& name);

/// What to feed the model and how to turn its output into a loss.
struct InspectOptions {
  std::vector<std::int64_t> input_shape;  ///< used with torch::manual_seed(seed); torch::randn(shape)
  std::string input_file;                 ///< or a tensor saved by Python's torch.save (zip format)
  InspectLoss loss = InspectLoss::sum;
  std::int64_t classes = 0;               ///< for ce: number of classes (default: the output's size(1))
  std::int64_t steps = 0;                 ///< SGD steps on fresh random inputs after the first measurement
  double lr = 0.01;
  std::uint64_t seed = 0;
  bool eval = false;                      ///< switch to eval mode; otherwise the mode it was saved in
};

/// The gradient one parameter received at initialization.
struct ParameterGradient {
  std::string name;  ///< as Python's model.named_parameters() gives it
  std::vector<std::int64_t> shape;
  double grad_norm = 0, grad_max_abs = 0, grad_mean = 0, zero_fraction = 0;
  std::int64_t nonfinite = 0;
};

struct InspectResult {
  std::string model;
  std::vector<ParameterGradient> parameters;  ///< named_parameters() order, trainable ones
  std::vector<std::pair<std::string, double>> activations;  ///< dL/d(layer output) norms, forward order
  double loss = 0;                            ///< the loss at initialization
  bool training_mode = true;
  RunRecord run;                              ///< trace, summary and findings
};

/// Loads, runs and diagnoses a TorchScript model. Throws gradflow::UsageError for bad options or
/// an input the model rejects (with what the model said), gradflow::Error for a missing or
/// foreign file, a model without trainable parameters, or an output that is not a floating tensor.
InspectResult inspect_torchscript(const std::string& path, const InspectOptions& options);

/// inspect.json text.
std::string inspect_to_json(const InspectResult& result, const InspectOptions& options);

/// Parses "N,C,H,W" into a shape; throws gradflow::UsageError when malformed.
std::vector<std::int64_t> parse_shape(const std::string& text);

}  // namespace gradflow
