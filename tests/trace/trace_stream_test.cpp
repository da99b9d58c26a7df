// The append-only stream: what a program that dies leaves behind is read back as the steps it
// closed, a torn last line is dropped, and files that are not a gradflow recording get a clear error.
#include "gradflow/trace_stream.h"

#include <cmath>
#include <fstream>
#include <limits>
#include <filesystem>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include "gradflow/atomic_file.h"
#include "gradflow/error.h"
#include "gradflow/option.h"
#include "gradflow/trace_io.h"

namespace gradflow {
namespace {

namespace fs = std::filesystem;

struct TempDir {
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "gradflow-stream-XXXXXX").string();
    path = ::mkdtemp(tmpl.data());
  }
  ~TempDir() { fs::remove_all(path); }
  std::string path;
};

// A trace whose steps introduce series as they go, as a Monitor's do (taps appear later).
Trace growing_trace(int steps) {
  Trace t;
  t.every = 3;
  t.saturation_threshold = 0.2;
  for (int s = 0; s < steps; ++s) {
    StepRecord st;
    st.step = 3 * s;
    st.add_loss(2.0 / (s + 1));
    const int a = t.intern("fc.weight", SeriesKind::parameter, "fc", {4, 2});
    Record r;
    r.series = a;
    r.grad.numel = 8;
    r.grad.sum = 0.1 * s;
    r.grad.sum_sq = 1.0 + s;
    r.grad.max_abs = 0.7;
    r.weight_norm = 1.5;
    st.records.push_back(r);
    if (s >= 1) {
      Record h;
      h.series = t.intern("h." + std::to_string(s), SeriesKind::tap, "h", {2});
      h.grad.numel = 2;
      h.grad.sum_sq = 0.25 * s;
      st.records.push_back(h);
    }
    t.add_step(st);
  }
  return t;
}

Trace streamed(const std::string& dir, const Trace& t, bool finish) {
  {
    TraceStream stream(dir, t, false);
    Trace growing;
    growing.every = t.every;
    for (const auto& st : t.steps()) {
      for (const auto& r : st.records) {
        const auto& s = t.series()[r.series];
        growing.intern(s.name, s.kind, s.layer, s.shape);
      }
      growing.add_step(st);
      stream.append(growing, st);
    }
    if (finish) stream.finish(static_cast<std::int64_t>(t.steps().size()) * 3);
  }
  return read_trace_stream(dir).trace;
}

TEST(TraceStream, ReadsBackEveryStepAsTheTraceItWasWrittenFrom) {
  TempDir d;
  const Trace t = growing_trace(4);
  const Trace back = streamed(d.path, t, true);
  EXPECT_EQ(trace_to_json(back), trace_to_json(t));
  const StreamedRun run = read_trace_stream(d.path);
  EXPECT_TRUE(run.finished);
  EXPECT_FALSE(run.trace.interrupted);
  EXPECT_EQ(run.completed_steps, 12);
}

// The stream keeps a record's raw sums, so every figure derived from them is the one in memory;
// non-finite values, forward statistics and each rank's sums come back too.
TEST(TraceStream, EverySumOfEveryRecordComesBackExactly) {
  TempDir d;
  Trace t = growing_trace(2);
  Record& r = t.steps()[1].records[0];
  r.grad.sum = 1.0 / 3.0;
  r.grad.sum_sq = std::numeric_limits<double>::infinity();
  r.grad.max_abs = std::numeric_limits<double>::quiet_NaN();
  r.grad.nonfinite = 2;
  r.update_norm = 0.125;
  r.forward = ActivationStats{0.1, std::numeric_limits<double>::quiet_NaN(), 0.3, 0.4, 0.5};
  TensorStats local;
  local.numel = 8;
  local.sum = -2.5e-300;
  local.sum_sq = 7.0;
  r.ranks = {local, TensorStats{}};
  const Trace back = streamed(d.path, t, true);
  const Record& got = back.steps()[1].records[0];
  EXPECT_EQ(got.grad.sum, 1.0 / 3.0);
  EXPECT_EQ(got.grad.sum_sq, std::numeric_limits<double>::infinity());
  EXPECT_TRUE(std::isnan(got.grad.max_abs));
  EXPECT_EQ(got.grad.nonfinite, 2);
  EXPECT_EQ(got.update_norm, 0.125);
  EXPECT_TRUE(std::isnan(back.steps()[1].records[1].weight_norm));
  ASSERT_TRUE(got.forward);
  EXPECT_TRUE(std::isnan(got.forward->std));
  EXPECT_EQ(got.forward->saturated_fraction, 0.4);
  EXPECT_EQ(got.forward->mean_local_derivative, 0.5);
  ASSERT_EQ(got.ranks.size(), 2u);
  EXPECT_EQ(got.ranks[0].sum, -2.5e-300);
  EXPECT_EQ(got.ranks[0].sum_sq, 7.0);
  EXPECT_EQ(got.ranks[1].numel, 0);
}

