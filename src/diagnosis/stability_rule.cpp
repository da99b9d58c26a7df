// edge_of_stability: the sharpness λ_max measured at some steps (MonitorOptions::sharpness_every,
// `gradflow run --sharpness-every`) against the bound (2 + 2β)/η the optimizer's step size sets.
#include <cmath>
#include <vector>

#include <fmt/format.h>

#include "diagnosis/diagnosis_rules.h"
#include "gradflow/sharpness.h"

namespace gradflow::detail {

namespace {

// One measurement against its bound.
struct Edge {
  std::int64_t step = 0;
  double sharpness = 0, bound = 0, lr = 0;
  double ratio() const { return sharpness / bound; }
  // The step size at which this sharpness would sit at the bound.
  double stable_lr() const { return lr / ratio(); }
};

std::vector<Edge> measured_edges(const Trace& t) {
  std::vector<Edge> out;
  for (const auto& st : t.steps())
    if (!st.partial && st.sharpness && st.learning_rate && *st.learning_rate > 0 && st.momentum >= 0 && st.momentum < 1)
      out.push_back(Edge{st.step, *st.sharpness, stability_bound(*st.learning_rate, st.momentum), *st.learning_rate});
  return out;
}

// Whether the loss fell from the first recorded step to the last.
bool loss_fell(const DiagnosisInput& in) {
  const auto& l = in.loss;
  return l.size() >= 2 && std::isfinite(l.front()) && std::isfinite(l.back()) && l.back() < l.front();
}

}  // namespace

std::optional<Finding> edge_of_stability_rule(const DiagnosisInput& in, const DiagnosisOptions& o) {
  const std::vector<Edge> edges = measured_edges(in.trace);
  if (edges.empty() || edges.back().ratio() < o.edge_fraction) return std::nullopt;
  // The stretch at the end where every measurement is at the bound or past it.
  std::size_t first = edges.size() - 1;
  while (first > 0 && edges[first - 1].ratio() >= o.edge_fraction) --first;
  const Edge& start = edges[first];
  const Edge& last = edges.back();
  const bool unstable = last.ratio() > o.unstable_edge_factor || !loss_fell(in);
  Finding f;
  f.kind = FindingKind::edge_of_stability;
  f.severity = unstable ? Severity::warning : Severity::info;
  f.where = start.step == last.step ? fmt::format("step {}", last.step) : fmt::format("steps {} .. {}", start.step, last.step);
  f.message = fmt::format("the sharpness λ_max was {:.3g}× the stability bound (2 + 2·momentum)/lr = {:.3g} from step {} "
                          "(λ_max {:.3g}) to step {} (λ_max {:.3g}): gradient descent has left the gradient flow's path "
                          "there{}",
                          last.ratio(), last.bound, start.step, start.sharpness, last.step, last.sharpness,
                          unstable ? ", and the loss did not settle" : "; the loss falls non-monotonically (the edge of stability, Cohen et al. 2021)");
  f.evidence = {{"sharpness", last.sharpness}, {"stability_bound", last.bound}, {"ratio", last.ratio()},
                {"from_step", static_cast<double>(start.step)}};
  const double stable_lr = last.stable_lr();
  f.remedy = unstable ? fmt::format("a learning rate below {:.3g} (where λ_max would be within the bound), or learning-rate "
                                    "warm-up",
                                    stable_lr)
                      : fmt::format("none needed: full-batch descent trains at the edge; a learning rate below {:.3g} "
                                    "follows the gradient flow",
                                    stable_lr);
  return f;
}

}  // namespace gradflow::detail
