#include "gradflow/diagnosis.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include <fmt/format.h>

#include "gradflow/error.h"
#include "gradflow/summary.h"

namespace gradflow {

namespace {
struct KindName {
  FindingKind kind;
  const char* name;
};
constexpr KindName kKinds[] = {
    {FindingKind::vanishing, "vanishing"},   {FindingKind::exploding, "exploding"},
    {FindingKind::dead_units, "dead_units"}, {FindingKind::saturation, "saturation"},
    {FindingKind::non_finite, "non_finite"}, {FindingKind::stalled, "stalled"},
    {FindingKind::unstable_loss, "unstable_loss"},
};
}  // namespace

const char* to_string(FindingKind kind) {
  for (const auto& k : kKinds)
    if (k.kind == kind) return k.name;
  return "vanishing";
}

const char* to_string(Severity s) {
  switch (s) {
    case Severity::info: return "info";
    case Severity::warning: return "warning";
    case Severity::error: return "error";
  }
  return "info";
}

FindingKind finding_kind_from_string(const std::string& name) {
  for (const auto& k : kKinds)
    if (name == k.name) return k.kind;
  std::string valid;
  for (const auto& k : kKinds) valid += std::string(valid.empty() ? "" : ", ") + k.name;
  throw UsageError("unknown finding kind '" + name + "': choose from " + valid);
}

const std::vector<FindingKind>& all_finding_kinds() {
  static const std::vector<FindingKind> v = [] {
    std::vector<FindingKind> out;
    for (const auto& k : kKinds) out.push_back(k.kind);
    return out;
  }();
  return v;
}

bool has_any(const std::vector<Finding>& findings, const std::vector<FindingKind>& kinds) {
  for (const auto& f : findings)
    if (std::find(kinds.begin(), kinds.end(), f.kind) != kinds.end()) return true;
  return false;
}

namespace {

bool squashing(const std::string& act) { return act == "sigmoid" || act == "tanh" || act == "softsign"; }

std::string vanishing_remedy(const ModelTraits& t) {
  if (t.recurrent) {
    if (t.cell == "lstm" || t.cell == "gru")
      return "gated cells learn to carry gradient through their gates: train longer, or set the LSTM "
             "forget bias to 1; orthogonal recurrent init helps at the start";
    return "use an LSTM or GRU cell; orthogonal or identity (IRNN) recurrent init";
  }
  std::vector<std::string> r;
  if (squashing(t.activation)) r.push_back("ReLU activations with He initialisation");
  else if (t.activation == "relu" && t.init != "he_normal" && t.init != "he_uniform") r.push_back("He initialisation");
  if (!t.batch_norm) r.push_back("batch normalisation");
  if (!t.residual) r.push_back("residual connections");
  if (r.empty()) return "a shallower network or a different initialisation";
  std::string out;
  for (std::size_t i = 0; i < r.size(); ++i) out += (i ? (i + 1 == r.size() ? " or " : ", ") : "") + r[i];
  return out;
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

void attenuation_findings(std::vector<Finding>& out, const std::optional<Attenuation>& a, const char* when,
                          const std::string& where, bool time, const ModelTraits& traits,
                          const DiagnosisOptions& o) {
  if (!a || !a->log10) return;
  const double lg = *a->log10;
  const double vanish = time ? o.time_vanishing_orders : o.vanishing_orders;
  const char* axis = time ? "time steps" : "layers";
  if (lg < -vanish) {
    Finding f;
    f.kind = FindingKind::vanishing;
    f.severity = lg < -2 * vanish ? Severity::error : Severity::warning;
    f.where = where;
    f.message = fmt::format("{}: dL/dh {} {:.1f} orders of magnitude across {} {} ({}x per {})", when,
                            a->underflow ? "lost at least" : "shrinks by", -lg, a->span, axis,
                            fmt::format("{:.3g}", a->gain().value_or(0.0)), time ? "step" : "layer");
    f.evidence = {{"attenuation_log10", lg}, {"span", a->span}, {"norm_far", a->from}, {"norm_near", a->to}};
    if (a->underflow) f.evidence.emplace_back("underflow", 1.0);
    f.remedy = vanishing_remedy(traits);
    out.push_back(std::move(f));
  } else if (!time && lg > 1.0) {
    Finding f;
    f.kind = FindingKind::exploding;
    f.severity = lg > 2 * o.exploding_orders ? Severity::error
                 : lg > o.exploding_orders  ? Severity::warning
                                            : Severity::info;
    f.where = where;
    f.message = fmt::format("{}: dL/dh grows {:.1f} orders of magnitude toward the input across {} layers", when,
                            lg, a->span);
    f.evidence = {{"attenuation_log10", lg}, {"span", a->span}, {"norm_far", a->from}, {"norm_near", a->to}};
    f.remedy = traits.batch_norm ? "expected with batch norm and ReLU (Yang et al. 2019); gradient clipping if it hurts"
                                 : "a smaller initialisation (He for ReLU, Xavier for tanh) or gradient clipping";
    out.push_back(std::move(f));
  }
}

}  // namespace

std::vector<Finding> diagnose(const Trace& trace, const std::vector<double>& loss,
                              const std::vector<double>& grad_norm, const ModelTraits& traits,
                              const DiagnosisOptions& o) {
  return diagnose(trace, summarize(trace, loss, std::numeric_limits<float>::denorm_min()), loss, grad_norm, traits, o);
}

std::vector<Finding> diagnose(const Trace& trace, const RunSummary& s, const std::vector<double>& loss,
                              const std::vector<double>& grad_norm, const ModelTraits& traits,
                              const DiagnosisOptions& o) {
  std::vector<Finding> out;
  const auto depth = depth_series(trace);
  const std::string depth_where =
      depth.size() >= 2 ? trace.series()[depth.front()].name + " .. " + trace.series()[depth.back()].name : "";
  attenuation_findings(out, s.depth, "at the first recorded step", depth_where, false, traits, o);
  const bool init_vanished = !out.empty() && out.back().kind == FindingKind::vanishing;
  if (trace.steps().size() > 1) {
    std::vector<Finding> final_findings;
    attenuation_findings(final_findings, s.depth_final, "at the last recorded step", depth_where, false, traits, o);
    for (auto& f : final_findings)
      if (!(init_vanished && f.kind == FindingKind::vanishing)) out.push_back(std::move(f));
  }
  const auto time = numbered_series(trace, "time");
  if (time.size() >= 2) {
    const std::string where = "time steps 1 .. " + std::to_string(time.size());
    attenuation_findings(out, s.time, "at the first recorded step", where, true, traits, o);
    if (trace.steps().size() > 1) attenuation_findings(out, s.time_final, "after training", where, true, traits, o);
  }

  // Dead and saturated units, from taps with forward statistics at the last recorded step. One
  // finding per kind, naming every layer concerned: twenty findings for twenty layers hide the rest.
  if (!trace.steps().empty()) {
    const auto& last = trace.steps().back();
    const bool squash = squashing(traits.activation);
    struct Group {
      std::vector<std::string> layers;
      double worst = 0, derivative = 1e300;
      std::string worst_layer;
    } dead, sat;
    for (const auto& r : last.records) {
      if (!r.forward) continue;
      const auto& name = trace.series()[r.series].name;
      // For ReLU-like units a zero derivative is "inactive", half of them normally: only units
      // inactive for the whole batch count. Saturation is a property of squashing functions.
      if (!squash && r.forward->dead_fraction > o.dead_fraction) {
        dead.layers.push_back(name);
        if (r.forward->dead_fraction > dead.worst) dead.worst = r.forward->dead_fraction, dead.worst_layer = name;
      }
      if (squash && std::max(r.forward->saturated_fraction, r.forward->dead_fraction) > o.saturated_fraction) {
        sat.layers.push_back(name);
        const double f = std::max(r.forward->saturated_fraction, r.forward->dead_fraction);
        if (f > sat.worst) sat.worst = f, sat.worst_layer = name;
        sat.derivative = std::min(sat.derivative, r.forward->mean_local_derivative);
      }
    }
    auto where_of = [](const std::vector<std::string>& v) {
      return v.size() == 1 ? v[0] : v.front() + " .. " + v.back() + " (" + std::to_string(v.size()) + " layers)";
    };
    if (!dead.layers.empty()) {
      Finding f;
      f.kind = FindingKind::dead_units;
      f.severity = dead.worst > 0.9 ? Severity::error : Severity::warning;
      f.where = where_of(dead.layers);
      f.message = fmt::format("{} layer(s) have over {:.0f}% of units inactive for the whole batch (worst {}: {:.0f}%)",
                              dead.layers.size(), 100 * o.dead_fraction, dead.worst_layer, 100 * dead.worst);
      f.evidence = {{"layers", static_cast<double>(dead.layers.size())}, {"worst_dead_fraction", dead.worst},
                    {"step", static_cast<double>(last.step)}};
      f.remedy = "He initialisation, a smaller learning rate, or leaky ReLU";
      out.push_back(std::move(f));
    }
    if (!sat.layers.empty()) {
      Finding f;
      f.kind = FindingKind::saturation;
      f.severity = sat.worst > 0.9 ? Severity::error : Severity::warning;
      f.where = where_of(sat.layers);
      f.message = fmt::format("{} layer(s) have over {:.0f}% of activations saturated, derivative under 10% of its "
                              "maximum (worst {}: {:.0f}%; lowest mean derivative {:.3g})",
                              sat.layers.size(), 100 * o.saturated_fraction, sat.worst_layer, 100 * sat.worst, sat.derivative);
      f.evidence = {{"layers", static_cast<double>(sat.layers.size())}, {"worst_saturated_fraction", sat.worst},
                    {"lowest_mean_local_derivative", sat.derivative}, {"step", static_cast<double>(last.step)}};
      f.remedy = traits.batch_norm ? "ReLU activations" : "ReLU activations or batch normalisation";
      out.push_back(std::move(f));
    }
  }

  // Non-finite gradients or losses.
  std::optional<std::size_t> bad_loss;
  for (std::size_t i = 0; i < loss.size(); ++i)
    if (!std::isfinite(loss[i])) {
      bad_loss = i;
      break;
    }
  if (trace.first_nonfinite() || bad_loss) {
    Finding f;
    f.kind = FindingKind::non_finite;
    f.severity = Severity::error;
    if (trace.first_nonfinite()) {
      f.where = fmt::format("{} at step {}", trace.first_nonfinite()->series, trace.first_nonfinite()->step);
      f.message = "first non-finite gradient in " + f.where;
      f.evidence.emplace_back("step", static_cast<double>(trace.first_nonfinite()->step));
    }
    if (bad_loss) {
      if (f.where.empty()) f.where = fmt::format("loss at step {}", *bad_loss);
      f.message += std::string(f.message.empty() ? "" : "; ") + fmt::format("loss became non-finite at step {}", *bad_loss);
      f.evidence.emplace_back("loss_step", static_cast<double>(*bad_loss));
    }
    f.remedy = traits.clipped ? "a smaller learning rate" : "gradient clipping and a smaller learning rate";
    out.push_back(std::move(f));
  }

  // The global gradient norm blowing up during training.
  if (grad_norm.size() >= 2 && std::isfinite(grad_norm.front()) && grad_norm.front() > 0) {
    double peak = 0;
    std::size_t at = 0;
    for (std::size_t i = 0; i < grad_norm.size(); ++i)
      if (std::isfinite(grad_norm[i]) && grad_norm[i] > peak) {
        peak = grad_norm[i];
        at = i;
      }
    const double growth = std::log10(peak / grad_norm.front());
    if (growth > o.norm_growth_orders) {
      Finding f;
      f.kind = FindingKind::exploding;
      f.severity = Severity::error;
      f.where = fmt::format("steps 0 .. {}", at);
      f.message = fmt::format("the gradient norm grew {:.1f} orders of magnitude during training (peak {:.3g} at step {})",
                              growth, peak, at);
      f.evidence = {{"growth_log10", growth}, {"peak", peak}, {"peak_step", static_cast<double>(at)}};
      f.remedy = traits.clipped ? "a smaller learning rate" : "gradient clipping (by global norm)";
      out.push_back(std::move(f));
    }
  }

  // Loss trends.
  const std::size_t n = loss.size();
  if (n >= static_cast<std::size_t>(o.min_steps)) {
    const std::size_t tenth = std::max<std::size_t>(n / 10, 1);
    const double start = mean_of(loss, 0, tenth), end = mean_of(loss, n - tenth, n);
    const double first = loss.front();
    double worst = 0;
    for (double v : loss)
      if (std::isfinite(v)) worst = std::max(worst, v);
    // Oscillation is judged on window means: single mini-batch losses rise and fall by 10-30%
    // from sampling noise alone.
    const std::size_t win = std::max<std::size_t>(5, n / 20);
    std::vector<double> means;
    for (std::size_t b = n / 2; b + win <= n; b += win) means.push_back(mean_of(loss, b, b + win));
    int rises = 0, pairs = 0;
    for (std::size_t i = 1; i < means.size(); ++i)
      if (std::isfinite(means[i]) && std::isfinite(means[i - 1])) {
        ++pairs;
        if (means[i] > 1.25 * means[i - 1]) ++rises;
      }
    const double rise_fraction = pairs ? static_cast<double>(rises) / pairs : 0.0;
    if (std::isfinite(first) && first > 0 && worst > o.divergence_factor * first) {
      Finding f;
      f.kind = FindingKind::unstable_loss;
      f.severity = Severity::error;
      f.where = fmt::format("steps 0 .. {}", n - 1);
      f.message = fmt::format("the loss diverged: it reached {:.3g}, {:.0f}x its first value", worst, worst / first);
      f.evidence = {{"loss_first", first}, {"loss_max", worst}};
      f.remedy = "a smaller learning rate or gradient clipping";
      out.push_back(std::move(f));
    } else if (rise_fraction > o.oscillation_fraction) {
      Finding f;
      f.kind = FindingKind::unstable_loss;
      f.severity = Severity::warning;
      f.where = fmt::format("steps {} .. {}", n / 2, n - 1);
      f.message = fmt::format("the loss oscillates: {:.0f}% of {}-step windows in the second half raise it by over 25%",
                              100 * rise_fraction, win);
      f.evidence = {{"rise_fraction", rise_fraction}};
      f.remedy = "a smaller learning rate, a larger batch, or gradient clipping";
      out.push_back(std::move(f));
    }
    if (std::isfinite(start) && std::isfinite(end) && start > 0 && (start - end) / start < o.stall_improvement) {
      Finding f;
      f.kind = FindingKind::stalled;
      f.severity = Severity::warning;
      f.where = fmt::format("steps 0 .. {}", n - 1);
      f.message = fmt::format("the loss barely moved: {:.4g} -> {:.4g} ({:+.1f}%)", start, end, 100 * (end - start) / start);
      f.evidence = {{"loss_start", start}, {"loss_end", end}};
      const bool vanished = has_any(out, {FindingKind::vanishing});
      f.remedy = vanished ? "the gradient does not reach the early layers: " + vanishing_remedy(traits)
                          : "a larger learning rate or more steps";
      out.push_back(std::move(f));
    }
  }
  return out;
}

}  // namespace gradflow
