// Actor runtime: ordering, one-at-a-time, ask, supervision, stop order, names.

#include <gtest/gtest.h>

#include <pthread.h>

#include <atomic>
#include <functional>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include <troupe/actor/actor_system.hpp>
#include <troupe/serialization/system_generated.h>

#include "test_messages_generated.h"
#include "testkit.hpp"

namespace troupe {
namespace {

using namespace std::chrono_literals;
using namespace testkit;  // Probe, cmd, op_of, ping, test_config


ActorSystemConfig two_workers() { return test_config("test"); }

class Echo final : public Actor {
 public:
  void receive(const Message& m) override { sender().tell(m, self()); }
};

// Checks per-sender FIFO: every sender's sequence numbers must arrive strictly in order.
class SequenceChecker final : public Actor {
 public:
  SequenceChecker(unsigned senders, std::uint64_t per_sender, ActorRef report)
      : last_(senders, 0), remaining_(senders * per_sender), report_(std::move(report)) {}
  void receive(const Message& m) override {
    const auto* p = m.as<test::Ping>();
    if (!p) return;
    if (p->seq() != last_[p->from()] + 1) ++violations_;
    last_[p->from()] = p->seq();
    if (--remaining_ == 0) report_.tell(cmd("done", violations_));
  }

 private:
  std::vector<std::uint64_t> last_;
  std::uint64_t remaining_;
  std::uint64_t violations_ = 0;
  ActorRef report_;
};

TEST(Actor, MessagesFromOneSenderArriveInOrder) {
  ActorSystem sys(two_workers());
  Probe probe(sys);
  constexpr unsigned kSenders = 4;
  constexpr std::uint64_t kEach = 20'000;
  auto checker = sys.spawn<SequenceChecker>(SpawnOptions{}, kSenders, kEach, probe.ref());
  std::vector<std::thread> threads;
  for (unsigned s = 0; s < kSenders; ++s) {
    threads.emplace_back([&, s] {
      for (std::uint64_t i = 1; i <= kEach; ++i) checker.tell(ping(i, s));
    });
  }
  for (auto& t : threads) t.join();
  auto r = probe.next();
  ASSERT_TRUE(r);
  EXPECT_EQ(op_of(r->msg), "done");
  EXPECT_EQ(r->msg.as<test::Cmd>()->n(), 0u) << "out-of-order deliveries";
}

// Flags any overlap of two receive() calls on the same actor.
class Exclusive final : public Actor {
 public:
  Exclusive(std::atomic<int>* inside, std::atomic<int>* overlaps, std::atomic<std::uint64_t>* count)
      : inside_(inside), overlaps_(overlaps), count_(count) {}
  void receive(const Message& m) override {
    if (op_of(m) == "count") {
      sender().tell(cmd("count", count_->load()));
      return;
    }
    if (inside_->fetch_add(1) != 0) overlaps_->fetch_add(1);
    for (int i = 0; i < 50; ++i) std::atomic_signal_fence(std::memory_order_seq_cst);
    inside_->fetch_sub(1);
    count_->fetch_add(1);
  }

 private:
  std::atomic<int>* inside_;
  std::atomic<int>* overlaps_;
  std::atomic<std::uint64_t>* count_;
};

TEST(Actor, ProcessesOneMessageAtATimeUnderContention) {
  ActorSystem sys(two_workers());
  std::atomic<int> inside{0}, overlaps{0};
  std::atomic<std::uint64_t> count{0};
  auto a = sys.spawn<Exclusive>(SpawnOptions{}, &inside, &overlaps, &count);
  Probe probe(sys);
  constexpr int kThreads = 6, kEach = 10'000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < kEach; ++i) a.tell(ping(i));
    });
  }
  for (auto& t : threads) t.join();
  // One mailbox is FIFO: the question is answered after everything told before it.
  auto r = a.ask(cmd("count"), 30s).get();
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->as<test::Cmd>()->n(), static_cast<std::uint64_t>(kThreads) * kEach);
  EXPECT_EQ(overlaps.load(), 0);
}

// Reports the name of the thread its turn runs on.
class ThreadNamer final : public Actor {
 public:
  void receive(const Message&) override {
    char name[16] = {};
    pthread_getname_np(pthread_self(), name, sizeof name);
    sender().tell(cmd(name));
  }
};

TEST(ActorSystem, ItsThreadsAreNamedForTopPerfAndGdb) {
  ActorSystem sys(two_workers());
  const auto names = thread_names();
  EXPECT_EQ(names.count("troupe-w0"), 1u);
  EXPECT_EQ(names.count("troupe-w1"), 1u);
  EXPECT_EQ(names.count("troupe-timers"), 1u);
  auto r = sys.spawn<ThreadNamer>().ask(ping(1), 5s).get();
  ASSERT_TRUE(r.ok()) << r.error().message();
  EXPECT_TRUE(op_of(*r) == "troupe-w0" || op_of(*r) == "troupe-w1") << op_of(*r);
}

