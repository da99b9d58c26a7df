#include "gradflow/trace_io.h"

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <sstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "gradflow/atomic_file.h"
#include "gradflow/error.h"
#include "gradflow/trace_stream.h"
#include "test_util.h"

namespace gradflow {
namespace {

using test::rel_close;
namespace fs = std::filesystem;

Trace sample() {
  Trace t;
  t.every = 2;
  t.intern("fc1.weight", SeriesKind::parameter, "fc1", {4, 3});
  t.intern("fc1", SeriesKind::activation, "fc1");
  t.intern("h,1", SeriesKind::tap, "h", {2, 4});  // a comma must survive the CSV
  for (int s = 0; s < 3; ++s) {
    StepRecord st;
    st.step = 2 * s;
    st.loss = 1.0 / (s + 1);
    Record a;
    a.series = 0;
    a.grad.numel = 12;
    a.grad.zeros = 2;
    a.grad.sum = 0.25 * s;
    a.grad.sum_sq = 1e-30 + s;
    a.grad.max_abs = 0.5;
    a.weight_norm = 2.0;
    Record b;
    b.series = 1;
    b.grad.numel = 8;
    b.grad.nonfinite = s == 2 ? 3 : 0;
    b.grad.sum_sq = 4.0;
    b.profile = {1.5, 1.25};  // two calls
    Record c;
    c.series = 2;
    c.grad.numel = 8;
    c.forward = ActivationStats{0.5, 0.1, 0.25, 0.5, 0.2};
    st.records = {a, b, c};
    t.add_step(st);
  }
  return t;
}

TEST(TraceIo, JsonRoundTripKeepsEveryStatistic) {
  const Trace t = sample();
  const Trace u = trace_from_json(trace_to_json(t));
  ASSERT_EQ(u.series().size(), t.series().size());
  ASSERT_EQ(u.steps().size(), t.steps().size());
  EXPECT_EQ(u.every, 2);
  EXPECT_EQ(u.series()[0].shape, (std::vector<std::int64_t>{4, 3}));
  EXPECT_EQ(u.series()[2].kind, SeriesKind::tap);
  for (std::size_t i = 0; i < t.steps().size(); ++i) {
    const auto& a = t.steps()[i];
    const auto& b = u.steps()[i];
    EXPECT_EQ(a.step, b.step);
    EXPECT_DOUBLE_EQ(*a.loss, *b.loss);
    for (std::size_t k = 0; k < a.records.size(); ++k) {
      const auto& ra = a.records[k].grad;
      const auto& rb = b.records[k].grad;
      EXPECT_TRUE(rel_close(rb.norm(), ra.norm(), 1e-15));
      EXPECT_TRUE(rel_close(rb.mean(), ra.mean(), 1e-15));
      EXPECT_TRUE(rel_close(rb.std(), ra.std(), 1e-12, 1e-15));
      EXPECT_EQ(rb.zeros, ra.zeros);
      EXPECT_EQ(rb.nonfinite, ra.nonfinite);
      EXPECT_EQ(rb.max_abs, ra.max_abs);
    }
    EXPECT_DOUBLE_EQ(b.records[0].weight_norm, 2.0);
    EXPECT_TRUE(std::isnan(b.records[1].weight_norm));
    ASSERT_TRUE(b.records[2].forward.has_value());
    EXPECT_DOUBLE_EQ(b.records[2].forward->dead_fraction, 0.25);
  }
  ASSERT_TRUE(u.first_nonfinite().has_value());
  EXPECT_EQ(u.first_nonfinite()->step, 4);
  EXPECT_EQ(u.first_nonfinite()->series, "fc1");
}

TEST(TraceIo, NonFiniteNumbersBecomeNullNeverNaN) {
  Trace t;
  t.intern("w", SeriesKind::parameter, "m");
  StepRecord st;
  st.loss = std::numeric_limits<double>::quiet_NaN();
  Record r;
  r.grad.numel = 1;
  r.grad.sum_sq = std::numeric_limits<double>::infinity();
  r.weight_norm = 0.0;  // ratio would divide by zero
  st.records = {r};
  t.add_step(st);
  const std::string text = trace_to_json(t);
  EXPECT_EQ(text.find("NaN"), std::string::npos);
  EXPECT_EQ(text.find("nan"), std::string::npos);
  EXPECT_EQ(text.find("inf"), std::string::npos);
  const auto j = nlohmann::json::parse(text);
  EXPECT_TRUE(j["steps"][0]["loss"].is_null());
  EXPECT_TRUE(j["steps"][0]["records"][0]["norm"].is_null());
  EXPECT_TRUE(j["steps"][0]["records"][0]["ratio"].is_null());
}

TEST(TraceIo, CsvIsLongFormatWithOneValuePerRow) {
  const std::string csv = trace_to_csv(sample());
  std::istringstream in(csv);
  std::string line;
  std::getline(in, line);
  EXPECT_EQ(line, "step,name,kind,quantity,value,rank,gradient");
  int rows = 0;
  bool saw_quoted = false, saw_loss = false, saw_ratio = false, unlabelled_gradient = false;
  while (std::getline(in, line)) {
    ++rows;
    if (line.rfind("0,\"h,1\",tap,dead_fraction,0.25", 0) == 0) saw_quoted = true;
    if (line == "2,loss,step,loss,0.5,,") saw_loss = true;
    if (line.rfind("0,fc1.weight,parameter,ratio,", 0) == 0) saw_ratio = line.size() > 9 && line.substr(line.size() - 9) == ",produced";
    // Every row of a gradient's figure says which gradient: produced here.
    for (const char* q : {",norm,", ",rms,", ",max_abs,", ",zero_fraction,", ",calls_norm.", ",time_norm."})
      if (line.find(q) != std::string::npos && line.find(",produced") == std::string::npos) unlabelled_gradient = true;
  }
  EXPECT_FALSE(unlabelled_gradient);
  EXPECT_TRUE(saw_quoted);
  EXPECT_TRUE(saw_loss);
  EXPECT_TRUE(saw_ratio);
  // per step: loss + param (7 + 2) + activation (7 + 2 calls) + tap (7 + 5)
  EXPECT_EQ(rows, 3 * (1 + 9 + 9 + 12));
}

TEST(TraceIo, ForeignOrCorruptJsonIsRefusedWithAReason) {
  EXPECT_THROW(trace_from_json("{not json"), Error);
  EXPECT_THROW(trace_from_json("[]"), Error);
  EXPECT_THROW(trace_from_json(R"({"schema":"other/1"})"), Error);
  EXPECT_THROW(trace_from_json(R"({"schema":"gradflow.trace/9","every":1,"series":[],"steps":[]})"), Error);
  EXPECT_THROW(trace_from_json(R"({"schema":"gradflow.trace/1","every":0,"series":[],"steps":[]})"), Error);
  // a record that names a series that does not exist
  EXPECT_THROW(trace_from_json(R"({"schema":"gradflow.trace/1","every":1,"series":[],
    "steps":[{"step":0,"records":[{"series":3,"numel":1,"nonfinite":0,"zeros":0,"norm":1,"mean":0,"max_abs":1}]}]})"),
               Error);
  // A world size no process group has: refused, never allocated per rank (the stream's header
  // alike, from the stream fuzzer: world_size 1111111111111111111 made the rank rules allocate GBs).
  for (const char* n : {"0", "70000", "1111111111111111111"}) {
    EXPECT_THROW(trace_from_json(std::string(R"({"schema":"gradflow.trace/1","every":1,"world_size":)") + n +
                                 R"(,"series":[],"steps":[]})"),
                 Error)
        << n;
    EXPECT_THROW(parse_trace_stream(std::string(R"({"schema":"gradflow.stream/1","every":1,"saturation_threshold":0.1,)") +
                                        R"("batch_per_rank":0,"world_size":)" + n + "}\n",
                                    "trace.jsonl"),
                 Error)
        << n;
  }
  try {
    trace_from_json(R"({"schema":"gradflow.trace/1","series":[],"steps":[]})");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("every"), std::string::npos) << e.what();
  }
}

TEST(AtomicFile, WritesWholeFileAndLeavesNoTemporary) {
  const fs::path dir = fs::temp_directory_path() / "gradflow_atomic_test";
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::string path = (dir / "a.json").string();
  write_file_atomic(path, "first");
  write_file_atomic(path, "second");
  EXPECT_EQ(read_file(path), "second");
  int files = 0;
  for (const auto& e : fs::directory_iterator(dir)) {
    (void)e;
    ++files;
  }
  EXPECT_EQ(files, 1);
  fs::remove_all(dir);
}

TEST(AtomicFile, MissingFolderIsAnErrorNamingThePath) {
  try {
    write_file_atomic("/nonexistent-gradflow-dir/x.json", "x");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent-gradflow-dir/x.json"), std::string::npos);
  }
  EXPECT_THROW(read_file("/nonexistent-gradflow-dir/x.json"), Error);
}

}  // namespace
}  // namespace gradflow
