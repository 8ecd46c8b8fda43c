// caf_bench.cpp -- peer baseline benchmark for CAF 0.17 (libcaf-dev 0.17.6).
//
// Mirrors the project's own benchmark workloads so the figures can be compared
// side by side. Each workload prints exactly one JSON line on stdout:
//
//   {"name":"pingpong_1pair","value":1234567.0,"unit":"msg/s"}
//
// Everything else (configuration, timings, diagnostics) goes to stderr.
//
// Usage: caf_bench [--threads N] [--only NAME] [--scale F]
//   --threads N  number of CAF scheduler worker threads (default 2)
//   --only NAME  run a single workload by name
//   --scale F    multiply all message / actor counts by F (default 1.0);
//                structural sizes (100 pairs, 2 sender threads, 4 routees)
//                are not scaled
//
// Build (Debian bookworm, CAF 0.17.6):
//   g++ -std=c++17 -O2 -o caf_bench bench/caf/caf_bench.cpp -lcaf_core -lpthread
//
// Completion is always signalled by an event (mutex + condition variable
// latch counted down by the actor that observes the last delivery); the main
// thread never polls or sleeps. Wall time is measured with steady_clock from
// just before the first send until the latch opens.

#include <caf/all.hpp>

#include <malloc.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

using namespace caf;

namespace {

// -- small helpers ------------------------------------------------------------

using clock_type = std::chrono::steady_clock;

double seconds_since(clock_type::time_point t0) {
  return std::chrono::duration<double>(clock_type::now() - t0).count();
}

/// One-shot countdown latch: the thread that counts the last unit wakes up
/// everybody blocked in wait(). Shared via shared_ptr so that an actor that
/// still holds a reference after main has moved on never touches freed memory.
class latch {
public:
  explicit latch(int64_t n) : remaining_(n) {}

  void count_down() {
    std::lock_guard<std::mutex> guard{mtx_};
    if (--remaining_ == 0)
      cv_.notify_all();
  }

  void wait() {
    std::unique_lock<std::mutex> guard{mtx_};
    cv_.wait(guard, [this] { return remaining_ <= 0; });
  }

private:
  std::mutex mtx_;
  std::condition_variable cv_;
  int64_t remaining_;
};

/// Start gate for the std::thread senders: all senders block until main has
/// taken the start timestamp, so thread creation is not part of the figure.
class start_gate {
public:
  void open() {
    std::lock_guard<std::mutex> guard{mtx_};
    open_ = true;
    cv_.notify_all();
  }

