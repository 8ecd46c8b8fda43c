// Deathwatch: exactly one Terminated per watch; dead letters for stopped actors.

#include <gtest/gtest.h>

#include <atomic>
#include <future>
#include <set>
#include <string>

#include <troupe/actor/actor_system.hpp>
#include <troupe/serialization/system_generated.h>

#include "test_messages_generated.h"
#include "testkit.hpp"

namespace troupe {
namespace {

using namespace std::chrono_literals;
using namespace testkit;  // Probe, cmd, op_of, ping, test_config


ActorSystemConfig cfg() { return test_config("watch-test"); }


// Watches whatever it is told to ("watch" with the target as sender... no: targets come via
// constructor), counts Terminated messages, forwards each to `report`.
class Watcher final : public Actor {
 public:
  Watcher(ActorRef target, ActorRef report) : target_(std::move(target)), report_(std::move(report)) {}
  void pre_start() override {
    context().watch(target_);
    context().watch(target_);  // twice: still one Terminated
  }
  void receive(const Message& m) override {
    if (m.is<sys::Terminated>()) {
      ++terminated_;
      report_.tell(m, sender());
    } else if (op_of(m) == "unwatch") {
      context().unwatch(target_);
      sender().tell(cmd("unwatched"));
    } else if (op_of(m) == "count") {
      sender().tell(cmd("count", terminated_));
    }
  }

 private:
  ActorRef target_, report_;
  std::uint64_t terminated_ = 0;
};

std::uint64_t count_of(const ActorRef& watcher) {
  auto r = watcher.ask(cmd("count"), 10s).get();
  return r.ok() ? r->as<test::Cmd>()->n() : ~0ull;
}

TEST(Deathwatch, TargetStopDeliversExactlyOneTerminated) {
  ActorSystem sys(cfg());
  Probe probe(sys);
  auto target = sys.spawn<Silent>(SpawnOptions{.name = "target"});
  auto watcher = sys.spawn<Watcher>(SpawnOptions{}, target, probe.ref());
  ASSERT_EQ(count_of(watcher), 0u);  // watcher has started (and watched)
  sys.stop(target);
  auto t = probe.next();
  ASSERT_TRUE(t);
  ASSERT_TRUE(t->msg.is<sys::Terminated>());
  EXPECT_EQ(t->sender, target);
  EXPECT_EQ(t->msg.as<sys::Terminated>()->reason(), sys::TerminationReason::Stopped);
  EXPECT_EQ(t->msg.as<sys::Terminated>()->actor_path()->str(), "/user/target");
  EXPECT_EQ(count_of(watcher), 1u);
  EXPECT_EQ(probe.queued(), 0u);
}

TEST(Deathwatch, WatchingADeadActorDeliversTerminatedAtOnce) {
  ActorSystem sys(cfg());
  Probe first(sys), second(sys);
  auto target = sys.spawn<Silent>();
  first.watch(sys, target);
  sys.stop(target);
  ASSERT_TRUE(first.next());  // now it is certainly dead
  auto watcher = sys.spawn<Watcher>(SpawnOptions{}, target, second.ref());
  auto t = second.next();
  ASSERT_TRUE(t);
  EXPECT_EQ(t->msg.as<sys::Terminated>()->reason(), sys::TerminationReason::AlreadyDead);
  EXPECT_EQ(count_of(watcher), 1u);
}

TEST(Deathwatch, UnwatchBeforeDeathMeansNoTerminated) {
  ActorSystem sys(cfg());
  Probe unwatched(sys), control(sys);
  auto target = sys.spawn<Silent>();
  auto watcher = sys.spawn<Watcher>(SpawnOptions{}, target, unwatched.ref());
  ASSERT_TRUE(watcher.ask(cmd("unwatch"), 10s).get().ok());
  control.watch(sys, target);  // registered after: notified after
  // The control's watch request is processed before it gets any Terminated.
  sys.stop(target);
  ASSERT_TRUE(control.next());
  EXPECT_EQ(count_of(watcher), 0u);
  EXPECT_EQ(unwatched.queued(), 0u);
}

TEST(Deathwatch, ParentStopTerminatesWatchedChildrenToo) {
  ActorSystem sys(cfg());
  Probe probe(sys);
  class Parent final : public Actor {
   public:
    void pre_start() override { child_ = context().spawn<Silent>(SpawnOptions{.name = "kid"}); }
    void receive(const Message&) override { sender().tell(cmd("kid"), child_); }
    ActorRef child_;
  };
  auto parent = sys.spawn<Parent>(SpawnOptions{.name = "parent"});
  auto r = parent.ask(cmd("kid?"), 10s).get();
  ASSERT_TRUE(r.ok());
  auto kid = sys.lookup("/user/parent/kid");
  ASSERT_TRUE(kid);
  probe.watch(sys, kid);
  probe.watch(sys, parent);
  sys.stop(parent);
  auto a = probe.next(), b = probe.next();
  ASSERT_TRUE(a && b);
  EXPECT_EQ(a->sender, kid) << "the child stops (and is reported) before its parent";
  EXPECT_EQ(b->sender, parent);
}

/// Spawns named children c<i> and watches each; tells `report` the name of every child it hears
/// has stopped.
class Nursery final : public Actor {
 public:
  explicit Nursery(ActorRef report) : report_(std::move(report)) {}
  void receive(const Message& m) override {
    if (m.is<sys::Terminated>()) {
      const auto path = sender().path();
      report_.tell(cmd(path.substr(path.rfind('/') + 1)));
      return;
    }
    const auto op = op_of(m);
    const auto n = m.as<test::Cmd>()->n();
    if (op == "spawn-all") {  // c0 .. c<n-1>
      for (std::uint64_t i = 0; i < n; ++i) context().watch(context().spawn<Silent>(SpawnOptions{.name = name(i)}));
    } else if (op == "spawn") {
      context().watch(context().spawn<Silent>(SpawnOptions{.name = name(n)}));
    } else if (op == "unwatch") {
      context().unwatch(context().system().lookup(context().path() + "/" + name(n)));
    }
    sender().tell(cmd("done"));
  }
  static std::string name(std::uint64_t i) { return "c" + std::to_string(i); }

