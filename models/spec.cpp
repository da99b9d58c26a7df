#include "models/spec.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <algorithm>
#include <set>

#include "gradflow/error.h"
#include "util/text.h"

namespace gradflow::models {

namespace {

std::string trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t");
  if (b == std::string::npos) return "";
  const auto e = s.find_last_not_of(" \t");
  return s.substr(b, e - b + 1);
}

bool parse_double(const std::string& s, double& out) {
  if (s.empty()) return false;
  errno = 0;
  char* end = nullptr;
  out = std::strtod(s.c_str(), &end);
  return errno == 0 && end == s.c_str() + s.size() && std::isfinite(out);
}

bool parse_int(const std::string& s, std::int64_t& out) {
  if (s.empty()) return false;
  errno = 0;
  char* end = nullptr;
  const long long v = std::strtoll(s.c_str(), &end, 10);
  if (errno != 0 || end != s.c_str() + s.size()) return false;
  out = v;
  return true;
}

const std::vector<std::string> kActs = {"sigmoid", "tanh",  "relu",  "leaky_relu", "elu",
                                        "selu",    "gelu",  "softsign", "identity"};
const std::vector<std::string> kInits = {"default",   "xavier_uniform", "xavier_normal", "he_uniform",
                                         "he_normal", "orthogonal",     kNormalChoice};
const std::vector<std::string> kDtypes = {"float32", "float64"};

OptionDef choice(std::string key, std::string def, std::vector<std::string> choices, std::string help) {
  OptionDef o;
  o.key = std::move(key);
  o.default_value = std::move(def);
  o.choices = std::move(choices);
  o.help = std::move(help);
  o.type = OptionType::choice;
  return o;
}

OptionDef integer(std::string key, std::string def, double min, double max, std::string help) {
  OptionDef o;
  o.key = std::move(key);
  o.default_value = std::move(def);
  o.type = OptionType::integer;
  o.min = min;
  o.max = max;
  o.help = std::move(help);
  return o;
}

OptionDef remedy(OptionDef o) {
  o.remedy = true;
  return o;
}

OptionDef real(std::string key, std::string def, double min, double max, std::string help) {
  OptionDef o = integer(std::move(key), std::move(def), min, max, std::move(help));
  o.type = OptionType::real;
  return o;
}

void check_value(const FamilyDef& fam, const OptionDef& o, const std::string& value) {
  const std::string where = "'" + o.key + "' of " + fam.name;
  switch (o.type) {
    case OptionType::integer: {
      std::int64_t v = 0;
      if (!parse_int(value, v))
        throw UsageError("value '" + value + "' for " + where + " is not a whole number");
      if (v < o.min || v > o.max)
        throw UsageError("value " + value + " for " + where + " is out of range: use " +
                         std::to_string(static_cast<std::int64_t>(o.min)) + " to " +
                         std::to_string(static_cast<std::int64_t>(o.max)));
      return;
    }
    case OptionType::real: {
      double v = 0;
      if (o.key == "forget_bias" && value == "default") return;
      if (!parse_double(value, v)) throw UsageError("value '" + value + "' for " + where + " is not a number");
      if (v < o.min || v > o.max)
        throw UsageError("value " + value + " for " + where + " is out of range: use " +
                         std::to_string(o.min) + " to " + std::to_string(o.max));
      return;
    }
    case OptionType::choice: {
      for (const auto& c : o.choices) {
        if (c == value) return;
        if (c == kNormalChoice && value.rfind("normal:", 0) == 0) {
          double sd = 0;
          try {
            sd = init_from_string(value).std;
          } catch (const Error&) {
          }
          if (!(sd > 0 && sd <= 100))
            throw UsageError("value '" + value + "' for " + where +
                             ": the standard deviation must be a number in (0, 100], e.g. normal:0.01");
          return;
        }
      }
      throw UsageError("unknown value '" + value + "' for " + where + ": choose one of " + detail::join(o.choices));
    }
  }
}

// Options whose valid values depend on each other.
void check_together(const ResolvedSpec& r) {
  if (r.family == "transformer" && r.get_int("width") % r.get_int("heads") != 0)
    throw UsageError("heads=" + r.get("heads") + " does not divide width=" + r.get("width") +
                     ": choose a width that is a multiple of the number of heads");
  if (r.family == "transformer" && r.get_int("base_width") % r.get_int("heads") != 0)
    throw UsageError("heads=" + r.get("heads") + " does not divide base_width=" + r.get("base_width") +
                     ": choose a base width that is a multiple of the number of heads");
}

}  // namespace

