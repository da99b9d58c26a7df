#pragma once
// The data-parallel section of a model's report; empty for a one-process trace.

#include <string>

#include "gradflow/report.h"
#include "gradflow/trace.h"

namespace gradflow::detail {

std::string ranks_html(const Trace& trace);
std::string ranks_markdown(const Trace& trace);
// One line per data-parallel run of a comparison ("" when none has several ranks): HTML list
// items, or "- label: sentence" lines.
std::string comparison_ranks_html(const Comparison& c);
std::string comparison_ranks_text(const Comparison& c);

}  // namespace gradflow::detail
