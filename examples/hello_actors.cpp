// hello_actors: a tour of the actor runtime (what `make demo` shows until the cluster exists).
// A greeter answers asks, a flaky worker is restarted by supervision, a watcher learns when
// actors stop, and a crowd of ping-pong pairs shows the message rate.

#include <atomic>
#include <chrono>
#include <cstdio>
#include <latch>
#include <string>
#include <vector>

#include <troupe/troupe.hpp>

#include "hello_generated.h"

using namespace troupe;
using namespace std::chrono_literals;

namespace {

Message greet(const std::string& name) {
  return Message::build<hello::Greet>([&](auto& b) { return hello::CreateGreetDirect(b, name.c_str()); });
}

class Greeter final : public Actor {
 public:
  void receive(const Message& m) override {
    if (const auto* g = m.as<hello::Greet>()) {
      const std::string text = "hello, " + g->name()->str() + " (from " + context().path() + ")";
      sender().tell(Message::build<hello::Greeting>(
          [&](auto& b) { return hello::CreateGreetingDirect(b, text.c_str()); }));
    }
  }
};

// Fails on every third message; supervision restarts it with fresh state.
class Flaky final : public Actor {
 public:
  void receive(const Message&) override {
    if (++seen_ % 3 == 0) throw std::runtime_error("every third message fails");
    sender().tell(greet("ok"));
  }

 private:
  int seen_ = 0;
};

class Pinger final : public Actor {
 public:
  Pinger(std::uint64_t rounds, std::latch* done) : rounds_(rounds), done_(done) {}
  void receive(const Message& m) override {
    if (++count_ >= rounds_) {
      done_->count_down();
      return;
    }
    sender().tell(m, self());  // the same immutable message, shared, never copied
  }

 private:
  std::uint64_t rounds_, count_ = 0;
  std::latch* done_;
};

class Watcher final : public Actor {
 public:
  explicit Watcher(std::latch* seen) : seen_(seen) {}
  void receive(const Message& m) override {
    if (const auto* t = m.as<sys::Terminated>()) {
      std::printf("  watcher: %s terminated (%s)\n", t->actor_path()->c_str(), sys::EnumNameTerminationReason(t->reason()));
      seen_->count_down();
    } else if (const auto* g = m.as<hello::Greet>(); g && g->name()->str() == "watch") {
      context().watch(sender());  // "watch this one": the target travels as the message's sender
    } else {
      sender().tell(m);  // anything else: echo (used to sync with the caller)
    }
  }

 private:
  std::latch* seen_;
};

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::string(argv[1]) == "--quick";
  ActorSystem system(ActorSystemConfig{.node_id = "demo", .workers = 0});
  std::printf("Troupe actor runtime demo, node %s\n", system.node_id().c_str());

  // 1. ask / reply
  auto greeter = system.spawn<Greeter>(SpawnOptions{.name = "greeter"});
  auto reply = greeter.ask(greet("world"), 2s).get();
  if (!reply) return std::printf("ask failed: %s\n", reply.error().message().c_str()), 1;
  std::printf("1. ask: %s\n", reply->as<hello::Greeting>()->text()->c_str());

  // 2. supervision: the failing message is dropped, the actor restarts, later messages work
  auto flaky = system.spawn<Flaky>(SpawnOptions{.name = "flaky"});
  int answered = 0;
  for (int i = 0; i < 6; ++i) answered += flaky.ask(greet("x"), 500ms).get().ok() ? 1 : 0;
  std::printf("2. supervision: %d of 6 asks answered, %llu restarts\n", answered,
              static_cast<unsigned long long>(system.stats().restarts));

  // 3. deathwatch
  std::latch seen(2);
  auto watcher = system.spawn<Watcher>(SpawnOptions{.name = "watcher"}, &seen);
  watcher.tell(greet("watch"), greeter);
  watcher.tell(greet("watch"), flaky);
  // The watcher handles the two requests before the stops below reach it as Terminated.
  (void)watcher.ask(greet("sync"), 2s).get();
  system.stop(greeter);
  system.stop(flaky);
  seen.wait();
  std::printf("3. deathwatch: both stops reported\n");

  // 4. throughput: ping-pong pairs
  const unsigned pairs = 100;
  const std::uint64_t rounds = quick ? 2'000 : 200'000;
  std::latch done(pairs);
  std::vector<ActorRef> refs;
  auto t0 = std::chrono::steady_clock::now();
  for (unsigned i = 0; i < pairs; ++i) {
    auto a = system.spawn<Pinger>(SpawnOptions{}, rounds, &done);
    auto b = system.spawn<Pinger>(SpawnOptions{}, rounds + 1, &done);
    a.tell(greet("ball"), b);
    refs.push_back(a);
    refs.push_back(b);
  }
  done.wait();
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("4. %u ping-pong pairs: %.1f M messages/s\n", pairs, static_cast<double>(pairs * rounds) / s / 1e6);

  const auto st = system.stats();
  system.shutdown();
  std::printf("dead letters: %llu, actors spawned: %llu\n", static_cast<unsigned long long>(st.dead_letters),
              static_cast<unsigned long long>(st.actors_spawned));
  const bool ok = answered == 4 && st.restarts == 2;
  std::printf("%s\n", ok ? "all good" : "unexpected results");
  return ok ? 0 : 1;
}
