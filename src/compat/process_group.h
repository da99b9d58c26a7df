#pragma once
// What differs between the LibTorch versions gradflow builds with lives in src/compat (see node.h).
// Here: how a c10d process group is made from its backend.

#include <utility>

#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/version.h>

namespace gradflow::compat {

/// The device a process group's backend serves.
enum class GroupBackend { gloo, nccl };

/// A process group whose collectives run on `backend`. LibTorch 2 splits a group into the
/// ProcessGroup the collectives are called on and the backend that runs them for a device type;
/// in LibTorch 1 the backend is the group.
template <typename Backend>
c10::intrusive_ptr<c10d::ProcessGroup> as_group(c10::intrusive_ptr<Backend> backend,
                                                const c10::intrusive_ptr<c10d::Store>& store, int rank,
                                                int world_size, GroupBackend kind) {
#if TORCH_VERSION_MAJOR >= 2
  using Type = c10d::ProcessGroup::BackendType;
  const Type type = kind == GroupBackend::nccl ? Type::NCCL : Type::GLOO;
  auto group = c10::make_intrusive<c10d::ProcessGroup>(store, rank, world_size);
  const auto device_type = kind == GroupBackend::nccl ? c10::DeviceType::CUDA : c10::DeviceType::CPU;
  group->setBackend(device_type, type, c10::intrusive_ptr<c10d::Backend>(std::move(backend)));
  group->setDefaultBackend(type);
  return group;
#else
  (void)store, (void)rank, (void)world_size, (void)kind;
  return backend;
#endif
}

}  // namespace gradflow::compat
