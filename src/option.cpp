#include "gradflow/option.h"

#include "enum_names.h"

namespace gradflow {

namespace {

constexpr detail::Named<Option> kCppNames[] = {
    {Option::every, "MonitorOptions::every"},
    {Option::saturation_threshold, "MonitorOptions::saturation_threshold"},
    {Option::out, "MonitorOptions::out"},
    {Option::monitor_force, "MonitorOptions::force"},
    {Option::rank, "MonitorOptions::rank"},
    {Option::preactivation, "TapOptions::preactivation"},
    {Option::label, "SaveOptions::label"},
    {Option::save_force, "SaveOptions::force"},
};

constexpr detail::Named<Option> kPythonNames[] = {
    {Option::every, "every="},
    {Option::saturation_threshold, "saturation_threshold="},
    {Option::out, "out="},
    {Option::monitor_force, "force="},
    {Option::rank, "torch.distributed's rank"},
    {Option::preactivation, "preactivation="},
    {Option::label, "label="},
    {Option::save_force, "force="},
};

std::string fill(const std::string& text, const char* name) {
  const auto at = text.find("{}");
  return at == std::string::npos ? text : text.substr(0, at) + name + text.substr(at + 2);
}

}  // namespace

const char* option_name(Option option, Language language) {
  return language == Language::python ? detail::name_of(kPythonNames, option) : detail::name_of(kCppNames, option);
}

OptionError::OptionError(Option option, const std::string& text)
    : UsageError(fill(text, option_name(option, Language::cpp))), option_(option), text_(text) {}

std::string OptionError::message(Language language) const { return fill(text_, option_name(option_, language)); }

}  // namespace gradflow
