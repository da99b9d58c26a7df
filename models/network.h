#pragma once
/// \file
/// The built-in networks: one base class, built from a resolved spec.

#include <memory>
#include <string>
#include <vector>

#include <torch/nn/module.h>

#include "gradflow/monitor.h"
#include "models/spec.h"

namespace gradflow::models {

/// A weight layer of a built-in network, in forward order.
struct LayerInfo {
  std::string name;  ///< module path, as in the trace ("fc3", "conv2")
  std::string kind;  ///< "linear", "conv", "recurrent", "attention"
  /// 1-based position among weight layers; a Transformer's block number (its embedding 0).
  int depth = 0;
};

/// A built-in network. forward() taps its hidden states into the Monitor when one is given:
/// `h.1` ... `h.{depth-1}` for feed-forward nets (`h.1` ... `h.{depth}`, the blocks' outputs,
/// for the Transformer), `time.1` ... `time.T` (and `cell.t` for the
/// LSTM's cell state) for recurrent ones.
/// Each weight layer's output as forward() computed it, named as in layers().
using LayerOutputs = std::vector<std::pair<std::string, torch::Tensor>>;

class Network : public torch::nn::Module {
 public:
  virtual torch::Tensor forward(const torch::Tensor& x, Monitor* monitor) = 0;
  virtual std::vector<LayerInfo> layers() const = 0;
  virtual bool recurrent() const { return false; }
  /// From now on forward() appends each weight layer's output to `sink` (nullptr: stop); the
  /// coordinate check reads them. Feed-forward families only.
  void capture_layer_outputs(LayerOutputs* sink) { sink_ = sink; }

 protected:
  const torch::Tensor& captured(const std::string& name, const torch::Tensor& output) {
    if (sink_) sink_->emplace_back(name, output);
    return output;
  }
  LayerOutputs* sink() const { return sink_; }

 private:
  LayerOutputs* sink_ = nullptr;
};

/// Builds the network a spec describes for inputs of `input_dim` features (channels for the
/// conv net) and `output_dim` outputs, in the spec's dtype.
std::shared_ptr<Network> make_network(const ResolvedSpec& spec, std::int64_t input_dim,
                                      std::int64_t output_dim);

/// Applies an initialisation to a weight; biases of layers initialised this way are set to zero
/// by the caller.
void init_weight(torch::Tensor& weight, const InitSpec& init, Activation act);

}  // namespace gradflow::models
