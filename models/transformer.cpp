#include "models/transformer.h"

#include <cmath>

#include <torch/torch.h>

#include "gradflow/run_record.h"
#include "models/parametrise.h"

namespace gradflow::models {

namespace {

// Xavier-uniform weights and zero biases, as in Xiong et al. 2020's analysis.
torch::nn::Linear xavier_linear(std::int64_t in, std::int64_t out) {
  torch::nn::Linear l(in, out);
  torch::NoGradGuard g;
  torch::nn::init::xavier_uniform_(l->weight);
  l->bias.zero_();
  return l;
}

class BlockImpl : public torch::nn::Module {
 public:
  BlockImpl(std::int64_t width, std::int64_t heads, bool pre, double attention_scale)
      : heads_(heads), pre_(pre), scale_(attention_scale),
        qkv(register_module("qkv", xavier_linear(width, 3 * width))),
        proj(register_module("proj", xavier_linear(width, width))),
        fc1(register_module("fc1", xavier_linear(width, 4 * width))),
        fc2(register_module("fc2", xavier_linear(4 * width, width))),
        ln1(register_module("ln1", torch::nn::LayerNorm(torch::nn::LayerNormOptions({width})))),
        ln2(register_module("ln2", torch::nn::LayerNorm(torch::nn::LayerNormOptions({width})))) {}

  // `sink`: where each linear layer's output goes, named under `prefix` (LayerOutputs).
  torch::Tensor forward(const torch::Tensor& x, LayerOutputs* sink = nullptr, const std::string& prefix = "") {
    sink_ = sink;
    prefix_ = prefix;
    if (pre_) {
      const torch::Tensor h = x + attention(ln1->forward(x));
      return h + mlp(ln2->forward(h));
    }
    const torch::Tensor h = ln1->forward(x + attention(x));
    return ln2->forward(h + mlp(h));
  }

 private:
  torch::Tensor attention(const torch::Tensor& x) {
    const auto B = x.size(0), T = x.size(1), D = x.size(2), head = D / heads_;
    // [B, T, 3, heads, head] -> three [B, heads, T, head]
    const auto parts = captured("qkv", qkv->forward(x)).view({B, T, 3, heads_, head}).permute({2, 0, 3, 1, 4}).unbind(0);
    const auto scores = torch::matmul(parts[0], parts[1].transpose(-1, -2)) * scale_;
    const auto mixed = torch::matmul(torch::softmax(scores, -1), parts[2]);
    return captured("proj", proj->forward(mixed.transpose(1, 2).reshape({B, T, D})));
  }
  torch::Tensor mlp(const torch::Tensor& x) { return captured("fc2", fc2->forward(torch::relu(captured("fc1", fc1->forward(x))))); }
  const torch::Tensor& captured(const char* name, const torch::Tensor& t) {
    if (sink_) sink_->emplace_back(prefix_ + name, t);
    return t;
  }

  std::int64_t heads_;
  bool pre_;
  double scale_;
  LayerOutputs* sink_ = nullptr;
  std::string prefix_;

 public:
  torch::nn::Linear qkv, proj, fc1, fc2;
  torch::nn::LayerNorm ln1, ln2;
};
TORCH_MODULE(Block);

// Sinusoidal positions (Vaswani et al. 2017): nothing to learn, any length.
torch::Tensor positions(std::int64_t T, std::int64_t D, const torch::TensorOptions& options) {
  const auto pos = torch::arange(T, torch::kDouble).unsqueeze(1);
  const auto i = torch::arange(0, D, 2, torch::kDouble);
  const auto angle = pos * torch::exp(i * (-std::log(10000.0) / static_cast<double>(D)));
  auto pe = torch::zeros({T, D}, torch::kDouble);
  pe.index_put_({torch::indexing::Slice(), torch::indexing::Slice(0, D, 2)}, torch::sin(angle));
  pe.index_put_({torch::indexing::Slice(), torch::indexing::Slice(1, D, 2)}, torch::cos(angle.narrow(1, 0, D / 2)));
  return pe.to(options);
}

class TransformerNet : public Network {
 public:
  TransformerNet(const ResolvedSpec& s, std::int64_t in, std::int64_t out) : pre_(s.get("ln") == "pre") {
    width_ = s.get_int("width");
    embed_ = register_module("embed", xavier_linear(in, width_));
    {
      // Token vectors of norm about sqrt(width), as an embedding scaled by sqrt(d) gives.
      torch::NoGradGuard g;
      embed_->weight.normal_(0.0, 1.0);
    }
    for (std::int64_t b = 0; b < s.get_int("depth"); ++b)
      blocks_.push_back(register_module("block" + std::to_string(b), Block(width_, s.get_int("heads"), pre_, attention_scale_of(s))));
    if (pre_) final_norm_ = register_module("ln_final", torch::nn::LayerNorm(torch::nn::LayerNormOptions({width_})));
    head_ = register_module("head", xavier_linear(width_, out));
    parametrise_readout(head_->weight, s);
    to(s.get("dtype") == "float64" ? torch::kDouble : torch::kFloat);
  }

  torch::Tensor forward(const torch::Tensor& x, Monitor* mon) override {
    torch::Tensor h = captured("embed", embed_->forward(x)) + positions_for(x);
    for (std::size_t b = 0; b < blocks_.size(); ++b) {
      h = blocks_[b]->forward(h, sink(), "block" + std::to_string(b) + ".");
      if (mon && mon->recording()) {
        TapOptions o;
        o.group = "h";
        mon->tap(h, "h." + std::to_string(b + 1), o);
      }
    }
    if (pre_) h = final_norm_->forward(h);
    return captured("head", head_->forward(h));
  }

  std::vector<LayerInfo> layers() const override {
    std::vector<LayerInfo> v{{"embed", "linear", 0}};
    for (std::size_t b = 0; b < blocks_.size(); ++b) {
      const std::string name = "block" + std::to_string(b);
      const int depth = static_cast<int>(b) + 1;
      v.push_back({name + ".qkv", kAttentionLayerKind, depth});
      v.push_back({name + ".proj", kAttentionLayerKind, depth});
      v.push_back({name + ".fc1", "linear", depth});
      v.push_back({name + ".fc2", "linear", depth});
    }
    v.push_back({"head", "linear", static_cast<int>(blocks_.size()) + 1});
    return v;
  }

 private:
  // The table is built once per sequence length, not at every step.
  const torch::Tensor& positions_for(const torch::Tensor& x) {
    if (!positions_.defined() || positions_.size(0) != x.size(1) || positions_.dtype() != x.dtype() ||
        positions_.device() != x.device())
      positions_ = positions(x.size(1), width_, x.options());
    return positions_;
  }

  bool pre_;
  std::int64_t width_ = 0;
  torch::Tensor positions_;
  torch::nn::Linear embed_{nullptr}, head_{nullptr};
  std::vector<Block> blocks_;
  torch::nn::LayerNorm final_norm_{nullptr};
};

}  // namespace

std::shared_ptr<Network> make_transformer(const ResolvedSpec& spec, std::int64_t input_dim, std::int64_t output_dim) {
  return std::make_shared<TransformerNet>(spec, input_dim, output_dim);
}

}  // namespace gradflow::models
