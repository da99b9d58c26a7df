// Any bytes given as a Monitor's trace.jsonl either load or throw gradflow::Error; what loads can
// be diagnosed and reported without a crash, as `gradflow report` does after a program died.
#include <cstddef>
#include <cstdint>
#include <string>

#include "gradflow/error.h"
#include "gradflow/report.h"
#include "gradflow/run_record.h"
#include "gradflow/trace_io.h"
#include "gradflow/trace_stream.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    const gradflow::StreamedRun run = gradflow::parse_trace_stream(text, "trace.jsonl");
    (void)gradflow::trace_to_csv(run.trace);
    const auto r = gradflow::user_run_record(run.trace, run.completed_steps, "fuzz", {}, {});
    const auto c = gradflow::make_comparison({r}, {"."});
    (void)gradflow::models_report_html(c.runs);
    (void)gradflow::models_report_markdown(c.runs);
  } catch (const gradflow::Error&) {
  }
  return 0;
}