// Which gradient each figure is: the applied gradient, the optimizer step and closure evaluation,
// the loss scale and a skipped step, compact rank figures — through the stream and the JSON alike.
TEST(TraceStream, TheLabelsOfEveryRecordComeBack) {
  TempDir d;
  Trace t = growing_trace(3);
  t.world_size = 2;
  StepRecord& st = t.steps()[1];
  st.optimizer_step = 4;
  st.evaluation = 2;
  st.step_loss = 0.75;
  st.loss_scale = 1024;
  st.scale_after = 512;
  st.skipped = true;
  Record& r = st.records[0];
  TensorStats applied = r.grad;
  applied.sum_sq = 0.0625;
  applied.max_abs = 0.125;
  r.applied = applied;
  TensorStats local;
  local.numel = 8;
  local.sum_sq = 4;
  local.max_abs = 1.5;
  local.nonfinite = 1;
  r.ranks = {local, local};
  r.ranks_compact = true;
  const auto expect_labels = [](const StepRecord& got) {
    EXPECT_EQ(got.optimizer_step, 4);
    EXPECT_EQ(got.evaluation, 2);
    EXPECT_EQ(got.step_loss, 0.75);
    EXPECT_EQ(got.loss_scale, 1024);
    EXPECT_EQ(got.scale_after, 512);
    EXPECT_TRUE(got.skipped);
    EXPECT_TRUE(got.records[0].ranks_compact);
    EXPECT_DOUBLE_EQ(got.records[0].applied->norm(), 0.25);
    EXPECT_DOUBLE_EQ(got.records[0].ranks[1].norm(), 2.0);
  };
  const Trace back = streamed(d.path, t, true);
  const StepRecord& got = back.steps()[1];
  expect_labels(got);
  EXPECT_EQ(back.steps()[0].optimizer_step, -1);
  EXPECT_EQ(back.steps()[0].evaluation, -1);
  EXPECT_FALSE(back.steps()[0].loss_scale.has_value());
  ASSERT_TRUE(got.records[0].applied.has_value());
  EXPECT_EQ(got.records[0].applied->sum_sq, 0.0625);
  EXPECT_EQ(got.records[0].applied->max_abs, 0.125);
  EXPECT_FALSE(got.records[1].applied.has_value());
  EXPECT_EQ(got.records[0].ranks[1].max_abs, 1.5);
  // The JSON keeps them too, and says which of a compact rank's figures it has.
  expect_labels(trace_from_json(trace_to_json(back)).steps()[1]);
  const auto j = nlohmann::json::parse(trace_to_json(back));
  const auto& compact = j["steps"][1]["records"][0];
  EXPECT_TRUE(compact["ranks_compact"].get<bool>());
  EXPECT_FALSE(compact["ranks"][0].contains("mean"));
  EXPECT_EQ(compact["ranks"][0]["max_abs"].get<double>(), 1.5);
  EXPECT_EQ(compact["applied"]["norm"].get<double>(), 0.25);
  const std::string csv = trace_to_csv(back);
  EXPECT_NE(csv.find("3,fc.weight,parameter,norm,0.25,,applied\n"), std::string::npos);
  EXPECT_NE(csv.find("3,fc.weight,parameter,max_abs,1.5,1,local\n"), std::string::npos);
  EXPECT_EQ(csv.find("3,fc.weight,parameter,mean,0,1,local\n"), std::string::npos);  // not carried: not written
  EXPECT_NE(csv.find("3,skipped,step,skipped,1,,\n"), std::string::npos);
  EXPECT_NE(csv.find("3,evaluation,step,evaluation,2,,\n"), std::string::npos);
}

