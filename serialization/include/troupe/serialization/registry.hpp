#pragma once
/// \file
/// MessageRegistry: binds message type ids to their names and FlatBuffers verifiers, and decodes
/// untrusted bytes into Messages only after the verifier (with size and depth limits) accepts
/// them. Every rejection is counted by reason and logged.

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <unordered_map>
#include <vector>

#include <flatbuffers/flatbuffers.h>

#include <troupe/serialization/log.hpp>
#include <troupe/serialization/message.hpp>
#include <troupe/serialization/result.hpp>
#include <troupe/serialization/type_id.hpp>

namespace troupe {

/// Why a decode was refused. A caller treats them alike (drop and count); they are kept apart
/// for metrics and logs.
enum class DecodeErrc {
  unknown_type = 1,      ///< no verifier registered for the type id
  verification_failed,   ///< the FlatBuffers verifier rejected the bytes
  oversized,             ///< larger than Limits::max_bytes
  empty,                 ///< zero bytes
};
const std::error_category& decode_category() noexcept;
inline std::error_code make_error_code(DecodeErrc e) noexcept { return {static_cast<int>(e), decode_category()}; }

/// Bounds applied to every verification.
struct DecodeLimits {
  std::size_t max_bytes = 4u << 20;   ///< larger buffers are refused before any parsing
  unsigned max_depth = 64;            ///< FlatBuffers nesting depth
  unsigned max_tables = 1'000'000;    ///< FlatBuffers table count
};

/// Thread-safe. Registration normally happens at start-up; decode() may run on any thread
/// concurrently with it.
class MessageRegistry {
 public:
  /// Returns true when the bytes verify as the registered type.
  using Verifier = bool (*)(flatbuffers::Verifier&);

  explicit MessageRegistry(DecodeLimits limits = {}, std::shared_ptr<spdlog::logger> log = default_logger())
      : limits_(limits), log_(std::move(log)) {
    versions_.push_back(std::make_unique<const Entries>(Entries{next_serial(), {}}));
    entries_.store(versions_.back().get(), std::memory_order_release);
  }

  /// Registers FlatBuffers table T under type_id_of<T>(). Registering twice is harmless.
  template <FlatTable T>
  void add() {
    add(type_id_of<T>(), T::GetFullyQualifiedName(),
        [](flatbuffers::Verifier& v) { return v.VerifyBuffer<T>(nullptr); });
  }
  /// Registers T as add<T>() does and binds it to its origin: a T from another node is delivered
  /// only when its sender is an actor of the node it came from, as that node's authenticated key
  /// proves (the remoting transport checks; a T whose sender names another node, or none, is
  /// dropped and counted). For protocol messages whose receivers act on who sent them; other
  /// messages may carry any sender, so that a forwarded message keeps its original one.
  template <FlatTable T>
  void add_origin_bound() {
    add(type_id_of<T>(), T::GetFullyQualifiedName(),
        [](flatbuffers::Verifier& v) { return v.VerifyBuffer<T>(nullptr); }, true);
  }
  /// Registers a verifier under an explicit id. Throws std::logic_error if `id` is already bound
  /// to a different name (a hash collision must never be silent). `origin_bound`: see
  /// add_origin_bound(); registering a type again with it set binds a type registered without.
  void add(TypeId id, std::string_view name, Verifier verifier, bool origin_bound = false);

  /// True when `id` was registered bound to its origin.
  bool origin_bound(TypeId id) const;

  /// True when `id` is registered.
  bool contains(TypeId id) const;
  /// The registered name of `id`, or "" when unknown.
  std::string name_of(TypeId id) const;

  /// Verifies `bytes` as type `id` and returns a Message owning a copy of them, or a DecodeErrc.
  /// Rejections are counted and logged (throttled).
  Result<Message> decode(TypeId id, std::span<const std::uint8_t> bytes) const;

  /// Verifies an already built Message (e.g. one a user built locally) without copying.
  std::error_code verify(const Message& msg) const;

  /// Counters of rejections by reason.
  struct Stats {
    std::uint64_t unknown_type, verification_failed, oversized, empty, accepted;
  };
  Stats stats() const noexcept;
  const DecodeLimits& limits() const noexcept { return limits_; }

 private:
  /// Verifies `m` (its bytes, `size` of them) as type `id`.
  std::error_code check(TypeId id, std::size_t size, const Message& m) const;
  struct Entry { std::string name; Verifier verify; bool origin_bound = false; };
  /// The entry of `id` in the current version, or nullptr (remembered per thread).
  const Entry* find(TypeId id) const;
  /// One published version of the entries. Its serial is unique in the process (never reused,
  /// not even by another registry): a thread may remember a look-up by it.
  struct Entries {
    std::uint64_t serial;
    std::unordered_map<TypeId, Entry> map;
  };
  static std::uint64_t next_serial() noexcept;
  /// The entries as decoders read them: one atomic load, no lock (every received message looks
  /// its type up). add() publishes a new copy; every version stays until the registry goes
  /// (types are registered a few dozen times, mostly at start).
  const Entries& entries() const noexcept { return *entries_.load(std::memory_order_acquire); }
  DecodeLimits limits_;
  std::shared_ptr<spdlog::logger> log_;
  mutable ThrottledLog throttle_;
  std::mutex add_mu_;
  std::vector<std::unique_ptr<const Entries>> versions_;  // add_mu_
  std::atomic<const Entries*> entries_;
  mutable std::atomic<std::uint64_t> unknown_{0}, failed_{0}, oversized_{0}, empty_{0}, accepted_{0};
};

}  // namespace troupe

template <>
struct std::is_error_code_enum<troupe::DecodeErrc> : std::true_type {};
