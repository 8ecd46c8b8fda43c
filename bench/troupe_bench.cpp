// troupe_bench: Troupe's side of the actor benchmarks. Mirrors bench/caf/caf_bench.cpp workload
// for workload so that bench/run.sh can put the two side by side.
//
// Usage: troupe_bench [--threads N] [--only NAME] [--scale F]
// Prints one JSON line per figure on stdout: {"name":"pingpong_1pair","value":1.0,"unit":"msg/s"}
//
// Every message is built fresh for every send (as CAF allocates one per send); completion is an
// event (std::latch), never a poll.

#include <malloc.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <latch>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <spdlog/spdlog.h>
#include <troupe/actor/router.hpp>
#include <troupe/troupe.hpp>

#include "bench_generated.h"

namespace {

using namespace troupe;
using Clock = std::chrono::steady_clock;

struct Options {
  unsigned threads = 2;
  std::string only;
  double scale = 1.0;
};

std::uint64_t scaled(const Options& o, std::uint64_t n) {
  return std::max<std::uint64_t>(1, static_cast<std::uint64_t>(static_cast<double>(n) * o.scale));
}

void emit(const char* name, double value, const char* unit) {
  std::printf("{\"name\":\"%s\",\"value\":%.1f,\"unit\":\"%s\"}\n", name, value, unit);
  std::fflush(stdout);
}

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

Message ping(std::uint64_t seq) {
  return Message::build<bench::Ping>([seq](auto& b) { return bench::CreatePing(b, seq); });
}

ActorSystemConfig config(const Options& o) {
  ActorSystemConfig c;
  c.workers = o.threads;
  c.node_id = "bench";
  return c;
}

std::size_t rss_bytes() {
  std::ifstream f("/proc/self/statm");
  std::size_t size = 0, resident = 0;
  f >> size >> resident;
  return resident * static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
}

// Replies to its sender with seq+1 until the pair has made `total` deliveries.
class Ponger final : public Actor {
 public:
  Ponger(std::uint64_t total, std::latch* done) : total_(total), done_(done) {}
  void receive(const Message& m) override {
    const auto seq = m.as<bench::Ping>()->seq();
    if (seq >= total_) {
      done_->count_down();
      return;
    }
    sender().tell(ping(seq + 1), self());
  }

 private:
  std::uint64_t total_;
  std::latch* done_;
};

void pingpong(const Options& o, const char* name, unsigned pairs, std::uint64_t per_pair) {
  ActorSystem sys(config(o));
  std::latch done(pairs);
  std::vector<std::pair<ActorRef, ActorRef>> ps;
  for (unsigned i = 0; i < pairs; ++i) {
    ps.emplace_back(sys.spawn<Ponger>(SpawnOptions{}, per_pair, &done), sys.spawn<Ponger>(SpawnOptions{}, per_pair, &done));
  }
  const auto t0 = Clock::now();
  for (auto& [a, b] : ps) a.tell(ping(0), b);  // seq 0 is the uncounted kick-off
  done.wait();
  const double s = seconds_since(t0);
  emit(name, static_cast<double>(pairs) * static_cast<double>(per_pair) / s, "msg/s");
}

class Sink final : public Actor {
 public:
  Sink(std::uint64_t total, std::latch* done) : remaining_(total), done_(done) {}
  void receive(const Message&) override {
    if (--remaining_ == 0) done_->count_down();
  }

 private:
  std::uint64_t remaining_;
  std::latch* done_;
};

void fanin(const Options& o) {
  ActorSystem sys(config(o));
  const auto each = scaled(o, 2'000'000);
  std::latch done(1), go(1);
  auto sink = sys.spawn<Sink>(SpawnOptions{}, 2 * each, &done);
  std::vector<std::thread> senders;
  for (int t = 0; t < 2; ++t) {
    senders.emplace_back([&] {
      go.wait();
      for (std::uint64_t i = 0; i < each; ++i) sink.tell(ping(i));
    });
  }
  const auto t0 = Clock::now();
  go.count_down();
  done.wait();
  const double s = seconds_since(t0);
  for (auto& t : senders) t.join();
  emit("fanin_2senders", 2.0 * static_cast<double>(each) / s, "msg/s");
}

// Counts its own deliveries (no counter shared between routees: a shared one is a cache line every
// delivery pulls between the workers, a cost of the harness, not of routing); the delivery that
// completes its `share` counts the latch down once.
class Counter final : public Actor {
 public:
  Counter(std::uint64_t share, std::latch* done) : share_(share), done_(done) {}
  void receive(const Message&) override {
    if (++seen_ == share_) done_->count_down();
  }

