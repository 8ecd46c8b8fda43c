#include <troupe/sharding/region.hpp>

#include <deque>
#include <random>
#include <stdexcept>
#include <unordered_set>
#include <utility>

#include <fmt/format.h>
#include <spdlog/logger.h>
#include <xxhash.h>

#include <troupe/membership/service.hpp>
#include <troupe/remoting/transport.hpp>
#include <troupe/serialization/sharding_generated.h>
#include <troupe/serialization/system_generated.h>

#include "coordinator.hpp"
#include "shared.hpp"

namespace troupe::sharding {

namespace {

constexpr std::uint8_t kMaxHops = 4;
// A handoff's states travel in one message: past this size later states are dropped (counted).
constexpr std::size_t kMaxStateBytes = 4u << 20;

Message entity_error(std::string_view type, std::string_view id, const std::string& reason) {
  return Message::build<EntityError>([&](flatbuffers::FlatBufferBuilder& b) {
    return CreateEntityError(b, b.CreateString(type.data(), type.size()), b.CreateString(id.data(), id.size()),
                             b.CreateString(reason));
  });
}

std::string_view sv(const flatbuffers::String* s) { return s ? s->string_view() : std::string_view(); }

/// An envelope for entity `id` holding the message (`type_id`, `payload`); between regions also
/// its entity type and stamps (an empty `type`: none), and a retrying ask's idempotency key.
Message entity_envelope(std::string_view id, TypeId type_id, std::span<const std::uint8_t> payload,
                        std::string_view type = {}, ShardId shard = 0, std::uint64_t epoch = 0, std::uint8_t hops = 0,
                        std::string_view key = {}) {
  return Message::build<EntityEnvelope>([&](flatbuffers::FlatBufferBuilder& b) {
    auto i = b.CreateString(id.data(), id.size());
    auto p = b.CreateVector(payload.data(), payload.size());
    auto t = type.empty() ? flatbuffers::Offset<flatbuffers::String>() : b.CreateString(type.data(), type.size());
    auto k = key.empty() ? flatbuffers::Offset<flatbuffers::String>() : b.CreateString(key.data(), key.size());
    return CreateEntityEnvelope(b, i, type_id, p, t, shard, epoch, hops, k);
  });
}

/// Catches the reply to a keyed message for its region's reply cache (then stops; at the
/// latest when the cache entry expires).
class ReplyCapture final : public Actor {
 public:
  ReplyCapture(ActorRef region, std::string key, std::chrono::milliseconds ttl)
      : region_(std::move(region)), key_(std::move(key)), ttl_(ttl) {}
  void pre_start() override {
    context().schedule_once(ttl_, Message::build<CaptureExpired>([](auto& b) { return CreateCaptureExpired(b); }));
  }
  void receive(const Message& m) override {
    if (!m.is<CaptureExpired>()) {
      region_.tell(Message::build<CapturedReply>([&](flatbuffers::FlatBufferBuilder& b) {
        return CreateCapturedReply(b, b.CreateString(key_), m.type(), b.CreateVector(m.bytes().data(), m.size()));
      }));
    }
    context().stop(self());
  }

 private:
  ActorRef region_;
  std::string key_;
  std::chrono::milliseconds ttl_;
};

/// One entity type's region on this node: hosts the entities of the shards allocated here (as
/// its children) and forwards the rest to their owner's region; a proxy region only forwards.
class Region final : public Actor {
 public:
  Region(EntitySettings s, EntityFactory f, std::shared_ptr<Sharding::Shared> shared, bool proxy,
         std::shared_ptr<std::atomic<std::int64_t>> in_region, std::shared_ptr<RegionDoor> door)
      : settings_(std::move(s)), factory_(std::move(f)), shared_(std::move(shared)), in_region_(std::move(in_region)),
        door_(std::move(door)), proxy_(proxy), local_(!shared_->cluster()) {}
  ~Region() override { close_door(); }

  void pre_start() override {
    system_ = &context().system();
    if (!proxy_ && !local_) {
      std::unique_lock lk(door_->mu);
      door_->fast = [this](std::span<remoting::Transport::Inbound> run) { return fast(run); };
      door_->owner = this;
    }
    if (!proxy_ && settings_.passivate_after.count() > 0) {
      static const Message tick = Message::build<PassivationTick>([](auto& b) { return CreatePassivationTick(b); });
      context().schedule_every(settings_.passivate_after / 2, tick);
    }
    if (shared_->cluster()) my_address_ = shared_->self_address + "/system/" + region_name(settings_.type);
  }

  void receive(const Message& m) override {
    // Every turn holds the front door shut: it sees the region's state only between turns.
    std::unique_lock lk(door_->mu);
    if (const auto* env = m.as<EntityEnvelope>()) return on_envelope(m, *env);
    if (m.is<sys::Terminated>()) return on_terminated(sender());
    if (m.is<Passivate>()) return passivate_sender();
    if (m.is<PassivationTick>()) return on_tick();
    if (const auto* t = m.as<ShardTableUpdate>()) return on_table(*t);
    if (const auto* h = m.as<HandOff>()) return on_handoff(*h);
    if (const auto* st = m.as<ShardState>()) return on_state(*st);
    if (const auto* es = m.as<EntityState>()) return on_entity_state(*es);
    if (m.is<FenceAll>()) return fence_all();
    if (const auto* c = m.as<CapturedReply>()) return on_captured(*c);
    if (m.is<Suspend>()) return suspend();
    if (m.is<Resume>()) return resume();
  }

  void post_stop() override {
    close_door();
    // Children stop before their parent: every entity left here has stopped.
    shared_->live.fetch_sub(entities_.size(), std::memory_order_relaxed);
    for (const auto& [id, e] : entities_) log_activation(id, false, e.incarnation);
  }

 private:
  // 24 bytes: with its id as the key, one 80-byte hash node per idle entity.
  struct Entity {
    ActorRef ref;
    std::uint64_t incarnation = 0;
    std::uint32_t last_active = 0;  // activity_tick() of its last message
    bool passivating = false;       // stopping (idle, handoff, ...): messages wait in waiting_ meanwhile
    bool hands_state = false;       // stopping for a handoff: its snapshot goes with the shard
    std::uint16_t shard = 0;        // shard_of(type, id): the front door checks a sender's claim
  };
  // Looked up by the string_view a keyed envelope's route holds (no string built per message).
  // Not noexcept on purpose: libstdc++ then keeps each node's hash (as for std::hash<string>),
  // so a lookup compares hashes before strings and never rehashes a neighbour's key.
  struct IdHash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  using Entities = std::unordered_map<std::string, Entity, IdHash, std::equal_to<>>;
  static_assert(sizeof(Entity) <= 24);
  static_assert(!std::is_nothrow_invocable_v<const IdHash&, const std::string&>, "see IdHash");
  struct Hosted {
    std::uint64_t epoch = 0;
    bool stopping = false;     // entities stopping or stopped (handoff, minority): messages buffered
    bool handoff = false;      // the coordinator asked: ShardStopped once every entity stopped
    std::size_t pending = 0;   // entities still to stop
    ActorRef reply_to;         // the coordinator that asked
    std::vector<std::pair<std::string, Message>> states;
    std::size_t state_bytes = 0;
  };
  struct Pending {
    Message env;  // an EntityEnvelope
    ActorRef from;
  };
  struct Buffer {
    std::deque<Pending> q;
    std::size_t bytes = 0;
  };

  // ---- messages for entities ----

  /// The front door (see RegionDoor), on the transport's I/O thread between this region's turns:
  /// each keyed message for a running entity of a shard served here at the sender's epoch goes
  /// straight to it, from the front of the run; the first that cannot (and all after it) go
  /// through the mailbox. Returns how many it delivered.
  std::size_t fast(std::span<remoting::Transport::Inbound> run) {
    if (down_ || suspended_) return 0;
    const std::uint32_t now = activity_tick();  // one clock read a run
    std::size_t k = 0;
    for (; k < run.size(); ++k) {
      auto& in = run[k];
      if (!in.route) break;
      const auto& r = *in.route;
      if (r.entity_id.empty() || r.entity_id.size() > settings_.max_id_bytes) break;
      // The entity's own shard (kept since it started) must be the one the sender claims, and
      // that shard served here at the sender's epoch.
      auto it = entities_.find(r.entity_id);
      if (it == entities_.end() || it->second.passivating || it->second.shard != r.shard) break;
      auto h = hosted_.find(r.shard);
      if (h == hosted_.end() || h->second.stopping || h->second.epoch != r.epoch) break;
      it->second.last_active = now;
      it->second.ref.tell(std::move(in.msg), std::move(in.sender));
    }
    if (k) shared_->front_door.fetch_add(k, std::memory_order_relaxed);  // counted in routed by stats()
    return k;
  }

  void close_door() {
    if (proxy_ || local_) return;
    std::unique_lock lk(door_->mu);  // post_stop and the destructor run outside the region's turns
    if (door_->owner != this) return;  // a restarted instance has it now
    door_->fast = nullptr;
    door_->owner = nullptr;
  }

