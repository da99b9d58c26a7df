#pragma once
// Private JSON helpers shared by the trace, run and report writers.

#include <cmath>
#include <limits>
#include <string>

#include <nlohmann/json.hpp>

#include "gradflow/error.h"

namespace gradflow::detail {

using Json = nlohmann::json;

// JSON has no NaN or infinity: write null, and read null back as NaN.
inline Json num(double v) { return std::isfinite(v) ? Json(v) : Json(nullptr); }

inline double get_num(const Json& j, const char* key, const std::string& where) {
  auto it = j.find(key);
  if (it == j.end()) throw Error(where + ": missing field '" + key + "'");
  if (it->is_null()) return std::numeric_limits<double>::quiet_NaN();
  if (!it->is_number()) throw Error(where + ": field '" + key + "' is not a number");
  return it->get<double>();
}

inline double get_num_or(const Json& j, const char* key, double fallback) {
  auto it = j.find(key);
  if (it == j.end()) return fallback;
  if (it->is_null()) return std::numeric_limits<double>::quiet_NaN();
  if (!it->is_number()) return fallback;
  return it->get<double>();
}

inline std::int64_t get_int(const Json& j, const char* key, const std::string& where) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_number_integer())
    throw Error(where + ": field '" + key + "' is missing or not an integer");
  return it->get<std::int64_t>();
}

inline std::string get_str(const Json& j, const char* key, const std::string& where) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_string())
    throw Error(where + ": field '" + key + "' is missing or not a string");
  return it->get<std::string>();
}

inline const Json& get_array(const Json& j, const char* key, const std::string& where) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_array())
    throw Error(where + ": field '" + key + "' is missing or not a list");
  return *it;
}

inline Json parse_json(const std::string& text, const std::string& what) {
  try {
    return Json::parse(text);
  } catch (const Json::exception& e) {
    throw Error(what + " is not valid JSON (" + std::string(e.what()) +
                "); give a file written by gradflow");
  }
}

}  // namespace gradflow::detail
