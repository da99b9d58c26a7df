#include "util/text.h"

namespace gradflow::detail {

std::vector<std::string> split(const std::string& text, char separator) {
  std::vector<std::string> items;
  std::size_t pos = 0;
  while (true) {
    const auto at = text.find(separator, pos);
    items.push_back(text.substr(pos, at == std::string::npos ? std::string::npos : at - pos));
    if (at == std::string::npos) return items;
    pos = at + 1;
  }
}

std::string join(const std::vector<std::string>& items, const std::string& separator) {
  std::string out;
  for (std::size_t i = 0; i < items.size(); ++i) out += (i ? separator : "") + items[i];
  return out;
}

std::string join_alternatives(const std::vector<std::string>& items, const std::string& conjunction) {
  std::string out;
  const std::string last = " " + conjunction + " ";
  for (std::size_t i = 0; i < items.size(); ++i) out += (i ? (i + 1 == items.size() ? last : ", ") : "") + items[i];
  return out;
}

std::string first_line(const std::string& text) {
  const auto nl = text.find('\n');
  return nl == std::string::npos ? text : text.substr(0, nl);
}

std::string first_sentence(const std::string& text) {
  const std::string line = first_line(text);
  const auto end = line.find(". ");
  return end == std::string::npos ? line : line.substr(0, end);
}

}  // namespace gradflow::detail
