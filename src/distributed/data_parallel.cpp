#include "gradflow/data_parallel.h"

#include <cstdlib>
#include <map>
#include <thread>

#include <fmt/format.h>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/torch.h>
// Compiled where LibTorch has NCCL (Torch's CMake config defines USE_C10D_NCCL); Debian's does not.
#ifdef USE_C10D_NCCL
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include "compat/process_group.h"
#include "distributed/rank_figures.h"
#include "distributed/rider_block.h"
#include "util/text.h"

namespace gradflow {

namespace {

std::optional<std::string> env(const char* name) {
  const char* v = std::getenv(name);
  if (!v) return std::nullopt;
  return std::string(v);
}

int env_int(const char* name, const std::string& text, int lo, int hi) {
  try {
    std::size_t used = 0;
    const long v = std::stol(text, &used);
    if (used == text.size() && v >= lo && v <= hi) return static_cast<int>(v);
  } catch (const std::exception&) {
  }
  throw UsageError(fmt::format("{}={} is not an integer in [{}, {}]: set it as the launcher does", name, text, lo, hi));
}

bool is_loopback(const std::string& host) { return host == "127.0.0.1" || host == "localhost"; }

}  // namespace

std::optional<DataParallelOptions> data_parallel_from_env() {
  const auto rank = env("RANK"), world = env("WORLD_SIZE");
  if (!rank && !world) return std::nullopt;
  if (!rank || !world)
    throw UsageError(std::string(rank ? "WORLD_SIZE" : "RANK") + " is not set while " + (rank ? "RANK" : "WORLD_SIZE") +
                     " is: a launcher sets both (and MASTER_ADDR, MASTER_PORT)");
  DataParallelOptions o;
  o.world_size = env_int("WORLD_SIZE", *world, 1, 65536);
  o.rank = env_int("RANK", *rank, 0, o.world_size - 1);
  if (auto local = env("LOCAL_RANK")) o.local_rank = env_int("LOCAL_RANK", *local, 0, 65535);
  if (auto addr = env("MASTER_ADDR")) o.master_addr = *addr;
  if (auto port = env("MASTER_PORT")) o.master_port = env_int("MASTER_PORT", *port, 1, 65535);
  const auto agent = env("TORCHELASTIC_USE_AGENT_STORE");
  o.agent_store = agent && (*agent == "True" || *agent == "true" || *agent == "1");
  return o;
}

struct DataParallel::Impl {
  DataParallelOptions opts;
  c10::intrusive_ptr<c10d::Store> store;  // null for a group the program built
  c10::intrusive_ptr<c10d::ProcessGroup> group;
  at::Device device = at::kCPU;  // where the group's own small tensors live
  std::map<int, DataParallel::Rider> riders;
  int next_rider = 0;

