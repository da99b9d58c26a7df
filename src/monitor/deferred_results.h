#pragma once
// Statistics computed on a device, fetched into the step's records in one transfer per device.

#include <cstdint>
#include <vector>

#include <ATen/core/Tensor.h>

#include "gradflow/trace.h"

namespace gradflow::detail {

// Which part of a record (or of the step) a deferred result fills.
enum class ResultField {
  grad,        // a gradient's statistics, replacing the record's
  grad_merge,  // a further gradient of the same series in the step, merged into the record's
  applied,     // the gradient the optimizer step found
  weight,
  update,      // the sum of squares of an optimizer update
  forward,
  loss,        // one watched loss, added to the step's
  call_norm,   // one call's aten_stats (their sum of squares), into the record's profile at `slot`
  time_norms,  // sums of squares along a sequence's time steps, added into the record's profile
};

// A profile entry no gradient reached (a call whose backward the step did not record): a norm
// is never negative, so the marker cannot be a value.
constexpr double kNoGradient = -1.0;

// Adds `n` sums of squares, divided by `unscale`², to the record's profile from entry `at` on
// (the profile grows to hold them; each entry is a norm): one call's, or a sequence's time steps.
void add_profile_squares(Record& r, std::size_t at, const double* squares, std::size_t n, double unscale);

class DeferredResults {
 public:
  // `values` is a double tensor on any device: aten_stats for grad, a sum of squares for weight,
  // device_activation_stats for forward, the loss itself for loss (`record` is ignored then).
  // `slot`: the profile entry a call_norm fills.
  void add(int record, ResultField field, std::int64_t numel, const at::Tensor& values, int slot = 0);
  bool empty() const { return values_.empty(); }
  // Copies every pending value to the host, one transfer per device, into `step`, and forgets
  // them. Gradients produced by backward are divided by the step's loss scale.
  void fetch_into(StepRecord& step);

 private:
  struct Slot {
    int record;
    ResultField field;
    std::int64_t numel;
    int slot;
  };
  void fill(StepRecord& step, const Slot& slot, const double* values) const;

  std::vector<Slot> slots_;
  std::vector<at::Tensor> values_;
};

}  // namespace gradflow::detail
