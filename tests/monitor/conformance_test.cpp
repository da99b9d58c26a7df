// Attaching the Monitor changes nothing, over LibTorch's C++ surface as its headers declare it
// when the test runs: every module class (TORCH_MODULE and ModuleHolder declarations) and every
// optimizer (classes deriving from Optimizer). A class with parameters trains three steps
// bit-identically with and without a Monitor, each recorded parameter figure equals the gradient
// its AccumulateGrad node accumulated, and torch::save / torch::load and clone() behave as without
// it. A class without parameters is built and checked to have none. A class the headers gain (a
// newer LibTorch) fails the enumeration until it is given a case here.
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>

#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/script.h>
#include <torch/torch.h>

#include "gradflow/monitor.h"
#include "torch_test_util.h"

namespace gradflow {
namespace {

namespace fs = std::filesystem;
using test::expect_stats_equal;
using Inputs = std::vector<torch::Tensor>;

// The names LibTorch's headers under `subdir` declare, by the first group of `pattern`.
std::set<std::string> declared(const std::string& subdir, const std::regex& pattern) {
  std::set<std::string> names;
  std::stringstream dirs(GRADFLOW_TORCH_INCLUDE_DIRS);
  for (std::string dir; std::getline(dirs, dir, ':');) {
    const fs::path root = fs::path(dir) / subdir;
    if (!fs::is_directory(root)) continue;
    for (const auto& entry : fs::recursive_directory_iterator(root)) {
      if (entry.path().extension() != ".h") continue;
      std::ifstream in(entry.path());
      for (std::string line; std::getline(in, line);) {
        std::smatch m;
        if (std::regex_search(line, m, pattern)) names.insert(m[1]);
      }
    }
  }
  return names;
}

std::set<std::string> module_classes() {
  auto names = declared("torch/nn/modules", std::regex(R"(^TORCH_MODULE\((\w+)\))"));
  for (const auto& n : declared("torch/nn/modules", std::regex(R"(^class (?:TORCH_API )?(\w+) : public torch::nn::ModuleHolder<)")))
    names.insert(n);
  return names;
}

std::set<std::string> optimizer_classes() {
  return declared("torch/optim", std::regex(R"(^class (?:TORCH_API )?(\w+) : public Optimizer\b)"));
}

// A module built small, its forward on inputs, and inputs drawn from a generator.
struct Built {
  std::shared_ptr<torch::nn::Module> module;
  std::function<torch::Tensor(const Inputs&)> forward;
  std::function<Inputs(at::Generator&)> inputs;
};

torch::Tensor first(const torch::Tensor& t) { return t; }
template <class... T>
torch::Tensor first(const std::tuple<torch::Tensor, T...>& t) { return std::get<0>(t); }
torch::Tensor first(const torch::nn::ASMoutput& o) { return o.output; }

std::function<Inputs(at::Generator&)> randn(std::vector<std::vector<std::int64_t>> shapes) {
  return [shapes](at::Generator& g) {
    Inputs x;
    for (const auto& s : shapes) x.push_back(torch::randn(s, g));
    return x;
  };
}

std::function<Inputs(at::Generator&)> indices(std::int64_t high, std::vector<std::int64_t> shape) {
  return [high, shape](at::Generator& g) { return Inputs{torch::randint(high, shape, g)}; };
}

template <class Holder>
Built one(Holder m, std::function<Inputs(at::Generator&)> in) {
  return {m.ptr(), [m](const Inputs& x) mutable { return first(m->forward(x[0])); }, std::move(in)};
}

template <class Holder>
Built two(Holder m, std::function<Inputs(at::Generator&)> in) {
  return {m.ptr(), [m](const Inputs& x) mutable { return first(m->forward(x[0], x[1])); }, std::move(in)};
}

template <class Holder>
Built three(Holder m, std::function<Inputs(at::Generator&)> in) {
  return {m.ptr(), [m](const Inputs& x) mutable { return first(m->forward(x[0], x[1], x[2])); }, std::move(in)};
}

namespace nn = torch::nn;

std::map<std::string, std::function<Built()>> with_parameters() {
  using R = std::function<Inputs(at::Generator&)>;
  const R seq = randn({{5, 2, 8}});
  const R seq2seq = randn({{5, 2, 8}, {4, 2, 8}});
  const R dec = randn({{4, 2, 8}, {5, 2, 8}});
  return {
      {"AdaptiveLogSoftmaxWithLoss",
       [] {
         nn::AdaptiveLogSoftmaxWithLoss m(nn::AdaptiveLogSoftmaxWithLossOptions(8, 10, {4}));
         return Built{m.ptr(), [m](const Inputs& x) mutable { return first(m->forward(x[0], x[1])); },
                      [](at::Generator& g) { return Inputs{torch::randn({4, 8}, g), torch::randint(10, {4}, g)}; }};
       }},
      {"BatchNorm1d", [] { return one(nn::BatchNorm1d(4), randn({{5, 4}})); }},
      {"BatchNorm2d", [] { return one(nn::BatchNorm2d(3), randn({{2, 3, 4, 4}})); }},
      {"BatchNorm3d", [] { return one(nn::BatchNorm3d(2), randn({{2, 2, 3, 3, 3}})); }},
      {"Bilinear", [] { return two(nn::Bilinear(3, 4, 5), randn({{4, 3}, {4, 4}})); }},
      {"Conv1d", [] { return one(nn::Conv1d(2, 3, 3), randn({{2, 2, 8}})); }},
      {"Conv2d", [] { return one(nn::Conv2d(2, 3, 3), randn({{2, 2, 6, 6}})); }},
      {"Conv3d", [] { return one(nn::Conv3d(2, 3, 2), randn({{1, 2, 4, 4, 4}})); }},
      {"ConvTranspose1d", [] { return one(nn::ConvTranspose1d(2, 3, 3), randn({{2, 2, 5}})); }},
      {"ConvTranspose2d", [] { return one(nn::ConvTranspose2d(2, 3, 3), randn({{2, 2, 4, 4}})); }},
      {"ConvTranspose3d", [] { return one(nn::ConvTranspose3d(2, 3, 2), randn({{1, 2, 3, 3, 3}})); }},
      {"Embedding", [] { return one(nn::Embedding(10, 4), indices(10, {3, 5})); }},
      {"EmbeddingBag", [] { return one(nn::EmbeddingBag(10, 4), indices(10, {3, 5})); }},
      {"GroupNorm", [] { return one(nn::GroupNorm(2, 4), randn({{3, 4, 5}})); }},
      {"GRU", [] { return one(nn::GRU(nn::GRUOptions(4, 6).num_layers(2)), randn({{5, 3, 4}})); }},
      {"GRUCell", [] { return one(nn::GRUCell(4, 6), randn({{3, 4}})); }},
      {"InstanceNorm1d", [] { return one(nn::InstanceNorm1d(nn::InstanceNorm1dOptions(3).affine(true)), randn({{2, 3, 8}})); }},
      {"InstanceNorm2d", [] { return one(nn::InstanceNorm2d(nn::InstanceNorm2dOptions(3).affine(true)), randn({{2, 3, 5, 5}})); }},
      {"InstanceNorm3d",
       [] { return one(nn::InstanceNorm3d(nn::InstanceNorm3dOptions(3).affine(true)), randn({{2, 3, 4, 4, 4}})); }},
      {"LayerNorm", [] { return one(nn::LayerNorm(nn::LayerNormOptions({5})), randn({{3, 5}})); }},
      {"Linear", [] { return one(nn::Linear(4, 3), randn({{5, 4}})); }},
      {"LSTM", [] { return one(nn::LSTM(nn::LSTMOptions(4, 6).num_layers(2)), randn({{5, 3, 4}})); }},
      {"LSTMCell", [] { return one(nn::LSTMCell(4, 6), randn({{3, 4}})); }},
      {"MultiheadAttention", [] { return three(nn::MultiheadAttention(8, 2), randn({{4, 2, 8}, {4, 2, 8}, {4, 2, 8}})); }},
      {"PReLU", [] { return one(nn::PReLU(), randn({{3, 4}})); }},
      {"RNN", [] { return one(nn::RNN(nn::RNNOptions(4, 6).num_layers(2)), randn({{5, 3, 4}})); }},
      {"RNNCell", [] { return one(nn::RNNCell(4, 6), randn({{3, 4}})); }},
      {"Sequential", [] { return one(nn::Sequential(nn::Linear(3, 4), nn::ReLU(), nn::Linear(4, 2)), randn({{5, 3}})); }},
      {"Transformer", [seq2seq] { return two(nn::Transformer(nn::TransformerOptions(8, 2, 1, 1).dim_feedforward(16)), seq2seq); }},
      {"TransformerDecoder",
       [dec] {
         return two(nn::TransformerDecoder(nn::TransformerDecoderLayer(nn::TransformerDecoderLayerOptions(8, 2).dim_feedforward(16)), 2),
                    dec);
       }},
      {"TransformerDecoderLayer",
       [dec] { return two(nn::TransformerDecoderLayer(nn::TransformerDecoderLayerOptions(8, 2).dim_feedforward(16)), dec); }},
      {"TransformerEncoder",
       [seq] {
         return one(nn::TransformerEncoder(nn::TransformerEncoderLayer(nn::TransformerEncoderLayerOptions(8, 2).dim_feedforward(16)), 2),
                    seq);
       }},
      {"TransformerEncoderLayer",
       [seq] { return one(nn::TransformerEncoderLayer(nn::TransformerEncoderLayerOptions(8, 2).dim_feedforward(16)), seq); }},
  };
}

// Classes with parameters that cannot train on their own, and why (their copies are checked).
std::map<std::string, std::pair<std::function<std::shared_ptr<nn::Module>()>, std::string>> no_training() {
  return {
      {"ModuleList", {[] { return nn::ModuleList(nn::Linear(3, 4)).ptr(); }, "a container without a forward"}},
      {"ModuleDict",
       {[] { return nn::ModuleDict(torch::OrderedDict<std::string, std::shared_ptr<nn::Module>>{{"a", nn::Linear(3, 4).ptr()}}).ptr(); },
        "a container without a forward"}},
      {"ParameterList", {[] { return nn::ParameterList(torch::randn({3}, torch::requires_grad())).ptr(); }, "a container without a forward"}},
      {"ParameterDict",
       {[] { return nn::ParameterDict(torch::OrderedDict<std::string, torch::Tensor>{{"a", torch::randn({3}, torch::requires_grad())}}).ptr(); },
        "a container without a forward"}},
  };
}

using ModuleMakers = std::map<std::string, std::function<std::shared_ptr<nn::Module>()>>;

// The suite's one version test (the library's live in src/compat): classes LibTorch 1.13's headers
// do not declare cannot be named there.
void add_modules_added_by_libtorch_2(ModuleMakers& classes) {
#if TORCH_VERSION_MAJOR >= 2
  classes.emplace("LPPool3d", [] { return nn::LPPool3d(2, 2).ptr(); });
  classes.emplace("ZeroPad1d", [] { return nn::ZeroPad1d(1).ptr(); });
  classes.emplace("ZeroPad3d", [] { return nn::ZeroPad3d(1).ptr(); });
#else
  (void)classes;
#endif
}

// Classes without parameters, built with the arguments they need.
ModuleMakers without_parameters() {
  ModuleMakers classes{
      {"AdaptiveAvgPool1d", [] { return nn::AdaptiveAvgPool1d(2).ptr(); }},
      {"AdaptiveAvgPool2d", [] { return nn::AdaptiveAvgPool2d(2).ptr(); }},
      {"AdaptiveAvgPool3d", [] { return nn::AdaptiveAvgPool3d(2).ptr(); }},
      {"AdaptiveMaxPool1d", [] { return nn::AdaptiveMaxPool1d(2).ptr(); }},
      {"AdaptiveMaxPool2d", [] { return nn::AdaptiveMaxPool2d(2).ptr(); }},
      {"AdaptiveMaxPool3d", [] { return nn::AdaptiveMaxPool3d(2).ptr(); }},
      {"AlphaDropout", [] { return nn::AlphaDropout().ptr(); }},
      {"AvgPool1d", [] { return nn::AvgPool1d(2).ptr(); }},
      {"AvgPool2d", [] { return nn::AvgPool2d(2).ptr(); }},
      {"AvgPool3d", [] { return nn::AvgPool3d(2).ptr(); }},
      {"BCELoss", [] { return nn::BCELoss().ptr(); }},
      {"BCEWithLogitsLoss", [] { return nn::BCEWithLogitsLoss().ptr(); }},
      {"CELU", [] { return nn::CELU().ptr(); }},
      {"CTCLoss", [] { return nn::CTCLoss().ptr(); }},
      {"ConstantPad1d", [] { return nn::ConstantPad1d(nn::ConstantPad1dOptions(1, 0.0)).ptr(); }},
      {"ConstantPad2d", [] { return nn::ConstantPad2d(nn::ConstantPad2dOptions(1, 0.0)).ptr(); }},
      {"ConstantPad3d", [] { return nn::ConstantPad3d(nn::ConstantPad3dOptions(1, 0.0)).ptr(); }},
      {"CosineEmbeddingLoss", [] { return nn::CosineEmbeddingLoss().ptr(); }},
      {"CosineSimilarity", [] { return nn::CosineSimilarity().ptr(); }},
      {"CrossEntropyLoss", [] { return nn::CrossEntropyLoss().ptr(); }},
      {"CrossMapLRN2d", [] { return nn::CrossMapLRN2d(3).ptr(); }},
      {"Dropout", [] { return nn::Dropout().ptr(); }},
      {"Dropout2d", [] { return nn::Dropout2d().ptr(); }},
      {"Dropout3d", [] { return nn::Dropout3d().ptr(); }},
      {"ELU", [] { return nn::ELU().ptr(); }},
      {"FeatureAlphaDropout", [] { return nn::FeatureAlphaDropout().ptr(); }},
      {"Flatten", [] { return nn::Flatten().ptr(); }},
      {"Fold", [] { return nn::Fold(nn::FoldOptions({4, 4}, {2, 2})).ptr(); }},
      {"FractionalMaxPool2d", [] { return nn::FractionalMaxPool2d(nn::FractionalMaxPool2dOptions(2).output_size(1)).ptr(); }},
      {"FractionalMaxPool3d", [] { return nn::FractionalMaxPool3d(nn::FractionalMaxPool3dOptions(2).output_size(1)).ptr(); }},
      {"Functional", [] { return nn::Functional(torch::relu).ptr(); }},
      {"GELU", [] { return nn::GELU().ptr(); }},
      {"GLU", [] { return nn::GLU().ptr(); }},
      {"Hardshrink", [] { return nn::Hardshrink().ptr(); }},
      {"Hardtanh", [] { return nn::Hardtanh().ptr(); }},
      {"HingeEmbeddingLoss", [] { return nn::HingeEmbeddingLoss().ptr(); }},
      {"HuberLoss", [] { return nn::HuberLoss().ptr(); }},
      {"Identity", [] { return nn::Identity().ptr(); }},
      {"KLDivLoss", [] { return nn::KLDivLoss().ptr(); }},
      {"L1Loss", [] { return nn::L1Loss().ptr(); }},
      {"LPPool1d", [] { return nn::LPPool1d(2, 2).ptr(); }},
      {"LPPool2d", [] { return nn::LPPool2d(2, 2).ptr(); }},
      {"LeakyReLU", [] { return nn::LeakyReLU().ptr(); }},
      {"LocalResponseNorm", [] { return nn::LocalResponseNorm(2).ptr(); }},
      {"LogSigmoid", [] { return nn::LogSigmoid().ptr(); }},
      {"LogSoftmax", [] { return nn::LogSoftmax(1).ptr(); }},
      {"MSELoss", [] { return nn::MSELoss().ptr(); }},
      {"MarginRankingLoss", [] { return nn::MarginRankingLoss().ptr(); }},
      {"MaxPool1d", [] { return nn::MaxPool1d(2).ptr(); }},
      {"MaxPool2d", [] { return nn::MaxPool2d(2).ptr(); }},
      {"MaxPool3d", [] { return nn::MaxPool3d(2).ptr(); }},
      {"MaxUnpool1d", [] { return nn::MaxUnpool1d(2).ptr(); }},
      {"MaxUnpool2d", [] { return nn::MaxUnpool2d(2).ptr(); }},
      {"MaxUnpool3d", [] { return nn::MaxUnpool3d(2).ptr(); }},
      {"Mish", [] { return nn::Mish().ptr(); }},
      {"MultiLabelMarginLoss", [] { return nn::MultiLabelMarginLoss().ptr(); }},
      {"MultiLabelSoftMarginLoss", [] { return nn::MultiLabelSoftMarginLoss().ptr(); }},
      {"MultiMarginLoss", [] { return nn::MultiMarginLoss().ptr(); }},
      {"NLLLoss", [] { return nn::NLLLoss().ptr(); }},
      {"PairwiseDistance", [] { return nn::PairwiseDistance().ptr(); }},
      {"PixelShuffle", [] { return nn::PixelShuffle(2).ptr(); }},
      {"PixelUnshuffle", [] { return nn::PixelUnshuffle(2).ptr(); }},
      {"PoissonNLLLoss", [] { return nn::PoissonNLLLoss().ptr(); }},
      {"RReLU", [] { return nn::RReLU().ptr(); }},
      {"ReLU", [] { return nn::ReLU().ptr(); }},
      {"ReLU6", [] { return nn::ReLU6().ptr(); }},
      {"ReflectionPad1d", [] { return nn::ReflectionPad1d(1).ptr(); }},
      {"ReflectionPad2d", [] { return nn::ReflectionPad2d(1).ptr(); }},
      {"ReflectionPad3d", [] { return nn::ReflectionPad3d(1).ptr(); }},
      {"ReplicationPad1d", [] { return nn::ReplicationPad1d(1).ptr(); }},
      {"ReplicationPad2d", [] { return nn::ReplicationPad2d(1).ptr(); }},
      {"ReplicationPad3d", [] { return nn::ReplicationPad3d(1).ptr(); }},
      {"SELU", [] { return nn::SELU().ptr(); }},
      {"SiLU", [] { return nn::SiLU().ptr(); }},
      {"Sigmoid", [] { return nn::Sigmoid().ptr(); }},
      {"SmoothL1Loss", [] { return nn::SmoothL1Loss().ptr(); }},
      {"SoftMarginLoss", [] { return nn::SoftMarginLoss().ptr(); }},
      {"Softmax", [] { return nn::Softmax(1).ptr(); }},
      {"Softmax2d", [] { return nn::Softmax2d().ptr(); }},
      {"Softmin", [] { return nn::Softmin(1).ptr(); }},
      {"Softplus", [] { return nn::Softplus().ptr(); }},
      {"Softshrink", [] { return nn::Softshrink().ptr(); }},
      {"Softsign", [] { return nn::Softsign().ptr(); }},
      {"Tanh", [] { return nn::Tanh().ptr(); }},
      {"Tanhshrink", [] { return nn::Tanhshrink().ptr(); }},
      {"Threshold", [] { return nn::Threshold(0.1, 0.0).ptr(); }},
      {"TripletMarginLoss", [] { return nn::TripletMarginLoss().ptr(); }},
      {"TripletMarginWithDistanceLoss", [] { return nn::TripletMarginWithDistanceLoss().ptr(); }},
      {"Unflatten", [] { return nn::Unflatten(1, std::vector<std::int64_t>{2, 2}).ptr(); }},
      {"Unfold", [] { return nn::Unfold(2).ptr(); }},
      {"Upsample", [] { return nn::Upsample().ptr(); }},
      {"ZeroPad2d", [] { return nn::ZeroPad2d(1).ptr(); }},
  };
  add_modules_added_by_libtorch_2(classes);
  return classes;
}

// The gradient a parameter's AccumulateGrad node leaves in .grad(), read by a hook on that node
// (after the Monitor's, which goes first).
struct CaptureGrad : torch::autograd::FunctionPostHook {
  CaptureGrad(torch::Tensor p, torch::Tensor* out) : param(std::move(p)), out(out) {}
  torch::autograd::variable_list operator()(const torch::autograd::variable_list& outputs,
                                            const torch::autograd::variable_list& /*inputs*/) override {
    *out = param.grad().detach().clone();
    return outputs;
  }
  torch::Tensor param;
  torch::Tensor* out;
};

struct Trained {
  std::vector<double> losses;
  std::vector<std::vector<torch::Tensor>> params;
  int checked = 0;
};

// Three SGD steps of `make()` on (output * a fixed random weight).sum(); with `monitored`, each
// recorded parameter figure is compared with its accumulator's gradient.
Trained train(const std::function<Built()>& make, bool monitored) {
  torch::manual_seed(0);
  Built b = make();
  std::unique_ptr<Monitor> monitor = monitored ? std::make_unique<Monitor>(*b.module) : nullptr;
  std::map<std::string, torch::Tensor> truth;
  std::vector<NodeRef> accumulators;  // our hooks live on them
  if (monitored)
    for (const auto& item : b.module->named_parameters()) {
      auto acc = torch::autograd::impl::grad_accumulator(item.value());
      acc->add_post_hook(std::make_unique<CaptureGrad>(item.value(), &truth[item.key()]));
      accumulators.push_back(acc);
    }
  auto g = at::detail::createCPUGenerator(1);
  torch::optim::SGD opt(b.module->parameters(), 0.05);
  Trained t;
  for (int step = 0; step < 3; ++step) {
    opt.zero_grad();
    const torch::Tensor out = b.forward(b.inputs(g));
    const torch::Tensor loss = (out * torch::randn(out.sizes(), g)).sum();
    if (monitor) monitor->watch(loss);
    loss.backward();
    if (monitor) {
      const Trace& trace = monitor->trace();
      for (const auto& [name, grad] : truth) {
        const Record* r = trace.steps().back().find(trace.find(name));
        EXPECT_NE(r, nullptr) << name;
        if (!r) continue;
        expect_stats_equal(r->grad, grad, 1e-9, name);
        ++t.checked;
      }
    }
    opt.step();
    t.losses.push_back(loss.item<double>());
    std::vector<torch::Tensor> now;
    for (const auto& p : b.module->parameters()) now.push_back(p.detach().clone());
    t.params.push_back(now);
  }
  for (const auto& acc : accumulators) acc->post_hooks().pop_back();
  return t;
}

void expect_same_training(const Trained& a, const Trained& b) {
  EXPECT_EQ(a.losses, b.losses);
  ASSERT_EQ(a.params.size(), b.params.size());
  for (std::size_t s = 0; s < a.params.size(); ++s)
    for (std::size_t i = 0; i < a.params[s].size(); ++i) EXPECT_TRUE(torch::equal(a.params[s][i], b.params[s][i]));
}

// What an operation on a module did: the parameters it gave, or what it threw.
struct Outcome {
  std::vector<torch::Tensor> params;
  std::string error;
};

Outcome outcome_of(const std::function<std::shared_ptr<nn::Module>()>& op) {
  Outcome o;
  try {
    for (const auto& p : op()->parameters()) o.params.push_back(p.detach().clone());
  } catch (const std::exception& e) {
    o.error = e.what();
    o.error = o.error.substr(0, o.error.find('\n'));
  }
  return o;
}

// torch::save then torch::load into a fresh module, and clone(): with a Monitor attached, the
// same parameters or the same error as without gradflow.
void expect_copies_behave(const std::function<std::shared_ptr<nn::Module>()>& make) {
  auto copies = [&](bool monitored) {
    torch::manual_seed(0);
    auto module = make();
    std::unique_ptr<Monitor> monitor = monitored ? std::make_unique<Monitor>(*module) : nullptr;
    auto saved = outcome_of([&] {
      std::stringstream stream;
      torch::save(module, stream);
      torch::manual_seed(1);
      auto loaded = make();
      torch::load(loaded, stream);
      return loaded;
    });
    return std::make_pair(saved, outcome_of([&] { return module->clone(); }));
  };
  const auto bare = copies(false);
  const auto watched = copies(true);
  for (const auto& [a, b] : {std::make_pair(bare.first, watched.first), std::make_pair(bare.second, watched.second)}) {
    EXPECT_EQ(a.error, b.error);
    ASSERT_EQ(a.params.size(), b.params.size());
    for (std::size_t i = 0; i < a.params.size(); ++i) EXPECT_TRUE(torch::equal(a.params[i], b.params[i]));
  }
}

class ConformanceTest : public test::TorchTest {};

TEST_F(ConformanceTest, EveryModuleClassTheHeadersDeclareIsCoveredOrNamed) {
  const auto classes = module_classes();
  ASSERT_GT(classes.size(), 100u) << "LibTorch's module headers were not found under " << GRADFLOW_TORCH_INCLUDE_DIRS;
  const auto trained = with_parameters();
  const auto held = no_training();
  const auto without = without_parameters();
  for (const auto& name : classes) {
    SCOPED_TRACE(name);
    const bool covered = trained.count(name) + held.count(name) + without.count(name) == 1;
    EXPECT_TRUE(covered) << name << " is new or listed twice: give it a case";
    if (auto it = without.find(name); it != without.end()) EXPECT_TRUE(it->second()->parameters().empty());
  }
  std::printf("module classes of LibTorch %s: %zu declared, %zu with parameters trained, %zu skipped for training "
              "(containers without a forward), %zu without parameters\n",
              TORCH_VERSION, classes.size(), trained.size(), held.size(), without.size());
}

TEST_F(ConformanceTest, TrainingIsBitIdenticalAndEveryParameterFigureIsItsAccumulators) {
  for (const auto& [name, make] : with_parameters()) {
    SCOPED_TRACE(name);
    const Trained bare = train(make, false);
    const Trained watched = train(make, true);
    expect_same_training(bare, watched);
    EXPECT_GT(watched.checked, 0);
  }
}

TEST_F(ConformanceTest, SaveLoadAndCloneBehaveAsWithoutGradflow) {
  for (const auto& [name, make] : with_parameters()) {
    SCOPED_TRACE(name);
    expect_copies_behave([make = make] { return make().module; });
  }
  for (const auto& [name, entry] : no_training()) {
    SCOPED_TRACE(name);
    expect_copies_behave(entry.first);
  }
}

TEST_F(ConformanceTest, ACloneTrainsWithoutBeingRecorded) {
  nn::Sequential model(nn::Linear(4, 8), nn::Tanh(), nn::Linear(8, 2));
  Monitor monitor(*model);
  auto loss = model->forward(torch::randn({3, 4})).sum();
  monitor.watch(loss);
  loss.backward();
  const auto steps = monitor.completed_steps();
  const Trace before = monitor.trace();
  auto twin = std::dynamic_pointer_cast<nn::SequentialImpl>(model->clone());
  ASSERT_TRUE(twin);
  twin->forward(torch::randn({3, 4})).sum().backward();
  EXPECT_EQ(monitor.completed_steps(), steps);
  const Trace& after = monitor.trace();
  ASSERT_EQ(after.steps().size(), before.steps().size());
  for (std::size_t i = 0; i < before.steps().back().records.size(); ++i)
    EXPECT_EQ(after.steps().back().records[i].grad.sum_sq, before.steps().back().records[i].grad.sum_sq);
}

TEST_F(ConformanceTest, AModelMovedToDoubleIsStillRecorded) {
  const auto make = [] { return one(nn::Sequential(nn::Linear(4, 8), nn::Tanh(), nn::Linear(8, 2)), randn({{5, 4}})); };
  const auto moved = [make] {
    Built b = make();
    b.module->to(torch::kDouble);  // every parameter gets a new accumulator
    auto forward = b.forward;
    b.forward = [forward](const Inputs& x) { return forward({x[0].to(torch::kDouble)}); };
    return b;
  };
  expect_same_training(train(moved, false), train(moved, true));
  // Moved after attaching: the Monitor hooks the new accumulators at the next forward.
  torch::manual_seed(0);
  Built b = make();
  Monitor monitor(*b.module);
  b.module->to(torch::kDouble);
  auto loss = b.forward({torch::randn({5, 4}, torch::kDouble)}).sum();
  monitor.watch(loss);
  loss.backward();
  const Trace& trace = monitor.trace();
  for (const auto& item : b.module->named_parameters()) {
    const Record* r = trace.steps().back().find(trace.find(item.key()));
    ASSERT_NE(r, nullptr) << item.key();
    expect_stats_equal(r->grad, item.value().grad(), 1e-12, item.key());
  }
}

TEST_F(ConformanceTest, SparseGradientsAreRecordedAsTheDenseGradientTheyStandFor) {
  const auto make = [] { return one(nn::Embedding(nn::EmbeddingOptions(20, 4).sparse(true)), indices(20, {3, 5})); };
  expect_same_training(train(make, false), train(make, true));
}

// A TorchScript module with submodules, trained three steps by hand: with a Monitor attached
// (its identity op after every submodule call) the parameters come out bit-identical.
std::vector<torch::Tensor> train_script(bool monitored) {
  torch::manual_seed(3);
  torch::jit::Module m("Net");
  for (const char* name : {"a", "b"}) {
    torch::jit::Module sub(std::string("Sub_") + name);
    sub.register_parameter("weight", (torch::randn({4, 4}) * 0.5).requires_grad_(), false);
    sub.define("def forward(self, x):\n  return torch.tanh(torch.mm(x, self.weight))\n");
    m.register_module(name, sub);
  }
  m.define("def forward(self, x):\n  return self.b.forward(self.a.forward(x))\n");
  std::unique_ptr<Monitor> monitor;
  if (monitored) {
    monitor = std::make_unique<Monitor>();
    monitor->attach(m);
  }
  auto g = at::detail::createCPUGenerator(2);
  for (int step = 0; step < 3; ++step) {
    auto loss = m.forward({torch::randn({5, 4}, g)}).toTensor().square().sum();
    if (monitor) monitor->watch(loss);
    loss.backward();
    torch::NoGradGuard no_grad;
    for (const auto& p : m.parameters()) {
      p.sub_(0.1 * p.grad());
      p.mutable_grad().zero_();
    }
  }
  std::vector<torch::Tensor> out;
  for (const auto& p : m.parameters()) out.push_back(p.detach().clone());
  return out;
}

TEST_F(ConformanceTest, ATorchScriptModuleTrainsBitIdenticallyWithTheMonitorsOperators) {
  const auto bare = train_script(false);
  const auto watched = train_script(true);
  ASSERT_EQ(bare.size(), watched.size());
  for (std::size_t i = 0; i < bare.size(); ++i) EXPECT_TRUE(torch::equal(bare[i], watched[i]));
}

// An optimizer of each class the headers declare, for `params`.
std::map<std::string, std::function<std::unique_ptr<torch::optim::Optimizer>(std::vector<torch::Tensor>)>> optimizers() {
  using P = std::vector<torch::Tensor>;
  return {
      {"SGD", [](P p) { return std::make_unique<torch::optim::SGD>(p, torch::optim::SGDOptions(0.05).momentum(0.9)); }},
      {"Adam", [](P p) { return std::make_unique<torch::optim::Adam>(p); }},
      {"AdamW", [](P p) { return std::make_unique<torch::optim::AdamW>(p); }},
      {"Adagrad", [](P p) { return std::make_unique<torch::optim::Adagrad>(p); }},
      {"RMSprop", [](P p) { return std::make_unique<torch::optim::RMSprop>(p); }},
      {"LBFGS", [](P p) { return std::make_unique<torch::optim::LBFGS>(p, torch::optim::LBFGSOptions(0.5).max_iter(3)); }},
  };
}

// Three optimizer steps (a closure for LBFGS); with a Monitor told of each step, every record's
// produced gradient and the applied one are compared with .grad() where each was taken.
std::vector<torch::Tensor> train_with(const std::string& name, bool monitored, int* checked) {
  torch::manual_seed(0);
  nn::Sequential model(nn::Linear(4, 8), nn::Tanh(), nn::Linear(8, 2));
  auto opt = optimizers().at(name)(model->parameters());
  std::unique_ptr<Monitor> monitor = monitored ? std::make_unique<Monitor>(*model) : nullptr;
  auto g = at::detail::createCPUGenerator(1);
  std::vector<torch::Tensor> produced;  // .grad() of the first parameter after each backward
  torch::Tensor x;
  auto closure = [&] {
    opt->zero_grad();
    auto loss = model->forward(x).square().mean();
    if (monitor) monitor->watch(loss);
    loss.backward();
    produced.push_back(model->parameters()[0].grad().clone());
    return loss;
  };
  for (int step = 0; step < 3; ++step) {
    x = torch::randn({6, 4}, g);
    if (name == "LBFGS") {
      if (monitor) monitor->optimizer_step(*opt, closure);
      else opt->step(closure);
      continue;
    }
    closure();
    if (monitor) monitor->optimizer_step(*opt);
    else opt->step();
  }
  if (monitor) {
    const Trace& trace = monitor->trace();
    const int w = trace.find("0.weight");
    EXPECT_EQ(trace.steps().size(), produced.size());  // one record per backward (LBFGS: per evaluation)
    for (std::size_t k = 0; k < std::min(trace.steps().size(), produced.size()); ++k) {
      const Record* r = trace.steps()[k].find(w);
      EXPECT_NE(r, nullptr);
      if (!r) continue;
      expect_stats_equal(r->grad, produced[k], 1e-9, name + " produced");
      if (name != "LBFGS") {
        EXPECT_TRUE(r->applied.has_value());
        if (r->applied) expect_stats_equal(*r->applied, produced[k], 1e-9, name + " applied");
      }
      ++*checked;
    }
  }
  std::vector<torch::Tensor> params;
  for (const auto& p : model->parameters()) params.push_back(p.detach().clone());
  return params;
}

TEST_F(ConformanceTest, EveryOptimizerTheHeadersDeclareTrainsBitIdenticallyAndItsGradientsAreRecorded) {
  const auto classes = optimizer_classes();
  ASSERT_GE(classes.size(), 6u);
  for (const auto& name : classes) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(optimizers().count(name)) << name << " is new: give it a case";
    int checked = 0;
    const auto bare = train_with(name, false, &checked);
    const auto watched = train_with(name, true, &checked);
    for (std::size_t i = 0; i < bare.size(); ++i) EXPECT_TRUE(torch::equal(bare[i], watched[i]));
    EXPECT_GE(checked, 3);
  }
  std::printf("optimizers of LibTorch %s: %zu, every one passed\n", TORCH_VERSION, classes.size());
}

}  // namespace
}  // namespace gradflow
