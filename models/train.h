#pragma once
/// \file
/// Training a built-in network on a synthetic task, with a Monitor attached.

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "gradflow/parametrisation.h"
#include "gradflow/run_record.h"
#include "models/spec.h"

namespace gradflow {
class DataParallel;
}
namespace torch::optim {
class Optimizer;
}

namespace gradflow::models {

/// Trainer settings; empty means the family's default (see docs/cli.md, "Trainer defaults").
struct TrainOptions {
  std::string task;            ///< empty: the family's default task
  std::int64_t seq_len = 50;   ///< T for sequence tasks
  std::int64_t steps = 100;
  std::int64_t batch = 64;
  std::optional<double> lr;    ///< default: 0.05 for SGD, 3e-3 for Adam
  std::string optimizer;       ///< sgd | adam; default: sgd for mlp/cnn, adam for rnn
  double momentum = 0.9;       ///< SGD momentum
  double clip_norm = 0;        ///< > 0: clip the global gradient norm to this
  double clip_value = 0;       ///< > 0: clip every gradient element to [-v, v]
  std::uint64_t seed = 0;
  std::int64_t every = 1;      ///< record every k-th step
  /// > 0: every k-th recorded step, the sharpness λ_max of the loss on a fixed batch of `batch`
  /// examples (drawn once, without touching the training's random sequence), after the step's
  /// update; the report draws it against SGD's stability bound (2 + 2·momentum)/lr.
  std::int64_t sharpness_every = 0;
  bool activations = true;     ///< graph-walk activation gradients (feed-forward nets)
  bool stop_on_nonfinite = false;
  std::int64_t inputs = 32;    ///< teacher/mixture input features
  std::int64_t classes = 10;
  double noise = 0.1;
  /// Polled every step: returning true stops training cleanly (marked interrupted).
  std::function<bool()> should_stop;
  /// Called after every step with (done, total).
  std::function<void(std::int64_t, std::int64_t)> progress;
  /// Data-parallel training: every rank draws the step's `batch` examples as one process would
  /// and trains on its own shard of batch / world size; the gradients are averaged before
  /// clipping and the optimizer step. A lost rank stops the run (RunRecord::stop_reason).
  DataParallel* data_parallel = nullptr;
};

class Task;
struct ParameterGroup;

/// The optimizer the options name for a spec, and its learning rate (the family's defaults where
/// the options give none).
struct OptimizerChoice {
  std::string name;  ///< sgd | adam
  double lr = 0;
};
OptimizerChoice choose_optimizer(const ResolvedSpec& spec, const TrainOptions& options);
OptimizerKind optimizer_kind(const OptimizerChoice& choice);
/// The optimizer over `groups` (parameter_groups(): one per learning rate of the spec's parametrisation).
std::unique_ptr<torch::optim::Optimizer> make_optimizer(const OptimizerChoice& choice, const std::vector<ParameterGroup>& groups,
                                                        double momentum);
/// The spec's task (the options' or the family's default), in the spec's dtype.
std::unique_ptr<Task> make_task_for(const ResolvedSpec& spec, const TrainOptions& options);

/// Checks the options (throws gradflow::UsageError naming the bad one and its valid range).
void validate(const TrainOptions& options);
/// Checks that `batch` splits into `ranks` equal shards.
void validate_shards(std::int64_t batch, int ranks);

/// Builds the network and task, trains, and returns the record with summary and findings.
/// Identical options give identical records.
RunRecord train(const ResolvedSpec& spec, const TrainOptions& options);

}  // namespace gradflow::models
