#include "distributed/exact_chunks.h"

#include <cmath>
#include <cstdint>
#include <cstring>

#include "gradflow/error.h"

namespace gradflow::detail {

int chunk_bits(int digits) { return digits >= 32 ? 32 : digits; }

std::size_t chunks_per_value(int bits) { return static_cast<std::size_t>((64 + bits - 1) / bits); }

std::vector<double> to_chunks(const std::vector<double>& values, int bits) {
  const std::size_t per = chunks_per_value(bits);
  const std::uint64_t mask = (std::uint64_t{1} << bits) - 1;
  std::vector<double> out;
  out.reserve(values.size() * per);
  for (double v : values) {
    std::uint64_t u = 0;
    std::memcpy(&u, &v, sizeof u);
    for (std::size_t k = 0; k < per; ++k) out.push_back(static_cast<double>((u >> (k * bits)) & mask));
  }
  return out;
}

std::vector<double> from_chunks(const double* chunks, std::size_t n, int bits) {
  const std::size_t per = chunks_per_value(bits);
  const double limit = std::ldexp(1.0, bits);
  std::vector<double> out(n);
  for (std::size_t i = 0; i < n; ++i) {
    std::uint64_t u = 0;
    for (std::size_t k = 0; k < per; ++k) {
      const double c = chunks[i * per + k];
      if (!(c >= 0 && c < limit) || c != std::floor(c))
        throw Error("the figures that ride with the gradient came back corrupt (" + std::to_string(c) +
                    "): every rank must run the same model, loop and Monitor options");
      u |= static_cast<std::uint64_t>(c) << (k * bits);
    }
    std::memcpy(&out[i], &u, sizeof u);
  }
  return out;
}

}  // namespace gradflow::detail