TEST(Ask, ReplyCompletesTheFuture) {
  ActorSystem sys(two_workers());
  auto echo = sys.spawn<Echo>();
  auto r = echo.ask(ping(7), 5s).get();
  ASSERT_TRUE(r.ok()) << r.error().message();
  EXPECT_EQ(r->as<test::Ping>()->seq(), 7u);
}

// Reports the address of the bytes it received.
class AddressReporter final : public Actor {
 public:
  void receive(const Message& m) override {
    sender().tell(cmd("addr", reinterpret_cast<std::uintptr_t>(m.bytes().data())));
  }
};

TEST(Actor, LocalSendSharesTheBufferAndNeverCopiesIt) {
  ActorSystem sys(two_workers());
  auto a = sys.spawn<AddressReporter>();
  // A message with one owner travels inside its own buffer (no envelope allocation) ...
  auto unique = ping(1);
  const auto unique_addr = reinterpret_cast<std::uintptr_t>(unique.bytes().data());
  auto r1 = a.ask(std::move(unique), 10s).get();
  ASSERT_TRUE(r1.ok());
  EXPECT_EQ(r1->as<test::Cmd>()->n(), unique_addr);
  // ... and a shared one is shared, not copied, even while it sits in two mailboxes.
  auto shared = ping(2);
  const auto shared_addr = reinterpret_cast<std::uintptr_t>(shared.bytes().data());
  auto f1 = a.ask(shared, 10s);
  auto f2 = a.ask(shared, 10s);
  EXPECT_EQ(f1.get()->as<test::Cmd>()->n(), shared_addr);
  EXPECT_EQ(f2.get()->as<test::Cmd>()->n(), shared_addr);
  ASSERT_TRUE(a.ask(ping(3), 10s).get().ok());  // processed after the two letters were released
  EXPECT_EQ(shared.use_count(), 1u) << "every mailbox reference was released";
}


TEST(Ask, TimesOutWhenNoReplyComes) {
  auto timers = std::make_shared<ManualTimerService>();
  auto cfg = two_workers();
  cfg.timers = timers;
  ActorSystem sys(cfg);
  auto silent = sys.spawn<Silent>();
  auto f = silent.ask(ping(1), 100ms);
  EXPECT_EQ(f.wait_for(0s), std::future_status::timeout);
  timers->advance(99ms);
  EXPECT_EQ(f.wait_for(0s), std::future_status::timeout);
  timers->advance(1ms);
  auto r = f.get();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error(), ActorErrc::timeout);
}

TEST(Ask, CallbackRunsExactlyOnceEvenIfAReplyComesAfterTheTimeout) {
  auto timers = std::make_shared<ManualTimerService>();
  auto cfg = two_workers();
  cfg.timers = timers;
  ActorSystem sys(cfg);
  Probe probe(sys);
  std::atomic<int> calls{0};
  std::promise<std::error_code> first;
  // The probe gets the question and holds on to the asker's ref.
  probe.ref().ask(ping(1), 10ms, [&](Result<Message> r) {
    if (calls.fetch_add(1) == 0) first.set_value(r.error());
  });
  auto q = probe.next();
  ASSERT_TRUE(q);
  timers->advance(10ms);
  q->sender.tell(ping(2));  // late reply: must be ignored
  EXPECT_EQ(first.get_future().get(), ActorErrc::timeout);
  EXPECT_EQ(calls.load(), 1);
}

// A reply callback that throws runs on a worker (or the timer thread): the exception is counted
// and logged, and the process goes on (it used to reach a noexcept frame and end the process).
TEST(Ask, ACallbackThatThrowsIsCountedAndTheSystemGoesOn) {
  ActorSystem sys(two_workers());
  Probe probe(sys);
  std::promise<void> called;
  probe.ref().ask(ping(1), 10s, [&](Result<Message>) {
    called.set_value();
    throw std::runtime_error("a careless callback");
  });
  auto q = probe.next();
  ASSERT_TRUE(q);
  q->sender.tell(ping(2));
  called.get_future().get();
  EXPECT_TRUE(eventually([&] { return sys.stats().callback_failures == 1; }));
  // Still working: another ask round trip.
  auto echo = sys.spawn<Echo>();
  auto r = echo.ask(ping(3), 10s).get();
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->as<test::Ping>()->seq(), 3u);
}

TEST(Ask, DeadTargetAnswersAtOnce) {
  ActorSystem sys(two_workers());
  Probe probe(sys);
  auto silent = sys.spawn<Silent>();
  probe.watch(sys, silent);
  sys.stop(silent);
  ASSERT_TRUE(probe.next());  // Terminated: it is gone
  auto r = silent.ask(ping(1), 10s).get();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error(), ActorErrc::dead_target);
  EXPECT_EQ(ActorRef{}.ask(ping(1), 10s).get().error(), ActorErrc::dead_target);
}

