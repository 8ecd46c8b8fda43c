#include <troupe/remoting/frame.hpp>

#include <cstring>
#include <limits>

#include <troupe/serialization/envelope_generated.h>

namespace troupe::remoting {

namespace {

class FrameCategory final : public std::error_category {
 public:
  const char* name() const noexcept override { return "troupe.frame"; }
  std::string message(int c) const override {
    switch (static_cast<FrameErrc>(c)) {
      case FrameErrc::empty: return "empty frame";
      case FrameErrc::oversized: return "frame larger than the limit";
      case FrameErrc::malformed: return "frame failed verification";
      case FrameErrc::unsupported_version: return "unsupported protocol version";
      case FrameErrc::too_many_envelopes: return "too many envelopes in one frame";
    }
    return "unknown frame error";
  }
};

// A recipient is a local path ("/user/a"); a sender is empty, a path on the origin node or a full
// address ("troupe://<node>@<host>:<port>/<path>"); an origin is empty or a node address.
// Printable ASCII only, bounded.
bool printable(std::string_view s) {
  for (unsigned char c : s) {
    if (c < 0x21 || c > 0x7e) return false;
  }
  return true;
}
bool valid_recipient(std::string_view s, std::size_t max) {
  return !s.empty() && s.size() <= max && s.front() == '/' && printable(s);
}
bool valid_sender(std::string_view s, std::size_t max) {
  return s.empty() || (s.size() <= max && (s.starts_with("troupe://") || s.front() == '/') && printable(s));
}
bool valid_origin(std::string_view s, std::size_t max) {
  return s.empty() || (s.size() <= max && s.starts_with("troupe://") && printable(s));
}

}  // namespace

const std::error_category& frame_category() noexcept {
  static const FrameCategory cat;
  return cat;
}

FrameBufferPool::~FrameBufferPool() {
  for (auto* p : free_) delete[] p;
}

std::uint8_t* FrameBufferPool::allocate(std::size_t n) {
  if (n == bytes_) {
    std::lock_guard lk(mu_);
    if (!free_.empty()) {
      auto* p = free_.back();
      free_.pop_back();
      reused_.fetch_add(1, std::memory_order_relaxed);
      return p;
    }
  }
  return new std::uint8_t[n];
}

void FrameBufferPool::deallocate(std::uint8_t* p, std::size_t n) {
  if (n == bytes_) {
    std::lock_guard lk(mu_);
    if (free_.size() < keep_) {
      free_.push_back(p);
      return;
    }
  }
  delete[] p;
}

namespace {

// What CreateVector<uint8_t> (terminator 0) and CreateString (terminator 1: its NUL) write, the same
// bytes, in one reservation instead of their dozen calls into the builder's buffer: a string or a
// [ubyte] is its 32-bit length, 4-aligned, then its bytes and the terminator, zero-padded so that
// the length lands aligned.
template <class Builder>
flatbuffers::uoffset_t push_vector(Builder& fbb, const std::uint8_t* data, std::size_t size, std::size_t terminator) {
  static_assert(FLATBUFFERS_LITTLEENDIAN, "the length is written in host byte order");
  fbb.TrackMinAlign(sizeof(flatbuffers::uoffset_t));
  const auto pad = flatbuffers::PaddingBytes(fbb.GetSize() + size + terminator, sizeof(flatbuffers::uoffset_t));
  std::uint8_t* at = fbb.reserve(sizeof(flatbuffers::uoffset_t) + size + terminator + pad);
  const auto len = static_cast<flatbuffers::uoffset_t>(size);
  std::memcpy(at, &len, sizeof len);
  if (size != 0) std::memcpy(at + sizeof len, data, size);
  std::memset(at + sizeof len + size, 0, terminator + pad);
  return fbb.GetSize();
}

}  // namespace

void BatchBuilder::add(TypeId type, std::string_view recipient, std::string_view sender, std::uint64_t correlation_id,
                       std::span<const std::uint8_t> payload, const KeyedRoute* route) {
  // Runs of envelopes share their recipient and sender: each string is written once per run
  // (FlatBuffers lets several tables point at one string).
  if (offsets_.empty() || recipient != last_recipient_) {
    last_recipient_.assign(recipient);
    recipient_ = fbb_.CreateString(recipient.data(), recipient.size());
  }
  // No sender (a tell from outside any actor, the usual sharded tell): the field is left out of
  // the table, as the generated code leaves out an absent string. That is 4 bytes a message; the
  // alignment padding before a table (0 or 4 bytes) still depends on what was written before it.
  if (offsets_.empty() || sender != last_sender_) {
    last_sender_.assign(sender);
    sender_ = sender.empty() ? flatbuffers::Offset<flatbuffers::String>() : fbb_.CreateString(sender.data(), sender.size());
  }
  const auto p = push_vector(fbb_, payload.data(), payload.size(), 0);
  const auto id = route ? push_vector(fbb_, reinterpret_cast<const std::uint8_t*>(route->entity_id.data()),
                                      route->entity_id.size(), 1)
                        : 0;
  offsets_.emplace_back(write_envelope(type, correlation_id, p, id, route));
}

// An Envelope table is written in one piece instead of field by field through the generated
// CreateEnvelope: the builder's per-field bookkeeping and its search for an equal vtable were
// most of the sender's I/O thread's time per message. The result is an ordinary table that any
// FlatBuffers reader and the verifier accept (the frame tests decode it with the generated code).
// Layout, from the table's start (8-aligned): the vtable's soffset, recipient, type_id,
// [correlation_id], [route or stamp], [sender], payload, [entity_id]: every scalar at its
// natural alignment. A keyed envelope's stamps go in an 8-byte EntityRoute when the epoch and
// shard fit it (always, in practice) and in the 16-byte EntityStamp of protocol 1 otherwise.
flatbuffers::uoffset_t BatchBuilder::write_envelope(TypeId type, std::uint64_t correlation_id,
                                                    flatbuffers::uoffset_t payload, flatbuffers::uoffset_t entity_id,
                                                    const KeyedRoute* route) {
  using flatbuffers::uoffset_t;
  using flatbuffers::voffset_t;
  static_assert(FLATBUFFERS_LITTLEENDIAN, "the table is laid out in host byte order");
  static_assert(sizeof(wire::EntityStamp) == 16 && alignof(wire::EntityStamp) == 8);
  static_assert(sizeof(wire::EntityRoute) == 8 && alignof(wire::EntityRoute) == 4);
  const bool has_corr = correlation_id != 0;
  const bool has_sender = !sender_.IsNull();
  const bool wide = route && (route->epoch > std::numeric_limits<std::uint32_t>::max() ||
                              route->shard > std::numeric_limits<std::uint16_t>::max());
  const int shape = (has_corr ? 1 : 0) | (route ? 2 : 0) | (has_sender ? 4 : 0) | (wide ? 8 : 0);
  constexpr voffset_t kRecipient = 4, kType = 8;
  const voffset_t corr_at = has_corr ? 16 : 0;
  const voffset_t stamps_at = route ? (has_corr ? 24 : 16) : 0;
  const voffset_t stamp_at = wide ? stamps_at : 0, route_at = wide ? 0 : stamps_at;
  const voffset_t stamps_bytes = route ? (wide ? 16 : 8) : 0;
  const auto after_scalars = static_cast<voffset_t>(16 + (has_corr ? 8 : 0) + stamps_bytes);
  const voffset_t sender_at = has_sender ? after_scalars : 0;
  const voffset_t payload_at = has_sender ? after_scalars + 4 : after_scalars;
  const voffset_t id_at = route ? payload_at + 4 : 0;
  const voffset_t size = route ? id_at + 4 : payload_at + 4;

  if (vtables_[shape] == 0) {
    // Slots by field id (wire::Envelope::VT_*): type_id, recipient, sender, correlation_id,
    // payload, entity_id, stamp, route; 0 for a field this shape leaves out.
    const voffset_t slots = route ? (wide ? 7 : 8) : 5;
    std::array<voffset_t, 10> vt{static_cast<voffset_t>(sizeof(voffset_t) * (2 + slots)), size, kType, kRecipient,
                                 sender_at, corr_at, payload_at, id_at, stamp_at, route_at};
    const auto bytes = static_cast<std::size_t>(vt[0]);
    fbb_.PreAlign(bytes, sizeof(voffset_t));
    fbb_.PushBytes(reinterpret_cast<const std::uint8_t*>(vt.data()), bytes);
    vtables_[shape] = fbb_.GetSize();
  }

  fbb_.PreAlign(size, 8);
  // Offsets count from the buffer's end (it is built downwards): the table will start `end`
  // bytes before it, a field `at` bytes into the table sits at end - at, and a uoffset there
  // holds the distance forward to its target.
  const uoffset_t end = fbb_.GetSize() + size;
  alignas(8) std::array<std::uint8_t, 56> t{};
  auto put = [&t](voffset_t at, const auto& v) { std::memcpy(t.data() + at, &v, sizeof v); };
  auto refer = [&](voffset_t at, uoffset_t target) { put(at, static_cast<uoffset_t>(end - at - target)); };
  put(0, static_cast<flatbuffers::soffset_t>(vtables_[shape]) - static_cast<flatbuffers::soffset_t>(end));
  refer(kRecipient, recipient_.o);
  put(kType, static_cast<std::uint64_t>(type));
  if (has_corr) put(corr_at, correlation_id);
  if (wide) {
    put(stamp_at, wire::EntityStamp(route->epoch, route->shard, route->hops));
  } else if (route) {
    put(route_at, wire::EntityRoute(static_cast<std::uint32_t>(route->epoch), static_cast<std::uint16_t>(route->shard),
                                    route->hops));
  }
  if (has_sender) refer(sender_at, sender_.o);
  refer(payload_at, payload);
  if (route) refer(id_at, entity_id);
  fbb_.PushBytes(t.data(), size);
  return end;
}

std::span<const std::uint8_t> BatchBuilder::finish(std::string_view origin, std::uint64_t target_node) {
  std::vector<flatbuffers::Offset<wire::Envelope>> typed;
  typed.reserve(offsets_.size());
  for (auto o : offsets_) typed.emplace_back(o.o);
  auto v = fbb_.CreateVector(typed);
  auto o = origin.empty() ? flatbuffers::Offset<flatbuffers::String>() : fbb_.CreateString(origin.data(), origin.size());
  fbb_.Finish(wire::CreateBatch(fbb_, kProtocolVersion, v, o, target_node));
  return {fbb_.GetBufferPointer(), fbb_.GetSize()};
}

flatbuffers::DetachedBuffer BatchBuilder::release() {
  offsets_.clear();
  vtables_ = {};
  return fbb_.Release();
}

void BatchBuilder::reset() {
  fbb_.Clear();
  offsets_.clear();
  vtables_ = {};
}

Result<InFrame> decode_frame(std::span<const std::uint8_t> frame, const MessageRegistry& registry,
                                             const FrameLimits& limits, FrameReport& report) {
  if (frame.empty()) return FrameErrc::empty;
  if (frame.size() > limits.max_frame_bytes) return FrameErrc::oversized;
  // FlatBuffers reads scalars in place: a frame ZeroMQ hands over at an odd address is decoded
  // from an aligned copy (what the decoder keeps is copied out anyway).
  InFrame frame_out;
  if (reinterpret_cast<std::uintptr_t>(frame.data()) % alignof(std::uint64_t) != 0) {
    auto& aligned = frame_out.aligned;  // moved with the result: the views below point into it
    aligned.resize((frame.size() + sizeof(std::uint64_t) - 1) / sizeof(std::uint64_t));
    std::memcpy(aligned.data(), frame.data(), frame.size());
    frame = {reinterpret_cast<const std::uint8_t*>(aligned.data()), frame.size()};
  }
  // Every envelope is at least a table, two strings and a vector: bound the table count by the
  // envelope limit so that a frame cannot make the verifier walk an unbounded object graph.
  flatbuffers::Verifier verifier(frame.data(), frame.size(), limits.max_depth,
                                 static_cast<flatbuffers::uoffset_t>(limits.max_envelopes * 4 + 16));
  if (!verifier.VerifyBuffer<wire::Batch>(nullptr)) return FrameErrc::malformed;
  const auto* batch = flatbuffers::GetRoot<wire::Batch>(frame.data());
  if (batch->protocol_version() < kMinProtocolVersion || batch->protocol_version() > kProtocolVersion) {
    return FrameErrc::unsupported_version;
  }
  frame_out.origin = batch->origin() ? batch->origin()->str() : std::string();
  if (!valid_origin(frame_out.origin, limits.max_path_bytes)) return FrameErrc::malformed;
  frame_out.target_node = batch->target_node();
  const auto* envs = batch->envelopes();
  if (!envs) return frame_out;
  if (envs->size() > limits.max_envelopes) return FrameErrc::too_many_envelopes;
  auto& out = frame_out.envelopes;
  out.reserve(envs->size());
  // A run of envelopes shares one recipient string and one sender string (BatchBuilder writes
  // each once per run): a string already found good is not checked again. An absent sender (a
  // tell from outside any actor) is none, which is always good.
  const flatbuffers::String* good_recipient = nullptr;
  const flatbuffers::String* good_sender = nullptr;
  // Each envelope's payload and entity id are bytes of its own in a frame BatchBuilder writes.
  // FlatBuffers would let many envelopes point at one vector (the verifier cannot tell), and
  // every payload is copied out: one small frame would decode into copies many times its size.
  // So the bytes carried may not add up to more than the frame.
  std::size_t carried = 0;
  for (const auto* e : *envs) {
    const auto* r = e->recipient();
    const auto* s = e->sender();
    const std::string_view recipient = r ? r->string_view() : std::string_view{};
    const std::string_view sender = s ? s->string_view() : std::string_view{};
    if (!r || r != good_recipient) {
      if (!valid_recipient(recipient, limits.max_path_bytes)) {
        ++report.bad_path;
        continue;
      }
      good_recipient = r;
    }
    if (s && s != good_sender) {
      if (!valid_sender(sender, limits.max_path_bytes)) {
        ++report.bad_path;
        continue;
      }
      good_sender = s;
    }
    const auto* p = e->payload();
    const auto* id = e->entity_id();
    carried += (p ? p->size() : 0) + (id ? id->size() : 0);
    if (carried > frame.size()) {
      report.accepted -= out.size();
      return FrameErrc::malformed;
    }
    auto msg = registry.decode(e->type_id(), p ? std::span<const std::uint8_t>(p->data(), p->size())
                                               : std::span<const std::uint8_t>{});
    if (!msg) {
      ++(msg.error() == DecodeErrc::unknown_type ? report.unknown_type : report.bad_payload);
      continue;
    }
    InEnvelope in;
    in.type = e->type_id();
    in.recipient = recipient;
    in.sender = sender;
    in.correlation_id = e->correlation_id();
    in.payload = std::move(msg).value();
    if (id) {
      if (id->size() == 0 || id->size() > limits.max_path_bytes) {
        ++report.bad_path;
        continue;
      }
      if (const auto* rt = e->route()) {
        in.route = KeyedRoute{id->string_view(), rt->shard(), rt->epoch(), rt->hops()};
      } else if (const auto* st = e->stamp()) {
        in.route = KeyedRoute{id->string_view(), st->shard(), st->epoch(), st->hops()};
      } else {
        in.route = KeyedRoute{id->string_view(), 0, 0, 0};
      }
    }
    out.push_back(std::move(in));
    ++report.accepted;
  }
  return frame_out;
}

}  // namespace troupe::remoting
