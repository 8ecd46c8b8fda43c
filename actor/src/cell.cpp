#include "cell.hpp"

#include <sched.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <random>
#include <system_error>

#include <spdlog/spdlog.h>

#include "system_impl.hpp"

namespace troupe::detail {

namespace {

const ActorRef kNoSender{};
thread_local const ActorRef* tls_sender = &kNoSender;

/// Sets the current sender for the duration of a callback into user code.
struct SenderScope {
  explicit SenderScope(const ActorRef& s) noexcept : prev(tls_sender) { tls_sender = &s; }
  ~SenderScope() { tls_sender = prev; }
  const ActorRef* prev;
};

std::string describe(std::exception_ptr ep) {
  try {
    if (ep) std::rethrow_exception(ep);
  } catch (const std::exception& e) {
    return e.what();
  } catch (...) {
    return "non-standard exception";
  }
  return "unknown";
}

std::string to_base36(std::uint64_t v) {
  char buf[16];
  auto [p, ec] = std::to_chars(buf, buf + sizeof buf, v, 36);
  return std::string(buf, p);
}

}  // namespace

std::mutex& stripe(const void* p) noexcept {
  static std::array<std::mutex, 256> locks;
  return locks[(reinterpret_cast<std::uintptr_t>(p) >> 6) % locks.size()];
}

Message make_terminated(sys::TerminationReason reason, const std::string& path) {
  return Message::build<sys::Terminated>(
      [&](flatbuffers::FlatBufferBuilder& b) { return sys::CreateTerminatedDirect(b, reason, path.c_str()); });
}

const ActorRef& current_sender() noexcept { return *tls_sender; }

Envelope* make_envelope(Message&& msg, ActorRef&& sender, Control* ctl) {
  if (void* slot = msg.claim_slot()) {
    auto* e = new (slot) Envelope;
    e->sender = std::move(sender);
    e->ctl = ctl;
    e->embedded = 1;
    return e;
  }
  auto* e = new HeapEnvelope;
  e->sender = std::move(sender);
  e->ctl = ctl;
  e->msg = std::move(msg);
  return e;
}

Letter open_envelope(MpscNode* n) noexcept {
  auto* e = static_cast<Envelope*>(n);
  Letter l{{}, std::move(e->sender), Ref<Control>(e->ctl, false)};
  if (e->embedded) {
    e->~Envelope();
    l.msg = Message::from_slot(e);
  } else {
    auto* h = static_cast<HeapEnvelope*>(e);
    l.msg = std::move(h->msg);
    delete h;
  }
  return l;
}

bool DeathNotice::admit(Cell& c) { return c.consume_watch(current_sender()); }

void notify_terminated(const ActorRef& watcher, const Message& terminated, const ActorRef& dead) {
  if (auto* cell = dynamic_cast<Cell*>(watcher.target())) {
    cell->enqueue(make_envelope(Message(terminated), ActorRef(dead), new DeathNotice));
  } else {
    watcher.tell(terminated, dead);
  }
}

bool TimerState::admit(Cell& c) {
  if (cancelled.load(std::memory_order_acquire)) return false;
  if (!periodic) c.forget_timer(id);
  return true;
}

Cell::Cell(ActorSystem::Impl& sys, Cell* parent, FactoryPtr f, std::uint64_t id)
    : sys_(sys), parent_(parent), factory_(std::move(f)), id_(id) {
  static_assert(sizeof(Cell) <= 104, "an idle actor's cell must stay small (see bench idle_actor_bytes)");
  static_assert(sizeof(Ident) <= 56, "a named, watched actor's Ident must fit a 64-byte chunk (see bench entity_idle_bytes)");
  if (parent_) parent_->add_ref();
}

Cell* Cell::make_root(ActorSystem::Impl& sys, FactoryPtr f, std::uint64_t id) {
  auto* c = new Cell(sys, nullptr, std::move(f), id);
  c->actor_ = c->factory_->make();
  c->actor_->ctx_ = c;
  return c;
}

Cell::~Cell() {
  // Runs when the last ref is gone, possibly after the system itself: touch no system state.
  while (MpscNode* n = mbox_.pop()) (void)open_envelope(n);
  delete actor_;
  delete ident_.load(std::memory_order_acquire);
  if (parent_) parent_->release();
}

ActorSystem& Cell::system() const noexcept { return sys_.owner; }

Cell::Ident& Cell::ident() {
  Ident* i = ident_.load(std::memory_order_acquire);
  if (i) return *i;
  auto* fresh = new Ident;
  if (ident_.compare_exchange_strong(i, fresh, std::memory_order_acq_rel)) return *fresh;
  delete fresh;
  return *i;
}

Cell::Extras& Cell::extras() {
  Ident& i = ident();
  Extras* e = i.extras.load(std::memory_order_acquire);
  if (e) return *e;
  auto* fresh = new Extras;
  if (i.extras.compare_exchange_strong(e, fresh, std::memory_order_acq_rel)) return *fresh;
  delete fresh;
  return *e;
}

Cell::Extras* Cell::extras_if() const noexcept {
  const Ident* i = ident_.load(std::memory_order_acquire);
  return i ? i->extras.load(std::memory_order_acquire) : nullptr;
}

std::string_view Cell::own_name() const noexcept {
  const Ident* i = ident_.load(std::memory_order_acquire);
  return i ? std::string_view(i->name) : std::string_view();
}

std::size_t ChildNameTraits::hash(const Cell* c) noexcept { return std::hash<std::string_view>()(c->own_name()); }

Cell* Cell::named_child(std::string_view name) const {
  const Extras* x = extras_if();
  if (!x) return nullptr;
  return x->named_children.find(std::hash<std::string_view>()(name),
                                [name](const Cell* c) { return c->own_name() == name; });
}

std::string Cell::name() const {
  const auto n = own_name();
  if (!n.empty()) return std::string(n);
  return "$" + to_base36(id_);
}

std::string Cell::path() const {
  if (!parent_) return "";
  return parent_->path() + "/" + name();
}

// ---- spawning ---------------------------------------------------------------------------------

namespace {
bool valid_name(const std::string& n) {
  return !n.empty() && n.front() != '$' && n.find('/') == std::string::npos && n.size() <= 255;
}
}  // namespace

ActorRef Cell::spawn(FactoryPtr f, SpawnOptions opts) {
  if (!opts.name.empty() && !valid_name(opts.name)) {
    throw std::system_error(ActorErrc::invalid_name, "invalid actor name '" + opts.name + "'");
  }
  if (sys_.shut_down.load(std::memory_order_acquire)) {
    throw std::system_error(ActorErrc::system_shutdown, "spawn after shutdown");
  }
  // refs = 1: the "alive" reference, owned by the cell itself and released by finalize().
  auto* c = new Cell(sys_, this, std::move(f), sys_.next_id.fetch_add(1, std::memory_order_relaxed));
  // Taken before it is linked: from then on another thread may find it, stop it and run it to
  // its end (releasing the alive reference) before this call goes on.
  ActorRef ref(c, true);
  bool parent_stopping = false;
  try {
    if (!opts.name.empty()) c->ident().name = std::move(opts.name);
    c->actor_ = c->factory_->make();  // a throwing constructor fails the spawn; nothing is linked
    c->actor_->ctx_ = c;
    // Before it is linked: from then on a look-up may find it and a tell (or a stop) schedule it,
    // and that turn must run pre_start first. Setting the state after linking wiped a concurrent
    // turn's kScheduled (two turns at once) or stop request.
    c->state_.store(kStarting, std::memory_order_relaxed);
    std::lock_guard lk(stripe(this));
    parent_stopping = state_.load(std::memory_order_acquire) & (kStopReq | kTerminating | kDead);
    Extras& mine = extras();
    if (const auto name = c->own_name(); !name.empty()) {
      if (named_child(name)) {
        throw std::system_error(ActorErrc::duplicate_name, "an actor named '" + std::string(name) +
                                                               "' already exists under '" + path() + "/'");
      }
      mine.named_children.insert(c);
    }
    Cell*& first = mine.first_child;
    c->next_sibling_ = first;
    if (first) first->prev_sibling_ = c;
    first = c;
  } catch (...) {
    c->release();
    throw;
  }
  sys_.spawned.fetch_add(1, std::memory_order_relaxed);
  c->wake(0);  // scheduled already when a tell came first
  if (parent_stopping) c->request_stop(sys::TerminationReason::Stopped);
  return ref;
}

// ---- sending and scheduling ---------------------------------------------------------------------

void Cell::send(Message&& msg, ActorRef&& sender) {
  if (state_.load(std::memory_order_acquire) & kDead) {
    sys_.dead_letter(msg, sender, path(), "recipient stopped");
    return;
  }
  enqueue(make_envelope(std::move(msg), std::move(sender)));
}

void Cell::enqueue(Envelope* e) {
  mbox_.push(e);
  const auto s = state_.load(std::memory_order_seq_cst);
  if (s & kCounted) extras_if()->queued.fetch_add(1, std::memory_order_relaxed);
  if (!(s & kScheduled)) wake(0);
}

void Cell::enable_load_count() {
  extras();
  state_.fetch_or(kCounted, std::memory_order_acq_rel);
}

std::uint64_t Cell::load_estimate() const noexcept {
  const auto s = state_.load(std::memory_order_acquire);
  const Extras* x = extras_if();
  const auto q = x ? std::max<std::int64_t>(0, x->queued.load(std::memory_order_relaxed)) : 0;
  return static_cast<std::uint64_t>(q) * 2 + ((s & kScheduled) ? 1 : 0);
}

void Cell::run_on_turn(std::function<void(Cell&)> fn) {
  enqueue(make_envelope(Message{}, ActorRef{}, new RunOnTurn(std::move(fn))));
}

// Sets `bits` and kScheduled; if the cell was not scheduled, hands it to the dispatcher.
bool Cell::wake(std::uint32_t bits) {
  if (state_.fetch_or(bits | kScheduled, std::memory_order_acq_rel) & kScheduled) return false;
  add_ref();
  sys_.dispatcher.submit(this);
  return true;
}

void Cell::request_stop(sys::TerminationReason reason) {
  std::uint32_t r = static_cast<std::uint32_t>(reason) << kReasonShift;
  // The first reason wins: the request and its reason are set together, once (two requests at
  // once used to OR their reasons into a third, or into no reason at all).
  std::uint32_t s = state_.load(std::memory_order_relaxed);
  do {
    if (s & (kStopReq | kDead)) return;
  } while (!state_.compare_exchange_weak(s, s | kStopReq | r, std::memory_order_acq_rel, std::memory_order_relaxed));
  wake(0);  // schedules it unless it is scheduled (a turn running now sees the request at its end)
}

bool Cell::stop_keeping_queued(ActorSystem::KeepQueued keep) {
  Extras& x = extras();  // allocated without the lock
  {
    std::lock_guard lk(stripe(this));
    if (state_.load(std::memory_order_acquire) & (kDead | kFinalizing)) return false;
    x.keep_queued = std::move(keep);
  }
  request_stop(sys::TerminationReason::Stopped);
  return true;
}

bool Cell::has_work(std::uint32_t s) const noexcept {
  if (s & kDead) return mbox_.maybe_nonempty();
  if (s & (kStarting | kPending | kDirective)) return true;
  if (s & kTerminating) return false;  // progress comes from child deaths (kPending)
  if (s & kStopReq) return true;
  if (s & (kSuspended | kRecreating)) return false;  // progress comes from a directive / child deaths
  return mbox_.maybe_nonempty();
}

void Cell::run() {
  // Clears kPending only when set (no read-modify-write on most turns): one set after this read
  // makes finish_turn see work and schedule another turn, which clears it.
  std::uint32_t s = state_.load(std::memory_order_acquire);
  if (s & kPending) s = state_.fetch_and(~kPending, std::memory_order_acq_rel);
  if (!(s & kDead)) {
    if (s & kStarting) {
      state_.fetch_and(~kStarting, std::memory_order_acq_rel);
      start();
    }
    if (state_.load(std::memory_order_acquire) & kDirective) apply_directive();
    s = state_.load(std::memory_order_acquire);
    if ((s & kRecreating) && !(s & (kStopReq | kTerminating)) && no_children()) finish_recreate();
    s = state_.load(std::memory_order_acquire);
    if (!(s & (kStopReq | kTerminating | kSuspended | kRecreating)) && process(sys_.throughput)) {
      // A producer stopped between its two steps, most likely preempted (more runnable threads
      // than cores): the turn comes round again at once, and without giving the core away it
      // would spin until the scheduler preempts this worker. Let the producer finish its push.
      sched_yield();
    }
    s = state_.load(std::memory_order_acquire);
    if ((s & kStopReq) && !(s & kTerminating)) begin_terminate();
    s = state_.load(std::memory_order_acquire);
    if ((s & kTerminating) && !(s & kDead) && no_children()) finalize();
  }
  if (state_.load(std::memory_order_acquire) & kDead) drain_dead();
  finish_turn();
}

void Cell::finish_turn() {
  const auto s = state_.load(std::memory_order_seq_cst);
  if (has_work(s)) {
    sys_.dispatcher.resubmit(this);
    return;
  }
  // The worker may keep the turn a moment (Dispatcher::linger): a message arriving meanwhile
  // needs no scheduling by its sender. Not for a cell whose load is watched (smallest-mailbox
  // and resizing routers): scheduled counts as busy there, and a lingering cell is idle.
  if (!(s & (kDead | kCounted)) && sys_.dispatcher.linger(this)) return;
  end_turn();
}

void Cell::end_turn() {
  state_.fetch_and(~kScheduled, std::memory_order_seq_cst);
  if (has_work(state_.load(std::memory_order_seq_cst)) &&
      !(state_.fetch_or(kScheduled, std::memory_order_acq_rel) & kScheduled)) {
    sys_.dispatcher.resubmit(this);
    return;
  }
  release();  // the scheduled reference
}

// ---- the actor's turn ---------------------------------------------------------------------------

void Cell::start() {
  SenderScope scope(kNoSender);
  try {
    actor_->pre_start();
  } catch (...) {
    handle_failure(std::current_exception());
  }
}

bool Cell::process(unsigned budget) {
  if (!actor_) return false;
  for (unsigned i = 0; i < budget; ++i) {
    MpscNode* n = mbox_.pop();
    if (!n) return mbox_.maybe_nonempty();
    if (state_.load(std::memory_order_relaxed) & kCounted) {
      extras_if()->queued.fetch_sub(1, std::memory_order_relaxed);
    }
    Letter l = open_envelope(n);
    deliver(l);
    if (state_.load(std::memory_order_relaxed) & (kStopReq | kSuspended | kRecreating | kDirective)) return false;
  }
  return false;
}

void Cell::deliver(Letter& e) {
  SenderScope scope(e.sender);
  try {
    if (e.ctl && !e.ctl->admit(*this)) return;  // system requests and continuations run here
    actor_->receive(e.msg);
  } catch (...) {
    sys_.failed_dropped.fetch_add(1, std::memory_order_relaxed);
    sys_.log->error("actor {} failed on a message of type {:#018x}: {}; the message is dropped",
                    path(), e.msg.type(), describe(std::current_exception()));
    handle_failure(std::current_exception());
  }
}

// Own turn: this actor failed. It stops processing messages and asks its parent what to do.
void Cell::handle_failure(std::exception_ptr ep) {
  sys_.failures.fetch_add(1, std::memory_order_relaxed);
  if (!parent_) {
    sys_.log->error("the root guardian failed: {}", describe(ep));
    request_stop(sys::TerminationReason::Failed);
    return;
  }
  state_.fetch_or(kSuspended, std::memory_order_acq_rel);
  Ref<Cell> me(this, true);
  parent_->run_on_turn([me, ep](Cell& p) { p.child_failed(*me.get(), ep); });
}

namespace {
const char* directive_name(Directive d) {
  switch (d) {
    case Directive::resume: return "resume";
    case Directive::restart: return "restart";
    case Directive::stop: return "stop";
    case Directive::escalate: return "escalate";
  }
  return "?";
}
double unit_random() {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  return std::uniform_real_distribution<double>(0.0, 1.0)(rng);
}
}  // namespace

// Own turn (the parent's): decides the fate of a failed child with this actor's strategy.
void Cell::child_failed(Cell& child, std::exception_ptr ep) {
  if (child.parent_ != this || child.dead()) return;
  if (!parent_ || this == sys_.root.get()) {
    // A guardian escalated: stop everything under it, keep the guardian.
    sys_.escalations.fetch_add(1, std::memory_order_relaxed);
    sys_.log->error("failure escalated past {}: {}; stopping all actors under it", child.path(), describe(ep));
    child.stop_children();
    child.direct(Directive::resume, ep);
    return;
  }
  SupervisorStrategy st = actor_ ? actor_->supervisor_strategy() : SupervisorStrategy::restarting();
  Directive d = Directive::restart;
  if (st.decider) {
    try {
      d = st.decider(ep);
    } catch (...) {
      d = Directive::escalate;
    }
  }
  if (d == Directive::restart) {
    Extras& cx = child.extras();
    const auto now = sys_.timers->now();
    if (cx.restarts == 0 || now - cx.window_start > st.budget.within) {
      cx.window_start = now;
      cx.restarts = 0;
    }
    if (++cx.restarts > st.budget.max_restarts) {
      sys_.log->error("{} exceeded its restart budget ({} within {} ms): stopping it ({})", child.path(),
                      st.budget.max_restarts, st.budget.within.count(), describe(ep));
      d = Directive::stop;
    }
  }
  sys_.log->info("supervisor {}: {} failed ({}): {}", path(), child.path(), describe(ep), directive_name(d));
  switch (d) {
    case Directive::resume:
      child.direct(Directive::resume, ep);
      break;
    case Directive::escalate:
      // Held: the child may be stopped (and freed) before this actor's own supervisor decides.
      extras().escalated_child = Ref<Cell>(&child, true);
      handle_failure(ep);
      break;
    case Directive::stop:
    case Directive::restart: {
      std::vector<Ref<Cell>> targets;
      if (st.scope == SupervisorStrategy::Scope::all_for_one) {
        std::lock_guard lk(stripe(this));
        if (Extras* x = extras_if()) {
          for (Cell* c = x->first_child; c; c = c->next_sibling_) targets.emplace_back(c, true);
        }
      } else {
        targets.emplace_back(&child, true);
      }
      if (d == Directive::restart && st.backoff) {
        const auto delay = backoff_delay(child.extras().restarts, *st.backoff, unit_random());
        for (auto& t : targets) {
          sys_.timers->schedule(delay, [t, ep] { t->direct(Directive::restart, ep); });
        }
      } else {
        for (auto& t : targets) t->direct(d, ep);
      }
      break;
    }
  }
}

void Cell::direct(Directive d, std::exception_ptr cause) {
  {
    std::lock_guard lk(stripe(this));
    if (state_.load(std::memory_order_acquire) & kDead) return;
    Extras& x = extras();
    x.directive = d;
    x.directive_cause = std::move(cause);
  }
  wake(kDirective);
}

// Own turn: carries out the parent's directive.
void Cell::apply_directive() {
  Directive d;
  std::exception_ptr cause;
  {
    std::lock_guard lk(stripe(this));
    state_.fetch_and(~kDirective, std::memory_order_acq_rel);
    Extras& x = extras();
    d = x.directive;
    cause = std::move(x.directive_cause);
  }
  if (state_.load(std::memory_order_acquire) & (kStopReq | kTerminating)) return;  // stopping anyway
  Extras& x = extras();
  switch (d) {
    case Directive::resume:
      if (!actor_) {  // the instance could not even be created: nothing to resume
        restart(cause);
        break;
      }
      state_.fetch_and(~kSuspended, std::memory_order_acq_rel);
      if (auto c = std::exchange(x.escalated_child, {})) c->direct(Directive::resume, cause);
      break;
    case Directive::restart:
      x.escalated_child = {};  // it is stopped with the other children
      restart(cause);
      break;
    case Directive::stop:
    case Directive::escalate:
      x.escalated_child = {};  // it is stopped with the other children
      request_stop(sys::TerminationReason::Failed);
      break;
  }
}

std::uint64_t Cell::incarnation() const noexcept {
  const Extras* x = extras_if();
  return x ? x->incarnation : 0;
}

void Cell::stop_children() {
  std::vector<Ref<Cell>> kids;
  {
    std::lock_guard lk(stripe(this));
    if (Extras* x = extras_if()) {
      for (Cell* c = x->first_child; c; c = c->next_sibling_) kids.emplace_back(c, true);
    }
  }
  for (auto& k : kids) k->request_stop(sys::TerminationReason::Stopped);
}

// Own turn: the old instance goes (pre_restart), the children stop, and once they all have,
// finish_recreate() makes the fresh instance. Messages wait meanwhile.
void Cell::restart(std::exception_ptr ep) {
  cancel_all_timers();
  if (actor_) {
    try {
      actor_->pre_restart(ep);
    } catch (...) {
      sys_.log->warn("actor {}: pre_restart threw: {}", path(), describe(std::current_exception()));
    }
    delete actor_;
    actor_ = nullptr;
  }
  Extras& x = extras();
  x.restart_cause = ep;
  ++x.incarnation;
  state_.fetch_or(kRecreating, std::memory_order_acq_rel);
  state_.fetch_and(~kSuspended, std::memory_order_acq_rel);
  stop_children();
  if (no_children()) finish_recreate();
}

void Cell::finish_recreate() {
  state_.fetch_and(~kRecreating, std::memory_order_acq_rel);
  auto ep = std::move(extras().restart_cause);
  sys_.restarts.fetch_add(1, std::memory_order_relaxed);
  sys_.log->info("actor {} restarted after: {}", path(), describe(ep));
  SenderScope scope(kNoSender);
  try {
    actor_ = factory_->make();
    actor_->ctx_ = this;
    actor_->post_restart(ep);
  } catch (...) {
    handle_failure(std::current_exception());
  }
}

void Cell::begin_terminate() {
  state_.fetch_or(kTerminating, std::memory_order_acq_rel);
  cancel_all_timers();
  std::vector<ActorRef> kids;
  {
    std::lock_guard lk(stripe(this));
    if (Extras* x = extras_if()) {
      for (Cell* c = x->first_child; c; c = c->next_sibling_) kids.emplace_back(c, true);
    }
  }
  for (auto& k : kids) static_cast<Cell*>(k.target())->request_stop(sys::TerminationReason::Stopped);
}

bool Cell::no_children() const {
  std::lock_guard lk(stripe(this));
  Extras* x = extras_if();
  return !x || x->first_child == nullptr;
}

void Cell::finalize() {
  ActorSystem::KeepQueued keep;
  {
    // Marked under the lock stop_keeping_queued takes: a hook it sets from now on would never
    // run, so it refuses to (and its caller deals with the messages itself).
    std::lock_guard lk(stripe(this));
    state_.fetch_or(kFinalizing, std::memory_order_acq_rel);
    if (Extras* x = extras_if()) keep = std::exchange(x->keep_queued, nullptr);
  }
  // A child held for a directive that never came (stopped meanwhile): it holds this cell too.
  if (Extras* x = extras_if()) x->escalated_child = {};
  if (keep) {
    // What is queued goes to `keep` instead of dead letters; controls (timer ticks, requests)
    // are moot for a stopping actor, as in drain_dead().
    std::vector<std::pair<Message, ActorRef>> queued;
    while (MpscNode* n = mbox_.pop()) {
      Letter l = open_envelope(n);
      if (!l.ctl) queued.emplace_back(std::move(l.msg), std::move(l.sender));
    }
    try {
      keep(actor_, std::move(queued));
    } catch (...) {
      sys_.log->warn("actor {}: the taker of its queued messages threw: {}", path(), describe(std::current_exception()));
    }
  }
  if (actor_) {
    SenderScope scope(kNoSender);
    try {
      actor_->post_stop();
    } catch (...) {
      sys_.log->warn("actor {}: post_stop threw: {}", path(), describe(std::current_exception()));
    }
    delete actor_;
    actor_ = nullptr;
  }
  ActorRef me(this, true);
  // What was queued is accounted for before anyone can learn of the death (a watch arriving
  // from now on is answered at once); stragglers racing with the death are drained again below.
  drain_dead();
  WatcherList watchers;
  std::uint32_t s;
  {
    std::lock_guard lk(stripe(this));
    s = state_.fetch_or(kDead, std::memory_order_acq_rel);
    if (Ident* i = ident_.load(std::memory_order_acquire)) watchers = std::move(i->watchers);
  }
  if (Extras* x = extras_if()) {
    x->watching.for_each([&](const ActorRef& t) { t.target()->remove_watcher(me); });
    x->watching.clear();
  }
  drain_dead();
  // Before anyone hears of the death: the counters count it and the name is free again.
  sys_.on_stopped(this);
  if (parent_) parent_->release_name(this);
  if (!watchers.empty()) {
    auto reason = static_cast<sys::TerminationReason>((s >> kReasonShift) & 7u);
    Message t = make_terminated(reason, path());
    watchers.for_each([&](const ActorRef& w) { notify_terminated(w, t, me); });
  }
  if (parent_) parent_->child_died(this);
  factory_.reset();
  release();  // the alive reference taken at spawn
}

void Cell::release_name(Cell* child) {
  if (child->own_name().empty()) return;
  std::lock_guard lk(stripe(this));
  if (Extras* x = extras_if()) x->named_children.erase(child);
}

void Cell::child_died(Cell* child) {
  bool wake_me;
  {
    std::lock_guard lk(stripe(this));
    if (child->prev_sibling_) {
      child->prev_sibling_->next_sibling_ = child->next_sibling_;
    } else {
      extras().first_child = child->next_sibling_;
    }
    if (child->next_sibling_) child->next_sibling_->prev_sibling_ = child->prev_sibling_;
    child->prev_sibling_ = child->next_sibling_ = nullptr;
    wake_me = state_.load(std::memory_order_acquire) & (kTerminating | kRecreating);
  }
  if (wake_me) wake(kPending);
}

void Cell::drain_dead() {
  while (MpscNode* n = mbox_.pop()) {
    Letter l = open_envelope(n);
    if (l.ctl) continue;  // timer ticks and system requests are moot for a dead actor
    sys_.dead_letter(l.msg, l.sender, path(), "recipient stopped");
  }
}

// ---- deathwatch ---------------------------------------------------------------------------------

void Cell::add_watcher(const ActorRef& watcher) {
  bool dead;
  {
    std::lock_guard lk(stripe(this));
    dead = state_.load(std::memory_order_acquire) & kDead;
    if (!dead) ident().watchers.add(watcher);
  }
  if (dead) notify_terminated(watcher, make_terminated(sys::TerminationReason::AlreadyDead, path()), ActorRef(this, true));
}

void Cell::remove_watcher(const ActorRef& watcher) {
  std::lock_guard lk(stripe(this));
  if (Ident* i = ident_.load(std::memory_order_acquire)) i->watchers.erase(watcher);
}

void Cell::watch(const ActorRef& ref) {
  if (!ref) return;
  auto& w = extras().watching;
  if (w.contains(ref)) return;
  w.insert(ref);
  ref.target()->add_watcher(ActorRef(this, true));
}

bool Cell::consume_watch(const ActorRef& ref) {
  Extras* x = extras_if();
  if (!x) return false;
  return x->watching.erase(ref);
}

void Cell::unwatch(const ActorRef& ref) {
  Extras* x = extras_if();
  if (!x || !ref) return;
  x->watching.erase(ref);
  ref.target()->remove_watcher(ActorRef(this, true));
}

// ---- timers -------------------------------------------------------------------------------------

TimerId Cell::start_timer(std::chrono::nanoseconds d, Message msg, bool periodic) {
  Extras& x = extras();
  Ref<TimerState> t(new TimerState, false);
  t->id = ++x.next_timer;
  t->periodic = periodic;
  t->interval = d;
  t->msg = std::move(msg);
  x.timers.emplace(t->id, t);
  arm(t, d);
  return t->id;
}

void Cell::arm(const Ref<TimerState>& t, std::chrono::nanoseconds d) {
  Ref<Cell> me(this, true);
  t->service_id.store(sys_.timers->schedule(d, [t, me] {
    if (t->cancelled.load(std::memory_order_acquire)) return;
    t->add_ref();
    me->enqueue(make_envelope(Message(t->msg), ActorRef{}, t.get()));
    if (t->periodic) me->arm(t, t->interval);
  }), std::memory_order_release);
}

void Cell::cancel_timer(TimerId id) {
  Extras* x = extras_if();
  if (!x) return;
  auto it = x->timers.find(id);
  if (it == x->timers.end()) return;
  it->second->cancelled.store(true, std::memory_order_release);
  sys_.timers->cancel(it->second->service_id.load(std::memory_order_acquire));
  x->timers.erase(it);
}

void Cell::forget_timer(TimerId id) {
  if (Extras* x = extras_if()) x->timers.erase(id);
}

void Cell::cancel_all_timers() {
  Extras* x = extras_if();
  if (!x) return;
  for (auto& [id, t] : x->timers) {
    t->cancelled.store(true, std::memory_order_release);
    sys_.timers->cancel(t->service_id.load(std::memory_order_acquire));
  }
  x->timers.clear();
}

// ---- look-up ------------------------------------------------------------------------------------

ActorRef Cell::child(std::string_view name) const {
  std::lock_guard lk(stripe(this));
  if (!name.empty() && name.front() == '$') {
    std::uint64_t id = 0;
    auto [p, ec] = std::from_chars(name.data() + 1, name.data() + name.size(), id, 36);
    if (ec != std::errc{} || p != name.data() + name.size()) return {};
    const Extras* x = extras_if();
    for (Cell* c = x ? x->first_child : nullptr; c; c = c->next_sibling_) {
      if (c->id_ == id) return c->dead() ? ActorRef{} : ActorRef(c, true);
    }
    return {};
  }
  Cell* c = named_child(name);
  if (!c || c->dead()) return {};
  return ActorRef(c, true);
}

}  // namespace troupe::detail

