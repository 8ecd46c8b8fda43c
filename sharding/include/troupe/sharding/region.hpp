#pragma once
/// \file
/// Cluster sharding: entities identified by (type, id), spread over the members of a cluster.
///
/// An entity is an actor started on its first message, with its id; it receives its messages
/// one at a time in order and is passivated (stopped, post_stop runs) when idle for
/// `passivate_after` or when it asks for it. Entity id -> shard by hash (placement.hpp); shard ->
/// node by the shard table of the active coordinator (the oldest up member), which every region
/// routes from without asking per message.
///
/// Per node and entity type there is one region actor (/system/sharding-<type>): it hosts the
/// entities of the shards allocated to this node and forwards everything else to the owning
/// node's region. Nodes that do not host a type route to it through a proxy region
/// (start_proxy). One coordinator actor per node (/system/sharding-coordinator) is active on
/// the oldest up member; see DESIGN.md "Sharding" for the handoff protocol and epochs.
///
/// Without a cluster (Sharding(ActorSystem&)) every shard is local: a cluster of one, no
/// configuration.

#include <chrono>
#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <troupe/actor/actor_system.hpp>
#include <troupe/serialization/histogram.hpp>
#include <troupe/sharding/placement.hpp>

namespace troupe::remoting {
class Transport;
}
namespace troupe::membership {
class MembershipService;
}

