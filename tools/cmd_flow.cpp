#include "cmd_flow.h"

#include <algorithm>
#include <cstdio>
#include <cmath>
#include <cstdlib>

#include <fmt/format.h>

#include "common.h"
#include "gradflow/atomic_file.h"
#include "gradflow/error.h"
#include "util/text.h"

namespace gradflow::cli {

std::vector<double> parse_lrs(const std::string& text) {
  std::vector<double> v;
  for (const auto& item : detail::split(text)) {
    char* end = nullptr;
    const double x = std::strtod(item.c_str(), &end);
    if (item.empty() || *end != '\0' || !(x > 0) || !std::isfinite(x))
      throw UsageError("--lr '" + text + "': write positive learning rates separated by commas, e.g. 0.01,0.05,0.2");
    v.push_back(x);
  }
  return v;
}

// When a run's sharpness reached 2/lr: "t = 3.2", "no (lambda_max <= 94.5)", or "-" when not measured.
std::string edge_words(const DescentVsFlow& d) {
  if (d.sharpness.empty()) return "-";
  if (d.edge_at) return "t = " + sci(*d.edge_at);
  return "no (lambda_max <= " + sci(*std::max_element(d.sharpness.begin(), d.sharpness.end())) + ")";
}

// Where the sharpness ended against 2/lr: "193 = 0.97 x 2/lr", or "-".
std::string final_sharpness_words(const DescentVsFlow& d) {
  const auto s = d.final_sharpness();
  if (!s) return "-";
  return fmt::format("{:.3g} = {:.2f} x 2/lr", *s, *s * d.lr / 2.0);
}

int run_flow_cmd(const FlowCliOptions& in) {
  const auto spec = models::resolve_spec(in.spec);
  models::FlowRunOptions o = in.flow;
  o.lrs = parse_lrs(in.lrs);
  if (!(o.time > 0) || o.time > 1e6) throw UsageError("--time must be a positive number");
  FlowResult r = models::run_flow(spec, o);
  prepare_out_dir(in.out, in.force, {"flow.json", "flow.html"});
  write_file_atomic(in.out + "/flow.json", flow_to_json(r) + "\n");
  write_file_atomic(in.out + "/flow.html", flow_page_html(r));
  std::printf("gradient flow of %s (%lld parameters, %lld examples, task %s) to t = %g\n", r.spec.c_str(),
              static_cast<long long>(r.parameters), static_cast<long long>(r.samples), r.task.c_str(), r.time);
  std::printf("Dormand-Prince 5(4): %lld steps, %lld rejected, %lld gradient evaluations; loss %.4g -> %.4g\n\n",
              static_cast<long long>(r.stats.accepted), static_cast<long long>(r.stats.rejected), static_cast<long long>(r.stats.evaluations),
              r.flow_loss.front(), r.flow_loss.back());
  std::printf("  %-8s %-7s %-14s %-14s %-14s %-28s %-24s %s\n", "lr", "steps", "max distance", "final dist.", "max loss gap",
              "lr*lambda_max reaches 2", "lambda_max, last fifth", "leaves the flow");
  for (const auto& d : r.runs)
    std::printf("  %-8g %-7lld %-14.3g %-14.3g %-14.3g %-28s %-24s %s\n", d.lr, static_cast<long long>(d.steps), d.max_distance,
                d.final_distance, d.max_loss_gap, edge_words(d).c_str(), final_sharpness_words(d).c_str(),
                d.departs_at ? (std::string("at t = ") + sci(*d.departs_at) + ": " + d.departs_why + (d.diverged ? "; diverged" : "")).c_str()
                             : "no");
  if (r.sharpness_measurements > 0)
    std::printf("\n  sharpness: %lld measurements, %.1f Hessian-vector products each (2 backward passes per product), %.2g s\n",
                static_cast<long long>(r.sharpness_measurements),
                static_cast<double>(r.sharpness_products) / static_cast<double>(r.sharpness_measurements), r.sharpness_seconds);
  if (r.order) std::printf("\n  fitted order of the error in lr: %.2f (Euler: 1)\n", *r.order);
  std::printf("\n  wrote %s/flow.json and %s/flow.html (%.1f s)\n", in.out.c_str(), in.out.c_str(), r.wall_seconds);
  return kExitOk;
}

void setup_flow(CLI::App& app) {
  auto o = std::make_shared<FlowCliOptions>();
  auto* sub = app.add_subcommand("flow", "Integrate the gradient-flow ODE and compare gradient descent with it");
  sub->add_option("spec", o->spec, "Model spec (small ones: the flow is integrated on the full data set), e.g. mlp:depth=3,width=16")->required();
  sub->add_option("--task", o->flow.task, "Synthetic task (default: the family's)");
  sub->add_option("--samples", o->flow.samples, "Examples in the fixed data set")->capture_default_str();
  sub->add_option("--seq-len", o->flow.seq_len, "Sequence length for recurrent tasks")->capture_default_str();
  sub->add_option("--time", o->flow.time, "Integrate to this time")->capture_default_str();
  sub->add_option("--lr", o->lrs, "Learning rates for gradient descent")->capture_default_str();
  sub->add_option("--seed", o->flow.seed, "Random seed")->capture_default_str();
  sub->add_option("--grid", o->flow.grid, "Points per side of the loss-plane picture")->capture_default_str();
  sub->add_option("--sharpness", o->flow.sharpness_points,
                  "Measure the loss Hessian's largest eigenvalue at this many times along the flow and each run (0: off)")
      ->capture_default_str();
  sub->add_option("--out", o->out, "Output folder")->capture_default_str();
  sub->add_flag("--force", o->force, "Replace results already in --out");
  sub->final_callback([o] { throw CLI::RuntimeError(run_flow_cmd(*o)); });
}

}  // namespace gradflow::cli
