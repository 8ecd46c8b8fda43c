#include <troupe/serialization/message.hpp>

#include <cstring>
#include <new>

namespace troupe {

Message Message::copy_of(TypeId type, std::span<const std::uint8_t> bytes) {
  void* mem = ::operator new(sizeof(Block) + bytes.size());
  auto* b = new (mem) Block{{1}, static_cast<std::uint32_t>(bytes.size()), type, {0}, {}};
  if (!bytes.empty()) std::memcpy(b->data(), bytes.data(), bytes.size());
  Message m;
  m.b_ = b;
  return m;
}

void Message::release() noexcept {
  if (b_ && b_->refs.fetch_sub(1, std::memory_order_acq_rel) == 1) {
    b_->~Block();
    ::operator delete(b_);
  }
  b_ = nullptr;
}

flatbuffers::FlatBufferBuilder& Message::thread_builder() {
  thread_local flatbuffers::FlatBufferBuilder fbb(256);
  return fbb;
}

}  // namespace troupe
