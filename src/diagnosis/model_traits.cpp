#include "gradflow/model_traits.h"

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

bool is_he(const InitSpec& i) { return i.kind == Init::he_normal || i.kind == Init::he_uniform; }
bool is_xavier(const InitSpec& i) { return i.kind == Init::xavier_normal || i.kind == Init::xavier_uniform; }
bool is_plain(const InitSpec& i) { return i.kind == Init::default_init || i.kind == Init::normal; }

}  // namespace gradflow
