#pragma once
/// \file
/// The standard parametrisation (SP) and the maximal-update parametrisation (µP, Yang, Hu et al.,
/// "Tensor Programs V", 2022, Table 3): for each kind of weight, its initial variance and its
/// learning rate as functions of its fan-in and fan-out, and which kind a weight is, read from
/// its shapes at two widths as the `mup` package reads them.
///
/// ```
/// // a hidden 1024 x 1024 matrix under Adam, relative to a base width of 64:
/// WeightRule r = weight_rule(Parametrisation::mup, WeightKind::hidden, OptimizerKind::adam,
///                            {1024, 1024, 64, 64});   // r.lr_multiplier == 1/16
/// ```
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace gradflow {

/// How initial variances and learning rates scale with width.
enum class Parametrisation {
  sp,   ///< standard: every weight at variance 1/fan_in (up to the init's gain), one learning rate
  mup,  ///< maximal update (Table 3)
};
const char* to_string(Parametrisation p);
/// Parses "sp" or "mup"; throws gradflow::UsageError naming both.
Parametrisation parametrisation_from_string(const std::string& name);

/// Which of a weight's dimensions grow with width: Table 3's columns.
enum class WeightKind {
  fixed,    ///< none (a head on a fixed-size input, a scalar gain)
  input,    ///< only the fan-out: input weights, embeddings, and every bias or norm gain of width size
  hidden,   ///< fan-in and fan-out
  readout,  ///< only the fan-in: the output layer
};
const char* to_string(WeightKind k);
/// Parses a kind's name; throws gradflow::Error naming the valid ones.
WeightKind weight_kind_from_string(const std::string& name);

/// The optimizers Table 3 has a row for; Adam stands for Adam-like (AdamW, Adamax, ...) updates,
/// whose size does not follow the gradient's scale.
enum class OptimizerKind { sgd, adam };
const char* to_string(OptimizerKind k);
/// The kind a name written by to_string() stands for; none for another name.
std::optional<OptimizerKind> optimizer_kind_from_string(const std::string& name);

/// A weight's fans and those of the same weight in the base model, where µP equals SP. With
/// every base fan 1 the rules are Table 3's entries literally.
struct WeightShape {
  double fan_in = 1;
  double fan_out = 1;
  double base_fan_in = 1;
  double base_fan_out = 1;
};

/// Table 3 for one weight.
struct WeightRule {
  double init_variance = 1;      ///< variance of the weight's entries (before an activation's gain)
  double lr_multiplier = 1;      ///< the weight's learning rate is this times the base rate η
  double output_multiplier = 1;  ///< the layer computes output_multiplier · W x (1 in Table 3)
};

/// The rule for a weight of `kind` trained by `optimizer` under `p`.
WeightRule weight_rule(Parametrisation p, WeightKind kind, OptimizerKind optimizer, const WeightShape& shape);

/// The same training in another form (Tensor Programs V's invariance): multiplying a weight's
/// initial variance by c, its output multiplier by 1/√c, its SGD learning rate by c and its Adam
/// learning rate by √c changes nothing the network computes. This is the form whose output
/// multiplier is `multiplier` (the read-out at 1/fan_in with variance 1, as µP's forms with
/// multipliers write it).
WeightRule with_output_multiplier(const WeightRule& rule, double multiplier, OptimizerKind optimizer);

/// The factor on the attention logits q·k: 1/√d_head in SP, and in µP 1/d_head times
/// √base_d_head, so that both agree at the base width.
double attention_scale(Parametrisation p, double d_head, double base_d_head);

/// One parameter's shape and layout, as `weight_kinds` reads it.
struct ParameterShape {
  std::vector<std::int64_t> sizes;  ///< [out, in, kernel...] for linear and conv weights
  bool embedding = false;           ///< an embedding table, [vocabulary, width]: its rows are inputs
};

/// Each parameter's kind from its shapes at two different widths (same parameters, same order):
/// a dimension that differs grows with width. One growing dimension is input-like (a bias, a
/// norm gain, an input or embedding weight) unless it is a matrix's fan-in alone (the readout).
/// Throws gradflow::Error when the two lists do not describe the same parameters.
std::vector<WeightKind> weight_kinds(const std::vector<ParameterShape>& at_a, const std::vector<ParameterShape>& at_b);

/// Fan-in and fan-out of a weight of these sizes ([out, in, kernel...]; a vector's fan-in is 1).
std::pair<double, double> fans(const ParameterShape& shape);

}  // namespace gradflow
