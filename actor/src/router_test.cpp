// Routers: the distribution each strategy promises, gather patterns, routee lifecycle.

#include <gtest/gtest.h>

#include <future>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include <troupe/actor/actor_system.hpp>
#include <troupe/actor/router.hpp>
#include <troupe/serialization/system_generated.h>

#include "test_messages_generated.h"
#include "testkit.hpp"

namespace troupe {
namespace {

using namespace std::chrono_literals;
using namespace testkit;  // Probe, cmd, op_of, ping, test_config

RouterConfig rc(RoutingKind kind, std::chrono::milliseconds within = 5s, std::chrono::milliseconds interval = 100ms) {
  RouterConfig c;
  c.kind = kind;
  c.within = within;
  c.interval = interval;
  return c;
}
PoolOptions pool_options(std::string name, SupervisorStrategy s = SupervisorStrategy::restarting()) {
  PoolOptions o;
  o.name = std::move(name);
  o.supervision = std::move(s);
  return o;
}

/// Which routee saw which key.
struct Recorder {
  std::mutex mu;
  std::map<std::uint64_t, std::set<int>> seen;  // key -> routees
  void record(std::uint64_t key, int who) {
    std::lock_guard lk(mu);
    seen[key].insert(who);
  }
};

class Routee final : public Actor {
 public:
  Routee(int index, ActorRef probe, Recorder* rec) : index_(index), probe_(std::move(probe)), rec_(rec) {}
  void pre_start() override {
    if (probe_) probe_.tell(cmd("started", static_cast<std::uint64_t>(index_)));
  }
  void receive(const Message& m) override {
    if (const auto* p = m.as<test::Ping>()) {
      ++count_;
      if (rec_) rec_->record(p->seq(), index_);
      return;
    }
    const auto op = op_of(m);
    if (op == "count") sender().tell(cmd("count", count_));
    if (op == "boom") throw std::runtime_error("routee failure");
    if (op == "reply") sender().tell(cmd("answer", static_cast<std::uint64_t>(index_)));
    if (op == "hold") gate_->wait();
  }
  std::shared_future<void>* gate_ = nullptr;