 private:
  std::uint64_t seen_ = 0;
  std::uint64_t share_;
  std::latch* done_;
};

// 2 sender threads x `each` messages into `target`; returns seconds until `done` opens.
double two_senders(const ActorRef& target, std::uint64_t each, std::latch& done) {
  std::latch go(1);
  std::vector<std::thread> senders;
  for (int t = 0; t < 2; ++t) {
    senders.emplace_back([&] {
      go.wait();
      for (std::uint64_t i = 0; i < each; ++i) target.tell(ping(i));
    });
  }
  const auto t0 = Clock::now();
  go.count_down();
  done.wait();
  const double s = seconds_since(t0);
  for (auto& t : senders) t.join();
  return s;
}

void pool(const Options& o, const char* name, RoutingKind kind) {
  ActorSystem sys(config(o));
  const auto each = scaled(o, 1'000'000);
  const std::uint64_t deliveries = 2 * each * (kind == RoutingKind::broadcast ? 4 : 1);
  // Each of the 4 routees gets exactly its share: round robin splits the sends evenly (each sender
  // goes round the routees), broadcast gives every routee all of them.
  std::latch done(4);
  RouterConfig rc;
  rc.kind = kind;
  PoolOptions po;
  po.name = "pool";
  auto router = make_pool<Counter>(sys, 4, rc, po, deliveries / 4, &done);
  while (router.routees().size() < 4) std::this_thread::yield();  // set-up only, not timed
  const double s = two_senders(router.ref(), each, done);
  emit(name, 2.0 * static_cast<double>(each) / s, "msg/s");
}

// The no-router ceiling for the pool figures: the same 2 senders straight to one actor.
void direct(const Options& o) {
  ActorSystem sys(config(o));
  const auto each = scaled(o, 1'000'000);
  std::latch done(1);
  auto target = sys.spawn<Counter>(SpawnOptions{}, 2 * each, &done);
  const double s = two_senders(target, each, done);
  emit("direct_tell_2x1", 2.0 * static_cast<double>(each) / s, "msg/s");
}

class Idle final : public Actor {
 public:
  explicit Idle(std::latch* started) : started_(started) {}
  void pre_start() override { started_->count_down(); }
  void receive(const Message&) override {}

 private:
  std::latch* started_;
};

void idle_actors(const Options& o) {
  const auto n = scaled(o, 1'000'000);
  ActorSystem sys(config(o));
  std::vector<ActorRef> refs;
  refs.reserve(n);
  std::latch started(static_cast<std::ptrdiff_t>(n));
  malloc_trim(0);
  const auto before = rss_bytes();
  for (std::uint64_t i = 0; i < n; ++i) refs.push_back(sys.spawn<Idle>(SpawnOptions{}, &started));
  started.wait();  // every actor has run pre_start: fully set up, now idle
  const auto after = rss_bytes();
  emit("idle_actor_bytes", static_cast<double>(after - before) / static_cast<double>(n), "bytes");
  refs.clear();
  sys.shutdown();
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "missing value for %s\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--threads") {
      o.threads = static_cast<unsigned>(std::stoul(value()));
    } else if (a == "--only") {
      o.only = value();
    } else if (a == "--scale") {
      o.scale = std::stod(value());
    } else {
      std::fprintf(stderr, "usage: troupe_bench [--threads N] [--only NAME] [--scale F]\n");
      return 2;
    }
  }
  spdlog::set_level(spdlog::level::warn);
  auto want = [&](const char* name) { return o.only.empty() || o.only == name; };
  if (want("pingpong_1pair")) pingpong(o, "pingpong_1pair", 1, scaled(o, 2'000'000));
  if (want("pingpong_100pairs")) pingpong(o, "pingpong_100pairs", 100, scaled(o, 50'000));
  if (want("fanin_2senders")) fanin(o);
  if (want("idle_actor_bytes")) idle_actors(o);
  if (want("pool_roundrobin_2x4")) pool(o, "pool_roundrobin_2x4", RoutingKind::round_robin);
  if (want("pool_broadcast_2x4")) pool(o, "pool_broadcast_2x4", RoutingKind::broadcast);
  if (want("direct_tell_2x1")) direct(o);
  return 0;
}