  void on_envelope(const Message& m, const EntityEnvelope& env) {
    // Every envelope was counted into in_region by whoever put it in the mailbox (a caller's
    // route, the transport inbox): it is through the region once this returns.
    struct Done {
      std::atomic<std::int64_t>* c;
      ~Done() { c->fetch_sub(1, std::memory_order_release); }
    } done{in_region_.get()};
    const auto id = sv(env.entity_id());
    if (id.empty() || id.size() > settings_.max_id_bytes) {
      shared_->bad_id.fetch_add(1, std::memory_order_relaxed);
      refuse_error(id, fmt::format("entity id must be 1 to {} bytes (got {})", settings_.max_id_bytes, id.size()));
      return;
    }
    const auto shard = shard_of(settings_.type, id, settings_.num_shards);
    if (env.epoch() != 0 && env.shard() != shard) {
      shared_->malformed.fetch_add(1, std::memory_order_relaxed);
      shared_->protocol_log.warn(context().system().log(), "sharding {}: an envelope for {} claims shard {} (it is {}); dropped",
                                 settings_.type, id.substr(0, 64), env.shard(), shard);
      return;
    }
    route(m, env, shard, sender());
  }

  void refuse_error(std::string_view id, const std::string& why) {
    shared_->refused_log.warn(context().system().log(), "sharding: refused a message for {}/{}: {}", settings_.type,
                              id.substr(0, 64), why);
    if (sender()) sender().tell(entity_error(settings_.type, id.substr(0, 256), why));
  }

  /// Delivers here, forwards to the owner, or buffers until the shard has a usable home.
  void route(const Message& m, const EntityEnvelope& env, ShardId shard, const ActorRef& from) {
    if (local_) return deliver(m, env, from, false);
    if (down_) return unavailable(m, env, shard, from, "this node was downed");
    if (auto h = hosted_.find(shard); h != hosted_.end()) {
      if (h->second.stopping) return buffer(m, env, shard, from);
      if (env.epoch() != 0 && env.epoch() < h->second.epoch) shared_->stale_epoch.fetch_add(1, std::memory_order_relaxed);
      // Verified again unless this is a cluster of one: an envelope from another node carries
      // bytes nobody here checked (whatever epoch it claims).
      return deliver(m, env, from, true);
    }
    // Stamped with a newer allocation than this region's table knows: the table is behind (the
    // sender's may name this very region); wait for it rather than send by an older one.
    if (shard < epoch_.size() && env.epoch() > epoch_[shard]) return buffer(m, env, shard, from);
    if (shard < owner_.size() && owner_[shard] != 0 && !moving_[shard] && owner_[shard] - 1 != self_index_) {
      if (env.hops() >= kMaxHops) return unavailable(m, env, shard, from, "too many hops between regions");
      // A retrying ask's message that this region's reply cache took (its sender is the cache's
      // capture) and that waited here since (a passivating entity, a stopped one's mailbox)
      // would arrive without its idempotency key, and the ask's retry would run it again
      // there: it is refused instead (the asker retries, and it runs once at the new home).
      if (!env.idempotency_key() && from && !captures_.empty() && captures_.count(from.target())) {
        return unavailable(m, env, shard, from, "its shard moved while it waited here; retry");
      }
      auto& target = regions_[owner_[shard] - 1];
      if (env.epoch() != 0) shared_->rerouted.fetch_add(1, std::memory_order_relaxed);
      shared_->forwarded.fetch_add(1, std::memory_order_relaxed);
      const auto id = sv(env.entity_id());
      const auto payload = env.payload() ? std::span<const std::uint8_t>(env.payload()->data(), env.payload()->size())
                                         : std::span<const std::uint8_t>{};
      target.tell(entity_envelope(id, env.type_id(), payload, settings_.type, shard, epoch_[shard],
                                  static_cast<std::uint8_t>(env.hops() + 1), sv(env.idempotency_key())),
                  from);
      return;
    }
    buffer(m, env, shard, from);
  }

  void buffer(const Message& m, const EntityEnvelope& env, ShardId shard, const ActorRef& from) {
    const auto& cfg = shared_->config;
    auto& b = buffers_[shard];
    if (b.q.size() >= cfg.buffer_per_shard || b.bytes + m.size() > cfg.buffer_bytes_per_shard || region_full(m.size())) {
      if (b.q.empty()) buffers_.erase(shard);
      return unavailable(m, env, shard, from, "the shard's buffer is full while it has no home");
    }
    b.q.push_back({m, from});
    b.bytes += m.size();
    ++buffered_count_;
    buffered_bytes_ += m.size();
    shared_->buffered.fetch_add(1, std::memory_order_relaxed);
  }

  void unavailable(const Message& m, const EntityEnvelope& env, ShardId shard, const ActorRef& from, const char* why) {
    shared_->unavailable.fetch_add(1, std::memory_order_relaxed);
    const auto id = sv(env.entity_id());
    const std::uint64_t epoch = shard < epoch_.size() ? epoch_[shard] : 0;
    shared_->refused_log.warn(context().system().log(), "sharding {}: message for {} (shard {}) refused: {}", settings_.type,
                              id.substr(0, 64), shard, why);
    if (!from) {
      shared_->dropped_no_sender.fetch_add(1, std::memory_order_relaxed);
      context().system().dead_letter(m, from, my_address_.empty() ? std::string("sharding") : my_address_, why);
      return;
    }
    from.tell(Message::build<ShardUnavailable>([&](flatbuffers::FlatBufferBuilder& b) {
      return CreateShardUnavailable(b, b.CreateString(settings_.type), b.CreateString(id.data(), id.size()), shard, epoch,
                                    static_cast<std::uint32_t>(shared_->config.retry_after.count()), b.CreateString(why));
    }));
  }

  /// Re-routes whatever waits for a shard that now has a usable home.
  void flush_buffers() {
    std::vector<ShardId> ready;
    for (const auto& [shard, b] : buffers_) {
      if (routable(shard)) ready.push_back(shard);
    }
    for (auto shard : ready) {
      auto b = std::move(buffers_[shard]);
      buffers_.erase(shard);
      buffered_count_ -= b.q.size();
      buffered_bytes_ -= b.bytes;
      for (auto& p : b.q) route(p.env, *p.env.as<EntityEnvelope>(), shard, p.from);
    }
  }

  bool routable(ShardId shard) const {
    if (auto h = hosted_.find(shard); h != hosted_.end()) return !h->second.stopping;
    return shard < owner_.size() && owner_[shard] != 0 && !moving_[shard] && owner_[shard] - 1 != self_index_;
  }

  void deliver(const Message& m, const EntityEnvelope& env, const ActorRef& from, bool remote) {
    const std::string id(sv(env.entity_id()));
    const auto payload = env.payload() ? std::span<const std::uint8_t>(env.payload()->data(), env.payload()->size())
                                       : std::span<const std::uint8_t>{};
    Message msg;
    if (remote) {
      // Bytes from another node: verified like any remote message before an entity sees them.
      auto decoded = context().system().registry().decode(env.type_id(), payload);
      if (!decoded) {
        shared_->malformed.fetch_add(1, std::memory_order_relaxed);
        shared_->protocol_log.warn(context().system().log(), "sharding {}: message for {} of type {:#018x} refused: {}",
                                   settings_.type, id.substr(0, 64), env.type_id(), decoded.error().message());
        return;
      }
      msg = std::move(decoded).value();
    } else {
      msg = Message::copy_of(env.type_id(), payload);
    }
    if (proxy_ || !factory_) return unavailable(m, env, shard_of(settings_.type, id, settings_.num_shards), from, "a proxy hosts no entities");
    ActorRef to = from;
    const auto key = sv(env.idempotency_key());
    if (!key.empty()) {
      switch (first_delivery(id, key, from, to)) {
        case Delivery::first: break;
        case Delivery::repeat: return;
        case Delivery::cache_full:
          return unavailable(m, env, shard_of(settings_.type, id, settings_.num_shards), from,
                             "the reply cache is full of keyed messages still waiting for their entities' replies");
        case Delivery::many_repeats:
          return unavailable(m, env, shard_of(settings_.type, id, settings_.num_shards), from,
                             "many repeats of this keyed message wait for its reply already");
      }
    }
    auto it = entities_.find(id);
    if (it == entities_.end() && (it = activate(id)) == entities_.end()) {
      // Not the entity's answer: the key's entry goes, so that a retry may start it.
      if (!key.empty()) forget_reply(id, key);
      return not_started(id, from);
    }
    auto& e = it->second;
    if (e.passivating) {
      // Bounded as a shard's buffer is (per entity: count and bytes; with the buffers: the
      // region's bounds): an entity that asked to passivate with a backlog, and traffic that
      // keeps coming for it, must not grow this without end.
      const auto& cfg = shared_->config;
      auto& waiting = waiting_[id];
      if (waiting.q.size() >= cfg.buffer_per_shard || waiting.bytes + msg.size() > cfg.buffer_bytes_per_shard ||
          region_full(msg.size())) {
        if (waiting.q.empty()) waiting_.erase(id);
        if (!key.empty()) forget_reply(id, key);
        return unavailable(m, env, shard_of(settings_.type, id, settings_.num_shards), from,
                           "its entity is passivating, and the messages waiting for it reached their bound");
      }
      shared_->buffered.fetch_add(1, std::memory_order_relaxed);
      waiting.bytes += msg.size();
      ++waiting_count_;
      waiting_bytes_ += msg.size();
      waiting.q.emplace_back(std::move(msg), to);
      return;
    }
    e.last_active = activity_tick();
    shared_->routed.fetch_add(1, std::memory_order_relaxed);
    e.ref.tell(std::move(msg), to);
  }

