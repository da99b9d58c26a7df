#include "models/coord_run.h"

#include <algorithm>
#include <array>
#include <cmath>

#include <torch/torch.h>


#include "gradflow/coord_figures.h"
#include "gradflow/error.h"
#include "models/network.h"
#include "models/parametrise.h"
#include "models/task.h"
#include "util/text.h"

namespace gradflow::models {

namespace {

// Each recorded layer's weight among the network's parameters.
std::vector<torch::Tensor> layer_weights(Network& net, const std::vector<std::string>& layers) {
  const auto named = net.named_parameters();
  std::vector<torch::Tensor> out;
  for (const auto& l : layers) {
    const auto* w = named.find(l + ".weight");
    out.push_back(w ? *w : torch::Tensor());
  }
  return out;
}

// The spec as the sweep ran it: every option but the swept width.
std::string label_without_width(const ResolvedSpec& spec) {
  const std::string canonical = spec.canonical(), key = std::string(width_option(spec.family)) + "=";
  const auto colon = canonical.find(':');
  std::string out = canonical.substr(0, colon + 1);
  bool first = true;
  for (const auto& item : detail::split(canonical.substr(colon + 1))) {
    if (item.rfind(key, 0) == 0) continue;
    out += (first ? "" : ",") + item;
    first = false;
  }
  return out;
}

std::vector<double> group_rates(const torch::optim::Optimizer& opt) {
  std::vector<double> lrs;
  for (const auto& g : opt.param_groups()) lrs.push_back(g.options().get_lr());
  return lrs;
}

// One step's figures: [quantity][layer].
using StepFigures = std::array<std::vector<double>, kCoordQuantities>;

struct WidthRun {
  std::vector<std::string> layers;
  std::vector<WeightKind> kinds;
  std::vector<double> rates;  ///< each optimizer group's learning rate
  std::vector<StepFigures> figures;  ///< one per step
};

// The first step names the layers, each with its weight's kind (of `kinds`, in parameter order).
void name_layers(const LayerOutputs& outputs, const std::vector<std::string>& params, const std::vector<WeightKind>& kinds, WidthRun& run) {
  for (const auto& [name, h] : outputs) {
    run.layers.push_back(name);
    const auto index = static_cast<std::size_t>(std::find(params.begin(), params.end(), name + ".weight") - params.begin());
    run.kinds.push_back(index < kinds.size() ? kinds[index] : WeightKind::fixed);
  }
}

// One step's figures of every layer, in one transfer: its output, the output's change since
// `initial` (none at the first step), the output's gradient, the weight's gradient and update.
StepFigures step_figures(const LayerOutputs& outputs, const std::vector<torch::Tensor>& initial, const std::vector<torch::Tensor>& weights,
                         const std::vector<torch::Tensor>& before, bool first) {
  std::vector<torch::Tensor> all;
  for (std::size_t l = 0; l < outputs.size(); ++l) {
    const torch::Tensor& h = outputs[l].second;
    const bool weighted = weights[l].defined();
    all.insert(all.end(), {h.detach(), first ? torch::Tensor() : h.detach() - initial[l], h.grad(),
                           weighted ? weights[l].grad() : torch::Tensor(), weighted ? weights[l].detach() - before[l] : torch::Tensor()});
  }
  const std::vector<double> v = coordinate_sizes(all);
  StepFigures step;
  for (std::size_t l = 0; l < outputs.size(); ++l)
    for (std::size_t q = 0; q < kCoordQuantities; ++q) step[q].push_back(v[l * kCoordQuantities + q]);
  return step;
}

std::vector<torch::Tensor> copies(const std::vector<torch::Tensor>& tensors) {
  std::vector<torch::Tensor> out;
  for (const auto& t : tensors) out.push_back(t.defined() ? t.detach().clone() : torch::Tensor());
  return out;
}

WidthRun train_one_width(const ResolvedSpec& spec, const CoordRunOptions& o, const ParameterLayout& layout, const Batch& batch, Task& task,
                         std::uint64_t seed) {
  torch::manual_seed(seed);
  auto net = make_network(spec, task.input_dim(), task.output_dim());
  net->train();
  const OptimizerChoice choice = choose_optimizer(spec, o.train);
  auto opt = make_optimizer(choice, parameter_groups(spec, *net, optimizer_kind(choice), layout), o.train.momentum);
  WidthRun run;
  run.rates = group_rates(*opt);
  LayerOutputs outputs;
  std::vector<torch::Tensor> initial;
  net->capture_layer_outputs(&outputs);
  for (std::int64_t t = 0; t < o.train.steps; ++t) {
    outputs.clear();
    opt->zero_grad();
    const torch::Tensor loss = task.loss(net->forward(batch.x, nullptr), batch);
    if (t == 0) {
      name_layers(outputs, net->named_parameters().keys(), layout.kinds, run);
      for (const auto& [name, h] : outputs) initial.push_back(h.detach().clone());
    }
    if (outputs.size() != run.layers.size()) throw Error("the network's layer outputs changed between steps");
    for (auto& [name, h] : outputs) h.retain_grad();
    loss.backward();
    const auto weights = layer_weights(*net, run.layers);
    const auto before = copies(weights);
    opt->step();
    run.figures.push_back(step_figures(outputs, initial, weights, before, t == 0));
  }
  net->capture_layer_outputs(nullptr);
  return run;
}

}  // namespace

void validate(const CoordRunOptions& o) {
  if (o.seeds < 1 || o.seeds > 1000) throw UsageError("--seeds must be from 1 to 1000 (got " + std::to_string(o.seeds) + ")");
  if (o.widths.size() < 2) throw UsageError("a width sweep needs at least two widths to fit a slope, e.g. width=64,128,256,512");
  validate(o.train);
}

CoordCheck run_coord_check(const ResolvedSpec& spec, const CoordRunOptions& o) {
  if (spec.family == "rnn") throw UsageError("--sweep width applies to mlp, cnn and transformer models; '" + spec.label() + "' is recurrent");
  validate(o);
  CoordCheck c;
  c.label = label_without_width(spec);
  const OptimizerChoice choice = choose_optimizer(spec, o.train);
  c.optimizer_kind = optimizer_kind(choice);
  c.widths = o.widths;
  c.steps = o.train.steps;
  c.seeds = o.seeds;
  // One task and one batch for every width: drawn before any network, from the same seed.
  torch::manual_seed(o.train.seed);
  auto task = make_task_for(spec, o.train);
  const Batch batch = task->sample(o.train.batch);
  const ParameterLayout layout = parameter_layout(spec, task->input_dim(), task->output_dim());
  std::vector<double> first_rates, last_rates;
  for (std::size_t w = 0; w < o.widths.size(); ++w) {
    for (std::int64_t s = 0; s < o.seeds; ++s) {
      const WidthRun run =
          train_one_width(spec.with_width(o.widths[w]), o, layout, batch, *task, o.train.seed + 1 + static_cast<std::uint64_t>(s));
      (w == 0 ? first_rates : last_rates) = run.rates;
      if (w == 0 && s == 0) {
        for (std::size_t l = 0; l < run.layers.size(); ++l) c.layers.push_back({run.layers[l], run.kinds[l]});
        c.allocate();
      }
      for (std::int64_t t = 0; t < c.steps; ++t)
        for (std::size_t q = 0; q < kCoordQuantities; ++q)
          for (std::size_t l = 0; l < c.layers.size(); ++l) {
            double& cell = c.at(static_cast<CoordQuantity>(q), t, l, w);
            const double v = run.figures[static_cast<std::size_t>(t)][q][l] / static_cast<double>(o.seeds);
            cell = s == 0 ? v : cell + v;
          }
    }
    if (o.progress) o.progress(w + 1, o.widths.size());
  }
  c.optimizer = optimizer_text(choice.name, first_rates, c.widths.front(), last_rates, c.widths.back());
  return c;
}

}  // namespace gradflow::models