Spec parse_spec(const std::string& text_in) {
  const std::string text = trim(text_in);
  Spec s;
  const auto colon = text.find(':');
  s.name = trim(text.substr(0, colon));
  if (s.name.empty())
    throw UsageError("empty model spec '" + text_in + "': write NAME[:key=value,...], e.g. mlp:depth=20");
  if (colon == std::string::npos) return s;
  const std::string rest = text.substr(colon + 1);
  std::set<std::string> seen;
  std::size_t pos = 0;
  while (pos <= rest.size()) {
    const auto comma = rest.find(',', pos);
    const std::string item = trim(rest.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos));
    pos = comma == std::string::npos ? rest.size() + 1 : comma + 1;
    if (item.empty()) {
      if (comma == std::string::npos && s.options.empty() && rest.empty()) break;
      throw UsageError("empty option in spec '" + text_in + "': separate key=value pairs with single commas");
    }
    const auto eq = item.find('=');
    if (eq == std::string::npos)
      throw UsageError("option '" + item + "' in spec '" + text_in + "' has no value: write key=value");
    const std::string key = trim(item.substr(0, eq));
    const std::string value = trim(item.substr(eq + 1));
    if (key.empty()) throw UsageError("option '" + item + "' in spec '" + text_in + "' has no key");
    if (value.empty()) throw UsageError("option '" + key + "' in spec '" + text_in + "' has an empty value");
    if (!seen.insert(key).second)
      throw UsageError("option '" + key + "' is given twice in spec '" + text_in + "'");
    s.options.emplace_back(key, value);
  }
  return s;
}

const std::vector<FamilyDef>& families() {
  static const std::vector<FamilyDef> f = [] {
    std::vector<FamilyDef> v;
    FamilyDef mlp{"mlp", "fully connected network: depth weight layers, width units each", "teacher", {}};
    mlp.options = {
        integer("depth", "20", 2, 1000, "weight layers, output layer included"),
        integer("width", "128", 1, 65536, "units per hidden layer"),
        remedy(choice("act", "sigmoid", kActs, "hidden activation")),
        remedy(choice("init", "default", kInits, "weight initialisation (default: LibTorch's)")),
        remedy(choice("norm", "none", {"none", "batch", "layer"}, "normalisation before each activation")),
        remedy(choice("residual", "0", {"0", "1"}, "identity skip around each hidden block")),
        choice("param", "sp", {"sp", "mup"}, "parametrisation: sp, or mup (Tensor Programs V, Table 3: read-out variance, learning rates per weight kind)"),
        integer("base_width", "64", 2, 65536, "the width at which mup equals sp"),
        choice("dtype", "float32", kDtypes, "parameter and data type"),
    };
    v.push_back(mlp);
    FamilyDef cnn{"cnn", "conv stack on small synthetic images (3x8x8), global pooling, linear head", "images", {}};
    cnn.options = {
        integer("depth", "10", 2, 200, "weight layers: depth-1 3x3 convs and the head"),
        integer("channels", "16", 1, 1024, "channels per conv"),
        remedy(choice("act", "relu", kActs, "activation after each conv")),
        remedy(choice("init", "default", kInits, "weight initialisation")),
        remedy(choice("norm", "none", {"none", "batch", "layer"}, "normalisation after each conv (layer = GroupNorm with 1 group)")),
        remedy(choice("residual", "0", {"0", "1"}, "identity skip around each conv block")),
        choice("param", "sp", {"sp", "mup"}, "parametrisation: sp, or mup (Tensor Programs V, Table 3: read-out variance, learning rates per weight kind)"),
        integer("base_width", "64", 2, 65536, "the channels at which mup equals sp"),
        choice("dtype", "float32", kDtypes, "parameter and data type"),
    };
    v.push_back(cnn);
    FamilyDef rnn{"rnn", "recurrent net unrolled one step at a time; linear readout", "adding", {}};
    rnn.options = {
        remedy(choice("cell", "rnn_tanh", {"rnn_tanh", "rnn_relu", "lstm", "gru"}, "recurrent cell")),
        integer("hidden", "64", 1, 8192, "hidden units"),
        integer("layers", "1", 1, 16, "stacked recurrent layers"),
        remedy(choice("init", "default", {"default", "orthogonal", "identity", "xavier_uniform"},
               "recurrent weight initialisation (identity: the IRNN of Le et al. 2015)")),
        remedy(real("forget_bias", "default", -100, 100, "LSTM forget-gate bias (default: LibTorch's init; 1 per Gers, Jozefowicz)")),
        remedy(real("scale", "0", 0, 100, "if > 0, rescale each recurrent matrix to this largest singular value")),
        choice("dtype", "float32", kDtypes, "parameter and data type"),
    };
    v.push_back(rnn);
    FamilyDef tf{"transformer",
                 "Transformer encoder: depth blocks of multi-head self-attention and a ReLU MLP (4 x width), "
                 "sinusoidal positions, a linear read-out at every position",
                 "count", {}};
    tf.options = {
        integer("depth", "6", 1, 96, "encoder blocks"),
        integer("width", "64", 2, 4096, "model width d (the MLP's hidden layer is 4 d)"),
        integer("heads", "4", 1, 64, "attention heads; must divide width"),
        remedy(choice("ln", "post", {"post", "pre"},
                      "LayerNorm after each residual addition (post) or at the start of each branch (pre)")),
        remedy(integer("warmup", "0", 0, 1000000, "linear learning-rate warm-up over this many steps (0: none)")),
        choice("param", "sp", {"sp", "mup"}, "parametrisation: sp, or mup (Tensor Programs V, Table 3: read-out variance, learning rates per weight kind, attention logits 1/d_head)"),
        integer("base_width", "64", 2, 65536, "the width at which mup equals sp"),
        choice("dtype", "float32", kDtypes, "parameter and data type"),
    };
    v.push_back(tf);
    return v;
  }();
  return f;
}

