#include "common.h"

#include "distributed/rank_figures.h"

#include "report/figures.h"

#include <atomic>
#include <cmath>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <set>

#include <fmt/format.h>
#include <unistd.h>

#include "gradflow/error.h"
#include "gradflow/threads.h"

namespace gradflow::cli {

namespace fs = std::filesystem;

namespace {
std::atomic<int> g_signal{0};
std::set<std::string> g_created;
extern "C" void on_signal(int sig) { g_signal.store(sig); }
}  // namespace

void prepare_out_dir(const std::string& dir, bool force, const std::vector<std::string>& products) {
  if (dir.empty()) throw UsageError("--out is empty: give a folder for the results");
  std::error_code ec;
  if (fs::exists(dir, ec)) {
    if (!fs::is_directory(dir, ec))
      throw UsageError("--out '" + dir + "' is a file, not a folder: choose a folder name");
    if (!force)
      for (const auto& p : products)
        if (fs::exists(fs::path(dir) / p, ec))
          throw UsageError("'" + dir + "' already holds " + p + ": choose another --out or add --force to replace it");
  } else {
    if (!fs::create_directories(dir, ec) || ec)
      throw Error("cannot create --out folder '" + dir + "': " + ec.message() + " (choose a writable location)");
    g_created.insert(dir);
  }
  if (::access(dir.c_str(), W_OK) != 0)
    throw Error("--out folder '" + dir + "' is not writable: choose a writable location");
}

void cleanup_out_dir(const std::string& dir) {
  if (!g_created.count(dir)) return;
  std::error_code ec;
  if (fs::is_empty(dir, ec) && !ec) fs::remove(dir, ec);
}

void install_signal_handlers() {
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

bool interrupted() { return g_signal.load() != 0; }
int interrupt_exit_code() { return 128 + g_signal.load(); }

Progress::Progress(std::string label) : label_(std::move(label)), tty_(::isatty(STDERR_FILENO) != 0) {}
Progress::~Progress() { finish(); }

void Progress::update(std::int64_t done, std::int64_t total) {
  if (!tty_ || total <= 0) return;
  const int pct = static_cast<int>(100 * done / total);
  if (pct == last_) return;
  last_ = pct;
  const int w = 30, fill = pct * w / 100;
  std::fprintf(stderr, "\r%s [%s%s] %3d%%", label_.c_str(), std::string(fill, '#').c_str(),
               std::string(w - fill, ' ').c_str(), pct);
  std::fflush(stderr);
}

void Progress::finish() {
  if (tty_ && last_ >= 0) {
    std::fprintf(stderr, "\r%s\r", std::string(label_.size() + 40, ' ').c_str());
    std::fflush(stderr);
    last_ = -1;
  }
}

std::string sci(double v) {
  if (std::isnan(v)) return "-";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  if (v == 0) return "0";
  return fmt::format("{:.2e}", v);
}
std::string sci(const std::optional<double>& v) { return v ? sci(*v) : "-"; }

std::string log_bar(double v, double lo, double hi, int width) {
  if (!(v > 0) || !std::isfinite(v) || hi <= lo) return std::string(static_cast<std::size_t>(width), ' ');
  const double f = (std::log10(v) - lo) / (hi - lo);
  const int n = std::max(1, std::min(width, static_cast<int>(std::lround(f * width))));
  return std::string(static_cast<std::size_t>(n), '#') + std::string(static_cast<std::size_t>(width - n), ' ');
}

std::string attenuation_text(const std::optional<Attenuation>& a) {
  return detail::attenuation_text(a, detail::Markup::plain, "-");
}

void print_findings(const std::vector<Finding>& findings, std::FILE* out, const std::string& indent) {
  if (findings.empty()) {
    std::fprintf(out, "%sno findings: the gradient flows\n", indent.c_str());
    return;
  }
  for (const auto& f : findings) {
    std::fprintf(out, "%s[%s] %s (%s): %s\n", indent.c_str(), to_string(f.severity), to_string(f.kind), f.where.c_str(),
                 f.message.c_str());
    if (!f.remedy.empty()) std::fprintf(out, "%s    remedy: %s\n", indent.c_str(), f.remedy.c_str());
  }
}

void print_run(const RunRecord& r, std::FILE* out) {
  const Trace& t = r.trace;
  std::fprintf(out, "%s  [%s]  task %s, %lld of %lld steps, %.1f s%s\n", r.label.c_str(), r.family.c_str(),
               r.task.c_str(), static_cast<long long>(r.steps_done), static_cast<long long>(r.steps_requested),
               r.wall_seconds, r.interrupted ? "  (interrupted)" : "");
  if (!t.steps().empty()) {
    const auto& first = t.steps().front();
    const auto& last = t.steps().back();
    const auto weights = weight_series(t);
    double lo = 1e300, hi = -1e300;
    for (const auto* st : {&first, &last})
      for (int s : weights)
        if (const Record* rec = st->find(s); rec && rec->grad.norm() > 0 && std::isfinite(rec->grad.norm())) {
          lo = std::min(lo, std::log10(rec->grad.norm()));
          hi = std::max(hi, std::log10(rec->grad.norm()));
        }
    if (hi - lo < 1) hi = lo + 1;
    std::fprintf(out, "\n  %-16s %-10s %-22s %-10s %-22s\n", "weight", fmt::format("step {}", first.step).c_str(), "|dL/dW| (log scale)",
                 fmt::format("step {}", last.step).c_str(), "");
    for (int s : weights) {
      const Record* a = first.find(s);
      const Record* b = last.find(s);
      const double na = a ? (a->grad.nonfinite ? INFINITY : a->grad.norm()) : NAN;
      const double nb = b ? (b->grad.nonfinite ? INFINITY : b->grad.norm()) : NAN;
      std::fprintf(out, "  %-16s %-10s %s %-10s %s\n", t.series()[s].layer.c_str(), sci(na).c_str(),
                   log_bar(na, lo, hi, 22).c_str(), sci(nb).c_str(), log_bar(nb, lo, hi, 22).c_str());
    }
  }
  const auto& s = r.summary;
  std::fprintf(out, "\n  dL/dh across depth, log10(first/last hidden): %s at step 0, %s at the end",
               attenuation_text(s.depth).c_str(), attenuation_text(s.depth_final).c_str());
  if (s.depth && s.depth->gain()) std::fprintf(out, "  (%.3gx per layer)", *s.depth->gain());
  std::fprintf(out, "\n");
  if (s.time)
    std::fprintf(out, "  dL/dh across time, log10(h_1/h_T): %s at step 0, %s at the end\n", attenuation_text(s.time).c_str(),
                 attenuation_text(s.time_final).c_str());
  if ((s.depth && s.depth->underflow) || (s.time && s.time->underflow))
    std::fprintf(out, "  (<= : the far-end gradient underflowed to 0 in this dtype; the figure is a bound. Try dtype=float64.)\n");
  std::fprintf(out, "  loss %s -> %s (constant-answer baseline %.3g)%s\n", sci(s.loss_first).c_str(), sci(s.loss_last).c_str(),
               r.baseline_loss, r.clipped_steps ? fmt::format(", clipped on {} steps", r.clipped_steps).c_str() : "");
  if (!r.accuracy.empty()) std::fprintf(out, "  accuracy at the last step %.2f\n", r.accuracy.back());
  if (const auto ranks = detail::rank_figures(r.trace)) std::fprintf(out, "  %s\n", detail::ranks_sentence(*ranks).c_str());
  std::fprintf(out, "\n  findings:\n");
  print_findings(r.findings, out, "    ");
}

void configure_threads() {
  // Measured on 2 cores (MLP 50x256, batch 128, bare step): LibTorch 1 + OpenBLAS 2 threads
  // 16.6 ms, 1 + 1 21.1 ms, 2 + 1 20.8 ms, 2 + 2 82.6 ms (two pools fighting over two cores).
  int torch_threads = 1, blas = 2;
  if (const char* env = std::getenv("GRADFLOW_THREADS")) {
    // "T" or "T,B": LibTorch intra-op threads, OpenBLAS threads.
    std::sscanf(env, "%d,%d", &torch_threads, &blas);
    if (torch_threads < 1) torch_threads = 1;
    if (blas < 1) blas = 1;
  }
  set_threads(torch_threads, blas);
}

}  // namespace gradflow::cli