  /// A message with an idempotency key: false when it is a repeat (answered from the reply
  /// cache, or waiting for the first one's reply); otherwise `to` becomes the actor that catches
  /// the entity's reply for the cache and passes it on.
  static std::string cache_key(std::string_view id, std::string_view key) {
    std::string k;
    k.reserve(id.size() + key.size() + 1);
    k.append(id).push_back('\0');
    k.append(key);
    return k;
  }

  /// Answers a message whose entity could not be started (activate() counted and logged it).
  void not_started(std::string_view id, const ActorRef& to) {
    if (to) to.tell(entity_error(settings_.type, id.substr(0, 256), "the entity could not be started"));
  }

  /// Drops the reply cache's entry of a keyed message that found no entity to run it.
  void forget_reply(std::string_view id, std::string_view key) {
    auto it = replies_.find(cache_key(id, key));
    if (it == replies_.end()) return;
    context().stop(it->second.capture);
    captures_.erase(it->second.capture.target());
    replies_.erase(it);
  }

  enum class Delivery { first, repeat, cache_full, many_repeats };
  /// Senders of repeats of one keyed message waiting for its first reply, at most (remote input:
  /// each is kept until the reply or the entry's expiry).
  static constexpr std::size_t kMaxWaiters = 16;
  Delivery first_delivery(std::string_view id, std::string_view key, const ActorRef& from, ActorRef& to) {
    const auto now = context().system().timers().now();
    const auto& cfg = shared_->config;
    // Oldest first: expired entries go, and over the limit answered ones too. One still waiting
    // for its entity's reply is kept (evicting it would lose that reply for its asker, whose
    // retry would then run the message again): it goes to the back and is looked at later (so
    // the order is not quite by expiry: the look-up below skips an expired entry). A bounded
    // number of looks per message: a cache full of waiting entries refuses, it is not searched.
    const std::size_t limit = std::max<std::size_t>(1, cfg.reply_cache_entries);
    for (std::size_t looked = 0, n = std::min<std::size_t>(reply_order_.size(), 64);
         !reply_order_.empty() && looked < n; ++looked) {
      auto it = replies_.find(reply_order_.front());
      if (it != replies_.end()) {
        const bool expired = it->second.expires <= now;
        if (!expired && replies_.size() < limit) break;
        if (!expired && !it->second.reply) {
          reply_order_.push_back(std::move(reply_order_.front()));
          reply_order_.pop_front();
          continue;
        }
        captures_.erase(it->second.capture.target());
        replies_.erase(it);
      }
      reply_order_.pop_front();
    }
    std::string k = cache_key(id, key);
    if (auto it = replies_.find(k); it != replies_.end() && it->second.expires <= now) {
      captures_.erase(it->second.capture.target());  // expired, though not yet purged: gone
      replies_.erase(it);
    }
    if (auto it = replies_.find(k); it != replies_.end()) {
      if (!it->second.reply && from && it->second.waiters.size() >= kMaxWaiters) return Delivery::many_repeats;
      shared_->deduplicated.fetch_add(1, std::memory_order_relaxed);
      if (it->second.reply) {
        if (from) from.tell(it->second.reply);
      } else if (from) {
        it->second.waiters.push_back(from);
      }
      return Delivery::repeat;
    }
    // Every entry still waits for its reply: this message is refused (its sender retries), not
    // run without the cache that makes its retries safe.
    if (replies_.size() >= limit) return Delivery::cache_full;
    to = context().spawn<ReplyCapture>(SpawnOptions{}, self(), k, cfg.reply_cache_ttl);
    captures_.insert(to.target());
    replies_.emplace(k, CachedReply{Message{}, {from}, now + cfg.reply_cache_ttl, to});
    reply_order_.push_back(std::move(k));
    return Delivery::first;
  }

  void on_captured(const CapturedReply& c) {
    if (!c.key()) return;
    auto it = replies_.find(std::string(sv(c.key())));
    if (it == replies_.end() || it->second.reply) return;
    const auto payload = c.payload() ? std::span<const std::uint8_t>(c.payload()->data(), c.payload()->size())
                                     : std::span<const std::uint8_t>{};
    auto reply = Message::copy_of(c.type_id(), payload);
    for (const auto& w : it->second.waiters) {
      if (w) w.tell(reply);
    }
    it->second.waiters.clear();
    // A refusal is not the entity's answer: a retry with the key must be able to run it.
    if (reply.is<ShardUnavailable>()) {
      captures_.erase(it->second.capture.target());
      replies_.erase(it);
      return;
    }
    it->second.reply = std::move(reply);
  }

  /// Starts entity `id`; end() when its factory or constructor threw (counted and logged: the
  /// caller refuses the message).
  Entities::iterator activate(const std::string& id) {
    auto name = entity_child_name(id);
    ActorRef ref;
    try {
      ref = factory_(context(), SpawnOptions{.name = name}, id);
    } catch (const std::exception& ex) {
      shared_->start_failed.fetch_add(1, std::memory_order_relaxed);
      shared_->refused_log.warn(context().system().log(), "sharding {}: entity {} could not start: {}", settings_.type,
                                id.substr(0, 64), ex.what());
      return entities_.end();
    }
    if (name.front() == '~') long_ids_.emplace(std::move(name), id);
    context().watch(ref);
    shared_->activations.fetch_add(1, std::memory_order_relaxed);
    shared_->live.fetch_add(1, std::memory_order_relaxed);
    const auto inc = shared_->incarnations.fetch_add(1, std::memory_order_relaxed) + 1;
    log_activation(id, true, inc);
    const auto shard = static_cast<std::uint16_t>(shard_of(settings_.type, id, settings_.num_shards));  // < 65,536
    return entities_.emplace(id, Entity{ref, inc, activity_tick(), false, false, shard}).first;
  }

  /// The system's timer clock (tests drive it) in ticks of passivate_after / 64 (rounded up),
  /// wrapping at 2^32. Rounded up for a message and down in on_tick, which passivates an entity
  /// 64 ticks after its last message: never before passivate_after, at most a tick later.
  std::uint32_t activity_tick(bool round_up = true) {
    using std::chrono::nanoseconds;
    if (settings_.passivate_after.count() <= 0) return 0;
    const auto tick = (nanoseconds(settings_.passivate_after) + nanoseconds(63)) / 64;
    const auto since = system_->timers().now().time_since_epoch();  // also on the door's thread
    return static_cast<std::uint32_t>((since + (round_up ? tick - nanoseconds(1) : nanoseconds(0))) / tick);
  }

  void log_activation(const std::string& id, bool started, std::uint64_t inc) {
    if (!shared_->config.on_activation) return;
    ActivationEvent ev;
    ev.type = settings_.type;
    ev.id = id;
    ev.shard = shard_of(settings_.type, id, settings_.num_shards);
    if (auto h = hosted_.find(ev.shard); h != hosted_.end()) ev.epoch = h->second.epoch;
    ev.started = started;
    ev.incarnation = inc;
    shared_->config.on_activation(ev);
  }

  void passivate(Entity& e) {
    if (e.passivating) return;
    e.passivating = true;
    shared_->passivations.fetch_add(1, std::memory_order_relaxed);
    // What the entity already has queued is processed first; later messages wait here.
    context().system().stop_after_queued(e.ref);
  }

  /// The entity `ref` is, found from its name (the last segment of its path): no reverse map,
  /// which would cost every idle entity another entry.
  Entities::iterator find(const ActorRef& ref) {
    if (!ref) return entities_.end();
    const auto path = ref.path();
    const auto name = std::string_view(path).substr(path.rfind('/') + 1);
    std::string id;
    if (!name.empty() && name.front() == '~') {
      auto l = long_ids_.find(std::string(name));
      if (l == long_ids_.end()) return entities_.end();
      id = l->second;
    } else {
      id = entity_id_of_name(name);
    }
    auto it = entities_.find(id);
    return it != entities_.end() && it->second.ref == ref ? it : entities_.end();
  }

  /// A hashed name's entry goes with the last activation under that name (an id's name is
  /// always the same, so a later activation may have put it back already).
  void forget_long_name(const ActorRef& who) {
    const auto path = who.path();
    const auto name = std::string_view(path).substr(path.rfind('/') + 1);
    if (name.empty() || name.front() != '~') return;
    auto l = long_ids_.find(std::string(name));
    if (l != long_ids_.end() && !entities_.count(l->second)) long_ids_.erase(l);
  }

  void passivate_sender() {
    if (auto it = find(sender()); it != entities_.end()) passivate(it->second);
  }

