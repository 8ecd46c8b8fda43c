#include <troupe/actor/router.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <deque>
#include <mutex>
#include <cmath>
#include <random>

#include <fmt/format.h>
#define XXH_INLINE_ALL
#include <xxhash.h>

#include <troupe/actor/actor_system.hpp>
#include <troupe/serialization/system_generated.h>

#include "system_impl.hpp"

namespace troupe::detail {

namespace {

std::uint64_t hash_bytes(const void* p, std::size_t n) { return XXH3_64bits(p, n); }

std::uint64_t default_key(const Message& m) { return hash_bytes(m.bytes().data(), m.size()); }

thread_local std::mt19937_64 tls_rng{std::random_device{}()};

// Round robin in the sending thread without a shared counter per message: each thread keeps its
// place in the last router it sent through, and takes a place from the router's shared counter
// only when it comes to a router (again). One thread sending alone sees exact round robin; several
// each go round in turn (every routee gets within one message per thread of the others).
struct RoundRobinCursor {
  std::uint64_t router = 0;  // the router's cursor key (0: none yet)
  std::uint64_t next = 0;
};
thread_local RoundRobinCursor tls_cursor;
// Cursor keys: unique in the process and never reused (actor ids are per system, and a freed
// router's address can come back).
std::atomic<std::uint64_t> g_next_cursor_key{1};

// The per-thread stripe of a router's send counters.
std::atomic<unsigned> g_next_stripe{0};
unsigned stripe_of_thread() {
  thread_local const unsigned stripe = g_next_stripe.fetch_add(1, std::memory_order_relaxed);
  return stripe;
}

}  // namespace

/// An immutable view of the routees; replaced as a whole on every change so that routing reads
/// it with one atomic load and no lock or reference count.
struct Snapshot {
  std::vector<ActorRef> routees;
  std::vector<std::pair<std::uint64_t, std::uint32_t>> ring;  // consistent hashing: (point, routee)
};

class RouterState final : public RefTarget {
 public:
  RouterState(ActorSystem::Impl& sys, RouterConfig cfg, std::uint64_t id, std::optional<Resizer> resizer = {})
      : sys_(sys), cfg_(std::move(cfg)), id_(id), resizer_(std::move(resizer)),
        cursor_key_(g_next_cursor_key.fetch_add(1, std::memory_order_relaxed)) {
    if (!cfg_.hash_key) cfg_.hash_key = default_key;
    publish({});
  }

  // ---- RefTarget: routing happens here, in the sender's thread ----
  void send(Message&& msg, ActorRef&& sender) override;
  std::string path() const override {
    {
      std::lock_guard lk(mu_);
      if (head_) return head_->path();
    }
    return fmt::format("/temp/router-{}", id_);
  }
  std::uint64_t id() const noexcept override { return id_; }
  ActorSystem& system() const noexcept override { return sys_.owner; }
  void stop() override { stop_all(); }

  void add(const ActorRef& r);
  /// `failed`: it died of failures (its replacement counts against the pool's budget).
  void remove(const ActorRef& r, bool died, bool failed = false);
  std::vector<ActorRef> routees() const { return current_.load(std::memory_order_acquire)->routees; }
  void broadcast(const Message& msg, const ActorRef& sender) const {
    for (const auto& r : current_.load(std::memory_order_acquire)->routees) r.tell(msg, sender);
  }
  void stop_all();
  RouterStats stats() const {
    return {routed_.load() + striped_sent(), no_routee_.load(), timeouts_.load(), removed_.load(), replaced_.load(),
            resizes_.load(), refused_.load()};
  }
  void set_head(Cell* head) {
    std::lock_guard lk(mu_);
    head_ = Ref<Cell>(head, true);
  }
  bool counts_load() const noexcept { return cfg_.kind == RoutingKind::smallest_mailbox || resizer_; }
  void count_timeout() { timeouts_.fetch_add(1, std::memory_order_relaxed); }
  void count_replaced() { replaced_.fetch_add(1, std::memory_order_relaxed); }
  void count_refused() { refused_.fetch_add(1, std::memory_order_relaxed); }
  void release_head() {
    std::lock_guard lk(mu_);
    head_ = Ref<Cell>();
  }
  ActorSystem::Impl& sys() const noexcept { return sys_; }

