#include "gradflow/option.h"

namespace gradflow {

namespace {

// One row per option: the one place its names live.
struct Names {
  Option option;
  const char* cpp;
  const char* python;
};

constexpr Names kNames[] = {
    {Option::every, "MonitorOptions::every", "every="},
    {Option::saturation_threshold, "MonitorOptions::saturation_threshold", "saturation_threshold="},
    {Option::out, "MonitorOptions::out", "out="},
    {Option::monitor_force, "MonitorOptions::force", "force="},
    {Option::rank, "MonitorOptions::rank", "torch.distributed's rank"},
    {Option::preactivation, "TapOptions::preactivation", "preactivation="},
    {Option::label, "SaveOptions::label", "label="},
    {Option::save_force, "SaveOptions::force", "force="},
};

std::string fill(const std::string& text, const char* name) {
  const auto at = text.find("{}");
  return at == std::string::npos ? text : text.substr(0, at) + name + text.substr(at + 2);
}

}  // namespace

const char* option_name(Option option, Language language) {
  for (const auto& n : kNames)
    if (n.option == option) return language == Language::python ? n.python : n.cpp;
  return "";
}

OptionError::OptionError(Option option, const std::string& text)
    : UsageError(fill(text, option_name(option, Language::cpp))), option_(option), text_(text) {}

std::string OptionError::message(Language language) const { return fill(text_, option_name(option_, language)); }

}  // namespace gradflow
