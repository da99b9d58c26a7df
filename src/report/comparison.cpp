#include <algorithm>
#include <cmath>
#include <map>
#include <set>

#include <fmt/format.h>

#include "gradflow/report.h"
#include "util/enum_names.h"
#include "report/figures.h"
#include "util/line_fit.h"
#include "report/report_model.h"

namespace gradflow {

using detail::diverged;
using detail::learned;
using detail::log10_of;
using detail::orders_text;
using detail::tail_loss;

namespace {
constexpr detail::Named<VerdictAxis> kAxes[] = {
    {VerdictAxis::depth, "depth"},     {VerdictAxis::time, "time"}, {VerdictAxis::stability, "stability"},
    {VerdictAxis::profile, "profile"}, {VerdictAxis::training, "training"}};
}  // namespace

const char* to_string(VerdictAxis axis) { return detail::name_of(kAxes, axis); }

std::optional<double> SweepFit::gain() const {
  if (!slope) return std::nullopt;
  return std::pow(10.0, *slope);
}

namespace {

// The architectural facts a remedy can change.
enum class Aspect { activation, init, norm, residual, cell, clipping, forget_bias, recurrent_scale, norm_placement, warmup };

std::set<Aspect> differing(const ModelTraits& a, const ModelTraits& b) {
  std::set<Aspect> d;
  if (a.activation != b.activation) d.insert(Aspect::activation);
  if (a.init != b.init) d.insert(Aspect::init);
  if (a.norm != b.norm) d.insert(Aspect::norm);
  if (a.residual != b.residual) d.insert(Aspect::residual);
  if (a.cell != b.cell) d.insert(Aspect::cell);
  if (a.clip_norm != b.clip_norm || a.clip_value != b.clip_value) d.insert(Aspect::clipping);
  if (a.forget_bias != b.forget_bias) d.insert(Aspect::forget_bias);
  if (a.recurrent_scale != b.recurrent_scale) d.insert(Aspect::recurrent_scale);
  if (a.norm_placement != b.norm_placement) d.insert(Aspect::norm_placement);
  if (a.warmup_steps != b.warmup_steps) d.insert(Aspect::warmup);
  return d;
}

bool relu_like(Activation a) {
  return a == Activation::relu || a == Activation::leaky_relu || a == Activation::elu || a == Activation::selu ||
         a == Activation::gelu;
}

std::string init_remedy(const InitSpec& w) {
  if (is_he(w)) return "He initialisation";
  if (is_xavier(w)) return "Xavier initialisation";
  if (w.kind == Init::identity) return "identity recurrent init (IRNN)";
  return to_string(w) + " initialisation";
}

// Names the one remedy that turns `wo` into `w`, or "" when their difference is not one.
std::string remedy_name(const std::set<Aspect>& diff, const ModelTraits& w, const ModelTraits& wo) {
  if (diff == std::set<Aspect>{Aspect::activation, Aspect::init} && relu_like(w.activation) && is_squashing(wo.activation) &&
      is_he(w.init) && is_plain(wo.init))
    return "ReLU + He initialisation";
  if (diff.size() != 1) return "";
  const bool gated = w.cell == Cell::lstm || w.cell == Cell::gru;
  const bool vanilla = wo.cell == Cell::rnn_tanh || wo.cell == Cell::rnn_relu;
  switch (*diff.begin()) {
    case Aspect::activation:
      if (!relu_like(w.activation) || !is_squashing(wo.activation)) return "";
      return w.activation == Activation::relu ? "ReLU" : to_string(w.activation);
    case Aspect::init: return !is_plain(w.init) && is_plain(wo.init) ? init_remedy(w.init) : "";
    case Aspect::norm:
      if (w.norm == Norm::none || wo.norm != Norm::none) return "";
      return w.norm == Norm::batch ? "batch normalisation" : "layer normalisation";
    case Aspect::residual: return w.residual && !wo.residual ? "residual connections" : "";
    case Aspect::cell: return gated && vanilla ? (w.cell == Cell::lstm ? "LSTM" : "GRU") : "";
    case Aspect::clipping: return w.clipped() && !wo.clipped() ? "gradient clipping" : "";
    case Aspect::forget_bias:
      return w.forget_bias && *w.forget_bias > 0.5 && (!wo.forget_bias || *wo.forget_bias <= 0) ? "forget-gate bias 1" : "";
    case Aspect::recurrent_scale: return "";
    case Aspect::norm_placement: return w.norm_placement == NormPlacement::pre && wo.norm_placement == NormPlacement::post ? "pre-LN" : "";
    case Aspect::warmup: return w.warmup_steps > 0 && wo.warmup_steps == 0 ? "learning-rate warm-up" : "";
  }
  return "";
}

Verdict stability_verdict(Verdict v, const RunRecord& w, const RunRecord& wo) {
  v.axis = VerdictAxis::stability;
  v.with_log10 = log10_of(w.summary.depth);
  v.without_log10 = log10_of(wo.summary.depth);
  const bool bad_wo = diverged(wo) || has_any(wo.findings, {FindingKind::unstable_loss});
  v.confirms = bad_wo && !diverged(w);
  v.text = fmt::format("{}: without it ({}) the loss {}; with it ({}) the loss {} ({} of {} steps clipped)", v.remedy, wo.label,
                       diverged(wo) ? "became non-finite" : bad_wo ? "was unstable" : "stayed finite", w.label,
                       diverged(w) ? "still became non-finite" : fmt::format("stayed finite, ending at {:.3g}", tail_loss(w)),
                       w.clipped_steps, w.steps_done);
  return v;
}

Verdict time_verdict(Verdict v, const RunRecord& w, const RunRecord& wo) {
  v.axis = VerdictAxis::time;
  v.with_log10 = log10_of(w.summary.time_final);
  v.without_log10 = log10_of(wo.summary.time_final);
  v.with_init_log10 = log10_of(w.summary.time);
  v.without_init_log10 = log10_of(wo.summary.time);
  const bool trained = w.steps_done > 1;
  const auto& a = trained ? v.with_log10 : v.with_init_log10;
  const auto& b = trained ? v.without_log10 : v.without_init_log10;
  v.confirms = a && b && *a > *b + 1.0;
  const std::string learn =
      trained ? fmt::format("; {} {} the task (loss {:.3g}), {} {} (loss {:.3g}; a constant answer gives {:.3g})", w.label,
                            learned(w) ? "learned" : "did not learn", tail_loss(w), wo.label,
                            learned(wo) ? "learned it" : "did not", tail_loss(wo), w.baseline_loss)
              : "";
  v.text = fmt::format("{}: log10 |dL/dh_1|/|dL/dh_T| at initialization {} ({}) vs {} ({}){}{}", v.remedy,
                       orders_text(v.with_init_log10), w.label, orders_text(v.without_init_log10), wo.label,
                       trained ? fmt::format(", after training {} vs {}", orders_text(v.with_log10), orders_text(v.without_log10)) : "",
                       learn);
  return v;
}

Verdict depth_verdict(Verdict v, const RunRecord& w, const RunRecord& wo) {
  v.axis = VerdictAxis::depth;
  v.with_log10 = log10_of(w.summary.depth);
  v.without_log10 = log10_of(wo.summary.depth);
  v.confirms = v.with_log10 && v.without_log10 && std::abs(*v.with_log10) + 0.5 < std::abs(*v.without_log10);
  const int span = w.summary.depth ? w.summary.depth->span : 0;
  v.text = fmt::format("{}: dL/dh across {} layers at initialization {} orders ({}) against {} ({}){}", v.remedy, span,
                       orders_text(v.with_log10), w.label, orders_text(v.without_log10), wo.label,
                       v.with_log10 && v.without_log10
                           ? fmt::format(": {} {:.1f} orders", v.confirms ? "recovers" : "changes it by",
                                         std::abs(*v.without_log10) - std::abs(*v.with_log10))
                           : "");
  return v;
}

// Within this factor across the blocks, a profile counts as flat (measured at initialization,
// depths 6 and 12, seeds 0-4: pre-LN's largest/smallest is 1.4-2.8, while post-LN's grows toward
// the output by up to 2.5 or, at some seeds, falls).
constexpr double kFlatProfileFactor = 3.0;

struct BlockProfile {
  std::vector<double> norms;  // per block, input side first
  double last_over_first = 0, spread = 0;
  std::optional<double> slope;  // least-squares log10 norm per block
};

std::optional<BlockProfile> block_profile(const RunRecord& r) {
  BlockProfile p;
  p.norms = detail::norms_at_init(r, detail::block_series(r));
  if (p.norms.size() < 2) return std::nullopt;
  const auto [lo, hi] = std::minmax_element(p.norms.begin(), p.norms.end());
  if (!(*lo > 0) || !std::isfinite(*hi)) return std::nullopt;
  p.last_over_first = p.norms.back() / p.norms.front();
  p.spread = *hi / *lo;
  std::vector<double> x, y;
  for (std::size_t k = 0; k < p.norms.size(); ++k) {
    x.push_back(static_cast<double>(k + 1));
    y.push_back(std::log10(p.norms[k]));
  }
  p.slope = detail::least_squares_slope(x, y);
  return p;
}

bool grows_toward_output(const BlockProfile& p) { return p.last_over_first > 1 && p.slope && *p.slope > 0; }

// Xiong et al. 2020: at initialization post-LN's gradient at the last blocks is larger and grows
// toward the output; pre-LN's is flat across depth.
Verdict placement_verdict(Verdict v, const RunRecord& w, const RunRecord& wo) {
  v.axis = VerdictAxis::profile;
  const auto pw = block_profile(w), pwo = block_profile(wo);
  if (!pw || !pwo) {
    v.text = v.remedy + ": no per-block gradient was recorded at initialization, so there is no profile to compare";
    return v;
  }
  v.with_log10 = std::log10(pw->last_over_first);
  v.without_log10 = std::log10(pwo->last_over_first);
  v.with_value = pw->norms.back();
  v.without_value = pwo->norms.back();
  const bool flat = pw->spread <= kFlatProfileFactor && !grows_toward_output(*pw);
  v.confirms = flat && grows_toward_output(*pwo) && pw->norms.back() < pwo->norms.back();
  v.text = fmt::format(
      "{}: at initialization |dL/dW| of the blocks' MLP output weights {} across the {} blocks of {} (largest/smallest {:.2f}, "
      "last/first {:.2f}); in {} it {} toward the output (last/first {:.2f}), and at the last block it is {:.2f} times {}'s",
      v.remedy, flat ? fmt::format("stays within a factor {:g}", kFlatProfileFactor) : "is not flat", pw->norms.size(), w.label,
      pw->spread, pw->last_over_first, wo.label, grows_toward_output(*pwo) ? "grows" : "does not grow", pwo->last_over_first,
      pwo->norms.back() / pw->norms.back(), w.label);
  return v;
}

// Warm-up is judged by what it is for: whether training gets under way.
Verdict training_verdict(Verdict v, const RunRecord& w, const RunRecord& wo) {
  v.axis = VerdictAxis::training;
  v.with_value = tail_loss(w);
  v.without_value = tail_loss(wo);
  v.confirms = learned(w) && !learned(wo) && !diverged(w);
  auto outcome = [](const RunRecord& r) {
    if (diverged(r)) return std::string("the loss became non-finite");
    const std::string acc = r.accuracy.empty() ? "" : fmt::format(", accuracy {:.2f}", detail::tail_mean(r.accuracy));
    return fmt::format("the loss ended at {:.3g}{} ({})", tail_loss(r), acc, learned(r) ? "learned" : "did not learn");
  };
  v.text = fmt::format("{}: without it ({}) {}; with {} warm-up steps ({}) {}; a constant answer gives {:.3g}", v.remedy, wo.label,
                       outcome(wo), w.traits.warmup_steps, w.label, outcome(w), w.baseline_loss);
  return v;
}

Verdict make_verdict(const std::string& remedy, const RunRecord& w, const RunRecord& wo) {
  Verdict v;
  v.remedy = remedy;
  v.with_label = w.label;
  v.without_label = wo.label;
  if (w.traits.warmup_steps != wo.traits.warmup_steps) return training_verdict(std::move(v), w, wo);
  if (w.traits.norm_placement != wo.traits.norm_placement) return placement_verdict(std::move(v), w, wo);
  if (w.traits.clipped() != wo.traits.clipped()) return stability_verdict(std::move(v), w, wo);
  if (w.traits.recurrent) return time_verdict(std::move(v), w, wo);
  return depth_verdict(std::move(v), w, wo);
}

// Equal in every setting that is not a remedy or a recording choice.
bool same_settings(const RunRecord& a, const RunRecord& b) {
  std::map<std::string, std::string> sa, sb;
  for (const auto& e : a.config)
    if (e.role == ConfigRole::setting) sa[e.key] = e.value;
  for (const auto& e : b.config)
    if (e.role == ConfigRole::setting) sb[e.key] = e.value;
  return sa == sb;
}

std::vector<Verdict> verdicts_of(const std::vector<RunRecord>& runs) {
  std::vector<Verdict> out;
  for (std::size_t i = 0; i < runs.size(); ++i)
    for (std::size_t j = 0; j < runs.size(); ++j) {
      const RunRecord &w = runs[i], &wo = runs[j];
      if (i == j || w.family != wo.family || w.task != wo.task || !same_settings(w, wo)) continue;
      const auto diff = differing(w.traits, wo.traits);
      if (diff.empty()) continue;
      const std::string remedy = remedy_name(diff, w.traits, wo.traits);
      if (!remedy.empty()) out.push_back(make_verdict(remedy, w, wo));
    }
  return out;
}

std::vector<SweepFit> sweep_fits(const std::vector<RunRecord>& runs, SweepAxis axis) {
  std::map<std::string, SweepFit> fits;
  std::vector<std::string> order;
  for (const auto& r : runs) {
    const std::string label = r.sweep.base.empty() ? r.label : r.sweep.base;
    if (!fits.count(label)) order.push_back(label);
    auto& f = fits[label];
    f.label = label;
    const auto a = axis == SweepAxis::seq_len ? log10_of(r.summary.time) : log10_of(r.summary.depth);
    if (a) {
      f.x.push_back(r.sweep.value);
      f.log10.push_back(*a);
    }
  }
  std::vector<SweepFit> out;
  for (const auto& label : order) {
    SweepFit f = fits[label];
    f.slope = detail::least_squares_slope(f.x, f.log10);
    out.push_back(std::move(f));
  }
  return out;
}

}  // namespace

Comparison make_comparison(std::vector<RunRecord> runs, std::vector<std::string> dirs) {
  Comparison c;
  c.runs = std::move(runs);
  c.dirs = std::move(dirs);
  c.dirs.resize(c.runs.size());
  for (const auto& r : c.runs)
    if (r.sweep.axis != SweepAxis::none) c.sweep_axis = r.sweep.axis;
  c.verdicts = verdicts_of(c.runs);
  if (c.sweep_axis != SweepAxis::none) c.sweep = sweep_fits(c.runs, c.sweep_axis);
  return c;
}

}  // namespace gradflow
