#pragma once
/// \file
/// Stable 64-bit message type ids: FNV-1a of the FlatBuffers table's fully qualified name
/// (generated with flatc --gen-name-strings), so every node and every build agrees on them.

#include <cstdint>
#include <string_view>

namespace troupe {

/// Identifies a message type on the wire and in mailboxes.
using TypeId = std::uint64_t;

/// FNV-1a 64 of `name`. constexpr so ids are compile-time constants.
constexpr TypeId type_id_of_name(std::string_view name) noexcept {
  std::uint64_t h = 0xcbf29ce484222325ull;
  for (char c : name) {
    h ^= static_cast<std::uint8_t>(c);
    h *= 0x100000001b3ull;
  }
  return h;
}

/// A FlatBuffers table type generated with --gen-name-strings.
template <class T>
concept FlatTable = requires {
  { T::GetFullyQualifiedName() } -> std::convertible_to<const char*>;
};

/// The type id of FlatBuffers table `T`.
/// T's id as a constant: a variable template forces compile-time evaluation (a constexpr
/// function called at run time may be evaluated there, and GCC did: every `Message::is<T>()`
/// hashed T's name again).
template <FlatTable T>
inline constexpr TypeId type_id_v = type_id_of_name(T::GetFullyQualifiedName());

template <FlatTable T>
constexpr TypeId type_id_of() noexcept {
  return type_id_v<T>;
}

}  // namespace troupe
