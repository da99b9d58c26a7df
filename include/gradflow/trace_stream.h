#pragma once
/// \file
/// A recording that survives its program: each closed step appended to a file as it closes.

#include <cstdint>
#include <string>

#include "gradflow/trace.h"

namespace gradflow {

/// The stream's file name in a Monitor's output folder (MonitorOptions::out).
inline constexpr const char* kStreamFile = "trace.jsonl";
/// The file whose lock says which live process streams to the folder (it holds that process's id).
inline constexpr const char* kStreamLockFile = ".gradflow.lock";
/// Schema identifier on the stream's first line; readers refuse other major versions.
inline constexpr const char* kStreamSchema = "gradflow.stream/1";

/// Appends each closed step of a trace to `dir`/trace.jsonl: JSON lines (docs/trace-schema.md),
/// the series a step introduces before it, one write() per step, so that a program killed at
/// any point leaves every step written before it whole (at worst a torn last line, which
/// readers drop). Never throws once open: a failed write stops the stream with one message on
/// stderr, and the recording stays in memory.
class TraceStream {
 public:
  /// Creates `dir` and the file with its header (the trace's settings). Throws gradflow::Error
  /// when the folder cannot be written, when another live process streams to it (whatever
  /// `replace` says: two writers would interleave their steps), and when it already holds a
  /// stream with a step in it unless `replace` (a stream without one, whose program stopped
  /// early, is replaced). The folder stays this process's until the stream is destroyed or the
  /// process ends: a lock (kStreamLockFile) that the system releases even on SIGKILL. A child
  /// that fork() copied the stream into writes nothing. A second stream of the same process on
  /// the folder (a notebook cell run again) takes it over: the earlier one stops writing there.
  TraceStream(const std::string& dir, const Trace& settings, bool replace);
  ~TraceStream();
  TraceStream(const TraceStream&) = delete;
  TraceStream& operator=(const TraceStream&) = delete;

  /// Appends the series `trace` gained since the last call, then `step`.
  void append(const Trace& trace, const StepRecord& step);
  /// Marks the recording as finished by the program (save_report): a reader then does not call
  /// the run interrupted. Steps appended later are still read.
  void finish(std::int64_t completed_steps);
  const std::string& dir() const { return dir_; }
  /// Whether writing has failed (the stream then holds what was written before).
  bool failed() const { return fd_ < 0; }

 private:
  void write_line(const std::string& line);
  // Takes the folder's lock, or throws naming the process that holds it.
  void lock_folder(bool replace);
  // Another stream of this process on the folder stops writing there (or, holding a step that
  // `replace` does not allow replacing, makes this one throw).
  void take_over_from_this_process(bool replace);
  void release_lock();
  // Opens the stream's file (replacing a recording only when allowed) and writes its header.
  void open_file(const Trace& settings, bool replace);
  std::string dir_;
  std::string path_;
  int fd_ = -1;
  int lock_fd_ = -1;
  std::int64_t owner_ = 0;  // the process that opened the stream: the only one that writes
  std::size_t series_written_ = 0;
  std::vector<std::size_t> inputs_written_;  // per written series: its inputs written so far
};

/// What a stream holds.
struct StreamedRun {
  Trace trace;                      ///< every whole step; `interrupted` unless finished
  bool finished = false;            ///< the program called save_report after its last step
  std::int64_t completed_steps = 0; ///< optimizer steps done, as the program last knew it
  bool torn_tail = false;           ///< the last line was cut short (the program died writing it)
};

/// Reads `dir`/trace.jsonl. A torn last line is dropped; throws gradflow::Error naming the file
/// and line for anything else: a file of another program, a newer schema, a corrupt line, and
/// a stream without a single recorded step.
StreamedRun read_trace_stream(const std::string& dir);

/// The name a streamed run goes by in its report when the caller gives none: its folder's.
std::string stream_label(const std::string& dir);

/// The same for a stream's text, `path` naming it in messages.
StreamedRun parse_trace_stream(const std::string& text, const std::string& path);

/// Whether `dir` holds a stream.
bool has_trace_stream(const std::string& dir);

}  // namespace gradflow
