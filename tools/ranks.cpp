#include "ranks.h"

#include "common.h"
#include "launcher.h"
#include "models/train.h"

namespace gradflow::cli {

namespace {
std::chrono::milliseconds millis(double seconds) { return std::chrono::milliseconds(static_cast<std::int64_t>(seconds * 1000)); }
}  // namespace

void add_rank_flags(CLI::App& sub, RankFlags& f, const char* ranks_help) {
  sub.add_option("--ranks", f.ranks, ranks_help)->capture_default_str();
  sub.add_option("--timeout", f.timeout, "Seconds a rank waits for the others before the run stops")->capture_default_str();
}

void validate(const RankFlags& f) {
  if (f.ranks < 1 || f.ranks > 256) throw UsageError("--ranks must be between 1 and 256 (got " + std::to_string(f.ranks) + ")");
  if (!(f.timeout > 0 && f.timeout <= 86400)) throw UsageError("--timeout must be more than 0 and at most 86400 seconds");
}

Placement place(const RankFlags& f, std::int64_t batch) {
  validate(f);
  Placement p;
  p.group = data_parallel_from_env();
  if (p.group) {
    if (f.ranks > 1 && f.ranks != p.group->world_size)
      throw UsageError("--ranks " + std::to_string(f.ranks) + " disagrees with WORLD_SIZE=" + std::to_string(p.group->world_size) +
                       " set by the launcher: drop --ranks under a launcher");
    p.group->timeout = millis(f.timeout);
    p.world = p.group->world_size;
  } else {
    p.world = f.ranks;
    p.launcher = f.ranks > 1;
  }
  models::validate_shards(batch, p.world);
  return p;
}

int launch(const RankFlags& f, const std::vector<std::string>& command) {
  LaunchOptions lo;
  lo.ranks = f.ranks;
  lo.timeout = millis(f.timeout);
  lo.command = command;
  return launch_ranks(lo);
}

std::unique_ptr<DataParallel> join(const Placement& p) {
  if (!p.group) return nullptr;
  return std::make_unique<DataParallel>(*p.group);
}

int silent_exit_code(const std::string& stop_reason, bool interrupted) {
  if (!stop_reason.empty()) return kExitFailure;
  return interrupted ? interrupt_exit_code() : kExitOk;
}

}  // namespace gradflow::cli
