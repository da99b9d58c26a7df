#pragma once
/// \file
/// The one exception type the library throws.

#include <stdexcept>
#include <string>

namespace gradflow {

/// Thrown by the library for every problem a caller can act on. The message names the problem
/// and the fix, in one line, so that `main()` can print it as it is.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// A problem with what the caller asked for (a bad spec, option or value) rather than with the
/// run itself. The CLI maps it to exit code 2.
class UsageError : public Error {
 public:
  using Error::Error;
};

}  // namespace gradflow
