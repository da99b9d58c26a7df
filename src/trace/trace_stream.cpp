#include "gradflow/trace_stream.h"

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <map>
#include <mutex>

#include <fmt/format.h>

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include "gradflow/atomic_file.h"
#include "gradflow/error.h"
#include "gradflow/option.h"
#include "trace/trace_json.h"
#include "util/process.h"

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
  if (t.process_id > 0) j["process_id"] = t.process_id;
  if (t.layer_outputs) j["layer_outputs"] = true;
  if (t.parameter_gradients) j["parameter_gradients"] = true;
  return j;
}

// This process's open streams by folder: a second Monitor of the process on a folder that one
// streams to takes it over (a notebook cell run again) rather than writing beside it.
struct OpenStreams {
  std::mutex mu;
  std::map<std::string, TraceStream*> by_folder;
};
OpenStreams& open_streams() {
  static OpenStreams streams;
  return streams;
}

std::string folder_key(const std::string& dir) {
  std::error_code ec;
  const fs::path p = fs::weakly_canonical(dir, ec);
  return ec ? dir : p.string();
}

// Whether the stream at `path` holds a step line (any other file counts as one: it is not ours to replace).
bool holds_a_step(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  if (!std::getline(in, line) || line.find("\"schema\":\"gradflow.stream/") == std::string::npos) return true;
  while (std::getline(in, line))
    if (line.rfind("{\"step\"", 0) == 0) return true;
  return false;
}

}  // namespace

TraceStream::TraceStream(const std::string& dir, const Trace& settings, bool replace)
    : dir_(dir), path_(stream_path(dir)), owner_(detail::process_id()) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw Error("cannot create the recording folder '" + dir + "': " + ec.message());
  lock_folder(replace);
  try {
    open_file(settings, replace);
  } catch (...) {
    release_lock();  // a stream that never opened leaves the folder to the next one
    throw;
  }
}

void TraceStream::open_file(const Trace& settings, bool replace) {
  const int flags = O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC;
  fd_ = ::open(path_.c_str(), flags | (replace ? O_TRUNC : O_EXCL), 0644);
  // A recording without a step (its program stopped before one) holds nothing to protect.
  if (fd_ < 0 && errno == EEXIST && !holds_a_step(path_)) fd_ = ::open(path_.c_str(), flags | O_TRUNC, 0644);
  if (fd_ < 0 && errno == EEXIST)
    throw OptionError(Option::monitor_force, "'" + dir_ + "' already holds a recording (" + kStreamFile +
                                                 "): choose another folder, or replace it with {}");
  if (fd_ < 0) throw Error("cannot write '" + path_ + "': " + std::strerror(errno) + " (check that the folder is writable)");
  write_line(header_json(settings).dump() + "\n");
  if (fd_ < 0) throw Error("cannot write '" + path_ + "': free some space or write to another folder");
}

TraceStream::~TraceStream() {
  if (fd_ >= 0) ::close(fd_);
  release_lock();
}

void TraceStream::release_lock() {
  if (lock_fd_ < 0) return;
  {
    auto& open = open_streams();
    std::lock_guard<std::mutex> guard(open.mu);
    auto it = open.by_folder.find(folder_key(dir_));
    if (it != open.by_folder.end() && it->second == this) open.by_folder.erase(it);
  }
  detail::forget_in_children(lock_fd_);
  ::close(lock_fd_);  // the last descriptor of the lock: it is released
  lock_fd_ = -1;
}

void TraceStream::take_over_from_this_process(bool replace) {
  auto& open = open_streams();
  TraceStream* earlier = nullptr;
  {
    std::lock_guard<std::mutex> guard(open.mu);
    auto it = open.by_folder.find(folder_key(dir_));
    // A child of fork() holds its parent's streams in this map too: those are not its own.
    if (it == open.by_folder.end() || it->second->owner_ != detail::process_id()) return;
    earlier = it->second;
  }
  if (!replace && holds_a_step(path_))
    throw OptionError(Option::monitor_force, "'" + dir_ + "' already holds a recording (" + kStreamFile +
                                                 "): choose another folder, or replace it with {}");
  std::fprintf(stderr, "gradflow: a new Monitor streams to '%s' now; the earlier one of this process stopped writing there\n",
               dir_.c_str());
  if (earlier->fd_ >= 0) ::close(earlier->fd_);
  earlier->fd_ = -1;
  earlier->release_lock();
}

