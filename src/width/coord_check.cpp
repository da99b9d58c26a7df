#include "gradflow/coord_check.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include <fmt/format.h>

#include "gradflow/error.h"
#include "util/enum_names.h"
#include "util/line_fit.h"

namespace gradflow {

namespace {

constexpr detail::Named<CoordQuantity> kQuantities[] = {{CoordQuantity::activation, "activation"},
                                                        {CoordQuantity::change, "change"},
                                                        {CoordQuantity::output_gradient, "output_gradient"},
                                                        {CoordQuantity::weight_gradient, "weight_gradient"},
                                                        {CoordQuantity::update, "update"}};
constexpr detail::Named<CoordQuantity> kHeadings[] = {{CoordQuantity::activation, "mean |h_t|"},
                                                      {CoordQuantity::change, "mean |h_t − h_0|"},
                                                      {CoordQuantity::output_gradient, "mean |dL/dh_t|"},
                                                      {CoordQuantity::weight_gradient, "mean |dL/dW_t|"},
                                                      {CoordQuantity::update, "mean |W_t+1 − W_t|"}};

std::size_t index(CoordQuantity q) { return static_cast<std::size_t>(q); }

// The slope over widths [from, end).
std::optional<double> fit_slope(const CoordCheck& c, CoordQuantity q, std::int64_t step, std::size_t layer, std::size_t from = 0) {
  std::vector<double> x, y;
  for (std::size_t w = from; w < c.widths.size(); ++w) {
    const double v = c.at(q, step, layer, w);
    if (!(std::isfinite(v) && v > 0)) continue;
    x.push_back(std::log(static_cast<double>(c.widths[w])));
    y.push_back(std::log(v));
  }
  return detail::least_squares_slope(x, y);
}

// The output may vanish with width (µP's read-out does at initialisation, by design): only its
// growth is judged. Its change must neither grow nor vanish: that is what the update does to it.
bool beyond(CoordQuantity q, double slope, double tolerance) {
  return q == CoordQuantity::activation ? slope > tolerance : std::abs(slope) > tolerance;
}

constexpr CoordQuantity kJudged[] = {CoordQuantity::activation, CoordQuantity::change};

// A scaling persists at the wide end; a finite-width correction (a share of the change that
// falls with width, beside one that does not) flattens there. With four widths or more, a
// departure counts only if the slope over the wider half, from the middle width up, is beyond
// the tolerance too.
bool persists(const CoordCheck& c, CoordQuantity q, std::int64_t step, std::size_t layer, double tolerance) {
  if (c.widths.size() < 4) return true;
  const auto upper = fit_slope(c, q, step, layer, (c.widths.size() - 1) / 2);
  return upper && beyond(q, *upper, tolerance);
}

WidthVerdict judge(const CoordCheck& c, const WidthAnalysis& a, std::size_t layer, double tolerance) {
  WidthVerdict v;
  v.layer = c.layers[layer].name;
  v.kind = c.layers[layer].kind;
  for (std::int64_t t = 0; t < c.steps; ++t)
    for (CoordQuantity q : kJudged) {
      const auto& s = a.slopes[index(q)][static_cast<std::size_t>(t)][layer];
      v.measured = v.measured || s.has_value();
      if (!s || !beyond(q, *s, tolerance) || !persists(c, q, t, layer, tolerance)) continue;
      if (v.stable) v.departs_at = t, v.departs_quantity = q, v.departs_slope = *s;
      if (v.stable || std::abs(*s) > std::abs(v.slope)) {
        v.quantity = q;
        v.slope = *s;
        v.step = t;
      }
      v.stable = false;
    }
  return v;
}

// What Table 3 gives a layer of this kind, in words that do not presume which way it went.
std::string remedy(const CoordLayer& layer, const std::optional<OptimizerKind>& opt) {
  const bool sgd = opt == OptimizerKind::sgd, adam = opt == OptimizerKind::adam;
  switch (layer.kind) {
    case WeightKind::readout:
      if (!layer.tied_to.empty())
        return "µP's read-out (Tensor Programs V, Table 3) trains at learning rate η/fan_in from variance 1/fan_in² or zero; this "
               "one's weight is shared with " + layer.tied_to + ": keep them tied and multiply the read-out's output by 1/fan_in (as µP "
               "implementations of tied models do), or untie them";
      return "µP's read-out (Tensor Programs V, Table 3): initial variance 1/fan_in² (or zero) and learning rate η/fan_in, under "
             "SGD and Adam alike";
    case WeightKind::hidden:
      if (adam) return "µP's hidden weights under Adam (Tensor Programs V, Table 3): learning rate η/fan_in (their variance stays SP's 1/fan_in)";
      if (sgd)
        return "under SGD µP keeps the hidden weights' learning rate η and variance 1/fan_in (Tensor Programs V, Table 3): this "
               "layer's change follows the gradient the read-out sends back (µP: read-out variance 1/fan_in², learning rate "
               "η/fan_in) and the change of the layers feeding it (µP: input weights at η·fan_out)";
      return "µP's hidden weights (Tensor Programs V, Table 3): variance 1/fan_in; learning rate η under SGD, η/fan_in under Adam";
    case WeightKind::input:
      if (sgd) return "µP's input weights, biases and norm gains under SGD (Tensor Programs V, Table 3): learning rate η·fan_out, variance 1/fan_in";
      if (adam)
        return "under Adam µP gives input weights, embeddings, biases and norm gains SP's learning rate η (Tensor Programs V, "
               "Table 3): this layer's change comes from the layers that feed it";
      return "µP's input weights, biases and norm gains (Tensor Programs V, Table 3): variance 1/fan_in; learning rate η·fan_out "
             "under SGD, η under Adam";
    case WeightKind::fixed:
      break;
  }
  return "this layer's shape does not change with width: its output follows its input; judge the layers before it";
}

// The fans in Table 3's rules count relative to the width where η was tuned.
constexpr const char* kFansNote = " (fans relative to the base width at which η was tuned, where µP equals SP)";

// An output that grows before any update grows from the initialisation: no learning rate mends it.
std::string initial_growth_remedy(const CoordLayer& layer) {
  const char* variance = layer.kind == WeightKind::readout ? "1/fan_in² (or zero)" : "proportional to 1/fan_in";
  return fmt::format("its output grows with width at initialisation, before any update: initialise its weights at variance {} "
                     "(a fixed standard deviation, such as 0.02, keeps SP's scale at one width only); then ",
                     variance);
}

// `first_unstable`: the first unstable layer before this one, whose change this layer's input may carry.
Finding finding_for(const CoordCheck& c, const WidthVerdict& v, std::size_t layer, const WidthVerdict* first_unstable) {
  Finding f;
  f.kind = FindingKind::width_unstable;
  f.severity = Severity::warning;
  f.where = v.layer;
  const double first = c.at(v.quantity, v.step, layer, 0), last = c.at(v.quantity, v.step, layer, c.widths.size() - 1);
  const char* verb = v.slope > 0 ? "grows" : "shrinks";
  f.message = fmt::format("{} ({}): {} {} as width^{:.2f} at step {} ({:.3g} at width {}, {:.3g} at width {})", v.layer, to_string(v.kind),
                          coord_heading(v.quantity), verb, v.slope, v.step, first, c.widths.front(), last, c.widths.back());
  if (v.departs_at < v.step)
    f.message += fmt::format("; first beyond the tolerance at step {} ({} as width^{:.2f})", v.departs_at, coord_heading(v.departs_quantity),
                             v.departs_slope);
  f.evidence = {{"slope", v.slope}, {"step", static_cast<double>(v.step)}, {"departs_at", static_cast<double>(v.departs_at)},
                {"smallest_width_figure", first}, {"largest_width_figure", last}};
  // A tied read-out's initial scale is its embedding's: the tied form's multiplier is the remedy.
  const bool from_initialisation = v.departs_at == 0 && v.departs_quantity == CoordQuantity::activation && v.kind != WeightKind::fixed &&
                                   c.layers[layer].tied_to.empty();
  f.remedy = (from_initialisation ? initial_growth_remedy(c.layers[layer]) : std::string()) + remedy(c.layers[layer], c.optimizer_kind);
  if (v.kind != WeightKind::fixed) f.remedy += kFansNote;
  if (first_unstable && first_unstable->departs_at <= v.departs_at)
    f.remedy += fmt::format("; layers before it are unstable from {} on ({} beyond the tolerance from step {}), and its input "
                            "carries their outputs: mend the first of them before this one",
                            first_unstable->layer, coord_heading(first_unstable->departs_quantity), first_unstable->departs_at);
  return f;
}

void check_shape(const CoordCheck& c) {
  if (c.widths.size() < 2) throw UsageError("a width sweep needs at least two widths, e.g. 64,128,256");
  for (std::size_t w = 1; w < c.widths.size(); ++w)
    if (c.widths[w] <= c.widths[w - 1]) throw UsageError("the widths of a sweep must increase: " + std::to_string(c.widths[w]) + " follows " + std::to_string(c.widths[w - 1]));
  if (c.values.size() != kCoordQuantities) throw Error("coordinate check '" + c.label + "' holds no figures (allocate() it)");
}

// "lr 0.003", or "lr 9.38e-05 to 0.003 over 2 groups".
std::string rates_text(const std::vector<double>& rates) {
  std::vector<double> lrs = rates;
  std::sort(lrs.begin(), lrs.end());
  lrs.erase(std::unique(lrs.begin(), lrs.end()), lrs.end());
  if (lrs.empty()) return "no parameter group";
  if (lrs.size() == 1) return fmt::format("lr {:g}", lrs[0]);
  return fmt::format("lr {:g} to {:g} over {} groups", lrs.front(), lrs.back(), rates.size());
}

}  // namespace

std::string optimizer_text(const std::string& name, const std::vector<double>& first_rates, std::int64_t first_width,
                           const std::vector<double>& last_rates, std::int64_t last_width) {
  const std::string first = rates_text(first_rates), last = rates_text(last_rates);
  if (first == last) return name + " " + first;
  return fmt::format("{} {} at width {}, {} at width {}", name, first, first_width, last, last_width);
}

const char* to_string(CoordQuantity q) { return detail::name_of(kQuantities, q); }
const char* coord_heading(CoordQuantity q) { return detail::name_of(kHeadings, q); }

void CoordCheck::allocate() {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  values.assign(kCoordQuantities, std::vector<std::vector<std::vector<double>>>(
                                      static_cast<std::size_t>(steps), std::vector<std::vector<double>>(layers.size(), std::vector<double>(widths.size(), nan))));
}

double& CoordCheck::at(CoordQuantity q, std::int64_t step, std::size_t layer, std::size_t width) {
  return values.at(index(q)).at(static_cast<std::size_t>(step)).at(layer).at(width);
}

double CoordCheck::at(CoordQuantity q, std::int64_t step, std::size_t layer, std::size_t width) const {
  return values.at(index(q)).at(static_cast<std::size_t>(step)).at(layer).at(width);
}

WidthAnalysis analyse_widths(const CoordCheck& c, const WidthOptions& o) {
  check_shape(c);
  WidthAnalysis a;
  a.slopes.resize(kCoordQuantities);
  for (int q = 0; q < kCoordQuantities; ++q) {
    a.slopes[static_cast<std::size_t>(q)].resize(static_cast<std::size_t>(c.steps));
    for (std::int64_t t = 0; t < c.steps; ++t)
      for (std::size_t l = 0; l < c.layers.size(); ++l)
        a.slopes[static_cast<std::size_t>(q)][static_cast<std::size_t>(t)].push_back(fit_slope(c, static_cast<CoordQuantity>(q), t, l));
  }
  std::optional<std::size_t> first;
  for (std::size_t l = 0; l < c.layers.size(); ++l) {
    a.verdicts.push_back(judge(c, a, l, o.slope_tolerance));
    if (a.verdicts.back().stable) continue;
    a.findings.push_back(finding_for(c, a.verdicts.back(), l, first ? &a.verdicts[*first] : nullptr));
    if (!first) first = l;
  }
  return a;
}

}  // namespace gradflow
