#pragma once
/// \file
/// Actor (the user's class) and ActorContext (what an actor may do during its turn).

#include <chrono>
#include <cstdint>
#include <exception>
#include <memory>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#include <troupe/actor/actor_ref.hpp>
#include <troupe/actor/supervision.hpp>
#include <troupe/serialization/message.hpp>

namespace troupe {

class Actor;
class ActorSystem;

/// Options for spawn().
struct SpawnOptions {
  /// Unique among siblings; empty = an automatic "$<id>" name. No '/', must not start with '$'.
  std::string name;
};

/// Identifies a timer started with ActorContext::schedule_once/schedule_every.
using TimerId = std::uint64_t;

namespace detail {
class Cell;
/// Creates (and on restart re-creates) an actor instance from its constructor arguments.
/// Owned by the actor's cell; types spawned without arguments share one immortal instance.
struct Factory {
  virtual ~Factory() = default;
  virtual Actor* make() const = 0;
  virtual bool immortal() const noexcept { return false; }
};
struct FactoryDelete {
  void operator()(const Factory* f) const noexcept {
    if (f && !f->immortal()) delete f;
  }
};
using FactoryPtr = std::unique_ptr<const Factory, FactoryDelete>;

template <class T>
struct DefaultFactory final : Factory {
  Actor* make() const override { return new T(); }
  bool immortal() const noexcept override { return true; }
};
template <class T, class... A>
struct FactoryOf final : Factory {
  std::tuple<A...> args;
  template <class... U>
  explicit FactoryOf(U&&... u) : args(std::forward<U>(u)...) {}
  Actor* make() const override {
    return std::apply([](const auto&... a) -> Actor* { return new T(a...); }, args);
  }
};
template <class T, class... A>
FactoryPtr make_factory(A&&... a) {
  if constexpr (sizeof...(A) == 0) {
    static const Factory* const shared = new DefaultFactory<T>();  // never destroyed
    return FactoryPtr(shared);
  } else {
    return FactoryPtr(new FactoryOf<T, std::decay_t<A>...>(std::forward<A>(a)...));
  }
}
}  // namespace detail

/// What an actor can do while it runs. Only the actor's own thread of control (its receive,
/// pre_start, post_stop) may call these.
class ActorContext {
 public:
  ActorContext(const ActorContext&) = delete;
  ActorContext& operator=(const ActorContext&) = delete;

  /// This actor's ref.
  ActorRef self() const;
  /// Sender of the message being processed (null when there is none).
  const ActorRef& sender() const noexcept;
  /// The parent actor (the /user guardian for top-level actors).
  ActorRef parent() const;
  /// The actor system.
  ActorSystem& system() const noexcept;
  /// This actor's path, e.g. "/user/a/b".
  std::string path() const;

  /// Spawns a child actor T(args...). Arguments are copied again for every restart.
  /// Throws std::system_error(ActorErrc::duplicate_name / invalid_name).
  template <class T, class... A>
  ActorRef spawn(SpawnOptions opts, A&&... args) {
    static_assert(std::is_base_of_v<Actor, T>, "T must derive from troupe::Actor");
    return spawn_child(detail::make_factory<T>(std::forward<A>(args)...), std::move(opts));
  }

  /// Stops `ref` (this actor, a child, any local actor) after its current message; its children
  /// stop first. Messages still queued go to dead letters.
  void stop(const ActorRef& ref);
  /// Delivers one troupe::sys::Terminated (sender = `ref`) when `ref` stops, or at once if it is
  /// already gone. Watching twice still yields one Terminated.
  void watch(const ActorRef& ref);
  /// Cancels watch(ref); no Terminated for `ref` is delivered afterwards, even one already queued.
  void unwatch(const ActorRef& ref);

  /// Delivers `msg` to this actor once after `delay`. Cancelled when the actor stops or restarts.
  TimerId schedule_once(std::chrono::nanoseconds delay, Message msg);
  /// Delivers `msg` to this actor every `interval`. Cancelled when the actor stops or restarts.
  TimerId schedule_every(std::chrono::nanoseconds interval, Message msg);
  /// Cancels a timer: no delivery of it happens afterwards, even one already queued.
  void cancel_timer(TimerId id);

  /// Asks `target` without blocking this actor's worker: `then` runs later on this actor's own
  /// turn (like any message) with the reply, ActorErrc::timeout or ActorErrc::dead_target. It
  /// is dropped if this actor stops or restarts first. An exception from `then` is a failure.
  void ask(const ActorRef& target, Message msg, std::chrono::milliseconds timeout,
           std::function<void(Result<Message>)> then);

 protected:
  ActorContext() = default;
  ~ActorContext() = default;

 private:
  ActorRef spawn_child(detail::FactoryPtr f, SpawnOptions opts);
  detail::Cell& cell() noexcept;
  const detail::Cell& cell() const noexcept;
};

/// Base class of user actors. The runtime calls the virtual members one at a time, never
/// concurrently, on some worker thread.
class Actor {
 public:
  Actor() = default;
  Actor(const Actor&) = delete;
  Actor& operator=(const Actor&) = delete;
  virtual ~Actor() = default;

  /// Handles one message. An exception here is a failure: the message is dropped (counted and
  /// logged) and the parent's SupervisorStrategy decides (default: restart with fresh state,
  /// keeping the rest of the mailbox, within the restart budget, else stop).
  virtual void receive(const Message& msg) = 0;
  /// Runs before the first message (and, by default, after each restart).
  virtual void pre_start() {}
  /// Runs once after the actor stopped (and, by default, before each restart on the old
  /// instance). Its children have stopped already.
  virtual void post_stop() {}
  /// Runs on the failed instance before it is replaced; its children are stopped after it
  /// (and before post_restart runs on the fresh instance). Default: post_stop().
  virtual void pre_restart(std::exception_ptr /*reason*/) { post_stop(); }
  /// Runs on the fresh instance after a restart. Default: pre_start().
  virtual void post_restart(std::exception_ptr /*reason*/) { pre_start(); }
  /// How this actor supervises its children; asked on this actor's turn when a child fails.
  virtual SupervisorStrategy supervisor_strategy() const { return SupervisorStrategy::restarting(); }

 protected:
  /// The context; valid from pre_start on (not in the constructor).
  ActorContext& context() const noexcept { return *ctx_; }
  ActorRef self() const { return ctx_->self(); }
  const ActorRef& sender() const noexcept { return ctx_->sender(); }

 private:
  friend class detail::Cell;
  ActorContext* ctx_ = nullptr;
};

}  // namespace troupe
