#pragma once
// What the report's renderers show, computed once from a Comparison: rankings, per-run facts.

#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "gradflow/report.h"
#include "report/svg.h"

namespace gradflow::detail {

std::optional<double> log10_of(const std::optional<Attenuation>& a);
// The loss became non-finite, or a non_finite finding says a gradient did.
bool diverged(const RunRecord& r);
// Mean of the last tenth of a per-step series (NaN when empty).
double tail_mean(const std::vector<double>& v);
// Mean loss over the last tenth of the run.
double tail_loss(const RunRecord& r);
// The tail loss is under half the constant-answer baseline.
bool learned(const RunRecord& r);
// The run's finding kinds, sorted and joined ("exploding, vanishing"), or "none".
std::string finding_kinds_text(const RunRecord& r);
// The gradient norm of a series at a step: NaN when absent, +inf when non-finite.
double norm_at(const StepRecord& st, int series);
// Each Transformer block's last weight (its MLP's output weight, W2 in Xiong et al. 2020), in
// block order: the series Xiong et al.'s bound is about. Empty for a run without blocks.
std::vector<int> block_series(const RunRecord& r);
// norm_at of each series at the first recorded step (empty without steps).
std::vector<double> norms_at_init(const RunRecord& r, const std::vector<int>& series);

// One line of a ranking table. Depth rankings hold the attenuation across depth, time
// rankings across time.
struct RankingRow {
  int rank = 0;
  const RunRecord* run = nullptr;
  int index = 0;  // the run's position in Comparison::runs: its colour in every chart
  std::optional<Attenuation> init;  // at the first recorded step
  std::optional<Attenuation> end;   // at the last
  bool learned = false;
  std::string findings;
};

// Feed-forward runs, the least attenuated first.
std::vector<RankingRow> depth_ranking(const Comparison& c);
// Recurrent runs, the most gradient reaching the first step after training first.
std::vector<RankingRow> time_ranking(const Comparison& c);

// At most this many columns in a heatmap: longer runs are shown in bins of consecutive steps.
inline constexpr std::size_t kHeatmapColumns = 40;

// A layer x step heatmap of the norms of `chain` (forward order; shown output side on top),
// rows named `names`, steps binned to kHeatmapColumns; render() draws it.
Heatmap layer_heatmap(const RunRecord& r, const std::vector<int>& chain, const std::vector<std::string>& names,
                      const std::string& y_label);
// Draws heatmaps set side by side on one colour scale, so that one colour is one gradient in each.
std::string render_on_one_scale(std::vector<Heatmap> maps);

// A line chart with its titles, ready for series; x counts something (ticks at whole numbers).
LineChart line_chart(std::string title, std::string x_label, std::string y_label, std::string note = "");

// The style sheet every report page uses.
const char* report_css();

// The report's charts (profiles, time series, loss curves, sweep, heatmaps) as HTML sections.
std::string charts_html(const Comparison& c);

}  // namespace gradflow::detail
