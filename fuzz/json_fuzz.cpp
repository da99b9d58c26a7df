// Any bytes given as trace.json, run.json or coord_check.json either load or throw
// gradflow::Error; what loads can be written, read back and reported without a crash.
#include <cstddef>
#include <cstdint>
#include <string>

#include "gradflow/coord_check.h"
#include "gradflow/error.h"
#include "gradflow/report.h"
#include "gradflow/run_record.h"
#include "gradflow/trace_io.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    const auto t = gradflow::trace_from_json(text);
    (void)gradflow::trace_to_csv(t);
    (void)gradflow::trace_from_json(gradflow::trace_to_json(t));
  } catch (const gradflow::Error&) {
  }
  try {
    auto r = gradflow::run_from_json(text);
    r.analyse();
    const auto c = gradflow::make_comparison({r}, {"run"});
    (void)gradflow::report_html(c);
    (void)gradflow::report_markdown(c);
    (void)gradflow::run_from_json(gradflow::run_to_json(r));
  } catch (const gradflow::Error&) {
  }
  try {
    const auto checks = gradflow::coord_checks_from_json(text, "fuzz");
    for (const auto& c : checks) (void)gradflow::analyse_widths(c);
    (void)gradflow::coord_report_html(checks);
    (void)gradflow::coord_report_markdown(checks);
    (void)gradflow::coord_checks_from_json(gradflow::coord_checks_to_json(checks), "fuzz");
  } catch (const gradflow::Error&) {
  }
  return 0;
}
