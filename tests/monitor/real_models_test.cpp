// Real C++ training programs' patterns, attached with the C++ API as a new user would (three
// lines): every layer output the graph walk records equals the gradient reaching that module's
// output (taken from the program's own forward, as a forward hook would), and a healthy run has
// no warning or error.
//
// - RecurrentLM: pytorch-cpp's language_model tutorial (Embedding, a batch-first multi-layer
//   torch::nn::LSTM, reshape, Linear, log_softmax, nll_loss, Adam, clip_grad_norm_(0.5)), and the
//   same model reading its sequence both ways: a two-layer bidirectional torch::nn::LSTM or GRU
//   (batch-first or time-major), its Linear on both directions' features.
// - TransformerLM: torch::nn::TransformerEncoder (post-LN layers, attention with its own in_proj
//   and an out_proj), an embedding scaled by sqrt(d_model), a Linear decoder, SGD with clipping.
// - ResNet: pytorch-cpp's ResNet tutorial (conv3x3, BatchNorm2d, ReLU, residual blocks with a
//   downsampling conv + batch norm, average pooling, Linear), Adam.
#include <cmath>
#include <functional>
#include <map>

#include <torch/torch.h>

#include "gradflow/save_report.h"
#include "torch_test_util.h"

namespace gradflow {
namespace {

using test::expect_stats_equal;

// What the program's forward produced, by module name: the outputs forward hooks would see.
using Outputs = std::map<std::string, torch::Tensor>;

// Markov tokens: the next token follows the previous one with probability 0.9.
torch::Tensor markov_tokens(std::int64_t batch, std::int64_t length, std::int64_t vocab) {
  auto t = torch::randint(vocab, {batch, length}, torch::kLong);
  const auto follow = torch::rand({batch, length}) < 0.9;
  for (std::int64_t i = 1; i < length; ++i) {
    const auto next = (t.select(1, i - 1) + 1) % vocab;
    t.select(1, i).copy_(torch::where(follow.select(1, i), next, t.select(1, i)));
  }
  return t;
}

// An Embedding, a fused recurrent module (torch::nn::LSTM or GRU, registered as "lstm") and a
// Linear on its output features at every time step.
template <class Recurrent>
struct RecurrentLMImpl : torch::nn::Module {
  RecurrentLMImpl(std::int64_t vocab, std::int64_t embed_size, Recurrent recurrent)
      : embed(register_module("embed", torch::nn::Embedding(vocab, embed_size))),
        lstm(register_module("lstm", std::move(recurrent))),
        linear(register_module("linear", torch::nn::Linear(features(), vocab))) {}
  // Both directions' features, side by side, for a bidirectional module.
  std::int64_t features() const { return lstm->options.hidden_size() * (lstm->options.bidirectional() ? 2 : 1); }
  torch::Tensor forward(const torch::Tensor& x, Outputs* seen = nullptr) {
    const auto e = embed->forward(x);
    const auto o = std::get<0>(lstm->forward(e));
    const auto y = linear->forward(o.reshape({-1, o.size(2)}));
    if (seen) *seen = {{"embed", e}, {"lstm", o}, {"linear", y}};
    return torch::log_softmax(y, 1);
  }
  torch::nn::Embedding embed;
  Recurrent lstm;
  torch::nn::Linear linear;
};

struct TransformerLMImpl : torch::nn::Module {
  TransformerLMImpl(std::int64_t vocab, std::int64_t d, std::int64_t layers)
      : d_model(d),
        embedding(register_module("embedding", torch::nn::Embedding(vocab, d))),
        encoder(register_module("encoder", torch::nn::TransformerEncoder(torch::nn::TransformerEncoderOptions(
                                               torch::nn::TransformerEncoderLayerOptions(d, 2).dim_feedforward(2 * d).dropout(0.0), layers)))),
        decoder(register_module("decoder", torch::nn::Linear(d, vocab))) {}
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& mask, Outputs* seen = nullptr) {
    const auto e = embedding->forward(x);
    auto h = e * std::sqrt(static_cast<double>(d_model));
    if (seen) (*seen)["embedding"] = e;
    // The encoder's layers, as TransformerEncoderLayer::forward runs them (dropout 0).
    for (std::size_t i = 0; i < encoder->layers->size(); ++i) {
      auto& layer = *encoder->layers[i]->as<torch::nn::TransformerEncoderLayer>();
      const std::string name = "encoder.layers." + std::to_string(i) + ".";
      const auto a = std::get<0>(layer.self_attn->forward(h, h, h, {}, false, mask));
      const auto n1 = layer.norm1->forward(h + a);
      const auto l1 = layer.linear1->forward(n1);
      const auto l2 = layer.linear2->forward(torch::relu(l1));
      h = layer.norm2->forward(n1 + l2);
      if (seen)
        for (const auto& [k, t] : Outputs{{"self_attn", a}, {"self_attn.out_proj", a}, {"norm1", n1}, {"linear1", l1},
                                          {"linear2", l2}, {"norm2", h}})
          (*seen)[name + k] = t;
    }
    const auto y = decoder->forward(h);
    if (seen) (*seen)["decoder"] = y;
    return y;
  }
  std::int64_t d_model;
  torch::nn::Embedding embedding;
  torch::nn::TransformerEncoder encoder;
  torch::nn::Linear decoder;
};
TORCH_MODULE(TransformerLM);

struct ResidualBlockImpl : torch::nn::Module {
  ResidualBlockImpl(std::int64_t in, std::int64_t out, std::int64_t stride)
      : conv1(register_module("conv1", torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, 3).stride(stride).padding(1).bias(false)))),
        bn1(register_module("bn1", torch::nn::BatchNorm2d(out))),
        conv2(register_module("conv2", torch::nn::Conv2d(torch::nn::Conv2dOptions(out, out, 3).padding(1).bias(false)))),
        bn2(register_module("bn2", torch::nn::BatchNorm2d(out))) {
    if (stride != 1 || in != out) {
      down = register_module("downsample", torch::nn::Sequential(
                                               torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, 3).stride(stride).padding(1).bias(false)),
                                               torch::nn::BatchNorm2d(out)));
    }
  }
  torch::Tensor forward(const torch::Tensor& x, const std::string& name, Outputs* seen) {
    const auto c1 = conv1->forward(x);
    const auto b1 = bn1->forward(c1);
    const auto c2 = conv2->forward(torch::relu(b1));
    const auto b2 = bn2->forward(c2);
    torch::Tensor residual = x;
    if (down) {
      const auto dc = down[0]->as<torch::nn::Conv2d>()->forward(x);
      residual = down[1]->as<torch::nn::BatchNorm2d>()->forward(dc);
      if (seen) (*seen)[name + "downsample.0"] = dc, (*seen)[name + "downsample.1"] = residual;
    }
    if (seen)
      for (const auto& [k, t] : Outputs{{"conv1", c1}, {"bn1", b1}, {"conv2", c2}, {"bn2", b2}}) (*seen)[name + k] = t;
    return torch::relu(b2 + residual);
  }
  torch::nn::Conv2d conv1;
  torch::nn::BatchNorm2d bn1;
  torch::nn::Conv2d conv2;
  torch::nn::BatchNorm2d bn2;
  torch::nn::Sequential down{nullptr};
};
TORCH_MODULE(ResidualBlock);

