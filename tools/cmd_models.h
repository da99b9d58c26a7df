#pragma once
#include <CLI/CLI.hpp>

namespace gradflow::cli {
// `gradflow models`: families, options, defaults, presets and tasks.
void setup_models(CLI::App& app);
}  // namespace gradflow::cli
