#include "util/process.h"

#include <array>
#include <atomic>

#include <pthread.h>
#include <unistd.h>

namespace gradflow::detail {

namespace {

std::atomic<std::uint64_t> generation{0};
// Each slot holds a descriptor + 1, 0 when free (static storage starts zeroed). Lock-free, so
// that the child's handler never waits for a lock another thread held at fork().
std::array<std::atomic<int>, 64> closed_in_children;

void in_child() {
  generation.fetch_add(1, std::memory_order_relaxed);
  for (auto& slot : closed_in_children) {
    const int held = slot.exchange(0);
    if (held > 0) ::close(held - 1);
  }
}

// Registered when the library loads, so that no fork() can come before it.
const bool registered = pthread_atfork(nullptr, nullptr, &in_child) == 0;

}  // namespace

std::uint64_t fork_generation() {
  (void)registered;
  return generation.load(std::memory_order_relaxed);
}

std::int64_t process_id() { return static_cast<std::int64_t>(::getpid()); }

void close_in_children(int fd) {
  for (auto& slot : closed_in_children) {
    int free = 0;
    if (slot.compare_exchange_strong(free, fd + 1)) return;
  }
}

void forget_in_children(int fd) {
  for (auto& slot : closed_in_children) {
    int held = fd + 1;
    if (slot.compare_exchange_strong(held, 0)) return;
  }
}

}  // namespace gradflow::detail