// A sharded parameter's part count (SeriesInfo::shards) and each rank's part (Record::ranks) come
// back from the stream and the JSON; a part count that is no number of ranks is refused.
TEST(TraceStream, ShardedParametersAndTheirPartsComeBack) {
  TempDir d;
  Trace t;
  const int sharded = t.intern("0.weight", SeriesKind::parameter, "0", {3, 4});
  const int whole = t.intern("1.weight", SeriesKind::parameter, "1", {4, 4});
  t.set_shards(sharded, 2);
  StepRecord st;
  for (int series : {sharded, whole}) {
    Record r;
    r.series = series;
    r.grad.numel = 12;
    r.grad.sum_sq = 3.0;
    if (series == sharded)
      for (double part : {2.0, 1.0}) {
        TensorStats s;
        s.numel = 6;
        s.sum_sq = part;
        r.ranks.push_back(s);
      }
    st.records.push_back(r);
  }
  {
    TraceStream stream(d.path, t, false);
    t.add_step(st);
    stream.append(t, t.steps().back());
  }
  const Trace back = read_trace_stream(d.path).trace;
  for (const Trace& got : {back, trace_from_json(trace_to_json(back))}) {
    EXPECT_EQ(got.series()[sharded].shards, 2);
    EXPECT_EQ(got.series()[whole].shards, 0);
    const Record* r = got.steps().at(0).find(sharded);
    ASSERT_EQ(r->ranks.size(), 2u);
    EXPECT_DOUBLE_EQ(r->ranks[0].sum_sq, 2.0);  // (kept as a norm)
    EXPECT_DOUBLE_EQ(r->ranks[1].sum_sq, 1.0);
  }
  for (const char* bad : {"0", "-3", "1.5", "\"two\"", "70000"}) {
    std::string json = trace_to_json(back);
    const std::string key = "\"shards\":2";
    const auto at = json.find(key);
    ASSERT_NE(at, std::string::npos) << json;
    json.replace(at, key.size(), std::string("\"shards\":") + bad);
    try {
      trace_from_json(json);
      ADD_FAILURE() << "accepted shards " << bad;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("'0.weight' has 'shards'"), std::string::npos) << e.what();
    }
  }
}

// A module's calls and time steps (Record::profile) and which module feeds which
// (SeriesInfo::inputs) come back from the stream and the JSON, also an input found after its
// series was written; so does how a layer output was found, a tap's declared activation, and
// whether layer outputs were named at all.
TEST(TraceStream, ProfilesAndTheModelsGraphComeBack) {
  TempDir d;
  Trace t;
  const int enc = t.intern("encoder", SeriesKind::activation, "encoder");
  const int cell = t.intern("cell", SeriesKind::activation, "cell");
  const int head = t.intern("head", SeriesKind::activation, "head");
  t.add_input(cell, enc);
  t.mark_found_by_walk(head);
  t.set_activation(cell, Activation::tanh);
  t.layer_outputs = true;
  t.parameter_gradients = true;
  auto step = [&](std::int64_t s, ProfileAxis axis, std::vector<double> profile) {
    StepRecord st;
    st.step = s;
    for (int series : {enc, cell, head}) {
      Record r;
      r.series = series;
      r.grad.numel = 4;
      r.grad.sum_sq = 1.0;
      if (series == cell) r.profile = profile, r.profile_axis = axis;
      st.records.push_back(r);
    }
    return st;
  };
  {
    TraceStream stream(d.path, t, false);
    t.add_step(step(0, ProfileAxis::calls, {0.5, std::numeric_limits<double>::infinity(), 0.25}));
    stream.append(t, t.steps().back());
    t.add_input(head, cell);  // seen in a later step
    t.add_step(step(1, ProfileAxis::time, {0.125, 0.0625}));
    stream.append(t, t.steps().back());
  }
  const Trace back = read_trace_stream(d.path).trace;
  for (const Trace& got : {back, trace_from_json(trace_to_json(back))}) {
    EXPECT_EQ(got.series()[cell].inputs, std::vector<int>{enc});
    EXPECT_EQ(got.series()[head].inputs, std::vector<int>{cell});
    EXPECT_TRUE(got.series()[head].found_by_walk);
    EXPECT_FALSE(got.series()[cell].found_by_walk);
    EXPECT_EQ(got.series()[cell].activation, Activation::tanh);
    EXPECT_EQ(got.series()[head].activation, Activation::none);
    EXPECT_TRUE(got.layer_outputs);
    EXPECT_TRUE(got.parameter_gradients);
    ASSERT_EQ(got.steps().size(), 2u);
    const Record* calls = got.steps()[0].find(cell);
    EXPECT_EQ(calls->profile_axis, ProfileAxis::calls);
    ASSERT_EQ(calls->profile.size(), 3u);
    EXPECT_EQ(calls->profile[0], 0.5);
    EXPECT_EQ(calls->profile[2], 0.25);
    const Record* time = got.steps()[1].find(cell);
    EXPECT_EQ(time->profile_axis, ProfileAxis::time);
    EXPECT_EQ(time->profile, (std::vector<double>{0.125, 0.0625}));
    EXPECT_TRUE(got.steps()[1].find(enc)->profile.empty());
  }
  EXPECT_TRUE(std::isinf(back.steps()[0].find(cell)->profile[1]));  // the stream keeps a non-finite norm
  EXPECT_NE(trace_to_csv(back).find("1,cell,activation,time_norm.2,0.0625,,produced\n"), std::string::npos);
}

