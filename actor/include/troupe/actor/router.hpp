#pragma once
/// \file
/// Routers: one ActorRef in front of several routees. Routing runs in the sending thread, inside
/// tell() on the router's ref (there is no router actor to queue behind), so routing throughput
/// grows with the number of senders. Routees are watched: one that stops leaves the router; a
/// pool spawns a replacement for it.

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <troupe/actor/actor.hpp>
#include <troupe/actor/actor_ref.hpp>
#include <troupe/actor/supervision.hpp>

namespace troupe {

class ActorSystem;

enum class RoutingKind {
  round_robin,        ///< routee i, i+1, ... (exact per router)
  random,             ///< uniformly random routee
  broadcast,          ///< every routee gets every message
  consistent_hashing, ///< one routee per key; removing a routee moves only its keys
  smallest_mailbox,   ///< the routee with the fewest queued messages (idle ones first)
  scatter_gather,     ///< every routee; the first reply goes to the sender, the rest are dropped
  tail_chopping,      ///< one routee, then another every `interval` until a reply; first wins
};

struct RouterConfig {
  RoutingKind kind = RoutingKind::round_robin;
  /// consistent_hashing: the key of a message. Default: a hash of the message bytes.
  std::function<std::uint64_t(const Message&)> hash_key;
  /// consistent_hashing: points on the ring per routee (more = more even spread).
  unsigned virtual_nodes = 128;
  /// scatter_gather / tail_chopping: how long to wait for the first reply in all.
  std::chrono::milliseconds within{std::chrono::seconds(5)};
  /// tail_chopping: delay before the next routee is tried.
  std::chrono::milliseconds interval{std::chrono::milliseconds(100)};
};

struct RouterStats {
  std::uint64_t routed = 0;          ///< messages routed (a broadcast counts once)
  std::uint64_t no_routee = 0;       ///< sent to dead letters: the router had no routee
  std::uint64_t gather_timeouts = 0; ///< scatter_gather / tail_chopping with no reply in time
  std::uint64_t routees_removed = 0; ///< routees that stopped or were removed
  std::uint64_t routees_replaced = 0;///< pool routees spawned to replace stopped ones
  std::uint64_t resizes = 0;         ///< resize decisions sent to the pool
  std::uint64_t replacements_refused = 0;  ///< pool routees stopped by failures and not
                                           ///< replaced: the pool's supervision budget
                                           ///< (max_restarts per routee within `within`) was
                                           ///< spent on such replacements
};

namespace detail {
class RouterState;
}

/// A handle to a router (copyable; all copies share it). Thread-safe.
class Router {
 public:
  Router() = default;
  /// The ref to send through: tell/ask route in the caller's thread.
  ActorRef ref() const;
  /// Adds a routee (it is watched from now on).
  void add(const ActorRef& routee);
  /// Removes a routee (not stopped).
  void remove(const ActorRef& routee);
  /// The current routees.
  std::vector<ActorRef> routees() const;
  /// Sends `msg` to every routee whatever the routing kind.
  void broadcast(const Message& msg, const ActorRef& sender = {}) const;
  /// Stops every routee (and a pool's supervisor); the router then has none.
  void stop_all();
  RouterStats stats() const;

  /// Internal: adopts the router's ref.
  explicit Router(ActorRef ref) : ref_(std::move(ref)) {}

 private:
  detail::RouterState& state() const;
  ActorRef ref_;
};

/// A group router over existing actors.
Router make_group(ActorSystem& sys, const std::vector<ActorRef>& routees, RouterConfig config = {});
/// A group router over the actors at these paths (looked up now; missing paths are skipped).
Router make_group(ActorSystem& sys, const std::vector<std::string>& paths, RouterConfig config = {});

/// Grows a pool when all its routees are busy and shrinks it when few are (Akka's default
/// resizer). A routee is busy while it runs or has messages queued.
struct Resizer {
  unsigned lower = 1;                  ///< never fewer routees
  unsigned upper = 10;                 ///< never more routees
  unsigned messages_per_resize = 10;   ///< look at the routees' load every this many messages
  double rampup_rate = 0.2;            ///< all busy: grow by ceil(rate * size)
  double backoff_threshold = 0.3;      ///< busy/size below this: shrink ...
  double backoff_rate = 0.1;           ///< ... by max(1, floor(rate * size))
};

/// The change in pool size the resizer asks for, given `size` routees of which `busy` are busy.
/// Pure; the result keeps the size within [lower, upper].
int resize_delta(const Resizer& r, unsigned size, unsigned busy) noexcept;

struct PoolOptions {
  /// Name of the pool's supervisor actor under /user (routees are its children).
  std::string name;
  /// How the routees are supervised (default: restart).
  SupervisorStrategy supervision = SupervisorStrategy::restarting();
  /// Optional resizer; the pool then starts with `size` clamped to [lower, upper].
  std::optional<Resizer> resizer;
};

/// Wraps `msg` so that a router delivers it to every routee (a management message).
Message make_broadcast(const Message& msg);

namespace detail {
using RouteeSpawner = std::function<ActorRef(ActorContext&)>;
Router make_pool(ActorSystem& sys, unsigned size, RouterConfig config, PoolOptions options, RouteeSpawner spawn);
}  // namespace detail

/// A pool router: creates `size` routees T(args...) under a supervisor actor /user/<name> and
/// replaces any that stops (one stopped by failures at most max_restarts times per routee
/// within `within`, its supervision budget; beyond that the pool shrinks, counted and logged).
template <class T, class... A>
Router make_pool(ActorSystem& sys, unsigned size, RouterConfig config, PoolOptions options, A... args) {
  return detail::make_pool(sys, size, std::move(config), std::move(options),
                           [args...](ActorContext& ctx) { return ctx.spawn<T>(SpawnOptions{}, args...); });
}

}  // namespace troupe