 private:
  int index_;
  ActorRef probe_;
  Recorder* rec_;
  std::uint64_t count_ = 0;
};

void router_hold(const Router& r) { r.ref().tell(cmd("hold")); }

struct RouterTest : ::testing::Test {
  static ActorSystemConfig config() { return test_config("router-test"); }
  ActorSystem sys{config()};
  Recorder rec;
  std::vector<ActorRef> spawn_routees(int n) {
    std::vector<ActorRef> out;
    for (int i = 0; i < n; ++i) out.push_back(sys.spawn<Routee>(SpawnOptions{}, i, ActorRef{}, &rec));
    return out;
  }
  static std::uint64_t count(const ActorRef& r) {
    auto x = r.ask(cmd("count"), 10s).get();
    return x.ok() ? x->as<test::Cmd>()->n() : ~0ull;
  }
};

TEST_F(RouterTest, RoundRobinIsExact) {
  auto rs = spawn_routees(3);
  auto router = make_group(sys, rs, rc(RoutingKind::round_robin));
  for (int i = 0; i < 30; ++i) router.ref().tell(ping(i));
  for (auto& r : rs) EXPECT_EQ(count(r), 10u);
  EXPECT_EQ(router.stats().routed, 30u);
}

TEST_F(RouterTest, RoundRobinFromSeveralThreadsAndRoutersStaysEven) {
  // Each sending thread goes round on its own (no shared counter per message); a thread that
  // alternates between two routers still goes round in each.
  auto rs = spawn_routees(3);
  auto other_rs = spawn_routees(3);
  auto router = make_group(sys, rs, rc(RoutingKind::round_robin));
  auto other = make_group(sys, other_rs, rc(RoutingKind::round_robin));
  std::vector<std::thread> senders;
  for (int t = 0; t < 4; ++t) {
    senders.emplace_back([&] {
      for (int i = 0; i < 300; ++i) {
        router.ref().tell(ping(i));
        other.ref().tell(ping(i));
      }
    });
  }
  for (auto& t : senders) t.join();
  for (auto* group : {&rs, &other_rs}) {
    std::uint64_t total = 0;
    for (auto& r : *group) {
      const auto c = count(r);
      total += c;
      EXPECT_GE(c, 400u - 4);  // 1,200 over 3: within one message per sending thread
      EXPECT_LE(c, 400u + 4);
    }
    EXPECT_EQ(total, 1200u);
  }
  EXPECT_EQ(router.stats().routed, 1200u);
}

TEST(RouterRoundRobin, RoutersOfTwoSystemsWithTheSameIdsKeepTheirOwnTurns) {
  // Actor ids are per system: two systems started alike give their routers the same ids. One
  // thread alternating between them must still go round in each.
  ActorSystem a{test_config("rr-a")}, b{test_config("rr-b")};
  Recorder rec;
  auto routees = [&](ActorSystem& sys) {
    std::vector<ActorRef> out;
    for (int i = 0; i < 2; ++i) out.push_back(sys.spawn<Routee>(SpawnOptions{}, i, ActorRef{}, &rec));
    return out;
  };
  auto ra = routees(a), rb = routees(b);
  auto router_a = make_group(a, ra, rc(RoutingKind::round_robin));
  auto router_b = make_group(b, rb, rc(RoutingKind::round_robin));
  for (int i = 0; i < 100; ++i) {
    router_a.ref().tell(ping(i));
    router_b.ref().tell(ping(i));
  }
  for (auto* group : {&ra, &rb}) {
    for (auto& r : *group) {
      auto x = r.ask(cmd("count"), 10s).get();
      ASSERT_TRUE(x.ok());
      EXPECT_EQ(x->as<test::Cmd>()->n(), 50u);
    }
  }
}

TEST_F(RouterTest, RandomIsRoughlyUniform) {
  auto rs = spawn_routees(4);
  auto router = make_group(sys, rs, rc(RoutingKind::random));
  for (int i = 0; i < 4000; ++i) router.ref().tell(ping(i));
  std::uint64_t total = 0;
  for (auto& r : rs) {
    const auto c = count(r);
    total += c;
    EXPECT_GT(c, 800u);  // expected 1000; 800..1200 is > 6 standard deviations wide
    EXPECT_LT(c, 1200u);
  }
  EXPECT_EQ(total, 4000u);
}

TEST_F(RouterTest, BroadcastReachesEveryRoutee) {
  auto rs = spawn_routees(3);
  auto router = make_group(sys, rs, rc(RoutingKind::broadcast));
  for (int i = 0; i < 10; ++i) router.ref().tell(ping(i));
  for (auto& r : rs) EXPECT_EQ(count(r), 10u);
  router.broadcast(ping(99));  // the explicit broadcast works for any kind
  for (auto& r : rs) EXPECT_EQ(count(r), 11u);
}

TEST_F(RouterTest, ConsistentHashingIsStableAndRemovalMovesOnlyTheRemovedRouteesKeys) {
  auto rs = spawn_routees(4);
  RouterConfig cfg = rc(RoutingKind::consistent_hashing);
  cfg.hash_key = [](const Message& m) { return m.as<test::Ping>()->seq() * 0x9e3779b97f4a7c15ull; };
  auto router = make_group(sys, rs, cfg);
  constexpr int kKeys = 2000;
  for (int round = 0; round < 2; ++round) {
    for (int k = 0; k < kKeys; ++k) router.ref().tell(ping(k));
  }
  std::uint64_t total = 0;
  for (auto& r : rs) total += count(r);
  ASSERT_EQ(total, 2u * kKeys);
  std::map<std::uint64_t, int> before;
  std::map<int, int> per_routee;
  for (auto& [k, who] : rec.seen) {
    ASSERT_EQ(who.size(), 1u) << "key " << k << " went to two routees";
    before[k] = *who.begin();
    ++per_routee[*who.begin()];
  }
  for (auto& [who, n] : per_routee) EXPECT_GT(n, kKeys / 4 / 2) << "routee " << who << " gets a fair share";
  // Remove routee 2: only its keys may move.
  router.remove(rs[2]);
  {
    std::lock_guard lk(rec.mu);
    rec.seen.clear();
  }
  for (int k = 0; k < kKeys; ++k) router.ref().tell(ping(k));
  for (auto& r : rs) (void)count(r);
  int moved = 0;
  for (auto& [k, who] : rec.seen) {
    ASSERT_EQ(who.size(), 1u);
    const int now = *who.begin();
    EXPECT_NE(now, 2);
    if (before[k] != 2) {
      EXPECT_EQ(now, before[k]) << "key " << k << " moved although its routee stayed";
    }
    moved += now != before[k];
  }
  EXPECT_EQ(moved, per_routee[2]);
}

TEST_F(RouterTest, SmallestMailboxPrefersTheIdleRoutee) {
  auto rs = spawn_routees(2);
  std::promise<void> release;
  std::shared_future<void> gate = release.get_future().share();
  // Hold routee 0 inside a message so that it is busy with an empty mailbox.
  class Holder final : public Actor {
   public:
    Holder(std::shared_future<void> g, std::promise<void>* entered) : g_(std::move(g)), entered_(entered) {}
    void receive(const Message& m) override {
      if (op_of(m) == "hold") {
        entered_->set_value();
        g_.wait();
      } else if (op_of(m) == "count") {
        sender().tell(cmd("count", n_));
      } else {
        ++n_;
      }
    }
    std::shared_future<void> g_;
    std::promise<void>* entered_;
    std::uint64_t n_ = 0;
  };
  std::promise<void> entered;
  auto busy = sys.spawn<Holder>(SpawnOptions{}, gate, &entered);
  auto router = make_group(sys, std::vector<ActorRef>{busy, rs[1]}, rc(RoutingKind::smallest_mailbox));
  busy.tell(cmd("hold"));
  entered.get_future().wait();
  for (int i = 0; i < 10; ++i) busy.tell(ping(i));  // a long queue behind the held message
  // At most 5 queued at the idle routee can never outweigh 10 queued at the busy one.
  for (int i = 0; i < 5; ++i) router.ref().tell(ping(i));
  EXPECT_EQ(count(rs[1]), 5u) << "everything went to the routee with the smaller mailbox";
  release.set_value();
  EXPECT_EQ(count(busy), 10u) << "only what was sent to it directly";
}

TEST(RouterGather, ScatterGatherReturnsTheFirstReplyAndTimesOutCleanly) {
  auto timers = std::make_shared<ManualTimerService>();
  auto cfg = RouterTest::config();
  cfg.timers = timers;
  ActorSystem sys(cfg);
  class Answerer final : public Actor {
   public:
    explicit Answerer(bool answers) : answers_(answers) {}
    void receive(const Message&) override {
      if (answers_) sender().tell(cmd("answer"));
    }
    bool answers_;
  };
  auto quiet1 = sys.spawn<Answerer>(SpawnOptions{}, false);
  auto talker = sys.spawn<Answerer>(SpawnOptions{}, true);
  auto quiet2 = sys.spawn<Answerer>(SpawnOptions{}, false);
  auto router = make_group(sys, std::vector<ActorRef>{quiet1, talker, quiet2},
                           rc(RoutingKind::scatter_gather, 100ms));
  auto r = router.ref().ask(cmd("question"), 10s).get();
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(op_of(*r), "answer");
  // Nobody answers: the gather gives up after `within`, counted; the caller's own ask times out.
  auto silent = make_group(sys, std::vector<ActorRef>{quiet1, quiet2},
                           rc(RoutingKind::scatter_gather, 100ms));
  auto f = silent.ref().ask(cmd("question"), 1s);
  ASSERT_TRUE(timers->await_pending(2, 10s));  // the ask's timer and the gather's
  timers->advance(100ms);
  EXPECT_EQ(silent.stats().gather_timeouts, 1u);
  timers->advance(900ms);
  EXPECT_EQ(f.get().error(), ActorErrc::timeout);
}

TEST(RouterGather, TailChoppingTriesTheNextRouteeAfterTheInterval) {
  auto timers = std::make_shared<ManualTimerService>();
  auto cfg = RouterTest::config();
  cfg.timers = timers;
  ActorSystem sys(cfg);
  Probe seen(sys);
  class Maybe final : public Actor {
   public:
    Maybe(bool answers, ActorRef seen) : answers_(answers), seen_(std::move(seen)) {}
    void receive(const Message&) override {
      seen_.tell(cmd(answers_ ? "talker" : "quiet"));
      if (answers_) sender().tell(cmd("answer"));
    }
    bool answers_;
    ActorRef seen_;
  };
  auto quiet = sys.spawn<Maybe>(SpawnOptions{}, false, seen.ref());
  auto talker = sys.spawn<Maybe>(SpawnOptions{}, true, seen.ref());
  auto router = make_group(sys, std::vector<ActorRef>{quiet, talker},
                           rc(RoutingKind::tail_chopping, 1s, 50ms));
  auto f = router.ref().ask(cmd("question"), 5s);
  auto first = seen.next();
  ASSERT_TRUE(first);
  EXPECT_EQ(op_of(first->msg), "quiet");
  EXPECT_EQ(f.wait_for(0s), std::future_status::timeout);
  timers->advance(50ms);
  auto second = seen.next();
  ASSERT_TRUE(second);
  EXPECT_EQ(op_of(second->msg), "talker");
  auto r = f.get();
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(op_of(*r), "answer");
}

TEST_F(RouterTest, FailingPoolRouteeIsRestartedInPlace) {
  Probe probe(sys);
  auto pool = make_pool<Routee>(sys, 2, RouterConfig{}, pool_options("pool"), 7, probe.ref(), &rec);
  ASSERT_TRUE(probe.next());
  ASSERT_TRUE(probe.next());
  auto rs = pool.routees();
  ASSERT_EQ(rs.size(), 2u);
  rs[0].tell(ping(1));
  rs[0].tell(cmd("boom"));
  auto again = probe.next();  // restarted: pre_start ran again
  ASSERT_TRUE(again);
  EXPECT_EQ(count(rs[0]), 0u) << "fresh state, same ref";
  EXPECT_EQ(pool.routees().size(), 2u);
  EXPECT_EQ(rs[0].path().rfind("/user/pool/", 0), 0u) << rs[0].path();
}

TEST_F(RouterTest, PoolReplacesARouteeThatStopped) {
  Probe probe(sys);
  auto pool = make_pool<Routee>(sys, 2, RouterConfig{},
                                pool_options("pool", SupervisorStrategy::stopping()), 1,
                                probe.ref(), &rec);
  ASSERT_TRUE(probe.next() && probe.next());
  auto victim = pool.routees().at(0);
  victim.tell(cmd("boom"));  // the pool's strategy stops it; the pool spawns a new one
  ASSERT_TRUE(probe.next());
  EXPECT_EQ(pool.stats().routees_replaced, 1u);
  auto now = pool.routees();
  EXPECT_EQ(now.size(), 2u);
  EXPECT_EQ(std::find(now.begin(), now.end(), victim), now.end());
}

// A routee's failure escalated to the pool restarts the pool's supervisor: fresh routees, and
// the pool still replaces a routee that stops and still ends with stop_all (before, the restart
// ran post_stop and left the router without its head for good).
TEST_F(RouterTest, APoolWhoseSupervisorRestartedStillReplacesAndStops) {
  Probe probe(sys);
  SupervisorStrategy escalating;
  escalating.decider = [](std::exception_ptr) { return Directive::escalate; };
  auto pool = make_pool<Routee>(sys, 2, RouterConfig{}, pool_options("pool", escalating), 7, probe.ref(), &rec);
  ASSERT_TRUE(probe.next() && probe.next());
  const auto first = pool.routees();
  ASSERT_EQ(first.size(), 2u);
  first[0].tell(cmd("boom"));  // escalated: /user restarts /user/pool, which spawns 2 new routees
  ASSERT_TRUE(probe.next() && probe.next());
  ASSERT_TRUE(eventually([&] { return sys.stats().restarts >= 1 && pool.routees().size() == 2; }));
  auto second = pool.routees();
  for (const auto& r : second) EXPECT_EQ(std::find(first.begin(), first.end(), r), first.end()) << "an old routee";
  EXPECT_EQ(pool.stats().routees_replaced, 0u) << "the old routees' deaths were replaced too";
  sys.stop(second[0]);
  ASSERT_TRUE(probe.next());  // its replacement started
  ASSERT_TRUE(eventually([&] { return pool.routees().size() == 2; }));
  EXPECT_EQ(pool.stats().routees_replaced, 1u);
  pool.stop_all();
  EXPECT_TRUE(eventually([&] { return !sys.lookup("/user/pool"); })) << "the pool's supervisor lives on";
}

// A routee that can never start is restarted until its budget is spent and stopped; its
// replacements share the pool's budget (max_restarts per routee within `within`), so the pool
// shrinks instead of failing, restarting and replacing for ever.
TEST_F(RouterTest, APoolOfRouteesThatCannotStartShrinksWithinItsBudget) {
  class NeverStarts final : public Actor {
   public:
    void pre_start() override { throw std::runtime_error("cannot start"); }
    void receive(const Message&) override {}
  };
  SupervisorStrategy budgeted;  // restart, at most 2 times a minute
  budgeted.budget.max_restarts = 2;
  auto pool = make_pool<NeverStarts>(sys, 2, RouterConfig{}, pool_options("failing", budgeted));
  // 2 routees and 2 x 2 replacements, each failing its start 3 times (the first and 2 restarts).
  ASSERT_TRUE(eventually([&] { return pool.routees().empty() && pool.stats().replacements_refused >= 1; }))
      << "routees " << pool.routees().size() << ", replaced " << pool.stats().routees_replaced;
  EXPECT_EQ(pool.stats().routees_replaced, 4u);
  EXPECT_TRUE(eventually([&] { return sys.stats().failures == 18; })) << sys.stats().failures;
  const auto before = sys.stats().failures;
  pool.ref().tell(ping(1));  // no routee: dead letters, counted
  EXPECT_EQ(pool.stats().no_routee, 1u);
  EXPECT_EQ(sys.stats().failures, before);
}

// Only failures count against that budget: a routee stopped on purpose (by itself or by the
// user) is replaced however often it happens.
TEST_F(RouterTest, RouteesStoppedOnPurposeAreAlwaysReplaced) {
  Probe probe(sys);
  SupervisorStrategy budgeted;
  budgeted.budget.max_restarts = 1;
  auto pool = make_pool<Routee>(sys, 1, RouterConfig{}, pool_options("stopping", budgeted), 0, probe.ref(), &rec);
  ASSERT_TRUE(probe.next());
  for (int i = 1; i <= 5; ++i) {
    sys.stop(pool.routees().at(0));
    ASSERT_TRUE(probe.next()) << "replacement " << i << " did not start";
    ASSERT_TRUE(eventually([&] { return pool.routees().size() == 1; }));
  }
  EXPECT_EQ(pool.stats().routees_replaced, 5u);
  EXPECT_EQ(pool.stats().replacements_refused, 0u);
}

TEST_F(RouterTest, DeadGroupRouteeLeavesAndAnEmptyRouterDeadLetters) {
  auto rs = spawn_routees(2);
  auto router = make_group(sys, rs);
  Probe probe(sys);
  probe.watch(sys, rs[0]);
  sys.stop(rs[0]);
  ASSERT_TRUE(probe.next());
  EXPECT_EQ(router.routees(), std::vector<ActorRef>{rs[1]});
  EXPECT_EQ(router.stats().routees_removed, 1u);
  router.remove(rs[1]);
  const auto before = sys.stats().dead_letters;
  router.ref().tell(ping(1));
  EXPECT_EQ(router.stats().no_routee, 1u);
  EXPECT_EQ(sys.stats().dead_letters, before + 1);
}

TEST_F(RouterTest, ManagementAddListStopAll) {
  auto rs = spawn_routees(2);
  auto router = make_group(sys, std::vector<std::string>{rs[0].path(), "/user/missing"});
  EXPECT_EQ(router.routees().size(), 1u) << "missing paths are skipped";
  router.add(rs[1]);
  router.add(rs[1]);  // twice: once
  EXPECT_EQ(router.routees().size(), 2u);
  Probe probe(sys);
  probe.watch(sys, rs[0]);
  probe.watch(sys, rs[1]);
  router.stop_all();
  ASSERT_TRUE(probe.next() && probe.next());
  EXPECT_TRUE(router.routees().empty());
}

}  // namespace
}  // namespace troupe

