#pragma once
/// \file
/// The remoting frame: one ZeroMQ message carrying a FlatBuffers `troupe.wire.Batch` of
/// envelopes (serialization/envelope.fbs). Building batches amortises CURVE's per-frame cost;
/// decoding treats every byte as hostile: size limit first, then the FlatBuffers Verifier (depth
/// and table limits), then the protocol version, then each envelope on its own (its payload
/// through the MessageRegistry's verifier, its paths checked). A bad frame is refused whole; a
/// bad envelope is dropped alone. Nothing here logs or counts: the transport does, by reason.

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include <flatbuffers/flatbuffers.h>

#include <troupe/serialization/message.hpp>
#include <troupe/serialization/registry.hpp>
#include <troupe/serialization/result.hpp>

namespace troupe::remoting {

/// Protocol versions this build speaks (a frame outside the range is refused). Version 2 writes
/// a keyed envelope's stamps in an 8-byte troupe.wire.EntityRoute; a version-1 node would read
/// such an envelope as unstamped, so it refuses version-2 frames instead. Version-1 frames (their
/// 16-byte EntityStamp) are still read.
inline constexpr std::uint16_t kProtocolVersion = 2;
inline constexpr std::uint16_t kMinProtocolVersion = 1;

struct FrameLimits {
  std::size_t max_frame_bytes = 8u << 20;  ///< larger frames are refused unread (also ZMQ_MAXMSGSIZE)
  std::size_t max_envelopes = 4096;        ///< per frame
  std::size_t max_path_bytes = 1024;       ///< recipient and sender addresses
  unsigned max_depth = 16;                 ///< FlatBuffers nesting depth of the batch
};

/// Why a whole frame was refused.
enum class FrameErrc {
  empty = 1,
  oversized,
  malformed,            ///< the Verifier rejected the batch (truncated, lying lengths or offsets)
  unsupported_version,
  too_many_envelopes,
};
const std::error_category& frame_category() noexcept;
inline std::error_code make_error_code(FrameErrc e) noexcept { return {static_cast<int>(e), frame_category()}; }

/// The entity a keyed envelope is for (see troupe.wire.Envelope): its id and the sharding
/// stamps the receiving region checks. A view: `entity_id` is not owned. Decoded, it points into
/// the frame; given to Transport::tell_keyed or BatchBuilder::add, it is copied before they return.
struct KeyedRoute {
  std::string_view entity_id;
  std::uint32_t shard = 0;
  std::uint64_t epoch = 0;
  std::uint8_t hops = 0;
};

/// Frame buffers for BatchBuilder: buffers of the standard size come back here when ZeroMQ has
/// sent them (from its own thread) and are handed out again, so a stream of frames neither
/// allocates nor faults in fresh pages per frame. Any thread may free into it.
class FrameBufferPool final : public flatbuffers::Allocator {
 public:
  /// Keeps up to `keep` buffers of `buffer_bytes` each; other sizes pass through.
  explicit FrameBufferPool(std::size_t buffer_bytes, std::size_t keep = 8) : bytes_(buffer_bytes), keep_(keep) {}
  ~FrameBufferPool() override;
  FrameBufferPool(const FrameBufferPool&) = delete;
  FrameBufferPool& operator=(const FrameBufferPool&) = delete;
  std::uint8_t* allocate(std::size_t n) override;
  void deallocate(std::uint8_t* p, std::size_t n) override;
  std::size_t buffer_bytes() const noexcept { return bytes_; }
  /// Buffers handed out again (for tests and diagnostics).
  std::uint64_t reused() const noexcept { return reused_.load(std::memory_order_relaxed); }

