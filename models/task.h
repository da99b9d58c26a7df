#pragma once
/// \file
/// Synthetic tasks, made on the fly from a seed: nothing to download.

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <torch/types.h>

namespace gradflow::models {

/// One batch of inputs and targets.
struct Batch {
  torch::Tensor x;
  torch::Tensor y;
};

/// Options of a task; not every task reads every field.
struct TaskOptions {
  std::string name;          ///< teacher | mixture | images | adding | copy | count
  std::int64_t seq_len = 50; ///< T for adding and count; the delay for copy
  std::int64_t inputs = 32;  ///< input features (teacher, mixture)
  std::int64_t classes = 10; ///< classes (teacher, mixture, images)
  double noise = 0.1;        ///< label noise (teacher) or input noise scale (mixture, images)
  torch::Dtype dtype = torch::kFloat;
};

/// A synthetic task: samples batches from the global LibTorch generator, so one seed gives one
/// sequence of batches.
class Task {
 public:
  virtual ~Task() = default;
  virtual std::string name() const = 0;
  /// Features per example (channels for images, features per step for sequences).
  virtual std::int64_t input_dim() const = 0;
  virtual std::int64_t output_dim() const = 0;
  virtual bool sequential() const { return false; }
  virtual Batch sample(std::int64_t batch) = 0;
  virtual torch::Tensor loss(const torch::Tensor& output, const Batch& batch) const = 0;
  /// Fraction of correct answers as a 0-d tensor, or undefined when the task has none.
  virtual torch::Tensor accuracy(const torch::Tensor& output, const Batch& batch) const { return {}; }
  /// The loss of the best constant answer: what a net that learned nothing reaches.
  virtual double baseline_loss() const = 0;
  virtual std::string describe() const = 0;
};

/// The task names, with the model family each suits.
struct TaskInfo {
  std::string name, family, help;
};
const std::vector<TaskInfo>& tasks();

/// Whether the family reads sequences ([batch, T, features], an answer at every step).
bool sequence_family(const std::string& family);

/// Builds a task; throws gradflow::UsageError for an unknown name or bad options, and when the
/// task does not fit the family (a sequence task for an MLP).
std::unique_ptr<Task> make_task(const TaskOptions& options, const std::string& family);

}  // namespace gradflow::models
