#pragma once
/// \file
/// ActorSystem: worker threads, the actor tree (/user, /system), timers, dead letters.

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <troupe/actor/actor.hpp>
#include <troupe/actor/actor_ref.hpp>
#include <troupe/actor/timer.hpp>
#include <troupe/serialization/registry.hpp>

namespace spdlog { class logger; }

namespace troupe {

struct ActorSystemConfig {
  /// Shown in every log line. Empty: a random 64-bit hex id.
  std::string node_id;
  /// Worker threads. 0: one per hardware thread.
  unsigned workers = 0;
  /// Messages an actor may process per turn before yielding its worker. Higher is faster under
  /// load, lower is fairer between busy actors.
  unsigned throughput = 64;
  /// Timer source. Null: real time on a dedicated thread.
  std::shared_ptr<TimerService> timers;
  /// Logger. Null: a stderr logger tagged with node_id.
  std::shared_ptr<spdlog::logger> logger;
  /// Limits for decoding untrusted message bytes.
  DecodeLimits decode_limits{};
  /// How the /user guardian supervises top-level actors. An escalation past /user stops every
  /// user actor (the guardian itself stays, so the system remains usable) and is logged.
  SupervisorStrategy user_guardian_strategy = SupervisorStrategy::restarting();
};

/// Counters (monotonic unless noted).
struct ActorSystemStats {
  std::uint64_t actors_spawned = 0;
  std::uint64_t actors_stopped = 0;
  std::uint64_t actors_live = 0;          ///< gauge, including guardians
  std::uint64_t dead_letters = 0;         ///< messages that could not be delivered
  std::uint64_t failures = 0;             ///< exceptions thrown by actors
  std::uint64_t restarts = 0;
  std::uint64_t failed_messages_dropped = 0;  ///< the message being processed at a failure
  std::uint64_t escalations_past_user = 0;    ///< failures that reached the /user guardian's parent
  std::uint64_t callback_failures = 0;        ///< ask reply callbacks that threw (counted, logged)
  /// Actors woken by a turn that then ran long, taken over by an idle worker (see Dispatcher).
  std::uint64_t lifo_rescues = 0;
};

/// Thread-safe unless noted. The destructor calls shutdown().
class ActorSystem {
 public:
  explicit ActorSystem(ActorSystemConfig config = {});
  ~ActorSystem();
  ActorSystem(const ActorSystem&) = delete;
  ActorSystem& operator=(const ActorSystem&) = delete;

  /// Spawns a top-level actor T(args...) under /user. See ActorContext::spawn.
  template <class T, class... A>
  ActorRef spawn(SpawnOptions opts, A&&... args) {
    static_assert(std::is_base_of_v<Actor, T>, "T must derive from troupe::Actor");
    return spawn_top(detail::make_factory<T>(std::forward<A>(args)...), std::move(opts));
  }
  /// Spawns an anonymous top-level actor.
  template <class T>
  ActorRef spawn() { return spawn<T>(SpawnOptions{}); }

  /// Spawns one of Troupe's own actors under /system (remoting, membership and sharding use
  /// this; they stop after every user actor at shutdown).
  template <class T, class... A>
  ActorRef spawn_system(SpawnOptions opts, A&&... args) {
    static_assert(std::is_base_of_v<Actor, T>, "T must derive from troupe::Actor");
    return spawn_under_system(detail::make_factory<T>(std::forward<A>(args)...), std::move(opts));
  }

