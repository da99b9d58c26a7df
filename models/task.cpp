#include "models/task.h"

#include <cmath>

#include <torch/torch.h>

#include "gradflow/error.h"

namespace gradflow::models {

namespace {

torch::Tensor class_accuracy(const torch::Tensor& out, const torch::Tensor& y) {
  return out.argmax(-1).eq(y).to(torch::kDouble).mean();
}

// Cross-entropy over K classes; the best constant answer scores ln K.
class ClassificationTask : public Task {
 public:
  explicit ClassificationTask(const TaskOptions& o) : o_(o) {}
  std::int64_t output_dim() const override { return o_.classes; }
  torch::Tensor loss(const torch::Tensor& out, const Batch& b) const override {
    return torch::nn::functional::cross_entropy(out, b.y);
  }
  torch::Tensor accuracy(const torch::Tensor& out, const Batch& b) const override { return class_accuracy(out, b.y); }
  double baseline_loss() const override { return std::log(static_cast<double>(o_.classes)); }

 protected:
  TaskOptions o_;
};

// Labels from a fixed random two-layer tanh network: a smooth boundary a deep net can learn.
class TeacherTask : public ClassificationTask {
 public:
  explicit TeacherTask(const TaskOptions& o) : ClassificationTask(o) {
    w1_ = torch::randn({o.inputs, 64}, torch::kDouble) / std::sqrt(static_cast<double>(o.inputs));
    w2_ = torch::randn({64, o.classes}, torch::kDouble) / 8.0;
  }
  std::string name() const override { return "teacher"; }
  std::int64_t input_dim() const override { return o_.inputs; }
  Batch sample(std::int64_t b) override {
    auto x = torch::randn({b, o_.inputs}, torch::kDouble);
    auto y = torch::tanh(x.mm(w1_) * 2).mm(w2_).argmax(1);
    if (o_.noise > 0) {
      auto flip = torch::rand({b}, torch::kDouble) < o_.noise;
      y = torch::where(flip, torch::randint(0, o_.classes, {b}, torch::kLong), y);
    }
    return {x.to(o_.dtype), y};
  }
  std::string describe() const override {
    return "teacher: " + std::to_string(o_.inputs) + " Gaussian inputs, " + std::to_string(o_.classes) +
           " classes from a random 2-layer tanh teacher, label noise " + std::to_string(o_.noise);
  }

 private:
  torch::Tensor w1_, w2_;
};

class MixtureTask : public ClassificationTask {
 public:
  explicit MixtureTask(const TaskOptions& o) : ClassificationTask(o) {
    centres_ = torch::randn({o.classes, o.inputs}, torch::kDouble);
  }
  std::string name() const override { return "mixture"; }
  std::int64_t input_dim() const override { return o_.inputs; }
  Batch sample(std::int64_t b) override {
    auto y = torch::randint(0, o_.classes, {b}, torch::kLong);
    auto x = centres_.index_select(0, y) + torch::randn({b, o_.inputs}, torch::kDouble) * (o_.noise * 10);
    return {x.to(o_.dtype), y};
  }
  std::string describe() const override {
    return "mixture: " + std::to_string(o_.classes) + " Gaussian clusters in " + std::to_string(o_.inputs) + " dimensions";
  }

 private:
  torch::Tensor centres_;
};

// 3x8x8 images: a class template plus noise.
class ImagesTask : public ClassificationTask {
 public:
  explicit ImagesTask(const TaskOptions& o) : ClassificationTask(o) { templates_ = torch::randn({o.classes, 3, 8, 8}, torch::kDouble); }
  std::string name() const override { return "images"; }
  std::int64_t input_dim() const override { return 3; }
  Batch sample(std::int64_t b) override {
    auto y = torch::randint(0, o_.classes, {b}, torch::kLong);
    auto x = templates_.index_select(0, y) + torch::randn({b, 3, 8, 8}, torch::kDouble) * (o_.noise * 10);
    return {x.to(o_.dtype), y};
  }
  std::string describe() const override {
    return "images: 3x8x8 class templates plus Gaussian noise, " + std::to_string(o_.classes) + " classes";
  }

