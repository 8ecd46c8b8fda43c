#pragma once
/// \file
/// Result<T>: a value or the std::error_code saying why there is none (expected-style), used for
/// anticipated failures (timeout, unreachable, decode failure). Exceptions are kept for broken
/// invariants.

#include <cassert>
#include <system_error>
#include <utility>
#include <variant>

namespace troupe {

template <class T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}                 // NOLINT: implicit by design
  Result(std::error_code ec) : v_(ec) { assert(ec); }       // NOLINT: implicit by design
  template <class E, class = std::enable_if_t<std::is_error_code_enum_v<E>>>
  Result(E e) : Result(std::error_code(make_error_code(e))) {}  // NOLINT

  /// True when a value is present.
  bool ok() const noexcept { return v_.index() == 0; }
  explicit operator bool() const noexcept { return ok(); }
  /// The value; must only be called when ok().
  T& value() & { assert(ok()); return std::get<0>(v_); }
  const T& value() const& { assert(ok()); return std::get<0>(v_); }
  T&& value() && { assert(ok()); return std::get<0>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  /// The error; an empty error_code when ok().
  std::error_code error() const noexcept { return ok() ? std::error_code{} : std::get<1>(v_); }

 private:
  std::variant<T, std::error_code> v_;
};

}  // namespace troupe