 private:
  void publish(std::vector<ActorRef> routees);  // mu_ held (or constructor)
  const ActorRef* pick(const Snapshot& s, const Message& msg);
  void gather(const Snapshot& s, Message&& msg, ActorRef&& sender);

  ActorSystem::Impl& sys_;
  RouterConfig cfg_;
  std::uint64_t id_;
  const std::optional<Resizer> resizer_;  // fixed at construction: read by senders without a lock
  const std::uint64_t cursor_key_;         // this router in the threads' round-robin cursors
  mutable std::mutex mu_;
  // Every send reads current_ and writes a counter: each on a cache line of its own, or the
  // senders' writes would evict the snapshot pointer from every core.
  alignas(64) std::atomic<const Snapshot*> current_{nullptr};
  std::vector<std::unique_ptr<const Snapshot>> history_;  // readers may still hold old ones
  std::unordered_map<RefTarget*, ActorRef> watchers_;      // routee -> its watcher
  Ref<Cell> head_;                                          // pool supervisor, if a pool
  bool stopping_ = false;
  // Round robin: places handed to threads arriving at this router; tail chopping: where each
  // round starts.
  alignas(64) std::atomic<std::uint64_t> rr_{0};
  // Sends counted per thread (striped: no line shared by two busy senders), or on routed_ when a
  // resizer needs the running total of all senders.
  static constexpr unsigned kStripes = 8;
  struct alignas(64) Stripe {
    std::atomic<std::uint64_t> n{0};
  };
  std::array<Stripe, kStripes> sent_{};
  std::uint64_t striped_sent() const {
    std::uint64_t n = 0;
    for (const auto& s : sent_) n += s.n.load(std::memory_order_relaxed);
    return n;
  }
  /// Counts one send; returns the count that maybe_resize() looks at.
  std::uint64_t count_send() {
    if (resizer_) return routed_.fetch_add(1, std::memory_order_relaxed) + 1;
    return sent_[stripe_of_thread() % kStripes].n.fetch_add(1, std::memory_order_relaxed) + 1;
  }
  alignas(64) std::atomic<std::uint64_t> routed_{0};
  std::atomic<std::uint64_t> no_routee_{0}, timeouts_{0}, removed_{0}, replaced_{0}, resizes_{0}, refused_{0};
  void maybe_resize(const Snapshot& s, std::uint64_t n);
};

namespace {

/// Watches one routee for its router: its Terminated removes the routee.
class RouteeWatcher final : public RefTarget {
 public:
  explicit RouteeWatcher(RouterState* s) : state_(s, true) {}
  void send(Message&& msg, ActorRef&& sender) override {
    const auto* t = msg.as<sys::Terminated>();
    if (t && sender) {
      static_cast<RouterState*>(state_.target())->remove(sender, true, t->reason() == sys::TerminationReason::Failed);
    }
  }
  std::string path() const override { return state_.path() + "/$watcher"; }
  std::uint64_t id() const noexcept override { return state_.id(); }
  ActorSystem& system() const noexcept override { return state_.target()->system(); }