const std::vector<Preset>& presets() {
  static const std::vector<Preset> p = {
      {"plain", "mlp:depth=20,width=128,act=sigmoid,init=default", "deep sigmoid MLP, default init: the vanishing gradient"},
      {"tanh", "mlp:depth=20,width=128,act=tanh,init=default", "deep tanh MLP, default init"},
      {"relu", "mlp:depth=20,width=128,act=relu,init=default", "ReLU with LibTorch's default init"},
      {"he", "mlp:depth=20,width=128,act=relu,init=he_normal", "ReLU with He initialisation"},
      {"xavier", "mlp:depth=20,width=128,act=tanh,init=xavier_normal", "tanh with Xavier initialisation"},
      {"batchnorm", "mlp:depth=20,width=128,act=sigmoid,init=default,norm=batch", "deep sigmoid MLP with batch norm"},
      {"residual", "mlp:depth=20,width=128,act=sigmoid,init=default,residual=1", "deep sigmoid MLP with residual connections"},
      {"exploding", "mlp:depth=20,width=128,act=relu,init=normal:0.2", "ReLU with too large an init: the exploding gradient"},
      {"cnn", "cnn:depth=10,channels=16,act=relu,init=default", "plain conv net"},
      {"cnn_residual", "cnn:depth=10,channels=16,act=relu,init=default,norm=batch,residual=1", "residual conv net with batch norm"},
      {"rnn", "rnn:cell=rnn_tanh,hidden=64", "vanilla tanh RNN"},
      {"irnn", "rnn:cell=rnn_relu,hidden=64,init=identity", "ReLU RNN with identity recurrent init (IRNN)"},
      {"lstm", "rnn:cell=lstm,hidden=64", "LSTM"},
      {"gru", "rnn:cell=gru,hidden=64", "GRU"},
      {"post_ln", "transformer:depth=6,width=64,heads=4,ln=post", "Transformer with post-LN, the original placement"},
      {"pre_ln", "transformer:depth=6,width=64,heads=4,ln=pre", "Transformer with pre-LN (LayerNorm inside the residual branch)"},
  };
  return p;
}

const char* width_option(const std::string& family) {
  if (family == "cnn") return "channels";
  if (family == "rnn") return "hidden";
  return "width";
}

ResolvedSpec ResolvedSpec::with_width(std::int64_t width) const {
  ResolvedSpec r = *this;
  r.values[width_option(family)] = std::to_string(width);
  r.preset.clear();
  check_together(r);
  return r;
}

const std::string& ResolvedSpec::get(const std::string& key) const {
  auto it = values.find(key);
  if (it == values.end()) throw Error("spec of family " + family + " has no option '" + key + "'");
  return it->second;
}

std::int64_t ResolvedSpec::get_int(const std::string& key) const {
  std::int64_t v = 0;
  if (!parse_int(get(key), v)) throw Error("option '" + key + "' is not a whole number");
  return v;
}

double ResolvedSpec::get_real(const std::string& key) const {
  double v = 0;
  if (!parse_double(get(key), v)) throw Error("option '" + key + "' is not a number");
  return v;
}

std::string ResolvedSpec::canonical() const {
  std::string out = family;
  char sep = ':';
  for (const auto& fam : families()) {
    if (fam.name != family) continue;
    for (const auto& o : fam.options) {
      out += sep + o.key + "=" + values.at(o.key);
      sep = ',';
    }
  }
  return out;
}

std::string ResolvedSpec::label() const { return preset.empty() ? canonical() : preset; }

