// entity_bench: memory per idle entity with 1,000,000 entities hosted on one node (sharding's
// local region: the entity actor, its cell, the region's bookkeeping), from the resident set
// size before and after. An entity keeps its id (a std::string), as most real ones do.
// Prints {"name":"entity_idle_bytes","value":...,"unit":"bytes","peer":null,...}; the goal is
// <= 512 bytes per idle entity.
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>

#include <troupe/serialization/system_generated.h>
#include <troupe/sharding/region.hpp>

#if TROUPE_MIMALLOC
#include <mimalloc.h>
#endif

using namespace troupe;

namespace {

long rss_bytes() {
  std::ifstream f("/proc/self/statm");
  long pages = 0, resident = 0;
  f >> pages >> resident;
  return resident * sysconf(_SC_PAGESIZE);
}

std::atomic<std::size_t> g_received{0};

class Idle final : public Actor {
 public:
  explicit Idle(std::string id) : id_(std::move(id)) {}
  void receive(const Message&) override { g_received.fetch_add(1, std::memory_order_relaxed); }

 private:
  std::string id_;
};

}  // namespace

int main(int argc, char** argv) {
#if TROUPE_MIMALLOC
  // mimalloc returns freed pages to the OS lazily (decommit_delay, 25 ms, when the heap next
  // works): the garbage of the spawn storm (messages, envelopes) would count as entity memory
  // (540 bytes an entity instead of 400). Return them at once, as malloc_trim would for glibc,
  // so that the resident set shows what idle entities hold.
  mi_option_set(mi_option_decommit_delay, 0);
#endif
  const std::size_t n = argc > 2 && std::string(argv[1]) == "--count" ? std::stoul(argv[2]) : 1'000'000;
  ActorSystemConfig cfg;
  cfg.workers = 2;
  cfg.node_id = "entity-bench";
  ActorSystem system(cfg);
  sharding::Sharding sh(system);
  sharding::EntitySettings s;
  s.type = "idle";
  s.passivate_after = std::chrono::milliseconds(0);  // never: every entity stays
  sh.start<Idle>(s);
  auto hello = Message::build<sys::Undeliverable>([](auto& b) { return sys::CreateUndeliverableDirect(b, "hi"); });
  const long before = rss_bytes();
  for (std::size_t i = 0; i < n; ++i) sh.tell("idle", "user-" + std::to_string(i), hello);
  // Every entity has run its message: idle, nothing queued.
  while (g_received.load(std::memory_order_relaxed) < n) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  const long after = rss_bytes();
  const double per = double(after - before) / double(n);
  std::printf("{\"name\":\"entity_idle_bytes\",\"value\":%.1f,\"unit\":\"bytes\"}\n", per);
  std::fprintf(stderr, "%zu entities, %.1f bytes each (goal <= 512)\n", n, per);
  system.shutdown();
  return 0;
}
