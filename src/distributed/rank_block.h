#pragma once
// What each rank sends at a recorded step of a data-parallel run, as one block of doubles, and
// how the gathered blocks enter the step: one collective per recorded step, whatever the model.

#include <optional>
#include <vector>

#include "gradflow/trace.h"

namespace gradflow::detail {

// The step's local figures: its losses, its records' gradient sums, and a parameter checksum
// when the ranks are compared at this step.
std::vector<double> encode_local(const StepRecord& step, std::optional<double> checksum);

// Fills `step` from every rank's block (index = rank): each record's `ranks`, the ranks' losses
// (the step's losses become their means) and checksums; the records of layer outputs and taps
// become the gradient of the averaged loss (all ranks' together, divided by their number).
// Parameters' `grad` is left for the caller: the averaged gradient itself. Throws
// gradflow::Error when the ranks recorded different series.
void decode_ranks(StepRecord& step, const std::vector<std::vector<double>>& blocks, const Trace& trace);

// The statistics of g / k, from those of g.
TensorStats scaled(TensorStats stats, double k);

}  // namespace gradflow::detail
