#include "distributed/figures_layout.h"

#include <cmath>
#include <cstdint>
#include <string>

#include "distributed/exact_chunks.h"
#include "distributed/rank_block.h"
#include "gradflow/error.h"

namespace gradflow::detail {

namespace {

[[noreturn]] void other_series(std::int64_t step) {
  throw Error("the ranks recorded other series at step " + std::to_string(step) +
              ": every rank must run the same model, loop and Monitor options");
}

// ---- up to kExactRankRows ranks: every rank's row, exactly ----

std::vector<double> exact_contribution(const StepRecord& step, std::optional<double> checksum, int rank, int world,
                                       int bits) {
  const std::vector<double> chunks = to_chunks(encode_local(step, checksum), bits);
  std::vector<double> block(chunks.size() * static_cast<std::size_t>(world), 0.0);
  std::copy(chunks.begin(), chunks.end(), block.begin() + static_cast<std::ptrdiff_t>(chunks.size() * rank));
  return block;
}

void receive_exact(const double* summed, std::size_t n, StepRecord& step, const Trace& trace, int world, int bits) {
  const std::size_t per = chunks_per_value(bits), width = n / static_cast<std::size_t>(world);
  if (width * static_cast<std::size_t>(world) != n || width % per != 0) other_series(step.step);
  std::vector<std::vector<double>> rows;
  for (int r = 0; r < world; ++r) rows.push_back(from_chunks(summed + r * width, width / per, bits));
  decode_ranks(step, rows, trace);
}

// ---- beyond: a slot per rank for the norm, the largest |g| and the loss; sums; bits ----

// The compact block's parts, in order, for `records` records.
struct Compact {
  std::size_t records, world, per, words;  // words: non-finite bit words per record
  Compact(std::size_t records, int world, int bits)
      : records(records), world(static_cast<std::size_t>(world)), per(chunks_per_value(bits)),
        words((static_cast<std::size_t>(world) + static_cast<std::size_t>(bits) - 1) / static_cast<std::size_t>(bits)) {}
  // The block opens with rank 0's [count, series...] as exact chunks.
  std::size_t per_record() const { return 2 * world + 2 + words; }
  std::size_t record(std::size_t i) const { return (1 + records) * per + i * per_record(); }
  std::size_t losses() const { return record(records); }
  std::size_t size() const { return losses() + world; }
};

std::vector<double> compact_contribution(const StepRecord& step, int rank, int world, int bits) {
  const Compact c(step.records.size(), world, bits);
  std::vector<double> block(c.size(), 0.0);
  if (rank == 0) {
    std::vector<double> header{static_cast<double>(step.records.size())};
    for (const auto& r : step.records) header.push_back(r.series);
    const auto chunks = to_chunks(header, bits);
    std::copy(chunks.begin(), chunks.end(), block.begin());
  }
  const auto me = static_cast<std::size_t>(rank);
  for (std::size_t i = 0; i < step.records.size(); ++i) {
    const TensorStats& g = step.records[i].grad;
    double* at = block.data() + c.record(i);
    at[me] = g.norm();
    at[c.world + me] = g.max_abs;
    at[2 * c.world] = g.sum;
    at[2 * c.world + 1] = static_cast<double>(g.zeros);
    if (g.nonfinite > 0) at[2 * c.world + 2 + me / static_cast<std::size_t>(bits)] = std::ldexp(1.0, static_cast<int>(me % static_cast<std::size_t>(bits)));
  }
  double loss = 0;
  for (double l : step.losses) loss += l;
  if (!step.losses.empty()) block[c.losses() + me] = loss;
  return block;
}

bool bit_set(double word, std::size_t bit) {
  return static_cast<std::uint64_t>(word) >> bit & 1u;
}

void receive_compact(const double* summed, std::size_t n, StepRecord& step, const Trace& trace, int world, int bits) {
  const Compact c(step.records.size(), world, bits);
  if (n != c.size()) other_series(step.step);
  const auto header = from_chunks(summed, 1 + step.records.size(), bits);
  bool same = header[0] == static_cast<double>(step.records.size());
  for (std::size_t i = 0; same && i < step.records.size(); ++i) same = header[1 + i] == step.records[i].series;
  if (!same) other_series(step.step);
  const double ranks = static_cast<double>(world);
  for (std::size_t i = 0; i < step.records.size(); ++i) {
    Record& r = step.records[i];
    const double* at = summed + c.record(i);
    r.ranks.assign(c.world, TensorStats{});
    TensorStats all;  // the averaged loss's gradient, for layer outputs and taps
    all.numel = r.grad.numel * world;
    for (std::size_t k = 0; k < c.world; ++k) {
      TensorStats& local = r.ranks[k];
      local.numel = r.grad.numel;
      local.sum_sq = at[k] * at[k];
      local.max_abs = at[c.world + k];
      local.nonfinite = bit_set(at[2 * c.world + 2 + k / static_cast<std::size_t>(bits)], k % static_cast<std::size_t>(bits)) ? 1 : 0;
      all.sum_sq += local.sum_sq;
      all.max_abs = std::max(all.max_abs, local.max_abs);
      all.nonfinite += local.nonfinite;
    }
    r.ranks_compact = true;
    if (trace.series()[r.series].kind == SeriesKind::parameter) continue;
    all.sum = at[2 * c.world];
    all.zeros = static_cast<std::int64_t>(std::llround(at[2 * c.world + 1]));
    r.grad = scaled(all, ranks);
  }
  step.rank_losses.clear();
  if (!step.losses.empty()) {
    double total = 0;
    for (std::size_t k = 0; k < c.world; ++k) {
      step.rank_losses.push_back(summed[c.losses() + k]);
      total += summed[c.losses() + k];
    }
    step.losses.clear();
    step.loss.reset();
    step.add_loss(total / ranks);
  }
}

}  // namespace

std::vector<double> figures_contribution(const StepRecord& step, std::optional<double> checksum, int rank, int world,
                                         int bits) {
  if (world <= kExactRankRows) return exact_contribution(step, checksum, rank, world, bits);
  return compact_contribution(step, rank, world, bits);
}

void receive_figures(const double* summed, std::size_t n, StepRecord& step, const Trace& trace, int world, int bits) {
  if (world <= kExactRankRows)
    receive_exact(summed, n, step, trace, world, bits);
  else
    receive_compact(summed, n, step, trace, world, bits);
}

}  // namespace gradflow::detail
