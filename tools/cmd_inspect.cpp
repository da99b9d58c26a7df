#include "cmd_inspect.h"

#include <cstdio>

#include <fmt/format.h>

#include "cmd_run.h"
#include "common.h"
#include "gradflow/atomic_file.h"
#include "gradflow/error.h"
#include "gradflow/report.h"
#include "gradflow/trace_io.h"

namespace gradflow::cli {

int run_inspect(const InspectCliOptions& in) {
  InspectOptions o = in.inspect;
  if (in.input_shape.empty() && o.input_file.empty())
    throw UsageError("give --input-shape N,C,... (random input) or --input FILE (a tensor saved by torch.save)");
  if (!in.input_shape.empty()) o.input_shape = parse_shape(in.input_shape);
  o.loss = inspect_loss_from_string(in.loss);
  const auto fail_on = parse_fail_on(in.fail_on);
  // Run first, write after: a model that fails to load leaves no folder behind.
  const InspectResult res = inspect_torchscript(in.model, o);
  prepare_out_dir(in.out, in.force, {"inspect.json", "report.html"});
  write_file_atomic(in.out + "/inspect.json", inspect_to_json(res, o) + "\n");
  write_trace_csv(res.run.trace, in.out + "/trace.csv");
  Comparison report = make_comparison({res.run}, {"."});
  report.kind = ReportKind::models;
  write_report(report, in.out);

  std::printf("%s  (%s mode, loss %s = %.6g)\n\n", res.model.c_str(), res.training_mode ? "train" : "eval", to_string(o.loss), res.loss);
  double lo = 1e300, hi = -1e300;
  for (const auto& p : res.parameters)
    if (p.grad_norm > 0) lo = std::min(lo, std::log10(p.grad_norm)), hi = std::max(hi, std::log10(p.grad_norm));
  if (hi - lo < 1) hi = lo + 1;
  std::printf("  %-32s %-16s %-10s %-22s %s\n", "parameter", "shape", "|grad|", "(log scale)", "zeros");
  for (const auto& p : res.parameters) {
    std::string shape;
    for (std::size_t i = 0; i < p.shape.size(); ++i) shape += (i ? "x" : "") + std::to_string(p.shape[i]);
    std::printf("  %-32s %-16s %-10s %s %4.0f%%%s\n", p.name.c_str(), shape.c_str(), sci(p.grad_norm).c_str(),
                log_bar(p.grad_norm, lo, hi, 22).c_str(), 100 * p.zero_fraction, p.nonfinite ? "  NON-FINITE" : "");
  }
  if (!res.activations.empty()) {
    std::printf("\n  dL/d(layer output), forward order:\n");
    for (const auto& [n, v] : res.activations) std::printf("    %-30s %s\n", n.c_str(), sci(v).c_str());
  }
  const auto& s = res.run.summary;
  if (s.depth) std::printf("\n  dL/dh first/last layer, log10: %s\n", attenuation_text(s.depth).c_str());
  const bool reaches = !res.parameters.empty() && res.parameters.front().grad_norm > 0 && res.parameters.front().nonfinite == 0;
  std::printf("  gradient %s the first parameter (%s)\n", reaches ? "reaches" : "does NOT reach", res.parameters.front().name.c_str());
  std::printf("\n  findings:\n");
  print_findings(res.run.findings, stdout, "    ");
  std::printf("\n  wrote %s/inspect.json and %s/report.html\n", in.out.c_str(), in.out.c_str());
  if (has_any(res.run.findings, fail_on)) {
    std::fprintf(stderr, "gradflow: failing as asked by --fail-on %s\n", in.fail_on.c_str());
    return kExitFailure;
  }
  return kExitOk;
}

void setup_inspect(CLI::App& app) {
  auto o = std::make_shared<InspectCliOptions>();
  auto* sub = app.add_subcommand("inspect", "Load a TorchScript model and show whether the gradient reaches its first layers");
  sub->add_option("model", o->model, "TorchScript file (torch.jit.save)")->required();
  sub->add_option("--input-shape", o->input_shape, "Random input shape N,C,...: torch.manual_seed(S); torch.randn(shape)");
  sub->add_option("--input", o->inspect.input_file, "Input tensor saved by Python's torch.save");
  sub->add_option("--loss", o->loss, "sum | mean | mse | ce")->capture_default_str();
  sub->add_option("--classes", o->inspect.classes, "Classes for --loss ce (default: the output's columns)");
  sub->add_option("--steps", o->inspect.steps, "SGD steps on fresh random inputs after the first measurement")->capture_default_str();
  sub->add_option("--lr", o->inspect.lr, "Learning rate for --steps")->capture_default_str();
  sub->add_option("--seed", o->inspect.seed, "Random seed")->capture_default_str();
  sub->add_flag("--eval", o->inspect.eval, "Switch the model to eval mode (default: the mode it was saved in)");
  sub->add_option("--out", o->out, "Output folder")->capture_default_str();
  sub->add_option("--fail-on", o->fail_on, "Exit 1 if a finding of these kinds appears");
  sub->add_flag("--force", o->force, "Replace results already in --out");
  sub->final_callback([o] { throw CLI::RuntimeError(run_inspect(*o)); });
}

}  // namespace gradflow::cli
