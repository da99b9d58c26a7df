#pragma once
// Doubles that travel exactly inside a sum allreduce of a tensor of another floating type (a
// float gradient bucket): each double's 64 bits become chunks of a few bits, small non-negative
// integers that type holds exactly. A rank writes its row where every other rank writes zeros,
// and x + 0 is x: the sum brings every rank's row back bit for bit, NaN and infinities included.

#include <cstddef>
#include <vector>

namespace gradflow::detail {

// The chunk width for a type whose significand has `digits` bits (24 for float, 11 for half,
// 8 for bfloat16, 53 for double): every integer below 2^width is exact in it.
int chunk_bits(int digits);
// Chunks per double at that width.
std::size_t chunks_per_value(int bits);
// Each value's chunks, lowest bits first.
std::vector<double> to_chunks(const std::vector<double>& values, int bits);
// The `n` doubles whose chunks start at `chunks`. Throws gradflow::Error when a chunk is not an
// integer of that width (two ranks wrote the same place).
std::vector<double> from_chunks(const double* chunks, std::size_t n, int bits);

}  // namespace gradflow::detail
