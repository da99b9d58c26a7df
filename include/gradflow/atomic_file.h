#pragma once
/// \file
/// Writing output files so that a crash or a signal never leaves half of one behind.

#include <string>

namespace gradflow {

/// Writes `content` to `path` through a temporary file in the same folder and a rename, so the
/// file is either the old one or the complete new one. Throws gradflow::Error naming the path
/// and the reason when the folder is missing or not writable.
void write_file_atomic(const std::string& path, const std::string& content);

/// Reads a whole file; throws gradflow::Error naming the path when it cannot be read.
std::string read_file(const std::string& path);

}  // namespace gradflow
