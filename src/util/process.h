#pragma once
// Which process this is. A Monitor and its stream belong to the process that made them, not to
// a child that fork() copied them into: the child inherits every hook and open file.

#include <cstdint>

namespace gradflow::detail {

// The number of fork()s between the program's first process and this one: a child's is its
// parent's plus one. Cheap enough for every hook (one atomic load).
std::uint64_t fork_generation();

// This process's id.
std::int64_t process_id();

// A descriptor that fork()'s children close at once: a lock held through it stays its parent's
// alone (a child's copy would hold the lock after the parent let it go). Up to 64 at a time;
// forget_in_children before closing it.
void close_in_children(int fd);
void forget_in_children(int fd);

}  // namespace gradflow::detail