// Counts messages; throws on "boom"; reports its count on "count".
class Fragile final : public Actor {
 public:
  explicit Fragile(std::atomic<int>* starts) : starts_(starts) {}
  void pre_start() override { starts_->fetch_add(1); }
  void receive(const Message& m) override {
    auto op = op_of(m);
    if (op == "boom") throw std::runtime_error("boom");
    if (op == "count") {
      sender().tell(cmd("count", seen_));
      return;
    }
    ++seen_;
  }

 private:
  std::atomic<int>* starts_;
  std::uint64_t seen_ = 0;
};

TEST(Supervision, FailureRestartsWithFreshStateAndKeepsTheMailbox) {
  ActorSystem sys(two_workers());
  std::atomic<int> starts{0};
  auto a = sys.spawn<Fragile>(SpawnOptions{}, &starts);
  // Queued together: the failing message is dropped, the ones behind it survive the restart.
  a.tell(ping(1));
  a.tell(ping(2));
  a.tell(cmd("boom"));
  a.tell(ping(3));
  a.tell(ping(4));
  a.tell(ping(5));
  auto r = a.ask(cmd("count"), 10s).get();
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->as<test::Cmd>()->n(), 3u) << "fresh state after restart, later messages kept";
  EXPECT_EQ(starts.load(), 2);
  auto st = sys.stats();
  EXPECT_EQ(st.failures, 1u);
  EXPECT_EQ(st.restarts, 1u);
  EXPECT_EQ(st.failed_messages_dropped, 1u);
}

TEST(Supervision, ExhaustedBudgetStopsTheActorAndWatchersLearnWhy) {
  auto cfg = two_workers();
  cfg.user_guardian_strategy.budget = {.max_restarts = 2, .within = 60s};
  ActorSystem sys(cfg);
  Probe probe(sys);
  std::atomic<int> starts{0};
  auto a = sys.spawn<Fragile>(SpawnOptions{}, &starts);
  probe.watch(sys, a);
  for (int i = 0; i < 3; ++i) a.tell(cmd("boom"));
  auto t = probe.next();
  ASSERT_TRUE(t);
  ASSERT_TRUE(t->msg.is<sys::Terminated>());
  EXPECT_EQ(t->msg.as<sys::Terminated>()->reason(), sys::TerminationReason::Failed);
  EXPECT_EQ(t->sender, a);
  EXPECT_EQ(starts.load(), 3);  // first start + 2 restarts
  EXPECT_EQ(sys.stats().restarts, 2u);
}

TEST(Supervision, BudgetWindowForgetsOldFailures) {
  auto timers = std::make_shared<ManualTimerService>();
  auto cfg = two_workers();
  cfg.timers = timers;
  cfg.user_guardian_strategy.budget = {.max_restarts = 1, .within = 1s};
  ActorSystem sys(cfg);
  std::atomic<int> starts{0};
  auto a = sys.spawn<Fragile>(SpawnOptions{}, &starts);
  a.tell(cmd("boom"));
  ASSERT_TRUE(a.ask(cmd("count"), 10s).get().ok());
  timers->advance(2s);  // the window passed: the next failure is the first of a new window
  a.tell(cmd("boom"));
  auto r = a.ask(cmd("count"), 10s).get();
  ASSERT_TRUE(r.ok()) << "actor must still be alive";
  EXPECT_EQ(starts.load(), 3);
}

class Recorder final : public Actor {
 public:
  Recorder(std::string name, std::shared_ptr<std::vector<std::string>> log, std::shared_ptr<std::mutex> mu,
           int children)
      : name_(std::move(name)), log_(std::move(log)), mu_(std::move(mu)), children_(children) {}
  void pre_start() override {
    for (int i = 0; i < children_; ++i) {
      context().spawn<Recorder>(SpawnOptions{.name = name_ + "." + std::to_string(i)}, name_ + "." + std::to_string(i),
                                log_, mu_, children_ - 1);
    }
  }
  void receive(const Message&) override { sender().tell(cmd("ok")); }
  void post_stop() override {
    std::lock_guard lk(*mu_);
    log_->push_back(name_);
  }

 private:
  std::string name_;
  std::shared_ptr<std::vector<std::string>> log_;
  std::shared_ptr<std::mutex> mu_;
  int children_;
};

TEST(Hierarchy, ChildrenStopBeforeTheirParent) {
  ActorSystem sys(two_workers());
  Probe probe(sys);
  auto log = std::make_shared<std::vector<std::string>>();
  auto mu = std::make_shared<std::mutex>();
  auto root = sys.spawn<Recorder>(SpawnOptions{.name = "r"}, std::string("r"), log, mu, 3);
  probe.watch(sys, root);
  // Wait until the whole tree exists: ask the deepest node.
  ASSERT_TRUE(root.ask(cmd("ping"), 10s).get().ok());
  // Each level's pre_start has spawned the next once it answers.
  ASSERT_TRUE(sys.lookup("/user/r/r.0").ask(cmd("ping"), 10s).get().ok());
  auto deep = sys.lookup("/user/r/r.0/r.0.0");
  ASSERT_TRUE(deep) << "lookup by path";
  EXPECT_EQ(deep.path(), "/user/r/r.0/r.0.0");
  sys.stop(root);
  ASSERT_TRUE(probe.next());
  std::lock_guard lk(*mu);
  // 1 + 3 + 3*2 + 3*2*1 = 16 actors, each after all of its descendants.
  ASSERT_EQ(log->size(), 16u);
  auto pos = [&](const std::string& n) { return std::find(log->begin(), log->end(), n) - log->begin(); };
  for (const auto& n : *log) {
    auto dot = n.rfind('.');
    if (dot == std::string::npos) continue;
    EXPECT_LT(pos(n), pos(n.substr(0, dot))) << n << " stopped after its parent";
  }
  EXPECT_EQ(log->back(), "r");
}