  void on_terminated(const ActorRef& who) {
    struct Forget {
      Region* r;
      const ActorRef& who;
      ~Forget() { r->forget_long_name(who); }
    } forget{this, who};
    auto it = find(who);
    if (it == entities_.end()) return;
    const std::string id = it->first;
    auto e = std::move(it->second);
    entities_.erase(it);
    auto waiting = take_waiting(id);
    shared_->live.fetch_sub(1, std::memory_order_relaxed);
    log_activation(id, false, e.incarnation);
    const auto shard = shard_of(settings_.type, id, settings_.num_shards);
    auto h = hosted_.find(shard);
    const bool handing_off = h != hosted_.end() && h->second.stopping;
    if (!waiting.empty()) {
      if (handing_off) {
        // Its shard is moving: what waited goes to the new home with the shard's other messages.
        for (auto& [msg, from] : waiting) {
          auto env = entity_envelope(id, msg.type(), msg.bytes());
          buffer(env, *env.as<EntityEnvelope>(), shard, from);
        }
      } else {
        // Messages that arrived while it stopped start its next activation, in order.
        auto next = activate(id);
        for (auto& [msg, from] : waiting) {
          if (next == entities_.end()) {
            not_started(id, from);
            continue;
          }
          shared_->routed.fetch_add(1, std::memory_order_relaxed);
          next->second.ref.tell(std::move(msg), from);
        }
      }
    }
    if (handing_off && h->second.pending > 0 && --h->second.pending == 0) stopped(shard);
  }

  /// Every entity of a stopping shard has stopped: hand it off, or serve it again if it was
  /// only suspended and this node is back in the majority.
  void stopped(ShardId shard) {
    auto it = hosted_.find(shard);
    if (it == hosted_.end()) return;
    if (it->second.handoff) return finish_handoff(shard);
    if (!suspended_) restart(shard);
  }

  /// Stops the entities of `shard`, each handing its snapshot to this region first. For a
  /// handoff each first processes what it has queued. `at_once` (this node sees itself in a
  /// minority, and the majority may start the shard elsewhere soon) stops each after its
  /// current message instead: a backlog must not keep an activation running past that moment.
  /// What it had queued comes back here (took_back) and waits with the shard's buffer.
  void stop_entities(ShardId shard, Hosted& hs, bool at_once = false) {
    const auto me = self();
    for (auto& [id, e] : entities_) {
      if (shard_of(settings_.type, id, settings_.num_shards) != shard) continue;
      ++hs.pending;
      // What waits for a passivating entity came before anything the stopping shard buffers
      // from now on: it goes first (at its Terminated it would land behind later messages).
      for (auto& [msg, from] : take_waiting(id)) {
        auto env = entity_envelope(id, msg.type(), msg.bytes());
        buffer(env, *env.as<EntityEnvelope>(), shard, from);
      }
      if (at_once) {
        // A passivating entity stops too (its Terminated counts it), without a snapshot.
        const bool snapshot = !e.passivating;
        e.passivating = true;
        stop_at_once(id, e, snapshot);
        continue;
      }
      if (e.passivating) continue;  // stopping already; its Terminated counts it
      e.passivating = true;
      e.hands_state = true;
      context().system().run_with_actor(e.ref, [me, id = id](Actor& a) { send_state(me, id, a); });
      context().system().stop_after_queued(e.ref);
    }
  }

  /// Stops entity `id` after its current message: its snapshot (if `snapshot`), then what it
  /// still had queued followed by `then` (messages that waited for it here) come back to this
  /// region (took_back). False when its last turn has begun already: nothing comes back then.
  bool stop_at_once(const std::string& id, Entity& e, bool snapshot, std::vector<std::pair<Message, ActorRef>> then = {}) {
    auto* sys = &context().system();
    return sys->stop_keeping_queued(e.ref, [me = self(), id, snapshot, sys, then = std::move(then)](
                                               Actor* a, std::vector<std::pair<Message, ActorRef>> q) {
      if (snapshot && a) {
        try {
          send_state(me, id, *a);
        } catch (...) {  // its state is lost (as after a crash); its messages are not
          sys->log().warn("sharding: entity {}: snapshot() threw; its state is not kept", id.substr(0, 64));
        }
      }
      q.insert(q.end(), then.begin(), then.end());
      if (q.empty()) return;
      sys->run_with_actor(me, [id, q = std::move(q)](Actor& r) mutable { static_cast<Region&>(r).took_back(id, std::move(q)); });
    });
  }

  /// An entity's snapshot, to its region (on the entity's turn).
  static void send_state(const ActorRef& region, const std::string& id, Actor& a) {
    auto* ent = dynamic_cast<sharding::Entity*>(&a);
    if (!ent) return;
    auto state = ent->snapshot();
    if (!state) return;
    region.tell(Message::build<EntityState>([&](flatbuffers::FlatBufferBuilder& b) {
      auto i = b.CreateString(id);
      auto p = b.CreateVector(state->bytes().data(), state->size());
      return CreateEntityState(b, i, state->type(), p);
    }));
  }

  /// What an entity stopped at once (stop_entities, fence_shard) still had queued, oldest
  /// first. It came before anything buffered for its shard since the stop, so it goes to the
  /// front of the buffer, whatever the buffer's bounds (it was held in memory already, in the
  /// mailbox; the totals count it, so later messages are refused sooner). If the shard has
  /// moved on (fenced, or this node downed) it goes where any message for the shard goes.
  void took_back(const std::string& id, std::vector<std::pair<Message, ActorRef>> q) {
    const auto shard = shard_of(settings_.type, id, settings_.num_shards);
    auto h = hosted_.find(shard);
    if (down_ || h == hosted_.end() || !h->second.stopping) {
      for (auto& [msg, from] : q) {
        auto env = entity_envelope(id, msg.type(), msg.bytes());
        route(env, *env.as<EntityEnvelope>(), shard, from);
      }
      return;
    }
    auto& b = buffers_[shard];
    for (auto it = q.rbegin(); it != q.rend(); ++it) {
      auto env = entity_envelope(id, it->first.type(), it->first.bytes());
      b.bytes += env.size();
      buffered_bytes_ += env.size();
      b.q.push_front({std::move(env), std::move(it->second)});
    }
    buffered_count_ += q.size();
    shared_->buffered.fetch_add(q.size(), std::memory_order_relaxed);
    shared_->taken_back.fetch_add(q.size(), std::memory_order_relaxed);
  }

  /// Serves a stopped (suspended) shard again: its entities come back with their state.
  void restart(ShardId shard) {
    auto& hs = hosted_.at(shard);
    hs.stopping = false;
    auto states = std::move(hs.states);
    hs.states.clear();
    hs.state_bytes = 0;
    for (auto& [id, state] : states) {
      if (entities_.count(id)) continue;
      auto it = activate(id);
      if (it == entities_.end()) continue;  // counted and logged; its state is lost
      context().system().run_with_actor(it->second.ref, [state = std::move(state)](Actor& a) {
        if (auto* e = dynamic_cast<sharding::Entity*>(&a)) e->restore(state);
      });
    }
    flush_buffers();
  }

  /// This node sees itself in a minority: it stops serving at once, before the majority can
  /// down it and give its shards to others. The entities' state is kept here and they come back
  /// if the majority returns before this node is downed.
  void suspend() {
    if (local_ || suspended_ || down_) return;
    suspended_ = true;
    context().system().log().warn("sharding {}: this node sees itself in a minority: {} shards suspended", settings_.type,
                                  hosted_.size());
    for (auto& [shard, hs] : hosted_) {
      if (hs.stopping) {
        // Stopping for a handoff already, its entities working through their mailboxes: they
        // stop after their current message too. (A snapshot already sent is sent again: the
        // new home restores the first one an entity has.)
        for (auto& [id, e] : entities_) {
          if (e.shard == shard) stop_at_once(id, e, e.hands_state);
        }
        continue;
      }
      hs.stopping = true;
      shared_->suspended.fetch_add(1, std::memory_order_relaxed);
      stop_entities(shard, hs, true);
    }
    publish();
  }

  void resume() {
    if (!suspended_) return;
    suspended_ = false;
    context().system().log().info("sharding {}: back in the majority: serving again", settings_.type);
    std::vector<ShardId> ready;
    for (auto& [shard, hs] : hosted_) {
      if (hs.stopping && !hs.handoff && hs.pending == 0) ready.push_back(shard);
    }
    for (auto shard : ready) restart(shard);
  }

  void on_tick() {
    const auto now = activity_tick(false);
    for (auto& [id, e] : entities_) {
      // The difference is taken modulo 2^32: an active entity is never 2^31 ticks old.
      if (!e.passivating && static_cast<std::int32_t>(now - e.last_active) >= 64) passivate(e);
    }
  }

  // ---- the coordinator's messages ----

  /// True when `coordinator` is the one this node follows and the message came from its node.
  bool from_coordinator(std::uint64_t coordinator) {
    const auto current = shared_->coordinator.load(std::memory_order_acquire);
    bool ok = coordinator != 0 && coordinator == current && sender();
    if (ok) {
      auto a = remoting::parse_actor_address(shared_->transport->address_of(sender()));
      ok = a && a->node.uid == coordinator;
    }
    if (!ok) {
      shared_->stale_coordinator.fetch_add(1, std::memory_order_relaxed);
      shared_->protocol_log.warn(context().system().log(),
                                 "sharding {}: ignored a coordinator message for coordinator {} (following {})",
                                 settings_.type, remoting::format_uid(coordinator), remoting::format_uid(current));
    }
    return ok;
  }