  /// Stops `ref` after its current message (children first).
  void stop(const ActorRef& ref);
  /// Stops `ref` once it has processed every message queued for it before this call (a poison
  /// pill: what was sent earlier is not lost). Messages sent afterwards go to dead letters.
  void stop_after_queued(const ActorRef& ref);
  /// What stop_keeping_queued hands over: the instance (null if it has none) and the messages
  /// still queued, oldest first, with their senders.
  using KeepQueued = std::function<void(Actor* instance, std::vector<std::pair<Message, ActorRef>> queued)>;
  /// Stops local `ref` after its current message, as stop() does, but what is still queued for
  /// it does not go to dead letters: `keep` gets it, with the instance (before post_stop), on
  /// the actor's last turn and before any watcher hears of the stop. Messages that arrive after
  /// that are dead letters as usual. Sharding stops a suspended shard's entities this way: at
  /// once, their state and their backlog kept by the region. False when `ref` is not a live
  /// local actor (nothing is handed over then).
  bool stop_keeping_queued(const ActorRef& ref, KeepQueued keep);
  /// Runs `fn` with the actor instance of local `ref` on the actor's own turn, after every
  /// message queued for it before this call (for Troupe's extensions: sharding snapshots and
  /// restores entity state this way). `fn` must not keep the reference; an exception from it
  /// counts as a failure of the actor. False when `ref` is not a local actor.
  bool run_with_actor(const ActorRef& ref, std::function<void(Actor&)> fn);
  /// Delivers troupe::sys::Terminated to `watcher` (sender = `target`) once `target` stops.
  void watch(const ActorRef& target, const ActorRef& watcher);
  /// Cancels watch(target, watcher) where the Terminated has not yet been queued.
  void unwatch(const ActorRef& target, const ActorRef& watcher);
  /// The live actor at `path` ("/user/a/b", "/user/$1f"), or a null ref.
  ActorRef lookup(std::string_view path) const;

  /// Delivers `msg` to `target` after `delay` (no sender). Returns an id for TimerService::cancel.
  std::uint64_t schedule_once(std::chrono::nanoseconds delay, ActorRef target, Message msg);

  /// Stops every user actor (tree order: children before parents), then Troupe's own actors,
  /// then the worker threads. Blocks until done. Idempotent. Must not be called from an actor.
  void shutdown();

  /// Counts and logs (throttled) a message that cannot be delivered, and tells a waiting ask.
  /// Remoting uses it for messages it drops; `recipient` and `why` appear in the log line.
  void dead_letter(const Message& msg, const ActorRef& sender, const std::string& recipient, const char* why);
  /// Delivers the runtime's troupe::sys::Terminated about `dead` to `watcher`: an actor gets it
  /// only while it still watches `dead`, and once per watch (remote deathwatch uses this).
  static void deliver_terminated(const ActorRef& watcher, const Message& terminated, const ActorRef& dead);

  /// On a thread that is not one of this system's workers (an I/O thread handing a frame's
  /// messages to many actors), actors made runnable while the scope lives are handed to the
  /// workers together when it ends: one wake-up instead of one per actor, and each actor finds
  /// all of its messages of the frame queued when its turn starts. Keep the scope short (the
  /// actors wait for its end); scopes nest (the outermost one hands over); a no-op on a worker.
  class WakeBatch {
   public:
    explicit WakeBatch(ActorSystem& system);
    ~WakeBatch();
    WakeBatch(const WakeBatch&) = delete;
    WakeBatch& operator=(const WakeBatch&) = delete;

   private:
    void* dispatcher_ = nullptr;  // set when this scope is the outermost on its thread
  };

  const std::string& node_id() const noexcept;
  MessageRegistry& registry() noexcept;
  TimerService& timers() noexcept;
  spdlog::logger& log() const noexcept;
  /// The same logger, shared (for components that keep it).
  std::shared_ptr<spdlog::logger> log_ptr() const noexcept;
  ActorSystemStats stats() const noexcept;

  struct Impl;
  /// Internal.
  Impl& impl() noexcept { return *impl_; }

 private:
  ActorRef spawn_top(detail::FactoryPtr f, SpawnOptions opts);
  ActorRef spawn_under_system(detail::FactoryPtr f, SpawnOptions opts);
  std::unique_ptr<Impl> impl_;
};

}  // namespace troupe