struct ResNetImpl : torch::nn::Module {
  ResNetImpl()
      : conv(register_module("conv", torch::nn::Conv2d(torch::nn::Conv2dOptions(3, 8, 3).padding(1).bias(false)))),
        bn(register_module("bn", torch::nn::BatchNorm2d(8))),
        layer1(register_module("layer1", ResidualBlock(8, 8, 1))),
        layer2(register_module("layer2", ResidualBlock(8, 16, 2))),
        fc(register_module("fc", torch::nn::Linear(16, 4))) {}
  torch::Tensor forward(const torch::Tensor& x, Outputs* seen = nullptr) {
    const auto c = conv->forward(x);
    const auto b = bn->forward(c);
    auto h = layer1->forward(torch::relu(b), "layer1.", seen);
    h = layer2->forward(h, "layer2.", seen);
    const auto y = fc->forward(torch::adaptive_avg_pool2d(h, {1, 1}).flatten(1));
    if (seen) (*seen)["conv"] = c, (*seen)["bn"] = b, (*seen)["fc"] = y;
    return y;
  }
  torch::nn::Conv2d conv;
  torch::nn::BatchNorm2d bn;
  ResidualBlock layer1, layer2;
  torch::nn::Linear fc;
};
TORCH_MODULE(ResNet);

