#pragma once
// Internal: the state a node's sharding actors and its Sharding object share.

#include <atomic>
#include <condition_variable>
#include <functional>
#include <map>
#include <mutex>
#include <shared_mutex>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include <troupe/membership/member.hpp>
#include <troupe/remoting/transport.hpp>
#include <troupe/serialization/log.hpp>
#include <troupe/sharding/region.hpp>

namespace troupe::remoting {
class Transport;
}

namespace troupe::sharding {

inline constexpr const char* kCoordinatorName = "sharding-coordinator";
/// The region actor's name for an entity type.
inline std::string region_name(std::string_view type) { return "sharding-" + entity_child_name(type); }

/// The region's front door (one per entity type and node): the transport's I/O thread hands a
/// keyed message (remoting::Transport::tell_keyed) straight to a running entity of a shard this
/// node serves, past the region's mailbox. The region runs each of its turns holding `mu`
/// exclusively and sets `fast` while it runs; the door takes `mu` shared, only when it is free
/// (try_lock: the I/O thread never waits for a region turn), and only while no message waits in
/// the region's mailbox (in_region == 0). Whatever the door does not take goes through the
/// mailbox, so each sender's messages to an entity keep their order.
struct RegionDoor {
  std::shared_mutex mu;
  // Takes messages from the front of a run while it can; returns how many it delivered.
  std::function<std::size_t(std::span<remoting::Transport::Inbound>)> fast;
  const void* owner = nullptr;  // the region instance `fast` belongs to (a restart makes another)
};

struct Sharding::Shared {
  ActorSystem* system = nullptr;
  remoting::Transport* transport = nullptr;      // null: a cluster of one
  bool client_mode = false;                       // a ShardingClient: proxies only, not a member
  membership::MembershipService* membership = nullptr;
  ClusterShardingConfig config;
  std::uint64_t self_uid = 0;
  std::string self_address;                       // "troupe://<uid>@host:port"

  /// A region's table as callers route from it (immutable; replaced whole).
  struct Route {
    std::vector<ActorRef> regions;
    std::vector<std::uint16_t> owner;  // index + 1 into regions; 0: no home
    std::vector<std::uint64_t> epoch;
    std::vector<std::uint8_t> moving;
    int self_index = -1;
    bool usable = false;               // false: everything goes through the region
  };

  mutable std::mutex mu;
  // Bumped (under mu) whenever a type is added or a region publishes its table: a caller's
  // per-thread copy of what it routes by is good while this has not moved. `id` tells this
  // Shared from any other, even one at the same address later.
  std::atomic<std::uint64_t> route_gen{1};
  const std::uint64_t id = next_id();
  static std::uint64_t next_id() {
    static std::atomic<std::uint64_t> n{0};
    return n.fetch_add(1, std::memory_order_relaxed) + 1;
  }
  struct TypeEntry {
    EntitySettings settings;
    bool proxy = false;
    ActorRef region;
    // What the region hosts now (shard -> epoch) and its table, for reports and inspection.
    std::unordered_map<ShardId, std::uint64_t> hosted;
    std::vector<ShardInfo> table;
    // Callers send straight to a remote owner from this copy, but only while no message of
    // theirs waits in the region's mailbox (in_region == 0): what went through the region
    // earlier has then been passed on already, so per-sender order holds.
    std::shared_ptr<const Route> route;
    std::shared_ptr<std::atomic<std::int64_t>> in_region = std::make_shared<std::atomic<std::int64_t>>(0);
    std::shared_ptr<RegionDoor> door = std::make_shared<RegionDoor>();
  };
  std::unordered_map<std::string, TypeEntry> types;
  // Members as membership last told (uid -> info), and the coordinator they give.
  std::unordered_map<std::uint64_t, membership::MemberInfo> members;
  std::atomic<std::uint64_t> coordinator{0};
  std::atomic<bool> self_down{false};
  std::atomic<bool> in_majority{true};  // this node sees a majority of the up members (as downing decides it)
  std::atomic<bool> leaving{false};
  std::atomic<std::uint64_t> max_epoch{0};
  /// The last shard table version this node's coordinator sent. Regions ignore a table whose
  /// version is not above the last they applied from the same coordinator, so versions only
  /// grow: across this node's terms as coordinator and restarts of its coordinator actor.
  std::atomic<std::uint64_t> table_versions{0};
  ActorRef coordinator_actor;
  /// Moves this node's coordinator decided (type, shard) -> last kShardHistory, oldest first.
  std::map<std::pair<std::string, ShardId>, std::vector<ShardMove>> move_log;
  std::condition_variable hosted_changed;  // with mu: hand_off_all waits on it

  std::atomic<std::uint64_t> routed{0}, front_door{0}, activations{0}, passivations{0}, buffered{0}, unknown_type{0}, bad_id{0},
      live{0}, forwarded{0}, rerouted{0}, stale_epoch{0}, unavailable{0}, dropped_no_sender{0}, handoffs{0}, handoffs_called_off{0},
      fenced{0}, suspended{0}, taken_back{0}, states_restored{0}, tables_applied{0}, stale_coordinator{0}, malformed{0}, rebalances{0},
      allocations{0}, incarnations{0}, deduplicated{0}, retries{0}, start_failed{0};
  ThrottledLog refused_log, protocol_log;

  bool cluster() const noexcept { return transport != nullptr; }
  void note_epoch(std::uint64_t e) {
    auto cur = max_epoch.load(std::memory_order_relaxed);
    while (e > cur && !max_epoch.compare_exchange_weak(cur, e, std::memory_order_relaxed)) {
    }
  }
  /// The remoting address of member `uid` ("" if unknown). Caller holds mu.
  std::string address_of_locked(std::uint64_t uid) const {
    auto it = members.find(uid);
    return it == members.end() ? std::string() : it->second.remoting;
  }
  /// Recomputes the coordinator (the oldest up member). Caller holds mu. True when it changed.
  bool recompute_coordinator_locked();
  /// Histograms of this node's coordinator: a handoff from its start (shard marked moving) to
  /// the new owner's allocation, and a downed member's shard from the downing to its new home.
  Histogram handoff_time, reallocation_time;  // under hist_mu
  mutable std::mutex hist_mu;
  void observe_handoff(std::chrono::steady_clock::duration d) {
    std::lock_guard lk(hist_mu);
    handoff_time.observe(d);
  }
  void observe_reallocation(std::chrono::steady_clock::duration d) {
    std::lock_guard lk(hist_mu);
    reallocation_time.observe(d);
  }
  /// Appends to move_log (names from `members`; a uid when the member is gone).
  void record_move(const std::string& type, ShardId shard, std::uint64_t from, std::uint64_t to, std::uint64_t epoch,
                   MoveReason reason);

};

}  // namespace troupe::sharding
