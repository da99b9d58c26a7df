#include "gradflow/run_record.h"

#include "gradflow/summary.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "gradflow/error.h"
#include "gradflow/summary.h"
#include "util/enum_names.h"
#include "util/json_util.h"
#include "diagnosis/run_json.h"
#include "trace/trace_json.h"

namespace gradflow {

using detail::get_array;
using detail::get_int;
using detail::get_num_or;
using detail::get_str;
using detail::Json;
using detail::num;

std::vector<double> global_grad_norms(const Trace& trace) {
  std::vector<double> out;
  for (const auto& st : trace.steps()) {
    double ss = 0;
    bool bad = false;
    for (const auto& r : st.records) {
      if (trace.series()[r.series].kind != SeriesKind::parameter) continue;
      ss += r.grad.sum_sq;
      bad = bad || r.grad.nonfinite > 0;
    }
    out.push_back(bad ? std::numeric_limits<double>::infinity() : std::sqrt(ss));
  }
  return out;
}

namespace {

int longest_skip_run(const Trace& t) {
  int run = 0, longest = 0;
  for (const auto& st : t.steps()) longest = std::max(longest, run = st.skipped ? run + 1 : 0);
  return longest;
}

struct Judged {
  Trace trace;
  std::vector<double> loss;
};

// The steps findings are drawn from: no partial step (its numbers are incomplete), and no step
// the loss scaler skipped while skips stay occasional (their overflow is the scaler probing).
Judged judged_steps(const Trace& trace, const std::vector<double>& loss, int persistent_skips) {
  Judged j{trace.complete_steps(), loss};
  if (longest_skip_run(j.trace) == 0 || longest_skip_run(j.trace) >= persistent_skips) return j;
  // A Monitor's run has a loss per recorded step: they leave together.
  if (j.loss.size() == j.trace.steps().size()) {
    std::vector<double> kept;
    for (std::size_t i = 0; i < j.loss.size(); ++i)
      if (!j.trace.steps()[i].skipped) kept.push_back(j.loss[i]);
    j.loss = std::move(kept);
  }
  j.trace = j.trace.steps_where([](const StepRecord& st) { return !st.skipped; });
  return j;
}

}  // namespace

void RunRecord::analyse(const DiagnosisOptions& options) {
  const Judged judged = judged_steps(trace, loss, options.persistent_skips);
  summary = summarize(judged.trace, judged.loss, tiny > 0 ? tiny : std::numeric_limits<float>::denorm_min());
  summary.skipped_steps = static_cast<int>(std::count_if(trace.steps().begin(), trace.steps().end(),
                                                        [](const StepRecord& st) { return st.skipped && !st.partial; }));
  findings = diagnose(judged.trace, summary, judged.loss, global_grad_norms(judged.trace), traits, options);
}

namespace {

// A fused recurrent module's weights are named weight_ih_l0, weight_hh_l0, ... (LibTorch and
// torch.nn alike).
bool is_recurrent_weight(const std::string& name) {
  return name.find("weight_ih") != std::string::npos || name.find("weight_hh") != std::string::npos;
}

// The weight layers of a model gradflow did not build, read from its trace: each module owning a
// parameter of 2 or more dimensions, once, in forward order; its kind from the weight alone.
std::vector<LayerEntry> weight_layers(const Trace& t) {
  std::vector<LayerEntry> out;
  for (int s : weight_series(t)) {
    const SeriesInfo& w = t.series()[s];
    if (std::any_of(out.begin(), out.end(), [&](const LayerEntry& l) { return l.name == w.layer; })) continue;
    const char* kind = is_recurrent_weight(w.name) ? kRecurrentLayerKind : w.shape.size() >= 3 ? kConvLayerKind : kMatrixLayerKind;
    out.push_back(LayerEntry{w.layer, kind, static_cast<int>(out.size()) + 1});
  }
  return out;
}

}  // namespace

RunRecord user_run_record(const Trace& trace, std::int64_t completed_steps, const std::string& label,
                          const ModelTraits& traits, const DiagnosisOptions& diagnosis) {
  RunRecord r;
  r.spec = r.label = label;
  r.family = "user";
  r.task = "user";
  r.traits = traits;
  // A step still open (a manual-step Monitor after its last step()) is not a step the optimizer took.
  r.trace = trace.complete_steps();
  r.layers = weight_layers(r.trace);
  // What the model's graph and the run show, where the program did not say.
  r.traits.residual = r.traits.residual || has_skip_connection(r.trace);
  if (!r.traits.clipped())
    if (const auto clip = clip_norm_applied(r.trace)) r.traits.clip_norm = *clip;
  r.interrupted = trace.interrupted;
  for (const auto& st : r.trace.steps()) r.loss.push_back(st.loss ? *st.loss : std::numeric_limits<double>::quiet_NaN());
  r.steps_done = r.steps_requested = completed_steps;
  r.tiny = std::numeric_limits<float>::denorm_min();
  r.config = {{"every", std::to_string(trace.every), ConfigRole::recording}};
  r.analyse(diagnosis);
  // A program's own clipping (or any change between backward and the step) is seen as such.
  if (r.summary.applied) r.clipped_steps = r.summary.applied->changed_steps;
  return r;
}

std::string RunRecord::config_value(const std::string& key) const {
  for (const auto& e : config)
    if (e.key == key) return e.value;
  return "";
}

namespace {
using detail::Named;
constexpr Named<ConfigRole> kRoles[] = {
    {ConfigRole::setting, "setting"}, {ConfigRole::remedy, "remedy"}, {ConfigRole::recording, "recording"}};
constexpr Named<SweepAxis> kAxes[] = {{SweepAxis::none, ""}, {SweepAxis::depth, "depth"}, {SweepAxis::seq_len, "seq_len"}};

template <class E, std::size_t N>
E value_in(const Named<E> (&table)[N], const std::string& name, const char* what) {
  if (auto v = detail::value_of(table, name)) return *v;
  throw Error("unknown " + std::string(what) + " '" + name + "'");
}
}  // namespace

const char* to_string(ConfigRole role) { return detail::name_of(kRoles, role); }
ConfigRole config_role_from_string(const std::string& name) { return value_in(kRoles, name, "config role"); }
const char* to_string(SweepAxis axis) { return detail::name_of(kAxes, axis); }
SweepAxis sweep_axis_from_string(const std::string& name) { return value_in(kAxes, name, "sweep axis"); }

namespace {

Json value_json(const std::string& v) {
  if (v.empty()) return v;
  char* end = nullptr;
  const double d = std::strtod(v.c_str(), &end);
  if (end == v.c_str() + v.size() && std::isfinite(d) && v.find_first_of("xX") == std::string::npos) {
    char* iend = nullptr;
    const long long i = std::strtoll(v.c_str(), &iend, 10);
    if (iend == v.c_str() + v.size()) return Json(i);
    return Json(d);
  }
  return v;
}

std::string value_string(const Json& j) {
  if (j.is_string()) return j.get<std::string>();
  if (j.is_number_integer()) return std::to_string(j.get<long long>());
  if (j.is_number()) {
    std::string s = Json(j.get<double>()).dump();
    return s;
  }
  if (j.is_boolean()) return j.get<bool>() ? "1" : "0";
  return j.dump();
}

Json attenuation_json(const std::optional<Attenuation>& a) {
  if (!a) return nullptr;
  Json j = {{"log10", a->log10 ? num(*a->log10) : Json(nullptr)},
            {"underflow", a->underflow},
            {"overflow", a->overflow},
            {"span", a->span},
            {"from", num(a->from)},
            {"to", num(a->to)}};
  if (a->largest_link_at >= 0) j["largest_link"] = {{"log10", num(a->largest_link_log10)}, {"at", a->largest_link_at}};
  const auto g = a->gain();
  j["gain"] = g ? num(*g) : Json(nullptr);
  return j;
}

std::optional<Attenuation> attenuation_from(const Json& j) {
  if (!j.is_object()) return std::nullopt;
  Attenuation a;
  if (auto it = j.find("log10"); it != j.end() && it->is_number()) a.log10 = it->get<double>();
  a.underflow = j.value("underflow", false);
  a.overflow = j.value("overflow", false);
  a.span = j.value("span", 0);
  a.from = get_num_or(j, "from", 0.0);
  a.to = get_num_or(j, "to", 0.0);
  if (auto it = j.find("largest_link"); it != j.end() && it->is_object()) {
    a.largest_link_log10 = get_num_or(*it, "log10", 0.0);
    a.largest_link_at = it->value("at", -1);
  }
  return a;
}

Json opt_num(const std::optional<double>& v) { return v ? num(*v) : Json(nullptr); }
std::optional<double> opt_from(const Json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_number()) return std::nullopt;
  return it->get<double>();
}

Json summary_json(const RunSummary& s) {
  Json j;
  j["grad_norm_first"] = opt_num(s.grad_norm_first);
  j["grad_norm_last"] = opt_num(s.grad_norm_last);
  j["grad_norm_first_final"] = opt_num(s.grad_norm_first_final);
  j["grad_norm_last_final"] = opt_num(s.grad_norm_last_final);
  auto put = [&](const char* key, const std::optional<Attenuation>& a) {
    j[key] = a && a->log10 ? num(*a->log10) : Json(nullptr);
    j[std::string(key) + "_underflow"] = a ? a->underflow : false;
    j[std::string(key) + "_overflow"] = a ? a->overflow : false;
  };
  put("attenuation_log10", s.depth);
  put("attenuation_log10_final", s.depth_final);
  j["gain_per_layer"] = s.depth ? opt_num(s.depth->gain()) : Json(nullptr);
  if (s.time) {
    put("time_attenuation_log10", s.time);
    put("time_attenuation_log10_final", s.time_final);
    j["gain_per_step"] = opt_num(s.time->gain());
  }
  j["loss_first"] = opt_num(s.loss_first);
  j["loss_last"] = opt_num(s.loss_last);
  j["recorded_steps"] = s.recorded_steps;
  if (s.applied)
    j["applied"] = {{"steps", s.applied->steps},
                    {"changed_steps", s.applied->changed_steps},
                    {"smallest_factor", num(s.applied->smallest_factor)},
                    {"median_factor", num(s.applied->median_factor)},
                    {"largest_factor", num(s.applied->largest_factor)},
                    {"finite_factors", s.applied->finite_factors}};
  if (s.skipped_steps > 0) j["skipped_steps"] = s.skipped_steps;
  j["detail"] = {{"depth", attenuation_json(s.depth)},
                 {"depth_final", attenuation_json(s.depth_final)},
                 {"time", attenuation_json(s.time)},
                 {"time_final", attenuation_json(s.time_final)}};
  return j;
}

ModelTraits traits_from(const Json& j) {
  ModelTraits t;
  t.recurrent = j.value("recurrent", false);
  t.cell = cell_from_string(j.value("cell", ""));
  const std::string act = j.value("activation", "none");
  t.activation = act.empty() || act == "none" ? Activation::none : activation_from_string(act);
  t.init = init_from_string(j.value("init", ""));
  t.norm = norm_from_string(j.value("norm", "none"));
  t.residual = j.value("residual", false);
  t.clip_norm = get_num_or(j, "clip_norm", 0.0);
  t.clip_value = get_num_or(j, "clip_value", 0.0);
  t.recurrent_scale = get_num_or(j, "recurrent_scale", 0.0);
  if (auto it = j.find("forget_bias"); it != j.end() && it->is_number()) t.forget_bias = it->get<double>();
  t.adversarial = j.value("adversarial", false);
  t.norm_placement = norm_placement_from_string(j.value("norm_placement", "none"));
  t.warmup_steps = j.value("warmup_steps", std::int64_t{0});
  return t;
}

RunSummary summary_from(const Json& j) {
  RunSummary s;
  if (!j.is_object()) return s;
  s.grad_norm_first = opt_from(j, "grad_norm_first");
  s.grad_norm_last = opt_from(j, "grad_norm_last");
  s.grad_norm_first_final = opt_from(j, "grad_norm_first_final");
  s.grad_norm_last_final = opt_from(j, "grad_norm_last_final");
  s.loss_first = opt_from(j, "loss_first");
  s.loss_last = opt_from(j, "loss_last");
  s.recorded_steps = j.value("recorded_steps", 0);
  if (auto it = j.find("applied"); it != j.end() && it->is_object()) {
    AppliedSummary a;
    a.steps = it->value("steps", 0);
    a.changed_steps = it->value("changed_steps", 0);
    a.smallest_factor = get_num_or(*it, "smallest_factor", 1.0);
    a.median_factor = get_num_or(*it, "median_factor", 1.0);
    a.largest_factor = get_num_or(*it, "largest_factor", 1.0);
    a.finite_factors = it->value("finite_factors", a.changed_steps);  // (files before it: every factor finite)
    s.applied = a;
  }
  s.skipped_steps = j.value("skipped_steps", 0);
  if (auto it = j.find("detail"); it != j.end() && it->is_object()) {
    if (it->contains("depth")) s.depth = attenuation_from((*it)["depth"]);
    if (it->contains("depth_final")) s.depth_final = attenuation_from((*it)["depth_final"]);
    if (it->contains("time")) s.time = attenuation_from((*it)["time"]);
    if (it->contains("time_final")) s.time_final = attenuation_from((*it)["time_final"]);
  }
  return s;
}

}  // namespace

