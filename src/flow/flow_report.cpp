#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "gradflow/error.h"
#include "gradflow/flow.h"
#include "util/json_util.h"
#include "report/svg.h"

namespace gradflow {

using detail::html_escape;
using detail::Json;
using detail::num;

namespace {

Json nums(const std::vector<double>& v) {
  Json a = Json::array();
  for (double x : v) a.push_back(num(x));
  return a;
}
std::vector<double> nums_from(const Json& j, const char* key, const std::string& where) {
  std::vector<double> out;
  for (const auto& v : detail::get_array(j, key, where))
    out.push_back(v.is_number() ? v.get<double>() : std::numeric_limits<double>::quiet_NaN());
  return out;
}
Json path_json(const std::vector<std::pair<double, double>>& p) {
  Json a = Json::array();
  for (const auto& [x, y] : p) a.push_back({num(x), num(y)});
  return a;
}
std::vector<std::pair<double, double>> path_from(const Json& j) {
  std::vector<std::pair<double, double>> out;
  if (!j.is_array()) return out;
  for (const auto& p : j)
    if (p.is_array() && p.size() == 2 && p[0].is_number() && p[1].is_number()) out.emplace_back(p[0].get<double>(), p[1].get<double>());
  return out;
}

// A "sharpness" object's times and values (empty when absent: an older file, or not measured).
std::pair<std::vector<double>, std::vector<double>> sharpness_from(const Json& parent, const std::string& where) {
  auto it = parent.find("sharpness");
  if (it == parent.end() || !it->is_object()) return {};
  auto t = nums_from(*it, "t", where);
  auto lambda = nums_from(*it, "lambda_max", where);
  if (t.size() != lambda.size()) throw Error(where + ": a sharpness has " + std::to_string(t.size()) + " times and " +
                                             std::to_string(lambda.size()) + " values");
  return {std::move(t), std::move(lambda)};
}

}  // namespace

std::string flow_to_json(const FlowResult& r) {
  Json runs = Json::array();
  for (const auto& d : r.runs)
    runs.push_back({{"lr", d.lr}, {"steps", d.steps}, {"max_distance", num(d.max_distance)}, {"final_distance", num(d.final_distance)},
                    {"max_loss_gap", num(d.max_loss_gap)}, {"final_loss_gap", num(d.final_loss_gap)},
                    {"departs_at", d.departs_at ? num(*d.departs_at) : Json(nullptr)}, {"departs_why", d.departs_why},
                    {"diverged", d.diverged}, {"t", nums(d.t)}, {"distance", nums(d.distance)}, {"loss_gd", nums(d.loss_gd)},
                    {"loss_flow", nums(d.loss_flow)}, {"path", path_json(d.path)},
                    {"sharpness", {{"t", nums(d.sharpness_t)}, {"lambda_max", nums(d.sharpness)}}},
                    {"edge_at", d.edge_at ? num(*d.edge_at) : Json(nullptr)},
                    {"final_sharpness", d.final_sharpness() ? num(*d.final_sharpness()) : Json(nullptr)}});
  Json j = {{"schema", kFlowSchema},
            {"spec", r.spec},
            {"task", r.task},
            {"time", r.time},
            {"seed", r.seed},
            {"parameters", r.parameters},
            {"samples", r.samples},
            {"order", r.order ? num(*r.order) : Json(nullptr)},
            {"integrator", {{"method", "dormand-prince 5(4)"}, {"accepted", r.stats.accepted}, {"rejected", r.stats.rejected},
                            {"evaluations", r.stats.evaluations}}},
            {"flow", {{"t", nums(r.flow_t)}, {"loss", nums(r.flow_loss)}, {"path", path_json(r.flow_path)},
                      {"sharpness", {{"t", nums(r.flow_sharpness_t)}, {"lambda_max", nums(r.flow_sharpness)}}}}},
            {"sharpness_cost", {{"measurements", r.sharpness_measurements}, {"hessian_vector_products", r.sharpness_products},
                                {"seconds", num(r.sharpness_seconds)}}},
            {"runs", runs},
            {"plane", {{"grid", r.plane.grid}, {"extent", r.plane.extent}, {"loss", nums(r.plane.loss)}, {"da", nums(r.plane.da)},
                       {"db", nums(r.plane.db)}}},
            {"wall_seconds", num(r.wall_seconds)}};
  return j.dump(1);
}

FlowResult flow_from_json(const std::string& text, const std::string& where) {
  try {
    const Json j = detail::parse_json(text, where);
    if (!j.is_object() || detail::get_str(j, "schema", where) != kFlowSchema)
      throw Error(where + " is not a gradflow flow file (schema " + kFlowSchema + " expected)");
    FlowResult r;
    r.spec = detail::get_str(j, "spec", where);
    r.task = detail::get_str(j, "task", where);
    r.time = detail::get_num(j, "time", where);
    r.seed = j.value("seed", 0ULL);
    r.parameters = j.value("parameters", 0LL);
    r.samples = j.value("samples", 0LL);
    if (auto it = j.find("order"); it != j.end() && it->is_number()) r.order = it->get<double>();
    if (auto it = j.find("integrator"); it != j.end() && it->is_object()) {
      r.stats.accepted = it->value("accepted", 0LL);
      r.stats.rejected = it->value("rejected", 0LL);
      r.stats.evaluations = it->value("evaluations", 0LL);
    }
    const Json& flow = j.at("flow");
    r.flow_t = nums_from(flow, "t", where);
    r.flow_loss = nums_from(flow, "loss", where);
    r.flow_path = path_from(flow.value("path", Json::array()));
    std::tie(r.flow_sharpness_t, r.flow_sharpness) = sharpness_from(flow, where);
    if (auto it = j.find("sharpness_cost"); it != j.end() && it->is_object()) {
      r.sharpness_measurements = it->value("measurements", 0LL);
      r.sharpness_products = it->value("hessian_vector_products", 0LL);
      r.sharpness_seconds = detail::get_num_or(*it, "seconds", 0.0);
    }
    for (const auto& jr : detail::get_array(j, "runs", where)) {
      DescentVsFlow d;
      d.lr = detail::get_num(jr, "lr", where);
      d.steps = detail::get_int(jr, "steps", where);
      d.max_distance = detail::get_num(jr, "max_distance", where);
      d.final_distance = detail::get_num(jr, "final_distance", where);
      d.max_loss_gap = detail::get_num(jr, "max_loss_gap", where);
      d.final_loss_gap = detail::get_num(jr, "final_loss_gap", where);
      if (auto it = jr.find("departs_at"); it != jr.end() && it->is_number()) d.departs_at = it->get<double>();
      d.departs_why = jr.value("departs_why", "");
      d.diverged = jr.value("diverged", false);
      d.t = nums_from(jr, "t", where);
      d.distance = nums_from(jr, "distance", where);
      d.loss_gd = nums_from(jr, "loss_gd", where);
      d.loss_flow = nums_from(jr, "loss_flow", where);
      d.path = path_from(jr.value("path", Json::array()));
      std::tie(d.sharpness_t, d.sharpness) = sharpness_from(jr, where);
      if (auto it = jr.find("edge_at"); it != jr.end() && it->is_number()) d.edge_at = it->get<double>();
      r.runs.push_back(std::move(d));
    }
    const Json& pl = j.at("plane");
    r.plane.grid = pl.value("grid", 0);
    r.plane.extent = pl.value("extent", 1.0);
    r.plane.loss = nums_from(pl, "loss", where);
    r.plane.da = nums_from(pl, "da", where);
    r.plane.db = nums_from(pl, "db", where);
    const auto cells = static_cast<std::size_t>(r.plane.grid) * static_cast<std::size_t>(r.plane.grid);
    if (r.plane.grid < 0 || r.plane.loss.size() != cells || r.plane.da.size() != cells || r.plane.db.size() != cells)
      throw Error(where + ": the plane's grid does not match its data");
    r.wall_seconds = detail::get_num_or(j, "wall_seconds", 0.0);
    return r;
  } catch (const Json::exception& e) {
    throw Error(where + " is corrupt (" + e.what() + "): give a flow.json written by gradflow");
  }
}

namespace {

// Gradient-descent runs take palette slots 1, 2, 3, 5, ...: slot 4 is black, the flow's colour.
int gd_slot(std::size_t k) { return static_cast<int>(k + 1 >= 4 ? k + 2 : k + 1); }

// A chart over time t, GD's steps at t = k·η.
detail::LineChart time_chart(std::string title, std::string y_label) {
  detail::LineChart c;
  c.title = std::move(title);
  c.x_label = "time t (GD: t = k·η)";
  c.y_label = std::move(y_label);
  return c;
}

// The flow's line, in black.
detail::LineSeries flow_line(std::vector<double> t, std::vector<double> y, bool markers) {
  detail::LineSeries s;
  s.label = "gradient flow";
  s.x = std::move(t);
  s.y = std::move(y);
  s.markers = markers;
  s.colour = 4;
  return s;
}

// When a run's sharpness reached its stability bound 2/η, in words.
std::string edge_text(const DescentVsFlow& d) {
  if (d.sharpness.empty()) return "not measured";
  const auto end = d.final_sharpness();
  const std::string ended = end ? fmt::format("; over the last fifth of the run &lambda;<sub>max</sub> averages {:.3g} = {:.2f} &times; 2/&eta;",
                                              *end, *end * d.lr / 2.0)
                                : "";
  if (d.edge_at) return fmt::format("at t = {:.3g} (&lambda;<sub>max</sub> &ge; 2/&eta; = {:.3g}){}", *d.edge_at, 2.0 / d.lr, ended);
  const double top = *std::max_element(d.sharpness.begin(), d.sharpness.end());
  return fmt::format("no: &lambda;<sub>max</sub> &le; {:.3g} &lt; 2/&eta; = {:.3g}{}", top, 2.0 / d.lr, ended);
}

// λ_max along the flow and each run (dashed), each run's 2/η as a line in its colour.
std::string sharpness_chart(const FlowResult& r) {
  if (r.sharpness_measurements == 0) return "";
  detail::LineChart c = time_chart("Sharpness: the loss Hessian's largest eigenvalue, against each step's stability bound 2/η",
                                    "λ_max (log scale)");
  c.series.push_back(flow_line(r.flow_sharpness_t, r.flow_sharpness, true));
  for (std::size_t k = 0; k < r.runs.size(); ++k) {
    const auto& d = r.runs[k];
    detail::LineSeries s;
    s.label = fmt::format("GD, lr = {:g}", d.lr);
    s.x = d.sharpness_t;
    s.y = d.sharpness;
    s.colour = gd_slot(k);
    s.dashed = true;
    c.series.push_back(s);
    detail::LineSeries bound;
    bound.label = fmt::format("2/η = {:.3g}", 2.0 / d.lr);
    bound.x = {0.0, r.time};
    bound.y = {2.0 / d.lr, 2.0 / d.lr};
    bound.colour = gd_slot(k);
    bound.markers = false;
    c.series.push_back(bound);
  }
  c.note = fmt::format("Gradient descent follows the flow while η·λ_max < 2 and leaves it, oscillating across the valley, once the "
                       "sharpness reaches 2/η; under full-batch descent the sharpness then hovers near 2/η (the edge of "
                       "stability). λ_max by power iteration on Hessian-vector products: {} measurements, {:.1f} products "
                       "(two backward passes each) per measurement, {:.2g} s in all.",
                       r.sharpness_measurements,
                       static_cast<double>(r.sharpness_products) / static_cast<double>(r.sharpness_measurements), r.sharpness_seconds);
  return detail::render(c);
}

// Where the plane's points land in the picture, and the loss colour scale.
struct PlaneFrame {
  static constexpr int size = 520, left = 50, top = 40, legend = 230;
  int n = 0;
  double ext = 0, step = 0, cell = 0;
  double lo = 1e300, hi = -1e300;  // log10 loss range
  explicit PlaneFrame(const FlowPlane& p) : n(p.grid), ext(p.extent) {
    for (double v : p.loss)
      if (std::isfinite(v) && v > 0) lo = std::min(lo, std::log10(v)), hi = std::max(hi, std::log10(v));
    if (hi <= lo) hi = lo + 1;
    step = 2 * ext / (n - 1);
    cell = size / static_cast<double>(n - 1);
  }
  double X(double a) const { return left + (a + ext) / (2 * ext) * size; }
  double Y(double b) const { return top + (ext - b) / (2 * ext) * size; }
  std::string colour(double v) const {
    static const int ramp[][3] = {{68, 1, 84}, {59, 82, 139}, {33, 145, 140}, {94, 201, 98}, {253, 231, 37}};
    if (!(v > 0) || !std::isfinite(v)) return "#dddddd";
    const double t = std::clamp((std::log10(v) - lo) / (hi - lo), 0.0, 1.0) * 4;
    const int i = std::min(3, static_cast<int>(t));
    const double f = t - i;
    return fmt::format("#{:02x}{:02x}{:02x}", static_cast<int>(ramp[i][0] + f * (ramp[i + 1][0] - ramp[i][0])),
                       static_cast<int>(ramp[i][1] + f * (ramp[i + 1][1] - ramp[i][1])),
                       static_cast<int>(ramp[i][2] + f * (ramp[i + 1][2] - ramp[i][2])));
  }
};

std::string plane_cells(const FlowPlane& p, const PlaneFrame& f) {
  std::string out;
  for (int j = 0; j < f.n; ++j)
    for (int i = 0; i < f.n; ++i) {
      const double a = -f.ext + i * f.step, b = -f.ext + j * f.step;
      const double v = p.loss[static_cast<std::size_t>(j * f.n + i)];
      out += fmt::format("<rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"{:.1f}\" height=\"{:.1f}\" fill=\"{}\"><title>a={:.2f}, b={:.2f}: L={:.4g}</title></rect>",
                         f.X(a) - f.cell / 2, f.Y(b) - f.cell / 2, f.cell + 0.5, f.cell + 0.5, f.colour(v), a, b, v);
    }
  return out + "\n";
}

// The projected field −∇L at (a, b), bilinearly interpolated between grid points.
void plane_field(const FlowPlane& p, const PlaneFrame& f, double a, double b, double& u, double& w) {
  const int n = f.n;
  const double fi = (a + f.ext) / f.step, fj = (b + f.ext) / f.step;
  const int i = std::clamp(static_cast<int>(fi), 0, n - 2), j = std::clamp(static_cast<int>(fj), 0, n - 2);
  const double s = fi - i, t = fj - j;
  auto at = [&](const std::vector<double>& v, int ii, int jj) { return v[static_cast<std::size_t>(jj * n + ii)]; };
  u = (1 - s) * (1 - t) * at(p.da, i, j) + s * (1 - t) * at(p.da, i + 1, j) + (1 - s) * t * at(p.da, i, j + 1) + s * t * at(p.da, i + 1, j + 1);
  w = (1 - s) * (1 - t) * at(p.db, i, j) + s * (1 - t) * at(p.db, i + 1, j) + (1 - s) * t * at(p.db, i, j + 1) + s * t * at(p.db, i + 1, j + 1);
}

// Streamlines of the projected field from a regular set of seeds (midpoint steps of fixed length).
std::string streamlines(const FlowPlane& p, const PlaneFrame& f) {
  std::string out;
  const int seeds = 7;
  const double ext = f.ext;
  for (int sj = 0; sj < seeds; ++sj)
    for (int si = 0; si < seeds; ++si) {
      double a = -ext + (si + 0.5) * 2 * ext / seeds, b = -ext + (sj + 0.5) * 2 * ext / seeds;
      std::string path = fmt::format("M{:.1f},{:.1f}", f.X(a), f.Y(b));
      int pts = 0;
      for (int k = 0; k < 80; ++k) {
        double u, w;
        plane_field(p, f, a, b, u, w);
        const double m = std::hypot(u, w);
        if (!(m > 1e-12) || !std::isfinite(m)) break;
        const double h = ext / 40;
        double u2, w2;
        plane_field(p, f, a + 0.5 * h * u / m, b + 0.5 * h * w / m, u2, w2);
        const double m2 = std::hypot(u2, w2);
        if (!(m2 > 1e-12) || !std::isfinite(m2)) break;
        a += h * u2 / m2;
        b += h * w2 / m2;
        if (std::fabs(a) > ext || std::fabs(b) > ext) break;
        path += fmt::format(" L{:.1f},{:.1f}", f.X(a), f.Y(b));
        ++pts;
      }
      if (pts > 2) out += fmt::format("<path d=\"{}\" fill=\"none\" stroke=\"#ffffff\" stroke-opacity=\"0.55\" stroke-width=\"1\"/>", path);
    }
  return out + "\n";
}

std::string trajectory(const PlaneFrame& f, const std::vector<std::pair<double, double>>& path, const std::string& colour,
                       double width, const std::string& tip, bool dashed) {
  std::string d;
  for (const auto& [a, b] : path) {
    if (!std::isfinite(a) || !std::isfinite(b)) break;
    d += fmt::format("{}{:.1f},{:.1f}", d.empty() ? "M" : " L", f.X(std::clamp(a, -3 * f.ext, 3 * f.ext)),
                     f.Y(std::clamp(b, -3 * f.ext, 3 * f.ext)));
  }
  if (d.empty()) return std::string();
  return fmt::format("<path d=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"{}\"{}><title>{}</title></path>\n", d, colour, width,
                     dashed ? " stroke-dasharray=\"5 3\"" : "", html_escape(tip));
}

std::string trajectories(const FlowResult& r, const PlaneFrame& f) {
  std::string out = fmt::format("<clipPath id=\"plane\"><rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\"/></clipPath><g clip-path=\"url(#plane)\">",
                                f.left - f.cell / 2, f.top - f.cell / 2, f.size + f.cell, f.size + f.cell);
  for (std::size_t k = 0; k < r.runs.size(); ++k)
    out += trajectory(f, r.runs[k].path, detail::palette(static_cast<std::size_t>(gd_slot(k))), 2,
                      fmt::format("gradient descent, lr = {:g}", r.runs[k].lr), true);
  out += trajectory(f, r.flow_path, "#000000", 3, "gradient flow dθ/dt = −∇L(θ)", false);
  out += fmt::format("<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"4\" fill=\"#ffffff\" stroke=\"#000\"><title>θ(0)</title></circle></g>\n", f.X(0), f.Y(0));
  return out;
}

std::string plane_legend(const FlowResult& r, const PlaneFrame& f) {
  const int lx = f.left + f.size + 20;
  int ly = f.top + 10;
  std::string out = fmt::format("<line x1=\"{}\" x2=\"{}\" y1=\"{}\" y2=\"{}\" stroke=\"#000\" stroke-width=\"3\"/><text x=\"{}\" y=\"{}\" class=\"legend\">gradient flow</text>\n",
                                lx, lx + 24, ly, ly, lx + 30, ly + 4);
  for (std::size_t k = 0; k < r.runs.size(); ++k) {
    ly += 18;
    out += fmt::format("<line x1=\"{}\" x2=\"{}\" y1=\"{}\" y2=\"{}\" stroke=\"{}\" stroke-width=\"2\" stroke-dasharray=\"5 3\"/><text x=\"{}\" y=\"{}\" class=\"legend\">GD, lr = {:g}</text>\n",
                       lx, lx + 24, ly, ly, detail::palette(static_cast<std::size_t>(gd_slot(k))), lx + 30, ly + 4, r.runs[k].lr);
  }
  ly += 22;
  out += fmt::format("<text x=\"{}\" y=\"{}\" class=\"legend\">white: &minus;&nabla;L streamlines</text>\n", lx, ly);
  ly += 16;
  out += fmt::format("<text x=\"{}\" y=\"{}\" class=\"legend\">colour: log10 loss, {:.4g} to {:.4g}</text>\n", lx, ly, f.lo, f.hi);
  out += fmt::format("<text x=\"{}\" y=\"{}\" class=\"axis\" text-anchor=\"middle\">direction 1 (a)</text>", f.left + f.size / 2, f.top + f.size + 30);
  out += fmt::format("<text transform=\"translate(18,{}) rotate(-90)\" class=\"axis\" text-anchor=\"middle\">direction 2 (b)</text>\n", f.top + f.size / 2);
  return out;
}

// The plane: loss as colour, −∇L streamlines in white, the flow in black, GD in colours.
std::string plane_svg(const FlowResult& r) {
  if (r.plane.grid < 2) return "";
  const PlaneFrame f(r.plane);
  const int w = f.left + f.size + f.legend, h = f.top + f.size + 50;
  std::string out = fmt::format("<figure class=\"chart\"><svg viewBox=\"0 0 {} {}\" width=\"{}\" height=\"{}\" role=\"img\" aria-label=\"loss plane\">\n",
                                w, h, w, h);
  out += fmt::format("<text x=\"{}\" y=\"22\" class=\"title\">Loss on a plane through &theta;(0), &minus;&nabla;L streamlines, and the trajectories</text>\n", f.left);
  out += plane_cells(r.plane, f) + streamlines(r.plane, f) + trajectories(r, f) + plane_legend(r, f);
  out += "</svg><figcaption>Directions are random, scaled per layer to the layer's weights (so the scale means the same in every layer); "
         "trajectories are projected onto the plane by least squares, so a path can leave the plane while its shadow stays in it.</figcaption></figure>\n";
  return out;
}

}  // namespace

std::string flow_section_html(const FlowResult& r) {
  std::string out = "<h2>Gradient flow: gradient descent as a discretisation of d&theta;/dt = &minus;&nabla;L(&theta;)</h2>\n";
  out += fmt::format("<p>Model <code>{}</code> ({} parameters) on {} examples of task {}, full batch. The flow is integrated to t = {:g} with "
                     "Dormand&ndash;Prince 5(4) ({} steps, {} rejected, {} gradient evaluations); gradient descent with step &eta; takes "
                     "t/&eta; steps from the same &theta;(0) and is compared with the flow at t = k&eta;.</p>\n",
                     html_escape(r.spec), r.parameters, r.samples, html_escape(r.task), r.time, r.stats.accepted, r.stats.rejected,
                     r.stats.evaluations);
  out += "<table><tr><th>&eta;</th><th>steps</th><th>max &Vert;&theta;<sub>GD</sub>(k) &minus; &theta;(k&eta;)&Vert;</th><th>final distance</th>"
         "<th>max loss gap</th><th class=l>leaves the flow</th><th class=l>&eta;&middot;&lambda;<sub>max</sub> reaches 2</th></tr>\n";
  for (const auto& d : r.runs)
    out += fmt::format("<tr class=\"{}\"><td>{:g}</td><td>{}</td><td class=v>{:.3g}</td><td>{:.3g}</td><td>{:.3g}</td><td class=l>{}</td>"
                       "<td class=l>{}</td></tr>\n",
                       d.diverged ? "bad" : "good", d.lr, d.steps, d.max_distance, d.final_distance, d.max_loss_gap,
                       d.departs_at ? fmt::format("at t = {:.3g}: {}{}", *d.departs_at, html_escape(d.departs_why), d.diverged ? "; diverged" : "")
                                    : std::string("no: it follows the flow"),
                       edge_text(d));
  out += "</table>\n";
  out += r.order ? fmt::format("<p>Fitted order of the error in &eta; (slope of log distance against log &eta;, runs that did not diverge): "
                               "<strong>{:.2f}</strong> &mdash; Euler's method is first order, so about 1 for small &eta;.</p>\n",
                               *r.order)
                 : "<p>Too few stable runs to fit an order.</p>\n";
  detail::LineChart lc = time_chart("Loss along the flow and along gradient descent", "full-batch loss (log scale)");
  lc.series.push_back(flow_line(r.flow_t, r.flow_loss, false));
  for (std::size_t k = 0; k < r.runs.size(); ++k) {
    detail::LineSeries s;
    s.label = fmt::format("GD, lr = {:g}", r.runs[k].lr);
    s.x = r.runs[k].t;
    s.y = r.runs[k].loss_gd;
    s.markers = r.runs[k].t.size() <= 60;
    s.dashed = true;
    s.colour = gd_slot(k);
    lc.series.push_back(s);
  }
  lc.note = "Small steps track the flow's loss; large ones overshoot, oscillate or diverge: the second seed's unstable-loss symptom.";
  out += detail::render(lc);
  detail::LineChart dc;
  dc.title = "Distance between gradient descent and the flow";
  dc.x_label = "time t";
  dc.y_label = "‖θ_GD − θ(t)‖ (log scale)";
  for (std::size_t k = 0; k < r.runs.size(); ++k) {
    detail::LineSeries s;
    s.label = fmt::format("lr = {:g}", r.runs[k].lr);
    s.x = r.runs[k].t;
    s.y = r.runs[k].distance;
    s.markers = false;
    s.colour = gd_slot(k);
    dc.series.push_back(s);
  }
  out += detail::render(dc);
  out += sharpness_chart(r);
  out += plane_svg(r);
  return out;
}

std::string flow_page_html(const FlowResult& r) {
  std::string out = "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>gradflow: gradient flow</title><style>"
                    "body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}"
                    "table{border-collapse:collapse;margin:1em 0;font-size:.92em}th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}"
                    "th{background:#f3f3f3}td.l,th.l{text-align:left}tr.good td.v{background:#e7f4ea}tr.bad td.v{background:#fbe9e7}"
                    ".chart svg{max-width:100%;height:auto}.plot{fill:#fafafa;stroke:#999}.grid{stroke:#e3e3e3}.tick{font-size:11px;fill:#444}"
                    ".axis{font-size:12px;fill:#222}.title{font-size:14px;font-weight:600;fill:#222}.legend{font-size:11px;fill:#222}"
                    ".empty{font-size:13px;fill:#888}figcaption{font-size:.85em;color:#555}code{background:#f3f3f3;padding:0 .2em}"
                    "</style></head><body>\n<h1>What &ldquo;gradient flow&rdquo; means, measured</h1>\n"
                    "<p>Rigorously, gradient flow is the ODE d&theta;/dt = &minus;&nabla;L(&theta;): drop &theta;(0) on the loss surface and "
                    "follow the steepest descent continuously, like a liquid flowing downhill. Gradient descent with step &eta; is its Euler "
                    "discretisation, &theta;<sub>k+1</sub> = &theta;<sub>k</sub> &minus; &eta;&nabla;L(&theta;<sub>k</sub>): close to the flow "
                    "for small &eta;, with an error that shrinks in proportion to &eta;, and departing from it &mdash; oscillating, then "
                    "diverging &mdash; once &eta; is too large for the curvature.</p>\n";
  out += flow_section_html(r);
  out += "</body></html>\n";
  return out;
}

}  // namespace gradflow
