// Inputs the fuzzers once crashed on: each must now load or be refused with gradflow::Error.
#include <filesystem>

#include <gtest/gtest.h>

#include "gradflow/atomic_file.h"
#include "gradflow/error.h"
#include "gradflow/report.h"
#include "gradflow/run_record.h"
#include "gradflow/trace_io.h"
#include "models/spec.h"

namespace gradflow {
namespace {

TEST(FuzzRegressions, EveryKnownCrashIsNowAnError) {
  const std::filesystem::path dir = GRADFLOW_TEST_DATA "/fuzz_regressions";
  int files = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    ++files;
    const std::string text = read_file(e.path().string());
    SCOPED_TRACE(e.path().string());
    try {
      auto r = run_from_json(text);
      r.analyse();
      (void)report_html(make_comparison({r}, {"x"}));
    } catch (const Error&) {
    }
    try {
      (void)trace_to_csv(trace_from_json(text));
    } catch (const Error&) {
    }
    try {
      (void)models::resolve_spec(text);
    } catch (const UsageError&) {
    }
  }
  EXPECT_GT(files, 0);
}

TEST(FuzzRegressions, WrongFieldTypesAreErrorsNamingTheFile) {
  try {
    run_from_json(R"({"schema":"gradflow.run/1","spec":"x","label":"x","family":"mlp","task":"t","traits":{"cell":true},
                      "layers":[],"steps_requested":1,"steps_done":1,"loss":[],"findings":[],
                      "trace":{"schema":"gradflow.trace/1","every":1,"series":[],"steps":[]}})",
                  "'bad/run.json'");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'bad/run.json'"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace gradflow
