#pragma once
/// \file
/// The built-in Transformer encoder (family `transformer`).

#include <cstdint>
#include <memory>

#include "models/network.h"

namespace gradflow::models {

/// An encoder of `depth` blocks, LayerNorm after each residual addition (`ln=post`) or at the
/// start of each branch with a final LayerNorm (`ln=pre`), on inputs of [batch, T, input_dim]
/// with an output of [batch, T, output_dim]. Its layers are listed with their block's number as
/// depth: the embedding is block 0, the read-out block depth+1.
std::shared_ptr<Network> make_transformer(const ResolvedSpec& spec, std::int64_t input_dim, std::int64_t output_dim);

}  // namespace gradflow::models