 private:
  const std::size_t bytes_, keep_;
  std::mutex mu_;
  std::vector<std::uint8_t*> free_;
  std::atomic<std::uint64_t> reused_{0};
};

/// Accumulates envelopes into one frame. Not thread-safe (the transport's I/O thread owns it).
class BatchBuilder {
 public:
  /// Frames start in a buffer of `initial_bytes` (from `pool` when given, which must outlive
  /// every buffer released from this builder) and grow when a frame does not fit.
  explicit BatchBuilder(std::size_t initial_bytes = 64u << 10, FrameBufferPool* pool = nullptr)
      : fbb_(initial_bytes, pool) {}
  /// Appends one envelope; `payload` is the message's FlatBuffers bytes; `route`, when given,
  /// keys it to an entity behind the recipient.
  void add(TypeId type, std::string_view recipient, std::string_view sender, std::uint64_t correlation_id,
           std::span<const std::uint8_t> payload, const KeyedRoute* route = nullptr);
  std::size_t count() const noexcept { return offsets_.size(); }
  /// Bytes written so far (the frame is a little larger once finished).
  std::size_t approx_bytes() const noexcept { return fbb_.GetSize(); }
  /// Finishes the frame from node `origin` ("troupe://<node>@<host>:<port>") to incarnation
  /// `target_node`; the bytes stay valid until the next add() or reset().
  std::span<const std::uint8_t> finish(std::string_view origin = {}, std::uint64_t target_node = 0);
  /// After finish(): hands the frame's memory over (to be sent without a copy); the builder
  /// starts on a fresh buffer.
  flatbuffers::DetachedBuffer release();
  void reset();

 private:
  /// Writes one Envelope table laid out by hand (see add()), its vtable first when this frame
  /// has none of its shape yet.
  flatbuffers::uoffset_t write_envelope(TypeId type, std::uint64_t correlation_id, flatbuffers::uoffset_t payload,
                                        flatbuffers::uoffset_t entity_id, const KeyedRoute* route);
  /// The builder, with room reserved in one step for a string or vector written by hand.
  struct Builder : flatbuffers::FlatBufferBuilder {
    using flatbuffers::FlatBufferBuilder::FlatBufferBuilder;
    /// `n` more bytes at the front (the buffer grows downwards); the builder's size includes them.
    std::uint8_t* reserve(std::size_t n) { return buf_.make_space(n); }
  };
  Builder fbb_;
  std::vector<flatbuffers::Offset<void>> offsets_;
  // Where this frame's vtable of each envelope shape is (0: not written yet); the shape's bits:
  // 1 a correlation id, 2 keyed, 4 a sender, 8 keyed with stamps too large for an EntityRoute.
  std::array<flatbuffers::uoffset_t, 16> vtables_{};
  std::string last_recipient_, last_sender_;  // of the run the offsets below were written for
  flatbuffers::Offset<flatbuffers::String> recipient_, sender_;
};

/// One decoded envelope, owning its (verified) payload. `recipient` and `sender` point into the
/// frame: valid while the frame's bytes are (and its InFrame).
struct InEnvelope {
  TypeId type = 0;
  std::string_view recipient;
  std::string_view sender;
  std::uint64_t correlation_id = 0;
  Message payload;
  std::optional<KeyedRoute> route;  ///< the entity it is for, when keyed
};

/// A decoded frame: who sent it (a claim the transport checks against the peer's key), which
/// incarnation it is meant for, and its good envelopes in order.
struct InFrame {
  std::string origin;
  std::uint64_t target_node = 0;
  std::vector<InEnvelope> envelopes;
  std::vector<std::uint64_t> aligned;  // the frame's aligned copy, when it had to be copied
};

/// Envelopes dropped from an otherwise good frame, by reason.
struct FrameReport {
  std::size_t accepted = 0;
  std::size_t unknown_type = 0;   ///< no verifier registered for the type id
  std::size_t bad_payload = 0;    ///< missing, oversized or failing its verifier
  std::size_t bad_path = 0;       ///< recipient or sender not a well-formed path or address, or an
                                  ///< entity id empty or longer than max_path_bytes
};

/// Decodes a frame. Errors refuse the whole frame (a malformed origin is `malformed`); `report`
/// says what was dropped from a good one.
Result<InFrame> decode_frame(std::span<const std::uint8_t> frame, const MessageRegistry& registry,
                                             const FrameLimits& limits, FrameReport& report);

}  // namespace troupe::remoting

template <>
struct std::is_error_code_enum<troupe::remoting::FrameErrc> : std::true_type {};