 private:
  ActorRef state_;
};

/// The sender of a scatter-gather / tail-chopping round: the first reply wins.
class Gather final : public RefTarget {
 public:
  Gather(RouterState* s, ActorRef reply_to, std::uint64_t id) : state_(s, true), reply_to_(std::move(reply_to)), id_(id) {}
  void send(Message&& msg, ActorRef&& sender) override {
    if (done_.exchange(true, std::memory_order_acq_rel)) return;
    cancel_timers();
    reply_to_.tell(std::move(msg), std::move(sender));
  }
  void time_out() {
    if (done_.exchange(true, std::memory_order_acq_rel)) return;
    cancel_timers();
    static_cast<RouterState*>(state_.target())->count_timeout();
  }
  bool done() const noexcept { return done_.load(std::memory_order_acquire); }
  void add_timer(std::uint64_t t) {
    std::lock_guard lk(mu_);
    timers_.push_back(t);
  }
  std::string path() const override { return fmt::format("/temp/gather-{}", id_); }
  std::uint64_t id() const noexcept override { return id_; }
  ActorSystem& system() const noexcept override { return state_.target()->system(); }

 private:
  void cancel_timers() {
    std::vector<std::uint64_t> ts;
    {
      std::lock_guard lk(mu_);
      ts.swap(timers_);
    }
    auto& timers = system().timers();
    for (auto t : ts) timers.cancel(t);
  }
  ActorRef state_, reply_to_;
  std::uint64_t id_;
  std::atomic<bool> done_{false};
  std::mutex mu_;
  std::vector<std::uint64_t> timers_;
};

}  // namespace

void RouterState::publish(std::vector<ActorRef> routees) {
  auto s = std::make_unique<Snapshot>();
  s->routees = std::move(routees);
  if (cfg_.kind == RoutingKind::consistent_hashing) {
    for (std::uint32_t i = 0; i < s->routees.size(); ++i) {
      const auto base = s->routees[i].path();
      for (unsigned v = 0; v < cfg_.virtual_nodes; ++v) {
        const auto point = fmt::format("{}#{}", base, v);
        s->ring.emplace_back(hash_bytes(point.data(), point.size()), i);
      }
    }
    std::sort(s->ring.begin(), s->ring.end());
  }
  current_.store(s.get(), std::memory_order_release);
  history_.push_back(std::move(s));
}

void RouterState::add(const ActorRef& r) {
  if (!r) return;
  ActorRef watcher;
  {
    std::lock_guard lk(mu_);
    if (stopping_ || watchers_.count(r.target())) return;
    auto rs = current_.load(std::memory_order_relaxed)->routees;
    rs.push_back(r);
    publish(std::move(rs));
    watcher = ActorRef(new RouteeWatcher(this), false);
    watchers_.emplace(r.target(), watcher);
  }
  if (counts_load()) {
    if (auto* c = as_cell(r.target())) c->enable_load_count();
  }
  r.target()->add_watcher(watcher);  // a routee that is already dead is removed at once
}

void RouterState::remove(const ActorRef& r, bool died, bool failed) {
  ActorRef watcher;
  bool replace = false;
  {
    std::lock_guard lk(mu_);
    auto it = watchers_.find(r.target());
    if (it == watchers_.end()) return;
    watcher = std::move(it->second);
    watchers_.erase(it);
    auto rs = current_.load(std::memory_order_relaxed)->routees;
    std::erase(rs, r);
    publish(std::move(rs));
    removed_.fetch_add(1, std::memory_order_relaxed);
    replace = died && head_ && !stopping_ && !head_->stopping();
    if (replace) {
      head_->send(Message::build<sys::PoolResize>([failed](auto& b) { return sys::CreatePoolResize(b, 1, true, failed); }),
                  ActorRef{});
    }
  }
  if (!died) r.target()->remove_watcher(watcher);
}

void RouterState::stop_all() {
  std::vector<ActorRef> rs;
  Ref<Cell> head;
  {
    std::lock_guard lk(mu_);
    stopping_ = true;
    rs = current_.load(std::memory_order_relaxed)->routees;
    head = head_;
  }
  if (head) {
    head->stop();  // its children, the routees, stop first
  } else {
    for (auto& r : rs) r.target()->stop();
  }
}

const ActorRef* RouterState::pick(const Snapshot& s, const Message& msg) {
  const auto n = s.routees.size();
  switch (cfg_.kind) {
    case RoutingKind::round_robin: {
      auto& c = tls_cursor;
      if (c.router != cursor_key_) c = {cursor_key_, rr_.fetch_add(1, std::memory_order_relaxed) % n};
      // The place wraps by a compare, not a division per message; a place past a routee set
      // that shrank is taken modulo its new size.
      auto i = c.next;
      if (i >= n) i %= n;
      c.next = i + 1 == n ? 0 : i + 1;
      return &s.routees[i];
    }
    case RoutingKind::random:
      return &s.routees[tls_rng() % n];
    case RoutingKind::consistent_hashing: {
      const auto key = cfg_.hash_key(msg);
      auto it = std::upper_bound(s.ring.begin(), s.ring.end(), std::make_pair(key, ~0u));
      if (it == s.ring.end()) it = s.ring.begin();
      return &s.routees[it->second];
    }
    case RoutingKind::smallest_mailbox: {
      const ActorRef* best = nullptr;
      std::uint64_t best_score = ~0ull;
      for (const auto& r : s.routees) {
        auto* c = as_cell(r.target());
        const std::uint64_t score = c ? c->load_estimate() : 1;
        if (score < best_score) {
          best_score = score;
          best = &r;
          if (score == 0) break;  // idle with an empty mailbox: cannot do better
        }
      }
      return best;
    }
    default:
      return nullptr;
  }
}

void RouterState::gather(const Snapshot& s, Message&& msg, ActorRef&& sender) {
  auto* g = new Gather(this, std::move(sender), sys_.next_id.fetch_add(1, std::memory_order_relaxed));
  ActorRef gref(g, false);
  auto& timers = *sys_.timers;
  g->add_timer(timers.schedule(cfg_.within, [gref] { static_cast<Gather*>(gref.target())->time_out(); }));
  if (cfg_.kind == RoutingKind::scatter_gather) {
    for (const auto& r : s.routees) r.tell(msg, gref);
    return;
  }
  // Tail-chopping: one routee now, the next after each interval until someone answers.
  const auto start = rr_.fetch_add(1, std::memory_order_relaxed);
  auto routees = std::make_shared<std::vector<ActorRef>>(s.routees);
  routees->at(start % routees->size()).tell(msg, gref);
  for (std::size_t k = 1; k < routees->size(); ++k) {
    const auto at = cfg_.interval * static_cast<long>(k);
    if (at >= cfg_.within) break;
    g->add_timer(timers.schedule(at, [gref, routees, msg, i = (start + k) % routees->size()] {
      if (!static_cast<Gather*>(gref.target())->done()) (*routees)[i].tell(msg, gref);
    }));
  }
}

void RouterState::maybe_resize(const Snapshot& s, std::uint64_t n) {
  if (!resizer_ || n % std::max(1u, resizer_->messages_per_resize) != 0) return;
  unsigned busy = 0;
  for (const auto& r : s.routees) {
    auto* c = as_cell(r.target());
    busy += (c && c->load_estimate() > 0) ? 1 : 0;
  }
  const int delta = resize_delta(*resizer_, static_cast<unsigned>(s.routees.size()), busy);
  if (delta == 0) return;
  Ref<Cell> head;
  {
    std::lock_guard lk(mu_);
    if (stopping_) return;
    head = head_;
  }
  if (!head) return;
  resizes_.fetch_add(1, std::memory_order_relaxed);
  head->send(Message::build<sys::PoolResize>([delta](auto& b) { return sys::CreatePoolResize(b, delta, false); }),
             ActorRef{});
}

void RouterState::send(Message&& msg, ActorRef&& sender) {
  const Snapshot& s = *current_.load(std::memory_order_acquire);
  if (s.routees.empty()) {
    no_routee_.fetch_add(1, std::memory_order_relaxed);
    sys_.dead_letter(msg, sender, path(), "router has no routees");
    return;
  }
  const auto n = count_send();
  if (const auto* b = msg.as<sys::Broadcast>()) {
    const auto* p = b->payload();
    Message inner = Message::copy_of(b->type_id(), p ? std::span<const std::uint8_t>(p->data(), p->size())
                                                     : std::span<const std::uint8_t>{});
    for (const auto& r : s.routees) r.tell(inner, sender);
    return;
  }
  switch (cfg_.kind) {
    case RoutingKind::broadcast:
      for (const auto& r : s.routees) r.tell(msg, sender);
      return;
    case RoutingKind::scatter_gather:
    case RoutingKind::tail_chopping:
      gather(s, std::move(msg), std::move(sender));
      return;
    default:
      pick(s, msg)->tell(std::move(msg), std::move(sender));
  }
  maybe_resize(s, n);
}

namespace {

/// A pool's supervisor: its children are the routees.
class PoolHead final : public Actor {
 public:
  PoolHead(ActorRef state, unsigned size, std::optional<Resizer> resizer, SupervisorStrategy strategy,
           RouteeSpawner spawn)
      : state_(std::move(state)), size_(size), resizer_(std::move(resizer)), strategy_(std::move(strategy)),
        spawn_(std::move(spawn)) {
    if (resizer_) size_ = std::clamp(size_, resizer_->lower, std::max(resizer_->lower, resizer_->upper));
  }
  void pre_start() override {
    for (unsigned i = 0; i < size_; ++i) grow();
  }
  void receive(const Message& m) override {
    const auto* r = m.as<sys::PoolResize>();
    if (!r) return;
    const auto size = static_cast<unsigned>(router().routees().size());
    if (r->replacement()) {
      for (int i = 0; i < r->delta(); ++i) {
        // Asked for before a restart of this supervisor, whose pre_start spawned a full pool.
        if (router().routees().size() >= (resizer_ ? std::max(size_, resizer_->upper) : size_)) break;
        if (r->failed() && !replacement_allowed()) {
          router().count_refused();
          context().system().log().error(
              "pool {}: a stopped routee is not replaced: {} replacements within {} ms already (the supervision "
              "budget, {} per routee); the pool has {} routees",
              context().self().path(), replaced_at_.size(), strategy_.budget.within.count(),
              strategy_.budget.max_restarts, size);
          continue;
        }
        grow();
        router().count_replaced();
      }
    } else if (resizer_ && r->delta() > 0) {
      const auto room = resizer_->upper > size ? resizer_->upper - size : 0;
      for (unsigned i = 0; i < std::min<unsigned>(room, static_cast<unsigned>(r->delta())); ++i) grow();
    } else if (resizer_ && r->delta() < 0) {
      // Shrink: take routees out of the router first (so they are not replaced), then stop them.
      const auto spare = size > resizer_->lower ? size - resizer_->lower : 0;
      auto routees = router().routees();
      for (unsigned i = 0; i < std::min<unsigned>(spare, static_cast<unsigned>(-r->delta())); ++i) {
        const auto victim = routees[routees.size() - 1 - i];
        router().remove(victim, false);
        context().stop(victim);
      }
    }
  }
  void post_stop() override { router().release_head(); }
  // Restarted (a routee's failure escalated to it, or a routee failed to start): its routees
  // are stopped with its children, and the fresh instance's pre_start spawns new ones. It stays
  // the router's head (the default pre_restart would run post_stop and leave the pool without
  // replacement or resizing for good); the routees leave the router first, so that their deaths
  // are not replaced on top of the new ones.
  void pre_restart(std::exception_ptr) override {
    for (const auto& r : router().routees()) router().remove(r, false);
  }
  SupervisorStrategy supervisor_strategy() const override { return strategy_; }