namespace detail {

Json finding_json(const Finding& f) {
  Json ev = Json::object();
  for (const auto& [k, v] : f.evidence) ev[k] = num(v);
  return {{"kind", to_string(f.kind)}, {"severity", to_string(f.severity)}, {"where", f.where},
          {"message", f.message},      {"evidence", ev},                    {"remedy", f.remedy}};
}

Finding finding_from(const Json& j, const std::string& where) {
  Finding f;
  f.kind = finding_kind_from_string(get_str(j, "kind", where));
  f.severity = severity_from_string(get_str(j, "severity", where));
  f.where = get_str(j, "where", where);
  f.message = get_str(j, "message", where);
  f.remedy = get_str(j, "remedy", where);
  if (auto it = j.find("evidence"); it != j.end() && it->is_object())
    for (auto e = it->begin(); e != it->end(); ++e)
      f.evidence.emplace_back(e.key(), e->is_number() ? e->get<double>() : std::numeric_limits<double>::quiet_NaN());
  return f;
}

Json summary_to_json(const RunSummary& s) { return summary_json(s); }

}  // namespace detail

std::string run_to_json(const RunRecord& r, int indent) {
  Json config = Json::object(), roles = Json::object();
  for (const auto& e : r.config) {
    config[e.key] = value_json(e.value);
    if (e.role != ConfigRole::setting) roles[e.key] = to_string(e.role);
  }
  Json layers = Json::array();
  for (const auto& l : r.layers) layers.push_back({{"name", l.name}, {"kind", l.kind}, {"depth", l.depth}});
  Json loss = Json::array();
  for (double v : r.loss) loss.push_back(num(v));
  Json acc = Json::array();
  for (double v : r.accuracy) acc.push_back(num(v));
  Json findings = Json::array();
  for (const auto& f : r.findings) findings.push_back(detail::finding_json(f));
  const ModelTraits& t = r.traits;
  Json traits = {{"recurrent", t.recurrent},   {"cell", to_string(t.cell)},       {"activation", to_string(t.activation)},
                 {"init", to_string(t.init)},  {"norm", to_string(t.norm)},       {"residual", t.residual},
                 {"clip_norm", num(t.clip_norm)}, {"clip_value", num(t.clip_value)}, {"recurrent_scale", num(t.recurrent_scale)},
                 {"forget_bias", t.forget_bias ? num(*t.forget_bias) : Json(nullptr)}, {"adversarial", t.adversarial},
                 {"norm_placement", to_string(t.norm_placement)}, {"warmup_steps", t.warmup_steps}};
  Json j = {{"schema", kRunSchema},
            {"spec", r.spec},
            {"label", r.label},
            {"family", r.family},
            {"task", r.task},
            {"task_description", r.task_description},
            {"config", config},
            {"config_roles", roles},
            {"traits", traits},
            {"layers", layers},
            {"steps_requested", r.steps_requested},
            {"steps_done", r.steps_done},
            {"clipped_steps", r.clipped_steps},
            {"baseline_loss", num(r.baseline_loss)},
            {"tiny", num(r.tiny)},
            {"wall_seconds", num(r.wall_seconds)},
            {"interrupted", r.interrupted},
            {"stopped_on_nonfinite", r.stopped_on_nonfinite},
            {"stop_reason", r.stop_reason},
            {"summary", summary_json(r.summary)},
            {"findings", findings},
            {"sweep", r.sweep.axis == SweepAxis::none ? Json(nullptr)
                                                     : Json{{"axis", to_string(r.sweep.axis)}, {"base", r.sweep.base}, {"value", num(r.sweep.value)}}},
            {"loss", loss},
            {"accuracy", acc},
            {"trace", detail::trace_to_json_value(r.trace)}};
  return j.dump(indent);
}

