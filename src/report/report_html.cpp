#include <algorithm>

#include <fmt/format.h>

#include "report/figures.h"
#include "report/report_model.h"
#include "distributed/report_ranks.h"
#include "report/svg.h"

namespace gradflow {

using detail::html_escape;
using detail::Markup;

namespace {

constexpr const char* kCss = R"(body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:1em 0;font-size:.92em}th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}tr.good td.v{background:#e7f4ea}tr.bad td.v{background:#fbe9e7}
.chart svg{width:100%;height:auto;background:#fff}.plot{fill:#fafafa;stroke:#999}.grid{stroke:#e3e3e3}
.tick{font-size:11px;fill:#444}.axis{font-size:12px;fill:#222}.title{font-size:14px;font-weight:600;fill:#222}
.legend{font-size:11px;fill:#222}.empty{font-size:13px;fill:#888}figure{margin:1em 0}figcaption{font-size:.85em;color:#555}
.sev-error{color:#b00020;font-weight:600}.sev-warning{color:#a15c00;font-weight:600}.sev-info{color:#555}
details{margin:.4em 0}code{background:#f3f3f3;padding:0 .2em}.verdict-yes{color:#1b5e20;font-weight:600}.verdict-no{color:#b00020;font-weight:600}
)";

}  // namespace

const char* detail::report_css() { return kCss; }

namespace {

// The figure shown for one side of a verdict: orders of magnitude, or for clipping whether the
// loss stayed finite.
std::string verdict_cell(const Verdict& v, const Comparison& c, bool with) {
  const auto& value = with ? v.with_value : v.without_value;
  if (v.axis == VerdictAxis::training) return value ? fmt::format("loss {:.3g}", *value) : "n/a";
  if (v.axis == VerdictAxis::profile) {
    const auto& ratio = with ? v.with_log10 : v.without_log10;
    return ratio ? fmt::format("last/first &times;{:.2f}", std::pow(10.0, *ratio)) : "n/a";
  }
  if (v.axis != VerdictAxis::stability) return detail::orders_text(with ? v.with_log10 : v.without_log10);
  for (const auto& r : c.runs)
    if (r.label == (with ? v.with_label : v.without_label)) return detail::diverged(r) ? "non-finite loss" : "finite loss";
  return "n/a";
}

std::string verdicts_html(const Comparison& c) {
  if (c.verdicts.empty()) return "<p>No two runs differ by exactly one remedy, so there is no verdict to draw.</p>\n";
  std::string out = "<table><tr><th class=l>remedy</th><th class=l>with</th><th class=l>without</th><th>with</th><th>without</th><th class=l>verdict</th></tr>\n";
  for (const auto& v : c.verdicts) {
    out += fmt::format("<tr class=\"{}\"><td class=l>{}</td><td class=l>{}</td><td class=l>{}</td><td class=v>{}</td><td class=v>{}</td>"
                       "<td class=l><span class=\"{}\">{}</span> {}</td></tr>\n",
                       v.confirms ? "good" : "bad", html_escape(v.remedy), html_escape(v.with_label), html_escape(v.without_label),
                       verdict_cell(v, c, true), verdict_cell(v, c, false), v.confirms ? "verdict-yes" : "verdict-no",
                       v.confirms ? "helps" : "does not help here", html_escape(v.text));
  }
  return out + "</table>\n<p>Figures are log10 of |dL/dh| at the far end over the near end: 0 means the gradient arrives whole, -6 means a millionth of it. Depth: at initialization; time: after training. "
             "Transformer blocks (profile): the last block's |dL/dW| over the first's, at initialization; warm-up (training): "
             "the mean loss over the last tenth of the run.</p>\n";
}

std::string depth_ranking_html(const std::vector<detail::RankingRow>& rows) {
  std::string out = "<h2>Ranking across depth</h2>\n<table><tr><th>#</th><th class=l>network</th><th class=l>task</th><th>dL/dh first/last hidden, log10 (init)</th>"
                    "<th>gain per layer</th><th>same, end of training</th><th class=l>loss start &rarr; end</th><th class=l>findings</th></tr>\n";
  for (const auto& row : rows) {
    const auto& r = *row.run;
    out += fmt::format("<tr><td>{}</td><td class=l title=\"{}\">{}</td><td class=l>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=l>{}</td><td class=l>{}</td></tr>\n",
                       row.rank, html_escape(r.spec), html_escape(r.label), html_escape(r.task),
                       detail::attenuation_text(row.init, Markup::html), detail::gain_text(row.init),
                       detail::attenuation_text(row.end, Markup::html), detail::loss_span(r.summary, Markup::html),
                       html_escape(row.findings));
  }
  return out + "</table>\n";
}

std::string time_ranking_html(const std::vector<detail::RankingRow>& rows) {
  std::string out = "<h2>Ranking across time</h2>\n<table><tr><th>#</th><th class=l>network</th><th class=l>task</th><th>dL/dh_1 / dL/dh_T, log10 (init)</th>"
                    "<th>after training</th><th>gain per step (init)</th><th class=l>loss start &rarr; end</th><th class=l>learned?</th><th class=l>findings</th></tr>\n";
  for (const auto& row : rows) {
    const auto& r = *row.run;
    out += fmt::format("<tr><td>{}</td><td class=l title=\"{}\">{}</td><td class=l>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=l>{}</td><td class=l>{}</td><td class=l>{}</td></tr>\n",
                       row.rank, html_escape(r.spec), html_escape(r.label), html_escape(r.task),
                       detail::attenuation_text(row.init, Markup::html), detail::attenuation_text(row.end, Markup::html),
                       detail::gain_text(row.init), detail::loss_span(r.summary, Markup::html), row.learned ? "yes" : "no",
                       html_escape(row.findings));
  }
  return out + "</table>\n";
}

bool any_underflow(const Comparison& c) {
  return std::any_of(c.runs.begin(), c.runs.end(), [](const RunRecord& r) {
    return (r.summary.depth && r.summary.depth->underflow) || (r.summary.time && r.summary.time->underflow);
  });
}

std::string findings_html(const Comparison& c) {
  std::string out = "<h2>Findings per run</h2>\n";
  for (const auto& r : c.runs) {
    out += fmt::format("<details{}><summary><strong>{}</strong> &mdash; {} finding(s)</summary><ul>\n", r.findings.empty() ? "" : " open",
                       html_escape(r.label), r.findings.size());
    if (r.findings.empty()) out += "<li>none: the gradient flows</li>\n";
    for (const auto& f : r.findings)
      out += fmt::format("<li><span class=\"sev-{}\">{}</span> <strong>{}</strong> ({}): {}<br>remedy: {}</li>\n", to_string(f.severity),
                         to_string(f.severity), to_string(f.kind), html_escape(f.where), html_escape(f.message), html_escape(f.remedy));
    out += "</ul></details>\n";
  }
  return out;
}

std::string setup_html(const Comparison& c) {
  std::string out = "<h2>Setup</h2>\n<table><tr><th class=l>network</th><th class=l>spec</th><th class=l>task</th><th class=l>settings</th></tr>\n";
  for (const auto& r : c.runs) {
    std::string settings;
    for (const auto& e : r.config) settings += e.key + "=" + e.value + " ";
    out += fmt::format("<tr><td class=l>{}</td><td class=l><code>{}</code></td><td class=l>{}</td><td class=l>{}</td></tr>\n", html_escape(r.label),
                       html_escape(r.spec), html_escape(r.task_description), html_escape(settings));
  }
  return out + "</table>\n";
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
  out += "<h2>Verdicts</h2>\n" + verdicts_html(c);
  const auto depth = detail::depth_ranking(c);
  if (!depth.empty()) out += depth_ranking_html(depth);
  const auto time = detail::time_ranking(c);
  if (!time.empty()) out += time_ranking_html(time);
  if (any_underflow(c))
    out += "<p>&le;: the far-end gradient underflowed to zero in this dtype; the figure is the bound it implies. Use dtype=float64 to measure it.</p>\n";
  out += detail::charts_html(c);
  out += detail::comparison_ranks_html(c);
  if (c.flow) out += flow_section_html(*c.flow);
  out += findings_html(c);
  out += setup_html(c);
  out += "<p>Made by gradflow. Every figure is recomputed from the runs' recorded traces.</p>\n</body></html>\n";
  return out;
}

}  // namespace gradflow