TEST(Hierarchy, DuplicateAndInvalidNamesAreRefused) {
  ActorSystem sys(two_workers());
  auto a = sys.spawn<Silent>(SpawnOptions{.name = "a"});
  try {
    sys.spawn<Silent>(SpawnOptions{.name = "a"});
    FAIL() << "duplicate name accepted";
  } catch (const std::system_error& e) {
    EXPECT_EQ(e.code(), ActorErrc::duplicate_name);
    EXPECT_NE(std::string(e.what()).find("'a'"), std::string::npos);
  }
  EXPECT_THROW(sys.spawn<Silent>(SpawnOptions{.name = "x/y"}), std::system_error);
  EXPECT_THROW(sys.spawn<Silent>(SpawnOptions{.name = "$x"}), std::system_error);
  EXPECT_EQ(a.path(), "/user/a");
  EXPECT_EQ(sys.lookup("/user/a"), a);
  EXPECT_FALSE(sys.lookup("/user/b"));
  auto anon = sys.spawn<Silent>();
  EXPECT_EQ(sys.lookup(anon.path()), anon) << anon.path();
}

TEST(Hierarchy, ShutdownStopsUserActorsBeforeSystemActors) {
  auto order = std::make_shared<std::vector<std::string>>();
  auto mu = std::make_shared<std::mutex>();
  {
    ActorSystem sys(two_workers());
    auto s = sys.spawn_system<Recorder>(SpawnOptions{.name = "sys"}, std::string("sys"), order, mu, 1);
    auto u = sys.spawn<Recorder>(SpawnOptions{.name = "usr"}, std::string("usr"), order, mu, 1);
    EXPECT_EQ(s.path(), "/system/sys");
    EXPECT_EQ(u.path(), "/user/usr");
    ASSERT_TRUE(s.ask(cmd("ping"), 10s).get().ok());
    ASSERT_TRUE(u.ask(cmd("ping"), 10s).get().ok());
    sys.shutdown();
  }
  std::lock_guard lk(*mu);
  EXPECT_EQ(*order, (std::vector<std::string>{"usr.0", "usr", "sys.0", "sys"}));
}

TEST(Hierarchy, NameIsFreeAgainAfterTheActorStopped) {
  ActorSystem sys(two_workers());
  Probe probe(sys);
  auto a = sys.spawn<Silent>(SpawnOptions{.name = "again"});
  probe.watch(sys, a);
  sys.stop(a);
  ASSERT_TRUE(probe.next());
  auto b = sys.spawn<Silent>(SpawnOptions{.name = "again"});
  EXPECT_NE(a, b);
  EXPECT_EQ(sys.lookup("/user/again"), b);
}

class Spawner final : public Actor {
 public:
  void receive(const Message& m) override {
    auto n = m.as<test::Cmd>()->n();
    for (std::uint64_t i = 0; i < n; ++i) context().spawn<Silent>(SpawnOptions{});
    sender().tell(cmd("spawned", n));
  }
};