namespace troupe {
namespace {

TEST(Resizer, GrowsWhenAllBusyShrinksWhenFewAreAndStaysInBounds) {
  const Resizer r{.lower = 2, .upper = 6, .messages_per_resize = 1, .rampup_rate = 0.2, .backoff_threshold = 0.3,
                  .backoff_rate = 0.1};
  EXPECT_EQ(resize_delta(r, 2, 2), 1);   // ceil(0.4)
  EXPECT_EQ(resize_delta(r, 5, 5), 1);   // ceil(1.0)
  EXPECT_EQ(resize_delta(r, 6, 6), 0);   // at upper
  EXPECT_EQ(resize_delta(r, 4, 2), 0);   // half busy: keep
  EXPECT_EQ(resize_delta(r, 4, 1), -1);  // 25 % busy: shrink by max(1, floor(0.4))
  EXPECT_EQ(resize_delta(r, 2, 0), 0);   // at lower
  EXPECT_EQ(resize_delta(r, 1, 0), 1);   // below lower: back up
  EXPECT_EQ(resize_delta(r, 9, 9), -3);  // above upper: back down
}

TEST(RouterResize, GrowsABusyPoolUpToItsBoundAndShrinksAnIdleOne) {
  auto cfg = RouterTest::config();
  cfg.workers = 8;  // held routees block their workers: leave room for the pool's supervisor
  ActorSystem sys(cfg);
  Probe probe(sys);
  std::promise<void> release;
  std::shared_future<void> gate = release.get_future().share();
  class Blocker final : public Actor {
   public:
    Blocker(ActorRef probe, std::shared_future<void> gate) : probe_(std::move(probe)), gate_(std::move(gate)) {}
    void pre_start() override { probe_.tell(cmd("started")); }
    void post_stop() override { probe_.tell(cmd("stopped")); }
    void receive(const Message& m) override {
      if (op_of(m) == "hold") gate_.wait();
    }
    ActorRef probe_;
    std::shared_future<void> gate_;
  };
  auto opts = pool_options("resizing");
  opts.resizer = Resizer{.lower = 2, .upper = 4, .messages_per_resize = 1, .rampup_rate = 0.5,
                         .backoff_threshold = 0.3, .backoff_rate = 0.5};
  auto pool = make_pool<Blocker>(sys, 1, rc(RoutingKind::round_robin), opts, probe.ref(), gate);
  for (int i = 0; i < 2; ++i) ASSERT_EQ(op_of(probe.next()->msg), "started");  // size clamped to lower
  // Keep every routee busy: the pool grows, one step at a time (a new routee must get busy
  // too before the next step), up to 4.
  int grown = 0;
  for (int tries = 0; grown < 2 && tries < 500; ++tries) {
    router_hold(pool);
    if (auto m = probe.next(20ms)) {
      EXPECT_EQ(op_of(m->msg), "started");
      ++grown;
    }
  }
  ASSERT_EQ(grown, 2);
  for (int i = 0; i < 20; ++i) router_hold(pool);  // all 4 busy: any growth past 4 is refused
  release.set_value();
  // Idle now: routing a few messages lets the resizer see it and shrink back to the lower bound.
  // A tick can make a routee look busy for an instant, so the pool may step up again on the
  // way down (as Akka's resizer does); it must still end at the lower bound, never above 4.
  int size = 4;
  for (int tries = 0; size > 2 && tries < 1000; ++tries) {
    pool.ref().tell(cmd("tick"));  // each routed message is a chance for the resizer to look
    while (auto m = probe.next(tries < 5 ? 20ms : 5ms)) {
      size += op_of(m->msg) == "started" ? 1 : -1;
      ASSERT_LE(size, 4);
      ASSERT_GE(size, 2);
    }
  }
  ASSERT_EQ(size, 2);
  EXPECT_GE(pool.stats().resizes, 2u);
}

TEST_F(RouterTest, BroadcastWrapperReachesEveryRouteeWhateverTheKind) {
  auto rs = spawn_routees(3);
  auto router = make_group(sys, rs, rc(RoutingKind::round_robin));
  router.ref().tell(make_broadcast(ping(5)));
  for (auto& r : rs) EXPECT_EQ(count(r), 1u);
}

}  // namespace
}  // namespace troupe
