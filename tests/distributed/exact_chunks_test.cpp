// Figures that ride in a gradient bucket come back bit for bit after a sum with zeros, in every
// floating type a bucket can have.
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include <gtest/gtest.h>

#include "distributed/exact_chunks.h"
#include "gradflow/error.h"

namespace gradflow::detail {
namespace {

const std::vector<double> kValues{0.0,
                                  -0.0,
                                  1.0,
                                  -3.25,
                                  1e-300,
                                  std::numeric_limits<double>::denorm_min(),
                                  1.7976931348623157e308,
                                  std::numeric_limits<double>::infinity(),
                                  -std::numeric_limits<double>::infinity(),
                                  std::numeric_limits<double>::quiet_NaN(),
                                  0.1 + 0.2,
                                  12345678901234567.0};

bool same_bits(double a, double b) { return std::memcmp(&a, &b, sizeof a) == 0; }

// A type with `digits` significand bits: float's rounding of each chunk, then a sum with the other
// ranks' zeros in that type.
double through_type(double chunk, int digits) {
  const int e = chunk == 0 ? 0 : std::ilogb(chunk);
  const double ulp = std::ldexp(1.0, std::max(e - digits + 1, 0));
  return std::nearbyint(chunk / ulp) * ulp + 0.0 + 0.0;
}

TEST(ExactChunks, EveryDoubleComesBackBitForBitInEachBucketType) {
  for (int digits : {53, 24, 11, 8}) {
    const int bits = chunk_bits(digits);
    auto chunks = to_chunks(kValues, bits);
    EXPECT_EQ(chunks.size(), kValues.size() * chunks_per_value(bits));
    for (double& c : chunks) {
      EXPECT_EQ(through_type(c, digits), c) << "chunk " << c << " is not exact with " << digits << " digits";
      c = through_type(c, digits);
    }
    const auto back = from_chunks(chunks.data(), kValues.size(), bits);
    for (std::size_t i = 0; i < kValues.size(); ++i) EXPECT_TRUE(same_bits(back[i], kValues[i])) << digits << " " << i;
  }
}

TEST(ExactChunks, AChunkNoRankCouldHaveWrittenIsRefused) {
  const int bits = chunk_bits(24);
  for (double bad : {-1.0, 0.5, std::ldexp(1.0, 24), std::numeric_limits<double>::quiet_NaN()}) {
    auto chunks = to_chunks({1.5}, bits);
    chunks[0] = bad;
    EXPECT_THROW(from_chunks(chunks.data(), 1, bits), Error) << bad;
  }
}

}  // namespace
}  // namespace gradflow::detail