  // The ranks that no longer answer, asked through the store once a collective failed: each
  // rank still alive leaves its mark there.
  std::vector<int> missing_ranks() {
    std::vector<int> missing;
    if (!store) return missing;
    try {
      store->set("gradflow/alive/" + std::to_string(opts.rank), std::vector<uint8_t>{1});
      const auto deadline = std::chrono::steady_clock::now() + std::min<std::chrono::milliseconds>(opts.timeout, std::chrono::seconds(5));
      std::vector<bool> alive(static_cast<std::size_t>(opts.world_size), false);
      alive[static_cast<std::size_t>(opts.rank)] = true;
      for (;;) {
        missing.clear();
        for (int r = 0; r < opts.world_size; ++r) {
          if (!alive[r]) alive[r] = store->check({"gradflow/alive/" + std::to_string(r)});
          if (!alive[r]) missing.push_back(r);
        }
        if (missing.empty() || std::chrono::steady_clock::now() > deadline) return missing;
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
    } catch (const std::exception&) {
      // The store is gone with its host: rank 0, unless a launcher holds it.
      return opts.agent_store ? std::vector<int>{} : std::vector<int>{0};
    }
  }

  template <class F>
  auto guarded(const char* what, F&& f) {
    try {
      return f();
    } catch (const RankLost&) {
      throw;
    } catch (const c10::Error& e) {
      throw lost(what, e.what_without_backtrace());
    } catch (const std::exception& e) {
      throw lost(what, e.what());
    }
  }

  RankLost lost(const char* what, const std::string& detail) {
    const auto missing = missing_ranks();
    const std::string why = detail::first_line(detail);
    if (missing.empty())
      return RankLost(fmt::format("{} failed on rank {} ({}): every rank is alive, so they disagree on it (each must run "
                                  "the same model and loop)",
                                  what, opts.rank, why),
                      missing);
    return RankLost(fmt::format("lost {} during {} ({}): it died or did not answer within {} s", detail::ranks_phrase(missing),
                                what, why, opts.timeout.count() / 1000.0),
                    missing);
  }

  bool nccl() const {
#ifdef USE_C10D_NCCL
    return opts.backend == CommBackend::nccl || (opts.backend == CommBackend::automatic && torch::cuda::is_available());
#else
    if (opts.backend == CommBackend::nccl)
      throw UsageError("this LibTorch was built without NCCL: use CommBackend::gloo (CPU tensors) or a LibTorch with CUDA and NCCL");
    return false;
#endif
  }

  c10::intrusive_ptr<c10d::ProcessGroup> make_gloo() {
    auto go = c10d::ProcessGroupGloo::Options::create(opts.timeout);
    go->devices.push_back(is_loopback(opts.master_addr) ? c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1")
                                                        : c10d::ProcessGroupGloo::createDefaultDevice());
    return compat::as_group(c10::make_intrusive<c10d::ProcessGroupGloo>(store, opts.rank, opts.world_size, go), store,
                            opts.rank, opts.world_size, compat::GroupBackend::gloo);
  }


  c10::intrusive_ptr<c10d::ProcessGroup> make_nccl() {
#ifdef USE_C10D_NCCL
    const int gpu = opts.local_rank % std::max<int>(1, static_cast<int>(torch::cuda::device_count()));
    c10::cuda::set_device(static_cast<c10::DeviceIndex>(gpu));
    device = at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(gpu));
    auto no = c10d::ProcessGroupNCCL::Options::create();
    no->timeout = opts.timeout;
    return compat::as_group(c10::make_intrusive<c10d::ProcessGroupNCCL>(store, opts.rank, opts.world_size, no), store,
                            opts.rank, opts.world_size, compat::GroupBackend::nccl);
#else
    return {};
#endif
  }

  void connect() {
    c10d::TCPStoreOptions so;
    so.port = static_cast<std::uint16_t>(opts.master_port);
    so.isServer = !opts.agent_store && opts.rank == 0;
    so.numWorkers = opts.world_size;
    so.timeout = opts.timeout;
    const bool use_nccl = nccl();
    try {
      store = c10::make_intrusive<c10d::TCPStore>(opts.master_addr, so);
      group = use_nccl ? make_nccl() : make_gloo();
    } catch (const std::exception& e) {
      throw Error(fmt::format("rank {} could not join the group at {}:{} ({}): start every rank within {} s of each other, "
                              "with the same MASTER_ADDR and MASTER_PORT",
                              opts.rank, opts.master_addr, opts.master_port, detail::first_line(e.what()),
                              opts.timeout.count() / 1000.0));
    }
  }

  // Gradients of one dtype and device per bucket, up to bucket_bytes each (a missing gradient
  // becomes a zero one).
  std::vector<std::vector<at::Tensor>> buckets_of(const std::vector<at::Tensor>& parameters) const {
    std::vector<std::vector<at::Tensor>> buckets;
    std::int64_t bytes = 0;
    for (const auto& p : parameters) {
      if (!p.requires_grad()) continue;
      at::Tensor& g = const_cast<at::Tensor&>(p).mutable_grad();
      if (!g.defined()) g = torch::zeros_like(p);
      const std::int64_t size = g.numel() * static_cast<std::int64_t>(g.element_size());
      if (buckets.empty() || buckets.back().front().scalar_type() != g.scalar_type() ||
          buckets.back().front().device() != g.device() || bytes + size > opts.bucket_bytes) {
        buckets.emplace_back();
        bytes = 0;
      }
      buckets.back().push_back(g);
      bytes += size;
    }
    return buckets;
  }

