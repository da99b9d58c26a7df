#include "models/network.h"

#include <torch/torch.h>

#include "gradflow/error.h"
#include "models/parametrise.h"
#include "models/transformer.h"

namespace gradflow::models {

namespace {

Activation act_of(const ResolvedSpec& s) { return activation_from_string(s.get("act")); }

torch::Tensor apply_act(const torch::Tensor& z, Activation a) {
  switch (a) {
    case Activation::sigmoid: return torch::sigmoid(z);
    case Activation::tanh: return torch::tanh(z);
    case Activation::relu: return torch::relu(z);
    case Activation::leaky_relu: return torch::leaky_relu(z, 0.01);
    case Activation::elu: return torch::elu(z);
    case Activation::selu: return torch::selu(z);
    case Activation::gelu: return torch::gelu(z);
    case Activation::softsign: return z / (1 + z.abs());
    case Activation::identity:
    case Activation::none: return z;
  }
  return z;
}

torch::Dtype dtype_of(const ResolvedSpec& s) {
  return s.get("dtype") == "float64" ? torch::kDouble : torch::kFloat;
}

// dL/dh taps with the activation's forward statistics.
void tap_hidden(Monitor* mon, const torch::Tensor& h, int index, Activation act, const torch::Tensor& z,
                const torch::Tensor& a) {
  if (!mon || !mon->recording()) return;
  TapOptions o;
  o.activation = act;
  o.preactivation = z;
  o.group = "h";
  o.activation_output = a;
  mon->tap(h, "h." + std::to_string(index), o);
}

// One hidden block of a feed-forward net: z = layer(h), normalised, activated, with an identity
// skip when asked; its output is tapped as h.index. `layer_output` receives layer(h).
torch::Tensor hidden_block(torch::nn::AnyModule& layer, torch::nn::AnyModule* norm, Activation act, bool skip,
                           const torch::Tensor& h, int index, Monitor* mon, torch::Tensor& layer_output) {
  torch::Tensor z = layer.forward(h);
  layer_output = z;
  if (norm) z = norm->forward(z);
  torch::Tensor a = apply_act(z, act);
  torch::Tensor next = skip ? h + a : a;
  tap_hidden(mon, next, index, act, z, a);
  return next;
}

// Applies a chosen initialisation and zeroes the bias; LibTorch's default leaves both as built.
void init_layer(torch::Tensor& weight, torch::Tensor& bias, const InitSpec& init, Activation act) {
  if (init.kind == Init::default_init) return;
  torch::NoGradGuard g;
  init_weight(weight, init, act);
  bias.zero_();
}

class MlpNet : public Network {
 public:
  MlpNet(const ResolvedSpec& s, std::int64_t in, std::int64_t out) : act_(act_of(s)) {
    const auto depth = s.get_int("depth"), width = s.get_int("width");
    const ModelTraits traits = s.traits();
    const Norm norm = traits.norm;
    const InitSpec init = traits.init;
    residual_ = traits.residual;
    for (std::int64_t i = 0; i < depth; ++i) {
      const auto fi = i == 0 ? in : width, fo = i + 1 == depth ? out : width;
      auto fc = register_module("fc" + std::to_string(i), torch::nn::Linear(fi, fo));
      init_layer(fc->weight, fc->bias, init, act_);
      if (i + 1 == depth) parametrise_readout(fc->weight, s);
      fcs_.push_back(fc);
      layers_.emplace_back(fc);
      if (i + 1 < depth && norm == Norm::batch)
        norms_.emplace_back(torch::nn::AnyModule(register_module("bn" + std::to_string(i), torch::nn::BatchNorm1d(width))));
      else if (i + 1 < depth && norm == Norm::layer)
        norms_.emplace_back(torch::nn::AnyModule(register_module(
            "ln" + std::to_string(i), torch::nn::LayerNorm(torch::nn::LayerNormOptions({width})))));
    }
    to(dtype_of(s));
  }
  torch::Tensor forward(const torch::Tensor& x, Monitor* mon) override {
    torch::Tensor h = x, z;
    for (std::size_t i = 0; i + 1 < fcs_.size(); ++i) {
      h = hidden_block(layers_[i], norms_.empty() ? nullptr : &norms_[i], act_, residual_ && i > 0, h, static_cast<int>(i) + 1, mon, z);
      captured("fc" + std::to_string(i), z);
    }
    return captured("fc" + std::to_string(fcs_.size() - 1), fcs_.back()->forward(h));
  }
  std::vector<LayerInfo> layers() const override {
    std::vector<LayerInfo> v;
    for (std::size_t i = 0; i < fcs_.size(); ++i) v.push_back({"fc" + std::to_string(i), "linear", static_cast<int>(i) + 1});
    return v;
  }

