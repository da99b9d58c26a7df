#pragma once
// Inline SVG charts for the HTML reports: no scripts, no external resources. Every point and
// cell carries a <title>, which browsers show on hover.

#include <optional>
#include <utility>
#include <string>
#include <vector>

namespace gradflow::detail {

// Okabe & Ito's colour-blind-safe palette (without its yellow, too faint on white), then Paul
// Tol's darker colours for more series.
const std::string& palette(std::size_t i);
std::string html_escape(const std::string& s);

struct LineSeries {
  std::string label;
  std::vector<double> x;
  std::vector<double> y;            // NaN or non-positive (on a log axis) breaks the line
  std::vector<std::string> tips;    // hover text per point (optional)
  bool dashed = false;
  bool markers = true;
  int colour = -1;  // palette slot; -1: the series' position
};

// At most this many category names under an axis; names longer than kMaxTickChars show their end.
constexpr std::size_t kMaxTickLabels = 20;
constexpr std::size_t kMaxTickChars = 28;
// A legend entry's length beside the plot.
constexpr std::size_t kMaxLegendChars = 38;
// A category name as a tick shows it: its last kMaxTickChars characters (the most specific part
// of a module path), led by "…" when cut.
std::string tick_label(const std::string& name);
/// The names a chart shows for `names` (legend entries, category ticks), each at most about
/// `max_chars` long: a long name shows its end led by "…", and where two names would then read
/// the same (an encoder's and a decoder's layer), each also shows the component where it differs
/// from the others ("…encoder…layers.0.self_attn.in_proj_weight"). Equal names stay equal.
std::vector<std::string> distinct_short_names(const std::vector<std::string>& names, std::size_t max_chars);

struct LineChart {
  std::string title;
  std::string x_label;
  std::string y_label;
  bool log_y = true;
  bool log_x = false;
  /// Category names for x = 1, 2, ... (layer names in forward order): the x axis shows them
  /// instead of numbers.
  std::vector<std::string> x_names;
  /// The x axis counts something (steps, layers): ticks at whole numbers only.
  bool integer_x = false;
  /// Where the x axis is marked, each labelled with its value (widths on a log axis); empty:
  /// decades on a log axis, round numbers otherwise.
  std::vector<double> x_ticks;
  /// The legend beside the plot; false where several charts share one (render_legend).
  bool legend = true;
  int width = 800;
  int height = 360;
  std::vector<LineSeries> series;
  std::string note;  // a line under the chart
};
std::string render(const LineChart& chart);
/// The legend of `series` on its own, entries in a row, each with its line's colour and dash as
/// render() draws it: for panels that share their series.
std::string render_legend(const std::vector<LineSeries>& series);

struct Heatmap {
  std::string title;
  std::string x_label;  // columns
  std::string y_label;  // rows
  std::vector<std::string> rows;
  std::vector<std::string> cols;
  std::vector<std::vector<double>> log10_values;  // [row][col]; NaN: no data
  int width = 720;
  int row_height = 14;
  /// Left margin for the row names; 0: wide enough for the longest one.
  int left = 0;
  /// The colour scale's log10 range, shared by heatmaps set side by side; empty: this one's data.
  std::optional<std::pair<double, double>> range;
};
std::string render(const Heatmap& map);

// "1e-5" style tick text for a power of ten.
std::string pow10_label(int k);

}  // namespace gradflow::detail