  void wait() {
    std::unique_lock<std::mutex> guard{mtx_};
    cv_.wait(guard, [this] { return open_; });
  }

private:
  std::mutex mtx_;
  std::condition_variable cv_;
  bool open_ = false;
};

/// Resident set size in bytes, from /proc/self/statm (2nd field = pages).
int64_t rss_bytes() {
  std::ifstream in{"/proc/self/statm"};
  int64_t size_pages = 0;
  int64_t resident_pages = 0;
  in >> size_pages >> resident_pages;
  return resident_pages * static_cast<int64_t>(sysconf(_SC_PAGESIZE));
}

void emit(const char* name, double value, const char* unit) {
  std::printf("{\"name\":\"%s\",\"value\":%.1f,\"unit\":\"%s\"}\n", name, value,
              unit);
  std::fflush(stdout);
}

/// Sends an exit message to every actor in `xs`, drops the handles and blocks
/// until the actor system has no running actors left, so that workloads never
/// overlap.
void shutdown_all(actor_system& sys, std::vector<actor>& xs) {
  auto t0 = clock_type::now();
  for (auto& x : xs)
    anon_send_exit(x, exit_reason::user_shutdown);
  xs.clear();
  xs.shrink_to_fit();
  sys.await_all_actors_done();
  std::fprintf(stderr, "  shutdown took %.3f s\n", seconds_since(t0));
}

struct options {
  size_t threads = 2;
  std::string only;
  double scale = 1.0;
};

options opts;

/// Scales a message/actor count, never below 1.
int64_t scaled(int64_t n) {
  auto x = static_cast<int64_t>(std::llround(static_cast<double>(n) * opts.scale));
  return std::max<int64_t>(1, x);
}

// -- actor implementations ----------------------------------------------------

/// Ping-pong participant. Learns its peer from an `actor` message (set-up,
/// not timed), then bounces an int counter: the value carried by a message is
/// its delivery number (1..total). An int 0 is the kick-off and not counted.
/// The actor that receives delivery number `total` opens the latch.
struct pinger_state {
  actor peer;
};

behavior pinger(stateful_actor<pinger_state>* self, int32_t total,
                std::shared_ptr<latch> done) {
  return {
    [=](const actor& peer) { self->state.peer = peer; },
    [=](int32_t k) {
      if (k >= total) {
        done->count_down();
        return;
      }
      self->send(self->state.peer, k + 1);
    },
  };
}

/// Fan-in sink: counts int messages; opens the latch after `total`.
struct sink_state {
  int64_t count = 0;
};

behavior sink(stateful_actor<sink_state>* self, int64_t total,
              std::shared_ptr<latch> done) {
  return {
    [=](int32_t) {
      if (++self->state.count == total)
        done->count_down();
    },
  };
}

/// Idle actor for the memory workload. It carries no captured state so that
/// its footprint is just CAF's per-actor overhead plus a one-handler behavior.
/// Initialisation (which CAF runs asynchronously on a worker after spawn) is
/// counted in globals so that main measures RSS only once every actor has
/// actually built its behavior.
std::atomic<int64_t> g_idle_initialized{0};
int64_t g_idle_target = 0;
latch* g_idle_latch = nullptr;

behavior idle_actor() {
  if (g_idle_initialized.fetch_add(1, std::memory_order_relaxed) + 1
      == g_idle_target)
    g_idle_latch->count_down();
  return {
    [](int32_t) {
      // intentionally empty
    },
  };
}

/// Pool routee: counts its own deliveries (no counter shared between routees:
/// a shared one is a cache line every delivery pulls between the workers, a
/// cost of the harness, not of routing); the delivery that completes its
/// `share` counts the latch down once.
behavior routee(event_based_actor*, int64_t share, std::shared_ptr<latch> done) {
  auto seen = std::make_shared<int64_t>(0);
  return {
    [=](int32_t) {
      if (++*seen == share)
        done->count_down();
    },
  };
}

// -- workloads ----------------------------------------------------------------

/// Runs `pairs` independent ping-pong pairs, each with `per_pair` deliveries;
/// returns total deliveries per second (first kick-off until the last pair is
/// done).
double run_pingpong(actor_system& sys, int64_t pairs, int64_t per_pair) {
  auto done = std::make_shared<latch>(pairs);
  std::vector<actor> as;
  std::vector<actor> bs;
  as.reserve(pairs);
  bs.reserve(pairs);
  for (int64_t i = 0; i < pairs; ++i) {
    auto a = sys.spawn(pinger, static_cast<int32_t>(per_pair), done);
    auto b = sys.spawn(pinger, static_cast<int32_t>(per_pair), done);
    // Introductions are enqueued before the kick-off below; mailboxes are FIFO
    // per sender, and A only sends to B after receiving the kick-off, so both
    // peers are known before the first counted delivery.
    anon_send(a, b);
    anon_send(b, a);
    as.push_back(std::move(a));
    bs.push_back(std::move(b));
  }
  auto t0 = clock_type::now();
  for (auto& a : as)
    anon_send(a, int32_t{0}); // kick-off: A sends delivery #1 to B
  done->wait();
  auto secs = seconds_since(t0);
  auto total = pairs * per_pair;
  std::fprintf(stderr, "  %lld pair(s) x %lld deliveries in %.3f s\n",
               static_cast<long long>(pairs), static_cast<long long>(per_pair),
               secs);
  as.insert(as.end(), bs.begin(), bs.end());
  shutdown_all(sys, as); // peers reference each other: explicit exit needed
  return static_cast<double>(total) / secs;
}

/// Workload 1: one pair, 2,000,000 deliveries in total.
void pingpong_1pair(actor_system& sys) {
  emit("pingpong_1pair", run_pingpong(sys, 1, scaled(2000000)), "msg/s");
}

/// Workload 2: 100 pairs, 50,000 deliveries each (5,000,000 total), all
/// started together.
void pingpong_100pairs(actor_system& sys) {
  emit("pingpong_100pairs", run_pingpong(sys, 100, scaled(50000)), "msg/s");
}

/// Workload 3: two plain std::threads each anon_send N ints to one sink actor;
/// rate = 2N / seconds from the start of sending until the sink counted all.
void fanin_2senders(actor_system& sys) {
  const int64_t per_sender = scaled(2000000);
  const int64_t total = 2 * per_sender;
  auto done = std::make_shared<latch>(1);
  auto s = sys.spawn(sink, total, done);
  start_gate gate;
  std::vector<std::thread> senders;
  for (int i = 0; i < 2; ++i)
    senders.emplace_back([&gate, s, per_sender] {
      gate.wait();
      for (int64_t j = 0; j < per_sender; ++j)
        anon_send(s, static_cast<int32_t>(j));
    });
  auto t0 = clock_type::now();
  gate.open();
  done->wait();
  auto secs = seconds_since(t0);
  for (auto& t : senders)
    t.join();
  std::fprintf(stderr, "  %lld messages in %.3f s\n",
               static_cast<long long>(total), secs);
  std::vector<actor> xs{s};
  shutdown_all(sys, xs);
  emit("fanin_2senders", static_cast<double>(total) / secs, "msg/s");
}

/// Workload 4: RSS growth per idle event-based actor. The handle vector is
/// reserved before the baseline RSS reading so its storage is not counted
/// (reserve() only maps address space; the handles touch it during spawning,
/// which is part of "keeping a handle" and identical in the project's
/// mirror).
void idle_actor_bytes(actor_system& sys) {
  const int64_t n = scaled(1000000);
  latch initialized{1};
  g_idle_initialized = 0;
  g_idle_target = n;
  g_idle_latch = &initialized;
  std::vector<actor> xs;
  xs.reserve(n);
  // Hand memory freed by earlier workloads (e.g. drained mailbox backlogs)
  // back to the OS so that the baseline is not inflated by reusable heap.
  malloc_trim(0);
  auto before = rss_bytes();
  auto t0 = clock_type::now();
  for (int64_t i = 0; i < n; ++i)
    xs.push_back(sys.spawn(idle_actor));
  initialized.wait(); // every actor has run its init and holds its behavior
  auto secs = seconds_since(t0);
  auto after = rss_bytes();
  std::fprintf(stderr,
               "  %lld actors spawned+initialized in %.3f s; "
               "RSS %lld -> %lld bytes\n",
               static_cast<long long>(n), secs, static_cast<long long>(before),
               static_cast<long long>(after));
  // Shut down by dropping the handles: the idle actors become unreachable and
  // CAF destroys them right here (in the thread releasing the last reference).
  // Do NOT send 1M exit messages instead: with CAF 0.17's work-stealing
  // scheduler on 2 cores that exit storm makes the workers spin in
  // double_ended_queue::take_tail / sched_yield, and the following
  // await_all_actors_done() took anywhere from 3 s to 77 s in testing.
  auto t1 = clock_type::now();
  xs.clear();
  xs.shrink_to_fit();
  sys.await_all_actors_done();
  std::fprintf(stderr, "  shutdown (drop handles) took %.3f s\n",
               seconds_since(t1));
  g_idle_latch = nullptr;
  emit("idle_actor_bytes",
       static_cast<double>(after - before) / static_cast<double>(n), "bytes");
}

/// Shared body of the two pool workloads: a pool of 4 routees with `policy`,
/// 2 std::threads each anon_send `per_sender` ints to the pool; done when every
/// routee has counted its share of the `per_sender * 2 * fanout` deliveries.
/// Returns messages *sent* per second.
double run_pool(actor_system& sys, actor_pool::policy policy, int64_t fanout) {
  const int64_t per_sender = scaled(1000000);
  const int64_t sent = 2 * per_sender;
  const int64_t deliveries = sent * fanout;
  // Each of the 4 routees gets exactly its share: round robin splits the sends
  // evenly (2 x 1,000,000 over 4), broadcast gives every routee all of them.
  const int64_t share = deliveries / 4;
  auto done = std::make_shared<latch>(4);
  auto factory = [&sys, share, done] { return sys.spawn(routee, share, done); };
  auto pool = actor_pool::make(sys.dummy_execution_unit(), 4, factory,
                               std::move(policy));
  start_gate gate;
  std::vector<std::thread> senders;
  for (int i = 0; i < 2; ++i)
    senders.emplace_back([&gate, pool, per_sender] {
      gate.wait();
      for (int64_t j = 0; j < per_sender; ++j)
        anon_send(pool, static_cast<int32_t>(j));
    });
  auto t0 = clock_type::now();
  gate.open();
  done->wait();
  auto secs = seconds_since(t0);
  for (auto& t : senders)
    t.join();
  std::fprintf(stderr, "  %lld sent, %lld delivered in %.3f s\n",
               static_cast<long long>(sent), static_cast<long long>(deliveries),
               secs);
  // Exiting the pool also sends exit messages to all of its routees.
  std::vector<actor> xs{pool};
  shutdown_all(sys, xs);
  return static_cast<double>(sent) / secs;
}

/// Workload 5: round-robin pool, 2 senders x 1,000,000 messages, 4 routees.
void pool_roundrobin_2x4(actor_system& sys) {
  emit("pool_roundrobin_2x4", run_pool(sys, actor_pool::round_robin(), 1),
       "msg/s");
}

/// Workload 6: broadcast pool, 2 senders x 1,000,000 messages, 4 routees.
/// NOTE: each message sent is delivered 4 times (once per routee), i.e. the
/// routees process 8,000,000 deliveries; the figure is messages *sent*/s.
void pool_broadcast_2x4(actor_system& sys) {
  emit("pool_broadcast_2x4", run_pool(sys, actor_pool::broadcast(), 4),
       "msg/s");
}

struct workload {
  const char* name;
  void (*fn)(actor_system&);
};

const workload workloads[] = {
  {"pingpong_1pair", pingpong_1pair},
  {"pingpong_100pairs", pingpong_100pairs},
  {"fanin_2senders", fanin_2senders},
  {"idle_actor_bytes", idle_actor_bytes},
  {"pool_roundrobin_2x4", pool_roundrobin_2x4},
  {"pool_broadcast_2x4", pool_broadcast_2x4},
};

[[noreturn]] void usage(const char* argv0, int rc) {
  std::fprintf(stderr,
               "usage: %s [--threads N] [--only NAME] [--scale F]\n"
               "workloads:",
               argv0);
  for (auto& w : workloads)
    std::fprintf(stderr, " %s", w.name);
  std::fprintf(stderr, "\n");
  std::exit(rc);
}

void parse_args(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto next = [&]() -> const char* {
      if (i + 1 >= argc)
        usage(argv[0], 2);
      return argv[++i];
    };
    if (arg == "--threads") {
      auto n = std::atol(next());
      if (n < 1)
        usage(argv[0], 2);
      opts.threads = static_cast<size_t>(n);
    } else if (arg == "--only") {
      opts.only = next();
    } else if (arg == "--scale") {
      opts.scale = std::atof(next());
      if (!(opts.scale > 0))
        usage(argv[0], 2);
    } else if (arg == "--help" || arg == "-h") {
      usage(argv[0], 0);
    } else {
      std::fprintf(stderr, "unknown argument: %s\n", arg.c_str());
      usage(argv[0], 2);
    }
  }
  if (!opts.only.empty()
      && std::none_of(std::begin(workloads), std::end(workloads),
                      [](const workload& w) { return opts.only == w.name; })) {
    std::fprintf(stderr, "unknown workload: %s\n", opts.only.c_str());
    usage(argv[0], 2);
  }
}

} // namespace

int main(int argc, char** argv) {
  parse_args(argc, argv);
  int rc = 0;
  {
    actor_system_config cfg;
    // config_value stores integers as int64_t; pass that type explicitly.
    cfg.set("scheduler.max-threads", static_cast<int64_t>(opts.threads));
    actor_system sys{cfg};
    std::fprintf(stderr, "CAF %d.%d.%d, %zu scheduler worker thread(s), scale %g\n",
                 CAF_MAJOR_VERSION, CAF_MINOR_VERSION, CAF_PATCH_VERSION,
                 sys.scheduler().num_workers(), opts.scale);
    if (sys.scheduler().num_workers() != opts.threads) {
      std::fprintf(stderr, "error: scheduler.max-threads was not applied\n");
      rc = 1;
    } else {
      for (auto& w : workloads) {
        if (!opts.only.empty() && opts.only != w.name)
          continue;
        std::fprintf(stderr, "%s\n", w.name);
        w.fn(sys);
      }
    }
    // ~actor_system awaits all (non-hidden) actors; every workload has
    // already shut down its actors, so this returns promptly.
  }
  return rc;
}
