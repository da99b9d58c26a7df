#pragma once
// Every figure a report or the terminal shows, formatted in one place.

#include <optional>
#include <string>

#include "gradflow/summary.h"

namespace gradflow::detail {

// HTML escapes its symbols (&le;, &rarr;); plain text spells them (<=, ->).
enum class Markup { html, plain };

// Orders of magnitude, signed with one decimal ("+1.2", "-15.3"); "n/a" when unknown.
std::string orders_text(const std::optional<double>& log10);
// A gain factor ("0.142x"); "n/a" when unknown.
std::string gain_text(const std::optional<double>& gain);
std::string gain_text(const std::optional<Attenuation>& a);
// An attenuation: "-15.3", "<= -44.9" for an underflow bound, "non-finite", "no gradient", or
// `missing` when there is none.
std::string attenuation_text(const std::optional<Attenuation>& a, Markup markup, const char* missing = "n/a");
// A log-log slope against width, signed with two decimals ("+0.98", "-0.02"); "n/a" when unknown.
std::string slope_text(const std::optional<double>& slope);
// A loss value ("2.41"), "non-finite" when it is not.
std::string loss_text(const std::optional<double>& loss);
// "2.41 -> 2.29": the first and last loss of a run.
std::string loss_span(const RunSummary& s, Markup markup);

}  // namespace gradflow::detail
