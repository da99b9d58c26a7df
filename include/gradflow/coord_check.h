#pragma once
/// \file
/// The coordinate check across widths: per layer and step, the size of one coordinate of the
/// layer's output, of that output's change since initialisation, of its gradient, of its
/// weight's gradient and of its weight's update, measured at several widths of one model on the
/// same data, seed and optimizer; the log-log slope of each against width; and a verdict per
/// layer (Yang, Hu et al., "Tensor Programs V", 2022: under µP the activations and their changes
/// stay the same size as the model widens, under SP with Adam they grow).
///
/// ```
/// CoordCheck c = ...;  // filled by `gradflow compare --sweep width=...` or gradflow.coord_check()
/// WidthAnalysis a = analyse_widths(c);
/// for (const auto& v : a.verdicts) if (!v.stable) std::cout << v.layer << "\n";
/// ```
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "gradflow/diagnosis.h"
#include "gradflow/parametrisation.h"

namespace gradflow {

/// The `schema` field of coord_check.json.
inline constexpr const char* kCoordSchema = "gradflow.coord_check/1";

/// What is measured, each as the mean |x| over the tensor's coordinates (`mup`'s "l1").
enum class CoordQuantity {
  activation,       ///< the layer's output h_t
  change,           ///< h_t − h_0: the output's change since initialisation, on the same batch
  output_gradient,  ///< dL/dh_t
  weight_gradient,  ///< dL/dW_t, before the optimizer step
  update,           ///< W_{t+1} − W_t, the optimizer step's change of the weight
};
inline constexpr int kCoordQuantities = 5;
const char* to_string(CoordQuantity q);
/// The quantity as a chart or table heads it ("mean |h_t − h_0|").
const char* coord_heading(CoordQuantity q);

/// One layer of the swept model: a module with a weight of its own.
struct CoordLayer {
  std::string name;                     ///< module path
  WeightKind kind = WeightKind::hidden;  ///< of its weight, from its shapes at two widths
  std::string tied_to;                  ///< the earlier layer whose weight is this one's (GPT's read-out and embedding), if any
};

/// Every figure of one model swept across widths. Step t is the t-th forward and backward from
/// initialisation (t = 0) on the same batch, its update the step that follows it; with several
/// seeds, each figure is the mean over as many initialisations (`mup`'s `nseeds`).
struct CoordCheck {
  std::string label;                         ///< the model ("mlp:depth=4,param=mup", a factory's name)
  std::string optimizer;                     ///< as the run names it ("adam lr 0.01")
  std::optional<OptimizerKind> optimizer_kind;  ///< for the remedy; none when not SGD- or Adam-like
  std::vector<std::int64_t> widths;          ///< increasing
  std::int64_t steps = 0;
  std::int64_t seeds = 1;                    ///< initialisations each figure is the mean over
  std::vector<CoordLayer> layers;            ///< in forward order
  /// values[quantity][step][layer][width index]; NaN where not measured (a layer without a
  /// tensor output, the change at step 0).
  std::vector<std::vector<std::vector<std::vector<double>>>> values;

  /// Sizes `values` for the widths, steps and layers set, every figure NaN.
  void allocate();
  double& at(CoordQuantity q, std::int64_t step, std::size_t layer, std::size_t width);
  double at(CoordQuantity q, std::int64_t step, std::size_t layer, std::size_t width) const;
};

/// How a check names its optimizer: "adam lr 0.003", or where the parameter groups' rates differ
/// between the smallest and the largest width (µP's), both: "adam lr 0.003 at width 64, lr
/// 9.38e-05 to 0.003 over 2 groups at width 2048". `first_rates`, `last_rates`: each group's
/// learning rate at those widths.
std::string optimizer_text(const std::string& name, const std::vector<double>& first_rates, std::int64_t first_width,
                           const std::vector<double>& last_rates, std::int64_t last_width);

/// When a layer counts as width-stable.
struct WidthOptions {
  /// A layer is unstable where its output grows faster than width^slope_tolerance, or its change
  /// since initialisation grows or shrinks so, at some step: between the smallest and the
  /// largest of widths 64..2048, 0.25 is a factor of 2.4. With four widths or more the slope over
  /// the wider half of them (from the middle width up) must be beyond it too: a scaling persists
  /// at the wide end, a finite-width correction fades there.
  double slope_tolerance = 0.25;
};

/// A layer's verdict.
struct WidthVerdict {
  std::string layer;
  WeightKind kind = WeightKind::hidden;
  /// Whether any judged figure had a slope: a module whose weight its parent applies directly
  /// (nn.MultiheadAttention's out_proj) returns no output of its own, and is neither stable nor not.
  bool measured = false;
  bool stable = true;
  /// Where unstable: the judged quantity and step with the largest |slope| beyond the tolerance,
  /// and the first step where a judged slope was beyond it, with that quantity and slope.
  CoordQuantity quantity = CoordQuantity::activation;
  double slope = 0;
  std::int64_t step = 0;
  std::int64_t departs_at = 0;
  CoordQuantity departs_quantity = CoordQuantity::activation;
  double departs_slope = 0;
};

/// The analysis of one coordinate check.
struct WidthAnalysis {
  /// slopes[quantity][step][layer]: least-squares slope of log(figure) against log(width), over
  /// the widths where the figure is positive and finite (none with fewer than two).
  std::vector<std::vector<std::vector<std::optional<double>>>> slopes;
  std::vector<WidthVerdict> verdicts;  ///< one per layer, in forward order
  std::vector<Finding> findings;       ///< width_unstable, one per unstable layer
};

/// Fits the slopes, judges each layer and states the findings with the remedy Table 3 gives
/// for its kind and the run's optimizer.
WidthAnalysis analyse_widths(const CoordCheck& check, const WidthOptions& options = {});

/// `coord_check.json`: every check's figures (docs/output-files.md).
std::string coord_checks_to_json(const std::vector<CoordCheck>& checks);
/// Reads what coord_checks_to_json wrote; throws gradflow::Error naming `source` and the field.
std::vector<CoordCheck> coord_checks_from_json(const std::string& text, const std::string& source);

/// The report's HTML page: per check, the verdicts, the findings, a slope table and one chart
/// per quantity and step (width on a log axis, one line per layer).
std::string coord_report_html(const std::vector<CoordCheck>& checks, const WidthOptions& options = {});
/// The same verdicts and findings as markdown.
std::string coord_report_markdown(const std::vector<CoordCheck>& checks, const WidthOptions& options = {});
/// Writes OUT/coord_check.json, OUT/report.html and OUT/report.md, each atomically.
void write_coord_report(const std::vector<CoordCheck>& checks, const std::string& out_dir, const WidthOptions& options = {});

}  // namespace gradflow
