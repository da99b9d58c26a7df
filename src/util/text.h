#pragma once
// Small text helpers shared by the library, the built-in models and the CLI.

#include <string>
#include <vector>

namespace gradflow::detail {

// "a,b,,c" -> {"a", "b", "", "c"}; an empty text gives one empty item, so callers that check
// each item reject it with their own message.
std::vector<std::string> split(const std::string& text, char separator = ',');
// {"a", "b"} -> "a, b".
std::string join(const std::vector<std::string>& items, const std::string& separator = ", ");
// {"a", "b", "c"} -> "a, b or c" (or "a, b and c" with conjunction "and").
std::string join_alternatives(const std::vector<std::string>& items, const std::string& conjunction = "or");
// The text up to its first newline (LibTorch's messages carry a stack trace after it).
std::string first_line(const std::string& text);
// The first line up to its first sentence's end (". "): LibTorch 2 follows what failed with advice
// of its own that would not fit after ours.
std::string first_sentence(const std::string& text);

}  // namespace gradflow::detail
