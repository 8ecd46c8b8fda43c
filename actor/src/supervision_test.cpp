// Supervision strategies (resume, restart, stop, escalate; one-for-one, all-for-one; back-off),
// escalation past /user, and asks from inside actors that never block a worker.

#include <gtest/gtest.h>

#include <algorithm>
#include <latch>
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

std::string event(const Message& m) {
  const auto* c = m.as<test::Cmd>();
  return c ? c->op()->str() + " " + std::to_string(c->n()) : "?";
}

// Reports its lifecycle to `probe`: "started i", "stopped i". Throws on "boom". Counts the
// other messages and answers "count" with the count.
class Child final : public Actor {
 public:
  Child(std::uint64_t index, ActorRef probe) : index_(index), probe_(std::move(probe)) {}
  void pre_start() override { probe_.tell(cmd("started", index_)); }
  void post_stop() override { probe_.tell(cmd("stopped", index_)); }
  void receive(const Message& m) override {
    const auto op = op_of(m);
    if (op == "boom") throw std::runtime_error("boom in child " + std::to_string(index_));
    if (op == "count") {
      sender().tell(cmd("count", count_));
      return;
    }
    ++count_;
  }

 private:
  std::uint64_t index_;
  ActorRef probe_;
  std::uint64_t count_ = 0;
};

// Spawns `n` children c0..c{n-1}; supervises them with `strategy`.
class Supervisor final : public Actor {
 public:
  Supervisor(SupervisorStrategy strategy, int n, ActorRef probe) : strategy_(std::move(strategy)), n_(n), probe_(std::move(probe)) {}
  void pre_start() override {
    probe_.tell(cmd("sup-started"));
    for (int i = 0; i < n_; ++i) {
      context().spawn<Child>(SpawnOptions{.name = "c" + std::to_string(i)}, static_cast<std::uint64_t>(i), probe_);
    }
  }
  void post_stop() override { probe_.tell(cmd("sup-stopped")); }
  void receive(const Message& m) override { sender().tell(m); }
  SupervisorStrategy supervisor_strategy() const override { return strategy_; }

 private:
  SupervisorStrategy strategy_;
  int n_;
  ActorRef probe_;
};

SupervisorStrategy deciding(Directive d, SupervisorStrategy::Scope scope = SupervisorStrategy::Scope::one_for_one) {
  SupervisorStrategy s;
  s.scope = scope;
  s.decider = [d](std::exception_ptr) { return d; };
  return s;
}

struct Tree {
  explicit Tree(SupervisorStrategy st, int n, ActorSystemConfig cfg = config()) : sys(std::move(cfg)), probe(sys) {
    sup = sys.spawn<Supervisor>(SpawnOptions{.name = "sup"}, std::move(st), n, probe.ref());
    expect_events(1 + n);  // sup-started, started 0..n-1
  }
  static ActorSystemConfig config() { return test_config("supervision-test"); }
  std::vector<std::string> expect_events(int n) {
    std::vector<std::string> out;
    for (int i = 0; i < n; ++i) {
      auto r = probe.next();
      if (!r) break;
      out.push_back(event(r->msg));
    }
    EXPECT_EQ(out.size(), static_cast<std::size_t>(n));
    return out;
  }
  ActorRef child(int i) { return sys.lookup("/user/sup/c" + std::to_string(i)); }
  std::uint64_t count(const ActorRef& c) {
    auto r = c.ask(cmd("count"), 10s).get();
    return r.ok() ? r->as<test::Cmd>()->n() : ~0ull;
  }
  ActorSystem sys;
  Probe probe;
  ActorRef sup;
};

bool has(const std::vector<std::string>& v, const std::string& s) { return std::find(v.begin(), v.end(), s) != v.end(); }

TEST(Supervision, ResumeKeepsStateAndDropsOnlyTheFailingMessage) {
  Tree t(deciding(Directive::resume), 1);
  auto c = t.child(0);
  for (int i = 0; i < 3; ++i) c.tell(cmd("x"));
  c.tell(cmd("boom"));
  c.tell(cmd("x"));
  EXPECT_EQ(t.count(c), 4u);
  EXPECT_EQ(t.probe.queued(), 0u) << "no stop/start on resume";
  EXPECT_EQ(t.sys.stats().failed_messages_dropped, 1u);
}