// A step is written as its backward ends and again as it closes when it gained something since
// (the update's norm): the later line holds.
TEST(TraceStream, AStepWrittenAgainReplacesItsEarlierLine) {
  TempDir d;
  const Trace t = growing_trace(2);
  {
    TraceStream stream(d.path, t, false);
    StepRecord provisional = t.steps()[1];
    provisional.records.pop_back();
    stream.append(t, t.steps()[0]);
    stream.append(t, provisional);
    stream.append(t, t.steps()[1]);
    stream.finish(6);
  }
  const Trace back = read_trace_stream(d.path).trace;
  EXPECT_EQ(trace_to_json(back), trace_to_json(t));
}

TEST(TraceStream, AStreamTheProgramDidNotFinishIsInterrupted) {
  TempDir d;
  const Trace back = streamed(d.path, growing_trace(3), false);
  EXPECT_TRUE(back.interrupted);
  EXPECT_EQ(back.steps().size(), 3u);
}

TEST(TraceStream, ATornLastLineIsDroppedAndTheStepsBeforeItKept) {
  TempDir d;
  streamed(d.path, growing_trace(3), false);
  const std::string path = d.path + "/" + kStreamFile;
  std::string text = read_file(path);
  // The program died while writing a fourth step.
  std::ofstream(path, std::ios::app) << "{\"series\":{\"name\":\"h.3\",\"kind\":\"tap\",\"layer\":\"h\"}}\n{\"step\":{\"step\":9,\"rec";
  const StreamedRun run = read_trace_stream(d.path);
  EXPECT_TRUE(run.torn_tail);
  ASSERT_EQ(run.trace.steps().size(), 3u);
  EXPECT_EQ(run.trace.steps().back().step, 6);
}

TEST(TraceStream, AnotherProgramsFileANewerSchemaAndACorruptLineAreClearErrors) {
  TempDir d;
  const std::string path = d.path + "/" + kStreamFile;
  auto message_for = [&](const std::string& content) {
    write_file_atomic(path, content);
    try {
      read_trace_stream(d.path);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message_for("step,name,kind\n1,2,3\n").find("is not a gradflow recording"), std::string::npos);
  EXPECT_NE(message_for("{\"schema\":\"other.log/1\"}\n").find("is not a gradflow recording"), std::string::npos);
  EXPECT_NE(message_for("{\"schema\":\"gradflow.stream/2\",\"every\":1}\n").find("newer gradflow"), std::string::npos);
  EXPECT_NE(message_for("").find("is empty"), std::string::npos);
  const std::string header = "{\"schema\":\"gradflow.stream/1\",\"every\":1,\"world_size\":1,\"batch_per_rank\":0}\n";
  EXPECT_NE(message_for(header + "not json\n{\"end\":{\"completed_steps\":1}}\n").find("line 2 is corrupt"),
            std::string::npos);
  EXPECT_NE(message_for(header + "{\"step\":{\"step\":0,\"records\":[],\"rows\":[[5,1,0,0,0,0,0,null,null]]}}\n")
                .find("line 2 is corrupt"),
            std::string::npos);
  EXPECT_NE(message_for(header + "{\"step\":{\"step\":0,\"records\":[],\"rows\":[[0,1]]}}\n").find("line 2 is corrupt"),
            std::string::npos);
  EXPECT_NE(message_for(header + "{\"mystery\":1}\n").find("not a line of a gradflow recording"), std::string::npos);
}

TEST(TraceStream, AFolderThatHoldsARecordingIsNotOverwrittenUnlessAsked) {
  TempDir d;
  streamed(d.path, growing_trace(2), false);
  try {
    TraceStream again(d.path, Trace{}, false);
    FAIL() << "a second stream opened on the same folder";
  } catch (const OptionError& e) {
    EXPECT_EQ(e.option(), Option::monitor_force);
    EXPECT_NE(std::string(e.what()).find("MonitorOptions::force"), std::string::npos);
    EXPECT_NE(e.message(Language::python).find("force="), std::string::npos);
  }
  EXPECT_EQ(read_trace_stream(d.path).trace.steps().size(), 2u);
  { TraceStream replaced(d.path, Trace{}, true); }
  // Its program stopped before a step: the next Monitor may start there without being told to.
  { TraceStream again(d.path, Trace{}, false); }
  // Replaced by a program that died before its first step: nothing to report, and said so.
  try {
    read_trace_stream(d.path);
    FAIL() << "a recording without a step was read";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("holds no recorded step"), std::string::npos) << e.what();
  }
}

