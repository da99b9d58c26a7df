#include "cli_harness.h"

#include <chrono>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef GRADFLOW_CLI
#error "GRADFLOW_CLI must name the gradflow binary"
#endif

namespace gradflow::test {

namespace fs = std::filesystem;

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string temp_dir(const std::string& name) {
  const fs::path p = fs::temp_directory_path() / ("gradflow_cli_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(p);
  fs::create_directories(p);
  return p.string();
}

CliResult run_cli(const std::vector<std::string>& args, int signal_after_ms, int sig, const std::string& when_file) {
  const Spawned s = spawn_cli(args);
  if (signal_after_ms > 0) {
    const auto start = std::chrono::steady_clock::now();
    while (process_alive(s.pid)) {
      const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start).count();
      if (ms >= signal_after_ms && (when_file.empty() || fs::exists(when_file))) {
        ::kill(s.pid, sig);
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  return finish(s, 24 * 3600 * 1000);
}

Spawned spawn_cli(const std::vector<std::string>& args, const std::vector<std::string>& env) {
  return spawn_program(GRADFLOW_CLI, args, env);
}

CliResult run_program(const std::string& program, const std::vector<std::string>& args, int limit_ms) {
  return finish(spawn_program(program, args), limit_ms);
}

Spawned spawn_program(const std::string& program, const std::vector<std::string>& args, const std::vector<std::string>& env) {
  static int count = 0;
  Spawned s;
  s.dir = temp_dir("spawn" + std::to_string(count++));
  const std::string out = s.dir + "/out", err = s.dir + "/err";
  std::string bin = program;
  std::vector<std::string> copy = args, vars = env;
  std::vector<char*> argv{bin.data()};
  for (auto& a : copy) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    const int o = ::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    const int e = ::open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(o, 1);
    ::dup2(e, 2);
    for (auto& v : vars) ::putenv(v.data());
    ::execv(bin.c_str(), argv.data());
    ::_exit(127);
  }
  s.pid = pid;
  return s;
}

CliResult finish(const Spawned& s, int limit_ms) {
  const auto start = std::chrono::steady_clock::now();
  CliResult r;
  int status = 0;
  while (::waitpid(s.pid, &status, WNOHANG) != s.pid) {
    if (std::chrono::steady_clock::now() - start > std::chrono::milliseconds(limit_ms)) {
      ::kill(s.pid, SIGKILL);
      ::waitpid(s.pid, &status, 0);
      r.out = slurp(s.dir + "/out");
      r.err = slurp(s.dir + "/err");
      return r;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = slurp(s.dir + "/out");
  r.err = slurp(s.dir + "/err");
  fs::remove_all(s.dir);
  return r;
}

std::vector<int> child_pids(int pid) {
  std::vector<int> out;
  std::istringstream in(slurp("/proc/" + std::to_string(pid) + "/task/" + std::to_string(pid) + "/children"));
  for (int c; in >> c;) out.push_back(c);
  return out;
}

std::string env_of(int pid, const std::string& name) {
  const std::string all = slurp("/proc/" + std::to_string(pid) + "/environ");
  std::size_t at = 0;
  while (at < all.size()) {
    const std::size_t end = all.find('\0', at);
    const std::string v = all.substr(at, end == std::string::npos ? std::string::npos : end - at);
    if (v.rfind(name + "=", 0) == 0) return v.substr(name.size() + 1);
    if (end == std::string::npos) break;
    at = end + 1;
  }
  return "";
}

bool process_alive(int pid) {
  // A zombie has exited: its state letter is Z.
  const std::string stat = slurp("/proc/" + std::to_string(pid) + "/stat");
  if (stat.empty()) return false;
  const auto close = stat.rfind(')');
  return close != std::string::npos && close + 2 < stat.size() && stat[close + 2] != 'Z';
}

}  // namespace gradflow::test
