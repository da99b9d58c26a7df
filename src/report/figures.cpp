#include "report/figures.h"

#include <cmath>

#include <fmt/format.h>

namespace gradflow::detail {

std::string orders_text(const std::optional<double>& v) { return v ? fmt::format("{:+.1f}", *v) : "n/a"; }

std::string gain_text(const std::optional<double>& g) { return g ? fmt::format("{:.3g}x", *g) : "n/a"; }

std::string gain_text(const std::optional<Attenuation>& a) { return a ? gain_text(a->gain()) : "n/a"; }

std::string attenuation_text(const std::optional<Attenuation>& a, Markup markup, const char* missing) {
  if (!a) return missing;
  if (a->overflow) return "non-finite";
  if (!a->log10) return "no gradient";
  const char* bound = markup == Markup::html ? "&le; " : "<= ";
  return fmt::format("{}{:+.1f}", a->underflow ? bound : "", *a->log10);
}

std::string loss_text(const std::optional<double>& v) { return v ? fmt::format("{:.3g}", *v) : "non-finite"; }

std::string loss_span(const RunSummary& s, Markup markup) {
  if (s.recorded_steps == 0) return "not recorded";
  return loss_text(s.loss_first) + (markup == Markup::html ? " &rarr; " : " -> ") + loss_text(s.loss_last);
}

std::string slope_text(const std::optional<double>& slope) {
  return slope && std::isfinite(*slope) ? fmt::format("{:+.2f}", *slope) : "n/a";
}

}  // namespace gradflow::detail
