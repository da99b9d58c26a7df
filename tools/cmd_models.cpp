#include "cmd_models.h"

#include <cstdio>

#include "models/spec.h"
#include "models/task.h"

namespace gradflow::cli {

namespace {
int run_models() {
  using namespace gradflow::models;
  std::printf("Model specs: NAME[:key=value,...], e.g.  mlp:depth=20,act=relu,init=he_normal  or  plain:depth=10\n\n");
  for (const auto& f : families()) {
    std::printf("%s  %s  (default task: %s)\n", f.name.c_str(), f.help.c_str(), f.default_task.c_str());
    for (const auto& o : f.options) {
      std::string range;
      if (o.type == OptionType::choice) {
        for (const auto& c : o.choices) range += (range.empty() ? "" : " | ") + c;
      } else {
        range = o.type == OptionType::integer ? std::to_string(static_cast<long long>(o.min)) + " .. " +
                                                    std::to_string(static_cast<long long>(o.max))
                                              : "number";
      }
      std::printf("  %-12s default %-10s %s\n  %-12s %s\n", o.key.c_str(), o.default_value.c_str(), o.help.c_str(), "",
                  range.c_str());
    }
    std::printf("\n");
  }
  std::printf("Presets:\n");
  for (const auto& p : presets()) {
    const auto r = resolve_spec(p.spec);
    std::printf("  %-13s %s\n  %-13s = %s\n", p.name.c_str(), p.help.c_str(), "", r.canonical().c_str());
  }
  std::printf("\nTasks (--task):\n");
  for (const auto& t : tasks()) std::printf("  %-8s [%s] %s\n", t.name.c_str(), t.family.c_str(), t.help.c_str());
  return 0;
}
}  // namespace

void setup_models(CLI::App& app) {
  auto* sub = app.add_subcommand("models", "List model families, their options and defaults, presets and tasks");
  sub->final_callback([] { throw CLI::RuntimeError(run_models()); });
}

}  // namespace gradflow::cli
