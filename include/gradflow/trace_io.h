#pragma once
/// \file
/// The trace as files: versioned JSON (docs/trace-schema.md) and long-format CSV.

#include <string>

#include "gradflow/trace.h"

namespace gradflow {

/// Schema identifier written into every trace JSON; readers refuse other major versions.
inline constexpr const char* kTraceSchema = "gradflow.trace/1";

/// The trace as a JSON document (see docs/trace-schema.md). Non-finite numbers become null.
std::string trace_to_json(const Trace& trace, int indent = -1);
/// Parses a trace JSON document; throws gradflow::Error naming what is wrong with it.
Trace trace_from_json(const std::string& text);

/// Long-format CSV, one value a row: `step,name,kind,quantity,value`. Loss and accuracy rows
/// have kind `step`. pandas (`read_csv`) and R (`read.csv`) read it as it is.
std::string trace_to_csv(const Trace& trace);

/// Writes trace_to_json / trace_to_csv to a file atomically.
void write_trace_json(const Trace& trace, const std::string& path);
/// \copydoc write_trace_json
void write_trace_csv(const Trace& trace, const std::string& path);
/// Reads a trace JSON file written by write_trace_json.
Trace read_trace_json(const std::string& path);

}  // namespace gradflow
