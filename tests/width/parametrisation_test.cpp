#include "gradflow/parametrisation.h"

#include <cmath>

#include <gtest/gtest.h>

#include "gradflow/error.h"

namespace gradflow {
namespace {

// Tensor Programs V (Yang, Hu et al. 2022), Table 3, transcribed: for each weight kind, the
// initial variance and the SGD and Adam learning rates as written there (η = 1), with the fans
// of the weight. Input weights & all biases | output weights | hidden weights.
struct Row {
  WeightKind kind;
  double var, sgd, adam;
};
std::vector<Row> table3(double fan_in, double fan_out) {
  return {{WeightKind::input, 1 / fan_in, fan_out, 1},
          {WeightKind::readout, 1 / (fan_in * fan_in), 1 / fan_in, 1 / fan_in},
          {WeightKind::hidden, 1 / fan_in, 1, 1 / fan_in}};
}

TEST(Parametrisation, MupIsTable3ForEveryKindAndOptimizer) {
  for (auto [in, out] : {std::pair{300.0, 500.0}, {7.0, 4096.0}, {2048.0, 10.0}})
    for (const auto& row : table3(in, out)) {
      const WeightShape s{in, out};
      const auto sgd = weight_rule(Parametrisation::mup, row.kind, OptimizerKind::sgd, s);
      const auto adam = weight_rule(Parametrisation::mup, row.kind, OptimizerKind::adam, s);
      SCOPED_TRACE(to_string(row.kind));
      EXPECT_DOUBLE_EQ(sgd.init_variance, row.var);
      EXPECT_DOUBLE_EQ(adam.init_variance, row.var);
      EXPECT_DOUBLE_EQ(sgd.lr_multiplier, row.sgd);
      EXPECT_DOUBLE_EQ(adam.lr_multiplier, row.adam);
    }
}

// Table 3 moved by the invariance to every weight at variance 1 (the unit-scaled form): output
// multipliers 1/√fan_in (input, hidden) and 1/fan_in (read-out); SGD rates fan_out·fan_in,
// fan_in, fan_in; Adam rates √fan_in, 1/√fan_in, 1 (input, hidden, read-out).
TEST(Parametrisation, OutputMultiplierFormsFollowTheInvariance) {
  const double in = 256, out = 1024;
  const WeightShape s{in, out};
  struct Want {
    WeightKind kind;
    double multiplier, sgd, adam;
  };
  for (const Want& w : {Want{WeightKind::input, 1 / std::sqrt(in), out * in, std::sqrt(in)},
                        Want{WeightKind::hidden, 1 / std::sqrt(in), in, 1 / std::sqrt(in)},
                        Want{WeightKind::readout, 1 / in, in, 1}}) {
    SCOPED_TRACE(to_string(w.kind));
    for (auto opt : {OptimizerKind::sgd, OptimizerKind::adam}) {
      const WeightRule table3 = weight_rule(Parametrisation::mup, w.kind, opt, s);
      const WeightRule unit = with_output_multiplier(table3, w.multiplier, opt);
      EXPECT_DOUBLE_EQ(unit.init_variance, 1.0);
      EXPECT_DOUBLE_EQ(unit.output_multiplier, w.multiplier);
      EXPECT_DOUBLE_EQ(unit.lr_multiplier, opt == OptimizerKind::sgd ? w.sgd : w.adam);
      const WeightRule back = with_output_multiplier(unit, 1.0, opt);
      EXPECT_DOUBLE_EQ(back.init_variance, table3.init_variance);
      EXPECT_DOUBLE_EQ(back.lr_multiplier, table3.lr_multiplier);
    }
  }
  EXPECT_THROW(with_output_multiplier(WeightRule{}, 0.0, OptimizerKind::sgd), Error);
}

TEST(Parametrisation, SpKeepsOneLearningRateAndVarianceOneOverFanIn) {
  for (auto kind : {WeightKind::fixed, WeightKind::input, WeightKind::hidden, WeightKind::readout})
    for (auto opt : {OptimizerKind::sgd, OptimizerKind::adam}) {
      const auto r = weight_rule(Parametrisation::sp, kind, opt, {300, 500, 64, 64});
      EXPECT_DOUBLE_EQ(r.init_variance, 1.0 / 300);
      EXPECT_DOUBLE_EQ(r.lr_multiplier, 1.0);
    }
}

TEST(Parametrisation, MupEqualsSpAtTheBaseShapeAndScalesAwayFromIt) {
  for (auto kind : {WeightKind::fixed, WeightKind::input, WeightKind::hidden, WeightKind::readout})
    for (auto opt : {OptimizerKind::sgd, OptimizerKind::adam}) {
      const auto mup = weight_rule(Parametrisation::mup, kind, opt, {64, 64, 64, 64});
      const auto sp = weight_rule(Parametrisation::sp, kind, opt, {64, 64, 64, 64});
      EXPECT_DOUBLE_EQ(mup.init_variance, sp.init_variance);
      EXPECT_DOUBLE_EQ(mup.lr_multiplier, sp.lr_multiplier);
    }
  // 16x the base width: Adam's hidden and readout rates 1/16, SGD's input rate 16x.
  const WeightShape wide{1024, 1024, 64, 64};
  EXPECT_DOUBLE_EQ(weight_rule(Parametrisation::mup, WeightKind::hidden, OptimizerKind::adam, wide).lr_multiplier, 1.0 / 16);
  EXPECT_DOUBLE_EQ(weight_rule(Parametrisation::mup, WeightKind::readout, OptimizerKind::sgd, {1024, 10, 64, 10}).lr_multiplier, 1.0 / 16);
  EXPECT_DOUBLE_EQ(weight_rule(Parametrisation::mup, WeightKind::input, OptimizerKind::sgd, {32, 1024, 32, 64}).lr_multiplier, 16.0);
  EXPECT_DOUBLE_EQ(weight_rule(Parametrisation::mup, WeightKind::readout, OptimizerKind::adam, {1024, 10, 64, 10}).init_variance,
                   1.0 / 1024 / 16);
}

TEST(Parametrisation, AttentionLogitsOneOverDInMupOneOverRootDInSp) {
  EXPECT_DOUBLE_EQ(attention_scale(Parametrisation::sp, 64, 16), 1.0 / 8);
  EXPECT_DOUBLE_EQ(attention_scale(Parametrisation::mup, 16, 16), attention_scale(Parametrisation::sp, 16, 16));
  EXPECT_DOUBLE_EQ(attention_scale(Parametrisation::mup, 64, 16) / attention_scale(Parametrisation::mup, 128, 16), 2.0);
}

TEST(Parametrisation, KindsFromShapesAtTwoWidths) {
  // An MLP 32 -> n -> n -> 10 at n = 64 and 128, and a Transformer's embedding table and LayerNorm.
  const std::vector<ParameterShape> a = {{{64, 32}}, {{64}}, {{64, 64}}, {{64}}, {{10, 64}}, {{10}}, {{100, 64}, true}, {{64}}, {{64, 16, 3, 3}}};
  const std::vector<ParameterShape> b = {{{128, 32}}, {{128}}, {{128, 128}}, {{128}}, {{10, 128}}, {{10}}, {{100, 128}, true}, {{128}}, {{128, 16, 3, 3}}};
  const std::vector<WeightKind> want = {WeightKind::input, WeightKind::input, WeightKind::hidden, WeightKind::input, WeightKind::readout,
                                        WeightKind::fixed, WeightKind::input, WeightKind::input, WeightKind::input};
  EXPECT_EQ(weight_kinds(a, b), want);
  EXPECT_THROW(weight_kinds(a, {b.begin(), b.end() - 1}), Error);
  EXPECT_THROW(weight_kinds({{{64, 32}}}, {{{64, 32, 1}}}), Error);
}

TEST(Parametrisation, FansOfLinearConvEmbeddingAndVector) {
  EXPECT_EQ(fans({{10, 64}}), (std::pair{64.0, 10.0}));
  EXPECT_EQ(fans({{32, 16, 3, 3}}), (std::pair{144.0, 288.0}));
  EXPECT_EQ(fans({{100, 64}, true}), (std::pair{100.0, 64.0}));
  EXPECT_EQ(fans({{64}}), (std::pair{1.0, 64.0}));
}

TEST(Parametrisation, NamesRoundTripAndBadNamesAreRefused) {
  EXPECT_EQ(parametrisation_from_string("mup"), Parametrisation::mup);
  EXPECT_EQ(parametrisation_from_string(to_string(Parametrisation::sp)), Parametrisation::sp);
  EXPECT_THROW(parametrisation_from_string("ntk"), UsageError);
  for (auto k : {WeightKind::fixed, WeightKind::input, WeightKind::hidden, WeightKind::readout})
    EXPECT_EQ(weight_kind_from_string(to_string(k)), k);
}

}  // namespace
}  // namespace gradflow
