#include <troupe/remoting/frame.hpp>

#include <cstring>

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

void BatchBuilder::add(TypeId type, std::string_view recipient, std::string_view sender, std::uint64_t correlation_id,
                       std::span<const std::uint8_t> payload, const KeyedRoute* route) {
  // Runs of envelopes share their recipient and sender: each string is written once per run
  // (FlatBuffers lets several tables point at one string).
  if (offsets_.empty() || recipient != last_recipient_) {
    last_recipient_.assign(recipient);
    recipient_ = fbb_.CreateString(recipient.data(), recipient.size());
  }
  if (offsets_.empty() || sender != last_sender_) {
    last_sender_.assign(sender);
    sender_ = fbb_.CreateString(sender.data(), sender.size());
  }
  auto p = fbb_.CreateVector(payload.data(), payload.size());
  if (!route) {
    offsets_.push_back(wire::CreateEnvelope(fbb_, type, recipient_, sender_, correlation_id, p).Union());
    return;
  }
  auto id = fbb_.CreateString(route->entity_id);
  const wire::EntityStamp stamp(route->epoch, route->shard, route->hops);
  offsets_.push_back(wire::CreateEnvelope(fbb_, type, recipient_, sender_, correlation_id, p, id, &stamp).Union());
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
  return fbb_.Release();
}

void BatchBuilder::reset() {
  fbb_.Clear();
  offsets_.clear();
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
  for (const auto* e : *envs) {
    const std::string_view recipient = e->recipient() ? e->recipient()->string_view() : std::string_view{};
    const std::string_view sender = e->sender() ? e->sender()->string_view() : std::string_view{};
    if (!valid_recipient(recipient, limits.max_path_bytes) || !valid_sender(sender, limits.max_path_bytes)) {
      ++report.bad_path;
      continue;
    }
    const auto* p = e->payload();
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
    if (const auto* id = e->entity_id()) {
      if (id->size() == 0 || id->size() > limits.max_path_bytes) {
        ++report.bad_path;
        continue;
      }
      const auto* st = e->stamp();
      in.route = st ? KeyedRoute{id->string_view(), st->shard(), st->epoch(), st->hops()}
                    : KeyedRoute{id->string_view(), 0, 0, 0};
    }
    out.push_back(std::move(in));
    ++report.accepted;
  }
  return frame_out;
}

}  // namespace troupe::remoting