 private:
  RouterState& router() { return *static_cast<RouterState*>(state_.target()); }
  void grow() { router().add(spawn_(context())); }
  // Replacements of routees that failed share the supervision budget: at most max_restarts per
  // routee of the pool within `within`. A routee that cannot start is restarted until its budget
  // is spent, then stopped; without this bound its replacement would start the same loop again,
  // for ever. A routee that stopped (itself, or stopped by the user) is always replaced.
  bool replacement_allowed() {
    const auto now = std::chrono::steady_clock::now();
    while (!replaced_at_.empty() && now - replaced_at_.front() > strategy_.budget.within) replaced_at_.pop_front();
    const auto limit = std::size_t{std::max(1u, strategy_.budget.max_restarts)} * std::max(1u, size_);
    if (replaced_at_.size() >= limit) return false;
    replaced_at_.push_back(now);
    return true;
  }
  std::deque<std::chrono::steady_clock::time_point> replaced_at_;
  ActorRef state_;
  unsigned size_;
  std::optional<Resizer> resizer_;
  SupervisorStrategy strategy_;
  RouteeSpawner spawn_;
};

}  // namespace

Router make_pool(ActorSystem& sys, unsigned size, RouterConfig config, PoolOptions options, RouteeSpawner spawn) {
  auto& impl = sys.impl();
  auto* state = new RouterState(impl, std::move(config), impl.next_id.fetch_add(1, std::memory_order_relaxed),
                                options.resizer);
  ActorRef ref(state, false);
  auto head = sys.spawn<PoolHead>(SpawnOptions{.name = std::move(options.name)}, ref, size, options.resizer,
                                  std::move(options.supervision), std::move(spawn));
  state->set_head(static_cast<Cell*>(head.target()));
  return Router(ref);
}

}  // namespace troupe::detail

