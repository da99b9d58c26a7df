#include "models/spec.h"

#include <gtest/gtest.h>

#include "gradflow/error.h"

namespace gradflow::models {
namespace {

std::string error_of(const std::string& text) {
  try {
    resolve_spec(text);
  } catch (const UsageError& e) {
    return e.what();
  }
  return "";
}

TEST(Spec, ParsesNameAndOptions) {
  const Spec s = parse_spec(" mlp : depth=20 , act=relu,init=normal:0.01");
  EXPECT_EQ(s.name, "mlp");
  ASSERT_EQ(s.options.size(), 3u);
  EXPECT_EQ(s.options[0], (std::pair<std::string, std::string>{"depth", "20"}));
  EXPECT_EQ(s.options[2].second, "normal:0.01");
  EXPECT_TRUE(parse_spec("mlp").options.empty());
  EXPECT_TRUE(parse_spec("mlp:").options.empty());
}

TEST(Spec, MalformedTextIsAUsageError) {
  for (const char* bad : {"", ":depth=2", "mlp:depth", "mlp:=3", "mlp:depth=", "mlp:depth=2,,act=relu",
                          "mlp:depth=2,depth=3", "mlp:depth=2,"})
    EXPECT_THROW(parse_spec(bad), UsageError) << bad;
}

TEST(Spec, DefaultsAreFilledAndCanonicalListsEveryOption) {
  const auto r = resolve_spec("mlp:depth=5");
  EXPECT_EQ(r.get_int("depth"), 5);
  EXPECT_EQ(r.get("act"), "sigmoid");
  EXPECT_EQ(r.canonical(), "mlp:depth=5,width=128,act=sigmoid,init=default,norm=none,residual=0,param=sp,base_width=64,dtype=float32");
  EXPECT_EQ(resolve_spec(r.canonical()).canonical(), r.canonical());
}

TEST(Spec, PresetsExpandAndAcceptOverrides) {
  for (const auto& p : presets()) {
    const auto r = resolve_spec(p.name);
    EXPECT_EQ(r.label(), p.name);
    EXPECT_EQ(r.canonical(), resolve_spec(p.spec).canonical());
  }
  const auto r = resolve_spec("plain:depth=10");
  EXPECT_EQ(r.get_int("depth"), 10);
  EXPECT_EQ(r.get("act"), "sigmoid");
  EXPECT_EQ(r.label(), "plain:depth=10");
  EXPECT_EQ(resolve_spec("he").get("init"), "he_normal");
  EXPECT_EQ(resolve_spec("lstm").get("cell"), "lstm");
}

TEST(Spec, ErrorsNameTheProblemAndListTheValidChoices) {
  EXPECT_NE(error_of("mamba").find("mlp, cnn, rnn, transformer"), std::string::npos) << error_of("mamba");
  EXPECT_NE(error_of("mlp:colour=red").find("depth, width, act"), std::string::npos);
  EXPECT_NE(error_of("mlp:act=swish").find("sigmoid, tanh, relu"), std::string::npos);
  EXPECT_NE(error_of("mlp:depth=0").find("out of range"), std::string::npos);
  EXPECT_NE(error_of("mlp:width=-3").find("out of range"), std::string::npos);
  EXPECT_NE(error_of("mlp:depth=ten").find("not a whole number"), std::string::npos);
  EXPECT_NE(error_of("mlp:depth=2.5").find("not a whole number"), std::string::npos);
  EXPECT_NE(error_of("mlp:init=normal:-1").find("standard deviation"), std::string::npos);
  EXPECT_NE(error_of("mlp:init=normal:abc").find("standard deviation"), std::string::npos);
  EXPECT_NE(error_of("rnn:cell=transformer").find("rnn_tanh, rnn_relu, lstm, gru"), std::string::npos);
  EXPECT_NE(error_of("rnn:forget_bias=x").find("not a number"), std::string::npos);
  EXPECT_NE(error_of("mlp:depth=99999999999999999999").find("not a whole number"), std::string::npos);
}

TEST(Spec, ParameterEstimateCountsLayers) {
  // depth 3, width 4, 2 inputs, 1 output: 2*4+4 + (4*4+4 + 2*4 norm slack) + 4*1+1
  const auto r = resolve_spec("mlp:depth=3,width=4");
  EXPECT_EQ(estimate_parameters(r, 2, 1), 2 * 4 + 4 + (4 * 4 + 3 * 4) + 4 + 1);
  EXPECT_GT(estimate_parameters(resolve_spec("mlp:depth=1000,width=65536"), 32, 10), 1LL << 40);
}

}  // namespace
}  // namespace gradflow::models
