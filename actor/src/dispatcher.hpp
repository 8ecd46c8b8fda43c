#pragma once
// Work-stealing worker pool that runs actor cells. Each worker has a bounded local run queue
// (owner pushes and pops, idle workers steal) and a LIFO slot: an actor woken by the actor
// running on this worker runs next on the same worker (hot caches, no cross-core hand-off),
// which is what makes request/response chains fast. Wake-ups from outside go to a shared
// injection ring without locks. Idle workers spin briefly, then park on a condition variable; new
// work wakes one parked worker at a time (which wakes the next if it finds more waiting).
// The LIFO slot is not stolen like the queue (that would undo its point), but a long turn cannot
// hold it up either: a cell that stays in the slot of a worker that stays in one turn for
// kLifoRescue is taken by another worker, a parked one (which parks no longer than that while
// a slot is full) or a busy one (which looks every 61 turns).

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace troupe::detail {

class Cell;

class Dispatcher {
 public:
  explicit Dispatcher(unsigned workers);
  ~Dispatcher();
  Dispatcher(const Dispatcher&) = delete;
  Dispatcher& operator=(const Dispatcher&) = delete;

  void start();
  /// Joins the workers; cells still queued are released without running.
  void stop();

  /// A cell became runnable (its scheduled flag was just set; the caller gives up one reference
  /// to the dispatcher). From a worker of this dispatcher it goes to that worker's LIFO slot.
  void submit(Cell* c);
  /// A cell that ran and still has work: back of the current worker's queue (fairness).
  void resubmit(Cell* c);
  /// A cell whose turn found nothing more to do, from its worker: true when the worker keeps it
  /// scheduled in a linger slot for a moment (and with it the scheduled reference). Senders to a
  /// lingering cell only queue the message: no hand-over to the dispatcher and no wake-up, which
  /// is what a message to an actor that was just drained would otherwise cost. The owner runs
  /// lingering cells that got work when it has nothing else (scanning from a rotating slot); a
  /// linger ends kLingerTicks turns after it began, and before a turn of another actor while any
  /// worker sleeps (that turn may be long). Every 61 turns a worker takes the other workers'
  /// lingers (one blocked in a long turn must not hold them while the rest stay busy), and a
  /// worker about to park ends every worker's lingers, so no linger outlives the last awake
  /// worker.
  bool linger(Cell* c);

  unsigned workers() const noexcept { return static_cast<unsigned>(workers_.size()); }
  /// Cells a parked worker took from the LIFO slot of a worker held up in a long turn.
  std::uint64_t lifo_rescues() const noexcept { return lifo_rescues_.load(std::memory_order_relaxed); }

  /// ActorSystem::WakeBatch: from a thread that is not a worker of this dispatcher, cells
  /// submitted between begin_batch() (true: this call opened the batch) and end_batch() are
  /// queued together at end_batch(), with one wake-up.
  bool begin_batch();
  void end_batch();

 private:
  static constexpr std::uint32_t kLocalCap = 256;
  struct LocalQueue {
    alignas(64) std::atomic<std::uint32_t> head{0};  // pop/steal end
    alignas(64) std::atomic<std::uint32_t> tail{0};  // owner's push end
    std::array<std::atomic<Cell*>, kLocalCap> buf{};
    bool push(Cell* c) noexcept;
    Cell* pop() noexcept;
    bool empty() const noexcept {
      return head.load(std::memory_order_acquire) == tail.load(std::memory_order_acquire);
    }
  };
  static constexpr unsigned kLingerSlots = 4;
  // Yields before a worker without work parks: adapted per worker between these bounds (doubled
  // when work came while it yielded, halved when it parked after yielding in vain).
  static constexpr unsigned kMaxIdleSpins = 64, kMinIdleSpins = 2;
  static constexpr std::uint64_t kLingerTicks = 256;
  // How long a cell may wait in the LIFO slot of a worker that stays in one turn before a parked
  // worker takes it.
  static constexpr std::chrono::milliseconds kLifoRescue{2};
  struct Worker {
    Dispatcher* owner = nullptr;
    LocalQueue queue;
    // Lingering cells. Only the owner fills a slot; a slot is claimed by exchanging it for null
    // (the owner, or a worker about to park), and only the claimer may touch the cell.
    std::array<std::atomic<Cell*>, kLingerSlots> linger{};
    std::array<std::uint64_t, kLingerSlots> linger_until{};  // per slot: the tick it ends at
    // Filled and emptied by the owner; another worker may take the cell when the owner's turn
    // count has not moved for kLifoRescue (both sides exchange, so exactly one gets it).
    std::atomic<Cell*> lifo{nullptr};
    std::atomic<std::uint64_t> turns{0};  // turns begun (owner writes, rescuers read)
    unsigned lifo_streak = 0;
    // What this worker last saw in each worker's LIFO slot, and since when (watch_lifos()).
    struct Seen {
      Cell* cell = nullptr;
      std::uint64_t turns = 0;
      std::chrono::steady_clock::time_point since{};
    };
    std::vector<Seen> seen;
    std::uint64_t tick = 0;
    std::uint64_t rng = 0;
    std::thread thread;
  };

  void run(Worker& w);
  Cell* next(Worker& w);
  Cell* find_elsewhere(Worker& w);
  Cell* take_lingering(Worker& w);
  Cell* relieve_lingers(Worker& self);
  void end_lingers(Worker& w);
  bool lingering(const Worker& w) const noexcept;
  void sweep_lingers(Worker& self);
  void push_local(Worker& w, Cell* c);
  void push_global(Cell* c);
  void push_queue(Cell* c);  // into the ring, or the overflow (global_size_ counted by the caller)
  Cell* pop_global();
  void notify_one();
  bool any_work() const noexcept;
  /// Parks until work comes; returns a cell taken from another worker's LIFO slot, if any.
  Cell* park(Worker& w);
  /// Wakes the workers parked without a time limit, so that they park with one (this worker is
  /// awake now and may hold up a cell in its LIFO slot).
  void wake_untimed();
  static Cell* take_lifo(Worker& w) noexcept;
  /// Takes a cell that has waited kLifoRescue in the LIFO slot of a worker still in the same
  /// turn; `held`: some other worker's slot holds a cell.
  Cell* watch_lifos(Worker& w, bool& held);

  std::vector<std::unique_ptr<Worker>> workers_;
  // Wake-ups from outside the workers (the remoting I/O thread hands a frame's messages to many
  // actors at once): a bounded ring without locks (Vyukov's MPMC queue: a sequence number per
  // slot, one CAS per push or pop, no allocation, plain pointers), so that neither the I/O thread
  // nor the workers popping wait on a lock; a mutex-guarded overflow takes what the ring cannot.
  // A pusher descheduled between claiming its slot and filling it holds the poppers up until it
  // runs again (global_size_ keeps them looking; their sched_yield lets it run).
  struct Slot {
    std::atomic<std::size_t> seq;
    Cell* cell;
  };
  static constexpr std::size_t kRing = 1024;  // a power of two
  bool ring_push(Cell* c) noexcept;
  Cell* ring_pop() noexcept;
  std::unique_ptr<Slot[]> ring_;
  alignas(64) std::atomic<std::size_t> ring_tail_{0};  // pushers
  alignas(64) std::atomic<std::size_t> ring_head_{0};  // poppers
  alignas(64) std::atomic<std::size_t> global_size_{0};  // ring and overflow together
  std::mutex overflow_mu_;
  std::deque<Cell*> overflow_;
  std::atomic<std::size_t> overflow_size_{0};
  std::mutex park_mu_;
  std::condition_variable park_cv_;
  std::atomic<int> sleepers_{0};
  // Wake-ups sent to parked workers and not yet taken by one (under park_mu_; read without it):
  // while one is on its way, further work wakes nobody else. The woken worker looks for work and
  // wakes the next one itself when it finds some and more is waiting.
  std::atomic<int> wakes_{0};
  int waiting_ = 0;  // workers in park_cv_.wait (under park_mu_)
  std::atomic<int> untimed_{0};  // of those, waiting without a time limit (changed under park_mu_)
  std::atomic<std::uint64_t> lifo_rescues_{0};
  std::atomic<bool> stopping_{false};
  bool started_ = false;
};

}  // namespace troupe::detail
