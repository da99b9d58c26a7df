#pragma once
// A value that can be reached only through a lock on its own mutex.

#include <mutex>
#include <utility>

namespace gradflow::detail {

// Every read or write of the value goes through lock(): the type, not a comment, says which
// mutex protects what. Functions that need the lock held take `T&` from an Access, so they
// cannot be called without it.
template <class T>
class Guarded {
 public:
  class Access {
   public:
    T* operator->() const { return value_; }
    T& operator*() const { return *value_; }
    // Lets the caller run code that must not hold the lock (registering a hook that may fire).
    void unlock() { lock_.unlock(); }

   private:
    friend class Guarded;
    Access(std::mutex& mu, T& value) : lock_(mu), value_(&value) {}
    std::unique_lock<std::mutex> lock_;
    T* value_;
  };

  template <class... Args>
  explicit Guarded(Args&&... args) : value_(std::forward<Args>(args)...) {}
  Guarded(const Guarded&) = delete;
  Guarded& operator=(const Guarded&) = delete;

  Access lock() { return Access(mu_, value_); }

 private:
  std::mutex mu_;
  T value_;
};

}  // namespace gradflow::detail
