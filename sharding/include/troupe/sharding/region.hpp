#pragma once
/// \file
/// Entities and their regions on one node. An entity is an actor identified by (type, id); it is
/// started on its first message, receives its messages one at a time in order, and is passivated
/// (stopped, post_stop runs) when idle for `passivate_after` or when it asks for it; a message
/// for a passivating entity waits and starts its next activation. Each entity type has one
/// region actor per node (/system/sharding-<type>) that owns its entities.
///
/// This is the local half of sharding (a cluster of one, no configuration); the shard
/// coordinator that spreads shards over members, the handoff protocol and the sharding client
/// build on it.

#include <chrono>
#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>

#include <troupe/actor/actor_system.hpp>
#include <troupe/sharding/placement.hpp>

namespace troupe::sharding {

struct EntitySettings {
  std::string type;                                       ///< entity type name, e.g. "user"
  std::uint32_t num_shards = 1024;                        ///< fixed for the type's lifetime
  std::chrono::milliseconds passivate_after{120'000};     ///< idle time before passivation; 0: never
  std::size_t max_id_bytes = 256;                         ///< longer ids are refused
};

/// Makes an entity for `id` as a child of its region (`ctx` is the region's context).
using EntityFactory = std::function<ActorRef(ActorContext& ctx, SpawnOptions opts, const std::string& id)>;

struct ShardingStats {
  std::uint64_t routed = 0;               ///< messages handed to an entity
  std::uint64_t activations = 0;          ///< entities started
  std::uint64_t passivations = 0;         ///< entities stopped when idle or on request
  std::uint64_t buffered = 0;             ///< messages that waited for a passivating entity
  std::uint64_t unknown_type = 0;         ///< refused: no region for the entity type
  std::uint64_t bad_id = 0;               ///< refused: empty or over-long entity id
  std::uint64_t live_entities = 0;        ///< gauge
};

/// Sharding on one node: start entity types, send to entities. Thread-safe.
class Sharding {
 public:
  explicit Sharding(ActorSystem& system);
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
  /// Starts the region of an entity type. Throws std::invalid_argument on a bad setting or a
  /// type started twice.
  ActorRef start(EntitySettings settings, EntityFactory factory);

  /// Sends `msg` to entity (`type`, `id`). An unknown type or a bad id is answered to `sender`
  /// with troupe.sharding.EntityError (and counted).
  void tell(std::string_view type, std::string_view id, const Message& msg, const ActorRef& sender = {});
  /// Asks entity (`type`, `id`): the entity's reply, EntityError as a reply for a refused
  /// message, or ActorErrc::timeout.
  std::future<Result<Message>> ask(std::string_view type, std::string_view id, const Message& msg,
                                   std::chrono::milliseconds timeout);

  ShardingStats stats() const;

  struct Shared;

 private:
  ActorSystem& system_;
  std::shared_ptr<Shared> shared_;
};

/// The child name of an entity: its id with every byte outside [A-Za-z0-9._-] as %XX.
std::string entity_child_name(std::string_view id);
/// The id back from a child name made by entity_child_name.
std::string entity_id_of_name(std::string_view name);

}  // namespace troupe::sharding