// Tensor hooks on the program's module outputs: the gradient each receives in the backward the
// Monitor records.
class OutputGrads {
 public:
  explicit OutputGrads(const Outputs& seen) {
    for (const auto& [name, t] : seen) {
      auto slot = std::make_shared<torch::Tensor>();
      grads_[name] = slot;
      t.register_hook([slot](const torch::Tensor& g) { *slot = slot->defined() ? *slot + g : g.clone(); });
    }
  }
  // Every layer-output series of the step just recorded equals the gradient its module's output
  // received; `renamed`: a series named otherwise than the module; `others`: series checked apart.
  void expect_recorded(Monitor& monitor, const std::map<std::string, std::string>& renamed = {},
                       std::size_t others = 0) const {
    const Trace& t = monitor.trace();
    EXPECT_EQ(t.series_of_kind(SeriesKind::activation).size(), grads_.size() + others);
    for (const auto& [module, g] : grads_) {
      const auto it = renamed.find(module);
      const std::string name = it == renamed.end() ? module : it->second;
      const Record* r = t.steps().back().find(t.find(name));
      ASSERT_NE(r, nullptr) << name;
      ASSERT_TRUE(g->defined()) << name;
      expect_stats_equal(r->grad, *g, 1e-9, name);
    }
  }

 private:
  std::map<std::string, std::shared_ptr<torch::Tensor>> grads_;
};

// No warning or error, with nothing declared: what the module tree and the run show is read.
void expect_no_warning(Monitor& monitor, const std::vector<double>& losses) {
  const RunRecord run = make_run_record(monitor);
  for (const auto& f : run.findings)
    EXPECT_EQ(f.severity, Severity::info) << to_string(f.kind) << " @ " << f.where << ": " << f.message << " (loss "
                                          << losses.front() << " -> " << losses.back() << ")";
}

// One training step's loss, and the module outputs its forward produced.
struct Forward {
  torch::Tensor loss;
  Outputs seen;
};

// Trains with the Monitor watching every step (clipping by `clip` when > 0). Every
// `check_every`-th step, tensor hooks on the module outputs take their gradient in the step's
// backward, and `check` compares the recording with them (by default: every series as it is).
using Check = std::function<void(Monitor&, const Forward&, const OutputGrads&)>;
std::vector<double> train(Monitor& monitor, torch::nn::Module& model, torch::optim::Optimizer& optimizer, int steps,
                          int check_every, double clip, const std::function<Forward()>& forward, Check check = nullptr) {
  if (!check) check = [](Monitor& m, const Forward&, const OutputGrads& hooked) { hooked.expect_recorded(m); };
  std::vector<double> losses;
  for (int step = 0; step < steps; ++step) {
    const Forward f = forward();
    optimizer.zero_grad();
    monitor.watch(f.loss);
    if (step % check_every == 0) {
      const OutputGrads hooked(f.seen);
      f.loss.backward();
      check(monitor, f, hooked);
    } else {
      f.loss.backward();
    }
    if (clip > 0) torch::nn::utils::clip_grad_norm_(model.parameters(), clip);
    optimizer.step();
    losses.push_back(f.loss.item<double>());
  }
  return losses;
}

class RealCppModels : public test::TorchTest {};

