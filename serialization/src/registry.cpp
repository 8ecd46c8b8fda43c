#include <troupe/serialization/registry.hpp>

#include <mutex>
#include <stdexcept>


namespace troupe {

namespace {
class DecodeCategory final : public std::error_category {
 public:
  const char* name() const noexcept override { return "troupe.decode"; }
  std::string message(int c) const override {
    switch (static_cast<DecodeErrc>(c)) {
      case DecodeErrc::unknown_type: return "unknown message type id";
      case DecodeErrc::verification_failed: return "message failed FlatBuffers verification";
      case DecodeErrc::oversized: return "message larger than the decode limit";
      case DecodeErrc::empty: return "empty message";
    }
    return "unknown decode error";
  }
};
}  // namespace

const std::error_category& decode_category() noexcept {
  static const DecodeCategory cat;
  return cat;
}

std::uint64_t MessageRegistry::next_serial() noexcept {
  static std::atomic<std::uint64_t> serial{0};
  return serial.fetch_add(1, std::memory_order_relaxed) + 1;
}

void MessageRegistry::add(TypeId id, std::string_view name, Verifier verifier, bool origin_bound) {
  std::lock_guard lock(add_mu_);
  const Entries& now = entries();
  auto it = now.map.find(id);
  if (it != now.map.end()) {
    if (it->second.name != name) {
      throw std::logic_error("message type id collision: '" + std::string(name) + "' and '" + it->second.name + "'");
    }
    // Registered already: the first verifier stays, as before; a binding is only ever added.
    if (!origin_bound || it->second.origin_bound) return;
  }
  auto next = std::make_unique<Entries>(Entries{next_serial(), now.map});
  if (it != now.map.end()) {
    next->map[id].origin_bound = true;
    entries_.store(next.get(), std::memory_order_release);
    versions_.push_back(std::move(next));
    return;
  }
  next->map.emplace(id, Entry{std::string(name), verifier, origin_bound});
  entries_.store(next.get(), std::memory_order_release);
  versions_.push_back(std::move(next));
}

bool MessageRegistry::contains(TypeId id) const { return entries().map.count(id) != 0; }

const MessageRegistry::Entry* MessageRegistry::find(TypeId id) const {
  // The last type this thread found, by the version it found it in: a frame's messages are
  // mostly of one type, and the hash map's look-up was a tenth of a node's decoding. A version
  // stays until the registry goes, and serials are never reused: a remembered entry of the
  // current version is alive.
  struct Last {
    std::uint64_t serial = 0;
    TypeId id = 0;
    const Entry* entry = nullptr;
  };
  thread_local Last last;
  const Entries& e = entries();
  if (last.serial == e.serial && last.id == id) return last.entry;
  auto it = e.map.find(id);
  last = Last{e.serial, id, it == e.map.end() ? nullptr : &it->second};
  return last.entry;
}

bool MessageRegistry::origin_bound(TypeId id) const {
  const Entry* e = find(id);
  return e && e->origin_bound;
}

std::string MessageRegistry::name_of(TypeId id) const {
  const Entries& e = entries();
  auto it = e.map.find(id);
  return it == e.map.end() ? std::string{} : it->second.name;
}

std::error_code MessageRegistry::check(TypeId id, std::size_t size, const Message& m) const {
  if (size == 0) {
    empty_.fetch_add(1, std::memory_order_relaxed);
    return DecodeErrc::empty;
  }
  if (size > limits_.max_bytes) {
    oversized_.fetch_add(1, std::memory_order_relaxed);
    return DecodeErrc::oversized;
  }
  const Entry* entry = find(id);
  const Verifier verifier = entry ? entry->verify : nullptr;
  if (!verifier) {
    unknown_.fetch_add(1, std::memory_order_relaxed);
    return DecodeErrc::unknown_type;
  }
  flatbuffers::Verifier v(m.bytes().data(), m.size(), limits_.max_depth, limits_.max_tables);
  if (!verifier(v)) {
    failed_.fetch_add(1, std::memory_order_relaxed);
    return DecodeErrc::verification_failed;
  }
  accepted_.fetch_add(1, std::memory_order_relaxed);
  return {};
}

Result<Message> MessageRegistry::decode(TypeId id, std::span<const std::uint8_t> bytes) const {
  // The verifier checks alignment relative to the buffer's start and reads scalars in place: it
  // runs on the Message's own (16-byte aligned) copy, the copy every decoded message gets anyway,
  // never on the bytes where they came (a payload nested in another buffer may sit at any
  // address its sender chose).
  Message m;
  if (!bytes.empty() && bytes.size() <= limits_.max_bytes) m = Message::copy_of(id, bytes);
  if (auto ec = check(id, bytes.size(), m)) {
    throttle_.warn(*log_, "dropped message type {:#018x} ({} bytes): {}", id, bytes.size(), ec.message());
    return ec;
  }
  return m;
}

std::error_code MessageRegistry::verify(const Message& msg) const { return check(msg.type(), msg.size(), msg); }

MessageRegistry::Stats MessageRegistry::stats() const noexcept {
  return {unknown_.load(), failed_.load(), oversized_.load(), empty_.load(), accepted_.load()};
}

}  // namespace troupe
