#pragma once
#include <algorithm>
// The runtime's representation of one actor: mailbox, state word, place in the tree, and the
// user's Actor instance. Rarely used parts (name, named children, watchers, timers, restart
// statistics) live in a lazily allocated Extras block so that an idle anonymous actor stays small.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include <troupe/actor/actor.hpp>
#include <troupe/actor/actor_system.hpp>
#include <troupe/serialization/system_generated.h>

#include "mailbox.hpp"

namespace troupe::detail {

class Cell;

/// Intrusive reference for the runtime's own ref-counted objects.
template <class T>
class Ref {
 public:
  Ref() = default;
  explicit Ref(T* p, bool add) noexcept : p_(p) { if (p_ && add) p_->add_ref(); }
  Ref(const Ref& o) noexcept : p_(o.p_) { if (p_) p_->add_ref(); }
  Ref(Ref&& o) noexcept : p_(std::exchange(o.p_, nullptr)) {}
  Ref& operator=(Ref o) noexcept { std::swap(p_, o.p_); return *this; }
  ~Ref() { if (p_) p_->release(); }
  T* get() const noexcept { return p_; }
  T* operator->() const noexcept { return p_; }
  explicit operator bool() const noexcept { return p_ != nullptr; }

 private:
  T* p_ = nullptr;
};

/// Something attached to an envelope that decides, on the actor's own turn, whether the
/// message is still wanted (a cancelled timer's tick is not).
class Control {
 public:
  virtual ~Control() = default;
  void add_ref() noexcept { refs_.fetch_add(1, std::memory_order_relaxed); }
  void release() noexcept {
    if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
  }
  virtual bool admit(Cell& c) = 0;

 private:
  std::atomic<std::uint32_t> refs_{1};
};

/// A mailbox entry. Sending a message that has a single owner builds the envelope inside the
/// message's own reserved slot (no allocation); a shared message gets a HeapEnvelope.
struct Envelope : MpscNode {
  ActorRef sender;
  Control* ctl = nullptr;      // owned reference, or null
  std::uint32_t embedded = 0;  // 1: lives in a Message slot
};
struct HeapEnvelope final : Envelope {
  Message msg;
};
static_assert(sizeof(Envelope) <= Message::kSlotSize);

/// Makes the mailbox entry for `msg` (taking over `ctl`'s reference).
Envelope* make_envelope(Message&& msg, ActorRef&& sender, Control* ctl = nullptr);

/// An envelope taken apart: what the actor's turn works with.
struct Letter {
  Message msg;
  ActorRef sender;
  Ref<Control> ctl;
};
/// Frees the envelope (or its slot) and returns its contents.
Letter open_envelope(MpscNode* n) noexcept;

/// Runs a function on the actor's own turn (a system message); never reaches receive().
class RunOnTurn final : public Control {
 public:
  explicit RunOnTurn(std::function<void(Cell&)> fn) : fn_(std::move(fn)) {}
  bool admit(Cell& c) override {
    fn_(c);
    return false;
  }

 private:
  std::function<void(Cell&)> fn_;
};

/// Marks a Terminated sent by the runtime: delivered only while the watcher still watches the
/// sender, and at most once per watch (a Terminated a user forwards is an ordinary message).
class DeathNotice final : public Control {
 public:
  bool admit(Cell& c) override;
};

struct TimerState final : Control {
  TimerId id = 0;
  bool periodic = false;
  std::chrono::nanoseconds interval{0};
  Message msg;
  std::atomic<bool> cancelled{false};
  std::atomic<std::uint64_t> service_id{0};
  bool admit(Cell& c) override;
};

/// The actors one actor watches: a vector while small, a hash set once large (a parent that
/// watches a million children, such as a shard region, must not pay O(n) per watch).
class WatchSet {
 public:
  bool contains(const ActorRef& r) const {
    return big_ ? big_->count(r) != 0 : std::find(small_.begin(), small_.end(), r) != small_.end();
  }
  void insert(const ActorRef& r) {
    if (big_) {
      big_->insert(r);
      return;
    }
    small_.push_back(r);
    if (small_.size() > kSmall) {
      big_ = std::make_unique<std::unordered_set<ActorRef>>(small_.begin(), small_.end());
      small_.clear();
      small_.shrink_to_fit();
    }
  }
  /// Removes `r`; false when absent.
  bool erase(const ActorRef& r) {
    if (big_) return big_->erase(r) != 0;
    auto it = std::find(small_.begin(), small_.end(), r);
    if (it == small_.end()) return false;
    small_.erase(it);
    return true;
  }
  template <class F>
  void for_each(F&& f) const {
    if (big_) {
      for (const auto& r : *big_) f(r);
    } else {
      for (const auto& r : small_) f(r);
    }
  }
  void clear() {
    small_.clear();
    big_.reset();
  }

 private:
  static constexpr std::size_t kSmall = 16;
  std::vector<ActorRef> small_;
  std::unique_ptr<std::unordered_set<ActorRef>> big_;
};

class Cell final : public RefTarget, public ActorContext {
 public:
  enum : std::uint32_t {
    kScheduled = 1u << 0,    // queued or running on a worker (holds one reference)
    kStarting = 1u << 1,     // pre_start has not run yet
    kStopReq = 1u << 2,      // stop requested
    kTerminating = 1u << 3,  // waiting for children to stop
    kDead = 1u << 4,         // post_stop ran; every message now goes to dead letters
    kPending = 1u << 5,      // re-evaluate control state (a child died)
    kSuspended = 1u << 6,    // failed; waiting for the parent's directive (messages wait)
    kDirective = 1u << 7,    // a directive from the parent is waiting in Extras
    kRecreating = 1u << 8,   // restarting: waiting for children to stop before the new instance
    kCounted = 1u << 9,      // keep Extras::queued up to date (routers that need mailbox sizes)
    kReasonShift = 16,       // 3 bits: troupe::sys::TerminationReason
  };