 private:
  torch::Tensor templates_;
};

// Hochreiter & Schmidhuber's adding problem: two channels (a value in [0, 1] and a marker);
// the target is the sum of the two marked values, one in each half of the sequence.
class AddingTask : public Task {
 public:
  explicit AddingTask(const TaskOptions& o) : o_(o) {}
  std::string name() const override { return "adding"; }
  std::int64_t input_dim() const override { return 2; }
  std::int64_t output_dim() const override { return 1; }
  bool sequential() const override { return true; }
  Batch sample(std::int64_t b) override {
    const auto T = o_.seq_len;
    auto values = torch::rand({b, T}, torch::kDouble);
    auto markers = torch::zeros({b, T}, torch::kDouble);
    const auto half = std::max<std::int64_t>(T / 2, 1);
    auto i1 = torch::randint(0, half, {b}, torch::kLong);
    auto i2 = T > 1 ? torch::randint(half, T, {b}, torch::kLong) : torch::zeros({b}, torch::kLong);
    auto rows = torch::arange(b, torch::kLong);
    markers.index_put_({rows, i1}, 1.0);
    markers.index_put_({rows, i2}, 1.0);
    auto y = (values * markers).sum(1, true);
    return {torch::stack({values, markers}, 2).to(o_.dtype), y.to(o_.dtype)};
  }
  torch::Tensor loss(const torch::Tensor& out, const Batch& b) const override {
    return torch::mse_loss(out.select(1, out.size(1) - 1), b.y);
  }
  // Always answering 1 (the mean of the sum): the variance of U(0,1) + U(0,1) = 1/6.
  double baseline_loss() const override { return 1.0 / 6.0; }
  std::string describe() const override { return "adding problem, T = " + std::to_string(o_.seq_len); }

 private:
  TaskOptions o_;
};

// The copy-memory task: remember 10 symbols over a delay of T steps, then reproduce them.
class CopyTask : public Task {
 public:
  static constexpr std::int64_t kSymbols = 8, kLength = 10;
  explicit CopyTask(const TaskOptions& o) : o_(o) {}
  std::string name() const override { return "copy"; }
  std::int64_t input_dim() const override { return kSymbols + 2; }   // symbols, blank, delimiter
  std::int64_t output_dim() const override { return kSymbols + 1; }  // symbols, blank
  bool sequential() const override { return true; }
  Batch sample(std::int64_t b) override {
    const auto T = o_.seq_len, total = T + 2 * kLength;
    auto symbols = torch::randint(0, kSymbols, {b, kLength}, torch::kLong);
    auto in = torch::full({b, total}, kSymbols, torch::kLong);      // blank
    auto target = torch::full({b, total}, kSymbols, torch::kLong);  // blank
    in.narrow(1, 0, kLength).copy_(symbols);
    in.select(1, kLength + T - 1).fill_(kSymbols + 1);               // delimiter
    target.narrow(1, T + kLength, kLength).copy_(symbols);
    auto x = torch::one_hot(in, kSymbols + 2).to(o_.dtype);
    return {x, target};
  }
  torch::Tensor loss(const torch::Tensor& out, const Batch& b) const override {
    return torch::nn::functional::cross_entropy(out.reshape({-1, out.size(-1)}), b.y.reshape({-1}));
  }
  torch::Tensor accuracy(const torch::Tensor& out, const Batch& b) const override {
    auto tail_out = out.narrow(1, out.size(1) - kLength, kLength);
    auto tail_y = b.y.narrow(1, b.y.size(1) - kLength, kLength);
    return class_accuracy(tail_out, tail_y);
  }
  // Blanks everywhere, then a uniform guess over the symbols for the last ten steps.
  double baseline_loss() const override {
    return kLength * std::log(static_cast<double>(kSymbols)) / static_cast<double>(o_.seq_len + 2 * kLength);
  }
  std::string describe() const override { return "copy memory, delay T = " + std::to_string(o_.seq_len); }

