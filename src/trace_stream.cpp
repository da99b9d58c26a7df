#include "gradflow/trace_stream.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include <fcntl.h>
#include <unistd.h>

#include "gradflow/atomic_file.h"
#include "gradflow/error.h"
#include "gradflow/option.h"
#include "trace_json.h"

namespace gradflow {

namespace {

namespace fs = std::filesystem;

std::string stream_path(const std::string& dir) { return (fs::path(dir) / kStreamFile).string(); }

detail::Json header_json(const Trace& t) {
  detail::Json j = {{"schema", kStreamSchema},
                    {"every", t.every},
                    {"saturation_threshold", t.saturation_threshold},
                    {"world_size", t.world_size},
                    {"batch_per_rank", t.batch_per_rank}};
  return j;
}

}  // namespace

TraceStream::TraceStream(const std::string& dir, const Trace& settings, bool replace)
    : dir_(dir), path_(stream_path(dir)) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw Error("cannot create the recording folder '" + dir + "': " + ec.message());
  const int flags = O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | (replace ? O_TRUNC : O_EXCL);
  fd_ = ::open(path_.c_str(), flags, 0644);
  if (fd_ < 0 && errno == EEXIST)
    throw OptionError(Option::monitor_force, "'" + dir + "' already holds a recording (" + kStreamFile +
                                                 "): choose another folder, or replace it with {}");
  if (fd_ < 0) throw Error("cannot write '" + path_ + "': " + std::strerror(errno) + " (check that the folder is writable)");
  write_line(header_json(settings).dump() + "\n");
  if (fd_ < 0) throw Error("cannot write '" + path_ + "': free some space or write to another folder");
}

TraceStream::~TraceStream() {
  if (fd_ >= 0) ::close(fd_);
}

void TraceStream::write_line(const std::string& text) {
  if (fd_ < 0) return;
  const char* p = text.data();
  std::size_t left = text.size();
  while (left > 0) {
    const ssize_t n = ::write(fd_, p, left);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      std::fprintf(stderr, "gradflow: stopped writing '%s': %s; the recording goes on in memory\n", path_.c_str(),
                   std::strerror(errno));
      ::close(fd_);
      fd_ = -1;
      return;
    }
    p += n;
    left -= static_cast<std::size_t>(n);
  }
}

void TraceStream::append(const Trace& trace, const StepRecord& step) {
  std::string text;
  for (; series_written_ < trace.series().size(); ++series_written_)
    text += detail::Json{{"series", detail::series_json(trace.series()[series_written_])}}.dump() + "\n";
  text += detail::Json{{"step", detail::step_json(step)}}.dump() + "\n";
  write_line(text);
}

void TraceStream::finish(std::int64_t completed_steps) {
  write_line(detail::Json{{"end", {{"completed_steps", completed_steps}}}}.dump() + "\n");
}

bool has_trace_stream(const std::string& dir) {
  std::error_code ec;
  return fs::is_regular_file(stream_path(dir), ec);
}

namespace {

void read_header(const detail::Json& j, Trace& t, const std::string& where) {
  const auto it = j.find("schema");
  const std::string schema = it != j.end() && it->is_string() ? it->get<std::string>() : "";
  if (schema.rfind("gradflow.stream/", 0) != 0)
    throw Error(where + " is not a gradflow recording: give the folder a gradflow Monitor streamed to");
  if (schema != kStreamSchema)
    throw Error(where + " was written by a newer gradflow (schema '" + schema + "', this one reads " + kStreamSchema +
                "): read it with that version");
  t.every = detail::get_int(j, "every", where);
  if (t.every < 1) throw Error(where + ": 'every' must be at least 1");
  t.saturation_threshold = detail::get_num_or(j, "saturation_threshold", t.saturation_threshold);
  t.world_size = static_cast<int>(detail::get_int(j, "world_size", where));
  t.batch_per_rank = detail::get_int(j, "batch_per_rank", where);
}

// One line after the header; false when it is not a line of a stream.
void read_entry(const detail::Json& j, StreamedRun& run, const std::string& where) {
  if (auto it = j.find("series"); it != j.end()) {
    detail::add_series_from(run.trace, *it, where);
  } else if (auto st = j.find("step"); st != j.end()) {
    run.trace.add_step(detail::step_from(*st, static_cast<int>(run.trace.series().size()), where));
    run.finished = false;
  } else if (auto end = j.find("end"); end != j.end()) {
    run.finished = true;
    run.completed_steps = detail::get_int(*end, "completed_steps", where);
  } else {
    throw Error(where + ": not a line of a gradflow recording");
  }
}

}  // namespace

StreamedRun read_trace_stream(const std::string& dir) {
  const std::string path = stream_path(dir);
  const std::string text = read_file(path);
  StreamedRun run;
  std::size_t pos = 0;
  int line_no = 0;
  while (pos < text.size()) {
    const std::size_t eol = text.find('\n', pos);
    ++line_no;
    const std::string where = "'" + path + "' line " + std::to_string(line_no);
    if (eol == std::string::npos) {  // the program died while writing this line
      if (line_no == 1) throw Error("'" + path + "' has no complete first line: it is not a gradflow recording");
      run.torn_tail = true;
      break;
    }
    const std::string line = text.substr(pos, eol - pos);
    pos = eol + 1;
    detail::Json j = detail::Json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object()) {
      if (line_no == 1) throw Error("'" + path + "' is not a gradflow recording: give the folder a gradflow Monitor streamed to");
      throw Error(where + " is corrupt (not JSON): the file was changed after gradflow wrote it");
    }
    try {
      if (line_no == 1) read_header(j, run.trace, where);
      else read_entry(j, run, where);
    } catch (const detail::Json::exception& e) {
      throw Error(where + " is corrupt (" + std::string(e.what()) + "): the file was changed after gradflow wrote it");
    }
  }
  if (line_no == 0) throw Error("'" + path + "' is empty: it is not a gradflow recording");
  run.trace.interrupted = !run.finished;
  if (!run.finished && !run.trace.steps().empty()) run.completed_steps = run.trace.steps().back().step + 1;
  return run;
}

}  // namespace gradflow