  Cell(ActorSystem::Impl& sys, Cell* parent, FactoryPtr f, std::uint64_t id);

  // RefTarget
  void send(Message&& msg, ActorRef&& sender) override;
  std::string path() const override;
  std::uint64_t id() const noexcept override { return id_; }
  ActorSystem& system() const noexcept override;
  void stop() override { request_stop(sys::TerminationReason::Stopped); }
  void add_watcher(const ActorRef& watcher) override;
  void remove_watcher(const ActorRef& watcher) override;

  /// Makes the root guardian (never scheduled until shutdown or an escalation reaches it).
  static Cell* make_root(ActorSystem::Impl& sys, FactoryPtr f, std::uint64_t id);
  /// Spawns a child of this cell (any thread).
  ActorRef spawn(FactoryPtr f, SpawnOptions opts);
  void request_stop(sys::TerminationReason reason);
  void enqueue(Envelope* e);
  /// Runs `fn` on this actor's own turn, in mailbox order.
  void run_on_turn(std::function<void(Cell&)> fn);
  /// The actor instance (valid on the actor's own turn; null between incarnations).
  Actor* instance() noexcept { return actor_; }
  /// One turn on a worker; the caller hands over the scheduled reference.
  void run();
  bool dead() const noexcept { return state_.load(std::memory_order_acquire) & kDead; }
  bool terminated() const noexcept override { return dead(); }
  bool addressable() const noexcept override { return true; }
  /// Stop requested, stopping or dead.
  bool stopping() const noexcept { return state_.load(std::memory_order_acquire) & (kStopReq | kTerminating | kDead); }
  /// Any thread: hands the parent's decision to this (suspended) cell.
  void direct(Directive d, std::exception_ptr cause);
  /// Any thread: from now on keep a count of queued messages (for load_estimate()).
  void enable_load_count();
  /// Any thread: 2 * queued messages (+1 while scheduled or running); 0 = idle and empty.
  std::uint64_t load_estimate() const noexcept;
  /// Own turn: increases with every restart (continuations of an older instance are dropped).
  std::uint64_t incarnation() const noexcept;
  std::string name() const;
  /// Live child named `name` ("$<id>" for anonymous children), or null.
  ActorRef child(std::string_view name) const;

  /// Own turn only: true (and the watch is consumed) when this actor watches `ref`.
  bool consume_watch(const ActorRef& ref);

  // Used by ActorContext (own turn only).
  void watch(const ActorRef& ref);
  void unwatch(const ActorRef& ref);
  TimerId start_timer(std::chrono::nanoseconds d, Message msg, bool periodic);
  void cancel_timer(TimerId id);
  void forget_timer(TimerId id);
  ActorSystem::Impl& sys() const noexcept { return sys_; }
  Cell* parent_cell() const noexcept { return parent_; }

 protected:
  ~Cell() override;

 private:
  struct Extras {
    std::string name;
    Cell* first_child = nullptr;                                 // guarded by stripe(this)
    std::unordered_map<std::string_view, Cell*> named_children;  // guarded by stripe(this)
    std::vector<ActorRef> watchers;                              // guarded by stripe(this)
    WatchSet watching;                                           // own turn only
    std::unordered_map<TimerId, Ref<TimerState>> timers;          // own turn only
    TimerId next_timer = 0;
    std::uint64_t incarnation = 0;                               // own turn only
    std::atomic<std::int64_t> queued{0};                         // with kCounted
    std::exception_ptr restart_cause;                            // own turn only
    Cell* escalated_child = nullptr;                             // own turn only
    // Restart statistics of this cell as a child: touched only on the parent's turn.
    unsigned restarts = 0;
    TimerService::Clock::time_point window_start{};
    // The parent's pending directive, guarded by stripe(this).
    Directive directive = Directive::resume;
    std::exception_ptr directive_cause;
  };
  Extras& extras();
  bool wake(std::uint32_t bits);
  bool has_work(std::uint32_t s) const noexcept;
  void start();
  void process(unsigned budget);
  void deliver(Letter& l);
  void handle_failure(std::exception_ptr ep);
  void child_failed(Cell& child, std::exception_ptr ep);
  void apply_directive();
  void restart(std::exception_ptr ep);
  void finish_recreate();
  void stop_children();
  void begin_terminate();
  bool no_children() const;
  void finalize();
  void child_died(Cell* child);
  void release_name(Cell* child);
  void drain_dead();
  void cancel_all_timers();
  void finish_turn();
  void arm(const Ref<TimerState>& t, std::chrono::nanoseconds d);

  std::atomic<std::uint32_t> state_{0};  // first: fills RefTarget's tail padding
  ActorSystem::Impl& sys_;
  Mailbox mbox_;
  Cell* parent_;                              // strong reference; null for the root
  Cell* prev_sibling_ = nullptr;              // guarded by stripe(parent_)
  Cell* next_sibling_ = nullptr;              // guarded by stripe(parent_)
  Actor* actor_ = nullptr;
  FactoryPtr factory_;
  std::atomic<Extras*> extras_{nullptr};
  std::uint64_t id_;
};

/// Striped locks shared by all cells: no mutex per actor.
std::mutex& stripe(const void* p) noexcept;

/// Sender of the message being processed on this thread (null outside a turn).
const ActorRef& current_sender() noexcept;

/// Sends the runtime's Terminated about `dead` to `watcher`.
void notify_terminated(const ActorRef& watcher, const Message& terminated, const ActorRef& dead);

/// Builds the Terminated message for `path`.
Message make_terminated(sys::TerminationReason reason, const std::string& path);

}  // namespace troupe::detail
