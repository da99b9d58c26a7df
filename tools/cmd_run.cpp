#include "cmd_run.h"

#include <cstdio>

#include <fmt/format.h>

#include "common.h"
#include "gradflow/atomic_file.h"
#include "gradflow/data_parallel.h"
#include "gradflow/error.h"
#include "util/text.h"
#include "gradflow/trace_io.h"

namespace gradflow::cli {

void add_train_flags(CLI::App& sub, TrainFlags& f, bool with_every) {
  auto& o = f.train;
  sub.add_option("--task", o.task, "Synthetic task (default: the family's; see 'gradflow models')");
  sub.add_option("--seq-len", o.seq_len, "Sequence length T for adding/copy")->capture_default_str();
  sub.add_option("--steps", o.steps, "Training steps")->capture_default_str();
  sub.add_option("--batch", o.batch, "Batch size")->capture_default_str();
  sub.add_option_function<double>("--lr", [&o](const double& v) { o.lr = v; }, "Learning rate (default: 0.05 SGD, 3e-3 Adam)");
  sub.add_option("--optimizer", o.optimizer, "sgd | adam (default: sgd for mlp/cnn, adam for rnn)");
  sub.add_option("--momentum", o.momentum, "SGD momentum")->capture_default_str();
  sub.add_option("--clip-norm", o.clip_norm, "Clip the global gradient norm to this (0: off)");
  sub.add_option("--clip-value", o.clip_value, "Clip each gradient element to [-X, X] (0: off)");
  sub.add_option("--seed", o.seed, "Random seed")->capture_default_str();
  if (with_every) sub.add_option("--every", o.every, "Record every K-th step")->capture_default_str();
  sub.add_option("--sharpness-every", o.sharpness_every,
                 "Every K-th recorded step, measure the loss Hessian's largest eigenvalue on a fixed batch (0: off)")
      ->capture_default_str();
  sub.add_option("--inputs", o.inputs, "Input features of the teacher/mixture tasks")->capture_default_str();
  sub.add_option("--classes", o.classes, "Classes of the classification tasks")->capture_default_str();
  sub.add_option("--noise", o.noise, "Label noise (teacher) or input noise scale (mixture, images), 0 to 1")->capture_default_str();
  sub.add_flag("--stop-on-nonfinite", o.stop_on_nonfinite, "Stop at the first non-finite loss (default: go on)");
  sub.add_flag("--force", f.force, "Replace results already in --out");
}

std::vector<FindingKind> parse_fail_on(const std::string& text) {
  std::vector<FindingKind> kinds;
  if (text.empty()) return kinds;
  if (text == "any") return all_finding_kinds();
  for (const auto& item : detail::split(text)) kinds.push_back(finding_kind_from_string(item));
  return kinds;
}

void write_run_dir(const RunRecord& run, const std::string& dir) {
  write_file_atomic(dir + "/run.json", run_to_json(run) + "\n");
  write_trace_csv(run.trace, dir + "/trace.csv");
}

namespace {

constexpr const char* kRunFiles[] = {"run.json", "trace.csv"};

RunRecord train_here(const RunOptions& opts, const models::ResolvedSpec& spec, DataParallel* dp, bool writer) {
  models::TrainOptions t = opts.flags.train;
  Progress progress("training " + spec.label());
  if (writer) t.progress = [&](std::int64_t d, std::int64_t n) { progress.update(d, n); };
  t.should_stop = [] { return interrupted(); };
  t.data_parallel = dp;
  RunRecord run = models::train(spec, t);
  progress.finish();
  run.spec = opts.spec;
  return run;
}

int report_run(const RunOptions& opts, const RunRecord& run, const std::vector<FindingKind>& fail_on) {
  write_run_dir(run, opts.out);
  print_run(run, stdout);
  std::printf("\n  wrote %s/run.json and %s/trace.csv\n", opts.out.c_str(), opts.out.c_str());
  if (!run.stop_reason.empty()) {
    std::fprintf(stderr, "gradflow: %s; the %lld steps before it are saved in %s, marked interrupted\n",
                 detail::first_line(run.stop_reason).c_str(), static_cast<long long>(run.steps_done), opts.out.c_str());
    return kExitFailure;
  }
  if (run.interrupted) {
    std::fprintf(stderr, "gradflow: interrupted after %lld steps; what was recorded is saved in %s\n",
                 static_cast<long long>(run.steps_done), opts.out.c_str());
    return interrupt_exit_code();
  }
  if (has_any(run.findings, fail_on)) {
    std::fprintf(stderr, "gradflow: failing as asked by --fail-on %s: a finding of that kind was made\n", opts.fail_on.c_str());
    return kExitFailure;
  }
  return kExitOk;
}

}  // namespace

int run_run(const RunOptions& opts) {
  const auto spec = models::resolve_spec(opts.spec);
  const auto fail_on = parse_fail_on(opts.fail_on);
  models::validate(opts.flags.train);
  const Placement where = place(opts.placement, opts.flags.train.batch);
  const std::vector<std::string> files(std::begin(kRunFiles), std::end(kRunFiles));
  if (where.writer()) prepare_out_dir(opts.out, opts.flags.force, files);
  if (where.launcher) {
    const int code = launch(opts.placement);
    cleanup_out_dir(opts.out);
    return code;
  }
  RunRecord run;
  try {
    const auto dp = join(where);
    run = train_here(opts, spec, dp.get(), where.writer());
  } catch (...) {
    if (where.writer()) cleanup_out_dir(opts.out);
    throw;
  }
  if (!where.writer()) return silent_exit_code(run.stop_reason, run.interrupted);
  return report_run(opts, run, fail_on);
}

void setup_run(CLI::App& app) {
  auto opts = std::make_shared<RunOptions>();
  auto* sub = app.add_subcommand("run", "Train one built-in model and record how its gradient flows");
  sub->add_option("spec", opts->spec, "Model spec or preset, e.g. plain, he, lstm, mlp:depth=30,act=tanh")->required();
  sub->add_option("--out", opts->out, "Output folder")->capture_default_str();
  sub->add_option("--fail-on", opts->fail_on, "Exit 1 if a finding of these kinds appears (e.g. vanishing,non_finite or any)");
  add_train_flags(*sub, opts->flags);
  add_rank_flags(*sub, opts->placement);
  sub->final_callback([opts] { throw CLI::RuntimeError(run_run(*opts)); });
}

}  // namespace gradflow::cli
