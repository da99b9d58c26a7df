#include "gradflow/model_traits.h"

#include <algorithm>
#include <cstdlib>
#include <vector>

#include <fmt/format.h>

#include "gradflow/error.h"
#include "util/enum_names.h"
#include "util/text.h"

namespace gradflow {

namespace {

using detail::Named;
using detail::name_of;
using detail::names_of;
using detail::value_of;

constexpr Named<Init> kInits[] = {
    {Init::unknown, ""},           {Init::default_init, "default"},    {Init::xavier_uniform, "xavier_uniform"},
    {Init::xavier_normal, "xavier_normal"}, {Init::he_uniform, "he_uniform"}, {Init::he_normal, "he_normal"},
    {Init::orthogonal, "orthogonal"}, {Init::identity, "identity"},
};
constexpr Named<Norm> kNorms[] = {{Norm::none, "none"}, {Norm::batch, "batch"}, {Norm::layer, "layer"}};
constexpr Named<Cell> kCells[] = {
    {Cell::none, ""}, {Cell::rnn_tanh, "rnn_tanh"}, {Cell::rnn_relu, "rnn_relu"}, {Cell::lstm, "lstm"}, {Cell::gru, "gru"}};
constexpr Named<NormPlacement> kPlacements[] = {
    {NormPlacement::none, "none"}, {NormPlacement::post, "post"}, {NormPlacement::pre, "pre"}};
constexpr const char* kNormalPrefix = "normal:";

template <class E, std::size_t N>
E parse(const Named<E> (&table)[N], const std::string& name, const char* what, const std::vector<std::string>& extra = {}) {
  if (auto v = value_of(table, name)) return *v;
  std::vector<std::string> valid = names_of(table);
  valid.insert(valid.end(), extra.begin(), extra.end());
  throw UsageError(fmt::format("unknown {} '{}': valid ones are {}", what, name, detail::join(valid)));
}

}  // namespace

std::string to_string(const InitSpec& init) {
  if (init.kind == Init::normal) return kNormalPrefix + fmt::format("{:g}", init.std);
  return name_of(kInits, init.kind);
}
const char* to_string(Norm norm) { return name_of(kNorms, norm); }
const char* to_string(Cell cell) { return name_of(kCells, cell); }
const char* to_string(NormPlacement placement) { return name_of(kPlacements, placement); }

InitSpec init_from_string(const std::string& name) {
  if (name.rfind(kNormalPrefix, 0) == 0) {
    const std::string num = name.substr(std::char_traits<char>::length(kNormalPrefix));
    char* end = nullptr;
    const double std = std::strtod(num.c_str(), &end);
    if (num.empty() || *end != '\0' || !(std > 0))
      throw UsageError("init '" + name + "': write normal:STD with a positive standard deviation, e.g. normal:0.01");
    return InitSpec{Init::normal, std};
  }
  return InitSpec{parse(kInits, name, "init", {"normal:STD"}), 0.0};
}
Norm norm_from_string(const std::string& name) { return parse(kNorms, name, "norm"); }
Cell cell_from_string(const std::string& name) { return parse(kCells, name, "cell"); }
NormPlacement norm_placement_from_string(const std::string& name) {
  return parse(kPlacements, name, "LayerNorm placement");
}

bool is_he(const InitSpec& i) { return i.kind == Init::he_normal || i.kind == Init::he_uniform; }
bool is_xavier(const InitSpec& i) { return i.kind == Init::xavier_normal || i.kind == Init::xavier_uniform; }
bool is_plain(const InitSpec& i) { return i.kind == Init::default_init || i.kind == Init::normal; }

namespace {

// "torch::nn::BatchNorm2dImpl" -> "BatchNorm2d"; "__torch__.torch.nn.modules.rnn.LSTM" -> "LSTM".
std::string class_name(const std::string& kind) {
  std::string name = kind.substr(kind.find_last_of(":.") == std::string::npos ? 0 : kind.find_last_of(":.") + 1);
  const std::string impl = "Impl";
  if (name.size() > impl.size() && name.compare(name.size() - impl.size(), impl.size(), impl) == 0)
    name.resize(name.size() - impl.size());
  return name;
}

struct KindTrait {
  const char* name;
  Activation activation;
};
constexpr KindTrait kActivationModules[] = {
    {"ReLU", Activation::relu}, {"LeakyReLU", Activation::leaky_relu}, {"GELU", Activation::gelu},
    {"Tanh", Activation::tanh}, {"Sigmoid", Activation::sigmoid},      {"ELU", Activation::elu},
    {"SELU", Activation::selu}, {"Softsign", Activation::softsign},
};

}  // namespace

ModelTraits traits_from_module_kinds(const std::vector<std::string>& kinds) {
  ModelTraits t;
  std::vector<Activation> used;
  for (const auto& kind : kinds) {
    const std::string name = class_name(kind);
    if (name.rfind("BatchNorm", 0) == 0 || name == "SyncBatchNorm") t.norm = Norm::batch;
    else if ((name == "LayerNorm" || name == "GroupNorm") && t.norm == Norm::none) t.norm = Norm::layer;
    // A vanilla RNN's nonlinearity is an option, not its class: recurrent, cell unknown.
    t.recurrent = t.recurrent || name == "RNN" || name == "RNNCell";
    const Cell cell = name == "LSTM" || name == "LSTMCell" ? Cell::lstm : name == "GRU" || name == "GRUCell" ? Cell::gru : Cell::none;
    if (cell != Cell::none && t.cell == Cell::none) t.cell = cell;
    for (const auto& a : kActivationModules)
      if (name == a.name && std::find(used.begin(), used.end(), a.activation) == used.end()) used.push_back(a.activation);
  }
  t.recurrent = t.recurrent || t.cell != Cell::none;
  if (used.size() == 1) t.activation = used.front();
  return t;
}

ModelTraits with_shown_traits(ModelTraits said, const ModelTraits& shown) {
  if (said.norm == Norm::none) said.norm = shown.norm;
  if (said.cell == Cell::none) said.cell = shown.cell;
  said.recurrent = said.recurrent || shown.recurrent;
  if (said.activation == Activation::none) said.activation = shown.activation;
  return said;
}

}  // namespace gradflow
