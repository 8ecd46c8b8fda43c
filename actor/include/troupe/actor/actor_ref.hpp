#pragma once
/// \file
/// ActorRef: a small copyable, location-transparent handle to an actor. Any thread may use it.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <future>
#include <string>
#include <utility>

#include <troupe/actor/errc.hpp>
#include <troupe/serialization/message.hpp>
#include <troupe/serialization/result.hpp>

namespace troupe {

class ActorRef;
class ActorSystem;

namespace detail {

/// What an ActorRef points at: a local actor cell, a pending ask, (later) a remote actor.
/// Intrusively reference counted. Internal: users never derive from it.
class RefTarget {
 public:
  RefTarget() = default;
  RefTarget(const RefTarget&) = delete;
  RefTarget& operator=(const RefTarget&) = delete;

  void add_ref() noexcept { refs_.fetch_add(1, std::memory_order_relaxed); }
  /// Takes a reference unless the count already reached zero (weak lookup tables use this).
  bool try_add_ref() noexcept {
    auto n = refs_.load(std::memory_order_relaxed);
    while (n != 0) {
      if (refs_.compare_exchange_weak(n, n + 1, std::memory_order_acq_rel, std::memory_order_relaxed)) return true;
    }
    return false;
  }
  void release() noexcept {
    if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) destroy();
  }
  /// Enqueues `msg`; never blocks. Undeliverable messages go to dead letters.
  virtual void send(Message&& msg, ActorRef&& sender) = 0;
  /// The message could not be delivered to the actor this ref was the sender of (ask refs
  /// answer their caller with dead_target).
  virtual void undeliverable() noexcept {}
  /// Path of the target ("/user/a/b"), or a synthetic one ("/temp/ask-7").
  virtual std::string path() const = 0;
  /// Unique id within the actor system.
  virtual std::uint64_t id() const noexcept = 0;
  /// The system the target belongs to.
  virtual ActorSystem& system() const noexcept = 0;
  /// Stops the target after its current message (no-op for targets that are not actors).
  virtual void stop() {}
  /// Registers `watcher` for one troupe::sys::Terminated when the target stops (at once when it
  /// is already gone or is not an actor).
  virtual void add_watcher(const ActorRef& watcher);
  /// Removes a registration made by add_watcher (no-op when absent).
  virtual void remove_watcher(const ActorRef& /*watcher*/) {}
  /// True once the target can no longer receive anything (a stopped actor, an answered ask).
  virtual bool terminated() const noexcept { return false; }
  /// True when ActorSystem::lookup(path()) finds this target (actors); false for asks, routers'
  /// internal watchers and remote refs.
  virtual bool addressable() const noexcept { return false; }

 protected:
  virtual ~RefTarget() = default;
  /// Called once the last reference is gone.
  virtual void destroy() noexcept { delete this; }

 private:
  std::atomic<std::uint32_t> refs_{1};
};

}  // namespace detail

/// A handle to an actor. A default-constructed ref is null: messages told to it go to dead
/// letters. Copying costs one atomic increment. Equality compares identity.
class ActorRef {
 public:
  ActorRef() noexcept = default;
  /// Adopts one reference of `t` (internal).
  explicit ActorRef(detail::RefTarget* t, bool add_ref) noexcept : t_(t) { if (t_ && add_ref) t_->add_ref(); }
  ActorRef(const ActorRef& o) noexcept : t_(o.t_) { if (t_) t_->add_ref(); }
  ActorRef(ActorRef&& o) noexcept : t_(std::exchange(o.t_, nullptr)) {}
  ActorRef& operator=(const ActorRef& o) noexcept { ActorRef(o).swap(*this); return *this; }
  ActorRef& operator=(ActorRef&& o) noexcept { ActorRef(std::move(o)).swap(*this); return *this; }
  ~ActorRef() { if (t_) t_->release(); }
  void swap(ActorRef& o) noexcept { std::swap(t_, o.t_); }

  /// Sends `msg` (shared, not copied) with `sender` as the reply address. Never blocks.
  /// Delivery is at most once; messages from one sender arrive in the order sent.
  void tell(Message msg, ActorRef sender) const;
  /// tell() without a sender.
  void tell(Message msg) const;

  /// Sends `msg` and returns a future that holds the first reply, or ActorErrc::timeout after
  /// `timeout`, or ActorErrc::dead_target when the target is already gone. Do not block on the
  /// future inside an actor.
  std::future<Result<Message>> ask(Message msg, std::chrono::milliseconds timeout) const;

  /// As ask() above, but calls `done` exactly once (on a worker or the timer thread) instead.
  void ask(Message msg, std::chrono::milliseconds timeout, std::function<void(Result<Message>)> done) const;

  /// The actor's path, e.g. "/user/worker-1"; "" for a null ref.
  std::string path() const { return t_ ? t_->path() : std::string{}; }
  /// Unique id of the actor within its system; 0 for a null ref.
  std::uint64_t id() const noexcept { return t_ ? t_->id() : 0; }
  explicit operator bool() const noexcept { return t_ != nullptr; }
  friend bool operator==(const ActorRef& a, const ActorRef& b) noexcept { return a.t_ == b.t_; }

  /// Internal access for the runtime.
  detail::RefTarget* target() const noexcept { return t_; }

 private:
  detail::RefTarget* t_ = nullptr;
};

inline void ActorRef::tell(Message msg) const { tell(std::move(msg), ActorRef()); }

}  // namespace troupe

template <>
struct std::hash<troupe::ActorRef> {
  std::size_t operator()(const troupe::ActorRef& r) const noexcept {
    return std::hash<const void*>()(r.target());
  }
};
