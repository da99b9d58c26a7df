#include "gradflow/inspect.h"

#include <filesystem>
#include <fstream>

#include <unistd.h>

#include <torch/script.h>
#include <torch/torch.h>

#include "gradflow/error.h"
#include "torch_test_util.h"

namespace gradflow {
namespace {

using test::rel_close;
namespace fs = std::filesystem;

class InspectTest : public test::TorchTest {
 protected:
  void SetUp() override {
    test::TorchTest::SetUp();
    dir_ = fs::temp_directory_path() / ("gradflow_inspect_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

// A TorchScript model with submodules, as torch.jit.script would save it: fc1 -> tanh -> fc2,
// written in TorchScript and saved without Python.
std::string save_mlp(const fs::path& dir, int depth = 2, const std::string& act = "tanh") {
  torch::manual_seed(11);
  torch::jit::Module m("Net");
  std::string body = "  def forward(self, x):\n";
  for (int i = 1; i <= depth; ++i) {
    torch::jit::Module fc("Linear" + std::to_string(i));
    const int in = i == 1 ? 6 : 8, out = i == depth ? 3 : 8;
    fc.register_parameter("weight", (torch::randn({out, in}) / std::sqrt(static_cast<double>(in))).requires_grad_(), false);
    fc.register_parameter("bias", torch::zeros({out}).requires_grad_(), false);
    fc.define("def forward(self, x):\n  return torch.matmul(x, self.weight.t()) + self.bias\n");
    m.register_module("fc" + std::to_string(i), fc);
    body += "    x = self.fc" + std::to_string(i) + ".forward(x)\n";
    if (i < depth) body += "    x = torch." + act + "(x)\n";
  }
  body += "    return x\n";
  m.define(body);
  const std::string path = (dir / ("mlp" + std::to_string(depth) + act + ".pt")).string();
  m.save(path);
  return path;
}

TEST_F(InspectTest, ParameterFiguresEqualIndependentGradients) {
  const std::string path = save_mlp(dir_, 3);
  InspectOptions o;
  o.input_shape = {5, 6};
  o.seed = 3;
  const auto res = inspect_torchscript(path, o);
  // Independent: load again, same input from the same seed, plain backward.
  auto m = torch::jit::load(path);
  torch::manual_seed(3);
  auto x = torch::randn({5, 6});
  auto loss = m.forward({x}).toTensor().sum();
  loss.backward();
  EXPECT_TRUE(rel_close(res.loss, loss.item<double>(), 1e-6));
  std::vector<std::string> names;
  for (const auto& p : m.named_parameters()) names.push_back(p.name);
  ASSERT_EQ(res.parameters.size(), names.size());
  std::size_t i = 0;
  for (const auto& p : m.named_parameters()) {
    const auto& got = res.parameters[i++];
    EXPECT_EQ(got.name, p.name);  // named_parameters() order and names, as Python gives them
    const auto g = p.value.grad().to(torch::kDouble);
    EXPECT_TRUE(rel_close(got.grad_norm, g.norm().item<double>(), 1e-5)) << p.name;
    EXPECT_TRUE(rel_close(got.grad_max_abs, g.abs().max().item<double>(), 1e-5)) << p.name;
    EXPECT_TRUE(rel_close(got.grad_mean, g.mean().item<double>(), 1e-5, 1e-7)) << p.name;
    EXPECT_EQ(got.shape, p.value.sizes().vec());
  }
  EXPECT_EQ(names.front(), "fc1.weight");
}

TEST_F(InspectTest, ActivationGradientsAreNamedByTheGraphWalk) {
  const std::string path = save_mlp(dir_, 3);
  InspectOptions o;
  o.input_shape = {4, 6};
  o.steps = 3;  // the executor must not change the graph from one run to the next
  const auto res = inspect_torchscript(path, o);
  ASSERT_GE(res.activations.size(), 3u);
  EXPECT_EQ(res.activations[0].first, "fc1");
  EXPECT_EQ(res.activations[2].first, "fc3");
  // Independent: with loss = output.sum(), dL/d(output of fc3) is all ones over a [4, 3] output.
  EXPECT_TRUE(rel_close(res.activations[2].second, std::sqrt(12.0), 1e-6));
  // Each layer has its own gradient (a fused graph node would give all three the same one).
  EXPECT_NE(res.activations[0].second, res.activations[2].second);
  EXPECT_EQ(res.run.trace.steps().size(), 4u);
  for (const auto& st : res.run.trace.steps()) EXPECT_NE(st.find(res.run.trace.find("fc1")), nullptr) << "step " << st.step;
}

TEST_F(InspectTest, DeepSigmoidModelVanishes) {
  const std::string path = save_mlp(dir_, 12, "sigmoid");
  InspectOptions o;
  o.input_shape = {16, 6};
  const auto res = inspect_torchscript(path, o);
  EXPECT_TRUE(has_any(res.run.findings, {FindingKind::vanishing}));
  EXPECT_LT(res.parameters.front().grad_norm, 1e-3 * res.parameters.back().grad_norm);
}

TEST_F(InspectTest, LossKindsAndInputFile) {
  const std::string path = save_mlp(dir_, 2);
  InspectOptions o;
  o.input_shape = {4, 6};
  for (const char* l : {"sum", "mean", "mse", "ce"}) {
    o.loss = inspect_loss_from_string(l);
    EXPECT_STREQ(to_string(o.loss), l);
    EXPECT_NO_THROW(inspect_torchscript(path, o)) << l;
  }
  // A tensor saved in torch.save's zip format.
  torch::manual_seed(1);
  const auto x = torch::randn({2, 6});
  const auto bytes = torch::pickle_save(x);
  const std::string in = (dir_ / "x.pt").string();
  std::ofstream(in, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  InspectOptions f;
  f.input_file = in;
  const auto res = inspect_torchscript(path, f);
  auto m = torch::jit::load(path);
  EXPECT_TRUE(rel_close(res.loss, m.forward({x}).toTensor().sum().item<double>(), 1e-6));
}

TEST_F(InspectTest, BadInputsAreClearErrors) {
  const std::string path = save_mlp(dir_, 2);
  InspectOptions o;
  o.input_shape = {4, 6};
  EXPECT_THROW(inspect_torchscript((dir_ / "missing.pt").string(), o), Error);
  const std::string junk = (dir_ / "junk.pt").string();
  std::ofstream(junk) << "not a model";
  try {
    inspect_torchscript(junk, o);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not a TorchScript archive"), std::string::npos) << e.what();
  }
  InspectOptions wrong = o;
  wrong.input_shape = {4, 7};
  try {
    inspect_torchscript(path, wrong);
    FAIL();
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("rejected an input of shape [4,7]"), std::string::npos) << e.what();
  }
  EXPECT_THROW(inspect_loss_from_string("hinge"), UsageError);
  EXPECT_THROW(inspect_torchscript(path, InspectOptions{}), UsageError);  // no input
  // No trainable parameter.
  torch::jit::Module frozen("Frozen");
  frozen.register_buffer("w", torch::randn({6, 3}));
  frozen.define("def forward(self, x):\n  return torch.matmul(x, self.w)\n");
  const std::string fp = (dir_ / "frozen.pt").string();
  frozen.save(fp);
  try {
    inspect_torchscript(fp, o);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no trainable parameter"), std::string::npos) << e.what();
  }
  // Integer output.
  torch::jit::Module ints("Ints");
  ints.register_parameter("w", torch::randn({6, 3}).requires_grad_(), false);
  ints.define("def forward(self, x):\n  return torch.argmax(torch.matmul(x, self.w), 1)\n");
  const std::string ip = (dir_ / "ints.pt").string();
  ints.save(ip);
  try {
    inspect_torchscript(ip, o);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not a floating one"), std::string::npos) << e.what();
  }
}

TEST_F(InspectTest, ShapeParsing) {
  EXPECT_EQ(parse_shape("8,3,32,32"), (std::vector<std::int64_t>{8, 3, 32, 32}));
  for (const char* bad : {"", "8,", "a,3", "0,3", "-1", "8;3", "99999999999"}) EXPECT_THROW(parse_shape(bad), UsageError) << bad;
}

}  // namespace
}  // namespace gradflow
