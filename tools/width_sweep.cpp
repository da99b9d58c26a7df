#include "width_sweep.h"

#include <cstdio>
#include <filesystem>

#include <fmt/format.h>

#include "cmd_run.h"
#include "common.h"
#include "gradflow/coord_check.h"
#include "gradflow/error.h"
#include "models/coord_run.h"
#include "util/text.h"

namespace gradflow::cli {

namespace {

constexpr const char* kWidthKey = "width";
// `--sweep width` alone: five octaves from the built-in models' base width.
const std::vector<std::int64_t> kDefaultWidths = {64, 128, 256, 512, 1024, 2048};

// SP against µP, an MLP and a small Transformer, as Tensor Programs V's coordinate checks.
const std::vector<std::string> kDefaultSpecs = {"mlp:depth=4,act=relu,init=he_normal,param=sp", "mlp:depth=4,act=relu,init=he_normal,param=mup",
                                                "transformer:depth=2,ln=pre,param=sp", "transformer:depth=2,ln=pre,param=mup"};

std::vector<std::int64_t> parse_widths(const std::string& sweep) {
  if (sweep == kWidthKey) return kDefaultWidths;
  std::vector<std::int64_t> widths;
  for (const auto& item : detail::split(sweep.substr(std::string(kWidthKey).size() + 1))) {
    char* end = nullptr;
    const long long v = std::strtoll(item.c_str(), &end, 10);
    if (item.empty() || *end != '\0' || v < 2 || v > 65536)
      throw UsageError("--sweep width value '" + item + "' is not a whole number from 2 to 65536");
    if (!widths.empty() && v <= widths.back()) throw UsageError("--sweep width: give increasing widths, e.g. width=64,128,256,512");
    widths.push_back(v);
  }
  if (widths.size() < 2) throw UsageError("--sweep width needs at least two widths to fit a slope, e.g. width=64,128,256,512");
  return widths;
}

models::CoordRunOptions run_options(const CompareOptions& o, const std::vector<std::int64_t>& widths) {
  models::CoordRunOptions r;
  r.widths = widths;
  r.train = o.flags.train;
  r.seeds = o.seeds;
  if (!o.steps_given) r.train.steps = 4;
  if (r.train.optimizer.empty()) r.train.optimizer = "adam";
  if (!o.seq_len_given) r.train.seq_len = 16;
  return r;
}

}  // namespace

bool is_width_sweep(const std::string& sweep) { return sweep == kWidthKey || sweep.rfind(std::string(kWidthKey) + "=", 0) == 0; }

int run_width_sweep(const CompareOptions& o) {
  if (!o.flow.empty()) throw UsageError("--flow belongs to a comparison of architectures, not to --sweep width: run it without --sweep");
  if (o.suite != "default") throw UsageError("--suite chooses a comparison's models; --sweep width takes specs: give them, e.g. mlp:param=mup");
  if (o.placement.ranks != 1)
    throw UsageError("--sweep width trains each width in one process: run it without --ranks");
  const auto& t = o.flags.train;
  if (t.clip_norm > 0 || t.clip_value > 0 || t.every != 1 || t.sharpness_every > 0)
    throw UsageError("--clip-norm, --clip-value, --every and --sharpness-every belong to training runs: --sweep width records every "
                     "step of plain updates; run it without them");
  const auto fail_on = parse_fail_on(o.fail_on);
  const auto widths = parse_widths(o.sweep);
  std::vector<models::ResolvedSpec> specs;
  for (const auto& text : o.specs.empty() ? kDefaultSpecs : o.specs) {
    specs.push_back(models::resolve_spec(text));
    for (auto w : widths) (void)specs.back().with_width(w);  // refuse a width the spec cannot take before anything runs
    if (specs.back().family == "rnn") throw UsageError("--sweep width applies to mlp, cnn and transformer models; '" + text + "' is recurrent");
  }
  const models::CoordRunOptions ro = run_options(o, widths);
  models::validate(ro);
  prepare_out_dir(o.out, o.flags.force, {"coord_check.json", "report.html", "report.md"});
  std::vector<CoordCheck> checks;
  try {
    for (std::size_t i = 0; i < specs.size() && !interrupted(); ++i) {
      Progress progress(fmt::format("[{}/{}] {}", i + 1, specs.size(), specs[i].canonical()));
      models::CoordRunOptions one = ro;
      one.progress = [&](std::size_t d, std::size_t n) { progress.update(static_cast<std::int64_t>(d), static_cast<std::int64_t>(n)); };
      checks.push_back(models::run_coord_check(specs[i], one));
      progress.finish();
    }
  } catch (...) {
    if (checks.empty()) cleanup_out_dir(o.out);
    throw;
  }
  if (checks.empty()) {
    cleanup_out_dir(o.out);
    std::fprintf(stderr, "gradflow: interrupted before the first check was done; nothing written\n");
    return interrupt_exit_code();
  }
  write_coord_report(checks, o.out);
  std::printf("\n%s\nwrote %s/report.html, report.md and coord_check.json\n", coord_report_markdown(checks).c_str(), o.out.c_str());
  if (interrupted()) {
    std::fprintf(stderr, "gradflow: interrupted; the report covers the %zu check(s) done so far\n", checks.size());
    return interrupt_exit_code();
  }
  for (const auto& c : checks)
    if (has_any(analyse_widths(c).findings, fail_on)) {
      std::fprintf(stderr, "gradflow: failing as asked by --fail-on %s: %s has such a finding\n", o.fail_on.c_str(), c.label.c_str());
      return kExitFailure;
    }
  return kExitOk;
}

}  // namespace gradflow::cli
