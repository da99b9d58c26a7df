// The data-parallel part of a model's report: each rank's local gradient and the noise scale.
#include "distributed/report_ranks.h"

#include <fmt/format.h>

#include "distributed/rank_figures.h"
#include "report/report_model.h"
#include "report/svg.h"

namespace gradflow::detail {

namespace {

std::string local_norm_chart(const RankFigures& f) {
  LineChart c = line_chart("Each rank's local gradient norm (whole model)", "step", "|dL/dθ| on the rank's shard (log scale)",
                           "Before the average: ranks that train one model on like shards stay close.");
  for (std::size_t k = 0; k < f.norms.size(); ++k) {
    LineSeries s;
    s.label = fmt::format("rank {}", k);
    s.markers = false;
    for (std::size_t i = 0; i < f.steps.size(); ++i) {
      s.x.push_back(static_cast<double>(f.steps[i]));
      s.y.push_back(f.norms[k][i]);
    }
    c.series.push_back(std::move(s));
  }
  return render(c);
}

std::string noise_chart(const RankFigures& f) {
  LineChart c = line_chart("Gradient noise scale B_simple = tr(Σ)/|G|²", "step", "examples (log scale)",
                           "McCandlish et al. 2018: batches well below it use each example efficiently; well above it, "
                           "extra examples mostly average out noise already gone.");
  for (const auto& n : f.noise) {
    LineSeries s;
    s.label = n.name;
    s.markers = false;
    s.dashed = n.name != kWholeModel;
    for (std::size_t i = 0; i < n.steps.size(); ++i) {
      s.x.push_back(static_cast<double>(n.steps[i]));
      s.y.push_back(n.b_simple[i]);
    }
    c.series.push_back(std::move(s));
  }
  return render(c);
}

}  // namespace

std::string ranks_html(const Trace& trace) {
  const auto f = rank_figures(trace);
  if (!f) return "";
  std::string out = "<h3>Data-parallel ranks</h3>\n<p>" + html_escape(ranks_sentence(*f)) + ".</p>\n";
  if (!f->steps.empty()) out += local_norm_chart(*f);
  if (!f->noise.empty()) out += noise_chart(*f);
  return out;
}

std::string ranks_markdown(const Trace& trace) {
  const auto f = rank_figures(trace);
  if (!f) return "";
  std::string out = "\n" + ranks_sentence(*f) + ".\n";
  if (f->noise.empty()) return out;
  out += "\n| parameters | noise scale B_simple at the last step |\n|---|---|\n";
  for (const auto& n : f->noise) out += fmt::format("| {} | {:.3g} |\n", n.name, n.last());
  return out;
}

std::string comparison_ranks_html(const Comparison& c) {
  std::string items;
  for (const auto& r : c.runs)
    if (const auto f = rank_figures(r.trace))
      items += "<li><strong>" + html_escape(r.label) + "</strong>: " + html_escape(ranks_sentence(*f)) + ".</li>\n";
  return items.empty() ? "" : "<h2>Data-parallel ranks</h2>\n<ul>\n" + items + "</ul>\n";
}

std::string comparison_ranks_text(const Comparison& c) {
  std::string lines;
  for (const auto& r : c.runs)
    if (const auto f = rank_figures(r.trace)) lines += "- " + r.label + ": " + ranks_sentence(*f) + ".\n";
  return lines;
}

}  // namespace gradflow::detail
