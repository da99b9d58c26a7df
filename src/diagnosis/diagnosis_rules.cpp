#include "diagnosis/diagnosis_rules.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "util/text.h"

namespace gradflow::detail {

namespace {

std::string vanishing_remedy(const ModelTraits& t) {
  if (t.recurrent) {
    if (t.cell == Cell::lstm || t.cell == Cell::gru)
      return "gated cells learn to carry gradient through their gates: train longer, or set the LSTM "
             "forget bias to 1; orthogonal recurrent init helps at the start";
    return "use an LSTM or GRU cell; orthogonal or identity (IRNN) recurrent init";
  }
  // Post-LN's lower blocks lose their gradient once the LayerNorms after the residual additions
  // grow the upper blocks' share (Liu et al. 2020); the fixes are the Transformer's own.
  if (t.norm_placement == NormPlacement::post)
    return t.warmup_steps > 0 ? "pre-LN (LayerNorm at the start of each residual branch), or a longer warm-up"
                              : "a learning-rate warm-up, or pre-LN (LayerNorm at the start of each residual branch)";
  if (t.norm_placement == NormPlacement::pre) return "a smaller learning rate or a longer warm-up";
  std::vector<std::string> r;
  if (is_squashing(t.activation)) r.push_back("ReLU activations with He initialisation");
  else if (t.activation == Activation::relu && !is_he(t.init)) r.push_back("He initialisation");
  if (t.norm != Norm::batch) r.push_back("batch normalisation");
  if (!t.residual) r.push_back("residual connections");
  if (r.empty()) return "a shallower network or a different initialisation";
  return join_alternatives(r);
}

// The training step of the i-th recorded value (grad_norm holds one per recorded step).
std::int64_t recorded_step(const DiagnosisInput& in, std::size_t i) {
  const auto& steps = in.trace.steps();
  return i < steps.size() ? steps[i].step : static_cast<std::int64_t>(i);
}

// The training step of the i-th loss value. The CLI's trainer gives the loss of every step; a
// loss taken from the trace (save_report) holds the recorded steps' only, one per trace step.
std::int64_t loss_step(const DiagnosisInput& in, std::size_t i) {
  return in.loss.size() == in.trace.steps().size() ? recorded_step(in, i) : static_cast<std::int64_t>(i);
}

double mean_of(const std::vector<double>& v, std::size_t b, std::size_t e) {
  double s = 0;
  std::size_t n = 0;
  for (std::size_t i = b; i < e && i < v.size(); ++i)
    if (std::isfinite(v[i])) {
      s += v[i];
      ++n;
    }
  return n ? s / static_cast<double>(n) : std::numeric_limits<double>::quiet_NaN();
}

bool vanishes(const std::optional<Attenuation>& a, double orders) { return a && a->log10 && *a->log10 < -orders; }

std::vector<std::pair<std::string, double>> attenuation_evidence(const Attenuation& a) {
  return {{"attenuation_log10", *a.log10}, {"span", a.span}, {"norm_far", a.from}, {"norm_near", a.to}};
}

std::optional<Finding> vanishing_finding(const Attenuation& a, const char* when, const std::string& where, bool time,
                                         double orders, const ModelTraits& traits) {
  const double lg = *a.log10;
  Finding f;
  f.kind = FindingKind::vanishing;
  f.severity = lg < -2 * orders ? Severity::error : Severity::warning;
  f.where = where;
  f.message = fmt::format("{}: dL/dh {} {:.1f} orders of magnitude across {} {} ({}x per {})", when,
                          a.underflow ? "lost at least" : "shrinks by", -lg, a.span, time ? "time steps" : "layers",
                          fmt::format("{:.3g}", a.gain().value_or(0.0)), time ? "step" : "layer");
  f.evidence = attenuation_evidence(a);
  if (a.underflow) f.evidence.emplace_back("underflow", 1.0);
  f.remedy = vanishing_remedy(traits);
  return f;
}

std::string exploding_remedy(const ModelTraits& t) {
  if (t.norm == Norm::batch)
    return t.clipped() ? "expected with batch norm and ReLU (Yang et al. 2019); a smaller learning rate if it hurts"
                       : "expected with batch norm and ReLU (Yang et al. 2019); gradient clipping if it hurts";
  std::vector<std::string> r;
  if (t.init.kind == Init::unknown)
    r.push_back("an initialisation scaled to the activation, if the weights do not have one (He for ReLU, Xavier for tanh)");
  else if (!is_he(t.init) && !is_xavier(t.init))
    r.push_back("a scale-preserving initialisation (He for ReLU, Xavier for tanh)");
  else r.push_back("a smaller initialisation scale than " + to_string(t.init));
  if (!t.clipped()) r.push_back("gradient clipping");
  return join_alternatives(r);
}

// Growth that compounds across depth: the growth without its largest single link. One link (a
// constant × sqrt(d), a final LayerNorm feeding the residual stream) is a scale, not an explosion.
double compounding_log10(const Attenuation& a) { return *a.log10 - std::max(0.0, a.largest_link_log10); }

std::optional<Finding> exploding_finding(const Attenuation& a, const char* when, const std::vector<std::string>& chain,
                                         const DiagnosisOptions& o, const ModelTraits& traits) {
  const double lg = *a.log10;
  const double compounding = compounding_log10(a);
  Finding f;
  f.kind = FindingKind::exploding;
  f.severity = compounding > 2 * o.exploding_orders ? Severity::error
               : compounding > o.exploding_orders   ? Severity::warning
                                                     : Severity::info;
  f.where = chain.front() + " .. " + chain.back();
  f.message = fmt::format("{}: dL/dh grows {:.1f} orders of magnitude toward the input across {} layers (per element)", when,
                          lg, a.span);
  // The link is named when it stands out: more than twice the mean link.
  if (a.largest_link_at >= 0 && a.largest_link_log10 > 2 * lg / a.span)
    f.message += fmt::format(", {:.1f} of them at one link ({} -> {}), {:.2g}x per layer elsewhere",
                             a.largest_link_log10, chain[a.largest_link_at + 1], chain[a.largest_link_at],
                             a.span > 1 ? std::pow(10.0, compounding / (a.span - 1)) : 1.0);
  f.evidence = attenuation_evidence(a);
  f.evidence.emplace_back("compounding_log10", compounding);
  f.remedy = exploding_remedy(traits);
  return f;
}

// Where a chain's gradient is exactly 0 from some layer down while the layer above it receives a
// normal one: no float underflow (that shrinks gradually) but a layer that passes nothing back.
// The far-most layer above the cut, and the cut's layer; nullopt when there is none.
std::optional<Finding> zero_cut_finding(const Trace& t, const StepRecord& st, const std::vector<int>& chain, const char* when) {
  constexpr double kNormalRms = 1e-30;  // far above float's smallest values: not an underflow
  for (std::size_t k = chain.size() - 1; k > 0; --k) {
    const Record* near = st.find(chain[k]);
    const Record* far = st.find(chain[k - 1]);
    if (!near || !far || far->grad.numel == 0 || far->grad.zeros != far->grad.numel) continue;
    if (!(near->grad.rms() > kNormalRms)) continue;
    Finding f;
    f.kind = FindingKind::dead_units;
    f.severity = Severity::error;
    f.where = t.series()[chain[k - 1]].name;
    f.message = fmt::format("{}: dL/dh is exactly 0 at {} and below, while {} receives {:.3g} per element: a layer there "
                            "passes no gradient back (units inactive for the whole batch, or a detach)",
                            when, f.where, t.series()[chain[k]].name, near->grad.rms());
    f.evidence = {{"step", static_cast<double>(st.step)}, {"rms_above", near->grad.rms()}};
    f.remedy = "revive the units: He initialisation, a smaller learning rate, or a leaky ReLU; or remove the detach";
    return f;
  }
  return std::nullopt;
}

// A cut at a layer dead over a window is the dead_layer finding's: told once, there.
std::optional<Finding> depth_finding(const std::optional<Attenuation>& a, const char* when, const StepRecord& st,
                                     const std::vector<std::string>& chain, const DiagnosisInput& in,
                                     const DiagnosisOptions& o, const std::vector<DeadLayer>& dead) {
  if (!a || !a->log10) return std::nullopt;
  const std::string where = chain.front() + " .. " + chain.back();
  if (*a->log10 < -o.vanishing_orders) {
    if (a->underflow)
      if (auto cut = zero_cut_finding(in.trace, st, depth_series(in.trace), when)) {
        const int s = in.trace.find(cut->where);
        if (s >= 0 && is_dead_layer(dead, in.trace.series()[s].layer)) return std::nullopt;
        return cut;
      }
    return vanishing_finding(*a, when, where, false, o.vanishing_orders, in.traits);
  }
  if (compounding_log10(*a) > o.exploding_info_orders) return exploding_finding(*a, when, chain, o, in.traits);
  return std::nullopt;
}

// A vanishing at the start that training overcame: told with its recovery, as information.
Finding recovered(Finding f, const std::optional<Attenuation>& end, const char* span) {
  f.severity = Severity::info;
  if (end && end->log10)
    f.message += fmt::format("; training recovered it: {:.1f} orders across the same {} at the last recorded step",
                             -*end->log10, span);
  if (end && end->log10) f.evidence.emplace_back("attenuation_log10_final", *end->log10);
  return f;
}

// Layers whose forward statistics at the last recorded step pass a threshold, with the worst.
struct UnitGroup {
  std::vector<std::string> layers;
  double worst = 0;
  std::string worst_layer;
  double lowest_derivative = 1e300;
  std::string where() const {
    return layers.size() == 1 ? layers[0] : layers.front() + " .. " + layers.back() + " (" + std::to_string(layers.size()) + " layers)";
  }
};

// The activation a record's forward statistics are of: the one declared for its tap, else the
// model's.
Activation activation_of(const DiagnosisInput& in, const Record& r) {
  const Activation declared = in.trace.series()[r.series].activation;
  return declared != Activation::none ? declared : in.traits.activation;
}

template <class Fraction>
UnitGroup units_over(const DiagnosisInput& in, bool squashing, double threshold, Fraction fraction) {
  const Trace& trace = in.trace;
  UnitGroup g;
  for (const auto& r : trace.steps().back().records) {
    if (!r.forward || is_squashing(activation_of(in, r)) != squashing) continue;
    const double f = fraction(*r.forward);
    if (!(f > threshold)) continue;
    const auto& name = trace.series()[r.series].name;
    g.layers.push_back(name);
    if (f > g.worst) g.worst = f, g.worst_layer = name;
    g.lowest_derivative = std::min(g.lowest_derivative, r.forward->mean_local_derivative);
  }
  return g;
}

}  // namespace

std::vector<Finding> depth_rule(const DiagnosisInput& in, const DiagnosisOptions& o) {
  std::vector<std::string> chain;
  for (int s : depth_series(in.trace)) chain.push_back(in.trace.series()[s].name);
  std::vector<Finding> out;
  if (chain.size() < 2) return out;
  const auto& steps = in.trace.steps();
  const std::vector<DeadLayer> dead = dead_layers(in, o);
  auto first = depth_finding(in.summary.depth, "at the first recorded step", steps.front(), chain, in, o, dead);
  if (steps.size() <= 1) {
    if (first) out.push_back(*first);
    return out;
  }
  auto last = depth_finding(in.summary.depth_final, "at the last recorded step", steps.back(), chain, in, o, dead);
  // A gradient lost at the start and still lost is one finding, not two; one lost at the start
  // that training recovered is told with its recovery, not as an error.
  auto lost = [](const std::optional<Finding>& f) {
    return f && (f->kind == FindingKind::vanishing || f->kind == FindingKind::dead_units);
  };
  const bool still = lost(first) && lost(last) && last->kind == first->kind;
  if (lost(first)) out.push_back(still || lost(last) ? *first : recovered(*first, in.summary.depth_final, "layers"));
  else if (first) out.push_back(*first);
  if (last && !still) out.push_back(*last);
  return out;
}

std::vector<Finding> time_rule(const DiagnosisInput& in, const DiagnosisOptions& o) {
  std::vector<Finding> out;
  const auto time = numbered_series(in.trace, "time");
  if (time.size() < 2) return out;
  const std::string where = "time steps 1 .. " + std::to_string(time.size());
  const double orders = o.time_vanishing_orders;
  const bool several = in.trace.steps().size() > 1;
  const bool at_end = several && vanishes(in.summary.time_final, orders);
  if (vanishes(in.summary.time, orders)) {
    Finding f = *vanishing_finding(*in.summary.time, "at the first recorded step", where, true, orders, in.traits);
    out.push_back(several && !at_end ? recovered(f, in.summary.time_final, "time steps") : f);
  }
  if (at_end) out.push_back(*vanishing_finding(*in.summary.time_final, "after training", where, true, orders, in.traits));
  return out;
}

bool gradient_vanishes(const DiagnosisInput& in, const DiagnosisOptions& o) {
  const bool several_steps = in.trace.steps().size() > 1;
  const bool timed = numbered_series(in.trace, "time").size() >= 2;
  return vanishes(in.summary.depth, o.vanishing_orders) || (several_steps && vanishes(in.summary.depth_final, o.vanishing_orders)) ||
         (timed && vanishes(in.summary.time, o.time_vanishing_orders)) ||
         (timed && several_steps && vanishes(in.summary.time_final, o.time_vanishing_orders));
}

// For ReLU-like units a zero derivative is "inactive", half of them normally: only units
// inactive for the whole batch count. One finding naming every layer concerned: twenty
// findings for twenty layers hide the rest.
std::optional<Finding> dead_units_rule(const DiagnosisInput& in, const DiagnosisOptions& o) {
  if (in.trace.steps().empty()) return std::nullopt;
  const UnitGroup dead = units_over(in, /*squashing=*/false, o.dead_fraction, [](const ActivationStats& a) { return a.dead_fraction; });
  if (dead.layers.empty()) return std::nullopt;
  Finding f;
  f.kind = FindingKind::dead_units;
  f.severity = dead.worst > o.severe_unit_fraction ? Severity::error : Severity::warning;
  f.where = dead.where();
  f.message = fmt::format("{} layer(s) have over {:.0f}% of units inactive for the whole batch (worst {}: {:.0f}%)",
                          dead.layers.size(), 100 * o.dead_fraction, dead.worst_layer, 100 * dead.worst);
  f.evidence = {{"layers", static_cast<double>(dead.layers.size())}, {"worst_dead_fraction", dead.worst},
                {"step", static_cast<double>(in.trace.steps().back().step)}};
  f.remedy = "He initialisation, a smaller learning rate, or leaky ReLU";
  return f;
}

// Saturation is a property of squashing functions.
std::optional<Finding> saturation_rule(const DiagnosisInput& in, const DiagnosisOptions& o) {
  if (in.trace.steps().empty()) return std::nullopt;
  const UnitGroup sat = units_over(in, /*squashing=*/true, o.saturated_fraction, [](const ActivationStats& a) {
    return std::max(a.saturated_fraction, a.dead_fraction);
  });
  if (sat.layers.empty()) return std::nullopt;
  Finding f;
  f.kind = FindingKind::saturation;
  f.severity = sat.worst > o.severe_unit_fraction ? Severity::error : Severity::warning;
  f.where = sat.where();
  f.message = fmt::format("{} layer(s) have over {:.0f}% of activations saturated, derivative under {:.0f}% of its "
                          "maximum (worst {}: {:.0f}%; lowest mean derivative {:.3g})",
                          sat.layers.size(), 100 * o.saturated_fraction, 100 * in.trace.saturation_threshold, sat.worst_layer,
                          100 * sat.worst, sat.lowest_derivative);
  f.evidence = {{"layers", static_cast<double>(sat.layers.size())}, {"worst_saturated_fraction", sat.worst},
                {"lowest_mean_local_derivative", sat.lowest_derivative},
                {"step", static_cast<double>(in.trace.steps().back().step)}};
  // A tap cannot tell a hidden layer from the model's output: both readings are given.
  f.remedy = fmt::format("in a hidden layer: {}; if {} is the model's output (probabilities for a cross-entropy loss), its "
                         "saturation comes from fitting targets near 0 and 1 and needs no change: a loss computed on the "
                         "logits keeps the gradient s - y",
                         in.traits.norm == Norm::batch ? "ReLU activations" : "ReLU activations or batch normalisation",
                         sat.worst_layer);
  return f;
}

namespace {
int skipped_steps(const Trace& t) {
  return static_cast<int>(std::count_if(t.steps().begin(), t.steps().end(), [](const StepRecord& st) { return st.skipped; }));
}
}  // namespace

namespace {
// For a parameter held in parts across ranks: " (in the parts of ranks 1 and 3, of 4)", the
// ranks whose part of it held the first non-finite value; empty otherwise.
// The step the mark names, or null.
const StepRecord* step_of(const Trace& t, const NonFiniteMark& mark) {
  for (const auto& st : t.steps())
    if (st.step == mark.step) return &st;
  return nullptr;
}

// The records of `step` whose gradient has a non-finite element, by name, in recorded order.
std::vector<std::string> nonfinite_names(const Trace& t, const StepRecord& step) {
  std::vector<std::string> names;
  for (const auto& r : step.records)
    if (r.grad.nonfinite > 0) names.push_back(t.series().at(static_cast<std::size_t>(r.series)).name);
  return names;
}

// "first non-finite gradient in X at step S", or where several tensors turned non-finite in the
// same step (the order within a step is the order their gradients were recorded in, not the one
// backward computed them in) "first non-finite gradients at step S, in 3 of 40 recorded tensors (X, Y, Z)".
std::string first_nonfinite_text(const Trace& t, const NonFiniteMark& mark) {
  const StepRecord* step = step_of(t, mark);
  const auto names = step ? nonfinite_names(t, *step) : std::vector<std::string>{};
  if (names.size() <= 1) return fmt::format("first non-finite gradient in {} at step {}", mark.series, mark.step);
  const std::size_t shown = std::min<std::size_t>(names.size(), 3);
  return fmt::format("first non-finite gradients at step {}, in {} of {} recorded tensors ({}{})", mark.step,
                     names.size(), step->records.size(),
                     fmt::join(names.begin(), names.begin() + static_cast<std::ptrdiff_t>(shown), ", "),
                     names.size() > shown ? ", ..." : "");
}

std::string ranks_holding(const Trace& t, const NonFiniteMark& mark) {
  const int series = t.find(mark.series);
  if (series < 0 || t.series()[static_cast<std::size_t>(series)].shards == 0) return "";
  for (const auto& st : t.steps()) {
    if (st.step != mark.step) continue;
    for (const auto& r : st.records) {
      if (r.series != series) continue;
      std::vector<std::string> bad;
      for (std::size_t k = 0; k < r.ranks.size(); ++k)
        if (r.ranks[k].nonfinite > 0) bad.push_back(std::to_string(k));
      if (bad.empty()) return "";
      return fmt::format(" (in the part{} held by rank{} {}, of {} ranks)", bad.size() > 1 ? "s" : "",
                         bad.size() > 1 ? "s" : "", fmt::join(bad, ", "), r.ranks.size());
    }
  }
  return "";
}
}  // namespace

namespace {
constexpr const char* kUninitialisedRemedy =
    "the initialisation and the input, not the step size: the first recorded step produced it, before any update the "
    "Monitor saw (weights never initialised, as after to_empty() without reset_parameters(); a non-finite input; an "
    "operation whose derivative is infinite where it is evaluated, such as sqrt at 0)";

// Whether the first non-finite gradient or loss came at step 0, before any optimizer step, and
// no loss scaler was probing its scale (whose skipped steps are non-finite by design).
bool before_any_update(const DiagnosisInput& in, const std::optional<NonFiniteMark>& grad,
                       std::vector<double>::const_iterator bad_loss) {
  if (in.trace.steps().empty() || in.trace.steps().front().step != 0 || skipped_steps(in.trace) > 0) return false;
  const bool grad_at_0 = grad && grad->step == 0;
  const bool loss_at_0 = bad_loss != in.loss.end() && loss_step(in, static_cast<std::size_t>(bad_loss - in.loss.begin())) == 0;
  return grad_at_0 || loss_at_0;
}
}  // namespace

std::optional<Finding> non_finite_rule(const DiagnosisInput& in, const DiagnosisOptions&) {
  const auto bad = std::find_if(in.loss.begin(), in.loss.end(), [](double v) { return !std::isfinite(v); });
  const auto& grad = in.trace.first_nonfinite();
  if (!grad && bad == in.loss.end()) return std::nullopt;
  Finding f;
  f.kind = FindingKind::non_finite;
  f.severity = Severity::error;
  if (grad) {
    f.where = fmt::format("{} at step {}", grad->series, grad->step);
    f.message = first_nonfinite_text(in.trace, *grad) + ranks_holding(in.trace, *grad);
    f.evidence.emplace_back("step", static_cast<double>(grad->step));
    if (const int skipped = skipped_steps(in.trace); skipped > 0) {
      f.message += fmt::format("; the loss scaler skipped {} of {} recorded steps: the gradient stays non-finite at every "
                               "scale it tried, so the model itself overflows",
                               skipped, in.trace.steps().size());
      f.evidence.emplace_back("skipped_steps", skipped);
    }
  }
  if (bad != in.loss.end()) {
    const auto step = loss_step(in, static_cast<std::size_t>(bad - in.loss.begin()));
    if (f.where.empty()) f.where = fmt::format("loss at step {}", step);
    f.message += std::string(f.message.empty() ? "" : "; ") + fmt::format("loss became non-finite at step {}", step);
    f.evidence.emplace_back("loss_step", static_cast<double>(step));
  }
  f.remedy = before_any_update(in, grad, bad) ? kUninitialisedRemedy
             : in.traits.clipped()            ? "a smaller learning rate"
                                              : "gradient clipping and a smaller learning rate";
  return f;
}

namespace {
// Whether every parameter gradient of the step is exactly 0 (and the step has one).
bool all_gradients_zero(const Trace& t, const StepRecord& st) {
  bool any = false;
  for (const auto& r : st.records) {
    if (t.series()[r.series].kind != SeriesKind::parameter) continue;
    if (r.grad.nonfinite > 0 || r.grad.zeros != r.grad.numel) return false;
    any = true;
  }
  return any;
}
}  // namespace

std::optional<Finding> no_gradient_rule(const DiagnosisInput& in, const DiagnosisOptions& o) {
  const auto& steps = in.trace.steps();
  std::size_t zero = 0, run = 0, best = 0, best_end = 0;
  for (std::size_t i = 0; i < steps.size(); ++i) {
    const bool z = all_gradients_zero(in.trace, steps[i]);
    zero += z;
    run = z ? run + 1 : 0;
    if (run > best) best = run, best_end = i;
  }
  if (best < static_cast<std::size_t>(std::max(1, o.no_gradient_steps))) return std::nullopt;
  const std::int64_t first = steps[best_end + 1 - best].step, last = steps[best_end].step;
  Finding f;
  f.kind = FindingKind::no_gradient;
  f.severity = Severity::error;
  f.where = fmt::format("steps {} .. {}", first, last);
  f.message = fmt::format("every parameter's gradient was exactly 0 on {} of {} recorded steps ({} in a row, steps {} .. {}): "
                          "nothing trains",
                          zero, steps.size(), best, first, last);
  f.evidence = {{"zero_steps", static_cast<double>(zero)}, {"first_step", static_cast<double>(first)},
                {"last_step", static_cast<double>(last)}};
  const std::size_t begin = best_end + 1 - best;
  const bool trained_before = begin > 0 && !all_gradients_zero(in.trace, steps[begin - 1]);
  if (trained_before)
    f.remedy = fmt::format("the gradient was not 0 until step {}: a training update left nothing that passes gradient back "
                           "(every unit of a ReLU-like activation inactive, a saturated sigmoid or softmax): a smaller "
                           "learning rate or a warm-up, gradient clipping",
                           steps[begin - 1].step);
  else
    f.remedy = "make the loss depend on the parameters (no .detach(), .item() or argmax on its path), or revive a dead "
               "network (every ReLU inactive): a smaller learning rate, He initialisation, a leaky ReLU";
  return f;
}

namespace {
// Closed steps were recorded, the Monitor hooked the parameters, and not one parameter gradient
// reached it: the parameters it attached to were replaced or frozen, or their gradients were
// of a kind it does not read. Nullopt when some did, or nothing tells.
std::optional<Finding> no_parameter_gradient(const Trace& t) {
  if (!t.parameter_gradients || t.series_of_kind(SeriesKind::parameter).empty()) return std::nullopt;
  std::int64_t closed = 0;
  for (const auto& st : t.steps()) {
    if (st.partial) continue;
    ++closed;
    for (const auto& r : st.records)
      if (t.series()[r.series].kind == SeriesKind::parameter) return std::nullopt;
  }
  if (closed == 0) return std::nullopt;
  Finding f;
  f.kind = FindingKind::not_recorded;
  f.severity = Severity::warning;
  f.where = "every parameter";
  f.evidence = {{"recorded_steps", static_cast<double>(closed)}, {"parameter_records", 0.0}};
  f.message = fmt::format("{} step{} recorded, but not one parameter gradient: the parameters the Monitor attached to "
                          "were replaced after it (fully_shard, to_empty(), load_state_dict(assign=True)) or frozen, or "
                          "their gradients arrived as tensor subclasses gradflow does not read",
                          closed, closed == 1 ? " was" : "s were");
  f.remedy = "create the Monitor once the model's parameters are final (after fully_shard, to_empty() or "
             "load_state_dict(assign=True)), on the model that trains";
  return f;
}
}  // namespace

std::optional<Finding> not_recorded_rule(const DiagnosisInput& in, const DiagnosisOptions& /*o*/) {
  if (!in.trace.steps().empty()) return no_parameter_gradient(in.trace);
  const std::int64_t pid = in.trace.process_id;
  Finding f;
  f.kind = FindingKind::not_recorded;
  f.severity = Severity::warning;
  f.where = pid > 0 ? fmt::format("process {}", pid) : "the run";
  f.evidence = {{"recorded_steps", 0.0}, {"updated_elsewhere", in.trace.updated_elsewhere ? 1.0 : 0.0}};
  if (pid > 0) f.evidence.emplace_back("process_id", static_cast<double>(pid));
  const std::string here = pid > 0 ? fmt::format(" in process {}", pid) : "";
  if (in.trace.updated_elsewhere) {
    f.message = "no training step was recorded" + here +
                ", yet the model's parameters changed after the Monitor was attached: the model trained in other "
                "processes (torch.multiprocessing workers share its memory), or was changed without a backward "
                "(load_state_dict)";
    f.remedy = "create a Monitor in each process that trains, each with its own out= folder, and save or build each "
               "one's report (docs/distributed.md: \"Workers of torch.multiprocessing\")";
  } else {
    f.message = "no training step was recorded" + here + ": no backward reached the parameters the Monitor was given";
    f.remedy = "attach the Monitor to the model that trains (not a copy: a deepcopy or an unpickled model is not "
               "watched) before its first backward, and call watch(loss) before each backward";
  }
  return f;
}

namespace {
// The largest value the gradient norm held for `span` recorded steps in a row (the smallest of
// each run of `span`), and the first step of that run.
std::pair<double, std::size_t> sustained_peak(const std::vector<double>& g, std::size_t span) {
  double best = 0;
  std::size_t at = 0;
  for (std::size_t i = 0; i + span <= g.size(); ++i) {
    double low = std::numeric_limits<double>::infinity();
    for (std::size_t k = i; k < i + span; ++k) low = std::isfinite(g[k]) ? std::min(low, g[k]) : 0.0;
    if (low > best) best = low, at = i;
  }
  return {best, at};
}
}  // namespace

// A growth held for kSustainedSteps recorded steps, or one the loss diverged with, is an
// explosion; a peak that is gone at once while the loss came back (one batch unlike the others)
// is told as information, the loss rule telling the spike itself.
std::optional<Finding> norm_growth_rule(const DiagnosisInput& in, const DiagnosisOptions& o) {
  constexpr std::size_t kSustainedSteps = 3;
  const auto& g = in.grad_norm;
  if (g.size() < 2 || !std::isfinite(g.front()) || !(g.front() > 0)) return std::nullopt;
  double peak = 0;
  std::size_t at = 0;
  for (std::size_t i = 0; i < g.size(); ++i)
    if (std::isfinite(g[i]) && g[i] > peak) peak = g[i], at = i;
  const double growth = std::log10(peak / g.front());
  if (!(growth > o.norm_growth_orders)) return std::nullopt;
  const auto [held, held_at] = sustained_peak(g, std::min(kSustainedSteps, g.size()));
  const double held_growth = held > 0 ? std::log10(held / g.front()) : -std::numeric_limits<double>::infinity();
  Finding f;
  f.kind = FindingKind::exploding;
  const std::int64_t at_step = recorded_step(in, at);
  f.evidence = {{"growth_log10", growth}, {"peak", peak}, {"peak_step", static_cast<double>(at_step)},
                {"sustained_growth_log10", held_growth}};
  f.remedy = in.traits.clipped() ? "a smaller learning rate" : "gradient clipping (by global norm)";
  const auto loss = unstable_loss_rule(in, o);
  const bool diverged = loss && loss->severity == Severity::error;
  if (held_growth > o.norm_growth_orders || diverged) {
    f.severity = Severity::error;
    f.where = fmt::format("steps {} .. {}", recorded_step(in, 0), at_step);
    f.message = fmt::format("the gradient norm grew {:.1f} orders of magnitude during training (peak {:.3g} at step {}; "
                            "{:.1f} orders held for {} recorded steps from step {})",
                            growth, peak, at_step, held_growth, kSustainedSteps, recorded_step(in, held_at));
    return f;
  }
  f.severity = Severity::info;
  f.where = fmt::format("step {}", at_step);
  f.message = fmt::format("the gradient norm peaked {:.1f} orders of magnitude above its first value at step {} ({:.3g}) "
                          "and fell back within {} recorded steps, the loss not diverging: one step's gradient (a batch "
                          "unlike the others), not a growth",
                          growth, at_step, peak, kSustainedSteps);
  return f;
}

namespace {

// Oscillation is judged on window means: single mini-batch losses rise and fall by 10-30% from
// sampling noise alone. A rise counts when it is also beyond what that noise explains: more than
// twice the standard error of the difference of the two windows' means.
struct Window {
  double mean = 0, variance = 0;
  std::size_t n = 0;
};

Window window_of(const std::vector<double>& v, std::size_t b, std::size_t e) {
  Window w;
  w.mean = mean_of(v, b, e);
  for (std::size_t i = b; i < e && i < v.size(); ++i)
    if (std::isfinite(v[i])) {
      w.variance += (v[i] - w.mean) * (v[i] - w.mean);
      ++w.n;
    }
  w.variance = w.n > 1 ? w.variance / static_cast<double>(w.n - 1) : 0.0;
  return w;
}

std::pair<double, std::size_t> rising_windows(const std::vector<double>& loss, double rise) {
  const std::size_t n = loss.size();
  const std::size_t win = std::max<std::size_t>(5, n / 20);
  std::vector<Window> windows;
  for (std::size_t b = n / 2; b + win <= n; b += win) windows.push_back(window_of(loss, b, b + win));
  int rises = 0, pairs = 0;
  for (std::size_t i = 1; i < windows.size(); ++i) {
    const Window &a = windows[i - 1], &b = windows[i];
    if (!std::isfinite(b.mean) || !std::isfinite(a.mean) || a.n == 0 || b.n == 0) continue;
    ++pairs;
    const double noise = 2 * std::sqrt(a.variance / static_cast<double>(a.n) + b.variance / static_cast<double>(b.n));
    if (b.mean > (1 + rise) * a.mean && b.mean - a.mean > noise) ++rises;
  }
  return {pairs ? static_cast<double>(rises) / pairs : 0.0, win};
}

// The mean loss of the first and of the last tenth of the run.
std::pair<double, double> loss_ends(const std::vector<double>& loss) {
  const std::size_t n = loss.size();
  const std::size_t tenth = std::max<std::size_t>(n / 10, 1);
  return {mean_of(loss, 0, tenth), mean_of(loss, n - tenth, n)};
}

// Whether the number of calls of some module differs between recorded steps: the step's loss
// then sums a varying number of terms (an episode's length, a variable sequence), and two
// steps' losses do not measure the same thing.
bool terms_vary(const Trace& t) {
  std::vector<std::size_t> calls(t.series().size(), 0);
  for (const auto& st : t.steps())
    for (const auto& r : st.records) {
      if (r.profile_axis != ProfileAxis::calls) continue;
      const std::size_t n = std::max<std::size_t>(r.profile.size(), 1);
      auto& seen = calls[static_cast<std::size_t>(r.series)];
      if (seen != 0 && seen != n) return true;
      seen = n;
    }
  return false;
}

// The loss-trend rules judge an objective that training minimises, one step's loss against
// another's: not an adversarial one, not one whose number of terms varies from step to step,
// and not a run too short to have a trend.
bool trend_applies(const DiagnosisInput& in, const DiagnosisOptions& o) {
  return !in.traits.adversarial && in.loss.size() >= static_cast<std::size_t>(o.min_steps) && !terms_vary(in.trace);
}

// The loss's level before a spike: the median of the recorded losses just before the first one
// past divergence_factor × the first loss (max(5, n/20) of them at most). A run is judged against
// where it was when the spike came, not against a start that already holds an early spike, nor
// against the untrained start of a run whose spike came late.
struct LossLevel {
  double median = 0;
  std::size_t first = 0, last = 0;  // the losses it is the median of
};

LossLevel level_before(const std::vector<double>& loss, std::size_t spike) {
  const std::size_t window = std::max<std::size_t>(5, loss.size() / 20);
  const std::size_t first = spike > window ? spike - window : 0;
  std::vector<double> v;
  for (std::size_t i = first; i < spike; ++i)
    if (std::isfinite(loss[i])) v.push_back(loss[i]);
  if (v.empty()) return {loss.front(), 0, 0};
  std::sort(v.begin(), v.end());
  const double median = v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
  return {median, first, spike - 1};
}

// Layers that received gradient during the run and none at its end: killed, and not revived.
std::vector<std::string> killed_layers(const DiagnosisInput& in, const DiagnosisOptions& o) {
  std::vector<std::string> out;
  for (const auto& d : dead_layers(in, o))
    if (d.at_end && d.last_alive_step >= 0) out.push_back(d.layer);
  return out;
}

// A loss that passed divergence_factor × its first value: recovered when the last tenth of the run
// is back within rising_factor of its level before the spike and no layer the blow-up killed is
// still dead at the end (a warning); diverged otherwise (an error).
Finding diverged_or_spiked(const DiagnosisInput& in, const DiagnosisOptions& o, double first, double worst) {
  const std::size_t n = in.loss.size();
  const auto peak = std::find(in.loss.begin(), in.loss.end(), worst) - in.loss.begin();
  const auto spike = static_cast<std::size_t>(
      std::find_if(in.loss.begin(), in.loss.end(), [&](double v) { return v > o.divergence_factor * first; }) - in.loss.begin());
  const LossLevel level = level_before(in.loss, spike);
  const double end = loss_ends(in.loss).second;
  const std::vector<std::string> killed = killed_layers(in, o);
  const std::string level_text =
      level.last > level.first ? fmt::format("its level before the spike, the median of steps {} .. {}", loss_step(in, level.first),
                                             loss_step(in, level.last))
                               : fmt::format("its level before the spike at step {}", loss_step(in, level.first));
  Finding f;
  f.kind = FindingKind::unstable_loss;
  f.where = fmt::format("steps {} .. {}", loss_step(in, 0), loss_step(in, n - 1));
  f.evidence = {{"loss_first", first}, {"loss_before_spike", level.median}, {"loss_max", worst},
                {"spike_step", static_cast<double>(loss_step(in, spike))}, {"peak_step", static_cast<double>(loss_step(in, peak))}};
  if (std::isfinite(end)) f.evidence.emplace_back("loss_end", end);
  f.remedy = in.traits.clipped() ? "a smaller learning rate" : "a smaller learning rate or gradient clipping";
  // Near its level, or having kept at least half of what training had gained before the spike
  // (from the first loss down to that level): a loss near 0 before the spike may end at twice it.
  const bool kept_progress = first > level.median && end <= level.median + 0.5 * (first - level.median);
  const bool back = std::isfinite(end) && (end <= o.rising_factor * level.median || kept_progress);
  if (back && killed.empty()) {
    f.severity = Severity::warning;
    f.message = fmt::format("the loss spiked to {:.3g} ({:.3g}x {}) at step {} and recovered: {:.4g} over the last tenth of "
                            "the run, {:.3g}x that level",
                            worst, worst / level.median, level_text, loss_step(in, peak), end, end / level.median);
    return f;
  }
  f.severity = Severity::error;
  f.message = fmt::format("the loss diverged: it reached {:.3g} at step {}, {:.3g}x {}, and ", worst, loss_step(in, peak),
                          worst / level.median, level_text);
  if (!std::isfinite(end))
    f.message += "the run ends on a non-finite loss";
  else if (!back)
    f.message += fmt::format("did not come back: {:.4g} over the last tenth of the run, {:.3g}x that level", end,
                             end / level.median);
  else
    f.message += fmt::format("did not recover, though it ends at {:.4g} ({:.3g}x that level): {} received gradient "
                             "before and none at the end of the run (dead_layer)",
                             end, end / level.median, join(killed));
  return f;
}

std::optional<Finding> rising_finding(const DiagnosisInput& in, const DiagnosisOptions& o) {
  const auto [start, end] = loss_ends(in.loss);
  if (!(std::isfinite(start) && std::isfinite(end) && start > 0 && end > o.rising_factor * start)) return std::nullopt;
  Finding f;
  f.kind = FindingKind::unstable_loss;
  f.severity = Severity::warning;
  f.where = fmt::format("steps {} .. {}", loss_step(in, 0), loss_step(in, in.loss.size() - 1));
  f.message = fmt::format("the loss rose: {:.4g} -> {:.4g} ({:+.0f}%) from the first to the last tenth of the run", start, end,
                          100 * (end - start) / start);
  f.evidence = {{"loss_start", start}, {"loss_end", end}};
  f.remedy = "a smaller learning rate; check that the loss is the one to minimise";
  return f;
}

}  // namespace

std::optional<Finding> unstable_loss_rule(const DiagnosisInput& in, const DiagnosisOptions& o) {
  const auto& loss = in.loss;
  const std::size_t n = loss.size();
  if (!trend_applies(in, o)) return std::nullopt;
  const double first = loss.front();
  double worst = 0;
  for (double v : loss)
    if (std::isfinite(v)) worst = std::max(worst, v);
  Finding f;
  f.kind = FindingKind::unstable_loss;
  if (std::isfinite(first) && first > 0 && worst > o.divergence_factor * first) return diverged_or_spiked(in, o, first, worst);
  const auto [rise_fraction, win] = rising_windows(loss, o.oscillation_rise);
  if (!(rise_fraction > o.oscillation_fraction)) return rising_finding(in, o);
  f.severity = Severity::warning;
  f.where = fmt::format("steps {} .. {}", loss_step(in, n / 2), loss_step(in, n - 1));
  f.message = fmt::format("the loss oscillates: {:.0f}% of the second half's windows of {} losses raise it by over {:.0f}%",
                          100 * rise_fraction, win, 100 * o.oscillation_rise);
  f.evidence = {{"rise_fraction", rise_fraction}};
  f.remedy = "a smaller learning rate, a larger batch, or gradient clipping";
  return f;
}

std::optional<Finding> stalled_rule(const DiagnosisInput& in, const DiagnosisOptions& o) {
  if (!trend_applies(in, o)) return std::nullopt;
  const std::size_t n = in.loss.size();
  const auto [start, end] = loss_ends(in.loss);
  // Barely moved, either way: a loss that rises a lot is not stalled (the rising rule says so).
  if (!(std::isfinite(start) && std::isfinite(end) && start > 0 && std::abs(end - start) / start < o.stall_improvement))
    return std::nullopt;
  Finding f;
  f.kind = FindingKind::stalled;
  f.severity = Severity::warning;
  f.where = fmt::format("steps {} .. {}", loss_step(in, 0), loss_step(in, n - 1));
  f.message = fmt::format("the loss barely moved: {:.4g} -> {:.4g} ({:+.1f}%)", start, end, 100 * (end - start) / start);
  f.evidence = {{"loss_start", start}, {"loss_end", end}};
  if (auto none = no_gradient_rule(in, o))
    f.remedy = "nothing receives gradient (" + none->where + ", see no_gradient): " + none->remedy;
  else if (auto dead = dead_layer_rule(in, o))
    f.remedy = "layers receive no gradient at all (" + dead->where + ", see dead_layer): " + dead->remedy;
  else
    f.remedy = gradient_vanishes(in, o) ? "the gradient does not reach the early layers: " + vanishing_remedy(in.traits)
                                        : "a larger learning rate or more steps";
  return f;
}

}  // namespace gradflow::detail
