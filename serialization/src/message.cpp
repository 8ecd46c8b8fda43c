#include <troupe/serialization/message.hpp>

#include <cstring>
#include <new>

#if TROUPE_MIMALLOC
#include <mimalloc.h>
#endif

namespace troupe {

namespace {

// A message block is usually freed by another thread than the one that made it (the receiving
// worker, the transport's I/O thread). mimalloc takes such a free with one atomic push onto the
// page's list and the owner reuses it; glibc's per-thread caches fill up and fall back to locking
// the sender's arena (40 % of a 2-sender pool benchmark's cycles).
void* allocate_block(std::size_t n) {
#if TROUPE_MIMALLOC
  void* p = mi_malloc(n);
  if (!p) throw std::bad_alloc();
  return p;
#else
  return ::operator new(n);
#endif
}

void free_block(void* p) noexcept {
#if TROUPE_MIMALLOC
  mi_free(p);
#else
  ::operator delete(p);
#endif
}

}  // namespace

Message Message::copy_of(TypeId type, std::span<const std::uint8_t> bytes) {
  void* mem = allocate_block(sizeof(Block) + bytes.size());
  auto* b = new (mem) Block{{1}, static_cast<std::uint32_t>(bytes.size()), type, {0}, {}};
  if (!bytes.empty()) std::memcpy(b->data(), bytes.data(), bytes.size());
  Message m;
  m.b_ = b;
  return m;
}

void Message::release() noexcept {
  // The last handle (the common case: one sender, one receiver) frees without a locked
  // decrement: with one reference nobody else can add one.
  if (b_ && (b_->refs.load(std::memory_order_acquire) == 1 || b_->refs.fetch_sub(1, std::memory_order_acq_rel) == 1)) {
    b_->~Block();
    free_block(b_);
  }
  b_ = nullptr;
}

flatbuffers::FlatBufferBuilder& Message::thread_builder() {
  thread_local flatbuffers::FlatBufferBuilder fbb(256);
  return fbb;
}

}  // namespace troupe
