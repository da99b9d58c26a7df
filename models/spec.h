#pragma once
/// \file
/// Model specs: `NAME[:key=value,...]`, the families they name, and presets. No LibTorch.

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "gradflow/model_traits.h"

namespace gradflow::models {

/// A spec as written, split but not yet checked against a family.
struct Spec {
  std::string name;
  std::vector<std::pair<std::string, std::string>> options;
};

/// Splits `NAME[:key=value,...]`. Throws gradflow::UsageError on malformed text (empty name,
/// an option without '=', an empty key, a key given twice).
Spec parse_spec(const std::string& text);

/// The choice that stands for normal:NUMBER in OptionDef::choices.
inline constexpr const char* kNormalChoice = "normal:<std>";

/// How an option's value is checked.
enum class OptionType { integer, real, choice };

/// One option of a family.
struct OptionDef {
  std::string key;
  std::string default_value;
  std::string help;
  OptionType type = OptionType::choice;
  std::vector<std::string> choices;  ///< for choice; "normal:<std>" stands for normal:NUMBER
  double min = 0, max = 0;           ///< inclusive range for integer and real
  /// The option chooses one of the remedies a comparison names (activation, init, norm, ...):
  /// runs that differ only in such options are paired.
  bool remedy = false;
};

/// A family of built-in networks.
struct FamilyDef {
  std::string name;
  std::string help;
  std::string default_task;
  std::vector<OptionDef> options;
};

/// A named, fully written-out spec ("plain" = deep sigmoid MLP, ...).
struct Preset {
  std::string name;
  std::string spec;
  std::string help;
};

const std::vector<FamilyDef>& families();
const std::vector<Preset>& presets();

/// A spec checked against its family, every option present (defaults filled in).
struct ResolvedSpec {
  std::string family;
  std::string preset;  ///< the preset it came from, if any
  std::map<std::string, std::string> values;

  const std::string& get(const std::string& key) const;
  std::int64_t get_int(const std::string& key) const;
  double get_real(const std::string& key) const;
  /// `family:key=value,...` with every option, in the family's order.
  std::string canonical() const;
  /// The preset's name when there is one, else the canonical spec.
  std::string label() const;
  /// The architecture's facts, parsed from the options (clipping is the trainer's to add).
  ModelTraits traits() const;
  /// Whether the option is one of the family's remedies (OptionDef::remedy).
  bool is_remedy(const std::string& key) const;
  /// The same spec at another width (width_option()); throws UsageError where the family's
  /// options refuse it (a Transformer width the heads do not divide).
  ResolvedSpec with_width(std::int64_t width) const;
};

/// The option that is a family's width: "width", "channels" for the conv net, "hidden" for recurrent nets.
const char* width_option(const std::string& family);

/// Expands presets (`plain`, `plain:depth=10`), checks every key and value, fills defaults.
/// Throws gradflow::UsageError naming the bad part and listing the valid ones.
ResolvedSpec resolve_spec(const std::string& text);

/// Number of trainable parameters the spec builds (for memory checks before allocating).
std::int64_t estimate_parameters(const ResolvedSpec& spec, std::int64_t input_dim,
                                 std::int64_t output_dim);

}  // namespace gradflow::models
