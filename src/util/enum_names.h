#pragma once
// Enum <-> name tables: one row per value, the one place its written name lives.

#include <optional>
#include <string>
#include <vector>

namespace gradflow::detail {

template <class E>
struct Named {
  E value;
  const char* name;
};

template <class E, std::size_t N>
const char* name_of(const Named<E> (&table)[N], E value) {
  for (const auto& e : table)
    if (e.value == value) return e.name;
  return "";
}

template <class E, std::size_t N>
std::optional<E> value_of(const Named<E> (&table)[N], const std::string& name) {
  for (const auto& e : table)
    if (name == e.name) return e.value;
  return std::nullopt;
}

// The non-empty names, in table order (for "choose one of ..." messages).
template <class E, std::size_t N>
std::vector<std::string> names_of(const Named<E> (&table)[N]) {
  std::vector<std::string> out;
  for (const auto& e : table)
    if (*e.name) out.emplace_back(e.name);
  return out;
}

}  // namespace gradflow::detail
