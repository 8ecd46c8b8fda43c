#pragma once
// The runtime's representation of one actor: mailbox, state word, place in the tree, and the
// user's Actor instance. Rarely used parts live in lazily allocated blocks so that an idle actor
// stays small: Ident (name and watchers: what a named, watched child such as a shard entity
// needs) and, behind it, Extras (children, watches, timers, restart statistics).

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <typeinfo>
#include <unordered_map>
#include <vector>

#include <troupe/actor/actor.hpp>
#include <troupe/actor/actor_system.hpp>
#include <troupe/serialization/system_generated.h>

#include "mailbox.hpp"
#include "ptr_set.hpp"

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

/// The actors one actor watches (each with a reference): an open-addressing set of targets, so
/// that a parent watching a million children (a shard region) pays neither O(n) per watch nor
/// a hash node per child.
class WatchSet {
 public:
  WatchSet() = default;
  WatchSet(const WatchSet&) = delete;
  WatchSet& operator=(const WatchSet&) = delete;
  ~WatchSet() { clear(); }
  bool contains(const ActorRef& r) const { return set_.contains(r.target()); }
  void insert(const ActorRef& r) {
    if (!r || contains(r)) return;
    r.target()->add_ref();
    set_.insert(r.target());
  }
  /// Removes `r`; false when absent.
  bool erase(const ActorRef& r) {
    if (!r || !set_.erase(r.target())) return false;
    r.target()->release();  // the set's reference; the caller still holds one
    return true;
  }
  template <class F>
  void for_each(F&& f) const {
    set_.for_each([&](RefTarget* t) { f(ActorRef(t, true)); });
  }
  void clear() {
    auto s = std::move(set_);
    s.for_each([](RefTarget* t) { t->release(); });
  }

 private:
  struct Traits {
    static std::size_t hash(const RefTarget* t) noexcept { return mix_pointer(t); }
  };
  PtrSet<RefTarget, Traits> set_;
};

/// The actors watching one actor, in the order they came. Most have none or one (their parent,
/// a shard region): the first lives inline; more go to a vector.
class WatcherList {
 public:
  /// Adds `w`; false when it is there already.
  bool add(const ActorRef& w) {
    if (!w || first_ == w || (rest_ && std::find(rest_->begin(), rest_->end(), w) != rest_->end())) return false;
    if (!first_) {
      first_ = w;  // then there is no other
    } else {
      if (!rest_) rest_ = std::make_unique<std::vector<ActorRef>>();
      rest_->push_back(w);
    }
    return true;
  }
  void erase(const ActorRef& w) {
    if (!w) return;
    if (first_ == w) {
      first_ = ActorRef();
      if (rest_ && !rest_->empty()) {
        first_ = std::move(rest_->front());
        rest_->erase(rest_->begin());
      }
    } else if (rest_) {
      std::erase(*rest_, w);
    }
  }
  bool empty() const noexcept { return !first_ && (!rest_ || rest_->empty()); }
  template <class F>
  void for_each(F&& f) const {
    if (first_) f(first_);
    if (rest_) {
      for (const auto& w : *rest_) f(w);
    }
  }

 private:
  ActorRef first_;
  std::unique_ptr<std::vector<ActorRef>> rest_;
};

/// Named children are found by the child's own name: no key string or node per child.
struct ChildNameTraits {
  static std::size_t hash(const Cell* c) noexcept;
};
using ChildNames = PtrSet<Cell, ChildNameTraits>;

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
    kFinalizing = 1u << 10,  // finalize() took the keep_queued hook (under the stripe lock): too late to set one
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
  /// ActorSystem::stop_keeping_queued (any thread); false when already dead.
  bool stop_keeping_queued(ActorSystem::KeepQueued keep);
  void enqueue(Envelope* e);
  /// Runs `fn` on this actor's own turn, in mailbox order.
  void run_on_turn(std::function<void(Cell&)> fn);
  /// The actor instance (valid on the actor's own turn; null between incarnations).
  Actor* instance() noexcept { return actor_; }
  /// One turn on a worker; the caller hands over the scheduled reference.
  void run();
  /// Dispatcher use, for a lingering cell (it holds the scheduled reference): a turn has work.
  bool runnable() const noexcept { return has_work(state_.load(std::memory_order_seq_cst)); }
  /// Dispatcher use: gives up a linger as a turn that found nothing more to do would: clears the
  /// scheduled flag (or hands the cell back to the dispatcher if work came in meanwhile).
  void end_turn();
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
  /// The name given at spawn ("" for an anonymous actor); constant.
  std::string_view own_name() const noexcept;
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
    Cell* first_child = nullptr;                                 // guarded by stripe(this)
    ChildNames named_children;                                   // guarded by stripe(this)
    WatchSet watching;                                           // own turn only
    std::unordered_map<TimerId, Ref<TimerState>> timers;          // own turn only
    TimerId next_timer = 0;
    std::uint64_t incarnation = 0;                               // own turn only
    std::atomic<std::int64_t> queued{0};                         // with kCounted
    std::exception_ptr restart_cause;                            // own turn only
    Ref<Cell> escalated_child;                                   // own turn only
    // Restart statistics of this cell as a child: touched only on the parent's turn.
    unsigned restarts = 0;
    TimerService::Clock::time_point window_start{};
    // The parent's pending directive, guarded by stripe(this).
    Directive directive = Directive::resume;
    std::exception_ptr directive_cause;
    // ActorSystem::stop_keeping_queued: who gets the last turn's instance and queued messages
    // (guarded by stripe(this)).
    ActorSystem::KeepQueued keep_queued;
  };
  /// What a named or watched actor needs; 56 bytes.
  struct Ident {
    Ident() = default;
    Ident(const Ident&) = delete;
    Ident& operator=(const Ident&) = delete;
    ~Ident() { delete extras.load(std::memory_order_acquire); }
    std::string name;                      // set at spawn, constant afterwards
    WatcherList watchers;                  // guarded by stripe(this)
    std::atomic<Extras*> extras{nullptr};  // the rest, allocated on first need
  };
  Ident& ident();
  Extras& extras();
  Extras* extras_if() const noexcept;
  /// A live or dying named child (caller holds stripe(this)).
  Cell* named_child(std::string_view name) const;
  bool wake(std::uint32_t bits);
  bool has_work(std::uint32_t s) const noexcept;
  void start();
  /// Runs up to `budget` messages; true when it stopped at a push still half-way (a producer
  /// between its two steps: the message is there, not yet linked).
  bool process(unsigned budget);
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
  std::atomic<Ident*> ident_{nullptr};
  std::uint64_t id_;
};

/// The Cell behind a ref target, or null. Cell is final: comparing the dynamic type is exact,
/// and cheaper than a dynamic_cast where routing looks at every routee per message.
inline Cell* as_cell(RefTarget* t) noexcept { return t && typeid(*t) == typeid(Cell) ? static_cast<Cell*>(t) : nullptr; }

/// Striped locks shared by all cells: no mutex per actor.
std::mutex& stripe(const void* p) noexcept;

/// Sender of the message being processed on this thread (null outside a turn).
const ActorRef& current_sender() noexcept;

/// Sends the runtime's Terminated about `dead` to `watcher`.
void notify_terminated(const ActorRef& watcher, const Message& terminated, const ActorRef& dead);

/// Builds the Terminated message for `path`.
Message make_terminated(sys::TerminationReason reason, const std::string& path);

}  // namespace troupe::detail
