#include "distributed/rank_block.h"

#include <cmath>
#include <limits>
#include <string>

#include "gradflow/error.h"

namespace gradflow::detail {

namespace {

// Layout: [records, losses, checksum, loss..., (series, numel, nonfinite, zeros, sum, sum_sq, max_abs)...]
constexpr std::size_t kHeader = 3;
constexpr std::size_t kPerRecord = 7;

struct BlockView {
  const std::vector<double>& b;
  std::size_t records() const { return static_cast<std::size_t>(b.at(0)); }
  std::size_t losses() const { return static_cast<std::size_t>(b.at(1)); }
  double checksum() const { return b.at(2); }
  double loss(std::size_t k) const { return b.at(kHeader + k); }
  const double* record(std::size_t i) const { return &b.at(kHeader + losses() + i * kPerRecord); }
  bool well_formed() const {
    return b.size() >= kHeader && b.size() == kHeader + losses() + records() * kPerRecord;
  }
};

TensorStats stats_at(const double* v) {
  TensorStats s;
  s.numel = static_cast<std::int64_t>(v[1]);
  s.nonfinite = static_cast<std::int64_t>(v[2]);
  s.zeros = static_cast<std::int64_t>(v[3]);
  s.sum = v[4];
  s.sum_sq = v[5];
  s.max_abs = v[6];
  return s;
}

void check_same_shape(const std::vector<std::vector<double>>& blocks, const StepRecord& step) {
  const BlockView first{blocks.at(0)};
  for (std::size_t r = 0; r < blocks.size(); ++r) {
    const BlockView v{blocks[r]};
    bool same = v.well_formed() && v.records() == first.records() && v.losses() == first.losses();
    for (std::size_t i = 0; same && i < v.records(); ++i) same = v.record(i)[0] == first.record(i)[0];
    if (!same)
      throw Error("rank " + std::to_string(r) + " recorded other series than rank 0 at step " + std::to_string(step.step) +
                  ": every rank must run the same model, loop and Monitor options");
  }
  bool mine = first.records() == step.records.size();
  for (std::size_t i = 0; mine && i < step.records.size(); ++i) mine = first.record(i)[0] == step.records[i].series;
  if (!mine)
    throw Error("this rank recorded other series than rank 0 at step " + std::to_string(step.step) +
                ": every rank must run the same model, loop and Monitor options");
}

}  // namespace

std::vector<double> encode_local(const StepRecord& step, std::optional<double> checksum) {
  std::vector<double> b{static_cast<double>(step.records.size()), static_cast<double>(step.losses.size()),
                        checksum ? *checksum : std::numeric_limits<double>::quiet_NaN()};
  b.insert(b.end(), step.losses.begin(), step.losses.end());
  for (const auto& r : step.records) {
    const auto& g = r.grad;
    b.insert(b.end(), {static_cast<double>(r.series), static_cast<double>(g.numel), static_cast<double>(g.nonfinite),
                       static_cast<double>(g.zeros), g.sum, g.sum_sq, g.max_abs});
  }
  return b;
}

TensorStats scaled(TensorStats s, double k) {
  s.sum /= k;
  s.sum_sq /= k * k;
  s.max_abs /= k;
  return s;
}

void decode_ranks(StepRecord& step, const std::vector<std::vector<double>>& blocks, const Trace& trace) {
  check_same_shape(blocks, step);
  const double world = static_cast<double>(blocks.size());
  const std::size_t n_losses = BlockView{blocks[0]}.losses();
  step.rank_losses.clear();
  step.rank_checksums.clear();
  std::vector<double> mean_losses(n_losses, 0.0);
  for (const auto& b : blocks) {
    const BlockView v{b};
    double rank_loss = 0;
    for (std::size_t k = 0; k < n_losses; ++k) {
      mean_losses[k] += v.loss(k) / world;
      rank_loss += v.loss(k);
    }
    if (n_losses > 0) step.rank_losses.push_back(rank_loss);
    if (!std::isnan(v.checksum())) step.rank_checksums.push_back(v.checksum());
  }
  step.losses.clear();
  step.loss.reset();
  for (double l : mean_losses) step.add_loss(l);
  for (std::size_t i = 0; i < step.records.size(); ++i) {
    Record& r = step.records[i];
    r.ranks.clear();
    for (const auto& b : blocks) r.ranks.push_back(stats_at(BlockView{b}.record(i)));
    if (trace.series()[r.series].kind == SeriesKind::parameter) continue;
    TensorStats all;
    for (const auto& local : r.ranks) all.merge(local);
    r.grad = scaled(all, world);
  }
}

}  // namespace gradflow::detail