 private:
  TaskOptions o_;
};

// Token counting: a sequence of T tokens from 8 symbols; the answer at every position is how many
// other positions hold its token. Each position must look at all the others: self-attention's
// task, not a recurrence's.
class CountTask : public Task {
 public:
  static constexpr std::int64_t kSymbols = 8;
  explicit CountTask(const TaskOptions& o) : o_(o) {}
  std::string name() const override { return "count"; }
  std::int64_t input_dim() const override { return kSymbols; }
  std::int64_t output_dim() const override { return o_.seq_len; }  // counts 0 .. T-1
  bool sequential() const override { return true; }
  Batch sample(std::int64_t b) override {
    auto tokens = torch::randint(0, kSymbols, {b, o_.seq_len}, torch::kLong);
    auto counts = tokens.unsqueeze(2).eq(tokens.unsqueeze(1)).sum(2) - 1;
    return {torch::one_hot(tokens, kSymbols).to(o_.dtype), counts};
  }
  torch::Tensor loss(const torch::Tensor& out, const Batch& b) const override {
    return torch::nn::functional::cross_entropy(out.reshape({-1, out.size(-1)}), b.y.reshape({-1}));
  }
  torch::Tensor accuracy(const torch::Tensor& out, const Batch& b) const override { return class_accuracy(out, b.y); }
  // The best constant answer is the count's own distribution, Binomial(T-1, 1/8): its entropy.
  double baseline_loss() const override {
    const auto n = static_cast<double>(o_.seq_len - 1);
    const double p = 1.0 / kSymbols;
    double h = 0;
    for (std::int64_t k = 0; k < o_.seq_len; ++k) {
      const double log_pk = std::lgamma(n + 1) - std::lgamma(k + 1.0) - std::lgamma(n - k + 1) + k * std::log(p) +
                            (n - k) * std::log1p(-p);
      h -= std::exp(log_pk) * log_pk;
    }
    return h;
  }
  std::string describe() const override {
    return "token counting: " + std::to_string(o_.seq_len) + " tokens of " + std::to_string(kSymbols) +
           " symbols; at every position, how often its token occurs elsewhere";
  }

 private:
  TaskOptions o_;
};

}  // namespace

const std::vector<TaskInfo>& tasks() {
  static const std::vector<TaskInfo> t = {
      {"teacher", "mlp", "classification with labels from a random teacher network"},
      {"mixture", "mlp", "Gaussian-mixture classification"},
      {"images", "cnn", "3x8x8 images: class templates plus noise"},
      {"adding", "rnn", "adding problem: sum the two marked values of a length-T sequence"},
      {"copy", "rnn", "copy memory: reproduce 10 symbols after a delay of T steps"},
      {"count", "transformer", "token counting: at every position, how often its token occurs elsewhere"},
  };
  return t;
}

bool sequence_family(const std::string& family) { return family == "rnn" || family == "transformer"; }

std::unique_ptr<Task> make_task(const TaskOptions& o, const std::string& family) {
  const TaskInfo* info = nullptr;
  for (const auto& t : tasks())
    if (t.name == o.name) info = &t;
  if (!info) {
    std::string names;
    for (const auto& t : tasks()) names += (names.empty() ? "" : ", ") + t.name;
    throw UsageError("unknown task '" + o.name + "': choose one of " + names);
  }
  if (sequence_family(info->family) != sequence_family(family))
    throw UsageError("task '" + o.name + "' is for " + info->family + " models, not " + family +
                     ": choose a task made for " + family);
  if (o.seq_len < 1 || o.seq_len > 100000)
    throw UsageError("sequence length " + std::to_string(o.seq_len) + " is out of range: use 1 to 100000");
  if (o.classes < 2 || o.classes > 100000)
    throw UsageError("classes must be between 2 and 100000 (got " + std::to_string(o.classes) + ")");
  if (o.inputs < 1 || o.inputs > 1000000)
    throw UsageError("inputs must be between 1 and 1000000 (got " + std::to_string(o.inputs) + ")");
  if (!(o.noise >= 0 && o.noise <= 1)) throw UsageError("noise must be between 0 and 1");
  if (o.name == "teacher") return std::make_unique<TeacherTask>(o);
  if (o.name == "mixture") return std::make_unique<MixtureTask>(o);
  if (o.name == "images") return std::make_unique<ImagesTask>(o);
  if (o.name == "adding") return std::make_unique<AddingTask>(o);
  if (o.name == "count") return std::make_unique<CountTask>(o);
  return std::make_unique<CopyTask>(o);
}

}  // namespace gradflow::models
