#include "cmd_compare.h"

#include <cctype>
#include <chrono>
#include <filesystem>
#include <cstdio>
#include <set>

#include <fmt/format.h>

#include "common.h"
#include "gradflow/error.h"
#include "util/text.h"
#include "gradflow/atomic_file.h"
#include "gradflow/report.h"
#include "models/flow_run.h"
#include "width_sweep.h"

namespace gradflow::cli {

std::vector<std::string> suite_names() { return {"default", "quick", "mlp", "rnn", "transformer"}; }

std::vector<SuiteEntry> suite(const std::string& name) {
  // Feed-forward nets: 200 SGD steps on the teacher task. Recurrent nets: the adding problem at
  // T = 50 for 1200 Adam steps, about where LSTMs start to solve it (measured: GRU by ~500 steps,
  // LSTM by ~900); a vanilla tanh RNN does not.
  const std::vector<SuiteEntry> ff = {{"plain"}, {"tanh"}, {"relu"}, {"he"}, {"batchnorm"}, {"residual"},
                                      {"exploding"}, {"exploding", 1.0}};
  const std::vector<SuiteEntry> rec = {{"rnn", 0, 1200, 50, 20}, {"lstm", 0, 1200, 50, 20}, {"gru", 0, 1200, 50, 20}};
  if (name == "default") {
    auto v = ff;
    v.insert(v.end(), rec.begin(), rec.end());
    return v;
  }
  if (name == "mlp") return ff;
  if (name == "rnn") return rec;
  if (name == "transformer") {
    // Token counting at T = 16, 400 Adam steps at lr 3e-3: post-LN without warm-up stalls at the
    // constant answer (measured, seeds 0-2: loss 1.61-1.65, accuracy 0.29) while warmed-up post-LN
    // learns (seed 0: 0.26, accuracy 0.90; at 300 steps only 0.76, too close to half the baseline).
    return {{"post_ln", 0, 400, 16}, {"pre_ln", 0, 400, 16}, {"post_ln:warmup=100", 0, 400, 16}};
  }
  if (name == "quick") {
    // Small and fast, for tests: the same contrasts at depth 10 and T = 20.
    return {{"plain:depth=10,width=32", 0, 60},
            {"he:depth=10,width=32", 0, 60},
            {"batchnorm:depth=10,width=32", 0, 60},
            {"residual:depth=10,width=32", 0, 60},
            {"exploding:depth=10,width=32,init=normal:0.6", 0, 40},
            {"exploding:depth=10,width=32,init=normal:0.6", 1.0, 40},
            {"rnn:hidden=32", 0, 600, 20, 50},
            {"lstm:hidden=32", 0, 600, 20, 50},
            {"gru:hidden=32", 0, 600, 20, 50}};
  }
  throw UsageError("unknown suite '" + name + "': choose one of " + detail::join(suite_names()));
}

namespace {

std::string slug(const std::string& label) {
  std::string s;
  for (char c : label) s += (std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.') ? c : '_';
  return s.substr(0, 80);
}

struct Sweep {
  SweepAxis axis = SweepAxis::none;
  std::vector<std::int64_t> values;
};

Sweep parse_sweep(const std::string& text) {
  Sweep s;
  if (text.empty()) return s;
  const auto eq = text.find('=');
  const std::string key = text.substr(0, eq);
  if (eq == std::string::npos || (key != "depth" && key != "seq-len"))
    throw UsageError("--sweep '" + text + "': write depth=5,10,20, seq-len=25,50,100 or width=64,128,256");
  s.axis = key == "depth" ? SweepAxis::depth : SweepAxis::seq_len;
  for (const auto& item : detail::split(text.substr(eq + 1))) {
    char* end = nullptr;
    const long long v = std::strtoll(item.c_str(), &end, 10);
    if (item.empty() || *end != '\0' || v < 2 || v > 100000)
      throw UsageError("--sweep value '" + item + "' is not a whole number from 2 to 100000");
    s.values.push_back(v);
  }
  if (s.values.size() < 2) throw UsageError("--sweep needs at least two values to fit a gain, e.g. depth=5,10,20");
  return s;
}

std::string with_option(const std::string& spec, const std::string& key, const std::string& value) {
  return spec + (spec.find(':') == std::string::npos ? ":" : ",") + key + "=" + value;
}

std::vector<SuiteEntry> entries_for(const CompareOptions& o, const Sweep& sweep) {
  std::vector<SuiteEntry> entries;
  if (!o.specs.empty()) {
    for (const auto& s : o.specs) entries.push_back({s});
  } else if (sweep.axis != SweepAxis::none) {
    for (const char* s : sweep.axis == SweepAxis::depth ? std::vector<const char*>{"plain", "he", "batchnorm", "residual"}
                                              : std::vector<const char*>{"rnn", "irnn", "lstm", "gru"})
      entries.push_back({s});
  } else {
    entries = suite(o.suite);
  }
  return entries;
}

struct Job {
  models::ResolvedSpec spec;
  std::string text, label, base;
  models::TrainOptions train;
};

// One job per entry and sweep value, every spec checked before anything runs.
std::vector<Job> expand(const CompareOptions& o, const Sweep& sweep, const SuiteEntry& e) {
  std::vector<std::string> texts = {e.spec};
  if (sweep.axis == SweepAxis::depth) {
    texts.clear();
    for (auto v : sweep.values) texts.push_back(with_option(e.spec, "depth", std::to_string(v)));
  }
  const std::size_t n = sweep.axis == SweepAxis::seq_len ? sweep.values.size() : texts.size();
  std::vector<Job> jobs;
  for (std::size_t k = 0; k < n; ++k) {
    Job j;
    j.text = texts[sweep.axis == SweepAxis::seq_len ? 0 : k];
    j.spec = models::resolve_spec(j.text);
    j.train = o.flags.train;
    const bool rnn = j.spec.family == "rnn";
    if (!o.steps_given) j.train.steps = e.steps > 0 ? e.steps : (sweep.axis != SweepAxis::none ? 1 : (rnn ? 1200 : 200));
    if (e.seq_len > 0 && sweep.axis != SweepAxis::seq_len) j.train.seq_len = e.seq_len;
    if (e.every > 0) j.train.every = std::max(j.train.every, e.every);
    if (e.clip_norm > 0) j.train.clip_norm = e.clip_norm;
    j.base = models::resolve_spec(e.spec).label();
    j.label = j.spec.label();
    if (j.train.clip_norm > 0) j.label += fmt::format(" + clip-norm {:g}", j.train.clip_norm);
    if (sweep.axis == SweepAxis::seq_len) {
      if (!rnn) throw UsageError("--sweep seq-len applies to recurrent models; '" + e.spec + "' is " + j.spec.family);
      j.train.seq_len = sweep.values[k];
      j.label = j.base + " T=" + std::to_string(sweep.values[k]);
    } else if (sweep.axis == SweepAxis::depth) {
      if (rnn) throw UsageError("--sweep depth applies to mlp, cnn and transformer models; '" + e.spec + "' is recurrent");
      j.label = j.base + " depth=" + std::to_string(sweep.values[k]);
    }
    jobs.push_back(std::move(j));
  }
  return jobs;
}

std::vector<Job> plan_jobs(const CompareOptions& o, const Sweep& sweep) {
  std::vector<Job> jobs;
  for (const auto& e : entries_for(o, sweep))
    for (auto& j : expand(o, sweep, e)) jobs.push_back(std::move(j));
  std::set<std::string> seen;
  for (auto& j : jobs) {
    std::string l = j.label;
    for (int k = 2; seen.count(l); ++k) l = j.label + " #" + std::to_string(k);
    j.label = l;
    seen.insert(l);
  }
  return jobs;
}

struct Trained {
  std::vector<std::string> dirs;  // run folders written, relative to --out
  bool stopped = false;           // interrupted, or a rank was lost
  std::string stop_reason;
};

// Trains every job in turn (data-parallel when `dp` is set); the writer saves each run folder.
Trained train_jobs(std::vector<Job>& jobs, const CompareOptions& o, const Sweep& sweep, DataParallel* dp, bool writer) {
  Trained t;
  for (std::size_t i = 0; i < jobs.size() && !t.stopped; ++i) {
    auto& j = jobs[i];
    Progress progress(fmt::format("[{}/{}] {}", i + 1, jobs.size(), j.label));
    if (writer) j.train.progress = [&](std::int64_t d, std::int64_t n) { progress.update(d, n); };
    j.train.should_stop = [] { return interrupted(); };
    j.train.data_parallel = dp;
    RunRecord r = models::train(j.spec, j.train);
    progress.finish();
    r.spec = j.text;
    r.label = j.label;
    if (sweep.axis != SweepAxis::none) {
      const bool time = sweep.axis == SweepAxis::seq_len;
      r.sweep = {sweep.axis, j.base, static_cast<double>(time ? j.train.seq_len : j.spec.get_int("depth"))};
    }
    t.stopped = r.interrupted;
    t.stop_reason = r.stop_reason;
    if (!writer) continue;
    const std::string dir = "runs/" + slug(j.label);
    std::filesystem::create_directories(o.out + "/" + dir);
    write_run_dir(r, o.out + "/" + dir);
    t.dirs.push_back(dir);
    if (!o.quiet)
      std::printf("[%zu/%zu] %-28s %5.1f s  %s\n", i + 1, jobs.size(), j.label.c_str(), r.wall_seconds,
                  r.traits.recurrent ? ("time " + attenuation_text(r.summary.time) + " -> " + attenuation_text(r.summary.time_final)).c_str()
                                     : ("depth " + attenuation_text(r.summary.depth)).c_str());
  }
  return t;
}

void write_flow(const CompareOptions& o, const models::ResolvedSpec& spec) {
  models::FlowRunOptions fo;
  fo.seed = o.flags.train.seed;
  const FlowResult fr = models::run_flow(spec, fo);
  std::filesystem::create_directories(o.out + "/flow");
  write_file_atomic(o.out + "/flow/flow.json", flow_to_json(fr) + "\n");
  write_file_atomic(o.out + "/flow/flow.html", flow_page_html(fr));
  if (!o.quiet) std::printf("flow %-30s %5.1f s  fitted order %.2f\n", o.flow.c_str(), fr.wall_seconds, fr.order.value_or(0.0));
}

// The report is built from the saved runs, exactly as 'gradflow report' rebuilds it later.
int write_comparison(const CompareOptions& o, const Trained& t, const std::vector<FindingKind>& fail_on,
                     std::chrono::steady_clock::time_point start) {
  std::vector<RunRecord> runs;
  for (const auto& d : t.dirs) runs.push_back(run_from_json(read_file(o.out + "/" + d + "/run.json"), d));
  Comparison c = make_comparison(std::move(runs), t.dirs);
  c.interrupted = t.stopped || interrupted();
  if (std::filesystem::exists(o.out + "/flow/flow.json"))
    c.flow = flow_from_json(read_file(o.out + "/flow/flow.json"), o.out + "/flow/flow.json");
  write_report(c, o.out);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("\n%s\n", report_text(c).c_str());
  std::printf("%zu runs in %.1f s; wrote %s/report.html, report.md and summary.json\n", c.runs.size(), secs, o.out.c_str());
  if (!t.stop_reason.empty()) {
    std::fprintf(stderr, "gradflow: %s; the report covers the %zu run(s) recorded so far\n", detail::first_line(t.stop_reason).c_str(),
                 c.runs.size());
    return kExitFailure;
  }
  if (c.interrupted) {
    std::fprintf(stderr, "gradflow: interrupted; the report covers the %zu run(s) recorded so far\n", c.runs.size());
    return interrupt_exit_code();
  }
  for (const auto& r : c.runs)
    if (has_any(r.findings, fail_on)) {
      std::fprintf(stderr, "gradflow: failing as asked by --fail-on %s: %s has such a finding\n", o.fail_on.c_str(), r.label.c_str());
      return kExitFailure;
    }
  return kExitOk;
}

}  // namespace

int run_compare(const CompareOptions& o) {
  if (is_width_sweep(o.sweep)) return run_width_sweep(o);
  if (o.seeds != 1) throw UsageError("--seeds averages a width sweep's figures: give it with --sweep width=...");
  const auto fail_on = parse_fail_on(o.fail_on);
  models::validate(o.flags.train);
  const Sweep sweep = parse_sweep(o.sweep);
  std::optional<models::ResolvedSpec> flow_spec;
  if (!o.flow.empty()) flow_spec = models::resolve_spec(o.flow);
  std::vector<Job> jobs = plan_jobs(o, sweep);
  const Placement where = place(o.placement, o.flags.train.batch);
  if (where.writer()) prepare_out_dir(o.out, o.flags.force, {"summary.json", "report.html", "report.md"});
  if (where.launcher) {
    const int code = launch(o.placement);
    cleanup_out_dir(o.out);
    return code;
  }
  const auto start = std::chrono::steady_clock::now();
  Trained t;
  try {
    const auto dp = join(where);
    t = train_jobs(jobs, o, sweep, dp.get(), where.writer());
  } catch (...) {
    if (where.writer()) cleanup_out_dir(o.out);
    throw;
  }
  if (!where.writer()) return silent_exit_code(t.stop_reason, t.stopped);
  if (flow_spec && !interrupted()) write_flow(o, *flow_spec);
  return write_comparison(o, t, fail_on, start);
}

void setup_compare(CLI::App& app) {
  auto o = std::make_shared<CompareOptions>();
  auto* sub = app.add_subcommand("compare", "Train several architectures on the same task and seed; write a comparison report");
  sub->add_option("specs", o->specs, "Model specs or presets (default: the suite)");
  sub->add_option("--suite", o->suite, "Built-in suite: default, quick, mlp, rnn, transformer")->capture_default_str();
  sub->add_option("--sweep", o->sweep, "Sweep depth=5,10,20,50 or seq-len=25,50,100,200 (attenuation at initialization), or width=64,128,...,2048 (the coordinate check: SP against µP; width alone: 64 to 2048)");
  sub->add_option("--seeds", o->seeds, "With --sweep width: average each figure over this many initialisations")->capture_default_str();
  sub->add_option("--out", o->out, "Output folder")->capture_default_str();
  sub->add_option("--fail-on", o->fail_on, "Exit 1 if any run has a finding of these kinds");
  sub->add_flag("--quiet", o->quiet, "Print only the final tables");
  sub->add_option("--flow", o->flow, "Add a gradient-flow section for this (small) spec, e.g. mlp:depth=3,width=16,act=tanh");
  add_train_flags(*sub, o->flags);
  add_rank_flags(*sub, o->placement);
  sub->final_callback([o, sub] {
    o->steps_given = sub->count("--steps") > 0;
    o->seq_len_given = sub->count("--seq-len") > 0;
    throw CLI::RuntimeError(run_compare(*o));
  });
}

}  // namespace gradflow::cli
