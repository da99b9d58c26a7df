#include "gradflow/report.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <set>

#include <fmt/format.h>

#include "gradflow/atomic_file.h"
#include "gradflow/error.h"
#include "run_json.h"
#include "svg.h"

namespace gradflow {

using detail::html_escape;
using detail::Json;
using detail::num;

std::optional<double> SweepFit::gain() const {
  if (!slope) return std::nullopt;
  return std::pow(10.0, *slope);
}

namespace {

// Keys that define what is being compared; every other setting must match for two runs to pair.
const std::set<std::string> kRemedyKeys = {"act",  "init",        "norm",      "residual",  "cell",
                                           "clip_norm", "clip_value", "forget_bias", "scale"};
const std::set<std::string> kIgnoredKeys = {"every"};

bool is_relu_like(const std::string& a) {
  return a == "relu" || a == "leaky_relu" || a == "elu" || a == "selu" || a == "gelu";
}
bool is_squashing(const std::string& a) { return a == "sigmoid" || a == "tanh" || a == "softsign"; }
bool is_he(const std::string& i) { return i == "he_normal" || i == "he_uniform"; }
bool is_plain_init(const std::string& i) { return i == "default" || i.rfind("normal:", 0) == 0; }
double as_double(const std::string& v) { return v.empty() ? 0.0 : std::strtod(v.c_str(), nullptr); }

std::map<std::string, std::string> config_map(const RunRecord& r) {
  std::map<std::string, std::string> m(r.config.begin(), r.config.end());
  return m;
}

// Names the remedy that turns `without` into `with`, or "" when the difference is not one.
std::string remedy_name(const std::set<std::string>& diff, const std::map<std::string, std::string>& w,
                        const std::map<std::string, std::string>& wo) {
  auto get = [](const std::map<std::string, std::string>& m, const std::string& k) {
    auto it = m.find(k);
    return it == m.end() ? std::string() : it->second;
  };
  if (diff == std::set<std::string>{"act", "init"} && is_relu_like(get(w, "act")) && is_squashing(get(wo, "act")) &&
      is_he(get(w, "init")) && is_plain_init(get(wo, "init")))
    return "ReLU + He initialisation";
  if (diff.size() != 1) return "";
  const std::string key = *diff.begin();
  const std::string a = get(w, key), b = get(wo, key);
  if (key == "act" && is_relu_like(a) && is_squashing(b)) return a == "relu" ? "ReLU" : a;
  if (key == "init" && !is_plain_init(a) && is_plain_init(b)) {
    if (is_he(a)) return "He initialisation";
    if (a.rfind("xavier", 0) == 0) return "Xavier initialisation";
    if (a == "identity") return "identity recurrent init (IRNN)";
    return a + " initialisation";
  }
  if (key == "norm" && a != "none" && b == "none") return a == "batch" ? "batch normalisation" : "layer normalisation";
  if (key == "residual" && a == "1" && b == "0") return "residual connections";
  if (key == "cell" && (a == "lstm" || a == "gru") && (b == "rnn_tanh" || b == "rnn_relu")) return a == "lstm" ? "LSTM" : "GRU";
  if ((key == "clip_norm" || key == "clip_value") && as_double(a) > 0 && as_double(b) == 0) return "gradient clipping";
  if (key == "forget_bias" && as_double(a) > 0.5 && (b == "default" || as_double(b) <= 0)) return "forget-gate bias 1";
  return "";
}

std::optional<double> log10_of(const std::optional<Attenuation>& a) {
  if (a && a->log10) return a->log10;
  return std::nullopt;
}

std::string orders(const std::optional<double>& v) { return v ? fmt::format("{:+.1f}", *v) : "n/a"; }

bool diverged(const RunRecord& r) {
  for (double l : r.loss)
    if (!std::isfinite(l)) return true;
  return has_any(r.findings, {FindingKind::non_finite});
}

double tail_loss(const RunRecord& r) {
  const std::size_t n = r.loss.size();
  if (n == 0) return std::numeric_limits<double>::quiet_NaN();
  const std::size_t k = std::max<std::size_t>(n / 10, 1);
  double s = 0;
  for (std::size_t i = n - k; i < n; ++i) s += r.loss[i];
  return s / static_cast<double>(k);
}

bool learned(const RunRecord& r) {
  const double t = tail_loss(r);
  return std::isfinite(t) && t < 0.5 * r.baseline_loss;
}

Verdict make_verdict(const std::string& remedy, const RunRecord& w, const RunRecord& wo) {
  Verdict v;
  v.remedy = remedy;
  v.with_label = w.label;
  v.without_label = wo.label;
  if (remedy == "gradient clipping") {
    v.axis = "stability";
    v.with_log10 = log10_of(w.summary.depth);
    v.without_log10 = log10_of(wo.summary.depth);
    const bool bad_wo = diverged(wo) || has_any(wo.findings, {FindingKind::unstable_loss});
    v.confirms = bad_wo && !diverged(w);
    v.text = fmt::format("{}: without it ({}) the loss {}; with it ({}) the loss {} ({} of {} steps clipped)", remedy, wo.label,
                         diverged(wo) ? "became non-finite" : bad_wo ? "was unstable" : "stayed finite", w.label,
                         diverged(w) ? "still became non-finite" : fmt::format("stayed finite, ending at {:.3g}", tail_loss(w)),
                         w.clipped_steps, w.steps_done);
    return v;
  }
  if (w.traits.recurrent) {
    v.axis = "time";
    v.with_log10 = log10_of(w.summary.time_final);
    v.without_log10 = log10_of(wo.summary.time_final);
    v.with_init_log10 = log10_of(w.summary.time);
    v.without_init_log10 = log10_of(wo.summary.time);
    const bool trained = w.steps_done > 1;
    const auto& a = trained ? v.with_log10 : v.with_init_log10;
    const auto& b = trained ? v.without_log10 : v.without_init_log10;
    v.confirms = a && b && *a > *b + 1.0;
    std::string learn = trained ? fmt::format("; {} {} the task (loss {:.3g}), {} {} (loss {:.3g}; a constant answer gives {:.3g})",
                                              w.label, learned(w) ? "learned" : "did not learn", tail_loss(w), wo.label,
                                              learned(wo) ? "learned it" : "did not", tail_loss(wo), w.baseline_loss)
                                : "";
    v.text = fmt::format("{}: log10 |dL/dh_1|/|dL/dh_T| at initialization {} ({}) vs {} ({}){}{}", remedy, orders(v.with_init_log10),
                         w.label, orders(v.without_init_log10), wo.label,
                         trained ? fmt::format(", after training {} vs {}", orders(v.with_log10), orders(v.without_log10)) : "",
                         learn);
    return v;
  }
  v.axis = "depth";
  v.with_log10 = log10_of(w.summary.depth);
  v.without_log10 = log10_of(wo.summary.depth);
  v.confirms = v.with_log10 && v.without_log10 && std::abs(*v.with_log10) + 0.5 < std::abs(*v.without_log10);
  const int span = w.summary.depth ? w.summary.depth->span : 0;
  v.text = fmt::format("{}: dL/dh across {} layers at initialization {} orders ({}) against {} ({}){}", remedy, span,
                       orders(v.with_log10), w.label, orders(v.without_log10), wo.label,
                       v.with_log10 && v.without_log10
                           ? fmt::format(": {} {:.1f} orders", v.confirms ? "recovers" : "changes it by",
                                         std::abs(*v.without_log10) - std::abs(*v.with_log10))
                           : "");
  return v;
}

}  // namespace

Comparison make_comparison(std::vector<RunRecord> runs, std::vector<std::string> dirs) {
  Comparison c;
  c.runs = std::move(runs);
  c.dirs = std::move(dirs);
  c.dirs.resize(c.runs.size());
  for (const auto& r : c.runs) {
    const std::string s = r.config_value("sweep");
    if (!s.empty()) c.sweep_key = s;
  }
  std::vector<std::map<std::string, std::string>> cfg;
  for (const auto& r : c.runs) cfg.push_back(config_map(r));
  for (std::size_t i = 0; i < c.runs.size(); ++i)
    for (std::size_t j = 0; j < c.runs.size(); ++j) {
      if (i == j || c.runs[i].family != c.runs[j].family || c.runs[i].task != c.runs[j].task) continue;
      std::set<std::string> keys;
      for (const auto& [k, v] : cfg[i]) keys.insert(k);
      for (const auto& [k, v] : cfg[j]) keys.insert(k);
      std::set<std::string> diff;
      bool comparable = true;
      for (const auto& k : keys) {
        if (kIgnoredKeys.count(k)) continue;
        const auto a = cfg[i].count(k) ? cfg[i].at(k) : "";
        const auto b = cfg[j].count(k) ? cfg[j].at(k) : "";
        if (a == b) continue;
        if (kRemedyKeys.count(k)) diff.insert(k);
        else comparable = false;
      }
      if (!comparable || diff.empty()) continue;
      const std::string remedy = remedy_name(diff, cfg[i], cfg[j]);
      if (!remedy.empty()) c.verdicts.push_back(make_verdict(remedy, c.runs[i], c.runs[j]));
    }
  if (!c.sweep_key.empty()) {
    std::map<std::string, SweepFit> fits;
    std::vector<std::string> order;
    for (const auto& r : c.runs) {
      const std::string base = r.config_value("sweep_base");
      const std::string label = base.empty() ? r.label : base;
      if (!fits.count(label)) order.push_back(label);
      auto& f = fits[label];
      f.label = label;
      const auto a = c.sweep_key == "seq_len" ? log10_of(r.summary.time) : log10_of(r.summary.depth);
      if (a) {
        f.x.push_back(as_double(r.config_value(c.sweep_key == "seq_len" ? "seq_len" : "depth")));
        f.log10.push_back(*a);
      }
    }
    for (const auto& label : order) {
      auto f = fits[label];
      if (f.x.size() >= 2) {
        double mx = 0, my = 0;
        for (std::size_t i = 0; i < f.x.size(); ++i) mx += f.x[i], my += f.log10[i];
        mx /= f.x.size();
        my /= f.x.size();
        double sxy = 0, sxx = 0;
        for (std::size_t i = 0; i < f.x.size(); ++i) sxy += (f.x[i] - mx) * (f.log10[i] - my), sxx += (f.x[i] - mx) * (f.x[i] - mx);
        if (sxx > 0) f.slope = sxy / sxx;
      }
      c.sweep.push_back(f);
    }
  }
  return c;
}

namespace {

const char* kCss = R"(body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:1em 0;font-size:.92em}th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}tr.good td.v{background:#e7f4ea}tr.bad td.v{background:#fbe9e7}
.chart svg{max-width:100%;height:auto;background:#fff}.plot{fill:#fafafa;stroke:#999}.grid{stroke:#e3e3e3}
.tick{font-size:11px;fill:#444}.axis{font-size:12px;fill:#222}.title{font-size:14px;font-weight:600;fill:#222}
.legend{font-size:11px;fill:#222}.empty{font-size:13px;fill:#888}figure{margin:1em 0}figcaption{font-size:.85em;color:#555}
.sev-error{color:#b00020;font-weight:600}.sev-warning{color:#a15c00;font-weight:600}.sev-info{color:#555}
details{margin:.4em 0}code{background:#f3f3f3;padding:0 .2em}.verdict-yes{color:#1b5e20;font-weight:600}.verdict-no{color:#b00020;font-weight:600}
)";

std::string findings_kinds(const RunRecord& r) {
  std::set<std::string> k;
  for (const auto& f : r.findings) k.insert(to_string(f.kind));
  std::string out;
  for (const auto& s : k) out += (out.empty() ? "" : ", ") + s;
  return out.empty() ? "none" : out;
}

std::string gain_text(const std::optional<Attenuation>& a) {
  if (!a) return "n/a";
  const auto g = a->gain();
  return g ? fmt::format("{:.3g}x", *g) : "n/a";
}

std::string att_cell(const std::optional<Attenuation>& a) {
  if (!a) return "n/a";
  if (a->overflow) return "non-finite";
  if (!a->log10) return "no gradient";
  return fmt::format("{}{:+.1f}", a->underflow ? "&le; " : "", *a->log10);
}
std::string att_plain(const std::optional<Attenuation>& a) {
  if (!a) return "n/a";
  if (a->overflow) return "non-finite";
  if (!a->log10) return "no gradient";
  return fmt::format("{}{:+.1f}", a->underflow ? "<= " : "", *a->log10);
}

std::string loss_text(const RunRecord& r) {
  auto f = [](const std::optional<double>& v) { return v ? fmt::format("{:.3g}", *v) : std::string("non-finite"); };
  return f(r.summary.loss_first) + " &rarr; " + f(r.summary.loss_last);
}

std::vector<std::size_t> feedforward(const Comparison& c) {
  std::vector<std::size_t> v;
  for (std::size_t i = 0; i < c.runs.size(); ++i)
    if (!c.runs[i].traits.recurrent) v.push_back(i);
  std::stable_sort(v.begin(), v.end(), [&](std::size_t a, std::size_t b) {
    const auto la = log10_of(c.runs[a].summary.depth), lb = log10_of(c.runs[b].summary.depth);
    const double ka = la ? std::abs(*la) : 1e9, kb = lb ? std::abs(*lb) : 1e9;
    return ka < kb;
  });
  return v;
}

std::vector<std::size_t> recurrent(const Comparison& c) {
  std::vector<std::size_t> v;
  for (std::size_t i = 0; i < c.runs.size(); ++i)
    if (c.runs[i].traits.recurrent) v.push_back(i);
  std::stable_sort(v.begin(), v.end(), [&](std::size_t a, std::size_t b) {
    const auto la = log10_of(c.runs[a].summary.time_final), lb = log10_of(c.runs[b].summary.time_final);
    return (la ? *la : -1e9) > (lb ? *lb : -1e9);
  });
  return v;
}

// Norm of a series at a step, NaN when absent.
double norm_at(const StepRecord& st, int series) {
  const Record* r = st.find(series);
  if (!r) return std::numeric_limits<double>::quiet_NaN();
  if (r->grad.nonfinite > 0) return std::numeric_limits<double>::infinity();
  return r->grad.norm();
}

std::vector<double> smooth(const std::vector<double>& v, std::vector<double>& xs) {
  const std::size_t n = v.size();
  const std::size_t w = std::max<std::size_t>(1, n / 100);
  std::vector<double> out;
  xs.clear();
  for (std::size_t b = 0; b < n; b += w) {
    double s = 0;
    std::size_t k = 0;
    bool bad = false;
    for (std::size_t i = b; i < std::min(n, b + w); ++i) {
      if (!std::isfinite(v[i])) bad = true;
      s += v[i];
      ++k;
    }
    out.push_back(bad ? std::numeric_limits<double>::quiet_NaN() : s / static_cast<double>(k));
    xs.push_back(static_cast<double>(b + (std::min(n, b + w) - b) / 2));
  }
  return out;
}

std::string charts(const Comparison& c) {
  std::string out;
  const auto ff = feedforward(c);
  if (!ff.empty()) {
    detail::LineChart prof;
    prof.title = "Backward signal |dL/dh| per hidden layer at initialization";
    prof.x_label = "hidden layer (1 = next to the input)";
    prof.y_label = "|dL/dh| (log scale)";
    prof.note = "A line that falls toward layer 1 is a vanishing gradient: the early layers receive almost nothing.";
    detail::LineChart wprof = prof;
    wprof.title = "Weight-gradient norm |dL/dW| per layer at initialization";
    wprof.x_label = "weight layer (1 = next to the input)";
    wprof.y_label = "|dL/dW| (log scale)";
    wprof.note = "The weight gradient alone can mislead (a residual net's first layers receive small |dL/dW| while dL/dh does not vanish); judge by the backward signal above.";
    for (std::size_t i : ff) {
      const auto& r = c.runs[i];
      if (r.trace.steps().empty()) continue;
      const auto& st = r.trace.steps().front();
      detail::LineSeries s, w;
      s.label = w.label = r.label;
      const auto chain = depth_series(r.trace);
      for (std::size_t k = 0; k < chain.size(); ++k) {
        s.x.push_back(static_cast<double>(k + 1));
        s.y.push_back(norm_at(st, chain[k]));
        s.tips.push_back(fmt::format("{} {}: |dL/dh| = {:.4g}", r.label, r.trace.series()[chain[k]].name, s.y.back()));
      }
      const auto ws = weight_series(r.trace);
      for (std::size_t k = 0; k < ws.size(); ++k) {
        w.x.push_back(static_cast<double>(k + 1));
        w.y.push_back(norm_at(st, ws[k]));
        w.tips.push_back(fmt::format("{} {}: |dL/dW| = {:.4g}", r.label, r.trace.series()[ws[k]].name, w.y.back()));
      }
      prof.series.push_back(s);
      wprof.series.push_back(w);
    }
    out += "<h2>Gradient across depth</h2>\n" + detail::render(prof) + detail::render(wprof);
  }
  const auto rec = recurrent(c);
  if (!rec.empty()) {
    detail::LineChart tc;
    tc.title = "|dL/dh_t| per time step: at initialization (dashed) and after training (solid)";
    tc.x_label = "time step t";
    tc.y_label = "|dL/dh_t| (log scale)";
    tc.note = "The loss reads the last step only, so everything that reaches early steps travels back through the recurrence.";
    std::size_t colour_slot = 0;
    for (std::size_t i : rec) {
      const auto& r = c.runs[i];
      if (r.trace.steps().empty()) continue;
      const auto chain = numbered_series(r.trace, "time");
      for (int which = 0; which < 2; ++which) {
        const auto& st = which == 0 ? r.trace.steps().front() : r.trace.steps().back();
        if (which == 1 && r.trace.steps().size() < 2) continue;
        detail::LineSeries s;
        s.label = r.label + (which == 0 ? " (init)" : fmt::format(" (step {})", st.step));
        s.dashed = which == 0;
        s.colour = static_cast<int>(colour_slot);
        s.markers = chain.size() <= 60;
        for (std::size_t k = 0; k < chain.size(); ++k) {
          s.x.push_back(static_cast<double>(k + 1));
          s.y.push_back(norm_at(st, chain[k]));
          s.tips.push_back(fmt::format("{} t={}: {:.4g}", s.label, k + 1, s.y.back()));
        }
        tc.series.push_back(s);
      }
      ++colour_slot;
    }
    out += "<h2>Gradient across time</h2>\n" + detail::render(tc);
  }
  // Loss curves, one chart per task (their scales differ).
  std::vector<std::string> task_order;
  for (const auto& r : c.runs)
    if (std::find(task_order.begin(), task_order.end(), r.task) == task_order.end()) task_order.push_back(r.task);
  out += "<h2>Does it learn?</h2>\n";
  for (const auto& task : task_order) {
    detail::LineChart lc;
    lc.title = "Training loss, task " + task;
    lc.x_label = "step";
    lc.y_label = "loss (log scale)";
    double baseline = 0;
    for (const auto& r : c.runs) {
      if (r.task != task) continue;
      baseline = r.baseline_loss;
      detail::LineSeries s;
      s.label = r.label;
      s.markers = false;
      s.y = smooth(r.loss, s.x);
      lc.series.push_back(s);
    }
    lc.note = fmt::format("Window means of the per-step loss. A constant answer scores {:.3g}; a run that stays there learned nothing.", baseline);
    out += detail::render(lc);
  }
  if (!c.sweep.empty()) {
    detail::LineChart sc;
    const bool time = c.sweep_key == "seq_len";
    sc.title = time ? "Attenuation across time against sequence length" : "Attenuation across depth against depth";
    sc.x_label = time ? "sequence length T" : "depth (weight layers)";
    sc.y_label = "log10 |dL/dh_first| / |dL/dh_last|";
    sc.log_y = false;
    std::string note = "Fitted gain per " + std::string(time ? "step" : "layer") + ": ";
    for (const auto& f : c.sweep) {
      detail::LineSeries s;
      s.label = f.label;
      s.x = f.x;
      s.y = f.log10;
      for (std::size_t k = 0; k < f.x.size(); ++k) s.tips.push_back(fmt::format("{} at {:g}: {:+.2f} orders", f.label, f.x[k], f.log10[k]));
      sc.series.push_back(s);
      note += fmt::format("{} {}; ", f.label, f.gain() ? fmt::format("{:.3g}x", *f.gain()) : "n/a");
    }
    sc.note = note;
    out += "<h2>Sweep over " + html_escape(c.sweep_key) + "</h2>\n" + detail::render(sc);
  }
  out += "<h2>Layer &times; step heatmaps</h2>\n<p>log10 of the gradient norm at each recorded step: rows are hidden layers (feed-forward) or time steps (recurrent). Dark is little gradient.</p>\n";
  for (const auto& r : c.runs) {
    const auto chain = r.traits.recurrent ? numbered_series(r.trace, "time") : depth_series(r.trace);
    detail::Heatmap h;
    h.title = r.label;
    h.x_label = "training step";
    h.y_label = r.traits.recurrent ? "time step" : "hidden layer";
    for (const auto& st : r.trace.steps()) h.cols.push_back(std::to_string(st.step));
    // Rows from the output side down to the input side, like the backward pass.
    for (auto it = chain.rbegin(); it != chain.rend(); ++it) {
      h.rows.push_back(r.trace.series()[*it].name);
      std::vector<double> row;
      for (const auto& st : r.trace.steps()) {
        const double v = norm_at(st, *it);
        row.push_back(v > 0 && std::isfinite(v) ? std::log10(v) : std::numeric_limits<double>::quiet_NaN());
      }
      h.log10_values.push_back(row);
    }
    h.row_height = chain.size() > 40 ? 6 : 12;
    out += detail::render(h);
  }
  return out;
}

// The figure shown for one side of a verdict: orders of magnitude, or for clipping whether the
// loss stayed finite.
std::string cell_with(const Verdict& v, const Comparison& c, bool with) {
  if (v.axis != "stability") return orders(with ? v.with_log10 : v.without_log10);
  for (const auto& r : c.runs)
    if (r.label == (with ? v.with_label : v.without_label)) return diverged(r) ? "non-finite loss" : "finite loss";
  return "n/a";
}

std::string verdict_list_html(const Comparison& c) {
  if (c.verdicts.empty()) return "<p>No two runs differ by exactly one remedy, so there is no verdict to draw.</p>\n";
  std::string out = "<table><tr><th class=l>remedy</th><th class=l>with</th><th class=l>without</th><th>with</th><th>without</th><th class=l>verdict</th></tr>\n";
  for (const auto& v : c.verdicts) {
    out += fmt::format("<tr class=\"{}\"><td class=l>{}</td><td class=l>{}</td><td class=l>{}</td><td class=v>{}</td><td class=v>{}</td>"
                       "<td class=l><span class=\"{}\">{}</span> {}</td></tr>\n",
                       v.confirms ? "good" : "bad", html_escape(v.remedy), html_escape(v.with_label), html_escape(v.without_label),
                       cell_with(v, c, true), cell_with(v, c, false), v.confirms ? "verdict-yes" : "verdict-no",
                       v.confirms ? "helps" : "does not help here", html_escape(v.text));
  }
  return out + "</table>\n<p>Figures are log10 of |dL/dh| at the far end over the near end: 0 means the gradient arrives whole, -6 means a millionth of it. Depth: at initialization; time: after training.</p>\n";
}

}  // namespace

std::string report_html(const Comparison& c) {
  std::string out = "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>gradflow report</title>\n<style>";
  out += kCss;
  out += "</style></head><body>\n<h1>How the gradient flows: a measured comparison</h1>\n";
  out += "<p>Backpropagation multiplies the loss gradient by one local derivative per layer (and per time step in a recurrent net). "
         "When those factors are below 1 the product shrinks exponentially and the early layers stop learning: the "
         "<em>vanishing gradient</em>. Above 1 it explodes. Each network below was trained on the same task with the same seed; "
         "gradflow recorded the gradient reaching every layer and every time step, so the claims about ReLU, He initialisation, "
         "batch normalisation, residual connections, gradient clipping and LSTM/GRU cells can be checked against numbers.</p>\n";
  if (c.interrupted) out += "<p class=\"sev-error\">This comparison was interrupted: it shows the runs recorded until then.</p>\n";
  out += "<h2>Verdicts</h2>\n" + verdict_list_html(c);
  const auto ff = feedforward(c);
  if (!ff.empty()) {
    out += "<h2>Ranking across depth</h2>\n<table><tr><th>#</th><th class=l>network</th><th class=l>task</th><th>dL/dh first/last hidden, log10 (init)</th>"
           "<th>gain per layer</th><th>same, end of training</th><th class=l>loss start &rarr; end</th><th class=l>findings</th></tr>\n";
    int rank = 1;
    for (std::size_t i : ff) {
      const auto& r = c.runs[i];
      out += fmt::format("<tr><td>{}</td><td class=l title=\"{}\">{}</td><td class=l>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=l>{}</td><td class=l>{}</td></tr>\n",
                         rank++, html_escape(r.spec), html_escape(r.label), html_escape(r.task), att_cell(r.summary.depth), gain_text(r.summary.depth),
                         att_cell(r.summary.depth_final), loss_text(r), html_escape(findings_kinds(r)));
    }
    out += "</table>\n";
  }
  const auto rec = recurrent(c);
  if (!rec.empty()) {
    out += "<h2>Ranking across time</h2>\n<table><tr><th>#</th><th class=l>network</th><th class=l>task</th><th>dL/dh_1 / dL/dh_T, log10 (init)</th>"
           "<th>after training</th><th>gain per step (init)</th><th class=l>loss start &rarr; end</th><th class=l>learned?</th><th class=l>findings</th></tr>\n";
    int rank = 1;
    for (std::size_t i : rec) {
      const auto& r = c.runs[i];
      out += fmt::format("<tr><td>{}</td><td class=l title=\"{}\">{}</td><td class=l>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=l>{}</td><td class=l>{}</td><td class=l>{}</td></tr>\n",
                         rank++, html_escape(r.spec), html_escape(r.label), html_escape(r.task), att_cell(r.summary.time), att_cell(r.summary.time_final),
                         gain_text(r.summary.time), loss_text(r), learned(r) ? "yes" : "no", html_escape(findings_kinds(r)));
    }
    out += "</table>\n";
  }
  if (std::any_of(c.runs.begin(), c.runs.end(), [](const RunRecord& r) {
        return (r.summary.depth && r.summary.depth->underflow) || (r.summary.time && r.summary.time->underflow);
      }))
    out += "<p>&le;: the far-end gradient underflowed to zero in this dtype; the figure is the bound it implies. Use dtype=float64 to measure it.</p>\n";
  out += charts(c);
  if (c.flow) out += flow_section_html(*c.flow);
  out += "<h2>Findings per run</h2>\n";
  for (const auto& r : c.runs) {
    out += fmt::format("<details{}><summary><strong>{}</strong> &mdash; {} finding(s)</summary><ul>\n", r.findings.empty() ? "" : " open",
                       html_escape(r.label), r.findings.size());
    if (r.findings.empty()) out += "<li>none: the gradient flows</li>\n";
    for (const auto& f : r.findings)
      out += fmt::format("<li><span class=\"sev-{}\">{}</span> <strong>{}</strong> ({}): {}<br>remedy: {}</li>\n", to_string(f.severity),
                         to_string(f.severity), to_string(f.kind), html_escape(f.where), html_escape(f.message), html_escape(f.remedy));
    out += "</ul></details>\n";
  }
  out += "<h2>Setup</h2>\n<table><tr><th class=l>network</th><th class=l>spec</th><th class=l>task</th><th class=l>settings</th></tr>\n";
  for (const auto& r : c.runs) {
    std::string settings;
    for (const auto& [k, v] : r.config) settings += k + "=" + v + " ";
    out += fmt::format("<tr><td class=l>{}</td><td class=l><code>{}</code></td><td class=l>{}</td><td class=l>{}</td></tr>\n", html_escape(r.label),
                       html_escape(r.spec), html_escape(r.task_description), html_escape(settings));
  }
  out += "</table>\n<p>Made by gradflow. Every figure is recomputed from the runs' recorded traces.</p>\n</body></html>\n";
  return out;
}

std::string report_markdown(const Comparison& c) {
  std::string out = "# How the gradient flows: a measured comparison\n\n## Verdicts\n\n";
  if (c.verdicts.empty()) out += "No two runs differ by exactly one remedy.\n";
  for (const auto& v : c.verdicts) out += fmt::format("- **{}** ({}): {}\n", v.remedy, v.confirms ? "helps" : "does not help here", v.text);
  const auto ff = feedforward(c);
  if (!ff.empty()) {
    out += "\n## Ranking across depth\n\n| # | network | log10 dL/dh first/last (init) | gain/layer | end of training | loss start -> end | findings |\n|---|---|---|---|---|---|---|\n";
    int rank = 1;
    for (std::size_t i : ff) {
      const auto& r = c.runs[i];
      out += fmt::format("| {} | {} | {} | {} | {} | {} | {} |\n", rank++, r.label, att_plain(r.summary.depth), gain_text(r.summary.depth),
                         att_plain(r.summary.depth_final),
                         fmt::format("{} -> {}", r.summary.loss_first ? fmt::format("{:.3g}", *r.summary.loss_first) : "non-finite",
                                     r.summary.loss_last ? fmt::format("{:.3g}", *r.summary.loss_last) : "non-finite"),
                         findings_kinds(r));
    }
  }
  const auto rec = recurrent(c);
  if (!rec.empty()) {
    out += "\n## Ranking across time\n\n| # | network | log10 dL/dh_1/dL/dh_T (init) | after training | loss start -> end | learned? | findings |\n|---|---|---|---|---|---|---|\n";
    int rank = 1;
    for (std::size_t i : rec) {
      const auto& r = c.runs[i];
      out += fmt::format("| {} | {} | {} | {} | {} | {} | {} |\n", rank++, r.label, att_plain(r.summary.time), att_plain(r.summary.time_final),
                         fmt::format("{} -> {}", r.summary.loss_first ? fmt::format("{:.3g}", *r.summary.loss_first) : "non-finite",
                                     r.summary.loss_last ? fmt::format("{:.3g}", *r.summary.loss_last) : "non-finite"),
                         learned(r) ? "yes" : "no", findings_kinds(r));
    }
  }
  if (!c.sweep.empty()) {
    out += "\n## Sweep over " + c.sweep_key + "\n\n| network | values | log10 attenuation | fitted gain |\n|---|---|---|---|\n";
    for (const auto& f : c.sweep) {
      std::string xs, ys;
      for (std::size_t i = 0; i < f.x.size(); ++i) xs += fmt::format("{}{:g}", i ? ", " : "", f.x[i]), ys += fmt::format("{}{:+.1f}", i ? ", " : "", f.log10[i]);
      out += fmt::format("| {} | {} | {} | {} |\n", f.label, xs, ys, f.gain() ? fmt::format("{:.3g}x", *f.gain()) : "n/a");
    }
  }
  out += "\n## Findings\n";
  for (const auto& r : c.runs) {
    out += "\n### " + r.label + "\n\n";
    if (r.findings.empty()) out += "- none: the gradient flows\n";
    for (const auto& f : r.findings)
      out += fmt::format("- [{}] **{}** ({}): {} Remedy: {}\n", to_string(f.severity), to_string(f.kind), f.where, f.message, f.remedy);
  }
  return out;
}

std::string report_text(const Comparison& c) {
  std::string out;
  const auto ff = feedforward(c);
  if (!ff.empty()) {
    out += fmt::format("{:<4}{:<24}{:>14}{:>12}{:>14}   {}\n", "#", "across depth", "log10 init", "gain/layer", "log10 end", "loss start -> end");
    int rank = 1;
    for (std::size_t i : ff) {
      const auto& r = c.runs[i];
      out += fmt::format("{:<4}{:<24}{:>14}{:>12}{:>14}   {} -> {}\n", rank++, r.label.substr(0, 23), att_plain(r.summary.depth),
                         gain_text(r.summary.depth), att_plain(r.summary.depth_final),
                         r.summary.loss_first ? fmt::format("{:.3g}", *r.summary.loss_first) : "non-finite",
                         r.summary.loss_last ? fmt::format("{:.3g}", *r.summary.loss_last) : "non-finite");
    }
  }
  const auto rec = recurrent(c);
  if (!rec.empty()) {
    out += fmt::format("\n{:<4}{:<24}{:>14}{:>14}{:>10}   {}\n", "#", "across time", "log10 init", "log10 end", "learned", "loss start -> end");
    int rank = 1;
    for (std::size_t i : rec) {
      const auto& r = c.runs[i];
      out += fmt::format("{:<4}{:<24}{:>14}{:>14}{:>10}   {} -> {}\n", rank++, r.label.substr(0, 23), att_plain(r.summary.time),
                         att_plain(r.summary.time_final), learned(r) ? "yes" : "no",
                         r.summary.loss_first ? fmt::format("{:.3g}", *r.summary.loss_first) : "non-finite",
                         r.summary.loss_last ? fmt::format("{:.3g}", *r.summary.loss_last) : "non-finite");
    }
  }
  if (!c.verdicts.empty()) out += "\nverdicts:\n";
  for (const auto& v : c.verdicts) out += fmt::format("  [{}] {}\n", v.confirms ? "helps" : "no", v.text);
  return out;
}

std::string summary_to_json(const Comparison& c) {
  Json runs = Json::array();
  for (std::size_t i = 0; i < c.runs.size(); ++i) {
    const auto& r = c.runs[i];
    Json findings = Json::array();
    for (const auto& f : r.findings) findings.push_back(detail::finding_json(f));
    Json config = Json::object();
    for (const auto& [k, v] : r.config) config[k] = v;
    runs.push_back({{"label", r.label}, {"spec", r.spec}, {"family", r.family}, {"task", r.task}, {"dir", c.dirs[i]},
                    {"config", config}, {"learned", learned(r)}, {"summary", detail::summary_to_json(r.summary)}, {"findings", findings}});
  }
  Json verdicts = Json::array();
  for (const auto& v : c.verdicts) {
    auto o = [](const std::optional<double>& x) { return x ? num(*x) : Json(nullptr); };
    verdicts.push_back({{"remedy", v.remedy}, {"with", v.with_label}, {"without", v.without_label}, {"axis", v.axis},
                        {"with_log10", o(v.with_log10)}, {"without_log10", o(v.without_log10)},
                        {"with_init_log10", o(v.with_init_log10)}, {"without_init_log10", o(v.without_init_log10)},
                        {"confirms", v.confirms}, {"text", v.text}});
  }
  Json j = {{"schema", kSummarySchema}, {"interrupted", c.interrupted}, {"runs", runs}, {"verdicts", verdicts}};
  if (!c.sweep_key.empty()) {
    Json fits = Json::array();
    for (const auto& f : c.sweep)
      fits.push_back({{"label", f.label}, {"x", f.x}, {"log10", f.log10}, {"slope", f.slope ? num(*f.slope) : Json(nullptr)},
                      {"gain", f.gain() ? num(*f.gain()) : Json(nullptr)}});
    j["sweep"] = {{"key", c.sweep_key}, {"fits", fits}};
  }
  return j.dump(1);
}

void write_report(const Comparison& c, const std::string& dir) {
  write_file_atomic(dir + "/summary.json", summary_to_json(c) + "\n");
  write_file_atomic(dir + "/report.md", report_markdown(c));
  write_file_atomic(dir + "/report.html", report_html(c));
}

Comparison load_comparison(const std::vector<std::string>& inputs) {
  namespace fs = std::filesystem;
  std::vector<RunRecord> runs;
  std::vector<std::string> dirs;
  bool interrupted = false;
  std::optional<FlowResult> flow;
  if (inputs.empty()) throw UsageError("no run folder given: name folders written by 'gradflow run' or 'gradflow compare'");
  for (const auto& in : inputs) {
    std::error_code ec;
    if (!fs::is_directory(in, ec))
      throw UsageError("'" + in + "' is not a folder: give folders written by 'gradflow run' or 'gradflow compare'");
    if (fs::exists(fs::path(in) / "run.json", ec)) {
      const std::string path = (fs::path(in) / "run.json").string();
      runs.push_back(run_from_json(read_file(path), "'" + path + "'"));
      dirs.push_back(in);
      continue;
    }
    const std::string summary = (fs::path(in) / "summary.json").string();
    if (!fs::exists(summary, ec))
      throw UsageError("'" + in + "' holds neither run.json nor summary.json: give folders written by 'gradflow run' or 'gradflow compare'");
    const Json j = detail::parse_json(read_file(summary), "'" + summary + "'");
    if (!j.is_object() || !j.contains("schema") || !j["schema"].is_string() || j["schema"].get<std::string>() != kSummarySchema)
      throw Error("'" + summary + "' is not a gradflow summary (schema " + kSummarySchema + " expected)");
    if (auto it = j.find("interrupted"); it != j.end() && it->is_boolean()) interrupted = interrupted || it->get<bool>();
    const std::string flow_path = (fs::path(in) / "flow" / "flow.json").string();
    if (fs::exists(flow_path, ec)) flow = flow_from_json(read_file(flow_path), "'" + flow_path + "'");
    for (const auto& r : detail::get_array(j, "runs", "'" + summary + "'")) {
      const std::string d = detail::get_str(r, "dir", "'" + summary + "'");
      const std::string path = (fs::path(in) / d / "run.json").string();
      if (!fs::exists(path, ec)) throw Error("'" + summary + "' names run folder '" + d + "' but " + path + " is missing");
      runs.push_back(run_from_json(read_file(path), "'" + path + "'"));
      dirs.push_back(d);
    }
  }
  for (const auto& r : runs) interrupted = interrupted || r.interrupted;
  Comparison c = make_comparison(std::move(runs), std::move(dirs));
  c.interrupted = interrupted;
  c.flow = std::move(flow);
  return c;
}

}  // namespace gradflow