// A recurrent layer's series holds `grad`, the gradient its output sequence received, in all and
// time step by time step (`time_dim`: the time dimension of `grad`).
void expect_layer(Monitor& monitor, const std::string& name, const torch::Tensor& grad, int time_dim) {
  const Trace& t = monitor.trace();
  const Record* r = t.steps().back().find(t.find(name));
  ASSERT_NE(r, nullptr) << name;
  expect_stats_equal(r->grad, grad, 1e-9, name);
  ASSERT_EQ(r->profile_axis, ProfileAxis::time);
  ASSERT_EQ(r->profile.size(), static_cast<std::size_t>(grad.size(time_dim)));
  for (std::size_t s = 0; s < r->profile.size(); ++s)
    EXPECT_NEAR(r->profile[s], grad.select(time_dim, static_cast<std::int64_t>(s)).norm().item<double>(), 1e-9 * r->grad.norm())
        << name << " t=" << s;
}

// Two one-layer modules holding the layers of `model`'s two-layer one (the same directions): its
// weight_ih_l1_reverse is the second's weight_ih_l0_reverse.
template <class Recurrent>
std::pair<Recurrent, Recurrent> split_layers(const Recurrent& model, std::int64_t input_size) {
  auto one_layer = model->options;
  one_layer.num_layers(1);
  Recurrent l0(one_layer);
  one_layer.input_size(input_size);
  Recurrent l1(one_layer);
  l0->to(torch::kDouble), l1->to(torch::kDouble);
  torch::NoGradGuard no_grad;
  for (const auto& p : model->named_parameters()) {
    std::string n = p.key();
    const std::size_t layer = n.find("_l") + 2;
    auto& replica = n[layer] == '0' ? l0 : l1;
    n[layer] = '0';
    replica->named_parameters()[n].copy_(p.value());
  }
  return {l0, l1};
}

// A two-layer module's layers, recomputed by two chained one-layer modules with its weights: the
// gradient reaching each layer's output (of a bidirectional layer both directions' features, what
// the next layer or the caller receives), in all and time step by time step.
template <class Recurrent>
void expect_recurrent_layers(Monitor& monitor, RecurrentLMImpl<Recurrent>& model, const Forward& f,
                             const torch::Tensor& target) {
  auto [l0, l1] = split_layers(model.lstm, model.features());
  const auto seq0 = std::get<0>(l0->forward(f.seen.at("embed").detach()));
  const auto seq1 = std::get<0>(l1->forward(seq0));
  const auto replica_loss = torch::nll_loss(torch::log_softmax(model.linear->forward(seq1.reshape({-1, model.features()})), 1), target);
  const std::vector<torch::Tensor> g = torch::autograd::grad({replica_loss}, {seq0, seq1});
  for (int k = 0; k < 2; ++k)
    expect_layer(monitor, "lstm.l" + std::to_string(k), g[k], model.lstm->options.batch_first() ? 1 : 0);
  EXPECT_EQ(monitor.trace().find("lstm"), -1);  // no series of the module's per-step ops
}

// Trains the language model with `recurrent` in it (two layers), checking its layers every 13
// steps.
template <class Recurrent>
void train_language_model(Recurrent recurrent, Cell cell) {
  const bool batch_first = recurrent->options.batch_first();
  auto model = std::make_shared<RecurrentLMImpl<Recurrent>>(30, 16, std::move(recurrent));
  model->to(torch::kDouble);
  gradflow::Monitor monitor(*model);
  torch::optim::Adam optimizer(model->parameters(), torch::optim::AdamOptions(0.01));
  torch::Tensor target;
  const auto losses = train(
      monitor, *model, optimizer, 40, 13, 0.5,
      [&] {
        auto tokens = markov_tokens(8, 13, 30);
        if (!batch_first) tokens = tokens.t();
        const int time = batch_first ? 1 : 0;
        target = tokens.narrow(time, 1, 12).reshape(-1);
        Forward f;
        f.loss = torch::nll_loss(model->forward(tokens.narrow(time, 0, 12), &f.seen), target);
        return f;
      },
      [&](Monitor& m, const Forward& f, const OutputGrads& hooked) {
        hooked.expect_recorded(m, {{"lstm", "lstm.l1"}}, /*others=*/1);  // lstm.l0, against a replica
        expect_recurrent_layers(m, *model, f, target);
      });
  EXPECT_LT(losses.back(), 0.7 * losses.front());
  EXPECT_EQ(monitor.model_traits().cell, cell);
  expect_no_warning(monitor, losses);
}

