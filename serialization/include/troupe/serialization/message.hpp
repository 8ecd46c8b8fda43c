#pragma once
/// \file
/// Message: an immutable FlatBuffers buffer tagged with its 64-bit type id. Copying a Message
/// shares the buffer (one atomic increment); nothing is ever re-encoded or copied on a local
/// send. Any thread may use a Message; its bytes never change after construction.

#include <atomic>
#include <cstddef>
#include <cstring>
#include <cstdint>
#include <span>
#include <utility>

#include <flatbuffers/flatbuffers.h>

#include <troupe/serialization/type_id.hpp>

namespace troupe {

class Message {
 public:
  /// An empty message (no type, no bytes); `bool(msg)` is false.
  Message() noexcept = default;
  Message(const Message& o) noexcept : b_(o.b_) { if (b_) b_->refs.fetch_add(1, std::memory_order_relaxed); }
  Message(Message&& o) noexcept : b_(std::exchange(o.b_, nullptr)) {}
  Message& operator=(const Message& o) noexcept { Message(o).swap(*this); return *this; }
  Message& operator=(Message&& o) noexcept { Message(std::move(o)).swap(*this); return *this; }
  ~Message() { release(); }
  void swap(Message& o) noexcept { std::swap(b_, o.b_); }

  /// A message holding a copy of `bytes` tagged `type`. The bytes are trusted: use
  /// MessageRegistry::decode for bytes from the network.
  static Message copy_of(TypeId type, std::span<const std::uint8_t> bytes);

  /// A message from a finished builder, tagged with T's type id (one copy of the bytes).
  template <FlatTable T>
  static Message from(const flatbuffers::FlatBufferBuilder& fbb) {
    return copy_of(type_id_of<T>(), {fbb.GetBufferPointer(), fbb.GetSize()});
  }

  /// Builds a T with a reused per-thread builder: `fill(fbb)` must return the root
  /// flatbuffers::Offset<T>. Example: `Message::build<Ping>([](auto& b){ return CreatePing(b, 1); })`.
  template <FlatTable T, class Fill>
  static Message build(Fill&& fill) {
    auto& fbb = thread_builder();
    fbb.Clear();
    fbb.Finish(std::forward<Fill>(fill)(fbb));
    return from<T>(fbb);
  }

  /// True when the message holds bytes.
  explicit operator bool() const noexcept { return b_ != nullptr; }
  /// The type id (0 for an empty message).
  TypeId type() const noexcept { return b_ ? b_->type : 0; }
  /// The FlatBuffers bytes.
  std::span<const std::uint8_t> bytes() const noexcept {
    return b_ ? std::span<const std::uint8_t>(b_->data(), b_->size) : std::span<const std::uint8_t>{};
  }
  std::size_t size() const noexcept { return b_ ? b_->size : 0; }
  /// True when the message is a T.
  template <FlatTable T>
  bool is() const noexcept { return type() == type_id_of<T>(); }
  /// The root table when the message is a T, otherwise nullptr. The pointer lives as long as
  /// any copy of this Message.
  template <FlatTable T>
  const T* as() const noexcept {
    return is<T>() ? flatbuffers::GetRoot<T>(b_->data()) : nullptr;
  }
  /// Number of Message handles sharing the buffer (for tests and diagnostics).
  std::uint32_t use_count() const noexcept { return b_ ? b_->refs.load(std::memory_order_relaxed) : 0; }
  /// Asks the CPU to start loading the message's header and first bytes (a thread about to read
  /// many messages another thread wrote overlaps their cache misses this way).
  void prefetch() const noexcept {
    if (b_) {
      __builtin_prefetch(b_);
      __builtin_prefetch(reinterpret_cast<const std::byte*>(b_) + 64);
    }
  }

  /// Runtime use only: bytes reserved in every message for the mailbox link, so that sending a
  /// message that has a single owner allocates nothing.
  static constexpr std::size_t kSlotSize = 32;
  /// Runtime use only: when this is the only handle and the slot is free, marks the slot busy,
  /// moves this handle's reference into it (this becomes empty) and returns it; else nullptr.
  void* claim_slot() noexcept {
    if (!b_ || b_->refs.load(std::memory_order_acquire) != 1) return nullptr;
    // The only handle: nobody else can claim the slot, and a message taken out of its slot
    // (from_slot) freed it, so no atomic read-modify-write is needed here.
    if (b_->slot_busy.load(std::memory_order_relaxed)) return nullptr;
    b_->slot_busy.store(1, std::memory_order_relaxed);
    return std::exchange(b_, nullptr)->slot;
  }
  /// Runtime use only: the inverse of claim_slot(): frees the slot and returns the handle.
  static Message from_slot(void* slot) noexcept {
    Message m;
    m.b_ = reinterpret_cast<Block*>(static_cast<std::byte*>(slot) - offsetof(Block, slot));
    m.b_->slot_busy.store(0, std::memory_order_release);
    return m;
  }

 private:
  struct alignas(16) Block {
    std::atomic<std::uint32_t> refs;
    std::uint32_t size;
    TypeId type;
    std::atomic<std::uint32_t> slot_busy;
    alignas(8) std::byte slot[kSlotSize];
    // payload follows, 16-byte aligned
    std::uint8_t* data() noexcept { return reinterpret_cast<std::uint8_t*>(this + 1); }
  };
  static_assert(sizeof(Block) % 16 == 0);
  void release() noexcept;
  static flatbuffers::FlatBufferBuilder& thread_builder();
  Block* b_ = nullptr;
};

}  // namespace troupe
