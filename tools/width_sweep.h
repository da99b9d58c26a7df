#pragma once
#include <string>

#include "cmd_compare.h"

namespace gradflow::cli {

// `gradflow compare --sweep width=64,128,...`: the coordinate check of each spec across widths.
bool is_width_sweep(const std::string& sweep);
int run_width_sweep(const CompareOptions& options);

}  // namespace gradflow::cli