TEST(Supervision, OneForOneRestartRestartsOnlyTheFailedChild) {
  Tree t(deciding(Directive::restart), 2);
  auto c0 = t.child(0), c1 = t.child(1);
  c1.tell(cmd("x"));
  c0.tell(cmd("x"));
  c0.tell(cmd("boom"));
  auto ev = t.expect_events(2);
  EXPECT_EQ(ev, (std::vector<std::string>{"stopped 0", "started 0"}));  // pre_restart, post_restart
  EXPECT_EQ(t.count(c0), 0u) << "fresh state";
  EXPECT_EQ(t.count(c1), 1u) << "sibling untouched";
}

TEST(Supervision, OneForOneStopStopsTheChildWithReasonFailed) {
  Tree t(deciding(Directive::stop), 2);
  Probe watcher(t.sys);
  auto c0 = t.child(0);
  watcher.watch(t.sys, c0);
  c0.tell(cmd("boom"));
  auto term = watcher.next();
  ASSERT_TRUE(term);
  EXPECT_EQ(term->msg.as<sys::Terminated>()->reason(), sys::TerminationReason::Failed);
  EXPECT_EQ(t.expect_events(1), std::vector<std::string>{"stopped 0"});
  EXPECT_EQ(t.count(t.child(1)), 0u) << "sibling alive";
  EXPECT_FALSE(t.child(0));
}

TEST(Supervision, AllForOneRestartRestartsEverySibling) {
  Tree t(deciding(Directive::restart, SupervisorStrategy::Scope::all_for_one), 3);
  for (int i = 0; i < 3; ++i) {
    t.child(i).tell(cmd("x"));
    ASSERT_EQ(t.count(t.child(i)), 1u);
  }
  t.child(1).tell(cmd("boom"));
  auto ev = t.expect_events(6);
  for (int i = 0; i < 3; ++i) {
    EXPECT_TRUE(has(ev, "stopped " + std::to_string(i))) << i;
    EXPECT_TRUE(has(ev, "started " + std::to_string(i))) << i;
  }
  for (int i = 0; i < 3; ++i) EXPECT_EQ(t.count(t.child(i)), 0u) << "fresh state in child " << i;
}

TEST(Supervision, AllForOneStopStopsEverySibling) {
  Tree t(deciding(Directive::stop, SupervisorStrategy::Scope::all_for_one), 3);
  t.child(2).tell(cmd("boom"));
  auto ev = t.expect_events(3);
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(has(ev, "stopped " + std::to_string(i))) << i;
  EXPECT_EQ(t.sup.ask(cmd("still here"), 10s).get().ok(), true) << "the parent itself stays";
}

TEST(Supervision, EscalateRestartsTheParentWhoseChildrenStopFirst) {
  Tree t(deciding(Directive::escalate), 2);  // the /user guardian restarts "sup" (default)
  t.child(0).tell(cmd("boom"));
  auto ev = t.expect_events(6);
  auto at = [&](const std::string& e) { return std::find(ev.begin(), ev.end(), e) - ev.begin(); };
  ASSERT_TRUE(has(ev, "sup-stopped 0") && has(ev, "sup-started 0") && has(ev, "stopped 0") && has(ev, "stopped 1") &&
              has(ev, "started 0") && has(ev, "started 1"));
  EXPECT_LT(at("stopped 0"), at("sup-started 0"));
  EXPECT_LT(at("stopped 1"), at("sup-started 0"));
  EXPECT_LT(at("sup-started 0"), at("started 0"));
  EXPECT_EQ(t.count(t.child(0)), 0u);
}