void TraceStream::lock_folder(bool replace) {
  take_over_from_this_process(replace);
  const std::string lock_path = (fs::path(dir_) / kStreamLockFile).string();
  lock_fd_ = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (lock_fd_ < 0) throw Error("cannot write '" + lock_path + "': " + std::strerror(errno) + " (check that the folder is writable)");
  if (::flock(lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    std::string holder(32, '\0');
    const ssize_t n = ::pread(lock_fd_, holder.data(), holder.size() - 1, 0);
    holder.resize(n > 0 ? static_cast<std::size_t>(n) : 0);
    while (!holder.empty() && (holder.back() == '\n' || holder.back() == '\0')) holder.pop_back();
    ::close(lock_fd_);
    lock_fd_ = -1;
    throw OptionError(Option::out, "'" + dir_ + "' is being recorded by another live process" +
                                       (holder.empty() ? std::string() : " (process " + holder + ")") +
                                       ": give each process its own {} folder, such as '" + dir_ + "/worker-<rank>'");
  }
  detail::close_in_children(lock_fd_);
  {
    auto& open = open_streams();
    std::lock_guard<std::mutex> guard(open.mu);
    open.by_folder[folder_key(dir_)] = this;
  }
  const std::string me = std::to_string(owner_) + "\n";
  if (::ftruncate(lock_fd_, 0) != 0 || ::pwrite(lock_fd_, me.data(), me.size(), 0) != static_cast<ssize_t>(me.size()))
    throw Error("cannot write '" + lock_path + "': " + std::strerror(errno) + " (free some space or write to another folder)");
}

void TraceStream::write_line(const std::string& text) {
  // A child of fork() holds the parent's descriptor: its lines would interleave with the parent's.
  if (fd_ < 0 || detail::process_id() != owner_) return;
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

namespace {

// A double as JSON; non-finite values as the strings "Infinity", "-Infinity", "NaN".
void put_number(std::string& out, double v) {
  if (std::isfinite(v)) fmt::format_to(std::back_inserter(out), "{}", v);
  else out += std::isnan(v) ? "\"NaN\"" : (v > 0 ? "\"Infinity\"" : "\"-Infinity\"");
}

double number_from(const detail::Json& j) {
  if (j.is_number()) return j.get<double>();
  const std::string s = j.get<std::string>();  // a type error for anything else: a corrupt line
  if (s == "Infinity") return std::numeric_limits<double>::infinity();
  if (s == "-Infinity") return -std::numeric_limits<double>::infinity();
  if (s == "NaN") return std::numeric_limits<double>::quiet_NaN();
  throw Error("'" + s + "' is not a number");
}

// The sums a TensorStats keeps, exactly: numel, zeros, nonfinite, sum, sum of squares, max |x|.
void put_stats(std::string& out, const TensorStats& g) {
  fmt::format_to(std::back_inserter(out), "{},{},{},", g.numel, g.zeros, g.nonfinite);
  put_number(out, g.sum);
  out += ',';
  put_number(out, g.sum_sq);
  out += ',';
  put_number(out, g.max_abs);
}

TensorStats stats_from(const detail::Json& row, std::size_t at) {
  TensorStats g;
  g.numel = row.at(at).get<std::int64_t>();
  g.zeros = row.at(at + 1).get<std::int64_t>();
  g.nonfinite = row.at(at + 2).get<std::int64_t>();
  if (g.numel < 0 || g.zeros < 0 || g.nonfinite < 0 || g.zeros > g.numel || g.nonfinite > g.numel)
    throw Error("counts out of range");
  g.sum = number_from(row.at(at + 3));
  g.sum_sq = number_from(row.at(at + 4));
  g.max_abs = number_from(row.at(at + 5));
  return g;
}

// One record as a row: [series, the gradient's sums (6), weight norm, update norm] and, when it
// has them, an object with its forward statistics and each rank's sums. Rows keep the raw sums
// (a trace's JSON keeps derived figures) and cost a few hundred nanoseconds each to write.
void put_record(std::string& out, const Record& r) {
  fmt::format_to(std::back_inserter(out), "[{},", r.series);
  put_stats(out, r.grad);
  out += ',';
  put_number(out, r.weight_norm);
  out += ',';
  put_number(out, r.update_norm);
  if (r.forward || !r.ranks.empty() || r.applied || !r.profile.empty()) {
    // Written like the row itself, so that a non-finite figure keeps its value (not null).
    out += ",{";
    const char* sep = "";
    if (r.forward) {
      const ActivationStats& f = *r.forward;
      out += "\"forward\":[";
      for (double v : {f.mean, f.std, f.dead_fraction, f.saturated_fraction, f.mean_local_derivative}) {
        put_number(out, v);
        out += ',';
      }
      out.back() = ']';
      sep = ",";
    }
    if (!r.ranks.empty()) {
      out += sep;
      out += "\"ranks\":[";
      for (const auto& local : r.ranks) {
        out += '[';
        put_stats(out, local);
        out += "],";
      }
      out.back() = ']';
      if (r.ranks_compact) out += ",\"ranks_compact\":true";
      sep = ",";
    }
    if (r.applied) {
      out += sep;
      out += "\"applied\":[";
      put_stats(out, *r.applied);
      out += ']';
      sep = ",";
    }
    if (!r.profile.empty()) {
      fmt::format_to(std::back_inserter(out), "{}\"{}\":[", sep, to_string(r.profile_axis));
      for (double v : r.profile) {
        put_number(out, v);
        out += ',';
      }
      out.back() = ']';
    }
    out += '}';
  }
  out += ']';
}

Record record_from(const detail::Json& row, int n_series) {
  Record r;
  r.series = row.at(0).get<int>();
  if (r.series < 0 || r.series >= n_series) throw Error("a record names series " + std::to_string(r.series));
  r.grad = stats_from(row, 1);
  r.weight_norm = number_from(row.at(7));
  r.update_norm = number_from(row.at(8));
  if (row.size() > 9) {
    const detail::Json& extra = row.at(9);
    if (auto it = extra.find("forward"); it != extra.end())
      r.forward = ActivationStats{number_from(it->at(0)), number_from(it->at(1)), number_from(it->at(2)),
                                  number_from(it->at(3)), number_from(it->at(4))};
    if (auto it = extra.find("ranks"); it != extra.end())
      for (const auto& local : *it) r.ranks.push_back(stats_from(local, 0));
    if (auto it = extra.find("applied"); it != extra.end()) r.applied = stats_from(*it, 0);
    r.ranks_compact = extra.value("ranks_compact", false);
    if (const detail::Json* profile = detail::find_profile(extra, &r.profile_axis))
      for (const auto& v : *profile) r.profile.push_back(number_from(v));
  }
  return r;
}

// A step's own figures as a trace's JSON has them, with rows in place of its records.
std::string step_line(const StepRecord& step) {
  StepRecord bare = step;
  bare.records.clear();
  std::string text = detail::Json{{"step", detail::step_json(bare)}}.dump();
  text.resize(text.size() - 2);  // reopen the step object: its rows follow
  text += ",\"rows\":[";
  for (std::size_t i = 0; i < step.records.size(); ++i) {
    if (i) text += ',';
    put_record(text, step.records[i]);
  }
  text += "]}}\n";
  return text;
}

StepRecord step_from(const detail::Json& j, int n_series, const std::string& where) {
  detail::Json figures = j;
  figures["records"] = detail::Json::array();
  StepRecord st = detail::step_from(figures, n_series, where);
  for (const auto& row : detail::get_array(j, "rows", where)) st.records.push_back(record_from(row, n_series));
  return st;
}

}  // namespace

void TraceStream::append(const Trace& trace, const StepRecord& step) {
  std::string text;
  // Inputs found since a series was written (a module first fed by another in a later step).
  for (std::size_t i = 0; i < series_written_; ++i) {
    const auto& inputs = trace.series()[i].inputs;
    if (inputs.size() <= inputs_written_[i]) continue;
    const std::vector<int> added(inputs.begin() + static_cast<std::ptrdiff_t>(inputs_written_[i]), inputs.end());
    text += detail::Json{{"inputs", {{"series", i}, {"from", added}}}}.dump() + "\n";
    inputs_written_[i] = inputs.size();
  }
  for (; series_written_ < trace.series().size(); ++series_written_) {
    text += detail::Json{{"series", detail::series_json(trace.series()[series_written_])}}.dump() + "\n";
    inputs_written_.push_back(trace.series()[series_written_].inputs.size());
  }
  text += step_line(step);
  write_line(text);
}

void TraceStream::finish(std::int64_t completed_steps) {
  write_line(detail::Json{{"end", {{"completed_steps", completed_steps}}}}.dump() + "\n");
}

std::string stream_label(const std::string& dir) {
  fs::path path = fs::absolute(dir).lexically_normal();
  if (!path.has_filename()) path = path.parent_path();
  const std::string name = path.filename().string();
  return name.empty() ? "model" : name;
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
  t.world_size = detail::world_size_from(detail::get_int(j, "world_size", where), where);
  t.batch_per_rank = detail::get_int(j, "batch_per_rank", where);
  if (auto pid = j.find("process_id"); pid != j.end() && pid->is_number_integer()) t.process_id = pid->get<std::int64_t>();
  if (auto lo = j.find("layer_outputs"); lo != j.end() && lo->is_boolean()) t.layer_outputs = lo->get<bool>();
  if (auto pg = j.find("parameter_gradients"); pg != j.end() && pg->is_boolean()) t.parameter_gradients = pg->get<bool>();
}

// One line after the header; throws gradflow::Error when it is not a line of a stream.
void read_entry(const detail::Json& j, StreamedRun& run, const std::string& where) {
  if (auto it = j.find("series"); it != j.end()) {
    detail::add_series_from(run.trace, *it, where);
  } else if (auto in = j.find("inputs"); in != j.end()) {
    detail::add_inputs_from(run.trace, static_cast<int>(detail::get_int(*in, "series", where)), in->at("from"), where);
  } else if (auto st = j.find("step"); st != j.end()) {
    StepRecord step = step_from(*st, static_cast<int>(run.trace.series().size()), where);
    // A step written again as it closed (after its backward it gained more): the later one holds.
    auto& steps = run.trace.steps();
    if (!steps.empty() && steps.back().step == step.step) steps.pop_back();
    run.trace.add_step(std::move(step));
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
  return parse_trace_stream(read_file(path), path);
}

StreamedRun parse_trace_stream(const std::string& text, const std::string& path) {
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
    } catch (const Error& e) {
      const std::string what = e.what();
      if (what.rfind(where, 0) == 0 || what.rfind("'" + path + "'", 0) == 0) throw;
      throw Error(where + " is corrupt (" + what + "): the file was changed after gradflow wrote it");
    }
  }
  if (line_no == 0) throw Error("'" + path + "' is empty: it is not a gradflow recording");
  if (run.trace.steps().empty())
    throw Error("'" + path + "' holds no recorded step: the program stopped before the backward of its first "
                "recorded step completed");
  run.trace.interrupted = !run.finished;
  if (!run.finished && !run.trace.steps().empty()) run.completed_steps = run.trace.steps().back().step + 1;
  return run;
}

}  // namespace gradflow
