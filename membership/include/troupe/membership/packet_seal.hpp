#pragma once
/// \file
/// Sealing of gossip datagrams: AES-256-GCM under the keyring's primary key, with the cluster
/// name authenticated and an anti-replay window per sender.
///
/// Wire format, version 1 (all integers big-endian):
///
///     offset        size  field (cleartext header: all of it is the GCM additional data)
///     0             1     format version = 1
///     1             1     cluster name length N (1..255)
///     2             N     cluster name bytes
///     2+N           4     key id of the sealing key (first 4 bytes of SHA-256(key))
///     6+N           12    nonce = sender incarnation (8) || per-sealer counter (4)
///                         (ciphertext: AES-256-GCM under the key named by the key id)
///     18+N          8     sender incarnation (must equal the nonce's)
///     26+N          8     sequence number    (in version 1: equals the nonce's counter)
///     34+N          L     payload
///     34+N+L        16    GCM tag
///
///   overhead = 50 + N bytes (overhead_for()).
///
/// Why this shape:
/// - The header is authenticated, so a packet sealed for cluster "a" never opens as cluster "b"'s
///   even when both share a key: it fails with cluster_mismatch, and the receiver learns the
///   sender's cluster name from an authenticated header and may answer with a clear refusal
///   sealed under that name (seal(..., cluster_override)).
/// - The nonce is never random: it is the sender's incarnation id and a counter, so it never
///   repeats under one key cluster-wide as long as incarnation ids are unique (64 random bits
///   chosen at start; never reuse one with the same keys). When the 32-bit counter is used up,
///   seal() fails with nonce_exhausted: start a new sealer with a new incarnation id.
/// - The sender incarnation and sequence are repeated inside the ciphertext, and open() keeps a
///   sliding window of kReplayWindow sequence numbers per sender incarnation (for the
///   max_senders most recently heard senders, LRU): a duplicate or replayed datagram is refused
///   (replayed), one older than the window too (too_old). Reordering within the window is fine.
///   Limits: a sender evicted from the LRU, or any sender after this process restarts, starts
///   with a fresh window; the datagram carries no destination, so a captured datagram can be
///   delivered once to each member (the protocol's own messages say who they are for).

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <vector>

#include <troupe/membership/keyring.hpp>
#include <troupe/serialization/result.hpp>

namespace troupe::membership {

/// Why a datagram could not be opened (or sealed).
enum class SealErrc {
  too_short = 1,     ///< shorter than a sealed datagram can be
  bad_version,       ///< unknown format version byte
  unknown_key,       ///< no installed key has the datagram's key id
  auth_failed,       ///< the tag does not verify: tampered with, or sealed under another key
  malformed,         ///< authentic, but its inner header contradicts the nonce (a broken sender)
  cluster_mismatch,  ///< authentic, but sealed for another cluster (the caller may refuse it clearly)
  replayed,          ///< a duplicate of a datagram already opened
  too_old,           ///< sequence number behind the sender's replay window
  oversized,         ///< larger than SealerOptions::max_datagram (sealed or received)
  nonce_exhausted,   ///< seal(): this sealer's 2^32 nonces are used up; use a new incarnation
};
/// Number of SealErrc values + 1 (index 0 unused): the size of per-reason counter arrays.
inline constexpr std::size_t kSealErrcCount = static_cast<std::size_t>(SealErrc::nonce_exhausted) + 1;
const std::error_category& seal_category() noexcept;
inline std::error_code make_error_code(SealErrc e) noexcept { return {static_cast<int>(e), seal_category()}; }

struct SealerOptions {
  /// The largest sealed datagram seal() produces and open() accepts. Default: the largest UDP
  /// payload over IPv4 (65535 - 20 - 8).
  std::size_t max_datagram = 65507;
  /// How many sender incarnations have a replay window (least recently heard evicted first).
  /// Each costs ~200 bytes; an evicted sender's old datagrams could be replayed once more.
  std::size_t max_senders = 4096;
  /// The first nonce counter value (tests set it near 2^32 to reach nonce exhaustion).
  std::uint32_t first_counter = 0;
};

/// An opened datagram.
struct Opened {
  std::string cluster;                 ///< the (authenticated) cluster name it was sealed for
  std::uint64_t sender_incarnation = 0;
  std::uint64_t seq = 0;
  std::vector<std::uint8_t> plaintext;
};

/// Counters since construction.
struct SealStats {
  std::uint64_t sealed = 0;
  std::uint64_t opened = 0;
  /// Failures by reason, indexed by SealErrc value (count() reads one).
  std::array<std::uint64_t, kSealErrcCount> errors{};
  std::uint64_t count(SealErrc e) const { return errors[static_cast<std::size_t>(e)]; }
};

/// Seals and opens gossip datagrams (format in the file comment). Thread-safe: seal() and open()
/// may be called from any thread (each direction is serialised by its own mutex).
class PacketSealer {
 public:
  static constexpr std::uint8_t kFormatVersion = 1;
  /// Sequence numbers remembered per sender.
  static constexpr std::uint64_t kReplayWindow = 1024;
  static constexpr std::size_t kMaxClusterName = 255;
  /// Bytes a sealed datagram adds to its payload for a cluster name of this size.
  static constexpr std::size_t overhead_for(std::size_t cluster_name_size) noexcept {
    return 2 + cluster_name_size + 4 + 12 + 8 + 8 + 16;
  }

  /// `cluster_name`: 1..255 bytes; `incarnation`: this node's incarnation id, never 0 and never
  /// reused with the same keys (see the file comment). Throws std::invalid_argument otherwise,
  /// or for a null keyring.
  PacketSealer(std::shared_ptr<Keyring> keyring, std::string cluster_name, std::uint64_t incarnation,
               SealerOptions options = {});
  ~PacketSealer();
  PacketSealer(const PacketSealer&) = delete;
  PacketSealer& operator=(const PacketSealer&) = delete;

  /// Seals `plaintext` under the primary key for our cluster, or for `cluster_override` when
  /// not empty (only to answer a cluster_mismatch; at most 255 bytes, else std::invalid_argument).
  /// Errors: oversized, nonce_exhausted.
  Result<std::vector<std::uint8_t>> seal(std::span<const std::uint8_t> plaintext,
                                         std::string_view cluster_override = {});
  /// Authenticates and decrypts a datagram, with the key whose id it names (only that one), and
  /// records it in the sender's replay window. Errors: every SealErrc but nonce_exhausted. On
  /// cluster_mismatch, `*their_cluster` (when given) receives the sender's cluster name.
  Result<Opened> open(std::span<const std::uint8_t> datagram, std::string* their_cluster = nullptr);

  /// overhead_for(cluster().size()).
  std::size_t overhead() const noexcept { return overhead_for(cluster_.size()); }
  const std::string& cluster() const noexcept { return cluster_; }
  std::uint64_t incarnation() const noexcept { return incarnation_; }
  const SealerOptions& options() const noexcept { return options_; }
  const std::shared_ptr<Keyring>& keyring() const noexcept { return keyring_; }
  /// A snapshot of the counters. Any thread.
  SealStats stats() const;

 private:
  struct Impl;
  std::shared_ptr<Keyring> keyring_;
  std::string cluster_;
  std::uint64_t incarnation_;
  SealerOptions options_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace troupe::membership

template <>
struct std::is_error_code_enum<troupe::membership::SealErrc> : std::true_type {};