namespace troupe {

detail::RouterState& Router::state() const { return *static_cast<detail::RouterState*>(ref_.target()); }
ActorRef Router::ref() const { return ref_; }
void Router::add(const ActorRef& routee) { state().add(routee); }
void Router::remove(const ActorRef& routee) { state().remove(routee, false); }
std::vector<ActorRef> Router::routees() const { return state().routees(); }
void Router::broadcast(const Message& msg, const ActorRef& sender) const { state().broadcast(msg, sender); }
void Router::stop_all() { state().stop_all(); }
RouterStats Router::stats() const { return state().stats(); }

Message make_broadcast(const Message& msg) {
  return Message::build<sys::Broadcast>([&](flatbuffers::FlatBufferBuilder& b) {
    return sys::CreateBroadcast(b, msg.type(), b.CreateVector(msg.bytes().data(), msg.size()));
  });
}

int resize_delta(const Resizer& r, unsigned size, unsigned busy) noexcept {
  const unsigned lower = r.lower, upper = std::max(r.lower, r.upper);
  int delta = 0;
  if (size > 0 && busy >= size) {
    delta = static_cast<int>(std::ceil(r.rampup_rate * size));
  } else if (size > 0 && r.backoff_rate > 0 && static_cast<double>(busy) / size < r.backoff_threshold) {
    delta = -std::max(1, static_cast<int>(std::floor(r.backoff_rate * size)));
  }
  const long target = std::clamp<long>(static_cast<long>(size) + delta, lower, upper);
  return static_cast<int>(target - static_cast<long>(size));
}

Router make_group(ActorSystem& sys, const std::vector<ActorRef>& routees, RouterConfig config) {
  auto& impl = sys.impl();
  auto* state = new detail::RouterState(impl, std::move(config), impl.next_id.fetch_add(1, std::memory_order_relaxed));
  Router r(ActorRef(state, false));
  for (const auto& x : routees) r.add(x);
  return r;
}

Router make_group(ActorSystem& sys, const std::vector<std::string>& paths, RouterConfig config) {
  std::vector<ActorRef> refs;
  for (const auto& p : paths) {
    if (auto r = sys.lookup(p)) refs.push_back(std::move(r));
  }
  return make_group(sys, refs, std::move(config));
}

}  // namespace troupe