  void on_table(const ShardTableUpdate& t) {
    if (local_ || !from_coordinator(t.coordinator())) return;
    const auto reply_to = sender();
    auto ack = [&] {
      reply_to.tell(Message::build<TableAck>([&](flatbuffers::FlatBufferBuilder& b) {
        return CreateTableAck(b, b.CreateString(settings_.type), table_coordinator_, table_version_, shared_->self_uid);
      }), self());
    };
    if (t.coordinator() == table_coordinator_ && t.version() <= table_version_) return ack();
    const auto n = settings_.num_shards;
    if (t.num_shards() != n || !t.owner() || !t.epoch() || !t.moving() || t.owner()->size() != n ||
        t.epoch()->size() != n || t.moving()->size() != n || !t.regions() || t.regions()->size() > 0xffff) {
      shared_->malformed.fetch_add(1, std::memory_order_relaxed);
      shared_->protocol_log.warn(context().system().log(), "sharding {}: a shard table that does not fit this type "
                                 "({} shards here, {} in the table); dropped", settings_.type, n, t.num_shards());
      return;
    }
    // Regions: reuse the refs of addresses seen before.
    std::vector<std::string> addrs;
    std::vector<ActorRef> refs;
    int self_index = -1;
    for (const auto* a : *t.regions()) {
      addrs.emplace_back(a ? a->str() : std::string());
      const auto& s = addrs.back();
      if (!proxy_ && s == my_address_) self_index = static_cast<int>(addrs.size()) - 1;
      ActorRef ref;
      for (std::size_t i = 0; i < region_addrs_.size() && !ref; ++i) {
        if (region_addrs_[i] == s) ref = regions_[i];
      }
      if (!ref) {
        // A program that is not a member (a sharding client) learns the nodes' keys here.
        const auto k = addrs.size() - 1;
        if (t.region_keys() && k < t.region_keys()->size() && t.region_keys()->Get(k)->size() > 0) {
          if (auto addr = remoting::parse_actor_address(s)) {
            shared_->transport->learn_peer_key(addr->node.endpoint(), t.region_keys()->Get(k)->string_view(), addr->node.uid);
          }
        }
        if (auto r = shared_->transport->resolve(s)) ref = *r;
      }
      refs.push_back(ref);
    }
    for (std::uint32_t s = 0; s < n; ++s) {
      const auto o = t.owner()->Get(s);
      if (o > refs.size() || (o != 0 && !refs[o - 1])) {
        shared_->malformed.fetch_add(1, std::memory_order_relaxed);
        shared_->protocol_log.warn(context().system().log(), "sharding {}: a shard table with a bad region for shard {}; dropped",
                                   settings_.type, s);
        return;
      }
    }
    table_coordinator_ = t.coordinator();
    table_version_ = t.version();
    region_addrs_ = std::move(addrs);
    regions_ = std::move(refs);
    self_index_ = self_index;
    owner_.assign(t.owner()->begin(), t.owner()->end());
    epoch_.assign(t.epoch()->begin(), t.epoch()->end());
    moving_.assign(t.moving()->begin(), t.moving()->end());
    std::uint64_t max_epoch = 0;
    for (auto e : epoch_) max_epoch = std::max(max_epoch, e);
    shared_->note_epoch(max_epoch);
    shared_->tables_applied.fetch_add(1, std::memory_order_relaxed);

    // Shards allocated elsewhere stop at once (fenced); shards allocated here start.
    std::vector<ShardId> fence;
    for (auto& [shard, h] : hosted_) {
      const bool mine = owner_[shard] != 0 && static_cast<int>(owner_[shard]) - 1 == self_index_ && epoch_[shard] == h.epoch;
      if (!mine) {
        fence.push_back(shard);
      } else if (h.handoff && !moving_[shard]) {
        // Handing off for a coordinator that is gone: its successor built this table from the
        // reports, where the shard was still here, and leaves it here. The entities that are
        // stopping come back with their state once all have stopped (stopped()); finishing the
        // handoff would leave the shard with no home until another table.
        h.handoff = false;
        h.reply_to = ActorRef{};
        shared_->handoffs_called_off.fetch_add(1, std::memory_order_relaxed);
        context().system().log().info("sharding {}: the handoff of shard {} was called off: the coordinator's "
                                      "table keeps it here", settings_.type, shard);
      }
    }
    for (auto shard : fence) fence_shard(shard, "allocated elsewhere by the coordinator");
    // A newer allocation, or none (the coordinator found no member to take the shard and
    // dropped its states): nobody will ask again.
    std::erase_if(stopped_answers_, [&](const auto& kv) { return epoch_[kv.first] > kv.second.first || owner_[kv.first] == 0; });
    // A downed node hosts nothing more, whatever a table sent before its downing says.
    if (self_index_ >= 0 && !down_) {
      for (ShardId s = 0; s < n; ++s) {
        if (owner_[s] == static_cast<unsigned>(self_index_ + 1) && !moving_[s] && !hosted_.count(s)) host(s, epoch_[s]);
      }
    }
    // Buffered messages leave before callers may send past the region (publish).
    flush_buffers();
    publish();
    ack();
  }

  void host(ShardId shard, std::uint64_t epoch) {
    if (down_) return;
    auto& hs = hosted_[shard];
    hs.epoch = epoch;
    std::vector<std::pair<std::string, Message>> states;
    if (auto st = pending_states_.find(shard); st != pending_states_.end()) {
      if (st->second.first == epoch) states = std::move(st->second.second);
      pending_states_.erase(st);
    }
    shared_->states_restored.fetch_add(states.size(), std::memory_order_relaxed);
    hs.states = std::move(states);
    if (suspended_) {
      hs.stopping = true;  // in a minority: held (messages wait) until the majority is back
      return;
    }
    // Entities with handed-over state start now and restore it before any message.
    restart(shard);
  }

  void on_state(const ShardState& st) {
    if (local_ || proxy_ || !from_coordinator(st.coordinator())) return;
    std::vector<std::pair<std::string, Message>> states;
    if (st.states()) {
      for (const auto* s : *st.states()) {
        if (!s || !s->entity_id() || !s->payload()) continue;
        auto decoded = context().system().registry().decode(
            s->type_id(), std::span<const std::uint8_t>(s->payload()->data(), s->payload()->size()));
        if (!decoded) {
          shared_->malformed.fetch_add(1, std::memory_order_relaxed);
          continue;
        }
        states.emplace_back(s->entity_id()->str(), std::move(decoded).value());
      }
    }
    pending_states_[st.shard()] = {st.epoch(), std::move(states)};
  }

  void on_handoff(const HandOff& h) {
    if (local_ || !from_coordinator(h.coordinator())) return;
    const auto shard = h.shard();
    auto it = hosted_.find(shard);
    if (it == hosted_.end() || it->second.epoch != h.epoch()) {
      // Not here (any more): done already (the same answer again), or never was.
      auto done = stopped_answers_.find(shard);
      if (done != stopped_answers_.end() && done->second.first == h.epoch()) {
        sender().tell(done->second.second, self());
      } else {
        sender().tell(stopped_message(shard, h.epoch(), {}), self());
      }
      return;
    }
    auto& hs = it->second;
    hs.reply_to = sender();
    if (hs.handoff) return;
    hs.handoff = true;
    shared_->handoffs.fetch_add(1, std::memory_order_relaxed);
    if (!hs.stopping) {
      hs.stopping = true;
      stop_entities(shard, hs);
    }
    if (hs.pending == 0) finish_handoff(shard);
  }

  void on_entity_state(const EntityState& es) {
    if (sender() || !es.entity_id()) return;  // sent by our entities' snapshot hook only (no sender)
    const auto id = es.entity_id()->string_view();
    auto it = hosted_.find(shard_of(settings_.type, id, settings_.num_shards));
    if (it == hosted_.end() || !it->second.stopping || !es.payload()) return;
    auto& hs = it->second;
    if (hs.state_bytes + es.payload()->size() > kMaxStateBytes) {
      shared_->malformed.fetch_add(1, std::memory_order_relaxed);
      shared_->protocol_log.warn(context().system().log(), "sharding {}: the state of {} does not fit the handoff; dropped",
                                 settings_.type, id.substr(0, 64));
      return;
    }
    hs.state_bytes += es.payload()->size();
    hs.states.emplace_back(std::string(id), Message::copy_of(es.type_id(), std::span<const std::uint8_t>(
                                                                            es.payload()->data(), es.payload()->size())));
  }

  Message stopped_message(ShardId shard, std::uint64_t epoch, const std::vector<std::pair<std::string, Message>>& states) {
    return Message::build<ShardStopped>([&](flatbuffers::FlatBufferBuilder& b) {
      std::vector<flatbuffers::Offset<EntityState>> v;
      for (const auto& [id, m] : states) {
        v.push_back(CreateEntityState(b, b.CreateString(id), m.type(), b.CreateVector(m.bytes().data(), m.size())));
      }
      return CreateShardStopped(b, b.CreateString(settings_.type), shard, epoch, b.CreateVector(v), shared_->self_uid);
    });
  }

  void finish_handoff(ShardId shard) {
    auto it = hosted_.find(shard);
    if (it == hosted_.end()) return;
    auto hs = std::move(it->second);
    hosted_.erase(it);
    context().system().log().info("sharding {}: shard {} handed off ({} entity states)", settings_.type, shard,
                                  hs.states.size());
    auto answer = stopped_message(shard, hs.epoch, hs.states);
    if (hs.reply_to) hs.reply_to.tell(answer, self());
    stopped_answers_.insert_or_assign(shard, std::pair{hs.epoch, std::move(answer)});
    // Buffered messages leave before callers may send past the region (publish).
    flush_buffers();
    publish();
  }

