#include "monitor/segment_links.h"

#include <algorithm>

#include <torch/csrc/autograd/function.h>

#include "gradflow/trace.h"

namespace gradflow::detail {

namespace {

// Deeper than any chain of segments without layers between two layers.
constexpr int kMaxDepth = 64;

void add_unique(std::vector<int>& v, int x) {
  if (std::find(v.begin(), v.end(), x) == v.end()) v.push_back(x);
}

}  // namespace

bool SegmentLinks::is_segment(const torch::autograd::Node& node) {
  // A Python autograd Function's node is named after its class: PyTorch 1.13 and 2.x alike.
  return node.name() == "CheckpointFunctionBackward";
}

int SegmentLinks::segment_id(const torch::autograd::Node* node) {
  auto [it, fresh] = ids_.emplace(node, static_cast<int>(segments_.size()));
  if (fresh) segments_.emplace_back();
  return it->second;
}

void SegmentLinks::segment_feeds_series(int segment, int to) { add_unique(segments_.at(segment).feeds_series, to); }

void SegmentLinks::segment_feeds_segment(int segment, int to_segment) {
  add_unique(segments_.at(segment).feeds_segments, to_segment);
  add_unique(segments_.at(to_segment).fed_by_segments, segment);
}

void SegmentLinks::series_feeds_segment(int from, int segment) { add_unique(segments_.at(segment).fed_by_series, from); }

void SegmentLinks::enter(int segment) { stack_.push_back(segment); }

void SegmentLinks::leave(int segment, Trace& trace) {
  if (!stack_.empty() && stack_.back() == segment) stack_.pop_back();
  if (segment < 0 || segment >= segments()) return;
  segments_[segment].done = true;
  resolve(trace);
}

void SegmentLinks::recomputed(int series, const std::vector<int>& inside, bool reaches_input) {
  if (current() < 0) return;
  Segment& s = segments_[current()];
  add_unique(s.series, series);
  if (reaches_input) add_unique(s.reach_input, series);
  for (int from : inside) add_unique(s.consumed, from);
}

void SegmentLinks::set_outputs(std::vector<int> tops, bool reaches_input) {
  if (current() < 0) return;
  Segment& s = segments_[current()];
  s.tops = std::move(tops);
  s.output_reaches_input = reaches_input;
  s.outputs_read = true;
}

std::vector<int> SegmentLinks::tops(int segment, int depth) const {
  const Segment& s = segments_[segment];
  if (!s.done || depth > kMaxDepth) return {};
  if (s.series.empty() || (s.outputs_read && s.tops.empty())) return bottoms(segment, depth + 1);
  std::vector<int> out;
  if (s.outputs_read) {
    out = s.tops;
    if (s.output_reaches_input)
      for (int x : bottoms(segment, depth + 1)) add_unique(out, x);
    return out;
  }
  for (int x : s.series)
    if (std::find(s.consumed.begin(), s.consumed.end(), x) == s.consumed.end()) out.push_back(x);
  return out;
}

std::vector<int> SegmentLinks::bottoms(int segment, int depth) const {
  const Segment& s = segments_[segment];
  std::vector<int> out = s.fed_by_series;
  for (int below : s.fed_by_segments)
    for (int x : tops(below, depth + 1)) add_unique(out, x);
  return out;
}

void SegmentLinks::resolve(Trace& trace) const {
  for (int k = 0; k < segments(); ++k) {
    const Segment& s = segments_[k];
    if (!s.done) continue;
    const std::vector<int> top = tops(k);
    for (int to : s.feeds_series)
      for (int from : top) trace.add_input(to, from);
    const std::vector<int> bottom = bottoms(k);
    for (int to : s.reach_input)
      for (int from : bottom) trace.add_input(to, from);
  }
}

void SegmentLinks::clear() {
  ids_.clear();
  segments_.clear();
  stack_.clear();
}

}  // namespace gradflow::detail