// A parent that escalated its child's failure holds that child until its own supervisor
// decides: here the grandparent stops the child (and waits until it is gone) before it answers
// resume, and the parent then resumes a child that no longer exists (before, through a pointer
// to freed memory; AddressSanitizer in the sanitize job).
TEST(Supervision, AnEscalatedChildStoppedBeforeTheDecisionIsResumedSafely) {
  ActorSystem sys(Tree::config());
  class Leaf final : public Actor {
   public:
    void receive(const Message& m) override {
      if (op_of(m) == "boom") throw std::runtime_error("leaf failure");
    }
  };
  class Mid final : public Actor {
   public:
    void pre_start() override { context().spawn<Leaf>(SpawnOptions{.name = "c"}); }
    void receive(const Message& m) override { sender().tell(m); }
    SupervisorStrategy supervisor_strategy() const override { return deciding(Directive::escalate); }
  };
  class Top final : public Actor {
   public:
    void pre_start() override { context().spawn<Mid>(SpawnOptions{.name = "p"}); }
    void receive(const Message&) override {}
    SupervisorStrategy supervisor_strategy() const override {
      SupervisorStrategy s;
      auto* sys = &context().system();
      s.decider = [sys](std::exception_ptr) {
        sys->stop(sys->lookup("/user/g/p/c"));
        EXPECT_TRUE(eventually([&] { return !sys->lookup("/user/g/p/c"); }));
        std::this_thread::sleep_for(20ms);  // let the stopped cell be freed, if nothing holds it
        return Directive::resume;
      };
      return s;
    }
  };
  sys.spawn<Top>(SpawnOptions{.name = "g"});
  ASSERT_TRUE(eventually([&] { return bool(sys.lookup("/user/g/p/c")); }));
  sys.lookup("/user/g/p/c").tell(cmd("boom"));
  // The parent was resumed (it answers), and its child is gone.
  ASSERT_TRUE(eventually([&] { return sys.stats().failures >= 1 && !sys.lookup("/user/g/p/c"); }));
  auto r = sys.lookup("/user/g/p").ask(cmd("still here"), 10s).get();
  ASSERT_TRUE(r.ok()) << r.error().message();
  EXPECT_EQ(op_of(*r), "still here");
}

TEST(Supervision, EscalationPastUserStopsAllUserActorsButKeepsTheSystem) {
  auto cfg = Tree::config();
  cfg.user_guardian_strategy = deciding(Directive::escalate);
  ActorSystem sys(cfg);
  class Marker final : public Actor {
   public:
    explicit Marker(std::latch* stopped) : stopped_(stopped) {}
    void receive(const Message& m) override {
      if (op_of(m) == "boom") throw std::runtime_error("fatal in a top-level actor");
      sender().tell(m);
    }
    void post_stop() override { stopped_->count_down(); }
    std::latch* stopped_;
  };
  // Watches from /system, which the escalation leaves alone: Terminated comes once the
  // watched actor is gone, its name free (post_stop runs a little earlier).
  class Watcher final : public Actor {
   public:
    Watcher(ActorRef target, std::latch* gone) : target_(std::move(target)), gone_(gone) {}
    void pre_start() override { context().watch(target_); }
    void receive(const Message& m) override {
      if (m.is<sys::Terminated>()) gone_->count_down();
    }
    ActorRef target_;
    std::latch* gone_;
  };
  std::latch stopped(3), b_gone(1);
  auto a = sys.spawn<Marker>(SpawnOptions{.name = "a"}, &stopped);
  auto b = sys.spawn<Marker>(SpawnOptions{.name = "b"}, &stopped);
  auto c = sys.spawn<Marker>(SpawnOptions{.name = "c"}, &stopped);
  sys.spawn_system<Watcher>(SpawnOptions{}, b, &b_gone);
  ASSERT_TRUE(b.ask(cmd("hi"), 10s).get().ok());
  a.tell(cmd("boom"));
  stopped.wait();  // all three stopped
  b_gone.wait();
  EXPECT_EQ(sys.stats().escalations_past_user, 1u);
  EXPECT_FALSE(sys.lookup("/user/b"));
  std::latch later(1);
  auto d = sys.spawn<Marker>(SpawnOptions{.name = "d"}, &later);
  EXPECT_TRUE(d.ask(cmd("still works"), 10s).get().ok());
}

