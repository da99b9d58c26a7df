#pragma once
#include <CLI/CLI.hpp>

namespace gradflow::cli {

// `gradflow launch --ranks N -- program args...`: runs a data-parallel program once per rank on
// this machine, with the variables torchrun sets.
void setup_launch(CLI::App& app);

}  // namespace gradflow::cli