TEST_F(RealCppModels, LanguageModelWithAFusedLSTM) {
  torch::manual_seed(1);
  train_language_model(torch::nn::LSTM(torch::nn::LSTMOptions(16, 24).num_layers(2).batch_first(true)), Cell::lstm);
}

TEST_F(RealCppModels, BidirectionalLSTMLanguageModel) {
  torch::manual_seed(4);
  train_language_model(torch::nn::LSTM(torch::nn::LSTMOptions(16, 24).num_layers(2).bidirectional(true).batch_first(true)),
                       Cell::lstm);
}

TEST_F(RealCppModels, BidirectionalTimeMajorLSTMLanguageModel) {
  torch::manual_seed(5);
  train_language_model(torch::nn::LSTM(torch::nn::LSTMOptions(16, 24).num_layers(2).bidirectional(true)), Cell::lstm);
}

TEST_F(RealCppModels, BidirectionalGRULanguageModel) {
  torch::manual_seed(6);
  train_language_model(torch::nn::GRU(torch::nn::GRUOptions(16, 24).num_layers(2).bidirectional(true).batch_first(true)),
                       Cell::gru);
}

// A one-layer bidirectional module is one series named after it, as a one-layer unidirectional one:
// the gradient of its output, both directions' features, time step by time step.
TEST_F(RealCppModels, OneLayerBidirectionalRNNIsOneSeries) {
  torch::nn::RNN rnn(torch::nn::RNNOptions(4, 6).bidirectional(true));
  torch::nn::Sequential model;
  model->push_back("rnn", rnn);
  model->to(torch::kDouble);
  gradflow::Monitor monitor(*model);
  const auto out = std::get<0>(rnn->forward(torch::randn({5, 3, 4}, torch::kDouble)));
  const auto loss = (out * torch::randn(out.sizes(), torch::kDouble)).sum();
  torch::Tensor hooked;
  out.register_hook([&hooked](const torch::Tensor& g) { hooked = g.clone(); });
  monitor.watch(loss);
  loss.backward();
  EXPECT_EQ(monitor.trace().series_of_kind(SeriesKind::activation).size(), 1u);
  expect_layer(monitor, "rnn", hooked, /*time_dim=*/0);
}

// Packed sequences: LibTorch concatenates a layer's steps instead of stacking them, so its layers
// do not show. The module is then one series holding the gradient of its output's data, never
// one series fed by each step's weight op.
TEST_F(RealCppModels, PackedSequencesRecordTheModuleOutput) {
  for (const bool bidirectional : {false, true}) {
    SCOPED_TRACE(bidirectional ? "bidirectional" : "one direction");
    torch::manual_seed(7);
    torch::nn::Embedding embed(30, 16);
    torch::nn::LSTM lstm(torch::nn::LSTMOptions(16, 24).num_layers(2).bidirectional(bidirectional).batch_first(true));
    torch::nn::Sequential model;
    model->push_back("embed", embed);
    model->push_back("lstm", lstm);
    model->to(torch::kDouble);
    gradflow::Monitor monitor(*model);
    const auto lengths = torch::tensor({12, 7, 12, 3, 9, 1, 5, 10}, torch::kLong);
    const auto packed = torch::nn::utils::rnn::pack_padded_sequence(embed->forward(markov_tokens(8, 12, 30)), lengths,
                                                                     /*batch_first=*/true, /*enforce_sorted=*/false);
    const auto data = std::get<0>(lstm->forward_with_packed_input(packed)).data();
    const auto loss = (data * torch::randn(data.sizes(), torch::kDouble)).sum();
    torch::Tensor hooked;
    data.register_hook([&hooked](const torch::Tensor& g) { hooked = g.clone(); });
    monitor.watch(loss);
    loss.backward();
    const Trace& t = monitor.trace();
    EXPECT_EQ(t.series_of_kind(SeriesKind::activation).size(), 2u);  // embed and lstm
    const Record* r = t.steps().back().find(t.find("lstm"));
    ASSERT_NE(r, nullptr);
    expect_stats_equal(r->grad, hooked, 1e-9, "lstm");
    EXPECT_TRUE(r->profile.empty());  // one call, no time axis in packed data
  }
}

