#include "launcher.h"

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <thread>

#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include "common.h"
#include "gradflow/error.h"

extern char** environ;

namespace gradflow::cli {

namespace {

std::vector<std::string> g_args;

struct Rank {
  int rank = 0;
  pid_t pid = -1;
  bool running = false;
  int status = 0;
};

// The environment a rank starts with: ours, plus what torchrun would set.
std::vector<std::string> rank_environment(int rank, int world, int port) {
  const auto ours = [](const std::string& v) {
    for (const char* name : {"RANK=", "LOCAL_RANK=", "WORLD_SIZE=", "MASTER_ADDR=", "MASTER_PORT=", "TORCHELASTIC_USE_AGENT_STORE="})
      if (v.rfind(name, 0) == 0) return true;
    return false;
  };
  std::vector<std::string> env;
  for (char** e = environ; *e; ++e)
    if (!ours(*e)) env.emplace_back(*e);
  env.push_back("RANK=" + std::to_string(rank));
  env.push_back("LOCAL_RANK=" + std::to_string(rank));
  env.push_back("WORLD_SIZE=" + std::to_string(world));
  env.push_back("MASTER_ADDR=127.0.0.1");
  env.push_back("MASTER_PORT=" + std::to_string(port));
  env.push_back("TORCHELASTIC_USE_AGENT_STORE=True");
  // Two pools per rank on a small machine fight over its cores: one thread each, unless asked.
  if (!std::getenv("GRADFLOW_THREADS")) env.push_back("GRADFLOW_THREADS=1,1");
  return env;
}

std::vector<char*> pointers(std::vector<std::string>& strings) {
  std::vector<char*> p;
  for (auto& s : strings) p.push_back(s.data());
  p.push_back(nullptr);
  return p;
}

pid_t start_rank(const std::vector<std::string>& command, int rank, int world, int port) {
  auto args = command.empty() ? g_args : command;
  const bool self = command.empty();
  auto env = rank_environment(rank, world, port);
  auto argv = pointers(args), envp = pointers(env);
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) throw Error(std::string("cannot start rank ") + std::to_string(rank) + ": " + std::strerror(errno));
  if (pid == 0) {
    // Its own process group: Ctrl-C reaches the launcher, which stops the ranks together.
    ::setpgid(0, 0);
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(1);
    if (self)
      ::execve("/proc/self/exe", argv.data(), envp.data());
    else
      ::execvpe(argv[0], argv.data(), envp.data());
    std::fprintf(stderr, "gradflow: cannot start rank %d (%s): %s\n", rank, argv[0], std::strerror(errno));
    ::_exit(127);
  }
  return pid;
}

std::string describe(const Rank& r) {
  if (WIFSIGNALED(r.status))
    return "rank " + std::to_string(r.rank) + " was killed by signal " + std::to_string(WTERMSIG(r.status)) + " (" +
           strsignal(WTERMSIG(r.status)) + ")";
  return "rank " + std::to_string(r.rank) + " exited with code " + std::to_string(WEXITSTATUS(r.status));
}

bool failed(const Rank& r) { return WIFSIGNALED(r.status) || WEXITSTATUS(r.status) != 0; }

void signal_all(std::vector<Rank>& ranks, int sig) {
  for (auto& r : ranks)
    if (r.running) ::kill(r.pid, sig);
}

// Reaps the ranks that ended; true while any runs.
bool reap(std::vector<Rank>& ranks) {
  bool any = false;
  for (auto& r : ranks) {
    if (r.running && ::waitpid(r.pid, &r.status, WNOHANG) == r.pid) r.running = false;
    any = any || r.running;
  }
  return any;
}

}  // namespace

void set_command_line(int argc, char** argv) { g_args.assign(argv, argv + argc); }

int launch_ranks(const LaunchOptions& o) {
  c10d::TCPStoreOptions so;
  so.port = 0;  // any free port
  so.isServer = true;
  so.waitWorkers = false;
  so.timeout = o.timeout;
  auto store = c10::make_intrusive<c10d::TCPStore>("127.0.0.1", so);
  std::vector<Rank> ranks;
  for (int r = 0; r < o.ranks; ++r) ranks.push_back({r, start_rank(o.command, r, o.ranks, store->getPort()), true, 0});

  using clock = std::chrono::steady_clock;
  std::optional<clock::time_point> deadline;
  bool forwarded = false;
  while (reap(ranks)) {
    if (interrupted() && !forwarded) {
      signal_all(ranks, SIGINT);
      forwarded = true;
      deadline = clock::now() + o.timeout + std::chrono::seconds(10);
    }
    // Once one rank has ended badly, or rank 0 (the writer) has ended, the others get their
    // collective timeout to notice and stop; then they are killed.
    const bool someone_failed = std::any_of(ranks.begin(), ranks.end(), [](const Rank& r) { return !r.running && failed(r); });
    if (!deadline && (someone_failed || !ranks[0].running))
      deadline = clock::now() + (ranks[0].running ? o.timeout + std::chrono::seconds(10) : std::chrono::seconds(5));
    if (deadline && clock::now() > *deadline) {
      for (const auto& r : ranks)
        if (r.running) std::fprintf(stderr, "gradflow: rank %d did not stop in time: killing it\n", r.rank);
      signal_all(ranks, SIGKILL);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  const Rank& writer = ranks[0];
  if (WIFSIGNALED(writer.status) && !forwarded) {
    std::fprintf(stderr, "gradflow: %s: nothing was written\n", describe(writer).c_str());
    return kExitFailure;
  }
  if (forwarded) return interrupt_exit_code();
  if (WEXITSTATUS(writer.status) != 0) return WEXITSTATUS(writer.status);
  for (const auto& r : ranks)
    if (failed(r)) {
      std::fprintf(stderr, "gradflow: %s\n", describe(r).c_str());
      return kExitFailure;
    }
  return kExitOk;
}

}  // namespace gradflow::cli