// ---- ActorContext -------------------------------------------------------------------------------

namespace troupe {

detail::Cell& ActorContext::cell() noexcept { return static_cast<detail::Cell&>(*this); }
const detail::Cell& ActorContext::cell() const noexcept { return static_cast<const detail::Cell&>(*this); }

ActorRef ActorContext::self() const {
  return ActorRef(const_cast<detail::Cell*>(&cell()), true);
}
const ActorRef& ActorContext::sender() const noexcept { return detail::current_sender(); }
ActorRef ActorContext::parent() const {
  auto* p = cell().parent_cell();
  return p ? ActorRef(p, true) : ActorRef{};
}
ActorSystem& ActorContext::system() const noexcept { return cell().system(); }
std::string ActorContext::path() const { return cell().path(); }
ActorRef ActorContext::spawn_child(detail::FactoryPtr f, SpawnOptions opts) {
  return cell().spawn(std::move(f), std::move(opts));
}
void ActorContext::stop(const ActorRef& ref) {
  if (ref) ref.target()->stop();
}
void ActorContext::watch(const ActorRef& ref) { cell().watch(ref); }
void ActorContext::unwatch(const ActorRef& ref) { cell().unwatch(ref); }
TimerId ActorContext::schedule_once(std::chrono::nanoseconds delay, Message msg) {
  return cell().start_timer(delay, std::move(msg), false);
}
TimerId ActorContext::schedule_every(std::chrono::nanoseconds interval, Message msg) {
  return cell().start_timer(interval, std::move(msg), true);
}
void ActorContext::cancel_timer(TimerId id) { cell().cancel_timer(id); }

void ActorContext::ask(const ActorRef& target, Message msg, std::chrono::milliseconds timeout,
                       std::function<void(Result<Message>)> then) {
  detail::Ref<detail::Cell> me(&cell(), true);
  const auto incarnation = cell().incarnation();
  target.ask(std::move(msg), timeout, [me, incarnation, then = std::move(then)](Result<Message> r) {
    me->run_on_turn([incarnation, then, r = std::move(r)](detail::Cell& c) {
      if (c.incarnation() == incarnation) then(r);
    });
  });
}

std::chrono::nanoseconds backoff_delay(unsigned attempt, const Backoff& b, double u) noexcept {
  using namespace std::chrono;
  const double min_ns = static_cast<double>(duration_cast<nanoseconds>(b.min).count());
  const double max_ns = static_cast<double>(duration_cast<nanoseconds>(b.max).count());
  const unsigned shift = attempt == 0 ? 0 : std::min(attempt - 1, 62u);
  const double base = std::min(max_ns, min_ns * static_cast<double>(1ull << shift));
  const double jitter = std::clamp(u, 0.0, 1.0) * std::max(0.0, b.jitter);
  return nanoseconds(static_cast<std::int64_t>(base * (1.0 + jitter)));
}

}  // namespace troupe