TEST_F(RealCppModels, TransformerEncoderLanguageModel) {
  torch::manual_seed(2);
  TransformerLM model(30, 16, 2);
  model->to(torch::kDouble);
  gradflow::Monitor monitor(*model);
  torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(0.5));
  const auto mask = torch::triu(torch::full({12, 12}, -INFINITY, torch::kDouble), 1);
  const auto losses = train(monitor, *model, optimizer, 40, 13, 0.5, [&] {
    const auto tokens = markov_tokens(8, 13, 30).t();  // [time, batch], as the encoder takes it
    Forward f;
    const auto logits = model->forward(tokens.narrow(0, 0, 12), mask, &f.seen);
    f.loss = torch::cross_entropy_loss(logits.reshape({-1, 30}), tokens.narrow(0, 1, 12).reshape(-1));
    return f;
  });
  EXPECT_LT(losses.back(), 0.7 * losses.front());
  EXPECT_EQ(monitor.model_traits().norm, Norm::layer);
  expect_no_warning(monitor, losses);
}

TEST_F(RealCppModels, ResidualNetwork) {
  torch::manual_seed(3);
  ResNet model;
  model->to(torch::kDouble);
  gradflow::Monitor monitor(*model);
  torch::optim::Adam optimizer(model->parameters(), torch::optim::AdamOptions(0.01));
  const auto prototypes = torch::randn({4, 3, 8, 8}, torch::kDouble);
  const auto losses = train(monitor, *model, optimizer, 30, 10, 0.0, [&] {
    const auto labels = torch::randint(4, {16}, torch::kLong);
    const auto x = prototypes.index_select(0, labels) + 0.5 * torch::randn({16, 3, 8, 8}, torch::kDouble);
    Forward f;
    f.loss = torch::cross_entropy_loss(model->forward(x, &f.seen), labels);
    return f;
  });
  EXPECT_LT(losses.back(), 0.5 * losses.front());
  EXPECT_EQ(monitor.model_traits().norm, Norm::batch);
  EXPECT_TRUE(make_run_record(monitor).traits.residual);  // read from the model's graph
  expect_no_warning(monitor, losses);
}

// An MLP classifier as a C++ user writes one (fc1 -> act -> fc2 -> act -> fc3), with a hidden
// activation tapped as docs/cpp-guide.md shows, or nothing declared at all.
struct ClassifierImpl : torch::nn::Module {
  ClassifierImpl(bool sigmoid, Monitor** tap_into)
      : fc1(register_module("fc1", torch::nn::Linear(16, 32))),
        fc2(register_module("fc2", torch::nn::Linear(32, 32))),
        fc3(register_module("fc3", torch::nn::Linear(32, 4))),
        sigmoid_(sigmoid),
        monitor_(tap_into) {}
  torch::Tensor forward(const torch::Tensor& x) {
    auto act = [&](const torch::Tensor& z) { return sigmoid_ ? torch::sigmoid(z) : torch::relu(z); };
    const auto h1 = act(fc1->forward(x));
    const auto h2 = act(fc2->forward(h1));
    if (sigmoid_ && *monitor_) (*monitor_)->tap(h2, "h.2", TapOptions{Activation::sigmoid, {}, {}, {}});
    return fc3->forward(h2);
  }
  torch::nn::Linear fc1, fc2, fc3;
  bool sigmoid_;
  Monitor** monitor_;
};
TORCH_MODULE(Classifier);