namespace troupe::sharding {

/// Optional base of entities that carry state across a graceful handoff (rebalance, leave).
/// Plain actors work as entities too; they start empty on their new home.
class Entity : public Actor {
 public:
  /// The state to hand to the next activation on the shard's new home (any registered
  /// FlatBuffers message), or nothing. Runs on the entity's turn after its last message.
  virtual std::optional<Message> snapshot() { return std::nullopt; }
  /// Called on the new home, before any message, with what snapshot() returned.
  virtual void restore(const Message& /*state*/) {}
};

struct EntitySettings {
  std::string type;                                       ///< entity type name, e.g. "user"
  std::uint32_t num_shards = 1024;                        ///< fixed for the type's lifetime
  std::chrono::milliseconds passivate_after{120'000};     ///< idle time before passivation; 0: never
  std::size_t max_id_bytes = 256;                         ///< longer ids are refused
};

/// Makes an entity for `id` as a child of its region (`ctx` is the region's context).
using EntityFactory = std::function<ActorRef(ActorContext& ctx, SpawnOptions opts, const std::string& id)>;

/// An entity started or stopped (for activation logs: tests check that no two activations of
/// one entity overlap). `started` is reported before the entity runs, `stopped` after it
/// stopped, so a logged interval covers the real one.
struct ActivationEvent {
  std::string type, id;
  ShardId shard = 0;
  std::uint64_t epoch = 0;
  bool started = false;
  std::uint64_t incarnation = 0;  ///< distinct per activation on this node
};

/// The membership role of members that run sharding. When any member carries it, the shard
/// coordinator runs on the oldest up member that does (a member without sharding never gets
/// the job it could not do); when none does, on the oldest up member, so every member must then
/// run sharding. troupe-node adds the role itself when it hosts or proxies an entity type; an
/// embedding program adds it to MembershipServiceConfig::roles.
inline constexpr const char* kShardingRole = "sharding";

struct ClusterShardingConfig {
  /// Handoffs in flight at once when rebalancing (a join or a graceful leave).
  std::size_t max_simultaneous_handoffs = 16;
  /// How long the coordinator waits for every region to acknowledge that a shard is moving
  /// before it asks the owner to stop it anyway; also the period of HandOff retries.
  std::chrono::milliseconds handoff_ack_timeout{2'000};
  /// A new coordinator waits this long for reports from reachable members that do not answer
  /// (members running no sharding) before it allocates.
  std::chrono::milliseconds rebuild_timeout{3'000};
  /// Members tell each other they are alive every minority_check_interval; a member not heard
  /// from for `minority_after` (negative: 30% of the membership's stable_after, at least 1 s)
  /// counts as lost, and a node that has lost touch with a majority (two checks in a row) stops
  /// serving at once: its regions suspend, keeping their entities' state, until the majority is
  /// back or the node is downed.
  std::chrono::milliseconds minority_check_interval{250};
  std::chrono::milliseconds minority_after{-1};
  /// The shards of a downed member are allocated elsewhere once it must have suspended, were it
  /// alive in a minority: minority_after and three checks after the coordinator last heard from
  /// it, and at least 500 ms after the downing (the time a member that can still hear the
  /// cluster needs to learn it was downed and stop). A member never heard from waits
  /// `down_margin` after its downing (negative: half the membership's stable_after).
  std::chrono::milliseconds down_margin{-1};
  /// Tables, reports and handoffs not acknowledged are sent again at this period.
  std::chrono::milliseconds resend_interval{1'000};
  /// Messages buffered while a shard has no usable home: per shard and per region.
  std::size_t buffer_per_shard = 1'000;
  std::size_t buffer_bytes_per_shard = 1u << 20;
  std::size_t buffer_per_region = 100'000;
  std::size_t buffer_bytes_per_region = 64u << 20;
  /// Told to senders in ShardUnavailable.
  std::chrono::milliseconds retry_after{500};
  /// Replies to messages with an idempotency key kept by the owning region, and how long. Over
  /// the count, answered entries go first; one still waiting for its entity's reply is never
  /// evicted (that would lose the reply), and a keyed message that finds every entry waiting is
  /// refused with ShardUnavailable.
  std::size_t reply_cache_entries = 10'000;
  std::chrono::milliseconds reply_cache_ttl{120'000};
  /// Every activation and stop of an entity on this node (on the region's thread).
  std::function<void(const ActivationEvent&)> on_activation;
};

struct ShardingStats {
  std::uint64_t routed = 0;               ///< messages handed to an entity
  std::uint64_t front_door = 0;           ///< of those, from another node straight to a running entity
  std::uint64_t activations = 0;          ///< entities started
  std::uint64_t passivations = 0;         ///< entities stopped when idle or on request
  std::uint64_t buffered = 0;             ///< messages that waited (passivating entity, moving shard)
  std::uint64_t unknown_type = 0;         ///< refused: no region for the entity type
  std::uint64_t bad_id = 0;               ///< refused: empty or over-long entity id
  std::uint64_t start_failed = 0;         ///< refused: the entity's factory or constructor threw
  std::uint64_t live_entities = 0;        ///< gauge
  std::uint64_t forwarded = 0;            ///< messages sent to another node's region
  std::uint64_t rerouted = 0;             ///< arrived for a shard this node does not own: passed on
  std::uint64_t stale_epoch = 0;          ///< stamped with an older epoch than the owner's
  std::uint64_t unavailable = 0;          ///< refused with ShardUnavailable (buffer full, too many hops)
  std::uint64_t dropped_no_sender = 0;    ///< refused with no sender to tell (dead letters)
  std::uint64_t shards_hosted = 0;        ///< gauge
  std::uint64_t handoffs = 0;             ///< shards this node stopped for a handoff
  std::uint64_t handoffs_called_off = 0;  ///< of those, kept here by a new coordinator's table (served again)
  std::uint64_t fenced = 0;               ///< shards stopped at once: allocated elsewhere, or self downed
  std::uint64_t suspended = 0;            ///< shards suspended because this node saw itself in a minority
  std::uint64_t taken_back = 0;           ///< of buffered: queued for an entity stopped at once (suspension)
  std::uint64_t states_restored = 0;      ///< entity states restored after a handoff
  std::uint64_t tables_applied = 0;
  std::uint64_t stale_coordinator = 0;    ///< coordinator messages from a node that is not the coordinator
  std::uint64_t malformed = 0;            ///< protocol messages that do not add up (counted, dropped)
  std::uint64_t rebalances = 0;           ///< handoffs started by this node's coordinator
  std::uint64_t allocations = 0;          ///< shards allocated by this node's coordinator
  std::uint64_t deduplicated = 0;         ///< repeats of a keyed message answered from the reply cache
  std::uint64_t retries = 0;              ///< ask attempts after the first
  /// This node's coordinator: handoffs from the shard marked moving to its new owner's
  /// allocation (rebalance, leave), and a downed member's shards from the downing to a new home.
  Histogram handoff_time, reallocation_time;
};

/// An ask that may be retried (Sharding::ask with options).
struct AskOptions {
  /// Per attempt.
  std::chrono::milliseconds timeout{5'000};
  /// Attempts in all; another is made after a timeout or a ShardUnavailable reply.
  unsigned attempts = 1;
  /// Wait before the next attempt (doubled each time; at least a ShardUnavailable's
  /// retry_after).
  std::chrono::milliseconds backoff{100};
  /// Sent with every attempt: the owning region delivers the message once and answers a repeat
  /// with the first reply (kept reply_cache_ttl). Empty with attempts > 1: a random key.
  std::string idempotency_key;
};

/// One shard as this node's region sees it.
struct ShardInfo {
  ShardId shard = 0;
  std::uint64_t epoch = 0;
  std::string region;   ///< owning region's address ("" : no home yet)
  bool moving = false;
  bool hosted_here = false;
};

/// Why a shard's home changed (ShardMove::reason).
enum class MoveReason : std::uint8_t {
  allocated,  ///< first home (no owner before)
  rebalance,  ///< handed off to even out the load (a member joined)
  handoff,    ///< handed off because its owner is leaving
  downed,     ///< its owner was downed (or removed); allocated again once it must have stopped
  rebuilt,    ///< taken from a member's report by a newly active coordinator
  no_home,    ///< stopped for a handoff, but no member could take it
};
const char* to_string(MoveReason r) noexcept;

/// One change of a shard's home, as recorded by the coordinator that decided it.
struct ShardMove {
  std::chrono::steady_clock::time_point at;
  std::string from, to;        ///< member names ("": none)
  std::uint64_t epoch = 0;     ///< the epoch of the new allocation (0: none)
  MoveReason reason = MoveReason::allocated;
};

/// Sharding on one node. Thread-safe.
class Sharding {
 public:
  /// A cluster of one: every shard is local (of `config`, what concerns one node is used: the
  /// reply cache, buffers, retry_after).
  explicit Sharding(ActorSystem& system, ClusterShardingConfig config = {});
  /// Cluster sharding over `membership`'s members, messages over `transport` (both must outlive
  /// this object).
  Sharding(ActorSystem& system, remoting::Transport& transport, membership::MembershipService& membership,
           ClusterShardingConfig config = {});
  ~Sharding();
  Sharding(const Sharding&) = delete;
  Sharding& operator=(const Sharding&) = delete;

  /// Starts the region of an entity type whose entities are T(const std::string& id).
  template <class T>
  ActorRef start(EntitySettings settings) {
    return start(std::move(settings), [](ActorContext& ctx, SpawnOptions o, const std::string& id) {
      return ctx.spawn<T>(std::move(o), id);
    });
  }
  /// Starts the region of an entity type on this node. Throws std::invalid_argument on a bad
  /// setting or a type started twice.
  ActorRef start(EntitySettings settings, EntityFactory factory);
  /// Routes to an entity type hosted on other members only (roles: this node hosts none of it).
  /// Messages wait (bounded) until the coordinator's table arrives. Cluster mode only.
  ActorRef start_proxy(std::string type, std::uint32_t num_shards = 1024, std::size_t max_id_bytes = 256);

  /// Sends `msg` to entity (`type`, `id`). An unknown type or a bad id is answered to `sender`
  /// with troupe.sharding.EntityError; a full buffer with ShardUnavailable (both counted).
  void tell(std::string_view type, std::string_view id, Message msg, const ActorRef& sender = {});
  /// Asks entity (`type`, `id`): the entity's reply, EntityError or ShardUnavailable as a reply
  /// for a refused message, or ActorErrc::timeout.
  std::future<Result<Message>> ask(std::string_view type, std::string_view id, const Message& msg,
                                   std::chrono::milliseconds timeout);
  /// Asks with retries and an idempotency key (see AskOptions): the reply, EntityError, the last
  /// ShardUnavailable, or ActorErrc::timeout once every attempt timed out.
  std::future<Result<Message>> ask(std::string_view type, std::string_view id, const Message& msg, AskOptions options);

  /// Graceful leave, first half: asks the coordinator to move every shard this node hosts to
  /// other members (state travels by snapshot) and waits until none is left here. True when
  /// done within `timeout`. Call before MembershipService::leave. No-op for a cluster of one.
  bool hand_off_all(std::chrono::milliseconds timeout);

  /// This node's view of the shard table of `type` (empty for an unknown type).
  std::vector<ShardInfo> shards(std::string_view type) const;
  /// Node uid of the coordinator this node follows (0: none, or a cluster of one).
  std::uint64_t coordinator() const;
  /// The moves of one shard that this node's coordinator decided while it was the active one,
  /// oldest first (at most kShardHistory). Every shard gets an entry when this coordinator first
  /// allocates it or adopts it from the members' reports (allocated, rebuilt), then one per move:
  /// about 100 bytes per shard and move. A node that never coordinated has none: ask the active
  /// coordinator's node (coordinator()) for the full story.
  std::vector<ShardMove> shard_history(std::string_view type, ShardId shard) const;
  /// Moves kept per shard.
  static constexpr std::size_t kShardHistory = 32;

  ShardingStats stats() const;

  struct Shared;

 private:
  friend class ShardingClient;
  struct ClientMode {};
  Sharding(ClientMode, ActorSystem& system, remoting::Transport& transport, ClusterShardingConfig config);
  ActorSystem& system_;
  std::shared_ptr<Shared> shared_;
};

/// The child name of an entity: its id with every byte outside [A-Za-z0-9._-] as %XX. An id
/// whose name would be longer than an actor name may be (255) is named "~" + a 64-bit hash of
/// the id in hex + "~" + the start of the escaped id (the region keeps such names' ids).
std::string entity_child_name(std::string_view id);
/// The id back from a child name made by entity_child_name ("" for a hashed name).
std::string entity_id_of_name(std::string_view name);

}  // namespace troupe::sharding