TEST(Lifecycle, HundredThousandActorsSpawnAndStopWithoutLeaking) {
  ActorSystem sys(two_workers());
  Probe probe(sys);
  const auto before = sys.stats();
  auto parent = sys.spawn<Spawner>();
  probe.watch(sys, parent);
  ASSERT_TRUE(parent.ask(cmd("spawn", 100'000), 60s).get().ok());
  EXPECT_EQ(sys.stats().actors_live, before.actors_live + 100'001);
  sys.stop(parent);
  ASSERT_TRUE(probe.next(60s));
  const auto after = sys.stats();
  EXPECT_EQ(after.actors_live, before.actors_live);
  EXPECT_EQ(after.actors_stopped - before.actors_stopped, 100'001u);
  // Leaks of cells or envelopes are caught by LeakSanitizer in the sanitizer build.
}

}  // namespace
}  // namespace troupe

namespace troupe {
namespace {
using namespace testkit;

TEST(Actor, StopAfterQueuedProcessesWhatWasSentBeforeAndNothingAfter) {
  ActorSystem sys(test_config("poison"));
  Probe probe(sys);
  auto echo = sys.spawn<Echo>(SpawnOptions{.name = "echo"});
  probe.watch(sys, echo);
  for (std::uint64_t i = 1; i <= 100; ++i) echo.tell(ping(i), probe.ref());
  sys.stop_after_queued(echo);
  const auto dead_before = sys.stats().dead_letters;
  for (std::uint64_t i = 1; i <= 100; ++i) {
    auto r = probe.next();
    ASSERT_TRUE(r);
    ASSERT_TRUE(r->msg.is<test::Ping>()) << "message " << i << " was lost";
    ASSERT_EQ(r->msg.as<test::Ping>()->seq(), i);
  }
  auto t = probe.next();
  ASSERT_TRUE(t);
  EXPECT_TRUE(t->msg.is<sys::Terminated>());
  echo.tell(ping(101), probe.ref());
  EXPECT_EQ(sys.stats().dead_letters, dead_before + 1);
  sys.shutdown();
}

// Echoes pings to their sender, except the first, which blocks its turn at a gate; notes
// whether post_stop ran.
class BlockThenEcho final : public Actor {
 public:
  BlockThenEcho(std::promise<void>* blocked, std::shared_future<void> gate, std::atomic<bool>* stopped)
      : blocked_(blocked), gate_(std::move(gate)), stopped_(stopped) {}
  void receive(const Message& m) override {
    if (first_) {
      first_ = false;
      blocked_->set_value();
      gate_.wait();
      return;
    }
    sender().tell(m, self());
  }
  void post_stop() override { stopped_->store(true); }

 private:
  std::promise<void>* blocked_;
  std::shared_future<void> gate_;
  std::atomic<bool>* stopped_;
  bool first_ = true;
};

TEST(Actor, StopKeepingQueuedStopsAfterTheCurrentMessageAndHandsOverTheRestInOrder) {
  ActorSystem sys(test_config("keep"));
  Probe probe(sys);
  std::promise<void> blocked, open;
  std::atomic<bool> post_stopped{false};
  auto a = sys.spawn<BlockThenEcho>(SpawnOptions{.name = "a"}, &blocked, open.get_future().share(), &post_stopped);
  probe.watch(sys, a);
  a.tell(ping(1), probe.ref());
  blocked.get_future().wait();  // its turn is in message 1 now
  for (std::uint64_t i = 2; i <= 5; ++i) a.tell(ping(i), probe.ref());
  struct Handed {
    bool had_instance = false, before_post_stop = false;
    std::vector<std::uint64_t> seqs;
    std::vector<ActorRef> senders;
  };
  std::promise<Handed> handed;
  const auto dead_before = sys.stats().dead_letters;
  ASSERT_TRUE(sys.stop_keeping_queued(a, [&](Actor* instance, std::vector<std::pair<Message, ActorRef>> queued) {
    Handed h;
    h.had_instance = instance != nullptr;
    h.before_post_stop = !post_stopped.load();
    for (auto& [m, from] : queued) {
      h.seqs.push_back(m.is<test::Ping>() ? m.as<test::Ping>()->seq() : 0);
      h.senders.push_back(from);
    }
    handed.set_value(std::move(h));
  }));
  open.set_value();
  auto h = handed.get_future().get();
  EXPECT_TRUE(h.had_instance);
  EXPECT_TRUE(h.before_post_stop) << "handed over with the instance still alive";
  EXPECT_EQ(h.seqs, (std::vector<std::uint64_t>{2, 3, 4, 5})) << "what was queued, oldest first";
  for (const auto& s : h.senders) EXPECT_EQ(s, probe.ref());
  // None of 2..5 ran: the first the probe hears is the stop.
  auto t = probe.next();
  ASSERT_TRUE(t);
  EXPECT_TRUE(t->msg.is<sys::Terminated>());
  EXPECT_TRUE(post_stopped.load());
  EXPECT_EQ(sys.stats().dead_letters, dead_before) << "handed over, not dead letters";
  a.tell(ping(6), probe.ref());
  EXPECT_EQ(sys.stats().dead_letters, dead_before + 1);
  EXPECT_FALSE(sys.stop_keeping_queued(a, [](Actor*, std::vector<std::pair<Message, ActorRef>>) {}))
      << "a dead actor hands nothing over";
  sys.shutdown();
}

// Blocks in post_stop until the gate opens (after saying so).
class SlowPostStop final : public Actor {
 public:
  SlowPostStop(std::promise<void>* in_post_stop, std::shared_future<void> gate)
      : in_post_stop_(in_post_stop), gate_(std::move(gate)) {}
  void receive(const Message&) override {}
  void post_stop() override {
    in_post_stop_->set_value();
    gate_.wait();
  }

 private:
  std::promise<void>* in_post_stop_;
  std::shared_future<void> gate_;
};

// Once an actor's last turn has begun (post_stop runs), a hook set now would never run:
// stop_keeping_queued says so (false) and its caller keeps the messages it meant to hand over.
TEST(Actor, StopKeepingQueuedRefusesOnceTheLastTurnHasBegun) {
  ActorSystem sys(test_config("keep-late"));
  Probe probe(sys);
  std::promise<void> in_post_stop, open;
  auto a = sys.spawn<SlowPostStop>(SpawnOptions{.name = "a"}, &in_post_stop, open.get_future().share());
  probe.watch(sys, a);
  sys.stop(a);
  in_post_stop.get_future().wait();
  std::atomic<bool> called{false};
  EXPECT_FALSE(sys.stop_keeping_queued(a, [&](Actor*, std::vector<std::pair<Message, ActorRef>>) { called = true; }));
  open.set_value();
  auto t = probe.next();
  ASSERT_TRUE(t);
  EXPECT_TRUE(t->msg.is<sys::Terminated>());
  EXPECT_FALSE(called.load());
  sys.shutdown();
}

// A worker keeps a drained actor scheduled for a moment (a linger) so that its next message
// needs no hand-over. The worker may then start a long turn: the lingering actor must not wait
// for it. The scenario: a Starter wakes a GateBlocker from its turn, so the blocker runs next on
// the same worker, after the Starter (and the probe, woken after it) finished and linger there;
// then the Starter is pinged 20 times while that worker is blocked.

// Says that it blocks through a promise, not a message: an actor woken from a turn that then
// blocks would wait in that worker's LIFO slot, which is not what these tests are about.
class GateBlocker final : public Actor {
 public:
  GateBlocker(std::promise<void>* blocked, std::shared_future<void> gate) : blocked_(blocked), gate_(std::move(gate)) {}
  void receive(const Message&) override {
    blocked_->set_value();
    gate_.wait();
  }

 private:
  std::promise<void>* blocked_;
  std::shared_future<void> gate_;
};

class Starter final : public Actor {
 public:
  Starter(ActorRef blocker, ActorRef probe) : blocker_(std::move(blocker)), probe_(std::move(probe)) {}
  void receive(const Message& m) override {
    if (op_of(m) == "start") blocker_.tell(cmd("block"));
    probe_.tell(cmd(op_of(m) == "start" ? "started" : "pong"));
  }

 private:
  ActorRef blocker_, probe_;
};

void expect_pongs_behind_a_blocked_worker(ActorSystem& sys, Probe& probe) {
  std::promise<void> blocked, release;
  struct Opens {  // on every way out, a failed assertion too: the blocked worker must come back
    std::promise<void>& gate;
    ~Opens() { gate.set_value(); }
  } opens{release};
  auto blocker = sys.spawn<GateBlocker>(SpawnOptions{}, &blocked, release.get_future().share());
  auto starter = sys.spawn<Starter>(SpawnOptions{}, blocker, probe.ref());
  starter.tell(cmd("start"));
  auto first = probe.next(10s);
  ASSERT_TRUE(first);
  EXPECT_EQ(op_of(first->msg), "started");
  ASSERT_EQ(blocked.get_future().wait_for(10s), std::future_status::ready);
  for (int i = 0; i < 20; ++i) {
    starter.tell(cmd("ping"));
    auto r = probe.next(10s);
    ASSERT_TRUE(r) << "message " << i << " to an actor behind a blocked worker never ran";
    EXPECT_EQ(op_of(r->msg), "pong");
  }
}

// Runs `scenario` while an actor that keeps telling itself keeps a worker busy (it never sleeps).
class Spinner final : public Actor {
 public:
  explicit Spinner(std::atomic<bool>* spin) : spin_(spin) {}
  void receive(const Message& m) override {
    if (spin_->load()) self().tell(m);
  }

 private:
  std::atomic<bool>* spin_;
};

void while_a_worker_spins(ActorSystem& sys, const std::function<void()>& scenario) {
  std::atomic<bool> spin{true};
  sys.spawn<Spinner>(SpawnOptions{}, &spin).tell(cmd("spin"));
  scenario();
  spin = false;
  sys.shutdown();  // before `spin` goes
}

TEST(Dispatcher, AnActorLeftLingeringBehindALongTurnIsRunByTheOtherWorker) {
  ActorSystem sys(two_workers());
  Probe probe(sys);
  expect_pongs_behind_a_blocked_worker(sys, probe);
  sys.shutdown();
}

// The same while the other worker never sleeps: an actor that keeps telling itself keeps it
// busy, so only its periodic look at the other worker's lingers can run the actor.
TEST(Dispatcher, AnActorLingeringBehindABlockedWorkerRunsWhileTheOtherWorkerStaysBusy) {
  ActorSystem sys(two_workers());
  Probe probe(sys);
  while_a_worker_spins(sys, [&] { expect_pongs_behind_a_blocked_worker(sys, probe); });
}

// An actor woken by a turn waits in that worker's LIFO slot, to run next on the same core.
// When that turn then blocks, the woken actor must not wait for it: another worker takes it
// after a moment (Dispatcher::kLifoRescue), whether it was parked or busy with other actors.
// The woken actor is a child spawned in the turn: a new actor's first turn is submitted from
// that worker, so it is in the slot for certain (an actor that ran before could be lingering).
class Forward final : public Actor {
 public:
  explicit Forward(ActorRef to) : to_(std::move(to)) {}
  void receive(const Message& m) override { to_.tell(m); }

 private:
  ActorRef to_;
};

class WakeThenBlock final : public Actor {
 public:
  WakeThenBlock(ActorRef probe, std::shared_future<void> gate) : probe_(std::move(probe)), gate_(std::move(gate)) {}
  void receive(const Message&) override {
    context().spawn<Forward>(SpawnOptions{}, probe_).tell(cmd("run"));
    gate_.wait();
  }

 private:
  ActorRef probe_;
  std::shared_future<void> gate_;
};

void expect_woken_actor_runs_while_its_waker_blocks(ActorSystem& sys, Probe& probe) {
  std::promise<void> release;
  struct Opens {  // on every way out, a failed assertion too: the blocked worker must come back
    std::promise<void>& gate;
    ~Opens() { gate.set_value(); }
  } opens{release};
  const auto before = sys.stats().lifo_rescues;
  auto waker = sys.spawn<WakeThenBlock>(SpawnOptions{}, probe.ref(), release.get_future().share());
  waker.tell(cmd("go"));
  auto r = probe.next(10s);
  ASSERT_TRUE(r) << "an actor woken by a turn that then blocked never ran";
  EXPECT_EQ(op_of(r->msg), "run");
  EXPECT_EQ(sys.stats().lifo_rescues, before + 1);
}

TEST(Dispatcher, AnActorWokenByATurnThatThenBlocksIsRunByTheParkedWorker) {
  ActorSystem sys(two_workers());
  Probe probe(sys);
  expect_woken_actor_runs_while_its_waker_blocks(sys, probe);
  sys.shutdown();
}

TEST(Dispatcher, AnActorWokenByATurnThatThenBlocksIsRunByTheOtherWorkerWhileItStaysBusy) {
  ActorSystem sys(two_workers());
  Probe probe(sys);
  while_a_worker_spins(sys, [&] { expect_woken_actor_runs_while_its_waker_blocks(sys, probe); });
}

// Wake-ups from threads that are not workers (the remoting I/O thread, timers, callers of
// ask) while the workers keep parking and waking: at most one wake-up is on its way at a time,
// so a message that relied on it must still be run. Four threads each ask their own actor, with
// pauses of up to 300 µs so that the workers go idle and park between many of the asks; every
// ask must be answered (in a test of 4 x 2,000 asks).
TEST(Dispatcher, WakeUpsFromOutsideAreNeverLostWhileWorkersParkAndWake) {
  ActorSystem sys(two_workers());
  std::atomic<int> unanswered{0};
  std::vector<std::thread> askers;
  for (int t = 0; t < 4; ++t) {
    askers.emplace_back([&, t] {
      auto echo = sys.spawn<Echo>(SpawnOptions{});
      std::uint64_t rng = 0x9e3779b97f4a7c15ull * static_cast<std::uint64_t>(t + 1);
      for (int i = 0; i < 2000; ++i) {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::this_thread::sleep_for(std::chrono::microseconds(rng % 300));  // load shape, not a sync
        auto f = echo.ask(ping(static_cast<std::uint64_t>(i)), 5s);
        if (f.wait_for(10s) != std::future_status::ready || !f.get()) {
          ++unanswered;  // a lost wake-up loses every later one too: stop at the first
          return;
        }
      }
    });
  }
  for (auto& a : askers) a.join();
  EXPECT_EQ(unanswered.load(), 0);
  sys.shutdown();
}

// ActorSystem::WakeBatch (what the remoting I/O thread opens around each frame): actors made
// runnable inside it are handed to the workers when the outermost scope ends, with everything
// they were told, in order; inside a turn (on a worker) the scope changes nothing.
TEST(Dispatcher, AWakeBatchHandsItsActorsToTheWorkersWithAllTheirMessagesInOrder) {
  ActorSystem sys(two_workers());
  Probe probe(sys);
  constexpr unsigned kActors = 50, kEach = 20;
  std::vector<ActorRef> checkers;
  for (unsigned i = 0; i < kActors; ++i) checkers.push_back(sys.spawn<SequenceChecker>(SpawnOptions{}, 1, kEach, probe.ref()));
  {
    ActorSystem::WakeBatch outer(sys);
    for (std::uint64_t seq = 1; seq <= kEach / 2; ++seq) {
      for (auto& c : checkers) c.tell(ping(seq, 0));
    }
    {
      ActorSystem::WakeBatch inner(sys);  // nested: the outer one hands over
      for (std::uint64_t seq = kEach / 2 + 1; seq <= kEach; ++seq) {
        for (auto& c : checkers) c.tell(ping(seq, 0));
      }
    }
  }
  for (unsigned i = 0; i < kActors; ++i) {
    auto r = probe.next(10s);
    ASSERT_TRUE(r) << "checker " << i << " of " << kActors << " never got all its messages";
    EXPECT_EQ(op_of(r->msg), "done");
    EXPECT_EQ(r->msg.as<test::Cmd>()->n(), 0u) << "messages out of order";
  }
  // On a worker the scope is a no-op: an actor that opens one in its turn still reaches others.
  class Relay final : public Actor {
   public:
    explicit Relay(ActorRef to) : to_(std::move(to)) {}
    void receive(const Message& m) override {
      ActorSystem::WakeBatch batch(context().system());
      to_.tell(m, sender());
    }
    ActorRef to_;
  };
  auto echo = sys.spawn<Echo>(SpawnOptions{});
  auto relay = sys.spawn<Relay>(SpawnOptions{}, echo);
  relay.tell(ping(7), probe.ref());
  auto r = probe.next(10s);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->msg.as<test::Ping>()->seq(), 7u);
  sys.shutdown();
}

// More actors woken from outside at once than the injection ring holds (1,024): the rest wait
// in its overflow, and every one of them runs.
TEST(Dispatcher, MoreActorsWokenAtOnceThanTheRingHoldsAllRun) {
  ActorSystem sys(two_workers());
  constexpr int kActors = 3000;
  // The last actor to run says so: the test awaits that event.
  struct Tally {
    std::atomic<int> left{kActors};
    std::promise<void> all;
  } tally;
  class CountDown final : public Actor {
   public:
    explicit CountDown(Tally* t) : t_(t) {}
    void receive(const Message&) override {
      if (t_->left.fetch_sub(1) == 1) t_->all.set_value();
    }
    Tally* t_;
  };
  std::vector<ActorRef> refs;
  for (int i = 0; i < kActors; ++i) refs.push_back(sys.spawn<CountDown>(SpawnOptions{}, &tally));
  {
    ActorSystem::WakeBatch batch(sys);  // all handed over together at its end
    for (auto& r : refs) r.tell(ping(1));
  }
  EXPECT_EQ(tally.all.get_future().wait_for(30s), std::future_status::ready)
      << "not every woken actor ran: " << tally.left.load() << " left";
  sys.shutdown();
}

// A named actor may be found (lookup, or a node's I/O thread resolving a path) and told the
// moment it is linked under its parent, before spawn() returns: that first turn must run
// pre_start first, and never beside another turn of the same actor. Spawn, tell from another
// thread by look-up, stop, again.
TEST(Spawn, AnActorToldByLookUpWhileItIsSpawnedStartsFirstAndRunsOneTurnAtATime) {
  ActorSystem sys(test_config("spawn-race"));
  struct Seen {
    std::atomic<int> overlapping{0}, before_start{0}, received{0};
  } seen;
  class Strict final : public Actor {
   public:
    explicit Strict(Seen* s) : s_(s) {}
    void pre_start() override {
      enter();
      started_ = true;
      leave();
    }
    void receive(const Message&) override {
      enter();
      if (!started_) s_->before_start.fetch_add(1);
      s_->received.fetch_add(1);
      leave();
    }

   private:
    void enter() {
      if (in_.fetch_add(1) != 0) s_->overlapping.fetch_add(1);
    }
    void leave() { in_.fetch_sub(1); }
    Seen* s_;
    std::atomic<int> in_{0};
    bool started_ = false;
  };
  std::atomic<bool> done{false};
  std::thread teller([&] {
    while (!done.load()) {
      if (auto r = sys.lookup("/user/x")) r.tell(ping(1));
    }
  });
  Probe probe(sys);
  int stuck = -1, undelivered = -1;
  std::string failed;
  try {
    for (int i = 0; i < 500 && stuck < 0; ++i) {
      auto x = sys.spawn<Strict>(SpawnOptions{.name = "x"}, &seen);
      probe.watch(sys, x);
      x.tell(ping(2));
      // Every tenth actor gets its message before its stop: the checks then see deliveries
      // (a stop may otherwise come before an actor's first turn, and its messages go to dead
      // letters), while the teller's look-ups still race with the spawn.
      if (i % 10 == 0) {
        const auto before = seen.received.load();
        if (!eventually([&] { return seen.received.load() > before; })) {
          undelivered = i;
          break;
        }
      }
      sys.stop(x);
      auto t = probe.next();  // its Terminated: gone, and its name free
      if (!t || !t->msg.is<sys::Terminated>()) stuck = i;
    }
  } catch (const std::exception& e) {
    failed = e.what();
  }
  done = true;
  teller.join();
  EXPECT_EQ(failed, "");
  EXPECT_EQ(stuck, -1) << "an actor never stopped (its stop request lost)";
  EXPECT_EQ(seen.overlapping.load(), 0) << "two turns of one actor at once";
  EXPECT_EQ(seen.before_start.load(), 0) << "a message before pre_start";
  EXPECT_EQ(undelivered, -1) << "a running actor never got its message";
  EXPECT_GE(seen.received.load(), 50);
}

}  // namespace
}  // namespace troupe
