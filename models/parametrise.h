#pragma once
/// \file
/// A built-in network under its spec's parametrisation (`param=sp|mup`, `base_width`): the
/// read-out's initial scale, the attention logits' scale and each weight's learning rate, all
/// from Table 3 of Tensor Programs V (include/gradflow/parametrisation.h).

#include <cstdint>
#include <vector>

#include <ATen/core/Tensor.h>

#include "gradflow/parametrisation.h"
#include "models/spec.h"

namespace gradflow::models {

class Network;

/// The spec's parametrisation (SP for families without the option).
Parametrisation parametrisation_of(const ResolvedSpec& spec);

/// Rescales a read-out weight initialised for SP to the spec's read-out variance.
void parametrise_readout(at::Tensor& weight, const ResolvedSpec& spec);

/// The factor on a Transformer's attention logits q·k for the spec's width and heads.
double attention_scale_of(const ResolvedSpec& spec);

/// Parameters trained at one learning rate: `lr_multiplier` times the optimizer's.
struct ParameterGroup {
  std::vector<at::Tensor> params;
  double lr_multiplier = 1;
};

/// Each parameter's kind and its shape at the base width, in parameters() order, read from the
/// spec's networks at its base width and twice it: the same at every width, so one per spec.
/// Building them leaves LibTorch's random sequence where it was.
struct ParameterLayout {
  std::vector<WeightKind> kinds;
  std::vector<ParameterShape> base_shapes;
};
ParameterLayout parameter_layout(const ResolvedSpec& spec, std::int64_t input_dim, std::int64_t output_dim);

/// The optimizer's parameter groups: all of `net`'s parameters in one under SP; under µP one
/// group per learning-rate multiplier that Table 3 gives `optimizer`, from the spec's `layout`
/// (which SP does not read).
std::vector<ParameterGroup> parameter_groups(const ResolvedSpec& spec, Network& net, OptimizerKind optimizer,
                                             const ParameterLayout& layout);

}  // namespace gradflow::models
