#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "report/figures.h"
#include "report/report_model.h"
#include "report/svg.h"

namespace gradflow::detail {

LineChart line_chart(std::string title, std::string x_label, std::string y_label, std::string note) {
  LineChart c;
  c.title = std::move(title);
  c.x_label = std::move(x_label);
  c.y_label = std::move(y_label);
  c.note = std::move(note);
  // Every report chart counts along x: layers, time steps, training steps, depths.
  c.integer_x = true;
  return c;
}

namespace {

std::vector<double> smooth(const std::vector<double>& v, std::vector<double>& xs) {
  const std::size_t n = v.size();
  const std::size_t w = std::max<std::size_t>(1, n / 100);
  std::vector<double> out;
  xs.clear();
  for (std::size_t b = 0; b < n; b += w) {
    double s = 0;
    std::size_t k = 0;
    bool bad = false;
    for (std::size_t i = b; i < std::min(n, b + w); ++i) {
      if (!std::isfinite(v[i])) bad = true;
      s += v[i];
      ++k;
    }
    out.push_back(bad ? std::numeric_limits<double>::quiet_NaN() : s / static_cast<double>(k));
    xs.push_back(static_cast<double>(b + (std::min(n, b + w) - b) / 2));
  }
  return out;
}

// The gradient norm of each series of `chain` at one step, against its position 1, 2, ...
LineSeries profile(const RankingRow& row, const StepRecord& st, const std::vector<int>& chain, const char* what) {
  const RunRecord& r = *row.run;
  LineSeries s;
  s.label = r.label;
  s.colour = row.index;
  for (std::size_t k = 0; k < chain.size(); ++k) {
    s.x.push_back(static_cast<double>(k + 1));
    s.y.push_back(norm_at(st, chain[k]));
    s.tips.push_back(fmt::format("{} {}: {} = {:.4g}", r.label, r.trace.series()[chain[k]].name, what, s.y.back()));
  }
  return s;
}

// |dL/dh| per hidden layer and |dL/dW| per weight layer at the first recorded step.
std::string depth_profiles(const std::vector<RankingRow>& rows) {
  LineChart prof = line_chart("Backward signal |dL/dh| per hidden layer at initialization", "hidden layer (1 = next to the input)",
                         "|dL/dh| (log scale)",
                         "A line that falls toward layer 1 is a vanishing gradient: the early layers receive almost nothing.");
  LineChart wprof = line_chart("Weight-gradient norm |dL/dW| per layer at initialization", "weight layer (1 = next to the input)",
                          "|dL/dW| (log scale)",
                          "The weight gradient alone can mislead (a residual net's first layers receive small |dL/dW| while dL/dh "
                          "does not vanish); judge by the backward signal above.");
  LineChart blocks = line_chart("Transformer blocks: |dL/dW| of each block's MLP output weight at initialization", "block (1 = next to the input)",
                                "|dL/dW| (log scale)",
                                "Xiong et al. 2020: with post-LN the gradient at the last blocks is larger and grows toward the "
                                "output, which is why post-LN needs a learning-rate warm-up; with pre-LN it is flat across depth. Runs that "
                                "differ only in how they train (a warm-up) start from the same network and coincide here.");
  for (const auto& row : rows) {
    const auto& r = *row.run;
    if (r.trace.steps().empty()) continue;
    const auto& st = r.trace.steps().front();
    prof.series.push_back(profile(row, st, depth_series(r.trace), "|dL/dh|"));
    wprof.series.push_back(profile(row, st, weight_series(r.trace), "|dL/dW|"));
    const auto per_block = block_series(r);
    if (!per_block.empty()) blocks.series.push_back(profile(row, st, per_block, "|dL/dW|"));
  }
  return "<h2>Gradient across depth</h2>\n" + render(prof) + render(wprof) + (blocks.series.empty() ? "" : render(blocks));
}

// |dL/dh_t| per time step at the first and the last recorded step.
std::string time_profiles(const std::vector<RankingRow>& rows) {
  LineChart tc = line_chart("|dL/dh_t| per time step: at initialization (dashed) and after training (solid)", "time step t",
                       "|dL/dh_t| (log scale)",
                       "The loss reads the last step only, so everything that reaches early steps travels back through the recurrence.");
  for (const auto& row : rows) {
    const auto& r = *row.run;
    if (r.trace.steps().empty()) continue;
    const auto chain = numbered_series(r.trace, "time");
    for (int which = 0; which < 2; ++which) {
      const auto& st = which == 0 ? r.trace.steps().front() : r.trace.steps().back();
      if (which == 1 && r.trace.steps().size() < 2) continue;
      LineSeries s;
      s.label = r.label + (which == 0 ? " (init)" : fmt::format(" (step {})", st.step));
      s.dashed = which == 0;
      s.colour = row.index;
      s.markers = chain.size() <= 60;
      for (std::size_t k = 0; k < chain.size(); ++k) {
        s.x.push_back(static_cast<double>(k + 1));
        s.y.push_back(norm_at(st, chain[k]));
        s.tips.push_back(fmt::format("{} t={}: {:.4g}", s.label, k + 1, s.y.back()));
      }
      tc.series.push_back(s);
    }
  }
  return "<h2>Gradient across time</h2>\n" + render(tc);
}

// Loss curves, one chart per task (their scales differ).
std::string loss_curves(const Comparison& c) {
  std::vector<std::string> task_order;
  for (const auto& r : c.runs)
    if (std::find(task_order.begin(), task_order.end(), r.task) == task_order.end()) task_order.push_back(r.task);
  std::string out = "<h2>Does it learn?</h2>\n";
  for (const auto& task : task_order) {
    LineChart lc = line_chart("Training loss, task " + task, "step", "loss (log scale)");
    double baseline = 0;
    for (std::size_t i = 0; i < c.runs.size(); ++i) {
      const RunRecord& r = c.runs[i];
      if (r.task != task) continue;
      baseline = r.baseline_loss;
      LineSeries s;
      s.label = r.label;
      s.colour = static_cast<int>(i);
      s.markers = false;
      s.y = smooth(r.loss, s.x);
      lc.series.push_back(s);
    }
    lc.note = fmt::format("Window means of the per-step loss. A constant answer scores {:.3g}; a run that stays there learned nothing.", baseline);
    out += render(lc);
  }
  return out;
}

std::string sweep_chart(const Comparison& c) {
  LineChart sc;
  sc.integer_x = true;
  const bool time = c.sweep_axis == SweepAxis::seq_len;
  sc.title = time ? "Attenuation across time against sequence length" : "Attenuation across depth against depth";
  sc.x_label = time ? "sequence length T" : "depth (weight layers)";
  sc.y_label = "log10 |dL/dh_first| / |dL/dh_last|";
  sc.log_y = false;
  std::string note = "Fitted gain per " + std::string(time ? "step" : "layer") + ": ";
  for (const auto& f : c.sweep) {
    LineSeries s;
    s.label = f.label;
    s.x = f.x;
    s.y = f.log10;
    for (std::size_t k = 0; k < f.x.size(); ++k) s.tips.push_back(fmt::format("{} at {:g}: {:+.2f} orders", f.label, f.x[k], f.log10[k]));
    sc.series.push_back(s);
    note += fmt::format("{} {}; ", f.label, gain_text(f.gain()));
  }
  sc.note = note;
  return "<h2>Sweep over " + html_escape(to_string(c.sweep_axis)) + "</h2>\n" + render(sc);
}

// log10 of the geometric mean of a series' norms over steps [b, e); NaN when one of them is
// missing, zero or non-finite (the cell then says so, rather than averaging it away).
double binned_log10(const std::vector<StepRecord>& steps, std::size_t b, std::size_t e, int series) {
  double sum = 0;
  for (std::size_t i = b; i < e; ++i) {
    const double v = norm_at(steps[i], series);
    if (!(v > 0 && std::isfinite(v))) return std::numeric_limits<double>::quiet_NaN();
    sum += std::log10(v);
  }
  return sum / static_cast<double>(e - b);
}

Heatmap heatmap(const RunRecord& r) {
  const auto chain = r.traits.recurrent ? numbered_series(r.trace, "time") : depth_series(r.trace);
  std::vector<std::string> names;
  for (int s : chain) names.push_back(r.trace.series()[s].name);
  return layer_heatmap(r, chain, names, r.traits.recurrent ? "time step" : "hidden layer");
}

}  // namespace

std::string render_on_one_scale(std::vector<Heatmap> maps) {
  double lo = std::numeric_limits<double>::infinity(), hi = -lo;
  for (const auto& m : maps)
    for (const auto& row : m.log10_values)
      for (double v : row)
        if (std::isfinite(v)) lo = std::min(lo, v), hi = std::max(hi, v);
  std::string out;
  for (auto& m : maps) {
    if (std::isfinite(lo) && hi - lo > 1e-9) m.range = std::make_pair(lo, hi);
    out += render(m);
  }
  return out;
}

Heatmap layer_heatmap(const RunRecord& r, const std::vector<int>& chain, const std::vector<std::string>& names,
                      const std::string& y_label) {
  const auto& steps = r.trace.steps();
  Heatmap h;
  h.title = r.label;
  h.x_label = "training step";
  h.y_label = y_label;
  const std::size_t per_column = (steps.size() + kHeatmapColumns - 1) / std::max<std::size_t>(kHeatmapColumns, 1);
  std::vector<std::pair<std::size_t, std::size_t>> bins;
  for (std::size_t b = 0; b < steps.size(); b += per_column) {
    const std::size_t e = std::min(steps.size(), b + per_column);
    bins.emplace_back(b, e);
    h.cols.push_back(e - b == 1 ? std::to_string(steps[b].step)
                                : std::to_string(steps[b].step) + "-" + std::to_string(steps[e - 1].step));
  }
  // Rows from the output side down to the input side, like the backward pass.
  for (std::size_t k = chain.size(); k-- > 0;) {
    h.rows.push_back(names[k]);
    std::vector<double> row;
    for (const auto& [b, e] : bins) row.push_back(binned_log10(steps, b, e, chain[k]));
    h.log10_values.push_back(row);
  }
  h.row_height = chain.size() > 40 ? 6 : 12;
  return h;
}

std::string charts_html(const Comparison& c) {
  std::string out;
  const auto depth = depth_ranking(c);
  if (!depth.empty()) out += depth_profiles(depth);
  const auto time = time_ranking(c);
  if (!time.empty()) out += time_profiles(time);
  out += loss_curves(c);
  if (!c.sweep.empty()) out += sweep_chart(c);
  out += fmt::format("<h2>Layer &times; step heatmaps</h2>\n<p>log10 of the gradient norm at each recorded step: rows are hidden layers "
                     "(feed-forward) or time steps (recurrent). Dark is little gradient. A run of more than {} recorded steps "
                     "is shown in {} columns of consecutive steps, each the geometric mean of its norms; grey: a step in it "
                     "recorded no gradient, zero or a non-finite one. Every heatmap uses the same colour scale.</p>\n",
                     kHeatmapColumns, kHeatmapColumns);
  std::vector<Heatmap> maps;
  for (const auto& r : c.runs) maps.push_back(heatmap(r));
  return out + render_on_one_scale(std::move(maps));
}

}  // namespace gradflow::detail
