// What a model's module tree shows, read from its modules' class names as LibTorch and
// TorchScript spell them.
#include "gradflow/model_traits.h"

#include <gtest/gtest.h>

namespace gradflow {
namespace {

TEST(ModelTraitsFromModules, LibTorchAndTorchScriptNamesAreRead) {
  const ModelTraits cpp = traits_from_module_kinds(
      {"ResNetImpl", "torch::nn::Conv2dImpl", "torch::nn::BatchNorm2dImpl", "torch::nn::ReLUImpl", "torch::nn::LinearImpl"});
  EXPECT_EQ(cpp.norm, Norm::batch);
  EXPECT_EQ(cpp.activation, Activation::relu);
  EXPECT_FALSE(cpp.recurrent);
  const ModelTraits script = traits_from_module_kinds({"__torch__.Net", "__torch__.torch.nn.modules.rnn.LSTM",
                                                       "__torch__.torch.nn.modules.normalization.LayerNorm"});
  EXPECT_EQ(script.norm, Norm::layer);
  EXPECT_EQ(script.cell, Cell::lstm);
  EXPECT_TRUE(script.recurrent);
}

TEST(ModelTraitsFromModules, OnlyWhatTheNamesShowIsSet) {
  // Two activation kinds: neither is the model's activation. A vanilla RNN's nonlinearity is an
  // option, so its cell stays unknown. Batch norm wins over layer norm, as in Python.
  const ModelTraits t = traits_from_module_kinds({"torch::nn::TanhImpl", "torch::nn::ReLUImpl", "torch::nn::RNNImpl",
                                                  "torch::nn::LayerNormImpl", "torch::nn::BatchNorm1dImpl"});
  EXPECT_EQ(t.activation, Activation::none);
  EXPECT_TRUE(t.recurrent);
  EXPECT_EQ(t.cell, Cell::none);
  EXPECT_EQ(t.norm, Norm::batch);
  EXPECT_EQ(traits_from_module_kinds({"torch::nn::LinearImpl", "LinearImpl"}).norm, Norm::none);
}

TEST(ModelTraitsFromModules, WhatTheProgramSaidComesFirst) {
  ModelTraits said;
  said.norm = Norm::layer;
  said.clip_norm = 0.5;
  ModelTraits shown;
  shown.norm = Norm::batch;
  shown.activation = Activation::gelu;
  shown.cell = Cell::gru;
  shown.recurrent = true;
  const ModelTraits t = with_shown_traits(said, shown);
  EXPECT_EQ(t.norm, Norm::layer);
  EXPECT_EQ(t.activation, Activation::gelu);
  EXPECT_EQ(t.cell, Cell::gru);
  EXPECT_TRUE(t.recurrent);
  EXPECT_EQ(t.clip_norm, 0.5);
}

}  // namespace
}  // namespace gradflow
