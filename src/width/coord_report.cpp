#include <fmt/format.h>

#include "gradflow/atomic_file.h"
#include "gradflow/coord_check.h"
#include "report/figures.h"
#include "report/svg.h"

namespace gradflow {

namespace {

using detail::html_escape;

constexpr CoordQuantity kAll[] = {CoordQuantity::activation, CoordQuantity::change, CoordQuantity::output_gradient,
                                  CoordQuantity::weight_gradient, CoordQuantity::update};

// The step the literature's claim is about: after one update.
std::int64_t first_update_step(const CoordCheck& c) { return c.steps > 1 ? 1 : 0; }

std::string verdict_text(const WidthVerdict& v) {
  if (!v.measured) return "not measured: no output of its own at two widths (its weight applied by its parent module)";
  if (v.stable) return "width-stable";
  return fmt::format("unstable: {} ~ width^{} at step {}, from step {}", coord_heading(v.quantity), detail::slope_text(v.slope), v.step,
                     v.departs_at);
}

// The slope, or why there is none: a figure exactly 0 at every width (a layer that received no
// gradient yet, a change at step 0) has no logarithm.
std::string slope_at(const CoordCheck& c, const WidthAnalysis& a, CoordQuantity q, std::int64_t step, std::size_t layer) {
  const auto& s = a.slopes[static_cast<std::size_t>(q)][static_cast<std::size_t>(step)][layer];
  if (s) return detail::slope_text(s);
  bool zero = true;
  for (std::size_t w = 0; w < c.widths.size(); ++w) zero = zero && c.at(q, step, layer, w) == 0.0;
  return zero ? "0 at every width" : detail::slope_text(s);
}

std::string kind_text(const CoordLayer& l) {
  return l.tied_to.empty() ? to_string(l.kind) : std::string(to_string(l.kind)) + ", tied to " + l.tied_to;
}

// A markdown table cell: its own '|' would end the cell.
std::string md_cell(const std::string& text) {
  std::string out;
  for (char ch : text) out += ch == '|' ? std::string("\\|") : std::string(1, ch);
  return out;
}

std::string check_intro(const CoordCheck& c) {
  std::string widths;
  for (auto w : c.widths) widths += (widths.empty() ? "" : ", ") + std::to_string(w);
  return fmt::format("{}; widths {}; steps 0 to {} on one batch; {}", c.optimizer.empty() ? "optimizer not named" : c.optimizer, widths,
                     c.steps - 1, c.seeds == 1 ? std::string("one initialisation") : fmt::format("mean over {} initialisations", c.seeds));
}

std::string verdict_table_html(const CoordCheck& c, const WidthAnalysis& a) {
  const std::int64_t t1 = first_update_step(c), last = c.steps - 1;
  std::string out = fmt::format(
      "<table><tr><th class=\"l\">layer</th><th class=\"l\">kind</th><th>slope of {0} at step {1}</th><th>slope of {2} at step {1}</th>"
      "<th>slope of {0} at step {3}</th><th>slope of {4} at step {1}</th><th class=\"l\">verdict</th></tr>\n",
      html_escape(coord_heading(CoordQuantity::activation)), t1, html_escape(coord_heading(CoordQuantity::change)), last,
      html_escape(coord_heading(CoordQuantity::update)));
  for (std::size_t l = 0; l < c.layers.size(); ++l) {
    const auto& v = a.verdicts[l];
    out += fmt::format("<tr class=\"{}\"><td class=\"l\">{}</td><td class=\"l\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"l v\">{}</td></tr>\n",
                       !v.measured ? "" : v.stable ? "good" : "bad", html_escape(v.layer), html_escape(kind_text(c.layers[l])), slope_at(c, a, CoordQuantity::activation, t1, l),
                       slope_at(c, a, CoordQuantity::change, t1, l), slope_at(c, a, CoordQuantity::activation, last, l),
                       slope_at(c, a, CoordQuantity::update, t1, l), html_escape(verdict_text(v)));
  }
  return out + "</table>\n";
}

std::string findings_html(const WidthAnalysis& a) {
  if (a.findings.empty()) return "<p>No finding: every layer's output and its change keep their size across these widths.</p>\n";
  std::string out = "<ul>\n";
  for (const auto& f : a.findings)
    out += fmt::format("<li><b>{}</b>: {}.<br>Remedy: {}.</li>\n", to_string(f.kind), html_escape(f.message), html_escape(f.remedy));
  return out + "</ul>\n";
}

detail::LineChart panel(const CoordCheck& c, CoordQuantity q, std::int64_t step) {
  detail::LineChart chart;
  chart.title = fmt::format("{} at step {}", coord_heading(q), step);
  chart.x_label = "width";
  chart.y_label = coord_heading(q);
  chart.log_x = true;
  chart.legend = false;
  chart.width = 290;
  chart.height = 240;
  for (auto w : c.widths) chart.x_ticks.push_back(static_cast<double>(w));
  std::string zero;
  for (std::size_t l = 0; l < c.layers.size(); ++l) {
    bool all_zero = true;
    for (std::size_t w = 0; w < c.widths.size(); ++w) all_zero = all_zero && c.at(q, step, l, w) == 0.0;
    if (all_zero) zero += (zero.empty() ? "" : ", ") + c.layers[l].name;
  }
  if (!zero.empty()) chart.note = "0 at every width, so not drawn on the log axis: " + zero;
  for (std::size_t l = 0; l < c.layers.size(); ++l) {
    detail::LineSeries s;
    s.label = c.layers[l].name;
    for (std::size_t w = 0; w < c.widths.size(); ++w) {
      s.x.push_back(static_cast<double>(c.widths[w]));
      s.y.push_back(c.at(q, step, l, w));
      s.tips.push_back(fmt::format("{} at width {}: {:.4g}", c.layers[l].name, c.widths[w], c.at(q, step, l, w)));
    }
    chart.series.push_back(std::move(s));
  }
  return chart;
}

std::string charts_html(const CoordCheck& c) {
  // Every panel draws the layers in the same colours: one legend for them all.
  std::string out = "<h3>Figures against width</h3>\n" + detail::render_legend(panel(c, CoordQuantity::activation, 0).series);
  for (CoordQuantity q : kAll) {
    out += fmt::format("<h4>{}</h4>\n<div class=\"panels\">", html_escape(coord_heading(q)));
    for (std::int64_t t = 0; t < c.steps; ++t) {
      if (q == CoordQuantity::change && t == 0) continue;  // zero by definition
      out += detail::render(panel(c, q, t));
    }
    out += "</div>\n";
  }
  return out;
}

std::string check_html(const CoordCheck& c, const WidthOptions& o) {
  const WidthAnalysis a = analyse_widths(c, o);
  return fmt::format("<h2>{}</h2>\n<p>{}</p>\n", html_escape(c.label), html_escape(check_intro(c))) + verdict_table_html(c, a) +
         findings_html(a) + charts_html(c);
}

constexpr const char* kStyle =
    "body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1400px;color:#222;padding:0 1em}h2{overflow-wrap:anywhere}"
    ".legend-row{display:flex;flex-wrap:wrap;gap:.3em 1.2em;font-size:.85em;margin:.5em 0}"
    "table{border-collapse:collapse;margin:1em 0;font-size:.92em}th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}"
    "th{background:#f3f3f3}td.l,th.l{text-align:left}tr.good td.v{background:#e7f4ea}tr.bad td.v{background:#fbe9e7}"
    ".panels{display:flex;flex-wrap:wrap;gap:.5em}.chart{margin:0}.chart svg{max-width:100%;height:auto}.plot{fill:#fafafa;stroke:#999}"
    ".grid{stroke:#e3e3e3}.tick{font-size:11px;fill:#444}.axis{font-size:12px;fill:#222}.title{font-size:13px;font-weight:600;fill:#222}"
    ".legend{font-size:11px;fill:#222}.empty{font-size:13px;fill:#888}code{background:#f3f3f3;padding:0 .2em}";

}  // namespace

std::string coord_report_html(const std::vector<CoordCheck>& checks, const WidthOptions& o) {
  std::string out = std::string("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>gradflow: coordinate check across widths</title><style>") +
                    kStyle + "</style></head><body>\n<h1>Coordinate check across widths</h1>\n";
  out += fmt::format(
      "<p>Each model is trained for a few steps at every width on the same batch, seed and optimizer; each figure is the mean |x| "
      "over one tensor's coordinates, and each slope the least-squares slope of its logarithm against log(width). Under the "
      "maximal-update parametrisation (&micro;P, Tensor Programs V) every layer's output and its change since initialisation keep "
      "their size as the model widens; under the standard parametrisation with Adam they grow after the first update. A layer is "
      "width-stable when, at every step, its output grows no faster than width<sup>{0:g}</sup> and its change neither grows nor "
      "shrinks faster than width<sup>&plusmn;{0:g}</sup>, judged over all widths and, with four or more, over the wider half too "
      "(from the middle width up): a scaling persists at the wide end, a finite-width correction fades there; an output may shrink "
      "(&micro;P's read-out does at initialisation). "
      "Gradients and the weights' own updates are shown with their slopes: under &micro;P a hidden weight's update per coordinate "
      "shrinks as 1/width by design, so that its effect on the output does not.</p>\n",
      o.slope_tolerance);
  for (const auto& c : checks) out += check_html(c, o);
  return out + "</body></html>\n";
}

std::string coord_report_markdown(const std::vector<CoordCheck>& checks, const WidthOptions& o) {
  std::string out = fmt::format(
      "# Coordinate check across widths\n\nEach figure is a mean |x| over one tensor's coordinates, each slope that of its logarithm "
      "against log(width). A layer is width-stable when, at every step, its output grows no faster than width^{0:g} and its change "
      "since initialisation neither grows nor shrinks faster than width^±{0:g}, judged over all widths and, with four or more, "
      "over the wider half too.\n",
      o.slope_tolerance);
  for (const auto& c : checks) {
    const WidthAnalysis a = analyse_widths(c, o);
    const std::int64_t t1 = first_update_step(c), last = c.steps - 1;
    out += fmt::format("\n## {}\n\n{}\n\n| layer | kind | slope of {} at step {} | slope of {} at step {} | slope of {} at step {} | verdict |\n"
                       "|---|---|---:|---:|---:|---|\n",
                       c.label, check_intro(c), md_cell(coord_heading(CoordQuantity::activation)), t1, md_cell(coord_heading(CoordQuantity::change)),
                       t1, md_cell(coord_heading(CoordQuantity::activation)), last);
    for (std::size_t l = 0; l < c.layers.size(); ++l)
      out += fmt::format("| {} | {} | {} | {} | {} | {} |\n", md_cell(a.verdicts[l].layer), md_cell(kind_text(c.layers[l])),
                         slope_at(c, a, CoordQuantity::activation, t1, l), slope_at(c, a, CoordQuantity::change, t1, l),
                         slope_at(c, a, CoordQuantity::activation, last, l), md_cell(verdict_text(a.verdicts[l])));
    for (const auto& f : a.findings) out += fmt::format("\n- **{}**: {}. Remedy: {}.", to_string(f.kind), f.message, f.remedy);
    out += a.findings.empty() ? "\nNo finding: every layer is width-stable.\n" : "\n";
  }
  return out;
}

void write_coord_report(const std::vector<CoordCheck>& checks, const std::string& out_dir, const WidthOptions& o) {
  write_file_atomic(out_dir + "/coord_check.json", coord_checks_to_json(checks));
  write_file_atomic(out_dir + "/report.html", coord_report_html(checks, o));
  write_file_atomic(out_dir + "/report.md", coord_report_markdown(checks, o));
}

}  // namespace gradflow