TEST(Backoff, DelayDoublesUpToTheCapAndJitterOnlyStretches) {
  const Backoff b{.min = 100ms, .max = 1s, .jitter = 0.5};
  EXPECT_EQ(backoff_delay(1, b, 0.0), 100ms);
  EXPECT_EQ(backoff_delay(2, b, 0.0), 200ms);
  EXPECT_EQ(backoff_delay(3, b, 0.0), 400ms);
  EXPECT_EQ(backoff_delay(4, b, 0.0), 800ms);
  EXPECT_EQ(backoff_delay(5, b, 0.0), 1s);
  EXPECT_EQ(backoff_delay(60, b, 0.0), 1s);
  EXPECT_EQ(backoff_delay(1, b, 0.5), 125ms);
  EXPECT_EQ(backoff_delay(5, b, 0.999999), std::chrono::nanoseconds(1'499'999'500));
  EXPECT_EQ(backoff_delay(1, Backoff{.min = 100ms, .max = 1s, .jitter = 0.0}, 0.9), 100ms);
}

TEST(Backoff, RestartsWaitForGrowingDelays) {
  auto timers = std::make_shared<ManualTimerService>();
  auto cfg = Tree::config();
  cfg.timers = timers;
  auto st = deciding(Directive::restart);
  st.backoff = Backoff{.min = 100ms, .max = 400ms, .jitter = 0.0};
  Tree t(st, 1, cfg);
  for (auto delay : {100ms, 200ms, 400ms, 400ms}) {
    t.child(0).tell(cmd("boom"));
    ASSERT_TRUE(timers->await_pending(1, 10s)) << "the supervisor armed the restart";
    timers->advance(delay - 1ms);
    EXPECT_EQ(timers->pending(), 1u) << "not restarted before " << delay.count() << " ms";
    EXPECT_EQ(t.probe.queued(), 0u);
    timers->advance(1ms);
    EXPECT_EQ(t.expect_events(2), (std::vector<std::string>{"stopped 0", "started 0"})) << delay.count();
  }
}

// A asks B, B asks A back while A's own ask is pending: completes even on one worker thread.
class Asker final : public Actor {
 public:
  void receive(const Message& m) override {
    const auto op = op_of(m);
    if (op == "start") {
      auto reply_to = sender();
      auto b = context().spawn<Middle>(SpawnOptions{});
      context().ask(b, cmd("question"), 5s, [this, reply_to](Result<Message> r) {
        ++continuations_;
        reply_to.tell(cmd(r.ok() ? op_of(*r) : "failed " + r.error().message(), continuations_));
      });
    } else if (op == "inner") {
      sender().tell(cmd("inner-answer"));
    }
  }
  class Middle final : public Actor {
   public:
    void receive(const Message& m) override {
      if (op_of(m) != "question") return;
      auto reply_to = sender();
      context().ask(context().parent(), cmd("inner"), 5s, [reply_to](Result<Message> r) {
        reply_to.tell(cmd(r.ok() ? "done:" + op_of(*r) : "failed"));
      });
    }
  };

 private:
  std::uint64_t continuations_ = 0;
};

TEST(AskInActor, ChainBackToTheAskerCompletesOnOneWorker) {
  auto cfg = Tree::config();
  cfg.workers = 1;
  ActorSystem sys(cfg);
  auto a = sys.spawn<Asker>();
  auto r = a.ask(cmd("start"), 10s).get();
  ASSERT_TRUE(r.ok()) << r.error().message();
  EXPECT_EQ(op_of(*r), "done:inner-answer");
  EXPECT_EQ(r->as<test::Cmd>()->n(), 1u);
}

TEST(AskInActor, TimeoutRunsTheContinuationOnTheActorsTurn) {
  auto timers = std::make_shared<ManualTimerService>();
  auto cfg = Tree::config();
  cfg.timers = timers;
  ActorSystem sys(cfg);
  Probe probe(sys);
  class Impatient final : public Actor {
   public:
    explicit Impatient(ActorRef report) : report_(std::move(report)) {}
    void pre_start() override {
      auto silent = context().spawn<Silent>(SpawnOptions{});
      context().ask(silent, cmd("?"), 50ms, [this](Result<Message> r) {
        report_.tell(cmd(r.error() == ActorErrc::timeout ? "timeout" : "other"));
      });
    }
    void receive(const Message&) override {}
    ActorRef report_;
  };
  sys.spawn<Impatient>(SpawnOptions{}, probe.ref());
  ASSERT_TRUE(timers->await_pending(1, 10s));
  timers->advance(50ms);
  auto m = probe.next();
  ASSERT_TRUE(m);
  EXPECT_EQ(op_of(m->msg), "timeout");
}

}  // namespace
}  // namespace troupe
