// Any text given as a model spec either resolves or throws gradflow::UsageError: nothing else.
#include <cstddef>
#include <cstdint>
#include <string>

#include "gradflow/error.h"
#include "models/spec.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    const auto r = gradflow::models::resolve_spec(text);
    // A resolved spec's canonical form resolves to itself.
    if (gradflow::models::resolve_spec(r.canonical()).canonical() != r.canonical()) __builtin_trap();
    (void)gradflow::models::estimate_parameters(r, 32, 10);
  } catch (const gradflow::UsageError&) {
  }
  return 0;
}