 private:
  Activation act_;
  bool residual_ = false;
  std::vector<torch::nn::Linear> fcs_;
  std::vector<torch::nn::AnyModule> layers_, norms_;
};

class CnnNet : public Network {
 public:
  CnnNet(const ResolvedSpec& s, std::int64_t in_channels, std::int64_t out) : act_(act_of(s)) {
    const auto depth = s.get_int("depth"), c = s.get_int("channels");
    const ModelTraits traits = s.traits();
    const Norm norm = traits.norm;
    const InitSpec init = traits.init;
    residual_ = traits.residual;
    for (std::int64_t i = 0; i + 1 < depth; ++i) {
      auto conv = register_module("conv" + std::to_string(i),
                                  torch::nn::Conv2d(torch::nn::Conv2dOptions(i == 0 ? in_channels : c, c, 3).padding(1)));
      init_layer(conv->weight, conv->bias, init, act_);
      convs_.push_back(conv);
      layers_.emplace_back(conv);
      if (norm == Norm::batch)
        norms_.emplace_back(torch::nn::AnyModule(register_module("bn" + std::to_string(i), torch::nn::BatchNorm2d(c))));
      else if (norm == Norm::layer)
        norms_.emplace_back(torch::nn::AnyModule(register_module("gn" + std::to_string(i), torch::nn::GroupNorm(1, c))));
    }
    head_ = register_module("head", torch::nn::Linear(c, out));
    init_layer(head_->weight, head_->bias, init, Activation::identity);
    parametrise_readout(head_->weight, s);
    to(dtype_of(s));
  }
  torch::Tensor forward(const torch::Tensor& x, Monitor* mon) override {
    torch::Tensor h = x, z;
    for (std::size_t i = 0; i < convs_.size(); ++i) {
      h = hidden_block(layers_[i], norms_.empty() ? nullptr : &norms_[i], act_, residual_ && i > 0, h, static_cast<int>(i) + 1, mon, z);
      captured("conv" + std::to_string(i), z);
    }
    return captured("head", head_->forward(h.mean({2, 3})));
  }
  std::vector<LayerInfo> layers() const override {
    std::vector<LayerInfo> v;
    for (std::size_t i = 0; i < convs_.size(); ++i) v.push_back({"conv" + std::to_string(i), "conv", static_cast<int>(i) + 1});
    v.push_back({"head", "linear", static_cast<int>(convs_.size()) + 1});
    return v;
  }

 private:
  Activation act_;
  bool residual_ = false;
  std::vector<torch::nn::Conv2d> convs_;
  std::vector<torch::nn::AnyModule> layers_, norms_;
  torch::nn::Linear head_{nullptr};
};

// Unrolled one step at a time so that every time step's hidden state is a tensor of its own:
// a hook on nn::LSTM's output sequence would only see the gradient entering each output.
class RnnNet : public Network {
 public:
  RnnNet(const ResolvedSpec& s, std::int64_t in, std::int64_t out) : cell_(s.get("cell")) {
    hidden_ = s.get_int("hidden");
    const auto layers = s.get_int("layers");
    for (std::int64_t l = 0; l < layers; ++l) {
      const auto fi = l == 0 ? in : hidden_;
      const std::string name = "cell" + std::to_string(l);
      if (cell_ == "lstm")
        lstm_.push_back(register_module(name, torch::nn::LSTMCell(fi, hidden_)));
      else if (cell_ == "gru")
        gru_.push_back(register_module(name, torch::nn::GRUCell(fi, hidden_)));
      else
        rnn_.push_back(register_module(
            name, torch::nn::RNNCell(torch::nn::RNNCellOptions(fi, hidden_)
                                         .nonlinearity(cell_ == "rnn_relu" ? torch::nn::RNNCellOptions::nonlinearity_t(torch::kReLU)
                                                                      : torch::nn::RNNCellOptions::nonlinearity_t(torch::kTanh)))));
    }
    readout_ = register_module("readout", torch::nn::Linear(hidden_, out));
    init_recurrent(s);
    to(dtype_of(s));
  }
  bool recurrent() const override { return true; }