  /// Stops a shard's entities at once, without handing anything over.
  void fence_shard(ShardId shard, const char* why) {
    shared_->fenced.fetch_add(1, std::memory_order_relaxed);
    context().system().log().warn("sharding {}: stopped serving shard {}: {}", settings_.type, shard, why);
    hosted_.erase(shard);
    for (auto& [id, e] : entities_) {
      if (shard_of(settings_.type, id, settings_.num_shards) != shard) continue;
      e.passivating = true;
      std::vector<std::pair<Message, ActorRef>> waited;
      auto w = take_waiting(id);
      waited.assign(std::make_move_iterator(w.begin()), std::make_move_iterator(w.end()));
      // It stops after its current message. What it had queued, then what waited for it here,
      // goes where any message for the shard goes now (took_back): to its new home, into the
      // buffer, or refused (counted, the sender told) when this node is down.
      if (!stop_at_once(id, e, false, waited) && !waited.empty()) took_back(id, std::move(waited));  // it is gone already
    }
  }

  void fence_all() {
    if (local_ || down_) return;
    down_ = true;
    std::vector<ShardId> all;
    for (const auto& [shard, h] : hosted_) all.push_back(shard);
    for (auto shard : all) fence_shard(shard, "this node was downed");
    publish();
    // Whatever waited can no longer be delivered by this node.
    auto buffers = std::move(buffers_);
    buffers_.clear();
    buffered_count_ = buffered_bytes_ = 0;
    for (auto& [shard, b] : buffers) {
      for (auto& p : b.q) unavailable(p.env, *p.env.as<EntityEnvelope>(), shard, p.from, "this node was downed");
    }
  }

  /// Makes this region's hosted shards and table visible to the node (reports, inspection).
  void publish() {
    std::vector<ShardInfo> table;
    table.reserve(owner_.size());
    for (ShardId s = 0; s < owner_.size(); ++s) {
      ShardInfo i;
      i.shard = s;
      i.epoch = epoch_[s];
      i.region = owner_[s] ? region_addrs_[owner_[s] - 1] : std::string();
      i.moving = moving_[s] != 0;
      i.hosted_here = hosted_.count(s) > 0;
      table.push_back(std::move(i));
    }
    auto route = std::make_shared<Sharding::Shared::Route>();
    route->regions = regions_;
    route->owner = owner_;
    route->epoch = epoch_;
    route->moving = moving_;
    route->self_index = self_index_;
    route->usable = !local_ && !down_ && !owner_.empty();
    std::lock_guard lk(shared_->mu);
    auto it = shared_->types.find(settings_.type);
    if (it == shared_->types.end()) return;
    it->second.hosted.clear();
    for (const auto& [shard, h] : hosted_) it->second.hosted.emplace(shard, h.epoch);
    it->second.table = std::move(table);
    it->second.route = std::move(route);
    shared_->route_gen.fetch_add(1, std::memory_order_release);
    shared_->hosted_changed.notify_all();
  }

  EntitySettings settings_;
  EntityFactory factory_;
  std::shared_ptr<Sharding::Shared> shared_;
  std::shared_ptr<std::atomic<std::int64_t>> in_region_;
  std::shared_ptr<RegionDoor> door_;
  ActorSystem* system_ = nullptr;
  const bool proxy_;
  const bool local_;
  bool down_ = false;
  bool suspended_ = false;  // this node sees itself in a minority
  std::string my_address_;
  Entities entities_;
  // Messages for entities that are passivating (few at a time): they start the next activation.
  struct Waiting {
    std::deque<std::pair<Message, ActorRef>> q;
    std::size_t bytes = 0;
  };
  std::unordered_map<std::string, Waiting> waiting_;
  std::size_t waiting_count_ = 0, waiting_bytes_ = 0;  // all of waiting_ (with the buffers': the region's bounds)

  /// No room in the region's bounds (its shards' buffers and what waits for passivating
  /// entities, together) for one more message of `bytes`.
  bool region_full(std::size_t bytes) const {
    const auto& cfg = shared_->config;
    return buffered_count_ + waiting_count_ >= cfg.buffer_per_region ||
           buffered_bytes_ + waiting_bytes_ + bytes > cfg.buffer_bytes_per_region;
  }

  /// What waits for entity `id` (oldest first), taken out of waiting_.
  std::deque<std::pair<Message, ActorRef>> take_waiting(const std::string& id) {
    std::deque<std::pair<Message, ActorRef>> out;
    if (auto w = waiting_.find(id); w != waiting_.end()) {
      out = std::move(w->second.q);
      waiting_count_ -= out.size();
      waiting_bytes_ -= w->second.bytes;
      waiting_.erase(w);
    }
    return out;
  }
  // The table as this region last accepted it.
  std::uint64_t table_coordinator_ = 0, table_version_ = 0;
  std::vector<std::string> region_addrs_;
  std::vector<ActorRef> regions_;
  int self_index_ = -1;
  std::vector<std::uint16_t> owner_;
  std::vector<std::uint64_t> epoch_;
  std::vector<std::uint8_t> moving_;
  std::unordered_map<ShardId, Hosted> hosted_;
  std::unordered_map<ShardId, std::pair<std::uint64_t, std::vector<std::pair<std::string, Message>>>> pending_states_;
  // The ShardStopped of each shard handed off from here (epoch, message), until a table gives the
  // shard a newer epoch: a HandOff sent again because the first answer was lost gets the same
  // answer, entity states and all (an empty one would lose them without a word).
  std::unordered_map<ShardId, std::pair<std::uint64_t, Message>> stopped_answers_;
  std::unordered_map<ShardId, Buffer> buffers_;
  std::size_t buffered_count_ = 0, buffered_bytes_ = 0;
  // Replies to keyed messages ("<id>\0<key>"), oldest first in reply_order_.
  struct CachedReply {
    Message reply;                  // empty while the first delivery has not been answered
    std::vector<ActorRef> waiters;  // who asked meanwhile
    TimerService::Clock::time_point expires;
    ActorRef capture;               // the ReplyCapture that waits for the entity's reply
  };
  // The captures' targets (entries of replies_ only): a message whose sender is one of them
  // came through the cache with an idempotency key it no longer carries.
  std::unordered_set<const void*> captures_;
  std::unordered_map<std::string, CachedReply> replies_;
  std::deque<std::string> reply_order_;
  // Entities whose ids are too long for a child name: hashed name -> id (entity_child_name).
  std::unordered_map<std::string, std::string> long_ids_;
};

}  // namespace

std::string entity_child_name(std::string_view id) {
  constexpr std::size_t kMaxName = 255;  // an actor name's limit
  std::string out;
  out.reserve(id.size());
  for (unsigned char c : id) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-') {
      out.push_back(static_cast<char>(c));
    } else {
      out += fmt::format("%{:02X}", c);
    }
  }
  if (out.size() <= kMaxName) return out;
  // Too long once escaped ('~' is always escaped, so no plain name starts with it).
  auto hashed = fmt::format("~{:016x}~", XXH3_64bits(id.data(), id.size()));
  hashed.append(out, 0, kMaxName - hashed.size());
  return hashed;
}

std::string entity_id_of_name(std::string_view name) {
  if (!name.empty() && name.front() == '~') return {};
  std::string out;
  out.reserve(name.size());
  for (std::size_t i = 0; i < name.size(); ++i) {
    if (name[i] == '%' && i + 2 < name.size()) {
      auto hex = [](char c) { return c <= '9' ? c - '0' : (c & ~0x20) - 'A' + 10; };
      out.push_back(static_cast<char>(hex(name[i + 1]) * 16 + hex(name[i + 2])));
      i += 2;
    } else {
      out.push_back(name[i]);
    }
  }
  return out;
}

namespace {
void register_messages(MessageRegistry& r) {
  r.add<EntityEnvelope>();
  r.add<EntityError>();
  r.add<Passivate>();
  r.add<ShardUnavailable>();
  r.add<ContactFound>();
  // The protocol between regions and the coordinator: each receiver acts on who sent it (the
  // node a report, an ack or a stopped shard is about; the coordinator a table or a hand-off
  // comes from), so a remote one counts only when its sender is an actor of the node it came
  // from.
  r.add_origin_bound<NodeReport>();
  r.add_origin_bound<ReportRequest>();
  r.add_origin_bound<ReportAck>();
  r.add_origin_bound<ShardTableUpdate>();
  r.add_origin_bound<TableAck>();
  r.add_origin_bound<HandOff>();
  r.add_origin_bound<EntityState>();
  r.add_origin_bound<ShardStopped>();
  r.add_origin_bound<ShardState>();
  r.add_origin_bound<SideHeartbeat>();
}
}  // namespace

Sharding::Sharding(ActorSystem& system, ClusterShardingConfig config) : system_(system), shared_(std::make_shared<Shared>()) {
  shared_->system = &system;
  shared_->config = std::move(config);
  register_messages(system_.registry());
}