 private:
  ActorRef report_;
};

// A shard region's shape: thousands of named children, each watched by its parent. Names are
// found, freed and reused as children come and go; every watcher hears of each death once.
TEST(Deathwatch, ManyNamedWatchedChildrenAreFoundByNameAndEachDeathIsReportedOnce) {
  ActorSystem sys(cfg());
  Probe reports(sys), other(sys), third(sys);
  constexpr std::uint64_t kN = 3000;
  auto nursery = sys.spawn<Nursery>(SpawnOptions{.name = "nursery"}, reports.ref());
  ASSERT_TRUE(nursery.ask(cmd("spawn-all", kN), 30s).get().ok());
  auto child = [&](std::uint64_t i) { return sys.lookup("/user/nursery/" + Nursery::name(i)); };
  std::set<const void*> distinct;
  for (std::uint64_t i = 0; i < kN; ++i) {
    auto c = child(i);
    ASSERT_TRUE(c) << i;
    EXPECT_EQ(c.path(), "/user/nursery/c" + std::to_string(i));
    distinct.insert(c.target());
  }
  EXPECT_EQ(distinct.size(), kN);
  EXPECT_FALSE(child(kN));
  EXPECT_FALSE(sys.lookup("/user/nursery/c"));

  // c1 and c3 get more watchers; then the nursery stops watching c3 (its first watcher).
  other.watch(sys, child(1));
  other.watch(sys, child(3));
  third.watch(sys, child(3));
  ASSERT_TRUE(nursery.ask(cmd("unwatch", 3), 10s).get().ok());

  // Two children in three stop (and c3): names leave from the middle of the table's runs.
  auto stop_and_collect = [&](auto&& which) {
    std::uint64_t expected = 0;
    for (std::uint64_t i = 0; i < kN; ++i) {
      if (!which(i)) continue;
      auto c = child(i);
      ASSERT_TRUE(c) << i;
      sys.stop(c);
      if (i != 3) ++expected;
    }
    std::set<std::string> heard;
    for (std::uint64_t k = 0; k < expected; ++k) {
      auto r = reports.next();
      ASSERT_TRUE(r) << "after " << k << " of " << expected;
      EXPECT_TRUE(heard.insert(op_of(r->msg)).second) << op_of(r->msg) << " reported twice";
    }
    EXPECT_EQ(heard.count("c3"), 0u) << "unwatched";
  };
  stop_and_collect([](std::uint64_t i) { return i % 3 != 0 || i == 3; });
  for (auto* p : {&other, &other, &third}) {
    auto t = p->next();
    ASSERT_TRUE(t);
    EXPECT_TRUE(t->msg.is<sys::Terminated>());
  }
  ASSERT_TRUE(nursery.ask(cmd("sync"), 10s).get().ok());
  EXPECT_EQ(reports.queued(), 0u);
  EXPECT_EQ(other.queued(), 0u);
  EXPECT_EQ(third.queued(), 0u);
  for (std::uint64_t i = 0; i < kN; ++i) EXPECT_EQ(static_cast<bool>(child(i)), i % 3 == 0 && i != 3) << i;

  // A freed name is taken again; most of the rest stop (the table shrinks) and the few left
  // are still found.
  ASSERT_TRUE(nursery.ask(cmd("spawn", 1), 10s).get().ok());
  ASSERT_TRUE(child(1));
  const std::set<std::uint64_t> keep{0, 1, kN - 3};
  stop_and_collect([&](std::uint64_t i) { return i % 3 == 0 && i != 3 && !keep.count(i); });
  for (auto i : keep) EXPECT_TRUE(child(i)) << i;
  EXPECT_FALSE(child(6));
  other.watch(sys, nursery);
  sys.stop(nursery);
  ASSERT_TRUE(other.next());
  for (auto i : keep) EXPECT_FALSE(child(i)) << i;
}

TEST(DeadLetters, MessagesToAStoppedActorAreCounted) {
  ActorSystem sys(cfg());
  Probe probe(sys);
  auto target = sys.spawn<Silent>();
  probe.watch(sys, target);
  sys.stop(target);
  ASSERT_TRUE(probe.next());
  const auto before = sys.stats().dead_letters;
  for (int i = 0; i < 5; ++i) target.tell(cmd("hello"));
  EXPECT_EQ(sys.stats().dead_letters - before, 5u);
}

TEST(DeadLetters, MessagesQueuedAtStopAreCountedNotLost) {
  ActorSystem sys(cfg());
  Probe probe(sys);
  class Slow final : public Actor {
   public:
    Slow(std::promise<void>* entered, std::shared_future<void> gate) : entered_(entered), gate_(gate) {}
    void receive(const Message&) override {
      if (entered_) std::exchange(entered_, nullptr)->set_value();
      gate_.wait();  // hold the actor inside its first message
    }
    std::promise<void>* entered_;
    std::shared_future<void> gate_;
  };
  std::promise<void> entered, gate;
  auto a = sys.spawn<Slow>(SpawnOptions{}, &entered, gate.get_future().share());
  probe.watch(sys, a);
  const auto before = sys.stats().dead_letters;
  for (int i = 0; i < 10; ++i) a.tell(cmd("x"));
  entered.get_future().wait();
  sys.stop(a);
  gate.set_value();
  ASSERT_TRUE(probe.next());
  // One message was being processed at the stop; the other 9 are dead letters.
  EXPECT_EQ(sys.stats().dead_letters - before, 9u);
}

}  // namespace
}  // namespace troupe
