#pragma once
/// \file
/// LibTorch's CPU generator put back as it was: what runs inside (a batch set aside, the networks
/// a parametrisation reads its weight kinds from) leaves the training's random sequence alone.

#include <mutex>

#include <ATen/CPUGeneratorImpl.h>

namespace gradflow::models {

class CpuGeneratorGuard {
 public:
  CpuGeneratorGuard() : gen_(at::detail::getDefaultCPUGenerator()) {
    std::lock_guard<std::mutex> lock(gen_.mutex());
    state_ = gen_.get_state();
  }
  ~CpuGeneratorGuard() {
    std::lock_guard<std::mutex> lock(gen_.mutex());
    gen_.set_state(state_);
  }
  CpuGeneratorGuard(const CpuGeneratorGuard&) = delete;
  CpuGeneratorGuard& operator=(const CpuGeneratorGuard&) = delete;

 private:
  at::Generator gen_;
  at::Tensor state_;
};

}  // namespace gradflow::models