namespace {

// Every Transformer block adds its branches to the stream; its weights start Xavier-uniform.
ModelTraits transformer_traits(const ResolvedSpec& s) {
  ModelTraits t;
  t.activation = Activation::relu;
  t.init = InitSpec{Init::xavier_uniform, 0.0};
  t.norm = Norm::layer;
  t.residual = true;
  t.norm_placement = norm_placement_from_string(s.get("ln"));
  t.warmup_steps = s.get_int("warmup");
  return t;
}

}  // namespace

ModelTraits ResolvedSpec::traits() const {
  if (family == "transformer") return transformer_traits(*this);
  ModelTraits t;
  t.recurrent = family == "rnn";
  t.init = init_from_string(get("init"));
  if (t.recurrent) {
    t.cell = cell_from_string(get("cell"));
    if (get("forget_bias") != "default") t.forget_bias = get_real("forget_bias");
    t.recurrent_scale = get_real("scale");
  } else {
    t.activation = activation_from_string(get("act"));
    t.norm = norm_from_string(get("norm"));
    t.residual = get("residual") == "1";
  }
  return t;
}

bool ResolvedSpec::is_remedy(const std::string& key) const {
  for (const auto& f : families())
    if (f.name == family)
      for (const auto& o : f.options)
        if (o.key == key) return o.remedy;
  return false;
}

ResolvedSpec resolve_spec(const std::string& text) {
  Spec s = parse_spec(text);
  ResolvedSpec r;
  std::vector<std::pair<std::string, std::string>> opts;
  for (const auto& p : presets()) {
    if (p.name != s.name) continue;
    Spec base = parse_spec(p.spec);
    r.preset = s.options.empty() ? p.name : "";
    if (!s.options.empty()) {
      // A preset with overrides is labelled by what it changed.
      std::string lbl = p.name;
      char sep = ':';
      for (const auto& [k, v] : s.options) {
        lbl += sep + k + "=" + v;
        sep = ',';
      }
      r.preset = lbl;
    }
    opts = base.options;
    for (const auto& o : s.options) {
      bool replaced = false;
      for (auto& b : opts)
        if (b.first == o.first) {
          b.second = o.second;
          replaced = true;
        }
      if (!replaced) opts.push_back(o);
    }
    s.name = base.name;
    break;
  }
  if (opts.empty()) opts = s.options;
  const FamilyDef* fam = nullptr;
  for (const auto& f : families())
    if (f.name == s.name) fam = &f;
  if (!fam) {
    std::vector<std::string> names;
    for (const auto& f : families()) names.push_back(f.name);
    for (const auto& p : presets())
      if (std::find(names.begin(), names.end(), p.name) == names.end()) names.push_back(p.name);
    throw UsageError("unknown model '" + s.name + "': choose a family or preset (" + detail::join(names) +
                     "); 'gradflow models' lists them");
  }
  r.family = fam->name;
  for (const auto& o : fam->options) r.values[o.key] = o.default_value;
  for (const auto& [k, v] : opts) {
    const OptionDef* def = nullptr;
    for (const auto& o : fam->options)
      if (o.key == k) def = &o;
    if (!def) {
      std::vector<std::string> keys;
      for (const auto& o : fam->options) keys.push_back(o.key);
      throw UsageError("unknown option '" + k + "' for " + fam->name + ": valid options are " + detail::join(keys));
    }
    check_value(*fam, *def, v);
    r.values[k] = v;
  }
  check_together(r);
  return r;
}

std::int64_t estimate_parameters(const ResolvedSpec& s, std::int64_t in, std::int64_t out) {
  if (s.family == "mlp") {
    const std::int64_t d = s.get_int("depth"), w = s.get_int("width");
    return in * w + w + (d - 2) * (w * w + 3 * w) + w * out + out;
  }
  if (s.family == "cnn") {
    const std::int64_t d = s.get_int("depth"), c = s.get_int("channels");
    return 3 * c * 9 + (d - 2) * (c * c * 9 + 3 * c) + c * out + out;
  }
  if (s.family == "transformer") {
    const std::int64_t d = s.get_int("width"), blocks = s.get_int("depth");
    return in * d + d + blocks * (12 * d * d + 13 * d) + 2 * d + d * out + out;
  }
  const std::int64_t h = s.get_int("hidden"), l = s.get_int("layers");
  const std::string cell = s.get("cell");
  const std::int64_t gates = cell == "lstm" ? 4 : cell == "gru" ? 3 : 1;
  return gates * (in * h + (2 * l - 1) * h * h + 2 * l * h) + h * out + out;
}

}  // namespace gradflow::models
