#pragma once
/// \file
/// Data-parallel training on PyTorch's c10d: one process per rank, rank 0's parameters
/// broadcast at start, gradients averaged in flattened buckets after each backward.

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/util/intrusive_ptr.h>

#include "gradflow/error.h"

namespace c10d {
class ProcessGroup;
class Store;
}
namespace torch::nn {
class Module;
}

namespace gradflow {

/// Which c10d process group DataParallel builds.
enum class CommBackend {
  automatic,  ///< NCCL when this LibTorch has it and a GPU is visible, Gloo otherwise
  gloo,       ///< CPU tensors, TCP
  nccl,       ///< CUDA tensors; a UsageError where LibTorch was built without NCCL
};

/// Where this process sits in its group, as a launcher (torchrun, `gradflow run --ranks`) says.
struct DataParallelOptions {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;  ///< rank on this machine (LOCAL_RANK): its GPU with NCCL
  CommBackend backend = CommBackend::automatic;
  std::string master_addr = "127.0.0.1";  ///< host of the rendezvous store
  int master_port = 29500;                ///< its port
  /// The launcher hosts the store (torchrun's agent; TORCHELASTIC_USE_AGENT_STORE=True): every
  /// rank connects to it. Otherwise rank 0 hosts it.
  bool agent_store = false;
  /// How long a collective (and the rendezvous) waits for the other ranks before the run stops
  /// with gradflow::RankLost.
  std::chrono::milliseconds timeout{60000};
  /// Gradients are averaged in flattened buckets of at most this many bytes each.
  std::int64_t bucket_bytes = 25ll << 20;
  /// A Monitor on this group compares the ranks' parameter checksums at every k-th recorded
  /// step (0: never).
  int sync_check_every = 10;
};

/// The launcher's variables RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT and
/// TORCHELASTIC_USE_AGENT_STORE; nullopt when RANK and WORLD_SIZE are not set. Throws
/// gradflow::UsageError naming the variable when one is set but malformed.
std::optional<DataParallelOptions> data_parallel_from_env();

/// Rank 0's `text` on every rank through `store` (see DataParallel::share_from_rank0); throws
/// gradflow::Error when rank 0 has not published `key` within `timeout`.
std::string share_from_rank0(c10d::Store& store, int rank, const std::string& key, const std::string& text,
                             std::chrono::milliseconds timeout);

/// A collective could not complete: a rank died, hung past the timeout, or the store is gone.
class RankLost : public Error {
 public:
  RankLost(const std::string& message, std::vector<int> lost) : Error(message), lost_(std::move(lost)) {}
  /// The ranks that did not answer afterwards (empty when every rank is alive: the ranks then
  /// disagreed on the collective, e.g. different models).
  const std::vector<int>& lost() const { return lost_; }

 private:
  std::vector<int> lost_;
};

/// One rank of a data-parallel group.
///
/// \code
/// gradflow::DataParallel dp(*gradflow::data_parallel_from_env());  // torchrun's variables
/// dp.broadcast_parameters(*model);                                  // every rank starts from rank 0's
/// gradflow::Monitor monitor(*model, gradflow::MonitorOptions{}.with_data_parallel(dp, batch));
/// for (...) {                                                       // each rank: its own shard
///   auto loss = criterion(model->forward(x), y);
///   monitor.watch(loss);
///   loss.backward();
///   dp.average_gradients(*model);                                   // one collective per bucket
///   optimizer.step();
/// }
/// \endcode
///
/// Collectives that fail throw gradflow::RankLost naming the ranks that no longer answer.
class DataParallel {
 public:
  /// Joins the group: connects to the store and builds the process group `options.backend` names.
  explicit DataParallel(const DataParallelOptions& options);
  /// Uses a process group the program built (Gloo, or NCCL for CUDA tensors where LibTorch has
  /// it); only `options.bucket_bytes` and `sync_check_every` are read.
  explicit DataParallel(const c10::intrusive_ptr<c10d::ProcessGroup>& group, const DataParallelOptions& options = {});
  /// \overload `store`: the group's rendezvous store (torch.distributed's), so that lost ranks
  /// can be named and save_report can bring rank 0's findings to every rank.
  DataParallel(const c10::intrusive_ptr<c10d::ProcessGroup>& group, const c10::intrusive_ptr<c10d::Store>& store,
               const DataParallelOptions& options = {});
  ~DataParallel();
  DataParallel(const DataParallel&) = delete;
  DataParallel& operator=(const DataParallel&) = delete;

  int rank() const;
  int world_size() const;
  const DataParallelOptions& options() const;

  /// Copies rank 0's parameters and buffers to every rank.
  void broadcast_parameters(torch::nn::Module& module);
  /// \overload
  void broadcast_parameters(const std::vector<at::Tensor>& tensors);
  /// Replaces every trainable parameter's .grad() by its mean over the ranks (a parameter with
  /// no gradient on this rank counts as a zero one): one allreduce per bucket, in which the
  /// figures of the Monitors on this group ride (no collective of their own).
  void average_gradients(torch::nn::Module& module);
  /// \overload
  void average_gradients(const std::vector<at::Tensor>& parameters);
  /// \overload Also sums `figures` (the same length on every rank: a loss, a count) over the
  /// ranks in the same collective, and returns the sums.
  std::vector<double> average_gradients(const std::vector<at::Tensor>& parameters, const std::vector<double>& figures);

  /// Elementwise sums of `values` over the ranks (the same length on each): one collective.
  std::vector<double> sum(const std::vector<double>& values);
  /// Every rank's `values` (the same length on each), by rank: one collective.
  std::vector<std::vector<double>> all_gather(const std::vector<double>& values);

  /// Whether the group has a rendezvous store (built here, or given with the group).
  bool has_store() const;
  /// Rank 0's `text` on every rank, through the store: rank 0 publishes it under `key` and
  /// returns at once; the others wait for it (up to the timeout; RankLost then).
  std::string share_from_rank0(const std::string& key, const std::string& text);

  /// The process group, for the program's own collectives.
  c10d::ProcessGroup& group();

  /// Figures that travel with the gradients: at each average_gradients() `block` gives this
  /// rank's contribution (a tensor summed with the other ranks' in the last bucket's allreduce,
  /// converted to the bucket's type; undefined: nothing this time, on every rank alike), and once
  /// the average is in place `receive` gets the summed block. Monitors use it.
  struct Rider {
    std::function<at::Tensor(const at::Tensor& bucket)> block;
    std::function<void(const at::Tensor& summed)> receive;
  };
  /// Returns an id for remove_rider().
  int add_rider(Rider rider);
  void remove_rider(int id);

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace gradflow
