#pragma once
// The trace as a JSON value, for documents that embed it (run.json, inspect.json).

#include "gradflow/trace.h"
#include "json_util.h"

namespace gradflow::detail {

Json trace_to_json_value(const Trace& trace);
Trace trace_from_json_value(const Json& j, const std::string& where);

}  // namespace gradflow::detail