Sharding::Sharding(ActorSystem& system, remoting::Transport& transport, membership::MembershipService& membership,
                   ClusterShardingConfig config)
    : system_(system), shared_(std::make_shared<Shared>()) {
  auto& s = *shared_;
  s.system = &system;
  s.transport = &transport;
  s.membership = &membership;
  s.config = std::move(config);
  s.self_uid = transport.address().uid;
  s.self_address = transport.address().to_string();
  if (s.config.down_margin.count() < 0) s.config.down_margin = membership.config().stable_after / 2;
  if (s.config.minority_after.count() < 0) {
    s.config.minority_after = std::max(std::chrono::milliseconds(1'000), membership.config().stable_after * 3 / 10);
  }
  register_messages(system_.registry());
  s.coordinator_actor = system_.spawn_system<Coordinator>(SpawnOptions{.name = kCoordinatorName}, shared_);
  std::weak_ptr<Shared> weak = shared_;
  membership.subscribe([weak](const membership::MembershipEvent& e) {
    if (auto sh = weak.lock()) on_membership_event(*sh, e);
  });
  // Members known already. The snapshot is taken without holding `mu`: it waits for the gossip
  // thread, which may be delivering an event that needs `mu`.
  const auto members = membership.members();
  {
    std::lock_guard lk(s.mu);
    for (const auto& m : members) s.members.emplace(m.uid, m);
    s.recompute_coordinator_locked();
  }
  s.coordinator_actor.tell(membership_tick());
}

Sharding::Sharding(ClientMode, ActorSystem& system, remoting::Transport& transport, ClusterShardingConfig config)
    : system_(system), shared_(std::make_shared<Shared>()) {
  auto& s = *shared_;
  s.system = &system;
  s.transport = &transport;
  s.client_mode = true;
  s.config = std::move(config);
  s.self_uid = transport.address().uid;
  s.self_address = transport.address().to_string();
  register_messages(system_.registry());
}

namespace {

/// Messages from other nodes for the region of `type` arrive through this inbox (on the
/// transport's I/O thread): a keyed one goes through the region's front door when it can,
/// otherwise into the region's mailbox as an EntityEnvelope; every EntityEnvelope put into the
/// mailbox is counted in in_region (the region counts it out when it handled it).
void install_inbox(Sharding::Shared& sh, const std::string& type, const ActorRef& region,
                   const Sharding::Shared::TypeEntry& e) {
  if (!sh.cluster()) return;
  sh.transport->set_inbox("/system/" + region_name(type), [door = e.door, in_region = e.in_region, region,
                                                           type](std::span<remoting::Transport::Inbound> run) {
    // The door, once a run: it takes what it can from the front; once one message went to the
    // region's mailbox, the rest of the run follows it there (in_region is no longer 0).
    std::size_t k = 0;
    if (run.front().route && in_region->load(std::memory_order_acquire) == 0 && door->mu.try_lock_shared()) {
      if (door->fast) k = door->fast(run);
      door->mu.unlock_shared();
    }
    for (auto& in : run.subspan(k)) {
      if (in.route) {
        const auto& r = *in.route;
        in_region->fetch_add(1, std::memory_order_acq_rel);
        region.tell(entity_envelope(r.entity_id, in.msg.type(), in.msg.bytes(), type, r.shard, r.epoch, r.hops),
                    std::move(in.sender));
        continue;
      }
      if (in.msg.is<EntityEnvelope>()) in_region->fetch_add(1, std::memory_order_acq_rel);
      region.tell(std::move(in.msg), std::move(in.sender));
    }
  });
}

/// Spawns the region of a new entity type (hosting, or a proxy without a factory), opens its
/// inbox and publishes the type to callers' route caches; the coordinator is asked for a report.
ActorRef add_type(ActorSystem& system, const std::shared_ptr<Sharding::Shared>& shared, EntitySettings settings,
                  EntityFactory factory, bool proxy) {
  ActorRef region;
  {
    std::lock_guard lk(shared->mu);
    if (shared->types.count(settings.type)) throw std::invalid_argument("entity type '" + settings.type + "' started twice");
    Sharding::Shared::TypeEntry entry;
    entry.settings = settings;
    entry.proxy = proxy;
    region = system.spawn_system<Region>(SpawnOptions{.name = region_name(settings.type)}, settings, std::move(factory),
                                         shared, proxy, entry.in_region, entry.door);
    install_inbox(*shared, settings.type, region, entry);
    entry.region = region;
    shared->types.emplace(settings.type, std::move(entry));
    shared->route_gen.fetch_add(1, std::memory_order_release);
  }
  if (shared->coordinator_actor) shared->coordinator_actor.tell(report_again());
  return region;
}

}  // namespace

Sharding::~Sharding() {
  // Membership may still call the subscription; it holds only a weak reference.
  if (!shared_->cluster()) return;
  std::lock_guard lk(shared_->mu);
  for (const auto& [name, t] : shared_->types) shared_->transport->set_inbox("/system/" + region_name(name), {});
}

ActorRef Sharding::start(EntitySettings settings, EntityFactory factory) {
  if (settings.type.empty() || settings.type.size() > 128) throw std::invalid_argument("EntitySettings.type: 1 to 128 characters");
  if (settings.num_shards == 0 || settings.num_shards > 65'536) {
    throw std::invalid_argument("EntitySettings.num_shards: 1 to 65536");
  }
  if (settings.max_id_bytes == 0) throw std::invalid_argument("EntitySettings.max_id_bytes: at least 1");
  if (!factory) throw std::invalid_argument("an entity factory is required");
  if (shared_->client_mode) throw std::invalid_argument("a sharding client hosts no entities (use start_proxy)");
  return add_type(system_, shared_, std::move(settings), std::move(factory), false);
}

ActorRef Sharding::start_proxy(std::string type, std::uint32_t num_shards, std::size_t max_id_bytes) {
  if (!shared_->cluster()) throw std::invalid_argument("start_proxy needs cluster sharding");
  EntitySettings settings;
  settings.type = std::move(type);
  settings.num_shards = num_shards;
  settings.max_id_bytes = max_id_bytes;
  settings.passivate_after = std::chrono::milliseconds(0);
  if (settings.type.empty() || settings.type.size() > 128) throw std::invalid_argument("proxy type: 1 to 128 characters");
  if (num_shards == 0 || num_shards > 65'536) throw std::invalid_argument("proxy num_shards: 1 to 65536");
  if (max_id_bytes == 0) throw std::invalid_argument("proxy max_id_bytes: at least 1");
  return add_type(system_, shared_, std::move(settings), EntityFactory{}, true);
}

namespace {

/// Routes `msg` to entity (type, id) through this node's region of the type, or answers
/// `sender` with EntityError. `msg` is moved from when it goes out as it is (keyed).
void route(ActorSystem& system, Sharding::Shared& shared, std::string_view type, std::string_view id,
           Message& msg, const ActorRef& sender, std::string_view key = {}) {
  // What the last call on this thread routed by, while the tables have not changed since (a
  // sender usually sends many messages of one type): no lock and no reference counting then.
  struct Cached {
    std::uint64_t shared_id = 0, gen = 0;
    std::string type;
    ActorRef region;
    std::size_t max_id = 0;
    std::uint32_t num_shards = 0;
    std::uint64_t type_hash = 0;
    std::shared_ptr<const Sharding::Shared::Route> table;
    std::shared_ptr<std::atomic<std::int64_t>> in_region;
  };
  thread_local Cached cache;
  thread_local bool busy = false;  // a send below that re-enters route() gets a copy of its own
  Cached own;
  Cached& c = busy ? own : cache;
  if (c.shared_id != shared.id || c.gen != shared.route_gen.load(std::memory_order_acquire) || c.type != type) {
    std::lock_guard lk(shared.mu);
    c = Cached{};
    c.shared_id = shared.id;
    c.gen = shared.route_gen.load(std::memory_order_relaxed);
    c.type = type;
    c.type_hash = type_hash(type);
    if (auto it = shared.types.find(c.type); it != shared.types.end()) {
      c.region = it->second.region;
      c.max_id = it->second.settings.max_id_bytes;
      c.num_shards = it->second.settings.num_shards;
      c.table = it->second.route;
      c.in_region = it->second.in_region;
    }
  }
  struct Busy {
    bool& b;
    bool was;
    ~Busy() { b = was; }
  } guard{busy, std::exchange(busy, true)};
  const ActorRef& region = c.region;
  const std::size_t max_id = c.max_id;
  const std::uint32_t num_shards = c.num_shards;
  const auto& table = c.table;
  const auto& in_region = c.in_region;
  std::string why;
  if (!region) {
    shared.unknown_type.fetch_add(1, std::memory_order_relaxed);
    why = fmt::format("unknown entity type '{}' on this node", type);
  } else if (id.empty() || id.size() > max_id) {
    shared.bad_id.fetch_add(1, std::memory_order_relaxed);
    why = fmt::format("entity id must be 1 to {} bytes (got {})", max_id, id.size());
  }
  if (!why.empty()) {
    shared.refused_log.warn(system.log(), "sharding: refused a message for {}/{}: {}", type,
                            id.substr(0, std::min<std::size_t>(id.size(), 64)), why);
    if (sender) sender.tell(entity_error(type, id.substr(0, std::min<std::size_t>(id.size(), 256)), why));
    return;
  }
  // Straight to a remote owner from the region's table, when nothing of ours waits in the
  // region (see Shared::TypeEntry::route).
  if (table && table->usable && in_region->load(std::memory_order_acquire) == 0) {
    const auto shard = shard_of_seeded(c.type_hash, id, num_shards);
    const auto o = shard < table->owner.size() ? table->owner[shard] : 0;
    if (o != 0 && !table->moving[shard] && static_cast<int>(o) - 1 != table->self_index) {
      shared.forwarded.fetch_add(1, std::memory_order_relaxed);
      // Keyed: the entity's id and stamps ride in the transport's envelope, the message as it
      // is (no second buffer around it); a retrying ask's key needs the EntityEnvelope.
      if (key.empty() && shared.transport->tell_keyed(table->regions[o - 1], std::move(msg), sender,
                                                      remoting::KeyedRoute{id, shard, table->epoch[shard], 1})) {
        return;
      }
      table->regions[o - 1].tell(entity_envelope(id, msg.type(), msg.bytes(), type, shard, table->epoch[shard], 1, key),
                                 sender);
      return;
    }
  }
  in_region->fetch_add(1, std::memory_order_acq_rel);
  region.tell(entity_envelope(id, msg.type(), msg.bytes(), {}, 0, 0, 0, key), sender);
}

/// One ask: forwards the question with the ask's reply address as the sender, then stops.
class AskForwarder final : public Actor {
 public:
  AskForwarder(std::shared_ptr<Sharding::Shared> shared, std::string type, std::string id, std::string key = {})
      : shared_(std::move(shared)), type_(std::move(type)), id_(std::move(id)), key_(std::move(key)) {}
  void receive(const Message& m) override {
    Message question = m;
    route(context().system(), *shared_, type_, id_, question, sender(), key_);
    context().stop(self());
  }

 private:
  std::shared_ptr<Sharding::Shared> shared_;
  std::string type_, id_, key_;
};

/// An ask with retries: each attempt is an ask of its own (the same idempotency key), the next
/// one after a timeout or ShardUnavailable, with a growing pause; the first other answer, or
/// the last ShardUnavailable, goes to the asker. Attempts end by `deadline` (what the asker waits,
/// less a margin): a pause longer than a node's retry_after allows is cut short, and with no
/// room for another whole attempt the last ShardUnavailable goes to the asker at once (the asker
/// got a timeout meanwhile, and an attempt after it could run the message behind its back).
class RetryingAsk final : public Actor {
 public:
  RetryingAsk(std::shared_ptr<Sharding::Shared> shared, std::string type, std::string id, AskOptions o,
              TimerService::Clock::time_point deadline)
      : shared_(std::move(shared)), type_(std::move(type)), id_(std::move(id)), o_(std::move(o)), pause_(o_.backoff),
        deadline_(deadline) {}

  void receive(const Message& m) override {
    if (m.is<RetryTick>()) return attempt();
    if (!question_) {
      question_ = m;
      reply_to_ = sender();
      attempt();
    }
  }

 private:
  void attempt() {
    if (++made_ > 1) shared_->retries.fetch_add(1, std::memory_order_relaxed);
    // Each attempt's reply address is an ask of this actor's own: it routes like any message.
    auto relay = context().system().spawn_system<AskForwarder>(SpawnOptions{}, shared_, type_, id_, o_.idempotency_key);
    context().ask(relay, question_, o_.timeout, [this](Result<Message> r) { on_result(std::move(r)); });
  }
  void on_result(Result<Message> r) {
    const auto* u = r ? r->as<ShardUnavailable>() : nullptr;
    if ((r && !u) || made_ >= o_.attempts) {
      if (r) reply_to_.tell(*r);  // after the last timeout the asker's own ask times out
      context().stop(self());
      return;
    }
    std::chrono::nanoseconds wait = pause_;
    if (u) wait = std::max(wait, std::chrono::nanoseconds(std::chrono::milliseconds(u->retry_after_ms())));
    pause_ *= 2;
    const auto room = deadline_ - context().system().timers().now() - std::chrono::nanoseconds(o_.timeout);
    if (room <= std::chrono::nanoseconds(0)) {
      if (r) reply_to_.tell(*r);
      context().stop(self());
      return;
    }
    context().schedule_once(std::min(wait, room), Message::build<RetryTick>([](auto& b) { return CreateRetryTick(b); }));
  }

  std::shared_ptr<Sharding::Shared> shared_;
  std::string type_, id_;
  AskOptions o_;
  std::chrono::milliseconds pause_;
  Message question_;
  ActorRef reply_to_;
  unsigned made_ = 0;
  TimerService::Clock::time_point deadline_;
};

}  // namespace

void Sharding::tell(std::string_view type, std::string_view id, Message msg, const ActorRef& sender) {
  route(system_, *shared_, type, id, msg, sender);
}

std::future<Result<Message>> Sharding::ask(std::string_view type, std::string_view id, const Message& msg,
                                           std::chrono::milliseconds timeout) {
  auto fwd = system_.spawn_system<AskForwarder>(SpawnOptions{}, shared_, std::string(type), std::string(id));
  return fwd.ask(msg, timeout);
}

std::future<Result<Message>> Sharding::ask(std::string_view type, std::string_view id, const Message& msg,
                                           AskOptions options) {
  options.attempts = std::max(1u, options.attempts);
  if (options.idempotency_key.empty() && options.attempts > 1) {
    thread_local std::mt19937_64 rng{std::random_device{}()};
    options.idempotency_key = fmt::format("{:016x}{:016x}", rng(), rng());
  }
  // The asker waits for every attempt and the pauses between them (doubling, or a longer
  // retry_after), plus a little.
  constexpr std::chrono::milliseconds kMargin{500};
  auto total = options.timeout * options.attempts + kMargin;
  auto pause = options.backoff;
  for (unsigned i = 1; i < options.attempts; ++i, pause *= 2) {
    total += std::max(pause, shared_->config.retry_after);
  }
  // The attempts end within the asker's wait, counted from now (the actor's first turn may be later).
  const auto deadline = system_.timers().now() + (total - kMargin);
  auto r = system_.spawn_system<RetryingAsk>(SpawnOptions{}, shared_, std::string(type), std::string(id), std::move(options),
                                             deadline);
  return r.ask(msg, total);
}

bool Sharding::hand_off_all(std::chrono::milliseconds timeout) {
  if (!shared_->cluster()) return true;
  shared_->leaving.store(true, std::memory_order_release);
  shared_->coordinator_actor.tell(report_again());
  std::unique_lock lk(shared_->mu);
  return shared_->hosted_changed.wait_for(lk, timeout, [&] {
    bool others = false;  // alone, there is nobody to hand shards to
    for (const auto& [uid, m] : shared_->members) {
      others |= uid != shared_->self_uid && m.status == membership::MemberStatus::up;
    }
    if (!others) return true;
    for (const auto& [name, t] : shared_->types) {
      if (!t.hosted.empty()) return false;
    }
    return true;
  });
}

std::vector<ShardInfo> Sharding::shards(std::string_view type) const {
  std::lock_guard lk(shared_->mu);
  auto it = shared_->types.find(std::string(type));
  if (it == shared_->types.end()) return {};
  if (!shared_->cluster()) {
    std::vector<ShardInfo> out(it->second.settings.num_shards);
    for (ShardId s = 0; s < out.size(); ++s) {
      out[s].shard = s;
      out[s].hosted_here = true;
    }
    return out;
  }
  return it->second.table;
}

std::uint64_t Sharding::coordinator() const { return shared_->coordinator.load(std::memory_order_acquire); }

std::vector<ShardMove> Sharding::shard_history(std::string_view type, ShardId shard) const {
  std::lock_guard lk(shared_->mu);
  auto it = shared_->move_log.find({std::string(type), shard});
  return it == shared_->move_log.end() ? std::vector<ShardMove>() : it->second;
}

ShardingStats Sharding::stats() const {
  const auto& s = *shared_;
  ShardingStats out;
  out.front_door = s.front_door.load();
  out.routed = s.routed.load() + out.front_door;
  out.activations = s.activations.load();
  out.passivations = s.passivations.load();
  out.buffered = s.buffered.load();
  out.unknown_type = s.unknown_type.load();
  out.bad_id = s.bad_id.load();
  out.start_failed = s.start_failed.load();
  out.live_entities = s.live.load();
  out.forwarded = s.forwarded.load();
  out.rerouted = s.rerouted.load();
  out.stale_epoch = s.stale_epoch.load();
  out.unavailable = s.unavailable.load();
  out.dropped_no_sender = s.dropped_no_sender.load();
  out.handoffs = s.handoffs.load();
  out.handoffs_called_off = s.handoffs_called_off.load();
  out.fenced = s.fenced.load();
  out.suspended = s.suspended.load();
  out.taken_back = s.taken_back.load();
  out.states_restored = s.states_restored.load();
  out.tables_applied = s.tables_applied.load();
  out.stale_coordinator = s.stale_coordinator.load();
  out.malformed = s.malformed.load();
  out.rebalances = s.rebalances.load();
  out.allocations = s.allocations.load();
  out.deduplicated = s.deduplicated.load();
  out.retries = s.retries.load();
  {
    std::lock_guard lk(s.hist_mu);
    out.handoff_time = s.handoff_time;
    out.reallocation_time = s.reallocation_time;
  }
  {
    std::lock_guard lk(s.mu);
    for (const auto& [name, t] : s.types) out.shards_hosted += t.hosted.size();
  }
  return out;
}

}  // namespace troupe::sharding
