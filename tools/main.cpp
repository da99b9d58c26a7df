// gradflow: shows how gradients flow backward through a network, where they vanish or explode,
// and which architecture fixes it. main() only wires the subcommands and maps errors to exit codes.
#include <cstdio>
#include <exception>
#include <string>

#include <CLI/CLI.hpp>
#include <c10/util/Exception.h>

#include "cmd_bench.h"
#include "cmd_compare.h"
#include "cmd_flow.h"
#include "cmd_inspect.h"
#include "cmd_launch.h"
#include "cmd_models.h"
#include "cmd_report.h"
#include "cmd_run.h"
#include "common.h"
#include "launcher.h"
#include "gradflow/error.h"
#include "util/text.h"

int main(int argc, char** argv) {
  using namespace gradflow::cli;
  CLI::App app{"gradflow: how gradients flow backward through a neural network, where they vanish or explode, "
               "and which architecture fixes it"};
  app.require_subcommand(1);
  setup_models(app);
  setup_run(app);
  setup_compare(app);
  setup_report(app);
  setup_inspect(app);
  setup_bench(app);
  setup_flow(app);
  setup_launch(app);
  set_command_line(argc, argv);
  install_signal_handlers();
  configure_threads();
  try {
    // CLI11 would call an unknown word a missing subcommand; name it instead.
    std::string names;
    bool known = false;
    for (const auto* sub : app.get_subcommands({})) {
      names += (names.empty() ? "" : ", ") + sub->get_name();
      known = known || (argc > 1 && sub->get_name() == argv[1]);
    }
    if (argc == 1) throw gradflow::UsageError("give a command: one of " + names + " (see 'gradflow --help')");
    if (argv[1][0] != '-' && !known)
      throw gradflow::UsageError(std::string("unknown command '") + argv[1] + "': choose one of " + names);
    app.parse(argc, argv);
    return kExitOk;
  } catch (const CLI::RuntimeError& e) {
    return e.get_exit_code();  // a subcommand's own exit code
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "gradflow: %s (see 'gradflow --help')\n", gradflow::detail::first_line(e.what()).c_str());
    return kExitUsage;
  } catch (const gradflow::UsageError& e) {
    std::fprintf(stderr, "gradflow: %s\n", gradflow::detail::first_line(e.what()).c_str());
    return kExitUsage;
  } catch (const gradflow::Error& e) {
    std::fprintf(stderr, "gradflow: %s\n", gradflow::detail::first_line(e.what()).c_str());
    return kExitFailure;
  } catch (const c10::Error& e) {
    std::fprintf(stderr, "gradflow: LibTorch refused: %s\n", gradflow::detail::first_line(e.what_without_backtrace()).c_str());
    return kExitFailure;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "gradflow: out of memory: use a smaller model, batch or sequence length\n");
    return kExitFailure;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "gradflow: %s\n", gradflow::detail::first_line(e.what()).c_str());
    return kExitFailure;
  }
}
