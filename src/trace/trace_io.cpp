#include "gradflow/trace_io.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <string_view>

#include <fmt/format.h>

#include "gradflow/atomic_file.h"
#include "gradflow/error.h"
#include "trace/trace_json.h"

namespace gradflow {
namespace detail {

// SeriesInfo::found_by_walk in JSON: "found_by": "graph_walk" (absent otherwise).
constexpr const char* kFoundByWalk = "graph_walk";

namespace {

Json stats_json(const TensorStats& g) {
  return {{"norm", num(g.norm())}, {"rms", num(g.rms())},   {"max_abs", num(g.max_abs)},
          {"mean", num(g.mean())}, {"std", num(g.std())},   {"zero_fraction", num(g.zero_fraction())},
          {"zeros", g.zeros},      {"nonfinite", g.nonfinite}, {"numel", g.numel}};
}

// A rank's entry beyond 64 ranks (Record::ranks_compact): the figures it carries, and no other.
Json compact_stats_json(const TensorStats& g) {
  return {{"norm", num(g.norm())}, {"max_abs", num(g.max_abs)}, {"nonfinite", g.nonfinite}, {"numel", g.numel}};
}

TensorStats compact_stats_from(const Json& j, const std::string& where) {
  TensorStats g;
  g.numel = get_int(j, "numel", where);
  g.nonfinite = get_int(j, "nonfinite", where);
  const double norm = get_num(j, "norm", where);
  g.sum_sq = norm * norm;
  g.max_abs = get_num(j, "max_abs", where);
  return g;
}

TensorStats stats_from(const Json& j, const std::string& where) {
  TensorStats g;
  g.numel = get_int(j, "numel", where);
  g.nonfinite = get_int(j, "nonfinite", where);
  g.zeros = get_int(j, "zeros", where);
  if (g.numel < 0 || g.nonfinite < 0 || g.zeros < 0 || g.nonfinite > g.numel || g.zeros > g.numel)
    throw Error(where + ": counts are out of range");
  const double norm = get_num(j, "norm", where);
  g.sum_sq = norm * norm;
  g.sum = get_num(j, "mean", where) * static_cast<double>(g.finite());
  g.max_abs = get_num(j, "max_abs", where);
  return g;
}

Json numbers_json(const std::vector<double>& values) {
  Json a = Json::array();
  for (double v : values) a.push_back(num(v));
  return a;
}

std::vector<double> numbers_from(const Json& j, const char* key) {
  std::vector<double> out;
  if (auto it = j.find(key); it != j.end() && it->is_array())
    for (const auto& v : *it) out.push_back(v.is_number() ? v.get<double>() : std::numeric_limits<double>::quiet_NaN());
  return out;
}

std::optional<double> optional_number(const Json& j, const char* key) {
  if (auto it = j.find(key); it != j.end()) {
    if (it->is_number()) return it->get<double>();
    if (it->is_null()) return std::numeric_limits<double>::quiet_NaN();
  }
  return std::nullopt;
}

Json record_json(const Record& r) {
  Json j = stats_json(r.grad);
  j["series"] = r.series;
  const auto& g = r.grad;
  if (!std::isnan(r.weight_norm)) {
    j["weight_norm"] = num(r.weight_norm);
    j["ratio"] = num(r.weight_norm > 0 ? g.norm() / r.weight_norm
                                       : std::numeric_limits<double>::quiet_NaN());
  }
  if (!std::isnan(r.update_norm)) j["update_norm"] = num(r.update_norm);
  if (r.forward) {
    const auto& f = *r.forward;
    j["forward"] = {{"mean", num(f.mean)},
                    {"std", num(f.std)},
                    {"dead_fraction", num(f.dead_fraction)},
                    {"saturated_fraction", num(f.saturated_fraction)},
                    {"mean_local_derivative", num(f.mean_local_derivative)}};
  }
  if (!r.ranks.empty()) {
    Json ranks = Json::array();
    for (const auto& local : r.ranks) ranks.push_back(r.ranks_compact ? compact_stats_json(local) : stats_json(local));
    j["ranks"] = std::move(ranks);
    if (r.ranks_compact) j["ranks_compact"] = true;
  }
  if (r.applied) j["applied"] = stats_json(*r.applied);
  if (!r.profile.empty()) j[to_string(r.profile_axis)] = numbers_json(r.profile);
  return j;
}

Record record_from(const Json& j, int n_series, const std::string& where) {
  Record r;
  r.series = static_cast<int>(get_int(j, "series", where));
  if (r.series < 0 || r.series >= n_series)
    throw Error(where + ": record names series " + std::to_string(r.series) + " of " +
                std::to_string(n_series));
  r.grad = stats_from(j, where);
  r.weight_norm = get_num_or(j, "weight_norm", std::numeric_limits<double>::quiet_NaN());
  r.update_norm = get_num_or(j, "update_norm", std::numeric_limits<double>::quiet_NaN());
  if (auto it = j.find("forward"); it != j.end() && it->is_object()) {
    ActivationStats f;
    f.mean = get_num(*it, "mean", where);
    f.std = get_num(*it, "std", where);
    f.dead_fraction = get_num(*it, "dead_fraction", where);
    f.saturated_fraction = get_num(*it, "saturated_fraction", where);
    f.mean_local_derivative = get_num(*it, "mean_local_derivative", where);
    r.forward = f;
  }
  r.ranks_compact = j.value("ranks_compact", false);
  if (auto it = j.find("ranks"); it != j.end() && it->is_array())
    for (const auto& local : *it) r.ranks.push_back(r.ranks_compact ? compact_stats_from(local, where) : stats_from(local, where));
  if (auto it = j.find("applied"); it != j.end() && it->is_object()) r.applied = stats_from(*it, where);
  if (const Json* profile = find_profile(j, &r.profile_axis))
    for (const auto& v : *profile) r.profile.push_back(v.is_number() ? v.get<double>() : std::numeric_limits<double>::quiet_NaN());
  return r;
}

}  // namespace

const Json* find_profile(const Json& obj, ProfileAxis* axis) {
  for (ProfileAxis a : {ProfileAxis::calls, ProfileAxis::time})
    if (auto it = obj.find(to_string(a)); it != obj.end() && it->is_array()) {
      *axis = a;
      return &*it;
    }
  return nullptr;
}

int world_size_from(std::int64_t n, const std::string& where) {
  if (n < 1 || n > kMaxRanks)
    throw Error(fmt::format("{}: 'world_size' is {}, not a number of processes (1 .. {})", where, n, kMaxRanks));
  return static_cast<int>(n);
}

Json series_json(const SeriesInfo& s) {
  Json j = {{"name", s.name}, {"kind", to_string(s.kind)}, {"layer", s.layer}, {"shape", s.shape}};
  if (!s.inputs.empty()) j["inputs"] = s.inputs;
  if (s.found_by_walk) j["found_by"] = kFoundByWalk;
  if (s.activation != Activation::none) j["activation"] = to_string(s.activation);
  if (s.shards > 0) j["shards"] = s.shards;
  return j;
}

void add_inputs_from(Trace& t, int to, const Json& from, const std::string& where) {
  if (!from.is_array()) throw Error(where + ": a series' inputs are not a list");
  for (const auto& f : from) {
    const int i = f.is_number_integer() ? f.get<int>() : -1;
    if (i < 0 || i >= to || to >= static_cast<int>(t.series().size()))
      throw Error(where + ": an input names a series that does not come before it");
    t.add_input(to, i);
  }
}

Json step_json(const StepRecord& st) {
  Json records = Json::array();
  for (const auto& r : st.records) records.push_back(record_json(r));
  Json js = {{"step", st.step}, {"backwards", st.backwards}, {"records", std::move(records)}};
  js["loss"] = st.loss ? num(*st.loss) : Json(nullptr);
  if (st.losses.size() > 1) {
    Json losses = Json::array();
    for (double v : st.losses) losses.push_back(num(v));
    js["losses"] = std::move(losses);
  }
  if (st.partial) js["partial"] = true;
  if (st.accuracy) js["accuracy"] = num(*st.accuracy);
  if (!st.rank_losses.empty()) js["rank_losses"] = numbers_json(st.rank_losses);
  if (!st.rank_checksums.empty()) js["rank_checksums"] = numbers_json(st.rank_checksums);
  if (st.optimizer_step >= 0) js["optimizer_step"] = st.optimizer_step;
  if (st.evaluation >= 0) js["evaluation"] = st.evaluation;
  if (st.step_loss) js["step_loss"] = num(*st.step_loss);
  if (st.loss_scale) js["loss_scale"] = num(*st.loss_scale);
  if (st.scale_after) js["scale_after"] = num(*st.scale_after);
  if (st.skipped) js["skipped"] = true;
  if (st.sharpness) js["sharpness"] = {{"lambda_max", num(*st.sharpness)}, {"products", st.sharpness_products}};
  if (st.learning_rate) js["learning_rate"] = {{"lr", num(*st.learning_rate)}, {"momentum", num(st.momentum)}};
  return js;
}

Json trace_to_json_value(const Trace& trace) {
  Json series = Json::array();
  for (const auto& s : trace.series()) series.push_back(series_json(s));
  Json steps = Json::array();
  for (const auto& st : trace.steps()) steps.push_back(step_json(st));
  Json j = {{"schema", kTraceSchema},
            {"every", trace.every},
            {"interrupted", trace.interrupted},
            {"saturation_threshold", trace.saturation_threshold},
            {"series", std::move(series)},
            {"steps", std::move(steps)}};
  if (trace.world_size > 1) j["world_size"] = trace.world_size;
  if (trace.batch_per_rank > 0) j["batch_per_rank"] = trace.batch_per_rank;
  if (trace.process_id > 0) j["process_id"] = trace.process_id;
  if (trace.updated_elsewhere) j["updated_elsewhere"] = true;
  if (trace.layer_outputs) j["layer_outputs"] = true;
  if (trace.parameter_gradients) j["parameter_gradients"] = true;
  if (const auto& nf = trace.first_nonfinite())
    j["first_nonfinite"] = {{"step", nf->step}, {"series", nf->series}};
  else
    j["first_nonfinite"] = nullptr;
  return j;
}

namespace {
Trace trace_from_json_unchecked(const Json& j, const std::string& where);
}

Trace trace_from_json_value(const Json& j, const std::string& where) {
  try {
    return trace_from_json_unchecked(j, where);
  } catch (const Json::exception& e) {
    throw Error(where + " is corrupt (" + e.what() + "): give a trace written by gradflow");
  }
}

namespace {
Trace trace_from_json_unchecked(const Json& j, const std::string& where) {
  if (!j.is_object()) throw Error(where + ": expected a JSON object");
  const std::string schema = get_str(j, "schema", where);
  if (schema.rfind("gradflow.trace/", 0) != 0)
    throw Error(where + ": schema '" + schema + "' is not a gradflow trace");
  if (schema != kTraceSchema)
    throw Error(where + ": trace schema '" + schema + "' is not supported (this gradflow reads " +
                kTraceSchema + ")");
  Trace t;
  t.every = get_int(j, "every", where);
  if (t.every < 1) throw Error(where + ": 'every' must be at least 1");
  if (auto it = j.find("interrupted"); it != j.end() && it->is_boolean())
    t.interrupted = it->get<bool>();
  if (auto it = j.find("saturation_threshold"); it != j.end() && it->is_number())
    t.saturation_threshold = it->get<double>();
  if (auto it = j.find("world_size"); it != j.end() && it->is_number_integer())
    t.world_size = world_size_from(it->get<std::int64_t>(), where);
  if (auto it = j.find("batch_per_rank"); it != j.end() && it->is_number_integer())
    t.batch_per_rank = it->get<std::int64_t>();
  if (auto it = j.find("process_id"); it != j.end() && it->is_number_integer()) t.process_id = it->get<std::int64_t>();
  if (auto it = j.find("updated_elsewhere"); it != j.end() && it->is_boolean()) t.updated_elsewhere = it->get<bool>();
  if (auto it = j.find("layer_outputs"); it != j.end() && it->is_boolean()) t.layer_outputs = it->get<bool>();
  if (auto it = j.find("parameter_gradients"); it != j.end() && it->is_boolean()) t.parameter_gradients = it->get<bool>();
  for (const auto& s : get_array(j, "series", where)) add_series_from(t, s, where);
  for (const auto& js : get_array(j, "steps", where)) t.add_step(step_from(js, static_cast<int>(t.series().size()), where));
  return t;
}
}  // namespace

void add_series_from(Trace& t, const Json& s, const std::string& where) {
  std::vector<std::int64_t> shape;
  if (auto it = s.find("shape"); it != s.end() && it->is_array())
    for (const auto& d : *it)
      if (d.is_number_integer()) shape.push_back(d.get<std::int64_t>());
  const std::string name = get_str(s, "name", where);
  if (t.find(name) >= 0) throw Error(where + ": series '" + name + "' appears twice");
  const int id = t.intern(name, series_kind_from_string(get_str(s, "kind", where)), get_str(s, "layer", where), std::move(shape));
  // Inputs name earlier series (a module's inputs ran before it): each exists by now.
  if (auto it = s.find("inputs"); it != s.end()) add_inputs_from(t, id, *it, where);
  if (auto it = s.find("found_by"); it != s.end() && *it == kFoundByWalk) t.mark_found_by_walk(id);
  if (auto it = s.find("shards"); it != s.end()) {
    if (!it->is_number_integer() || *it < 1 || *it > kMaxRanks)
      throw Error(fmt::format("{}: series '{}' has 'shards' {}, not a number of ranks (1 .. {})", where, name, it->dump(), kMaxRanks));
    t.set_shards(id, it->get<int>());
  }
  if (auto it = s.find("activation"); it != s.end()) {
    if (!it->is_string()) throw Error(where + ": series '" + name + "' has an activation that is not a name");
    t.set_activation(id, activation_from_string(it->get<std::string>()));
  }
}

StepRecord step_from(const Json& js, int n_series, const std::string& where) {
  StepRecord st;
  st.step = get_int(js, "step", where);
  if (auto it = js.find("backwards"); it != js.end() && it->is_number_integer()) st.backwards = it->get<int>();
  if (auto it = js.find("loss"); it != js.end() && !it->is_null()) {
    if (!it->is_number()) throw Error(where + ": a step's loss is not a number");
    st.loss = it->get<double>();
  }
  if (auto it = js.find("losses"); it != js.end() && it->is_array())
    for (const auto& v : *it) st.losses.push_back(v.is_number() ? v.get<double>() : std::numeric_limits<double>::quiet_NaN());
  else if (st.loss)
    st.losses.push_back(*st.loss);
  if (auto it = js.find("partial"); it != js.end() && it->is_boolean()) st.partial = it->get<bool>();
  if (auto it = js.find("accuracy"); it != js.end() && it->is_number()) st.accuracy = it->get<double>();
  st.rank_losses = numbers_from(js, "rank_losses");
  st.rank_checksums = numbers_from(js, "rank_checksums");
  if (auto it = js.find("optimizer_step"); it != js.end() && it->is_number_integer()) st.optimizer_step = it->get<std::int64_t>();
  if (auto it = js.find("evaluation"); it != js.end() && it->is_number_integer()) st.evaluation = it->get<int>();
  st.step_loss = optional_number(js, "step_loss");
  st.loss_scale = optional_number(js, "loss_scale");
  st.scale_after = optional_number(js, "scale_after");
  if (auto it = js.find("skipped"); it != js.end() && it->is_boolean()) st.skipped = it->get<bool>();
  if (auto it = js.find("sharpness"); it != js.end() && it->is_object()) {
    st.sharpness = optional_number(*it, "lambda_max");
    st.sharpness_products = it->value("products", 0);
  }
  if (auto it = js.find("learning_rate"); it != js.end() && it->is_object()) {
    st.learning_rate = optional_number(*it, "lr");
    st.momentum = optional_number(*it, "momentum").value_or(0.0);
  }
  for (const auto& jr : get_array(js, "records", where)) st.records.push_back(record_from(jr, n_series, where));
  return st;
}

}  // namespace detail

std::string trace_to_json(const Trace& trace, int indent) {
  return detail::trace_to_json_value(trace).dump(indent);
}

Trace trace_from_json(const std::string& text) {
  return detail::trace_from_json_value(detail::parse_json(text, "trace"), "trace");
}

namespace {

constexpr int kNoRank = -1;

// Which gradient a row's figure is of: the CSV's `gradient` column.
enum class Gradient { none, produced, applied, local };

const char* gradient_column(Gradient g) {
  switch (g) {
    case Gradient::produced: return "produced";
    case Gradient::applied: return "applied";
    case Gradient::local: return "local";
    case Gradient::none: break;
  }
  return "";
}

void csv_row(std::string& out, std::int64_t step, const std::string& name, const char* kind,
             std::string_view quantity, double value, int rank = kNoRank, Gradient gradient = Gradient::none) {
  // Names come from module paths and tap names; quote any that could break the format.
  const bool quote = name.find_first_of(",\"\n") != std::string::npos;
  std::string n = name;
  if (quote) {
    std::string q = "\"";
    for (char c : name) q += (c == '"') ? std::string("\"\"") : std::string(1, c);
    n = q + "\"";
  }
  fmt::format_to(std::back_inserter(out), "{},{},{},{},", step, n, kind, quantity);
  if (std::isnan(value))
    out += "NaN";
  else if (std::isinf(value))
    out += value > 0 ? "Inf" : "-Inf";
  else
    fmt::format_to(std::back_inserter(out), "{}", value);
  out += ',';
  if (rank != kNoRank) out += std::to_string(rank);
  out += ',';
  out += gradient_column(gradient);
  out += '\n';
}

void csv_stats(std::string& out, std::int64_t step, const std::string& name, const char* kind,
               const TensorStats& g, Gradient gradient, int rank = kNoRank) {
  csv_row(out, step, name, kind, "norm", g.norm(), rank, gradient);
  csv_row(out, step, name, kind, "rms", g.rms(), rank, gradient);
  csv_row(out, step, name, kind, "max_abs", g.max_abs, rank, gradient);
  csv_row(out, step, name, kind, "mean", g.mean(), rank, gradient);
  csv_row(out, step, name, kind, "std", g.std(), rank, gradient);
  csv_row(out, step, name, kind, "zero_fraction", g.zero_fraction(), rank, gradient);
  csv_row(out, step, name, kind, "nonfinite", static_cast<double>(g.nonfinite), rank, gradient);
}

// What the step is, beside its loss: its optimizer step and closure evaluation, its loss scale.
void csv_step_labels(std::string& out, const StepRecord& st) {
  auto row = [&](const char* quantity, double value) { csv_row(out, st.step, quantity, "step", quantity, value); };
  if (st.optimizer_step >= 0) row("optimizer_step", static_cast<double>(st.optimizer_step));
  if (st.evaluation >= 0) row("evaluation", st.evaluation);
  if (st.step_loss) row("step_loss", *st.step_loss);
  if (st.loss_scale) row("loss_scale", *st.loss_scale);
  if (st.scale_after) row("scale_after", *st.scale_after);
  if (st.skipped) row("skipped", 1.0);
  if (st.sharpness) row("sharpness", *st.sharpness);
  if (st.learning_rate) row("learning_rate", *st.learning_rate), row("momentum", st.momentum);
}

// The ranks' local norms in brief, on the record's own row: min, mean and max across ranks.
void csv_rank_spread(std::string& out, std::int64_t step, const std::string& name, const char* kind,
                     const std::vector<TensorStats>& ranks) {
  if (ranks.empty()) return;
  double lo = std::numeric_limits<double>::infinity(), hi = 0, sum = 0;
  for (const auto& local : ranks) {
    lo = std::min(lo, local.norm());
    hi = std::max(hi, local.norm());
    sum += local.norm();
  }
  csv_row(out, step, name, kind, "local_norm_min", lo, kNoRank, Gradient::local);
  csv_row(out, step, name, kind, "local_norm_mean", sum / static_cast<double>(ranks.size()), kNoRank, Gradient::local);
  csv_row(out, step, name, kind, "local_norm_max", hi, kNoRank, Gradient::local);
}

void csv_per_rank(std::string& out, std::int64_t step, const char* name, const char* quantity,
                  const std::vector<double>& values) {
  for (std::size_t k = 0; k < values.size(); ++k)
    csv_row(out, step, name, "step", quantity, values[k], static_cast<int>(k));
}

}  // namespace

std::string trace_to_csv(const Trace& trace) {
  std::string out = "step,name,kind,quantity,value,rank,gradient\n";
  for (const auto& st : trace.steps()) {
    if (st.loss) csv_row(out, st.step, "loss", "step", "loss", *st.loss);
    if (st.losses.size() > 1)
      for (std::size_t k = 0; k < st.losses.size(); ++k)
        csv_row(out, st.step, "loss." + std::to_string(k + 1), "step", "loss", st.losses[k]);
    if (st.partial) csv_row(out, st.step, "partial", "step", "partial", 1.0);
    if (st.accuracy) csv_row(out, st.step, "accuracy", "step", "accuracy", *st.accuracy);
    csv_per_rank(out, st.step, "loss", "loss", st.rank_losses);
    csv_per_rank(out, st.step, "checksum", "checksum", st.rank_checksums);
    csv_step_labels(out, st);
    for (const auto& r : st.records) {
      const auto& s = trace.series()[r.series];
      const char* kind = to_string(s.kind);
      const auto& g = r.grad;
      csv_stats(out, st.step, s.name, kind, g, Gradient::produced);
      if (r.applied) csv_stats(out, st.step, s.name, kind, *r.applied, Gradient::applied);
      csv_rank_spread(out, st.step, s.name, kind, r.ranks);
      for (std::size_t k = 0; k < r.ranks.size(); ++k) {
        const int rank = static_cast<int>(k);
        if (!r.ranks_compact) {
          csv_stats(out, st.step, s.name, kind, r.ranks[k], Gradient::local, rank);
          continue;
        }
        csv_row(out, st.step, s.name, kind, "norm", r.ranks[k].norm(), rank, Gradient::local);
        csv_row(out, st.step, s.name, kind, "max_abs", r.ranks[k].max_abs, rank, Gradient::local);
        csv_row(out, st.step, s.name, kind, "nonfinite", static_cast<double>(r.ranks[k].nonfinite), rank, Gradient::local);
      }
      if (!std::isnan(r.weight_norm)) {
        csv_row(out, st.step, s.name, kind, "weight_norm", r.weight_norm);
        csv_row(out, st.step, s.name, kind, "ratio",
                r.weight_norm > 0 ? g.norm() / r.weight_norm : std::numeric_limits<double>::quiet_NaN(), kNoRank,
                Gradient::produced);
      }
      if (!std::isnan(r.update_norm)) csv_row(out, st.step, s.name, kind, "update_norm", r.update_norm);
      for (std::size_t k = 0; k < r.profile.size(); ++k)
        csv_row(out, st.step, s.name, kind, fmt::format("{}_norm.{}", to_string(r.profile_axis), k + 1), r.profile[k],
                kNoRank, Gradient::produced);
      if (r.forward) {
        csv_row(out, st.step, s.name, kind, "act_mean", r.forward->mean);
        csv_row(out, st.step, s.name, kind, "act_std", r.forward->std);
        csv_row(out, st.step, s.name, kind, "dead_fraction", r.forward->dead_fraction);
        csv_row(out, st.step, s.name, kind, "saturated_fraction", r.forward->saturated_fraction);
        csv_row(out, st.step, s.name, kind, "mean_local_derivative",
                r.forward->mean_local_derivative);
      }
    }
  }
  return out;
}

void write_trace_json(const Trace& trace, const std::string& path) {
  write_file_atomic(path, trace_to_json(trace) + "\n");
}

void write_trace_csv(const Trace& trace, const std::string& path) {
  write_file_atomic(path, trace_to_csv(trace));
}

Trace read_trace_json(const std::string& path) {
  return detail::trace_from_json_value(detail::parse_json(read_file(path), "'" + path + "'"),
                                       "'" + path + "'");
}

}  // namespace gradflow
