#pragma once
// Pieces of run.json reused by summary.json.

#include "gradflow/diagnosis.h"
#include "gradflow/summary.h"
#include "util/json_util.h"

namespace gradflow::detail {

Json finding_json(const Finding& f);
Finding finding_from(const Json& j, const std::string& where);
Json summary_to_json(const RunSummary& s);

}  // namespace gradflow::detail