// Lines of the stream file, as written.
std::size_t stream_lines(const std::string& dir) {
  std::ifstream in(fs::path(dir) / kStreamFile);
  std::size_t n = 0;
  for (std::string line; std::getline(in, line);) ++n;
  return n;
}

TEST(TraceStream, ASecondProcessCannotStreamToAFolderALiveOneStreamsTo) {
  TempDir d;
  const Trace t = growing_trace(2);
  TraceStream stream(d.path, t, false);
  stream.append(t, t.steps()[0]);
  const pid_t child = ::fork();
  if (child == 0) {
    // The child copied the parent's stream: it writes nothing through it, and cannot open its own.
    stream.append(t, t.steps()[1]);
    int code = 3;
    try {
      TraceStream mine(d.path, t, true);
    } catch (const OptionError& e) {
      const std::string what = e.what();
      const bool named = what.find("is being recorded by another live process (process " +
                                   std::to_string(::getppid()) + ")") != std::string::npos &&
                         e.message(Language::python).find("its own out= folder") != std::string::npos;
      code = named ? 0 : 4;
    } catch (...) {
      code = 5;
    }
    ::_exit(code);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "3: the child opened the folder; 4: the message does not name the holder";
  const std::size_t written = stream_lines(d.path);
  stream.append(t, t.steps()[1]);
  EXPECT_EQ(stream_lines(d.path), written + 1) << "the child wrote to the parent's stream";
  EXPECT_EQ(read_trace_stream(d.path).trace.steps().size(), 2u);
}

TEST(TraceStream, ASecondStreamOfTheSameProcessTakesTheFolderOver) {
  TempDir d;
  const Trace t = growing_trace(2);
  TraceStream first(d.path, t, false);
  first.append(t, t.steps()[0]);
  // A recording with a step is kept unless replacing it is asked for.
  EXPECT_THROW(TraceStream(d.path, t, false), OptionError);
  TraceStream second(d.path, t, true);
  EXPECT_TRUE(first.failed());
  first.append(t, t.steps()[1]);  // stopped: writes nothing
  EXPECT_EQ(stream_lines(d.path), 1u);
  second.append(t, t.steps()[0]);
  EXPECT_EQ(read_trace_stream(d.path).trace.steps().size(), 1u);
}

TEST(TraceStream, OneWritePerStepWithTheSeriesItIntroducesBeforeIt) {
  TempDir d;
  streamed(d.path, growing_trace(3), false);
  std::ifstream in(d.path + "/" + kStreamFile);
  std::vector<std::string> lines;
  for (std::string l; std::getline(in, l);) lines.push_back(l.substr(0, l.find(':')));
  const std::vector<std::string> expected = {"{\"batch_per_rank\"", "{\"series\"", "{\"step\"", "{\"series\"",
                                             "{\"step\"", "{\"series\"", "{\"step\""};
  EXPECT_EQ(lines, expected);
}

}  // namespace
}  // namespace gradflow