  std::vector<torch::Tensor> recurrent_weights() {
    std::vector<torch::Tensor> w;
    for (auto& c : lstm_) w.push_back(c->weight_hh);
    for (auto& c : gru_) w.push_back(c->weight_hh);
    for (auto& c : rnn_) w.push_back(c->weight_hh);
    return w;
  }

  torch::Tensor forward(const torch::Tensor& x, Monitor* mon) override {
    // x: [batch, T, features] -> outputs [batch, T, out]
    const auto B = x.size(0), T = x.size(1);
    const auto L = static_cast<std::size_t>(std::max({lstm_.size(), gru_.size(), rnn_.size()}));
    std::vector<torch::Tensor> h(L), c(L);
    for (std::size_t l = 0; l < L; ++l) {
      h[l] = torch::zeros({B, hidden_}, x.options());
      c[l] = torch::zeros({B, hidden_}, x.options());
    }
    std::vector<torch::Tensor> tops;
    tops.reserve(static_cast<std::size_t>(T));
    const bool tap = mon && mon->recording();
    for (std::int64_t t = 0; t < T; ++t) {
      torch::Tensor input = x.select(1, t);
      for (std::size_t l = 0; l < L; ++l) {
        if (cell_ == "lstm") {
          auto hc = lstm_[l]->forward(input, std::make_tuple(h[l], c[l]));
          h[l] = std::get<0>(hc);
          c[l] = std::get<1>(hc);
        } else if (cell_ == "gru") {
          h[l] = gru_[l]->forward(input, h[l]);
        } else {
          h[l] = rnn_[l]->forward(input, h[l]);
        }
        input = h[l];
      }
      if (tap) {
        TapOptions o;
        o.group = "time";
        if (cell_ == "rnn_tanh") o.activation = Activation::tanh;
        if (cell_ == "rnn_relu") o.activation = Activation::relu;
        mon->tap(h[L - 1], "time." + std::to_string(t + 1), o);
        if (cell_ == "lstm") {
          TapOptions oc;
          oc.group = "cell";
          mon->tap(c[L - 1], "cell." + std::to_string(t + 1), oc);
        }
      }
      tops.push_back(h[L - 1]);
    }
    return readout_->forward(torch::stack(tops, 1));
  }
  std::vector<LayerInfo> layers() const override {
    std::vector<LayerInfo> v;
    const auto L = std::max({lstm_.size(), gru_.size(), rnn_.size()});
    for (std::size_t l = 0; l < L; ++l) v.push_back({"cell" + std::to_string(l), "recurrent", static_cast<int>(l) + 1});
    v.push_back({"readout", "linear", static_cast<int>(L) + 1});
    return v;
  }

