#include "monitor/stats_worker.h"

#include "stats/tensor_stats_torch.h"

namespace gradflow::detail {

StatsWorker::~StatsWorker() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void StatsWorker::submit(int record, const at::Tensor& grad, const at::Tensor& weight) {
  if (!thread_.joinable()) thread_ = std::thread([this] { loop(); });
  auto job = std::make_unique<Job>();
  job->record = record;
  job->grad = grad;
  job->weight = weight;
  {
    std::lock_guard<std::mutex> lock(mu_);
    queue_.push_back(job.get());
  }
  jobs_.push_back(std::move(job));
  wake_.notify_one();
}

std::vector<StatsWorker::Result> StatsWorker::collect() {
  if (jobs_.empty()) return {};
  {
    std::unique_lock<std::mutex> lock(mu_);
    done_.wait(lock, [&] { return finished_ == jobs_.size(); });
    finished_ = 0;
  }
  std::vector<Result> out;
  out.reserve(jobs_.size());
  for (const auto& j : jobs_) {
    Result r;
    r.record = j->record;
    r.grad = j->stats;
    if (j->weight.defined()) r.weight_sum_sq = j->weight_sq;
    out.push_back(r);
  }
  jobs_.clear();
  return out;
}

void StatsWorker::loop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    wake_.wait(lock, [&] { return stop_ || !queue_.empty(); });
    if (queue_.empty() && stop_) return;
    Job* j = queue_.front();
    queue_.pop_front();
    lock.unlock();
    if (!j->weight.defined() || !fused_stats_with_weight(j->grad, j->weight, j->stats, j->weight_sq))
      j->stats = fused_stats(j->grad);
    lock.lock();
    ++finished_;
    done_.notify_all();
  }
}

}  // namespace gradflow::detail
