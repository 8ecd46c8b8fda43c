// Timers: fire on (manual) time, repeat, and are cancelled by cancel_timer, stop and restart.

#include <gtest/gtest.h>

#include <troupe/actor/actor_system.hpp>
#include <troupe/serialization/system_generated.h>

#include "test_messages_generated.h"
#include "testkit.hpp"

namespace troupe {
namespace {

using namespace std::chrono_literals;
using namespace testkit;  // Probe, cmd, op_of, ping, test_config


struct Timers : ::testing::Test {
  std::shared_ptr<ManualTimerService> timers = std::make_shared<ManualTimerService>();
  ActorSystem sys{[this] {
    auto c = test_config("timer-test");
    c.timers = timers;
    return c;
  }()};
  Probe probe{sys};
};

// Starts timers on command and forwards their ticks to `report`.
class Ticker final : public Actor {
 public:
  explicit Ticker(ActorRef report) : report_(std::move(report)) {}
  void receive(const Message& m) override {
    auto op = op_of(m);
    if (op == "every") {
      id_ = context().schedule_every(std::chrono::milliseconds(m.as<test::Cmd>()->n()), cmd("tick"));
      sender().tell(cmd("armed", id_));
    } else if (op == "once") {
      id_ = context().schedule_once(std::chrono::milliseconds(m.as<test::Cmd>()->n()), cmd("tick"));
      sender().tell(cmd("armed", id_));
    } else if (op == "cancel") {
      context().cancel_timer(id_);
      sender().tell(cmd("cancelled"));
    } else if (op == "boom") {
      throw std::runtime_error("boom");
    } else if (op == "tick") {
      report_.tell(m);
    } else if (op == "ping") {
      sender().tell(cmd("pong"));
    }
  }

 private:
  ActorRef report_;
  TimerId id_ = 0;
};

TEST_F(Timers, ScheduleOnceFiresOnceAtItsTime) {
  auto t = sys.spawn<Ticker>(SpawnOptions{}, probe.ref());
  ASSERT_TRUE(t.ask(cmd("once", 50), 10s).get().ok());
  timers->advance(49ms);
  EXPECT_EQ(timers->pending(), 1u);
  timers->advance(1ms);
  auto m = probe.next();
  ASSERT_TRUE(m);
  EXPECT_EQ(op_of(m->msg), "tick");
  EXPECT_EQ(timers->pending(), 0u);
  timers->advance(1s);
  ASSERT_TRUE(t.ask(cmd("ping"), 10s).get().ok());
  EXPECT_EQ(probe.queued(), 0u);
}

TEST_F(Timers, ScheduleEveryRepeats) {
  auto t = sys.spawn<Ticker>(SpawnOptions{}, probe.ref());
  ASSERT_TRUE(t.ask(cmd("every", 10), 10s).get().ok());
  for (int i = 0; i < 5; ++i) {
    timers->advance(10ms);
    auto m = probe.next();
    ASSERT_TRUE(m) << "tick " << i;
    EXPECT_EQ(op_of(m->msg), "tick");
  }
  EXPECT_EQ(timers->pending(), 1u);
}

TEST_F(Timers, CancelledTimerNeverDeliversEvenIfAlreadyQueued) {
  auto t = sys.spawn<Ticker>(SpawnOptions{}, probe.ref());
  ASSERT_TRUE(t.ask(cmd("every", 10), 10s).get().ok());
  timers->advance(10ms);  // a tick is (or is about to be) in the mailbox
  ASSERT_TRUE(t.ask(cmd("cancel"), 10s).get().ok());
  timers->advance(100ms);
  EXPECT_EQ(timers->pending(), 0u);
  ASSERT_TRUE(t.ask(cmd("ping"), 10s).get().ok());
  // At most the tick that was processed before the cancel arrived.
  EXPECT_LE(probe.queued(), 1u);
}

TEST_F(Timers, StopCancelsTimers) {
  auto t = sys.spawn<Ticker>(SpawnOptions{}, probe.ref());
  ASSERT_TRUE(t.ask(cmd("every", 10), 10s).get().ok());
  Probe watcher(sys);
  watcher.watch(sys, t);
  sys.stop(t);
  ASSERT_TRUE(watcher.next());
  EXPECT_EQ(timers->pending(), 0u);
  const auto dead = sys.stats().dead_letters;
  timers->advance(1s);
  EXPECT_EQ(probe.queued(), 0u);
  EXPECT_EQ(sys.stats().dead_letters, dead);
}

TEST_F(Timers, RestartCancelsTimers) {
  auto t = sys.spawn<Ticker>(SpawnOptions{}, probe.ref());
  ASSERT_TRUE(t.ask(cmd("every", 10), 10s).get().ok());
  t.tell(cmd("boom"));
  ASSERT_TRUE(t.ask(cmd("ping"), 10s).get().ok());  // restarted and alive
  EXPECT_EQ(timers->pending(), 0u);
  timers->advance(1s);
  ASSERT_TRUE(t.ask(cmd("ping"), 10s).get().ok());
  EXPECT_EQ(probe.queued(), 0u);
}

TEST_F(Timers, SystemScheduleOnceTellsTheTarget) {
  sys.schedule_once(5ms, probe.ref(), cmd("later"));
  EXPECT_EQ(probe.queued(), 0u);
  timers->advance(5ms);
  auto m = probe.next();
  ASSERT_TRUE(m);
  EXPECT_EQ(op_of(m->msg), "later");
}

}  // namespace
}  // namespace troupe
