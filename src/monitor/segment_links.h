#pragma once
// Which layer feeds which, across the segments of reentrant activation checkpointing.
//
// torch.utils.checkpoint in its reentrant mode runs a segment's forward without autograd and
// leaves one node in the step's graph (CheckpointFunctionBackward); in the step's backward that
// node computes the segment again, from detached copies of its inputs, and runs a backward of
// its own through the copy. The layers inside are then recorded from the recomputation, and the
// graph shows neither what feeds them nor what they feed. This joins them: in the step's graph a
// segment node stands between the layer outputs around it; in its recomputation the layers that
// reach its inputs take what feeds the segment, and those that feed no other layer inside it
// (its sinks) feed what the segment feeds.

#include <memory>
#include <unordered_map>
#include <vector>

namespace torch::autograd {
struct Node;
}

namespace gradflow {
class Trace;
}

namespace gradflow::detail {

class SegmentLinks {
 public:
  // Whether `node` is a reentrant checkpoint's segment (PyTorch's CheckpointFunction).
  static bool is_segment(const torch::autograd::Node& node);

  // The step's graph, as a walk from the layer outputs finds it. A segment's id is its index
  // here; `node` must stay alive while the walk runs.
  int segment_id(const torch::autograd::Node* node);
  int segments() const { return static_cast<int>(segments_.size()); }
  void segment_feeds_series(int segment, int to);
  void segment_feeds_segment(int segment, int to_segment);
  void series_feeds_segment(int from, int segment);

  // The recomputation: `segment`'s backward begins (its node runs) and ends.
  void enter(int segment);
  void leave(int segment, Trace& trace);
  // The segment being recomputed now, -1 outside one.
  int current() const { return stack_.empty() ? -1 : stack_.back(); }
  // A layer output of the current segment's recomputation: `inside` are the layers of the
  // segment that feed it, `reaches_input` whether it reaches one of the segment's inputs.
  void recomputed(int series, const std::vector<int>& inside, bool reaches_input);
  // What the current segment's outputs are made of, read from its nested backward's graph: the
  // layers reached from them first, and whether they reach the segment's inputs without passing
  // a layer (a residual connection around the whole segment).
  bool wants_outputs() const { return current() >= 0 && !segments_[current()].outputs_read; }
  void set_outputs(std::vector<int> tops, bool reaches_input);

  // Forgets the step's segments.
  void clear();

 private:
  struct Segment {
    std::vector<int> feeds_series, feeds_segments, fed_by_series, fed_by_segments;
    std::vector<int> series;          // recomputed in it, in forward order
    std::vector<int> reach_input;     // those that reach its inputs
    std::vector<int> consumed;        // those another of its layers consumes
    std::vector<int> tops;            // those its outputs reach first (set_outputs)
    bool outputs_read = false;
    bool output_reaches_input = false;
    bool done = false;
  };
  // The series its output reaches first: those set_outputs read, with what feeds the segment where
  // its output reaches its input directly; unread, its layers that no other of its layers
  // consumes; a segment without layers passes on what feeds it.
  std::vector<int> tops(int segment, int depth = 0) const;
  // The series feeding `segment`'s inputs, looking through segments without layers.
  std::vector<int> bottoms(int segment, int depth = 0) const;
  void resolve(Trace& trace) const;

  std::unordered_map<const torch::autograd::Node*, int> ids_;
  std::vector<Segment> segments_;
  std::vector<int> stack_;
};

}  // namespace gradflow::detail