  // Sums the bucket over the ranks and divides by their number; `rider` (a zero-padded block of
  // every rank's figures, see rider_block.h) travels in the same collective and comes back summed.
  void allreduce_bucket(std::vector<at::Tensor>& grads, at::Tensor* rider = nullptr) {
    std::vector<at::Tensor> parts;
    for (const auto& g : grads) parts.push_back(g.reshape({-1}));
    if (rider) parts.push_back(*rider);
    std::vector<at::Tensor> flat{torch::cat(parts)};
    guarded("the gradient average", [&] { group->allreduce(flat)->wait(); });
    std::int64_t offset = 0;
    for (auto& g : grads) {
      g.copy_(flat[0].narrow(0, offset, g.numel()).view_as(g).div_(opts.world_size));
      offset += g.numel();
    }
    if (rider) *rider = flat[0].narrow(0, offset, rider->numel());
  }
};

DataParallel::DataParallel(const DataParallelOptions& options) : impl_(std::make_unique<Impl>()) {
  if (options.world_size < 1 || options.rank < 0 || options.rank >= options.world_size)
    throw UsageError(fmt::format("rank {} is not in a group of {}: ranks go from 0 to world size - 1", options.rank,
                                 options.world_size));
  impl_->opts = options;
  impl_->connect();
}

DataParallel::DataParallel(const c10::intrusive_ptr<c10d::ProcessGroup>& group, const DataParallelOptions& options)
    : impl_(std::make_unique<Impl>()) {
  if (!group) throw UsageError("DataParallel needs a process group: pass one the program built");
  impl_->opts = options;
  impl_->opts.rank = group->getRank();
  impl_->opts.world_size = group->getSize();
  impl_->group = group;
  if (group->getBackendName() == "nccl") impl_->device = at::Device(at::kCUDA);
}

DataParallel::DataParallel(const c10::intrusive_ptr<c10d::ProcessGroup>& group,
                           const c10::intrusive_ptr<c10d::Store>& store, const DataParallelOptions& options)
    : DataParallel(group, options) {
  impl_->store = store;
}

DataParallel::~DataParallel() = default;

bool DataParallel::has_store() const { return static_cast<bool>(impl_->store); }

std::string DataParallel::share_from_rank0(const std::string& key, const std::string& text) {
  if (!impl_->store) throw Error("this group has no store to share rank 0's findings: build it with one");
  return impl_->guarded("waiting for rank 0's findings", [&] {
    return gradflow::share_from_rank0(*impl_->store, rank(), key, text, impl_->opts.timeout);
  });
}

std::string share_from_rank0(c10d::Store& store, int rank, const std::string& key, const std::string& text,
                             std::chrono::milliseconds timeout) {
  if (rank == 0) {
    store.set(key, std::vector<std::uint8_t>(text.begin(), text.end()));
    return text;
  }
  try {
    store.wait({key}, timeout);
  } catch (const std::exception&) {
    throw Error(fmt::format("rank 0 did not publish its findings within {} s: call save_report on rank 0 too",
                            timeout.count() / 1000.0));
  }
  const std::vector<std::uint8_t> v = store.get(key);
  return std::string(v.begin(), v.end());
}

int DataParallel::rank() const { return impl_->opts.rank; }
int DataParallel::world_size() const { return impl_->opts.world_size; }
const DataParallelOptions& DataParallel::options() const { return impl_->opts; }
c10d::ProcessGroup& DataParallel::group() { return *impl_->group; }

void DataParallel::broadcast_parameters(torch::nn::Module& module) {
  std::vector<at::Tensor> all = module.parameters(true);
  for (const auto& b : module.buffers(true)) all.push_back(b);
  broadcast_parameters(all);
}

void DataParallel::broadcast_parameters(const std::vector<at::Tensor>& tensors) {
  torch::NoGradGuard no_grad;
  for (const auto& t : tensors) {
    if (!t.defined()) continue;
    std::vector<at::Tensor> one{t.is_contiguous() ? t.detach() : t.detach().contiguous()};
    impl_->guarded("the parameter broadcast", [&] { impl_->group->broadcast(one)->wait(); });
    if (!t.is_contiguous()) t.detach().copy_(one[0]);
  }
}

void DataParallel::average_gradients(torch::nn::Module& module) { average_gradients(module.parameters(true)); }

void DataParallel::average_gradients(const std::vector<at::Tensor>& parameters) { average_gradients(parameters, {}); }

std::vector<double> DataParallel::average_gradients(const std::vector<at::Tensor>& parameters,
                                                    const std::vector<double>& figures) {
  torch::NoGradGuard no_grad;
  std::vector<std::vector<at::Tensor>> buckets = impl_->buckets_of(parameters);
  const at::Tensor like = buckets.empty() ? torch::zeros({0}, torch::TensorOptions(torch::kDouble).device(impl_->device))
                                          : buckets.back().front();
  // The block: the figures to sum, then each rider's contribution.
  std::vector<at::Tensor> parts{detail::rider_block(figures, rank(), world_size(), like)};
  std::vector<std::int64_t> sizes;
  for (auto& [id, rider] : impl_->riders) {
    const at::Tensor b = rider.block(like);
    sizes.push_back(b.defined() ? b.numel() : -1);
    if (b.defined()) parts.push_back(b.reshape({-1}).to(like.options()));
  }
  at::Tensor block = torch::cat(parts);
  if (buckets.empty() && block.numel() == 0) return {};
  // A group whose model has no gradient still sends its figures, in a bucket of their own.
  if (buckets.empty()) buckets.emplace_back();
  for (std::size_t b = 0; b < buckets.size(); ++b) impl_->allreduce_bucket(buckets[b], b + 1 == buckets.size() ? &block : nullptr);
  std::int64_t offset = parts.front().numel();
  std::vector<double> sums(figures.size(), 0.0);
  for (const auto& row : detail::rider_rows(block.narrow(0, 0, offset), world_size(), figures.size()))
    for (std::size_t k = 0; k < sums.size(); ++k) sums[k] += row[k];
  std::size_t k = 0;
  for (auto& [id, rider] : impl_->riders) {
    const std::int64_t n = sizes[k++];
    if (n < 0) continue;
    rider.receive(block.narrow(0, offset, n));
    offset += n;
  }
  return sums;
}

std::vector<double> DataParallel::sum(const std::vector<double>& values) {
  if (values.empty()) return {};
  std::vector<at::Tensor> t{torch::tensor(values, torch::kDouble).to(impl_->device)};
  impl_->guarded("a sum across ranks", [&] { impl_->group->allreduce(t)->wait(); });
  const at::Tensor host = t[0].cpu().contiguous();
  return {host.data_ptr<double>(), host.data_ptr<double>() + host.numel()};
}

std::vector<std::vector<double>> DataParallel::all_gather(const std::vector<double>& values) {
  const auto n = static_cast<std::int64_t>(values.size());
  std::vector<at::Tensor> in{torch::tensor(values, torch::kDouble).reshape({n}).to(impl_->device)};
  std::vector<std::vector<at::Tensor>> out(1);
  for (int r = 0; r < world_size(); ++r) out[0].push_back(torch::empty({n}, in[0].options()));
  impl_->guarded("the statistics exchange", [&] { impl_->group->allgather(out, in)->wait(); });
  std::vector<std::vector<double>> result;
  for (const auto& t : out[0]) {
    const at::Tensor host = t.cpu().contiguous();
    result.emplace_back(host.data_ptr<double>(), host.data_ptr<double>() + host.numel());
  }
  return result;
}

int DataParallel::add_rider(Rider rider) {
  impl_->riders.emplace(impl_->next_rider, std::move(rider));
  return impl_->next_rider++;
}

void DataParallel::remove_rider(int id) { impl_->riders.erase(id); }

}  // namespace gradflow