// Trains a Classifier 30 steps with SGD; `prepare` breaks it first (or not).
RunRecord train_classifier(bool sigmoid, const std::function<void(ClassifierImpl&)>& prepare, std::vector<double>* truth_fc2 = nullptr) {
  torch::manual_seed(5);
  Monitor* tap_into = nullptr;
  Classifier model(sigmoid, &tap_into);
  prepare(*model);
  Monitor monitor(*model);
  tap_into = &monitor;
  torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(0.05).momentum(0.9));
  const auto prototypes = torch::randn({4, 16});
  std::vector<double> losses;
  for (int step = 0; step < 30; ++step) {
    const auto labels = torch::randint(4, {32}, torch::kLong);
    const auto x = prototypes.index_select(0, labels) + 0.5 * torch::randn({32, 16});
    optimizer.zero_grad();
    const auto loss = torch::cross_entropy_loss(model->forward(x), labels);
    monitor.watch(loss);
    loss.backward();
    if (truth_fc2) truth_fc2->push_back(model->fc2->weight.grad().abs().max().item<double>() + model->fc2->bias.grad().abs().max().item<double>());
    optimizer.step();
    losses.push_back(loss.item<double>());
  }
  return make_run_record(monitor);
}

const Finding* find_kind(const RunRecord& r, FindingKind kind) {
  for (const auto& f : r.findings)
    if (f.kind == kind) return &f;
  return nullptr;
}

std::string described(const RunRecord& r) {
  std::string out;
  for (const auto& f : r.findings) out += std::string(to_string(f.kind)) + " @ " + f.where + ": " + f.message + "\n";
  return out;
}

// The activation a tap declares drives the saturation rule with no trait set: sigmoid units whose
// inputs are scaled up saturate, their twin does not.
TEST_F(RealCppModels, ATapsDeclaredSigmoidIsJudgedForSaturationWithoutTraits) {
  const RunRecord saturated = train_classifier(true, [](ClassifierImpl& m) {
    torch::NoGradGuard no_grad;
    m.fc2->weight.mul_(40.0);
  });
  EXPECT_EQ(saturated.traits.activation, Activation::none) << "nothing declared but the tap's activation";
  const Finding* s = find_kind(saturated, FindingKind::saturation);
  ASSERT_NE(s, nullptr) << described(saturated);
  EXPECT_EQ(s->where, "h.2");
  EXPECT_EQ(find_kind(saturated, FindingKind::dead_units), nullptr) << described(saturated);
  const RunRecord healthy = train_classifier(true, [](ClassifierImpl&) {});
  EXPECT_EQ(find_kind(healthy, FindingKind::saturation), nullptr) << described(healthy);
}

// A bias that keeps every ReLU of fc2 inactive: fc1 and fc2 receive exactly 0 (the program's own
// .grad() says so), named without any activation declared; the twin has no dead layer.
TEST_F(RealCppModels, ADeadLayerIsNamedWithNothingDeclared) {
  std::vector<double> fc2_largest;
  const RunRecord dead = train_classifier(false, [](ClassifierImpl& m) {
    torch::NoGradGuard no_grad;
    m.fc2->bias.fill_(-20.0);
  }, &fc2_largest);
  for (double g : fc2_largest) EXPECT_EQ(g, 0.0);
  const Finding* d = find_kind(dead, FindingKind::dead_layer);
  ASSERT_NE(d, nullptr) << described(dead);
  EXPECT_EQ(d->where, "fc1 .. fc2 (2 layers)");
  EXPECT_NE(d->remedy.find("fc2.bias has RMS 20"), std::string::npos) << d->remedy;
  const RunRecord healthy = train_classifier(false, [](ClassifierImpl&) {});
  EXPECT_EQ(find_kind(healthy, FindingKind::dead_layer), nullptr) << described(healthy);
}

}  // namespace
}  // namespace gradflow