namespace {
RunRecord run_from_json_unchecked(const std::string& text, const std::string& where);
}

RunRecord run_from_json(const std::string& text, const std::string& where) {
  try {
    return run_from_json_unchecked(text, where);
  } catch (const Json::exception& e) {
    // A field of the wrong type: the file was edited or is not ours.
    throw Error(where + " is corrupt (" + e.what() + "): give a run.json written by gradflow");
  } catch (const UsageError& e) {
    // An unknown name (finding kind, activation, init) is the file's fault, not the caller's.
    throw Error(where + " is corrupt (" + e.what() + "): give a run.json written by gradflow");
  }
}

namespace {
RunRecord run_from_json_unchecked(const std::string& text, const std::string& where) {
  const Json j = detail::parse_json(text, where);
  if (!j.is_object()) throw Error(where + " is not a gradflow run (expected a JSON object)");
  const std::string schema = get_str(j, "schema", where);
  if (schema.rfind("gradflow.run/", 0) != 0)
    throw Error(where + " has schema '" + schema + "', not a gradflow run: give a run.json written by 'gradflow run' or 'gradflow compare'");
  if (schema != kRunSchema)
    throw Error(where + ": run schema '" + schema + "' is not supported (this gradflow reads " + kRunSchema + ")");
  RunRecord r;
  r.spec = get_str(j, "spec", where);
  r.label = get_str(j, "label", where);
  r.family = get_str(j, "family", where);
  r.task = get_str(j, "task", where);
  r.task_description = j.value("task_description", "");
  if (auto it = j.find("config"); it != j.end() && it->is_object())
    for (auto c = it->begin(); c != it->end(); ++c) r.config.push_back({c.key(), value_string(*c), ConfigRole::setting});
  if (auto it = j.find("config_roles"); it != j.end() && it->is_object())
    for (auto& e : r.config)
      if (auto role = it->find(e.key); role != it->end()) e.role = config_role_from_string(role->get<std::string>());
  if (auto it = j.find("traits"); it != j.end() && it->is_object()) r.traits = traits_from(*it);
  if (auto it = j.find("sweep"); it != j.end() && it->is_object())
    r.sweep = {sweep_axis_from_string(get_str(*it, "axis", where)), get_str(*it, "base", where), get_num_or(*it, "value", 0.0)};
  for (const auto& l : get_array(j, "layers", where))
    r.layers.push_back({get_str(l, "name", where), get_str(l, "kind", where), static_cast<int>(get_int(l, "depth", where))});
  r.steps_requested = get_int(j, "steps_requested", where);
  r.steps_done = get_int(j, "steps_done", where);
  r.clipped_steps = j.value("clipped_steps", 0);
  r.baseline_loss = get_num_or(j, "baseline_loss", 0.0);
  r.tiny = get_num_or(j, "tiny", 0.0);
  r.wall_seconds = get_num_or(j, "wall_seconds", 0.0);
  r.interrupted = j.value("interrupted", false);
  r.stopped_on_nonfinite = j.value("stopped_on_nonfinite", false);
  r.stop_reason = j.value("stop_reason", std::string());
  for (const auto& v : get_array(j, "loss", where))
    r.loss.push_back(v.is_number() ? v.get<double>() : std::numeric_limits<double>::quiet_NaN());
  if (auto it = j.find("accuracy"); it != j.end() && it->is_array())
    for (const auto& v : *it) r.accuracy.push_back(v.is_number() ? v.get<double>() : std::numeric_limits<double>::quiet_NaN());
  auto it = j.find("trace");
  if (it == j.end()) throw Error(where + ": missing field 'trace'");
  r.trace = detail::trace_from_json_value(*it, where + " (trace)");
  if (auto s = j.find("summary"); s != j.end()) r.summary = summary_from(*s);
  for (const auto& f : get_array(j, "findings", where)) r.findings.push_back(detail::finding_from(f, where));
  return r;
}
}  // namespace

}  // namespace gradflow
