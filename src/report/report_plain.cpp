#include <fmt/format.h>

#include "report/figures.h"
#include "report/report_model.h"
#include "distributed/report_ranks.h"
#include "util/text.h"

namespace gradflow {

using detail::attenuation_text;
using detail::Markup;

namespace {

std::string markdown_rankings(const Comparison& c) {
  std::string out;
  const auto depth = detail::depth_ranking(c);
  if (!depth.empty()) {
    out += "\n## Ranking across depth\n\n| # | network | log10 dL/dh first/last (init) | gain/layer | end of training | loss start -> end | findings |\n|---|---|---|---|---|---|---|\n";
    for (const auto& row : depth)
      out += fmt::format("| {} | {} | {} | {} | {} | {} | {} |\n", row.rank, row.run->label, attenuation_text(row.init, Markup::plain),
                         detail::gain_text(row.init), attenuation_text(row.end, Markup::plain),
                         detail::loss_span(row.run->summary, Markup::plain), row.findings);
  }
  const auto time = detail::time_ranking(c);
  if (!time.empty()) {
    out += "\n## Ranking across time\n\n| # | network | log10 dL/dh_1/dL/dh_T (init) | after training | loss start -> end | learned? | findings |\n|---|---|---|---|---|---|---|\n";
    for (const auto& row : time)
      out += fmt::format("| {} | {} | {} | {} | {} | {} | {} |\n", row.rank, row.run->label, attenuation_text(row.init, Markup::plain),
                         attenuation_text(row.end, Markup::plain), detail::loss_span(row.run->summary, Markup::plain),
                         row.learned ? "yes" : "no", row.findings);
  }
  return out;
}

std::string markdown_sweep(const Comparison& c) {
  std::string out = "\n## Sweep over " + std::string(to_string(c.sweep_axis)) +
                    "\n\n| network | values | log10 attenuation | fitted gain |\n|---|---|---|---|\n";
  for (const auto& f : c.sweep) {
    std::vector<std::string> xs, ys;
    for (std::size_t i = 0; i < f.x.size(); ++i) xs.push_back(fmt::format("{:g}", f.x[i])), ys.push_back(fmt::format("{:+.1f}", f.log10[i]));
    out += fmt::format("| {} | {} | {} | {} |\n", f.label, detail::join(xs), detail::join(ys), detail::gain_text(f.gain()));
  }
  return out;
}

}  // namespace

std::string report_markdown(const Comparison& c) {
  std::string out = "# How the gradient flows: a measured comparison\n\n## Verdicts\n\n";
  if (c.verdicts.empty()) out += "No two runs differ by exactly one remedy.\n";
  for (const auto& v : c.verdicts) out += fmt::format("- **{}** ({}): {}\n", v.remedy, v.confirms ? "helps" : "does not help here", v.text);
  out += markdown_rankings(c);
  if (!c.sweep.empty()) out += markdown_sweep(c);
  if (const std::string ranks = detail::comparison_ranks_text(c); !ranks.empty()) out += "\n## Data-parallel ranks\n\n" + ranks;
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
  const auto depth = detail::depth_ranking(c);
  if (!depth.empty()) {
    out += fmt::format("{:<4}{:<24}{:>14}{:>12}{:>14}   {}\n", "#", "across depth", "log10 init", "gain/layer", "log10 end", "loss start -> end");
    for (const auto& row : depth)
      out += fmt::format("{:<4}{:<24}{:>14}{:>12}{:>14}   {}\n", row.rank, row.run->label.substr(0, 23),
                         attenuation_text(row.init, Markup::plain), detail::gain_text(row.init),
                         attenuation_text(row.end, Markup::plain), detail::loss_span(row.run->summary, Markup::plain));
  }
  const auto time = detail::time_ranking(c);
  if (!time.empty()) {
    out += fmt::format("\n{:<4}{:<24}{:>14}{:>14}{:>10}   {}\n", "#", "across time", "log10 init", "log10 end", "learned", "loss start -> end");
    for (const auto& row : time)
      out += fmt::format("{:<4}{:<24}{:>14}{:>14}{:>10}   {}\n", row.rank, row.run->label.substr(0, 23),
                         attenuation_text(row.init, Markup::plain), attenuation_text(row.end, Markup::plain),
                         row.learned ? "yes" : "no", detail::loss_span(row.run->summary, Markup::plain));
  }
  if (const std::string ranks = detail::comparison_ranks_text(c); !ranks.empty()) out += "\ndata-parallel ranks:\n" + ranks;
  if (!c.verdicts.empty()) out += "\nverdicts:\n";
  for (const auto& v : c.verdicts) out += fmt::format("  [{}] {}\n", v.confirms ? "helps" : "no", v.text);
  return out;
}

}  // namespace gradflow
