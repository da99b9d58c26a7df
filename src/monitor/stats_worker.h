#pragma once
// A thread that computes CPU gradient statistics while backward goes on.

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include <ATen/core/Tensor.h>

#include "gradflow/tensor_stats.h"

namespace gradflow::detail {

class StatsWorker {
 public:
  struct Result {
    int record = 0;
    TensorStats grad;
    std::optional<double> weight_sum_sq;  // set when a weight was given
  };

  StatsWorker() = default;
  ~StatsWorker();
  StatsWorker(const StatsWorker&) = delete;
  StatsWorker& operator=(const StatsWorker&) = delete;

  // Queues the statistics of `grad` (and of `weight` in the same pass, if defined). The tensors
  // are held until collect() returns their results. Starts the thread on first use.
  void submit(int record, const at::Tensor& grad, const at::Tensor& weight);
  // Waits until every submitted job is done and hands over their results, in submission order.
  std::vector<Result> collect();
  bool has_jobs() const { return !jobs_.empty(); }

 private:
  struct Job {
    int record = 0;
    at::Tensor grad, weight;
    TensorStats stats;
    double weight_sq = 0;
  };
  void loop();

  // jobs_ belongs to the submitting thread; queue_, finished_ and stop_ are shared with the
  // worker and guarded by mu_.
  std::vector<std::unique_ptr<Job>> jobs_;
  std::mutex mu_;
  std::condition_variable wake_, done_;
  std::deque<Job*> queue_;
  std::size_t finished_ = 0;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace gradflow::detail
