#include "report/svg.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <set>
#include <tuple>

#include <fmt/format.h>

namespace gradflow::detail {

namespace {
constexpr std::size_t kPaletteSize = 13;
}  // namespace

const std::string& palette(std::size_t i) {
  static const std::string colours[kPaletteSize] = {
      "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#000000", "#56B4E9", "#E69F00", "#882255",
      "#332288", "#117733", "#44AA99", "#999933", "#AA4499"};
  return colours[i % kPaletteSize];
}

namespace {
const std::string kEllipsis = "\u2026";

std::string tail_of(const std::string& name, std::size_t max_chars) {
  if (name.size() <= max_chars) return name;
  return kEllipsis + name.substr(name.size() - (max_chars - 1));
}

// Where `name` first differs from the most similar other name of `group` (their longest common
// prefix).
std::size_t first_difference(const std::vector<std::string>& names, const std::vector<std::size_t>& group, std::size_t i) {
  std::size_t at = 0;
  for (std::size_t j : group) {
    if (names[j] == names[i]) continue;
    std::size_t k = 0;
    while (k < names[i].size() && k < names[j].size() && names[i][k] == names[j][k]) ++k;
    at = std::max(at, k);
  }
  return at;
}

// The dotted component of `name` holding position `at`, then the name's end.
std::string with_component(const std::string& name, std::size_t at, std::size_t max_chars) {
  const std::size_t dot = at == 0 ? std::string::npos : name.rfind('.', at - 1);
  const std::size_t begin = dot == std::string::npos ? 0 : dot + 1;
  const std::size_t end = std::min(name.find('.', at), name.size());
  const std::string component = name.substr(begin, end - begin);
  const std::size_t budget = max_chars > component.size() + 8 ? max_chars - component.size() : 8;
  const std::string lead = begin > 0 ? kEllipsis : "";
  if (name.size() - end <= budget) return lead + name.substr(begin);
  // The end from a component's start where one begins within it.
  std::string tail = name.substr(name.size() - budget);
  if (const auto dot = tail.find('.'); dot != std::string::npos && dot + 1 < tail.size()) tail = tail.substr(dot + 1);
  return lead + component + kEllipsis + tail;
}
}  // namespace

std::string tick_label(const std::string& name) { return tail_of(name, kMaxTickChars); }

std::vector<std::string> distinct_short_names(const std::vector<std::string>& names, std::size_t max_chars) {
  std::vector<std::string> out;
  std::map<std::string, std::vector<std::size_t>> by_short;
  for (std::size_t i = 0; i < names.size(); ++i) {
    out.push_back(tail_of(names[i], max_chars));
    by_short[out.back()].push_back(i);
  }
  for (const auto& [shown, group] : by_short) {
    if (group.size() < 2) continue;
    for (std::size_t i : group) out[i] = with_component(names[i], first_difference(names, group, i), max_chars);
  }
  // Names that still read the same where they differ (a difference the cut hides): whole.
  std::map<std::string, std::set<std::string>> full_of;
  for (std::size_t i = 0; i < names.size(); ++i) full_of[out[i]].insert(names[i]);
  for (std::size_t i = 0; i < names.size(); ++i)
    if (full_of[out[i]].size() > 1) out[i] = names[i];
  return out;
}

std::string html_escape(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

std::string pow10_label(int k) {
  if (k == 0) return "1";
  if (k == 1) return "10";
  return fmt::format("1e{}", k);
}

namespace {

struct Axis {
  double lo = 0, hi = 1;
  bool log = false;
  double map(double v, double a, double b) const {
    const double t = log ? (std::log10(v) - lo) / (hi - lo) : (v - lo) / (hi - lo);
    return a + t * (b - a);
  }
  bool valid(double v) const { return std::isfinite(v) && (!log || v > 0); }
};

// Round numbers for a linear axis.
std::vector<double> linear_ticks(double lo, double hi, int want) {
  const double span = hi - lo;
  if (!(span > 0)) return {lo};
  const double raw = span / want;
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = mag;
  for (double m : {1.0, 2.0, 5.0, 10.0})
    if (raw <= m * mag) {
      step = m * mag;
      break;
    }
  std::vector<double> t;
  for (double v = std::ceil(lo / step) * step; v <= hi + 1e-9 * span; v += step) t.push_back(std::abs(v) < 1e-12 * step ? 0 : v);
  return t;
}

std::string num_label(double v) {
  if (v == 0) return "0";
  if (std::abs(v) >= 1e4 || std::abs(v) < 1e-2) return fmt::format("{:.0e}", v);
  return fmt::format("{:g}", v);
}

}  // namespace

namespace {

// A line chart's plot area and axes, fitted to its data.
struct Frame {
  int W = 0, H = 0, left = 70, right = 250, top = 34, bottom = 46, pw = 0, ph = 0;
  Axis ax, ay;
  double X(double v) const { return ax.map(v, left, left + pw); }
  double Y(double v) const { return ay.map(v, top + ph, top); }
};

// The axes' ranges from the finite points (decades on a log axis); false when there is none.
bool fit_axes(const LineChart& c, Frame& f) {
  f.ax.log = c.log_x;
  f.ay.log = c.log_y;
  double xmin = std::numeric_limits<double>::infinity(), xmax = -xmin, ymin = xmin, ymax = -xmin;
  for (const auto& s : c.series)
    for (std::size_t i = 0; i < s.x.size() && i < s.y.size(); ++i) {
      if (!f.ax.valid(s.x[i]) || !f.ay.valid(s.y[i])) continue;
      const double xv = f.ax.log ? std::log10(s.x[i]) : s.x[i];
      const double yv = f.ay.log ? std::log10(s.y[i]) : s.y[i];
      xmin = std::min(xmin, xv);
      xmax = std::max(xmax, xv);
      ymin = std::min(ymin, yv);
      ymax = std::max(ymax, yv);
    }
  if (!std::isfinite(xmin)) return false;
  if (xmax - xmin < 1e-12) xmin -= 0.5, xmax += 0.5;
  if (f.ay.log) {
    ymin = std::floor(ymin);
    ymax = std::ceil(ymax);
    if (ymax - ymin < 1) ymax = ymin + 1;
  } else {
    const double pad = (ymax - ymin) * 0.05 + 1e-12;
    ymin -= pad;
    ymax += pad;
  }
  f.ax.lo = xmin, f.ax.hi = xmax, f.ay.lo = ymin, f.ay.hi = ymax;
  return true;
}

std::string y_ticks(const Frame& f) {
  std::string out;
  auto tick = [&](double y, const std::string& label) {
    out += fmt::format("<line x1=\"{}\" x2=\"{}\" y1=\"{:.1f}\" y2=\"{:.1f}\" class=\"grid\"/>"
                       "<text x=\"{}\" y=\"{:.1f}\" class=\"tick\" text-anchor=\"end\">{}</text>\n",
                       f.left, f.left + f.pw, y, y, f.left - 6, y + 4, label);
  };
  if (f.ay.log) {
    const int span = static_cast<int>(f.ay.hi - f.ay.lo);
    const int step = std::max(1, (span + 7) / 8);
    for (int k = static_cast<int>(f.ay.lo); k <= static_cast<int>(f.ay.hi); k += step) tick(f.Y(std::pow(10.0, k)), pow10_label(k));
  } else {
    for (double v : linear_ticks(f.ay.lo, f.ay.hi, 6)) tick(f.Y(v), num_label(v));
  }
  return out;
}

// Ticks for at most kMaxTickLabels categories, names turned so that they do not overlap; the
// whole name is the tick's hover title.
std::string category_ticks(const Frame& f, const std::vector<std::string>& names) {
  std::string out;
  const std::vector<std::string> shown = distinct_short_names(names, kMaxTickChars);
  const std::size_t step = std::max<std::size_t>(1, (names.size() + kMaxTickLabels - 1) / kMaxTickLabels);
  for (std::size_t i = 0; i < names.size(); i += step) {
    const double x = f.X(static_cast<double>(i + 1));
    out += fmt::format("<line x1=\"{:.1f}\" x2=\"{:.1f}\" y1=\"{}\" y2=\"{}\" class=\"grid\"/>"
                       "<text transform=\"translate({:.1f},{}) rotate(-35)\" class=\"tick\" text-anchor=\"end\">{}<title>{}</title></text>\n",
                       x, x, f.top, f.top + f.ph, x + 3, f.top + f.ph + 12, html_escape(shown[i]),
                       html_escape(names[i]));
  }
  return out;
}

// Beyond the palette's colours, lines repeat them dashed, then dotted.
const char* dash_of(const LineSeries& s, std::size_t si) {
  if (s.dashed) return " stroke-dasharray=\"6 4\"";
  if (s.colour >= 0) return "";
  switch ((si / kPaletteSize) % 3) {
    case 1: return " stroke-dasharray=\"6 4\"";
    case 2: return " stroke-dasharray=\"2 3\"";
    default: return "";
  }
}

std::string x_ticks(const Frame& f, const LineChart& c) {
  std::string out;
  if (!c.x_names.empty()) return category_ticks(f, c.x_names);
  if (!c.x_ticks.empty()) {
    for (double v : c.x_ticks) {
      if (!f.ax.valid(v)) continue;
      const double x = f.X(v);
      out += fmt::format("<line x1=\"{:.1f}\" x2=\"{:.1f}\" y1=\"{}\" y2=\"{}\" class=\"grid\"/>"
                         "<text x=\"{:.1f}\" y=\"{}\" class=\"tick\" text-anchor=\"middle\">{}</text>\n",
                         x, x, f.top, f.top + f.ph, x, f.top + f.ph + 16, num_label(v));
    }
    return out;
  }
  if (f.ax.log) {
    for (int k = static_cast<int>(std::ceil(f.ax.lo)); k <= static_cast<int>(std::floor(f.ax.hi)); ++k) {
      const double x = f.X(std::pow(10.0, k));
      out += fmt::format("<text x=\"{:.1f}\" y=\"{}\" class=\"tick\" text-anchor=\"middle\">{}</text>\n", x, f.top + f.ph + 16, pow10_label(k));
    }
  } else {
    for (double v : linear_ticks(f.ax.lo, f.ax.hi, 8)) {
      if (c.integer_x && v != std::floor(v)) continue;
      const double x = f.X(v);
      out += fmt::format("<line x1=\"{:.1f}\" x2=\"{:.1f}\" y1=\"{}\" y2=\"{}\" class=\"grid\"/>"
                         "<text x=\"{:.1f}\" y=\"{}\" class=\"tick\" text-anchor=\"middle\">{}</text>\n",
                         x, x, f.top, f.top + f.ph, x, f.top + f.ph + 16, num_label(v));
    }
  }
  return out;
}

// One series: its path (broken at invalid points), its markers with hover titles, its legend entry.
// `legend`: the entry's text; empty: no entry beside the plot.
std::string series_svg(const Frame& f, const LineSeries& s, std::size_t si, const std::string& legend) {
  const std::string& col = palette(s.colour >= 0 ? static_cast<std::size_t>(s.colour) : si);
  std::string path, marks, out;
  bool pen = false;
  for (std::size_t i = 0; i < s.x.size() && i < s.y.size(); ++i) {
    if (!f.ax.valid(s.x[i]) || !f.ay.valid(s.y[i])) {
      pen = false;
      continue;
    }
    const double x = f.X(s.x[i]), y = f.Y(s.y[i]);
    path += fmt::format("{}{:.1f},{:.1f} ", pen ? "L" : "M", x, y);
    pen = true;
    if (s.markers) {
      const std::string tip = i < s.tips.size() ? s.tips[i] : fmt::format("{}: x={:g}, y={:.4g}", s.label, s.x[i], s.y[i]);
      marks += fmt::format("<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"3\" fill=\"{}\"><title>{}</title></circle>", x, y, col,
                           html_escape(tip));
    }
  }
  const char* dash = dash_of(s, si);
  if (!path.empty())
    out += fmt::format("<path d=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"2\"{}><title>{}</title></path>\n", path, col,
                       dash, html_escape(s.label));
  out += marks + "\n";
  if (legend.empty()) return out;
  const int ly = f.top + 8 + static_cast<int>(si) * 16;
  out += fmt::format("<line x1=\"{}\" x2=\"{}\" y1=\"{}\" y2=\"{}\" stroke=\"{}\" stroke-width=\"3\"{}/>"
                     "<text x=\"{}\" y=\"{}\" class=\"legend\">{}</text>\n",
                     f.left + f.pw + 10, f.left + f.pw + 30, ly, ly, col, dash, f.left + f.pw + 36, ly + 4, html_escape(legend));
  return out;
}

}  // namespace

std::string render(const LineChart& c) {
  Frame f;
  f.W = c.width;
  // Room for the legend: one line a series, beside the plot, never over it.
  if (c.legend) f.H = std::max(c.height, f.top + 8 + 16 * static_cast<int>(c.series.size()) + f.bottom);
  else f.H = c.height, f.right = 20;
  // Room under the plot, and left of it, for turned category names (about 5 px a character
  // across and 4 down at -35 degrees).
  std::size_t longest = 0;
  for (const auto& n : c.x_names) longest = std::max(longest, std::min(n.size(), kMaxTickChars));
  f.bottom += static_cast<int>(longest * 4);
  f.H += static_cast<int>(longest * 4);
  f.left = std::max(f.left, static_cast<int>(longest * 5));
  f.pw = f.W - f.left - f.right;
  f.ph = f.H - f.top - f.bottom;
  std::string out = fmt::format(
      "<figure class=\"chart\"><svg viewBox=\"0 0 {} {}\" width=\"{}\" height=\"{}\" role=\"img\" aria-label=\"{}\">\n",
      f.W, f.H, f.W, f.H, html_escape(c.title));
  out += fmt::format("<text x=\"{}\" y=\"20\" class=\"title\">{}</text>\n", f.left, html_escape(c.title));
  if (!fit_axes(c, f)) {
    out += fmt::format("<text x=\"{}\" y=\"{}\" class=\"empty\">no data to plot</text></svg></figure>\n", f.left + 20, f.top + f.ph / 2);
    return out;
  }
  out += fmt::format("<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" class=\"plot\"/>\n", f.left, f.top, f.pw, f.ph);
  out += y_ticks(f) + x_ticks(f, c);
  out += fmt::format("<text x=\"{}\" y=\"{}\" class=\"axis\" text-anchor=\"middle\">{}</text>\n", f.left + f.pw / 2, f.H - 8,
                     html_escape(c.x_label));
  out += fmt::format("<text transform=\"translate(16,{}) rotate(-90)\" class=\"axis\" text-anchor=\"middle\">{}</text>\n",
                     f.top + f.ph / 2, html_escape(c.y_label));
  // The end of a long name is its most specific part (a module path's last components).
  std::vector<std::string> labels;
  for (const auto& s : c.series) labels.push_back(s.label);
  const std::vector<std::string> legends = distinct_short_names(labels, kMaxLegendChars);
  for (std::size_t si = 0; si < c.series.size(); ++si) out += series_svg(f, c.series[si], si, c.legend ? legends[si] : "");
  out += "</svg>";
  if (!c.note.empty()) out += "<figcaption>" + html_escape(c.note) + "</figcaption>";
  out += "</figure>\n";
  return out;
}

std::string render_legend(const std::vector<LineSeries>& series) {
  std::vector<std::string> labels;
  for (const auto& s : series) labels.push_back(s.label);
  const std::vector<std::string> names = distinct_short_names(labels, kMaxLegendChars);
  std::string out = "<div class=\"legend-row\">";
  for (std::size_t si = 0; si < series.size(); ++si) {
    const auto& s = series[si];
    const std::string& col = palette(s.colour >= 0 ? static_cast<std::size_t>(s.colour) : si);
    out += fmt::format("<span><svg width=\"26\" height=\"10\" aria-hidden=\"true\"><line x1=\"1\" x2=\"25\" y1=\"5\" y2=\"5\" "
                       "stroke=\"{}\" stroke-width=\"3\"{}/></svg> {}</span>",
                       col, dash_of(s, si), html_escape(names[si]));
  }
  return out + "</div>\n";
}

std::string render(const Heatmap& m) {
  std::size_t longest = 0;
  for (const auto& n : m.rows) longest = std::max(longest, n.size());
  const int left = m.left > 0 ? m.left : std::max(80, static_cast<int>(longest) * 7 + 12);
  const int top = 34, legend_w = 120, bottom = 40;
  const int rows = static_cast<int>(m.rows.size()), cols = static_cast<int>(m.cols.size());
  const int rh = m.row_height;
  const int pw = m.width - left - legend_w - 20;
  const int H = top + rows * rh + bottom;
  double lo = std::numeric_limits<double>::infinity(), hi = -lo;
  for (const auto& r : m.log10_values)
    for (double v : r)
      if (std::isfinite(v)) lo = std::min(lo, v), hi = std::max(hi, v);
  if (m.range && std::isfinite(lo)) std::tie(lo, hi) = *m.range;
  std::string out = fmt::format("<figure class=\"chart\"><svg viewBox=\"0 0 {} {}\" width=\"{}\" height=\"{}\" role=\"img\" aria-label=\"{}\">\n",
                                m.width, H, m.width, H, html_escape(m.title));
  out += fmt::format("<text x=\"{}\" y=\"20\" class=\"title\">{}</text>\n", left, html_escape(m.title));
  if (!std::isfinite(lo) || rows == 0 || cols == 0) {
    out += fmt::format("<text x=\"{}\" y=\"{}\" class=\"empty\">no data to plot</text></svg></figure>\n", left + 20, top + 20);
    return out;
  }
  if (hi - lo < 1e-9) hi = lo + 1;
  // Viridis-like ramp, readable for colour-blind viewers: dark = small gradient.
  static const int ramp[][3] = {{68, 1, 84}, {59, 82, 139}, {33, 145, 140}, {94, 201, 98}, {253, 231, 37}};
  auto colour = [&](double v) {
    const double t = std::clamp((v - lo) / (hi - lo), 0.0, 1.0) * 4.0;
    const int i = std::min(3, static_cast<int>(t));
    const double f = t - i;
    int c[3];
    for (int k = 0; k < 3; ++k) c[k] = static_cast<int>(std::lround(ramp[i][k] + f * (ramp[i + 1][k] - ramp[i][k])));
    return fmt::format("#{:02x}{:02x}{:02x}", c[0], c[1], c[2]);
  };
  const double cw = static_cast<double>(pw) / cols;
  for (int r = 0; r < rows; ++r) {
    const int y = top + r * rh;
    if (rows <= 40 || r % ((rows + 39) / 40) == 0)
      out += fmt::format("<text x=\"{}\" y=\"{}\" class=\"tick\" text-anchor=\"end\">{}</text>", left - 4, y + rh - 3,
                         html_escape(m.rows[r]));
    for (int c = 0; c < cols; ++c) {
      const double v = r < static_cast<int>(m.log10_values.size()) && c < static_cast<int>(m.log10_values[r].size())
                           ? m.log10_values[r][c]
                           : std::numeric_limits<double>::quiet_NaN();
      const std::string fill = std::isfinite(v) ? colour(v) : "#dddddd";
      const std::string tip = std::isfinite(v) ? fmt::format("{} at {}: {:.3g}", m.rows[r], m.cols[c], std::pow(10.0, v))
                                               : fmt::format("{} at {}: not recorded or zero", m.rows[r], m.cols[c]);
      out += fmt::format("<rect x=\"{:.1f}\" y=\"{}\" width=\"{:.1f}\" height=\"{}\" fill=\"{}\"><title>{}</title></rect>",
                         left + c * cw, y, cw + 0.3, rh, fill, html_escape(tip));
    }
    out += "\n";
  }
  const int step = std::max(1, cols / 8);
  for (int c = 0; c < cols; c += step)
    out += fmt::format("<text x=\"{:.1f}\" y=\"{}\" class=\"tick\" text-anchor=\"middle\">{}</text>", left + (c + 0.5) * cw,
                       top + rows * rh + 14, html_escape(m.cols[c]));
  out += fmt::format("\n<text x=\"{}\" y=\"{}\" class=\"axis\" text-anchor=\"middle\">{}</text>", left + pw / 2, H - 6,
                     html_escape(m.x_label));
  out += fmt::format("<text transform=\"translate(14,{}) rotate(-90)\" class=\"axis\" text-anchor=\"middle\">{}</text>\n",
                     top + rows * rh / 2, html_escape(m.y_label));
  // Colour legend.
  const int lx = left + pw + 20, lh = std::max(60, rows * rh);
  for (int i = 0; i < 20; ++i) {
    const double v = hi - (hi - lo) * i / 19.0;
    out += fmt::format("<rect x=\"{}\" y=\"{:.1f}\" width=\"14\" height=\"{:.1f}\" fill=\"{}\"/>", lx, top + i * lh / 20.0,
                       lh / 20.0 + 0.5, colour(v));
  }
  out += fmt::format("<text x=\"{}\" y=\"{}\" class=\"tick\">{}</text><text x=\"{}\" y=\"{}\" class=\"tick\">{}</text>\n", lx + 18,
                     top + 10, fmt::format("{:.2g}", std::pow(10.0, hi)), lx + 18, top + lh,
                     fmt::format("{:.2g}", std::pow(10.0, lo)));
  out += "</svg></figure>\n";
  return out;
}

}  // namespace gradflow::detail
