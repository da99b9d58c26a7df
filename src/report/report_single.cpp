// The report for one model, or a few models of one program side by side (a GAN's generator and
// discriminator): how the gradient flowed through each, with no comparison between them.
#include <algorithm>
#include <cmath>
#include <map>
#include <set>

#include <fmt/format.h>

#include "gradflow/sharpness.h"
#include "report/figures.h"
#include "report/report_model.h"
#include "distributed/report_ranks.h"
#include "report/svg.h"
#include "util/text.h"

namespace gradflow {

using detail::html_escape;
using detail::LineChart;
using detail::LineSeries;

namespace {

// Every parameter in forward order, named after itself: biases and normalisation weights too.
struct Layers {
  std::vector<int> series;
  std::vector<std::string> names;
};

Layers parameter_layers(const Trace& t) {
  Layers l;
  for (int s : parameters_in_forward_order(t)) {
    l.series.push_back(s);
    l.names.push_back(t.series()[s].name);
  }
  return l;
}

double rms_at(const StepRecord& st, int series) {
  const Record* r = st.find(series);
  return r ? r->grad.rms() : std::numeric_limits<double>::quiet_NaN();
}

// The update the optimizer applied when the Monitor measured it (MonitorOptions::update_norms),
// else the gradient, over the weight's norm.
struct Ratio {
  bool updates = false;
  double operator()(const StepRecord& st, int series) const {
    const Record* r = st.find(series);
    if (!r || !(r->weight_norm > 0)) return std::numeric_limits<double>::quiet_NaN();
    return (updates ? r->update_norm : r->grad.norm()) / r->weight_norm;
  }
  const char* name() const { return updates ? "update-to-weight ratio |dW| / |W|" : "gradient-to-weight ratio |dL/dW| / |W|"; }
};

Ratio ratio_of(const RunRecord& r) {
  Ratio q;
  for (const auto& st : r.trace.steps())
    for (const auto& rec : st.records) q.updates = q.updates || std::isfinite(rec.update_norm);
  return q;
}

// The RMS of dL/dW (or dL/d(output)) per layer at the first and the last recorded step, layers
// named: per element, so that layers of different sizes compare.
std::string profile_chart(const RunRecord& r, const std::vector<int>& chain, const std::vector<std::string>& names,
                          const std::string& what) {
  const auto& steps = r.trace.steps();
  LineChart c = detail::line_chart("RMS of " + what + " per layer, in forward order", "layer", "RMS (log scale)",
                                   "Per element (‖g‖ / sqrt(elements)), so that layers of different sizes compare. A line "
                                   "that falls toward the first layers is a vanishing gradient; one that rises, an "
                                   "exploding one.");
  c.x_names = names;
  for (int which = 0; which < (steps.size() > 1 ? 2 : 1); ++which) {
    const StepRecord& st = which == 0 ? steps.front() : steps.back();
    LineSeries s;
    s.label = fmt::format("step {}", st.step);
    s.dashed = which == 0;
    for (std::size_t k = 0; k < chain.size(); ++k) {
      s.x.push_back(static_cast<double>(k + 1));
      s.y.push_back(rms_at(st, chain[k]));
      s.tips.push_back(fmt::format("{} at step {}: RMS {:.4g}", names[k], st.step, s.y.back()));
    }
    c.series.push_back(std::move(s));
  }
  return detail::render(c);
}

// One line per layer over the recorded steps.
template <class Value>
std::string per_layer_over_steps(const RunRecord& r, const Layers& layers, LineChart c, Value value) {
  for (std::size_t k = 0; k < layers.series.size(); ++k) {
    LineSeries s;
    s.label = layers.names[k];
    s.markers = false;
    for (const auto& st : r.trace.steps()) {
      s.x.push_back(static_cast<double>(st.step));
      s.y.push_back(value(st, layers.series[k]));
    }
    c.series.push_back(std::move(s));
  }
  return detail::render(c);
}

bool all_positive(const std::vector<double>& v) {
  return std::all_of(v.begin(), v.end(), [](double x) { return !std::isfinite(x) || x > 0; });
}

std::string loss_chart(const RunRecord& r) {
  LineChart c = detail::line_chart("Loss at each recorded step", "step", "loss (log scale)", "");
  LineSeries total;
  total.label = "loss";
  total.markers = false;
  std::size_t parts = 0;
  for (const auto& st : r.trace.steps()) parts = std::max(parts, st.losses.size());
  std::vector<LineSeries> each(parts > 1 ? parts : 0);
  for (std::size_t k = 0; k < each.size(); ++k) each[k].label = fmt::format("loss {}", k + 1), each[k].markers = false, each[k].dashed = true;
  for (const auto& st : r.trace.steps()) {
    total.x.push_back(static_cast<double>(st.step));
    total.y.push_back(st.loss.value_or(std::numeric_limits<double>::quiet_NaN()));
    for (std::size_t k = 0; k < each.size(); ++k) {
      each[k].x.push_back(static_cast<double>(st.step));
      each[k].y.push_back(k < st.losses.size() ? st.losses[k] : std::numeric_limits<double>::quiet_NaN());
    }
  }
  if (each.size() > 1) c.note = "The step's loss is the sum of the losses watched in it; dashed: each one.";
  c.series.push_back(std::move(total));
  for (auto& s : each) c.series.push_back(std::move(s));
  // A loss that reaches 0 or below (a negative log-likelihood of densities, a policy's
  // objective) is drawn on a linear axis: a log axis would drop it.
  for (const auto& s : c.series) c.log_y = c.log_y && all_positive(s.y);
  if (!c.log_y) c.y_label = "loss";
  return detail::render(c);
}

// The gradient at each call of a module within a step (a cell at each time step, a policy at
// each environment step), or at each time step of a recurrent module's output: one line per
// module with a profile, at the last recorded step that has one.
std::string calls_chart(const RunRecord& r, ProfileAxis axis) {
  const std::size_t kMaxLines = 12;
  LineChart c = detail::line_chart(axis == ProfileAxis::calls ? "dL/d(output) at each call of a module within a step"
                                                              : "dL/d(output) at each time step of a recurrent module",
                                   axis == ProfileAxis::calls ? "call, in forward order" : "time step", "‖g‖ (log scale)",
                                   axis == ProfileAxis::calls
                                       ? "A module called several times in a step is one layer: these are its calls "
                                         "(time steps, environment steps, a twin's branches), not depth."
                                       : "");
  for (int series : r.trace.series_of_kind(SeriesKind::activation)) {
    if (c.series.size() == kMaxLines) break;
    for (auto st = r.trace.steps().rbegin(); st != r.trace.steps().rend(); ++st) {
      const Record* rec = st->find(series);
      if (!rec || rec->profile.empty() || rec->profile_axis != axis) continue;
      LineSeries s;
      s.label = fmt::format("{} (step {})", r.trace.series()[series].name, st->step);
      s.markers = rec->profile.size() <= 60;
      for (std::size_t k = 0; k < rec->profile.size(); ++k) {
        s.x.push_back(static_cast<double>(k + 1));
        s.y.push_back(rec->profile[k]);
      }
      c.series.push_back(std::move(s));
      break;
    }
  }
  return c.series.empty() ? std::string() : detail::render(c);
}

// Modules with parameters whose output has no series, and why.
std::string unrecorded_outputs_note(const Trace& t);

// What a layer output found by the graph walk is.
std::string walked_outputs_note(const Trace& t) {
  const auto outputs = t.series_of_kind(SeriesKind::activation);
  const auto walked = std::count_if(outputs.begin(), outputs.end(), [&](int s) { return t.series()[s].found_by_walk; });
  if (walked == 0) return "";
  return fmt::format("{} of the {} layer outputs were found by walking the autograd graph: each is dL/d(output of the op "
                     "that applies the module's weights), the module's own output unless its forward computes on after "
                     "that op (an activation or an aggregation inside it). Monitor::layer_output names a module's output "
                     "exactly.",
                     walked, outputs.size());
}

// Parameters held in parts across ranks: what their figures are, and whose the layer outputs are.
std::string sharded_note(const Trace& t) {
  const auto params = t.series_of_kind(SeriesKind::parameter);
  const auto sharded = std::count_if(params.begin(), params.end(), [&](int s) { return t.series()[s].shards > 0; });
  if (sharded == 0) return "";
  return fmt::format("{} of the {} parameters are held in parts across ranks (DTensor: FSDP2, tensor parallelism): "
                     "their figures are of the whole gradient, combined from every rank's part (a part replicated on "
                     "several ranks counted once), and each rank's part is in the trace as its local figures. The "
                     "loss is rank 0's own, and the layer outputs are what rank 0's forward hooks saw: its share of "
                     "the batch or of the features.",
                     sharded, params.size());
}

// The notes on the layer outputs: how they were found, and which modules have none.
std::vector<std::string> outputs_notes(const Trace& t) {
  std::vector<std::string> notes;
  for (std::string note : {sharded_note(t), walked_outputs_note(t), unrecorded_outputs_note(t)})
    if (!note.empty()) notes.push_back(std::move(note));
  return notes;
}

std::string unrecorded_outputs_note(const Trace& t) {
  std::set<std::string> recorded, missing;
  // A series named in a forward whose gradient never arrived has no record: it is missing too.
  for (const auto& st : t.steps())
    for (const auto& r : st.records)
      if (t.series()[r.series].kind == SeriesKind::activation) recorded.insert(t.series()[r.series].layer);
  // Layer outputs not named at all (a built-in recurrent model's taps instead): nothing to miss.
  if (t.series_of_kind(SeriesKind::activation).empty() && !t.layer_outputs) return "";
  for (int s : t.series_of_kind(SeriesKind::parameter))
    if (!recorded.count(t.series()[s].layer)) missing.insert(t.series()[s].layer);
  if (missing.empty()) return "";
  return "No layer-output series for " + detail::join(std::vector<std::string>(missing.begin(), missing.end())) +
         ": the module was not called in any recorded forward (its parent uses its parameters directly, as "
         "nn.MultiheadAttention uses out_proj's, or the program computes with the weights through functional calls "
         "of its own), or its output was a DTensor whose gradient reached it whole or in summands on every rank (a "
         "tensor-parallel plan converts it after the module returns it: no rank's part is its own share), or its "
         "gradient arrived as a tensor subclass, which gradflow does not read, or its "
         "forward ran inside a torch.compile graph, where a forward hook sees no output (a step "
         "run eagerly records it), or its output was not on the path of the watched loss. Its parameters are in the "
         "parameter views.";
}

// Steps that closed without an optimizer step while others closed with one: auto_step made each
// backward a step, and the program ran several backwards per optimizer step.
std::string accumulation_sentence(const Trace& t) {
  std::int64_t with = 0, without = 0;
  for (const auto& st : t.steps()) {
    if (st.partial || st.skipped) continue;
    ++(st.optimizer_step >= 0 ? with : without);
  }
  if (with == 0 || without == 0) return "";
  return fmt::format("{} of the {} recorded steps closed without an optimizer step: the Monitor made each backward a "
                     "step (auto_step), so where backwards accumulate into one optimizer step (gradient accumulation over "
                     "micro-batches) a step's produced gradient is .grad as its backward left it (the micro-batches so "
                     "far) while its loss and layer outputs are that backward's alone. For one recorded step per "
                     "optimizer step, attach with auto_step=False and call step() after the optimizer's step.",
                     without, with + without);
}

// How much the optimizer's step changed the gradient's norm, over the changed steps whose norms
// are finite (a non-finite gradient has no factor).
std::string applied_factor_clause(const AppliedSummary& a) {
  if (a.changed_steps == 0) return "";
  if (a.finite_factors == 0) return ": on none of them were both norms finite";
  const std::string some = a.finite_factors < a.changed_steps
                               ? fmt::format(" on the {} with both norms finite", a.finite_factors)
                               : std::string();
  return fmt::format(": the applied norm was {:.3g}× to {:.3g}× the produced one{} (median {:.3g}×)", a.smallest_factor,
                     a.largest_factor, some, a.median_factor);
}

// Which gradient the figures are, in words, and what the optimizer applied instead.
std::vector<std::string> gradient_sentences(const RunRecord& r) {
  std::vector<std::string> out{"Gradient figures: " + detail::join(gradient_labels(r.trace), "; ") + "."};
  // Where several processes train one model, each report says whose recording it is.
  if (r.trace.process_id > 0) out.push_back(fmt::format("Recorded by process {}.", r.trace.process_id));
  if (const auto& a = r.summary.applied)
    out.push_back(fmt::format("The optimizer step changed the gradient on {} of {} steps (clipping, unscaling or averaging "
                              "between backward and the step){}; the charts show the gradient backward produced, and the "
                              "global norm chart the one applied by the optimizer beside it.",
                              a->changed_steps, a->steps, applied_factor_clause(*a)));
  if (r.summary.skipped_steps > 0)
    out.push_back(fmt::format("The loss scaler skipped {} recorded step{} (a non-finite scaled gradient; nothing was "
                              "applied): shown, but no finding is drawn from {} unless the skips persist.",
                              r.summary.skipped_steps, r.summary.skipped_steps == 1 ? "" : "s",
                              r.summary.skipped_steps == 1 ? "it" : "them"));
  if (std::string accumulation = accumulation_sentence(r.trace); !accumulation.empty()) out.push_back(std::move(accumulation));
  return out;
}

// The sharpness at the steps it was measured, and the stability bound of the step size there.
std::string sharpness_chart(const RunRecord& r) {
  LineSeries lambda, bound;
  lambda.label = "λ_max, the loss Hessian's largest eigenvalue";
  bound.label = "stability bound (2 + 2·momentum)/lr";
  bound.dashed = true;
  for (const auto& st : r.trace.steps()) {
    if (!st.sharpness) continue;
    lambda.x.push_back(static_cast<double>(st.step));
    lambda.y.push_back(*st.sharpness);
    if (!st.learning_rate) continue;
    bound.x.push_back(static_cast<double>(st.step));
    bound.y.push_back(stability_bound(*st.learning_rate, st.momentum));
  }
  if (lambda.x.empty()) return "";
  LineChart c = detail::line_chart("Sharpness against the step size's stability bound", "step", "λ_max (log scale)",
                                   "Gradient descent follows the gradient flow while λ_max stays below the bound; at the "
                                   "bound (the edge of stability) the loss falls non-monotonically, past it the step is too "
                                   "large for the curvature.");
  c.series.push_back(std::move(lambda));
  if (!bound.x.empty()) c.series.push_back(std::move(bound));
  return detail::render(c);
}

// The global gradient norm per step, produced and applied.
std::string applied_chart(const RunRecord& r) {
  LineChart c = detail::line_chart("Global gradient norm: produced by backward, applied by the optimizer", "step",
                                   "‖g‖ (log scale)", "");
  LineSeries produced, applied;
  produced.label = "produced";
  applied.label = "applied";
  applied.dashed = true;
  for (const auto& st : r.trace.steps()) {
    const auto change = applied_change(st, r.trace);
    if (!change) continue;
    produced.x.push_back(static_cast<double>(st.step));
    produced.y.push_back(change->produced_norm);
    applied.x.push_back(static_cast<double>(st.step));
    applied.y.push_back(change->applied_norm);
  }
  c.series.push_back(std::move(produced));
  c.series.push_back(std::move(applied));
  return detail::render(c);
}

std::string findings_html(const RunRecord& r) {
  const std::string adversarial =
      r.traits.adversarial ? "<p>This model's loss is adversarial: it rises and falls by design, so no loss-trend rule (stalled, "
                             "rising, oscillating) judges it; the gradient rules do.</p>\n"
                           : "";
  if (r.findings.empty()) return adversarial + "<p>No finding: the gradient flows.</p>\n";
  std::string out = adversarial + "<ul>\n";
  for (const auto& f : r.findings) {
    std::vector<std::string> evidence;
    for (const auto& [k, v] : f.evidence) evidence.push_back(fmt::format("{} = {:.4g}", k, v));
    out += fmt::format("<li><span class=\"sev-{}\">{}</span> <strong>{}</strong> ({}): {}<br>evidence: {}<br>remedy: {}</li>\n",
                       to_string(f.severity), to_string(f.severity), to_string(f.kind), html_escape(f.where),
                       html_escape(f.message), html_escape(detail::join(evidence)), html_escape(f.remedy));
  }
  return out + "</ul>\n";
}

std::string setup_html(const RunRecord& r) {
  std::vector<std::string> settings;
  for (const auto& e : r.config) settings.push_back(e.key + "=" + e.value);
  return fmt::format("<p>{} recorded steps of {}; {}</p>\n", r.trace.steps().size(), r.steps_done,
                     settings.empty() ? std::string("no settings recorded") : html_escape(detail::join(settings)));
}

// What a run that was cut short holds (empty for a run that finished).
std::string interrupted_note(const RunRecord& r) {
  if (!r.interrupted) return "";
  if (r.trace.steps().empty()) return "The program stopped before any step was recorded.";
  return fmt::format("The program stopped before it finished: this report holds the steps recorded until then, the last "
                     "at step {}.",
                     r.trace.steps().back().step);
}

std::string model_html(const RunRecord& r) {
  const Layers layers = parameter_layers(r.trace);
  std::string out = fmt::format("<section><h2>{}</h2>\n", html_escape(r.label));
  if (r.interrupted) out += "<p class=\"sev-error\">" + html_escape(interrupted_note(r)) + "</p>\n";
  out += fmt::format("<p>loss {}</p>\n", detail::loss_span(r.summary, detail::Markup::html));
  for (const auto& sentence : gradient_sentences(r)) out += "<p>" + html_escape(sentence) + "</p>\n";
  out += "<h3>Findings</h3>\n" + findings_html(r);
  if (r.trace.steps().empty()) return out + "<p>Nothing was recorded.</p>\n</section>\n";
  if (!layers.series.empty()) out += profile_chart(r, layers.series, layers.names, "dL/dW");
  const auto outputs = r.trace.series_of_kind(SeriesKind::activation);
  if (outputs.size() >= 2) {
    std::vector<std::string> names;
    for (int s : outputs) names.push_back(r.trace.series()[s].name);
    out += profile_chart(r, outputs, names, "dL/d(output)");
  }
  for (const auto& note : outputs_notes(r.trace)) out += "<p>" + html_escape(note) + "</p>\n";
  out += calls_chart(r, ProfileAxis::calls) + calls_chart(r, ProfileAxis::time);
  out += loss_chart(r);
  if (r.summary.applied) out += applied_chart(r);
  out += sharpness_chart(r);
  if (!layers.series.empty()) {
    out += per_layer_over_steps(r, layers, detail::line_chart("Parameter-gradient norm per layer over training", "step", "|dL/dW| (log scale)", ""),
                                [](const StepRecord& st, int s) { return detail::norm_at(st, s); });
    const Ratio ratio = ratio_of(r);
    out += per_layer_over_steps(
        r, layers, detail::line_chart(std::string(ratio.name()) + " per layer over training", "step", "ratio (log scale)",
                                      ratio.updates ? "Each step's update as the optimizer applied it; around 1e-3 is the usual rule of thumb."
                                                    : "With plain SGD the update-to-weight ratio is this times the learning rate "
                                                      "(the Monitor's update_norms option records the update itself)."),
        ratio);
    out += detail::render(detail::layer_heatmap(r, layers.series, layers.names, "parameter"));
  }
  out += detail::ranks_html(r.trace);
  return out + "<h3>Setup</h3>\n" + setup_html(r) + "</section>\n";
}

// A table's figure: three significant digits; a dash where the layer has none at that step.
std::string table_figure(double v) { return std::isnan(v) ? std::string("—") : fmt::format("{:.3g}", v); }

// A record's profile in words: "35 time steps, 0.00012 (first) .. 0.0031 (last)".
std::string profile_text(const Record* r) {
  if (!r || r->profile.empty()) return "—";
  return fmt::format("{} {}, {} (first) .. {} (last)", r->profile.size(),
                     r->profile_axis == ProfileAxis::time ? "time steps" : "calls", table_figure(r->profile.front()),
                     table_figure(r->profile.back()));
}

// The layer outputs in forward order: RMS at the first and last recorded step, and how the
// gradient spreads over a module's calls or time steps at the last.
std::string outputs_table(const Trace& t) {
  const auto outputs = t.series_of_kind(SeriesKind::activation);
  if (outputs.empty() || t.steps().empty()) return "";
  const auto &first = t.steps().front(), &last = t.steps().back();
  std::string out = fmt::format("\n| layer output | RMS dL/d(output) at step {} | at step {} | calls or time steps at step {} |\n"
                                "|---|---|---|---|\n",
                                first.step, last.step, last.step);
  for (int s : outputs)
    out += fmt::format("| {} | {} | {} | {} |\n", t.series()[s].name, table_figure(rms_at(first, s)),
                       table_figure(rms_at(last, s)), profile_text(last.find(s)));
  return out;
}

std::string labels(const std::vector<RunRecord>& runs) {
  std::vector<std::string> l;
  for (const auto& r : runs) l.push_back(r.label);
  if (l.size() <= 1) return l.empty() ? std::string("a model") : l.front();
  const std::string last = l.back();
  l.pop_back();
  return detail::join(l) + " and " + last;
}

}  // namespace

std::string models_report_html(const std::vector<RunRecord>& runs) {
  std::string out = "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>gradflow: " + html_escape(labels(runs)) +
                    "</title>\n<style>" + detail::report_css() +
                    ".models{display:grid;grid-template-columns:repeat(auto-fit,minmax(480px,1fr));gap:1.5em}</style></head><body>\n";
  out += "<h1>Gradient flow of " + html_escape(labels(runs)) + "</h1>\n";
  out += "<p>The gradient that reached each layer at every recorded step, as gradflow measured it during training. Layers are "
         "listed in forward order; the first ones are next to the input.</p>\n<div class=\"models\">\n";
  for (const auto& r : runs) out += model_html(r);
  return out + "</div>\n<p>Made by gradflow. Every figure is recomputed from the recorded traces.</p>\n</body></html>\n";
}

std::string models_report_markdown(const std::vector<RunRecord>& runs) {
  std::string out = "# Gradient flow of " + labels(runs) + "\n";
  for (const auto& r : runs) {
    out += "\n## " + r.label + "\n\n";
    if (r.interrupted) out += "**" + interrupted_note(r) + "**\n\n";
    out += "loss " + detail::loss_span(r.summary, detail::Markup::plain) + "\n\n";
    for (const auto& sentence : gradient_sentences(r)) out += sentence + "\n\n";
    if (r.findings.empty()) out += "- no finding: the gradient flows\n";
    for (const auto& f : r.findings)
      out += fmt::format("- [{}] **{}** ({}): {} Remedy: {}\n", to_string(f.severity), to_string(f.kind), f.where, f.message, f.remedy);
    out += detail::ranks_markdown(r.trace);
    const Layers layers = parameter_layers(r.trace);
    for (const auto& note : outputs_notes(r.trace)) out += "\n" + note + "\n";
    if (r.trace.steps().empty() || layers.series.empty()) continue;
    const auto &first = r.trace.steps().front(), &last = r.trace.steps().back();
    const Ratio ratio = ratio_of(r);
    out += fmt::format("\n| layer | dL/dW at step {} | dL/dW at step {} | {} at step {} |\n|---|---|---|---|\n", first.step,
                       last.step, ratio.updates ? "dW / W" : "dL/dW / W", first.step);
    for (std::size_t k = 0; k < layers.series.size(); ++k)
      out += fmt::format("| {} | {} | {} | {} |\n", layers.names[k], table_figure(detail::norm_at(first, layers.series[k])),
                         table_figure(detail::norm_at(last, layers.series[k])), table_figure(ratio(first, layers.series[k])));
    out += outputs_table(r.trace);
  }
  return out;
}

}  // namespace gradflow
