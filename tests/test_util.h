#pragma once
// Helpers shared by the tests: relative comparison that prints both values.

#include <cmath>
#include <string>

#include <gtest/gtest.h>

namespace gradflow::test {

inline ::testing::AssertionResult rel_close(double actual, double expected, double rel,
                                            double abs_floor = 0.0) {
  if (std::isnan(actual) && std::isnan(expected)) return ::testing::AssertionSuccess();
  const double diff = std::fabs(actual - expected);
  const double tol = std::max(rel * std::fabs(expected), abs_floor);
  if (diff <= tol) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "actual " << actual << " vs expected " << expected
                                       << " (|diff| " << diff << " > tolerance " << tol << ")";
}

}  // namespace gradflow::test
