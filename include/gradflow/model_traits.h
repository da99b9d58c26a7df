#pragma once
/// \file
/// What is known of a model's architecture, typed: what the diagnosis chooses remedies from and
/// what a comparison pairs runs by. No LibTorch.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "gradflow/activation.h"

namespace gradflow {

/// Weight initialisation schemes.
enum class Init {
  unknown,         ///< not said (a user's own model)
  default_init,    ///< LibTorch's own (Kaiming uniform with a = sqrt(5))
  xavier_uniform,
  xavier_normal,
  he_uniform,
  he_normal,
  orthogonal,
  identity,        ///< identity recurrent matrix (IRNN)
  normal,          ///< N(0, std²), `InitSpec::std`
};

/// An initialisation with its parameter: parsed once from its name ("he_normal", "normal:0.01").
struct InitSpec {
  Init kind = Init::unknown;
  double std = 0.0;  ///< for Init::normal
  bool operator==(const InitSpec& o) const { return kind == o.kind && std == o.std; }
  bool operator!=(const InitSpec& o) const { return !(*this == o); }
};

/// Normalisation layers.
enum class Norm { none, batch, layer };
/// Recurrent cells.
enum class Cell { none, rnn_tanh, rnn_relu, lstm, gru };
/// Where a Transformer block's LayerNorm sits: after each residual addition (post-LN, the
/// original Transformer's) or at the start of each residual branch (pre-LN, Xiong et al. 2020).
enum class NormPlacement { none, post, pre };

/// Names as used in specs and JSON ("he_normal", "normal:0.01", "batch", "lstm", ...).
std::string to_string(const InitSpec& init);
const char* to_string(Norm norm);
const char* to_string(Cell cell);
const char* to_string(NormPlacement placement);
/// Inverses of to_string; throw gradflow::Error naming the text and the valid names.
InitSpec init_from_string(const std::string& name);
Norm norm_from_string(const std::string& name);
Cell cell_from_string(const std::string& name);
NormPlacement norm_placement_from_string(const std::string& name);

/// Scale-preserving initialisations: He for ReLU-like units, Xavier for squashing ones.
bool is_he(const InitSpec& init);
bool is_xavier(const InitSpec& init);
/// LibTorch's default or a fixed-scale normal: no variance-preserving scheme.
bool is_plain(const InitSpec& init);

/// What is known of the model, to choose a remedy (all optional for users' own models).
struct ModelTraits {
  bool recurrent = false;
  Cell cell = Cell::none;
  Activation activation = Activation::none;  ///< hidden activation (feed-forward nets)
  InitSpec init;
  Norm norm = Norm::none;
  bool residual = false;
  double clip_norm = 0.0;   ///< gradient clipping by global norm (0: off)
  double clip_value = 0.0;  ///< gradient clipping by value (0: off)
  std::optional<double> forget_bias;  ///< LSTM forget-gate bias; unset: LibTorch's default
  double recurrent_scale = 0.0;       ///< largest singular value the recurrent matrix was set to (0: untouched)
  NormPlacement norm_placement = NormPlacement::none;  ///< Transformer blocks' LayerNorm
  std::int64_t warmup_steps = 0;      ///< linear learning-rate warm-up over this many steps (0: none)
  /// The loss is one player's objective in a game (a GAN's generator or discriminator): it
  /// rises and falls by design, so the loss-trend rules (stalled, rising, oscillating) do not
  /// apply to it. Gradient findings still do.
  bool adversarial = false;

  bool clipped() const { return clip_norm > 0 || clip_value > 0; }
};

/// What a model's module tree shows, from its modules' class names ("BatchNorm2d", "LSTM",
/// "ReLU"; LibTorch's "torch::nn::BatchNorm2dImpl" as well): normalisation layers, a recurrent
/// cell, the one activation module kind it uses. A functional activation, residual paths and the
/// initialisation are not visible in it.
ModelTraits traits_from_module_kinds(const std::vector<std::string>& kinds);
/// What the program declared (`said`), with what it leaves unset taken from what the module tree
/// shows (`shown`): normalisation, the recurrent cell, the activation.
ModelTraits with_shown_traits(ModelTraits said, const ModelTraits& shown);

}  // namespace gradflow