 private:
  void init_recurrent(const ResolvedSpec& s) {
    torch::NoGradGuard g;
    const Init init = s.traits().init.kind;
    const auto H = hidden_;
    auto each_cell = [&](auto&& fn) {
      for (auto& m : lstm_) fn(m->weight_ih, m->weight_hh, m->bias_ih, m->bias_hh);
      for (auto& m : gru_) fn(m->weight_ih, m->weight_hh, m->bias_ih, m->bias_hh);
      for (auto& m : rnn_) fn(m->weight_ih, m->weight_hh, m->bias_ih, m->bias_hh);
    };
    each_cell([&](torch::Tensor& wih, torch::Tensor& whh, torch::Tensor& bih, torch::Tensor& bhh) {
      const auto gates = whh.size(0) / H;
      if (init == Init::orthogonal) {
        for (std::int64_t k = 0; k < gates; ++k) {
          auto block = whh.narrow(0, k * H, H);
          torch::nn::init::orthogonal_(block);
        }
      } else if (init == Init::identity) {
        for (std::int64_t k = 0; k < gates; ++k) whh.narrow(0, k * H, H).copy_(torch::eye(H));
        bih.zero_();
        bhh.zero_();
      } else if (init == Init::xavier_uniform) {
        torch::nn::init::xavier_uniform_(wih);
        torch::nn::init::xavier_uniform_(whh);
        bih.zero_();
        bhh.zero_();
      }
      const double scale = s.get_real("scale");
      if (scale > 0) {
        for (std::int64_t k = 0; k < gates; ++k) {
          auto block = whh.narrow(0, k * H, H);
          const double top = torch::linalg_svdvals(block.to(torch::kDouble)).max().item<double>();
          if (top > 0) block.mul_(scale / top);
        }
      }
    });
    if (cell_ == "lstm" && s.get("forget_bias") != "default") {
      const double fb = s.get_real("forget_bias");
      // LibTorch orders the LSTM gates input, forget, cell, output.
      for (auto& m : lstm_) {
        m->bias_ih.narrow(0, H, H).fill_(fb);
        m->bias_hh.narrow(0, H, H).zero_();
      }
    }
  }

  std::string cell_;
  std::int64_t hidden_ = 0;
  std::vector<torch::nn::LSTMCell> lstm_;
  std::vector<torch::nn::GRUCell> gru_;
  std::vector<torch::nn::RNNCell> rnn_;
  torch::nn::Linear readout_{nullptr};
};

}  // namespace

void init_weight(torch::Tensor& w, const InitSpec& init, Activation act) {
  namespace I = torch::nn::init;
  const bool leaky = act == Activation::leaky_relu;
  const auto nonlinearity = leaky ? I::NonlinearityType(torch::kLeakyReLU) : I::NonlinearityType(torch::kReLU);
  switch (init.kind) {
    case Init::unknown:
    case Init::default_init: return;
    case Init::xavier_uniform: I::xavier_uniform_(w); return;
    case Init::xavier_normal: I::xavier_normal_(w); return;
    case Init::he_uniform: I::kaiming_uniform_(w, leaky ? 0.01 : 0.0, torch::kFanIn, nonlinearity); return;
    case Init::he_normal: I::kaiming_normal_(w, leaky ? 0.01 : 0.0, torch::kFanIn, nonlinearity); return;
    case Init::orthogonal: I::orthogonal_(w.view({w.size(0), -1})); return;
    case Init::normal: I::normal_(w, 0.0, init.std); return;
    case Init::identity: break;
  }
  throw UsageError("init '" + to_string(init) + "' applies to recurrent weights only");
}

std::shared_ptr<Network> make_network(const ResolvedSpec& spec, std::int64_t input_dim, std::int64_t output_dim) {
  const std::int64_t n = estimate_parameters(spec, input_dim, output_dim);
  // Refuse before allocating: a typo like width=1000000 would otherwise take the machine down.
  constexpr std::int64_t kMaxParameters = 1LL << 30;
  if (n > kMaxParameters)
    throw UsageError("spec '" + spec.canonical() + "' has about " + std::to_string(n) +
                     " parameters, more than gradflow builds (" + std::to_string(kMaxParameters) +
                     "): use a smaller depth or width");
  if (spec.family == "mlp") return std::make_shared<MlpNet>(spec, input_dim, output_dim);
  if (spec.family == "cnn") return std::make_shared<CnnNet>(spec, input_dim, output_dim);
  if (spec.family == "rnn") return std::make_shared<RnnNet>(spec, input_dim, output_dim);
  if (spec.family == "transformer") return make_transformer(spec, input_dim, output_dim);
  throw UsageError("unknown family '" + spec.family + "'");
}

}  // namespace gradflow::models
