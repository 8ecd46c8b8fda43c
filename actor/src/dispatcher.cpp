#include "dispatcher.hpp"

#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <optional>
#include <string>

#include "cell.hpp"

namespace troupe::detail {

namespace {
thread_local void* tls_worker = nullptr;  // the Worker this thread is, if any
// A WakeBatch open on this thread: its dispatcher and the cells it holds back.
thread_local const void* tls_batch_owner = nullptr;
thread_local std::vector<Cell*> tls_batch;

std::uint64_t xorshift(std::uint64_t& s) noexcept {
  s ^= s << 13;
  s ^= s >> 7;
  s ^= s << 17;
  return s;
}
}  // namespace

bool Dispatcher::LocalQueue::push(Cell* c) noexcept {
  const auto t = tail.load(std::memory_order_relaxed);
  const auto h = head.load(std::memory_order_acquire);
  if (t - h >= kLocalCap) return false;
  buf[t % kLocalCap].store(c, std::memory_order_relaxed);
  tail.store(t + 1, std::memory_order_release);
  return true;
}

// Used by the owner and by thieves alike: the slot is read before the CAS claims it; the owner
// only overwrites slot h after head moved past h, so a successful CAS proves the read was good.
Cell* Dispatcher::LocalQueue::pop() noexcept {
  auto h = head.load(std::memory_order_acquire);
  for (;;) {
    const auto t = tail.load(std::memory_order_acquire);
    if (h == t) return nullptr;
    Cell* c = buf[h % kLocalCap].load(std::memory_order_relaxed);
    if (head.compare_exchange_weak(h, h + 1, std::memory_order_acq_rel, std::memory_order_acquire)) return c;
  }
}

bool Dispatcher::ring_push(Cell* c) noexcept {
  auto pos = ring_tail_.load(std::memory_order_relaxed);
  for (;;) {
    Slot& slot = ring_[pos & (kRing - 1)];
    const auto seq = slot.seq.load(std::memory_order_acquire);
    const auto dif = static_cast<std::intptr_t>(seq) - static_cast<std::intptr_t>(pos);
    if (dif == 0) {
      if (ring_tail_.compare_exchange_weak(pos, pos + 1, std::memory_order_relaxed)) {
        slot.cell = c;
        slot.seq.store(pos + 1, std::memory_order_release);
        return true;
      }
    } else if (dif < 0) {
      return false;  // full
    } else {
      pos = ring_tail_.load(std::memory_order_relaxed);
    }
  }
}

Cell* Dispatcher::ring_pop() noexcept {
  auto pos = ring_head_.load(std::memory_order_relaxed);
  for (;;) {
    Slot& slot = ring_[pos & (kRing - 1)];
    const auto seq = slot.seq.load(std::memory_order_acquire);
    const auto dif = static_cast<std::intptr_t>(seq) - static_cast<std::intptr_t>(pos + 1);
    if (dif == 0) {
      if (ring_head_.compare_exchange_weak(pos, pos + 1, std::memory_order_relaxed)) {
        Cell* c = slot.cell;
        slot.seq.store(pos + kRing, std::memory_order_release);
        return c;
      }
    } else if (dif < 0) {
      return nullptr;  // empty (or its pusher is half-way: the count tells the caller to look again)
    } else {
      pos = ring_head_.load(std::memory_order_relaxed);
    }
  }
}

Dispatcher::Dispatcher(unsigned workers) : ring_(new Slot[kRing]) {
  for (std::size_t i = 0; i < kRing; ++i) {
    ring_[i].seq.store(i, std::memory_order_relaxed);
    ring_[i].cell = nullptr;
  }
  if (workers == 0) workers = std::max(1u, std::thread::hardware_concurrency());
  for (unsigned i = 0; i < workers; ++i) {
    auto w = std::make_unique<Worker>();
    w->owner = this;
    w->rng = 0x9e3779b97f4a7c15ull * (i + 1);
    w->seen.resize(workers);
    workers_.push_back(std::move(w));
  }
}

Dispatcher::~Dispatcher() { stop(); }

void Dispatcher::start() {
  if (started_) return;
  started_ = true;
  for (auto& w : workers_) {
    Worker* wp = w.get();
    wp->thread = std::thread([this, wp] { run(*wp); });
    // Named for top -H, perf and gdb (15 characters at most), before start() returns.
    const auto name = "troupe-w" + std::to_string(&w - workers_.data());
    pthread_setname_np(wp->thread.native_handle(), name.c_str());
  }
}

void Dispatcher::stop() {
  if (stopping_.exchange(true)) return;
  {
    std::lock_guard lk(park_mu_);
    park_cv_.notify_all();
  }
  for (auto& w : workers_) {
    if (w->thread.joinable()) w->thread.join();
  }
  // Whatever is still queued will never run: drop the references the queues held.
  for (auto& w : workers_) {
    if (Cell* c = w->lifo.exchange(nullptr)) c->release();
    for (auto& slot : w->linger) {
      if (Cell* c = slot.exchange(nullptr)) c->release();
    }
    while (Cell* c = w->queue.pop()) c->release();
  }
  while (Cell* c = ring_pop()) c->release();
  {
    std::lock_guard lk(overflow_mu_);
    for (Cell* c : overflow_) c->release();
    overflow_.clear();
    overflow_size_.store(0);
  }
  global_size_.store(0);
}

void Dispatcher::submit(Cell* c) {
  auto* w = static_cast<Worker*>(tls_worker);
  if (w && w->owner == this) {
    // Nobody else writes an empty slot (a rescuer only empties a full one): a store fills it.
    if (w->lifo.load(std::memory_order_relaxed) == nullptr) {
      w->lifo.store(c, std::memory_order_release);
    } else if (Cell* prev = w->lifo.exchange(c, std::memory_order_acq_rel)) {
      push_local(*w, prev);
    }
    return;
  }
  push_global(c);
}

void Dispatcher::resubmit(Cell* c) {
  auto* w = static_cast<Worker*>(tls_worker);
  if (w && w->owner == this) {
    push_local(*w, c);
  } else {
    push_global(c);
  }
}

bool Dispatcher::linger(Cell* c) {
  auto* w = static_cast<Worker*>(tls_worker);
  if (!w || w->owner != this || stopping_.load(std::memory_order_relaxed)) return false;
  for (unsigned i = 0; i < kLingerSlots; ++i) {
    auto& slot = w->linger[i];
    Cell* empty = nullptr;
    if (slot.load(std::memory_order_relaxed) == nullptr &&
        slot.compare_exchange_strong(empty, c, std::memory_order_seq_cst)) {
      w->linger_until[i] = w->tick + kLingerTicks;
      return true;
    }
  }
  return false;
}

Cell* Dispatcher::take_lingering(Worker& w) {
  // From a rotating slot: an actor that keeps getting work must not starve the others.
  const auto start = static_cast<unsigned>(w.tick % kLingerSlots);
  for (unsigned k = 0; k < kLingerSlots; ++k) {
    auto& slot = w.linger[(start + k) % kLingerSlots];
    if (slot.load(std::memory_order_relaxed) == nullptr) continue;
    Cell* c = slot.exchange(nullptr, std::memory_order_seq_cst);
    if (!c) continue;  // a parking worker ended it
    if (c->runnable()) return c;
    slot.store(c, std::memory_order_seq_cst);  // only the owner fills slots: still empty
  }
  return nullptr;
}

// Another worker's lingering cells, claimed like a parking worker claims them: one with work
// runs here, the others end.
Cell* Dispatcher::relieve_lingers(Worker& self) {
  for (auto& w : workers_) {
    if (w.get() == &self) continue;
    for (auto& slot : w->linger) {
      if (slot.load(std::memory_order_relaxed) == nullptr) continue;
      Cell* c = slot.exchange(nullptr, std::memory_order_seq_cst);
      if (!c) continue;
      if (c->runnable()) return c;
      c->end_turn();
    }
  }
  return nullptr;
}

bool Dispatcher::lingering(const Worker& w) const noexcept {
  for (const auto& slot : w.linger) {
    if (slot.load(std::memory_order_relaxed) != nullptr) return true;
  }
  return false;
}

// Before parking (sleepers_ already counts this worker): every worker's lingering cells end;
// those with work come to this worker's queue.
void Dispatcher::sweep_lingers(Worker& self) {
  for (auto& w : workers_) {
    for (auto& slot : w->linger) {
      if (slot.load(std::memory_order_seq_cst) == nullptr) continue;
      Cell* c = slot.exchange(nullptr, std::memory_order_seq_cst);
      if (!c) continue;
      if (c->runnable()) {
        if (!self.queue.push(c)) push_global(c);
      } else {
        c->end_turn();
      }
    }
  }
}

void Dispatcher::end_lingers(Worker& w) {
  for (auto& slot : w.linger) {
    if (Cell* c = slot.exchange(nullptr, std::memory_order_seq_cst)) c->end_turn();
  }
}

void Dispatcher::push_local(Worker& w, Cell* c) {
  if (!w.queue.push(c)) {
    push_global(c);
    return;
  }
  notify_one();
}

bool Dispatcher::begin_batch() {
  auto* w = static_cast<Worker*>(tls_worker);
  if ((w && w->owner == this) || tls_batch_owner) return false;  // a worker, or nested
  tls_batch_owner = this;
  return true;
}

void Dispatcher::end_batch() {
  tls_batch_owner = nullptr;
  if (tls_batch.empty()) return;
  if (stopping_.load(std::memory_order_acquire)) {  // they will never run: as stop() does
    for (Cell* c : tls_batch) c->release();
    tls_batch.clear();
    return;
  }
  global_size_.fetch_add(tls_batch.size(), std::memory_order_seq_cst);
  for (Cell* c : tls_batch) push_queue(c);
  tls_batch.clear();
  notify_one();  // a woken worker wakes the next when more is waiting
}

void Dispatcher::push_global(Cell* c) {
  if (tls_batch_owner == this && !stopping_.load(std::memory_order_relaxed)) {
    tls_batch.push_back(c);
    return;
  }
  // Counted first: a worker may see the count before the cell and look again, but the count is
  // never below what the queue holds.
  global_size_.fetch_add(1, std::memory_order_seq_cst);
  push_queue(c);
  notify_one();
}

void Dispatcher::push_queue(Cell* c) {
  if (ring_push(c)) return;
  std::lock_guard lk(overflow_mu_);
  overflow_.push_back(c);
  overflow_size_.fetch_add(1, std::memory_order_release);
}

Cell* Dispatcher::pop_global() {
  if (global_size_.load(std::memory_order_acquire) == 0) return nullptr;
  Cell* c = ring_pop();
  if (!c && overflow_size_.load(std::memory_order_acquire) != 0) {
    std::lock_guard lk(overflow_mu_);
    if (!overflow_.empty()) {
      c = overflow_.front();
      overflow_.pop_front();
      overflow_size_.fetch_sub(1, std::memory_order_relaxed);
    }
  }
  if (c) global_size_.fetch_sub(1, std::memory_order_relaxed);  // else: counted but not yet in
  return c;
}

// Pairs with park(): the pusher publishes work then reads sleepers_; the parker increments
// sleepers_ then re-reads the queues. seq_cst on both sides means one of them sees the other.
// One wake-up at a time: a worker that takes a wake-up (in park, before it looks for work) sees
// this work, so while one is on its way nobody else is woken for it. A wake-up is only sent to a
// worker that waits, and every one is taken by a worker leaving park.
void Dispatcher::notify_one() {
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (sleepers_.load(std::memory_order_relaxed) == 0) return;
  if (wakes_.load(std::memory_order_seq_cst) != 0) return;
  std::lock_guard lk(park_mu_);
  if (waiting_ == 0 || wakes_.load(std::memory_order_relaxed) != 0) return;  // it re-checks the queues itself
  wakes_.store(1, std::memory_order_seq_cst);
  park_cv_.notify_one();
}

bool Dispatcher::any_work() const noexcept {
  if (global_size_.load(std::memory_order_acquire) != 0) return true;
  for (const auto& w : workers_) {
    if (!w->queue.empty()) return true;
  }
  return false;
}

Cell* Dispatcher::find_elsewhere(Worker& w) {
  if (Cell* c = pop_global()) return c;
  const auto n = workers_.size();
  const auto start = static_cast<std::size_t>(xorshift(w.rng) % n);
  for (std::size_t i = 0; i < n; ++i) {
    Worker& victim = *workers_[(start + i) % n];
    if (&victim == &w) continue;
    if (Cell* c = victim.queue.pop()) return c;
  }
  return nullptr;
}

Cell* Dispatcher::next(Worker& w) {
  ++w.tick;
  for (unsigned i = 0; i < kLingerSlots; ++i) {
    if (w.linger_until[i] == w.tick) {
      if (Cell* c = w.linger[i].exchange(nullptr, std::memory_order_seq_cst)) c->end_turn();
    }
  }
  // Every so often look at the shared queue first so that outside wake-ups are never starved.
  if (w.tick % 61 == 0) {
    if (Cell* c = pop_global()) return c;
    if (Cell* c = take_lingering(w)) return c;
    if (Cell* c = relieve_lingers(w)) return c;
    bool held = false;
    if (Cell* c = watch_lifos(w, held)) return c;
  }
  // The LIFO slot runs next, but not forever: a ping-pong pair would otherwise starve the queue.
  if (w.lifo_streak < 32) {
    if (Cell* c = take_lifo(w)) {
      ++w.lifo_streak;
      return c;
    }
  }
  w.lifo_streak = 0;
  if (Cell* c = w.queue.pop()) {
    if (Cell* l = take_lifo(w)) push_local(w, l);
    return c;
  }
  if (Cell* c = take_lifo(w)) return c;
  if (Cell* c = take_lingering(w)) return c;
  return find_elsewhere(w);
}

Cell* Dispatcher::take_lifo(Worker& w) noexcept {
  // Read first: the exchange (needed because another worker may take the cell) only when there
  // is something to take.
  if (w.lifo.load(std::memory_order_relaxed) == nullptr) return nullptr;
  return w.lifo.exchange(nullptr, std::memory_order_acq_rel);
}

Cell* Dispatcher::watch_lifos(Worker& w, bool& held) {
  held = false;
  std::optional<std::chrono::steady_clock::time_point> now;  // read once, and only if a slot is full
  for (std::size_t k = 0; k < workers_.size(); ++k) {
    Worker& o = *workers_[k];
    if (&o == &w) continue;
    auto& seen = w.seen[k];
    Cell* c = o.lifo.load(std::memory_order_acquire);
    if (c == nullptr) {
      seen.cell = nullptr;
      continue;
    }
    held = true;
    if (!now) now = std::chrono::steady_clock::now();
    const auto turns = o.turns.load(std::memory_order_relaxed);
    if (seen.cell != c || seen.turns != turns) {
      seen = {c, turns, *now};
      continue;
    }
    // The same cell, and the owner still in the turn it was in when this worker first saw it.
    if (*now - seen.since >= kLifoRescue && o.lifo.compare_exchange_strong(c, nullptr, std::memory_order_acq_rel)) {
      seen.cell = nullptr;
      lifo_rescues_.fetch_add(1, std::memory_order_relaxed);
      return c;
    }
  }
  return nullptr;
}

void Dispatcher::wake_untimed() {
  // Read without the lock first: a worker about to wait untimed counts itself under the lock
  // and then checks sleepers_ (seq_cst both), which already leaves this worker out.
  if (untimed_.load(std::memory_order_seq_cst) == 0) return;
  std::lock_guard lk(park_mu_);
  if (untimed_.load(std::memory_order_relaxed) != 0) park_cv_.notify_all();  // each waits again, timed now
}

Cell* Dispatcher::park(Worker& w) {
  // Counted first, then the lingers swept: a worker that lingers after the sweep sees this
  // count before its next turn (both seq_cst) and ends its lingers itself.
  sleepers_.fetch_add(1, std::memory_order_seq_cst);
  sweep_lingers(w);
  Cell* rescued = nullptr;
  std::unique_lock lk(park_mu_);
  std::atomic_thread_fence(std::memory_order_seq_cst);  // pairs with the one in notify_one()
  while (!stopping_.load(std::memory_order_acquire) && wakes_.load(std::memory_order_relaxed) == 0 && !any_work()) {
    // A cell in another worker's LIFO slot runs when that worker's turn ends, unless the turn
    // is long: while another worker is awake (it may fill its slot and then run long), this
    // worker parks no longer than kLifoRescue at a time. With every other worker parked it
    // waits for a wake-up; a worker leaving park wakes it (wake_untimed) to wait timed instead.
    bool held = false;
    if ((rescued = watch_lifos(w, held)) != nullptr) break;
    untimed_.fetch_add(1, std::memory_order_seq_cst);  // counted before others_awake is read
    const bool others_awake = sleepers_.load(std::memory_order_seq_cst) < static_cast<int>(workers_.size());
    ++waiting_;
    if (held || others_awake) {
      untimed_.fetch_sub(1, std::memory_order_relaxed);
      park_cv_.wait_for(lk, kLifoRescue);
    } else {
      park_cv_.wait(lk);
      untimed_.fetch_sub(1, std::memory_order_relaxed);
    }
    --waiting_;
  }
  // Taken (by this worker or another leaving park): this worker looks for work next.
  if (wakes_.load(std::memory_order_relaxed) != 0) wakes_.store(0, std::memory_order_seq_cst);
  sleepers_.fetch_sub(1, std::memory_order_seq_cst);  // before wake_untimed() reads untimed_
  return rescued;
}

void Dispatcher::run(Worker& w) {
  tls_worker = &w;
  constexpr unsigned kParked = ~0u;  // idle_spins right after park()
  unsigned idle_spins = 0;
  unsigned spin_limit = kMaxIdleSpins;
  while (!stopping_.load(std::memory_order_acquire)) {
    if (Cell* c = next(w)) {
      // Back from parking with work: more may be waiting, for a worker that still sleeps.
      if (idle_spins == kParked && any_work()) notify_one();
      // Work came while this worker yielded: spinning pays here, allow more of it.
      else if (idle_spins != 0) spin_limit = std::min(kMaxIdleSpins, spin_limit * 2);
      idle_spins = 0;
      // This turn may be long: while a worker sleeps nobody else would see lingering cells.
      if (sleepers_.load(std::memory_order_seq_cst) != 0 && lingering(w)) end_lingers(w);
      w.turns.store(w.turns.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
      c->run();
      continue;
    }
    if (idle_spins == kParked) idle_spins = 0;
    if (++idle_spins < spin_limit) {
      sched_yield();
      continue;
    }
    // Yielded in vain: spin less before parking next time.
    spin_limit = std::max(kMinIdleSpins, spin_limit / 2);
    if (Cell* c = park(w)) {
      // Taken from a worker held up in a long turn: it runs here now.
      if (!w.queue.push(c)) push_global(c);
    }
    // Awake now: a worker still parked without a time limit would never look at this one's
    // LIFO slot.
    wake_untimed();
    idle_spins = kParked;
  }
  tls_worker = nullptr;
}

}  // namespace troupe::detail
