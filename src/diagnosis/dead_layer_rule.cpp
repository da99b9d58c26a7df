// dead_layer: a layer whose gradient is exactly 0 at every recorded step of a window while the
// layers it feeds receive a normal one. An exact 0 there needs no activation to be read: an
// underflow shrinks a gradient gradually, through layers whose figures are already tiny, so a
// layer at exactly 0 below one whose RMS is far above float's smallest values was cut by a factor of
// exactly 0 (a ReLU inactive for every input, a gate or mask of 0).
#include <algorithm>
#include <cmath>
#include <limits>
#include <unordered_map>
#include <unordered_set>

#include <fmt/format.h>

#include "diagnosis/diagnosis_rules.h"
#include "util/text.h"

namespace gradflow::detail {

namespace {

// Far above float's smallest values: a gradient this large is not underflowing.
constexpr double kNormalRms = 1e-30;

// Whether a layer received gradient at one step, read from every series of the layer.
enum class Flow { absent, zero, some };

struct Cell {
  Flow flow = Flow::absent;
  double rms = 0;  // the largest RMS of its series at the step
};

struct LayerSeries {
  std::string layer;
  std::vector<int> series;  // its parameters and its layer outputs
};

// The layers with parameters or layer outputs, in forward order.
std::vector<LayerSeries> layers_in_forward_order(const Trace& t) {
  std::vector<LayerSeries> out;
  std::unordered_map<std::string, std::size_t> at;
  auto add = [&](int s) {
    const std::string& layer = t.series()[s].layer;
    auto [it, fresh] = at.emplace(layer, out.size());
    if (fresh) out.push_back(LayerSeries{layer, {}});
    out[it->second].series.push_back(s);
  };
  for (int s : parameters_in_forward_order(t)) add(s);
  for (int s : t.series_of_kind(SeriesKind::activation)) add(s);
  return out;
}

Cell cell_of(const std::vector<const Record*>& by_series, const std::vector<int>& series) {
  Cell c;
  for (int s : series) {
    const Record* r = by_series[static_cast<std::size_t>(s)];
    if (!r || r->grad.numel == 0) continue;
    if (r->grad.nonfinite > 0 || r->grad.zeros != r->grad.numel) {
      c.flow = Flow::some;
      c.rms = r->grad.nonfinite > 0 ? std::numeric_limits<double>::infinity() : std::max(c.rms, r->grad.rms());
    } else if (c.flow == Flow::absent) {
      c.flow = Flow::zero;
    }
  }
  return c;
}

// cells[step][layer]
std::vector<std::vector<Cell>> layer_cells(const Trace& t, const std::vector<LayerSeries>& layers) {
  std::vector<std::vector<Cell>> out;
  std::vector<const Record*> by_series(t.series().size(), nullptr);
  for (const auto& st : t.steps()) {
    std::fill(by_series.begin(), by_series.end(), nullptr);
    for (const auto& r : st.records) by_series[static_cast<std::size_t>(r.series)] = &r;
    std::vector<Cell> row;
    for (const auto& l : layers) row.push_back(cell_of(by_series, l.series));
    out.push_back(std::move(row));
  }
  return out;
}

// The layers each layer's output feeds (SeriesInfo::inputs, by layer index); where the trace
// knows none, the next layer in forward order.
std::vector<std::vector<std::size_t>> consumers_of(const Trace& t, const std::vector<LayerSeries>& layers) {
  std::unordered_map<std::string, std::size_t> index;
  for (std::size_t k = 0; k < layers.size(); ++k) index.emplace(layers[k].layer, k);
  std::vector<std::vector<std::size_t>> out(layers.size());
  for (int s : t.series_of_kind(SeriesKind::activation))
    for (int from : t.series()[s].inputs) {
      // A recorded trace may name any earlier series as an input: only layers feed layers.
      const auto source = index.find(t.series()[from].layer);
      if (source == index.end()) continue;
      auto& c = out[source->second];
      const std::size_t to = index.at(t.series()[s].layer);
      if (std::find(c.begin(), c.end(), to) == c.end()) c.push_back(to);
    }
  for (std::size_t k = 0; k + 1 < layers.size(); ++k)
    if (out[k].empty()) out[k].push_back(k + 1);
  return out;
}

// dead[step][layer]: exactly 0 while a layer it feeds receives a normal gradient, or is dead
// itself (it then starves this one). Consumers come later in forward order: decided last first.
std::vector<std::vector<bool>> dead_cells(const std::vector<std::vector<Cell>>& cells,
                                          const std::vector<std::vector<std::size_t>>& consumers) {
  std::vector<std::vector<bool>> out;
  for (const auto& row : cells) {
    std::vector<bool> dead(row.size(), false);
    for (std::size_t k = row.size(); k-- > 0;) {
      if (row[k].flow != Flow::zero) continue;
      dead[k] = std::any_of(consumers[k].begin(), consumers[k].end(), [&](std::size_t c) {
        return c > k && (dead[c] || (row[c].flow == Flow::some && row[c].rms > kNormalRms));
      });
    }
    out.push_back(std::move(dead));
  }
  return out;
}

// The longest run of recorded steps at which layer k was dead.
DeadLayer longest_dead_run(const Trace& t, const std::vector<std::vector<Cell>>& cells,
                           const std::vector<std::vector<bool>>& dead, std::size_t k) {
  DeadLayer best;
  std::size_t run = 0, best_end = 0, best_len = 0;
  for (std::size_t i = 0; i < dead.size(); ++i) {
    run = dead[i][k] ? run + 1 : 0;
    if (run > best_len) best_len = run, best_end = i;
  }
  best.steps = static_cast<int>(best_len);
  if (best_len == 0) return best;
  const std::size_t begin = best_end + 1 - best_len;
  best.first_at = begin;
  best.last_at = best_end;
  best.first_step = t.steps()[begin].step;
  best.last_step = t.steps()[best_end].step;
  for (std::size_t i = begin; i-- > 0;)
    if (cells[i][k].flow == Flow::some) {
      best.last_alive_step = t.steps()[i].step;
      break;
    }
  return best;
}

// A bias that alone holds a layer's pre-activations at one sign: its RMS above the norm of the
// layer's weight rows (what the weights add for an input of unit scale), at the dead window's
// first step. NaN figures (weight norms not recorded) decide nothing.
struct BiasEvidence {
  std::string bias;
  double bias_rms = 0, row_norm = 0;
};

std::optional<BiasEvidence> large_bias(const Trace& t, const StepRecord& st, const LayerSeries& layer) {
  const Record *bias = nullptr, *weight = nullptr;
  int bias_series = -1, weight_series = -1;
  for (int s : layer.series) {
    const auto& info = t.series()[s];
    if (info.kind != SeriesKind::parameter) continue;
    const Record* r = st.find(s);
    if (!r) continue;
    if (info.shape.size() == 1 && info.name.size() > 5 && info.name.compare(info.name.size() - 5, 5, ".bias") == 0)
      bias = r, bias_series = s;
    else if (info.shape.size() >= 2 && info.shape[0] > 0)
      weight = r, weight_series = s;
  }
  if (!bias || !weight || bias->grad.numel == 0) return std::nullopt;
  const double bias_rms = bias->weight_norm / std::sqrt(static_cast<double>(bias->grad.numel));
  const double row_norm = weight->weight_norm / std::sqrt(static_cast<double>(t.series()[weight_series].shape[0]));
  if (!(bias_rms > row_norm)) return std::nullopt;
  return BiasEvidence{t.series()[bias_series].name, bias_rms, row_norm};
}

// What the numbers say killed a layer: an update during training (it received gradient before),
// a bias that alone holds its pre-activations where nothing passes back, or its initialisation.
enum class DeathCause { bias, initialisation, update };

struct Death {
  DeathCause cause = DeathCause::initialisation;
  std::optional<BiasEvidence> bias;
};

Death cause_of(const Trace& t, const DeadLayer& d, const LayerSeries& layer) {
  if (d.last_alive_step >= 0) return {DeathCause::update, std::nullopt};
  if (auto b = large_bias(t, t.steps()[d.first_at], layer)) return {DeathCause::bias, std::move(b)};
  return {DeathCause::initialisation, std::nullopt};
}

std::string names_of(const std::vector<const DeadLayer*>& dead) {
  std::vector<std::string> names;
  for (const DeadLayer* d : dead) names.push_back(d->layer);
  return join(names);
}

// The remedy for the layers one cause killed; `first` is the first of them.
std::string remedy_for(const Death& first, const std::vector<const DeadLayer*>& dead) {
  const std::string names = names_of(dead);
  switch (first.cause) {
    case DeathCause::bias:
      return fmt::format("{}: dead from the first recorded step because of the bias: {} has RMS {:.3g}, above the norm of "
                         "the weight rows ({:.3g}), so it alone holds every pre-activation where the activation passes "
                         "nothing back: initialise biases at 0",
                         names, first.bias->bias, first.bias->bias_rms, first.bias->row_norm);
    case DeathCause::initialisation:
      return fmt::format("{}: dead from the first recorded step: an initialisation that leaves every unit inactive for "
                         "every input (He initialisation with zero biases, or a leaky ReLU), or a mask or gate of 0 on "
                         "the output",
                         names);
    case DeathCause::update: {
      std::vector<std::string> until;
      for (const DeadLayer* d : dead)
        until.push_back(fmt::format("{} received gradient until step {}", d->layer, d->last_alive_step));
      return fmt::format("{}, then a training update left every unit inactive for every input: a smaller learning rate or "
                         "a warm-up, gradient clipping, or a leaky ReLU",
                         join(until));
    }
  }
  return {};
}

// The remedies for the layers where the gradient stops, one per cause their numbers show.
std::string dead_remedy(const Trace& t, const std::vector<LayerSeries>& layers, const std::vector<const DeadLayer*>& cuts) {
  std::vector<std::string> remedies;
  for (DeathCause cause : {DeathCause::bias, DeathCause::initialisation, DeathCause::update}) {
    std::vector<const DeadLayer*> killed;
    std::optional<Death> first;
    for (const DeadLayer* d : cuts) {
      Death death = cause_of(t, *d, layers[d->position]);
      if (death.cause != cause) continue;
      if (!first) first = std::move(death);
      killed.push_back(d);
    }
    if (first) remedies.push_back(remedy_for(*first, killed));
  }
  return join(remedies, "; ");
}

std::string windows_text(const std::vector<DeadLayer>& dead, std::int64_t last_recorded) {
  const bool same = std::all_of(dead.begin(), dead.end(), [&](const DeadLayer& d) {
    return d.first_step == dead[0].first_step && d.last_step == dead[0].last_step;
  });
  std::vector<std::string> parts;
  for (const auto& d : dead)
    parts.push_back(same ? d.layer : fmt::format("{} (steps {} .. {})", d.layer, d.first_step, d.last_step));
  std::string text = join(parts);
  if (same) text += fmt::format(" at every recorded step from {} to {} ({} steps)", dead[0].first_step, dead[0].last_step, dead[0].steps);
  std::vector<std::string> again;
  for (const auto& d : dead)
    if (d.at_end && d.last_step != last_recorded) again.push_back(d.layer);
  if (!again.empty()) text += "; dead again at the last recorded step: " + join(again);
  return text;
}

// The layers that received gradient at a step, in forward order.
std::vector<std::size_t> alive_at(const std::vector<std::vector<Cell>>& cells, std::size_t i) {
  std::vector<std::size_t> out;
  for (std::size_t k = 0; k < cells[i].size(); ++k)
    if (cells[i][k].flow == Flow::some) out.push_back(k);
  return out;
}

// The dead layers as a range where they follow each other in forward order, else by name.
std::string where_of(const std::vector<DeadLayer>& dead) {
  if (dead.size() == 1) return dead[0].layer;
  if (dead.back().position - dead.front().position + 1 == dead.size())
    return fmt::format("{} .. {} ({} layers)", dead.front().layer, dead.back().layer, dead.size());
  std::vector<std::string> names;
  for (const auto& d : dead) names.push_back(d.layer);
  return join(names);
}

// Marks the dead layers that all their known consumers' deaths explain (DeadLayer::cut false).
void mark_cuts(const std::vector<std::vector<std::size_t>>& consumers, std::vector<DeadLayer>& dead) {
  std::unordered_set<std::size_t> dead_at;
  for (const auto& d : dead) dead_at.insert(d.position);
  for (auto& d : dead) {
    const auto& c = consumers[d.position];
    d.cut = c.empty() || std::any_of(c.begin(), c.end(), [&](std::size_t to) { return !dead_at.count(to); });
  }
}

// What dead_layers() and the rule read: the layers in forward order, their figures at each step,
// and the dead ones.
struct DeadAnalysis {
  std::vector<LayerSeries> layers;
  std::vector<std::vector<Cell>> cells;
  std::vector<DeadLayer> dead;
};

DeadAnalysis analyse(const Trace& t, const DiagnosisOptions& o) {
  DeadAnalysis a;
  if (t.steps().empty()) return a;
  a.layers = layers_in_forward_order(t);
  a.cells = layer_cells(t, a.layers);
  const auto consumers = consumers_of(t, a.layers);
  const auto dead = dead_cells(a.cells, consumers);
  const int need = std::max(1, std::min(o.no_gradient_steps, static_cast<int>(t.steps().size())));
  for (std::size_t k = 0; k < a.layers.size(); ++k) {
    DeadLayer d = longest_dead_run(t, a.cells, dead, k);
    d.layer = a.layers[k].layer;
    d.position = k;
    d.at_end = dead.back()[k];
    if (d.steps >= need) a.dead.push_back(std::move(d));
  }
  mark_cuts(consumers, a.dead);
  return a;
}

}  // namespace

std::vector<DeadLayer> dead_layers(const DiagnosisInput& in, const DiagnosisOptions& o) { return analyse(in.trace, o).dead; }

std::optional<Finding> dead_layer_rule(const DiagnosisInput& in, const DiagnosisOptions& o) {
  const DeadAnalysis a = analyse(in.trace, o);
  const std::vector<DeadLayer>& dead = a.dead;
  if (dead.empty()) return std::nullopt;
  const Trace& t = in.trace;
  const auto& layers = a.layers;
  const auto alive = alive_at(a.cells, dead[0].last_at);
  std::vector<const DeadLayer*> cuts;
  for (const auto& d : dead)
    if (d.cut) cuts.push_back(&d);
  Finding f;
  f.kind = FindingKind::dead_layer;
  f.severity = Severity::error;
  f.where = where_of(dead);
  // Every layer dead but the last one, which still receives gradient from the loss: the network died.
  const bool network = alive.size() == 1 && alive[0] + 1 == layers.size() && dead.size() + 1 == layers.size();
  const std::string receiver = alive.empty() ? std::string("no layer") : layers[alive[0]].layer;
  f.message = network ? fmt::format("the network died: no layer below its last one, {}, received any gradient ({})",
                                    receiver, windows_text(dead, t.steps().back().step))
                      : fmt::format("{} layer(s) received exactly 0 gradient, parameters and output alike, while {} other "
                                    "layer(s) received some ({} among them): {}",
                                    dead.size(), alive.size(), receiver, windows_text(dead, t.steps().back().step));
  if (!cuts.empty() && cuts.size() < dead.size())
    f.message += fmt::format("; the gradient stops at {}: the layers below receive none through it", names_of(cuts));
  f.evidence = {{"layers", static_cast<double>(dead.size())},
                {"first_step", static_cast<double>(dead[0].first_step)},
                {"last_step", static_cast<double>(dead[0].last_step)},
                {"steps", static_cast<double>(dead[0].steps)}};
  if (dead[0].last_alive_step >= 0) f.evidence.emplace_back("last_alive_step", static_cast<double>(dead[0].last_alive_step));
  f.remedy = dead_remedy(t, layers, cuts.empty() ? std::vector<const DeadLayer*>{&dead.front()} : cuts);
  return f;
}

bool is_dead_layer(const std::vector<DeadLayer>& dead, const std::string& layer) {
  return std::any_of(dead.begin(), dead.end(), [&](const DeadLayer& d) { return d.layer == layer; });
}

}  // namespace gradflow::detail
