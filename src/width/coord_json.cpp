#include <fmt/format.h>

#include "gradflow/coord_check.h"
#include "gradflow/error.h"
#include "util/json_util.h"

namespace gradflow {

namespace {

using detail::Json;

Json check_to_json(const CoordCheck& c) {
  Json layers = Json::array();
  for (const auto& l : c.layers) {
    Json layer = {{"name", l.name}, {"kind", to_string(l.kind)}};
    if (!l.tied_to.empty()) layer["tied_to"] = l.tied_to;
    layers.push_back(std::move(layer));
  }
  Json figures = Json::object();
  for (int q = 0; q < kCoordQuantities; ++q) {
    Json steps = Json::array();
    for (const auto& step : c.values.at(static_cast<std::size_t>(q))) {
      Json rows = Json::array();
      for (const auto& row : step) {
        Json cells = Json::array();
        for (double v : row) cells.push_back(detail::num(v));
        rows.push_back(std::move(cells));
      }
      steps.push_back(std::move(rows));
    }
    figures[to_string(static_cast<CoordQuantity>(q))] = std::move(steps);
  }
  return {{"label", c.label},
          {"optimizer", c.optimizer},
          {"optimizer_kind", c.optimizer_kind ? Json(to_string(*c.optimizer_kind)) : Json(nullptr)},
          {"widths", c.widths},
          {"steps", c.steps},
          {"seeds", c.seeds},
          {"layers", std::move(layers)},
          {"figures", std::move(figures)}};
}

std::optional<OptimizerKind> optimizer_kind_from(const Json& j) {
  const auto it = j.find("optimizer_kind");
  if (it == j.end() || it->is_null()) return std::nullopt;
  return optimizer_kind_from_string(it->get<std::string>());
}

// Every figure array is [step][layer][width] of the check's sizes: checked before anything is
// allocated, so that the file's own size bounds the memory it takes.
void check_figure_shape(const Json& figures, const CoordCheck& c, const std::string& where) {
  for (int q = 0; q < kCoordQuantities; ++q) {
    const char* name = to_string(static_cast<CoordQuantity>(q));
    const Json& steps = detail::get_array(figures, name, where);
    if (steps.size() != static_cast<std::size_t>(c.steps)) throw Error(where + ": '" + name + "' does not hold one entry per step");
    for (const Json& rows : steps) {
      if (!rows.is_array() || rows.size() != c.layers.size()) throw Error(where + ": '" + name + "' does not hold one row per layer");
      for (const Json& cells : rows)
        if (!cells.is_array() || cells.size() != c.widths.size()) throw Error(where + ": '" + name + "' does not hold one figure per width");
    }
  }
}

void read_figures(const Json& figures, CoordCheck& c) {
  for (int q = 0; q < kCoordQuantities; ++q) {
    const auto quantity = static_cast<CoordQuantity>(q);
    const Json& steps = figures.at(to_string(quantity));
    for (std::int64_t t = 0; t < c.steps; ++t)
      for (std::size_t l = 0; l < c.layers.size(); ++l)
        for (std::size_t w = 0; w < c.widths.size(); ++w) {
          const Json& cell = steps[static_cast<std::size_t>(t)][l][w];
          c.at(quantity, t, l, w) = cell.is_null() ? std::numeric_limits<double>::quiet_NaN() : cell.get<double>();
        }
  }
}

CoordCheck check_from_json(const Json& j, const std::string& where) {
  CoordCheck c;
  c.label = detail::get_str(j, "label", where);
  c.optimizer = j.value("optimizer", "");
  c.optimizer_kind = optimizer_kind_from(j);
  for (const auto& w : detail::get_array(j, "widths", where)) c.widths.push_back(w.get<std::int64_t>());
  c.steps = detail::get_int(j, "steps", where);
  if (c.steps < 1 || c.steps > 100000) throw Error(where + ": 'steps' must be from 1 to 100000");
  c.seeds = j.value("seeds", std::int64_t{1});
  if (c.seeds < 1) throw Error(where + ": 'seeds' must be at least 1");
  for (const auto& l : detail::get_array(j, "layers", where))
    c.layers.push_back({detail::get_str(l, "name", where), weight_kind_from_string(detail::get_str(l, "kind", where)), l.value("tied_to", "")});
  const Json& figures = j.at("figures");
  check_figure_shape(figures, c, where);
  c.allocate();
  read_figures(figures, c);
  return c;
}

}  // namespace

std::string coord_checks_to_json(const std::vector<CoordCheck>& checks) {
  Json all = Json::array();
  for (const auto& c : checks) all.push_back(check_to_json(c));
  return Json{{"schema", kCoordSchema}, {"checks", std::move(all)}}.dump(1) + "\n";
}

std::vector<CoordCheck> coord_checks_from_json(const std::string& text, const std::string& where) {
  try {
    const Json j = detail::parse_json(text, where);
    if (!j.is_object() || j.value("schema", "") != kCoordSchema)
      throw Error(where + " is not a gradflow coordinate check (schema " + kCoordSchema + " expected)");
    std::vector<CoordCheck> checks;
    for (const auto& c : detail::get_array(j, "checks", where)) checks.push_back(check_from_json(c, where));
    return checks;
  } catch (const Json::exception& e) {
    throw Error(where + " is corrupt (" + e.what() + "): give a coord_check.json written by gradflow");
  }
}

}  // namespace gradflow
