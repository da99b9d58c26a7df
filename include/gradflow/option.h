#pragma once
/// \file
/// The options a caller sets, named as the caller's language spells them, and the usage error
/// about one of them.

#include <string>

#include "gradflow/error.h"

namespace gradflow {

/// An option of the Monitor, a tap or save_report.
enum class Option {
  every,                 ///< MonitorOptions::every, every=
  saturation_threshold,  ///< MonitorOptions::saturation_threshold, saturation_threshold=
  out,                   ///< MonitorOptions::out, out=
  monitor_force,         ///< MonitorOptions::force, force= (gradflow.Monitor)
  rank,                  ///< MonitorOptions::rank, (torch.distributed's rank)
  preactivation,         ///< TapOptions::preactivation, preactivation=
  label,                 ///< SaveOptions::label, label=
  save_force,            ///< SaveOptions::force, force= (gradflow.save_report)
};

/// The language a caller writes: messages name options as it spells them.
enum class Language { cpp, python };

/// "MonitorOptions::every" in C++, "every=" in Python.
const char* option_name(Option option, Language language);

/// A usage error about one option. Its text holds "{}" where the option's name goes: what()
/// names it as C++ spells it, message(Language::python) as Python does.
class OptionError : public UsageError {
 public:
  OptionError(Option option, const std::string& text);
  Option option() const { return option_; }
  std::string message(Language language) const;

 private:
  Option option_;
  std::string text_;
};

}  // namespace gradflow
