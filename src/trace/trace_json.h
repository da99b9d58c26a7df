#pragma once
// The trace as a JSON value, for documents that embed it (run.json, inspect.json).

#include "gradflow/trace.h"
#include "util/json_util.h"

namespace gradflow::detail {

Json trace_to_json_value(const Trace& trace);
Trace trace_from_json_value(const Json& j, const std::string& where);

// The pieces a trace is made of, for the append-only stream (trace_stream.cpp).
Json series_json(const SeriesInfo& s);
Json step_json(const StepRecord& st);
// Adds the series `s` describes; throws gradflow::Error when `t` already has one of that name.
void add_series_from(Trace& t, const Json& s, const std::string& where);
// Adds the series indices in `from` to series `to`'s inputs; throws gradflow::Error for one that does not exist.
void add_inputs_from(Trace& t, int to, const Json& from, const std::string& where);
// A record's profile in `obj` (under its axis' name), with the axis; nullptr when it has none.
const Json* find_profile(const Json& obj, ProfileAxis* axis);

// A recorded world size, checked: the rank figures and rules hold one entry per rank, so a number
// no process group has (a corrupt file) is refused rather than allocated.
// The most ranks a trace names (world_size, a sharded parameter's parts).
constexpr std::int64_t kMaxRanks = 1 << 16;
int world_size_from(std::int64_t n, const std::string& where);
// Throws Json::exception or gradflow::Error when `js` is not a step of a trace with `n_series` series.
StepRecord step_from(const Json& js, int n_series, const std::string& where);

}  // namespace gradflow::detail
