#pragma once
// Least-squares slope of y against x.

#include <optional>
#include <vector>

namespace gradflow::detail {

// The slope of the least-squares line through (x[i], y[i]); none for fewer than two points or
// when every x is the same.
std::optional<double> least_squares_slope(const std::vector<double>& x, const std::vector<double>& y);

}  // namespace gradflow::detail
