// Entities on one node: lazy activation with their id, order, passivation (idle and requested)
// with messages kept for the next activation, refused types and ids, and an activation log that
// never shows two live activations of one entity.

#include <troupe/sharding/region.hpp>

#include <gtest/gtest.h>

#include <condition_variable>
#include <future>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include <troupe/serialization/sharding_generated.h>

#include "testkit.hpp"

namespace troupe::sharding {
namespace {

using namespace testkit;
using namespace std::chrono_literals;

/// Activation log: (id, start) and (id, stop) in order; check() fails on an overlap.
struct ActivationLog {
  std::mutex mu;
  std::vector<std::pair<std::string, bool>> events;
  void add(const std::string& id, bool start) {
    std::lock_guard lk(mu);
    events.emplace_back(id, start);
  }
  /// Number of activations of `id`; fails the test if two overlapped.
  int activations(const std::string& id) {
    std::lock_guard lk(mu);
    int live = 0, total = 0;
    for (const auto& [who, start] : events) {
      if (who != id) continue;
      live += start ? 1 : -1;
      total += start;
      EXPECT_LE(live, 1) << "two live activations of " << id;
    }
    return total;
  }
};

/// Where an entity's "hold" turn waits until the test opens it.
testkit::Gate g_gate;

/// Counts its messages; "id" -> Text{its id}; "count" -> Cmd{"count", n}; "passivate" asks for
/// it; Ping seqs are echoed back (order checks).
class Counter final : public Actor {
 public:
  Counter(std::string id, ActivationLog* log) : id_(std::move(id)), log_(log) {}
  void pre_start() override { log_->add(id_, true); }
  void post_stop() override { log_->add(id_, false); }
  void receive(const Message& m) override {
    ++n_;
    const auto op = op_of(m);
    if (op == "id") sender().tell(Message::build<test::Text>([&](auto& b) { return test::CreateTextDirect(b, id_.c_str()); }));
    if (op == "count") sender().tell(cmd("count", n_));
    if (op == "passivate") context().parent().tell(Message::build<Passivate>([](auto& b) { return CreatePassivate(b); }), self());
    if (m.is<test::Ping>()) sender().tell(m);
    if (op == "later") later_ = sender();  // answered on "release"
    if (op == "release" && later_) later_.tell(cmd("released", n_));
    if (op == "hold") {
      // Asks to passivate, then keeps its turn until the gate opens: messages for it wait in the
      // region meanwhile. (Told from another thread: this turn blocks.)
      std::thread([region = context().parent(), me = self()] {
        region.tell(Message::build<Passivate>([](auto& b) { return CreatePassivate(b); }), me);
      }).join();
      g_gate.wait();
    }
  }

 private:
  std::string id_;
  ActivationLog* log_;
  std::uint64_t n_ = 0;
  ActorRef later_;
};

struct Entities : ::testing::Test {
  Entities() {
    auto cfg = test_config("shards");
    cfg.timers = timers;
    sys = std::make_unique<ActorSystem>(cfg);
    sys->registry().add<test::Cmd>();
    sharding = std::make_unique<Sharding>(*sys);
    EntitySettings s;
    s.type = "counter";
    s.passivate_after = 10s;
    sharding->start(s, [this](ActorContext& ctx, SpawnOptions o, const std::string& id) {
      return ctx.spawn<Counter>(std::move(o), id, &log);
    });
    probe = std::make_unique<Probe>(*sys);
  }
  ~Entities() override {
    probe.reset();
    sharding.reset();
    sys->shutdown();
  }
  std::uint64_t count_of(const std::string& id) {
    sharding->tell("counter", id, cmd("count"), probe->ref());
    auto r = probe->next();
    EXPECT_TRUE(r);
    return r ? r->msg.as<test::Cmd>()->n() : 0;
  }
  std::shared_ptr<ManualTimerService> timers = std::make_shared<ManualTimerService>();
  ActivationLog log;
  std::unique_ptr<ActorSystem> sys;
  std::unique_ptr<Sharding> sharding;
  std::unique_ptr<Probe> probe;
};

TEST_F(Entities, AnEntityStartsOnItsFirstMessageKnowsItsIdAndKeepsItsState) {
  EXPECT_EQ(sharding->stats().activations, 0u);
  auto r = sharding->ask("counter", "user/42$x", cmd("id"), 5s).get();
  ASSERT_TRUE(r.ok()) << r.error().message();
  EXPECT_EQ(r->as<test::Text>()->value()->str(), "user/42$x") << "ids with '/' and '$' work";
  EXPECT_EQ(count_of("user/42$x"), 2u) << "the same activation";
  EXPECT_EQ(sharding->stats().activations, 1u);
  EXPECT_EQ(sharding->stats().live_entities, 1u);
  EXPECT_EQ(log.activations("user/42$x"), 1);
}

TEST_F(Entities, AKeyedMessageIsDeliveredOnceAndARepeatGetsTheFirstReply) {
  AskOptions o;
  o.idempotency_key = "order-7";
  auto first = sharding->ask("counter", "k", cmd("count"), o).get();
  ASSERT_TRUE(first.ok()) << first.error().message();
  EXPECT_EQ(first->as<test::Cmd>()->n(), 1u);
  auto again = sharding->ask("counter", "k", cmd("count"), o).get();
  ASSERT_TRUE(again.ok()) << again.error().message();
  EXPECT_EQ(again->as<test::Cmd>()->n(), 1u) << "the cached reply, not a second delivery";
  EXPECT_EQ(sharding->stats().deduplicated, 1u);
  EXPECT_EQ(count_of("k"), 2u) << "the entity saw the keyed message once";
  // Another key, or the same key for another entity, is delivered.
  o.idempotency_key = "order-8";
  EXPECT_EQ(sharding->ask("counter", "k", cmd("count"), o).get()->as<test::Cmd>()->n(), 3u);
  o.idempotency_key = "order-7";
  EXPECT_EQ(sharding->ask("counter", "other", cmd("count"), o).get()->as<test::Cmd>()->n(), 1u);
}

// The reply cache is bounded by count, but an entry still waiting for its entity's reply is never
// evicted: its reply would be lost to its asker, whose retry would then run the message again. A
// keyed message that finds every entry waiting is refused with ShardUnavailable instead.
/// "counter" entities sharded on one node, with `cfg`.
struct LocalCounters {
  explicit LocalCounters(const std::string& name, ClusterShardingConfig cfg = {}) : sys(test_config(name)) {
    sys.registry().add<test::Cmd>();
    sys.registry().add<test::Ping>();
    sh = std::make_unique<Sharding>(sys, std::move(cfg));
    EntitySettings s;
    s.type = "counter";
    sh->start(s, [this](ActorContext& ctx, SpawnOptions o, const std::string& id) {
      return ctx.spawn<Counter>(std::move(o), id, &log);
    });
  }
  ~LocalCounters() {
    sh.reset();
    sys.shutdown();
  }
  ActivationLog log;  // outlives the entities
  ActorSystem sys;
  std::unique_ptr<Sharding> sh;
};

// Messages for an entity that asked to passivate wait for its next activation, bounded like a
// shard's buffer: beyond it they are refused with ShardUnavailable (counted), the others still
// delivered in order.
TEST(Bounds, MessagesWaitingForAPassivatingEntityAreBoundedAndTheRestRefused) {
  sharding::ClusterShardingConfig cfg;
  cfg.buffer_per_shard = 5;
  LocalCounters node("bounds", cfg);
  auto& sh = *node.sh;
  Probe probe(node.sys);
  auto held = g_gate.closed();
  sh.tell("counter", "h", cmd("hold"));
  ASSERT_TRUE(eventually([&] { return sh.stats().passivations >= 1; }));
  for (std::uint64_t i = 1; i <= 8; ++i) sh.tell("counter", "h", ping(i), probe.ref());
  std::vector<std::uint64_t> echoed;
  int refused = 0;
  for (int k = 0; k < 3; ++k) {
    auto r = probe.next();
    ASSERT_TRUE(r);
    refused += r->msg.is<ShardUnavailable>();
  }
  EXPECT_EQ(refused, 3) << "more than the bound waited";
  g_gate.set(true);
  for (int k = 0; k < 5; ++k) {
    auto r = probe.next();
    ASSERT_TRUE(r);
    ASSERT_TRUE(r->msg.is<test::Ping>());
    echoed.push_back(r->msg.as<test::Ping>()->seq());
  }
  EXPECT_EQ(echoed, (std::vector<std::uint64_t>{1, 2, 3, 4, 5}));
  EXPECT_EQ(sh.stats().unavailable, 3u);
  EXPECT_EQ(node.log.activations("h"), 2);
}

// Repeats of a keyed message that wait for its first reply are bounded (each sender is kept
// until the reply): beyond the bound a repeat is refused with ShardUnavailable, and the reply
// reaches every sender kept.
TEST(Bounds, RepeatsWaitingForAKeyedMessagesReplyAreBounded) {
  LocalCounters node("repeats");
  auto& sh = *node.sh;
  AskOptions keyed;
  keyed.idempotency_key = "k1";
  keyed.timeout = 10s;
  auto first = sh.ask("counter", "e1", cmd("later"), keyed);
  std::uint64_t counts = 0;  // e1 counted "later" before one of these (see ReplyCache above)
  ASSERT_TRUE(eventually([&] {
    auto c = sh.ask("counter", "e1", cmd("count"), 5s).get();
    return c.ok() && c->is<test::Cmd>() && c->as<test::Cmd>()->n() > ++counts;
  }));
  std::vector<std::future<Result<Message>>> repeats;
  for (int i = 0; i < 20; ++i) repeats.push_back(sh.ask("counter", "e1", cmd("later"), keyed));
  // The ones beyond the bound are answered at once; the rest wait for the reply.
  ASSERT_TRUE(eventually([&] { return sh.stats().unavailable == 5; }));
  sh.tell("counter", "e1", cmd("release"));
  auto answered = first.get();
  ASSERT_TRUE(answered.ok()) << answered.error().message();
  int released = op_of(*answered) == "released", refused = 0;
  for (auto& f : repeats) {
    auto r = f.get();
    ASSERT_TRUE(r.ok()) << r.error().message();
    released += op_of(*r) == "released";
    refused += r->is<ShardUnavailable>();
  }
  EXPECT_EQ(released, 16);
  EXPECT_EQ(refused, 5);
}

TEST(ReplyCache, AnEntryStillWaitingForItsReplyIsNotEvictedAndANewKeyIsRefusedMeanwhile) {
  sharding::ClusterShardingConfig cfg;
  cfg.reply_cache_entries = 1;
  LocalCounters node("cache", cfg);
  auto& sh = *node.sh;
  AskOptions first;
  first.idempotency_key = "k1";
  first.timeout = 10s;
  auto waiting = sh.ask("counter", "e1", cmd("later"), first);
  // Each ask comes through an actor of its own (no order between two asks): k1 is in the cache
  // once e1 has counted "later" before one of these counts.
  std::uint64_t counts = 0;
  ASSERT_TRUE(eventually([&] {
    auto c = sh.ask("counter", "e1", cmd("count"), 5s).get();
    return c.ok() && c->is<test::Cmd>() && c->as<test::Cmd>()->n() > ++counts;
  }));
  AskOptions second;
  second.idempotency_key = "k2";
  second.timeout = 10s;
  auto refused = sh.ask("counter", "e2", cmd("count"), second).get();
  ASSERT_TRUE(refused.ok()) << refused.error().message();
  EXPECT_TRUE(refused->is<ShardUnavailable>()) << "k2 ran: it evicted k1, still waiting for its reply";
  sh.tell("counter", "e1", cmd("release"));
  auto r = waiting.get();
  ASSERT_TRUE(r.ok()) << "k1's reply was lost: " << r.error().message();
  EXPECT_EQ(op_of(*r), "released");
  // Answered now, k1's entry may go: another key runs.
  auto later = sh.ask("counter", "e2", cmd("count"), second).get();
  ASSERT_TRUE(later.ok());
  ASSERT_TRUE(later->is<test::Cmd>());
  EXPECT_EQ(later->as<test::Cmd>()->n(), 1u);
}

TEST_F(Entities, MessagesToOneEntityArriveInOrder) {
  for (std::uint64_t i = 1; i <= 2000; ++i) sharding->tell("counter", "e", ping(i), probe->ref());
  for (std::uint64_t i = 1; i <= 2000; ++i) {
    auto r = probe->next();
    ASSERT_TRUE(r);
    ASSERT_EQ(r->msg.as<test::Ping>()->seq(), i);
  }
}

TEST_F(Entities, AnIdleEntityIsPassivatedAndItsNextMessageStartsAFreshOne) {
  EXPECT_EQ(count_of("idle"), 1u);
  EXPECT_EQ(count_of("busy"), 1u);
  timers->advance(6s);
  EXPECT_EQ(count_of("busy"), 2u);  // busy is used again, idle is not
  timers->advance(6s);              // idle for 12 s > 10 s; busy for 6 s
  // The tick is in the region's mailbox before this message: it finds "idle" passivating (or
  // gone) and starts a fresh activation.
  EXPECT_EQ(count_of("idle"), 1u) << "a fresh activation: state starts over";
  EXPECT_EQ(sharding->stats().passivations, 1u);
  EXPECT_EQ(count_of("busy"), 3u) << "not passivated";
  EXPECT_EQ(log.activations("idle"), 2);
}

TEST_F(Entities, MessagesDuringARequestedPassivationGoToTheNextActivationInOrder) {
  EXPECT_EQ(count_of("p"), 1u);
  sharding->tell("counter", "p", cmd("passivate"));
  for (std::uint64_t i = 1; i <= 100; ++i) sharding->tell("counter", "p", ping(i), probe->ref());
  for (std::uint64_t i = 1; i <= 100; ++i) {
    auto r = probe->next();
    ASSERT_TRUE(r);
    ASSERT_EQ(r->msg.as<test::Ping>()->seq(), i);
  }
  // The entity's Passivate reached the region before this ask (it was sent while the entity
  // handled "passivate", before the first ping came back): once the ask is answered, the
  // region has handled it. (The pings may all have reached the first activation before.)
  auto after = sharding->ask("counter", "p", cmd("count"), 10s).get();
  ASSERT_TRUE(after);
  EXPECT_EQ(sharding->stats().passivations, 1u);
  EXPECT_EQ(log.activations("p"), 2) << "the ask found it passivating and started the next one";
}

TEST_F(Entities, AnUnknownTypeAndBadIdsAreAnsweredWithEntityErrorAndCounted) {
  sharding->tell("nope", "1", cmd("x"), probe->ref());
  auto r = probe->next();
  ASSERT_TRUE(r);
  ASSERT_TRUE(r->msg.is<EntityError>());
  EXPECT_NE(r->msg.as<EntityError>()->reason()->str().find("unknown entity type"), std::string::npos);
  sharding->tell("counter", "", cmd("x"), probe->ref());
  sharding->tell("counter", std::string(300, 'a'), cmd("x"), probe->ref());
  for (int i = 0; i < 2; ++i) {
    auto e = probe->next();
    ASSERT_TRUE(e);
    EXPECT_TRUE(e->msg.is<EntityError>());
  }
  EXPECT_EQ(sharding->stats().unknown_type, 1u);
  EXPECT_EQ(sharding->stats().bad_id, 2u);
  EXPECT_EQ(sharding->stats().activations, 0u);
  // An ask to an unknown type gets the EntityError as its reply, not a timeout.
  auto a = sharding->ask("nope", "1", cmd("x"), 5s).get();
  ASSERT_TRUE(a.ok());
  EXPECT_TRUE(a->is<EntityError>());
}

// An id within max_id_bytes may still be too long for an actor name once its unsafe bytes are
// escaped (three characters each): such an entity gets a hashed name, and works like any other,
// passivation (found again by its name) included.
TEST_F(Entities, AnIdTooLongForAnActorNameOnceEscapedStillWorks) {
  std::string accented;
  for (int i = 0; i < 100; ++i) accented += "\xc3\xa9";  // 200 bytes, 600 characters escaped
  for (const std::string& id : {std::string(256, 'a'), accented}) {
    auto r = sharding->ask("counter", id, cmd("id"), 5s).get();
    ASSERT_TRUE(r.ok()) << r.error().message();
    ASSERT_TRUE(r->is<test::Text>()) << "an EntityError?";
    EXPECT_EQ(r->as<test::Text>()->value()->str(), id);
    EXPECT_EQ(count_of(id), 2u) << "the same activation";
    sharding->tell("counter", id, cmd("passivate"));
    // The first count may still reach the passivating activation; the entity's Passivate
    // reached the region before that answer did, so the second finds it gone or going.
    count_of(id);
    count_of(id);
    EXPECT_EQ(log.activations(id), 2) << "passivated (its Passivate found it by its hashed name), then a fresh one";
  }
  EXPECT_EQ(sharding->stats().passivations, 2u);
  EXPECT_EQ(sharding->stats().bad_id, 0u);
}

// An entity whose constructor throws: its message is answered with an EntityError and counted,
// and the region (with every other entity's state) carries on.
TEST_F(Entities, AnEntityThatCannotStartIsRefusedAndTheRegionCarriesOn) {
  EntitySettings s;
  s.type = "fragile";
  int flaky_tries = 0;
  sharding->start(s, [this, &flaky_tries](ActorContext& ctx, SpawnOptions o, const std::string& id) {
    if (id == "bad") throw std::runtime_error("no such account");
    if (id == "flaky" && flaky_tries++ == 0) throw std::runtime_error("its store is not up yet");
    return ctx.spawn<Counter>(std::move(o), id, &log);
  });
  EXPECT_EQ(count_of("keep"), 1u);
  auto good = sharding->ask("fragile", "good", cmd("count"), 5s).get();
  ASSERT_TRUE(good.ok());
  EXPECT_EQ(good->as<test::Cmd>()->n(), 1u);
  auto bad = sharding->ask("fragile", "bad", cmd("count"), 5s).get();
  ASSERT_TRUE(bad.ok()) << "answered, not timed out";
  ASSERT_TRUE(bad->is<EntityError>());
  EXPECT_NE(bad->as<EntityError>()->reason()->str().find("could not be started"), std::string::npos);
  EXPECT_EQ(sharding->stats().start_failed, 1u);
  auto again = sharding->ask("fragile", "good", cmd("count"), 5s).get();
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->as<test::Cmd>()->n(), 2u) << "the fragile region kept its entities";
  EXPECT_EQ(count_of("keep"), 2u);
  // A keyed ask whose entity could not start: the refusal is not kept as the key's answer, so
  // the same key's retry starts it.
  AskOptions keyed;
  keyed.idempotency_key = "first-try";
  keyed.timeout = 5s;
  auto failed = sharding->ask("fragile", "flaky", cmd("count"), keyed).get();
  ASSERT_TRUE(failed.ok());
  ASSERT_TRUE(failed->is<EntityError>());
  auto retried = sharding->ask("fragile", "flaky", cmd("count"), keyed).get();
  ASSERT_TRUE(retried.ok());
  ASSERT_TRUE(retried->is<test::Cmd>()) << "the failed start was cached as the key's reply";
  EXPECT_EQ(retried->as<test::Cmd>()->n(), 1u);
}

TEST_F(Entities, BadSettingsAndADuplicateTypeAreRefused) {
  EntitySettings s;
  s.type = "";
  EXPECT_THROW(sharding->start(s, [](ActorContext&, SpawnOptions, const std::string&) { return ActorRef(); }),
               std::invalid_argument);
  s.type = "counter";
  EXPECT_THROW(sharding->start(s, [](ActorContext&, SpawnOptions, const std::string&) { return ActorRef(); }),
               std::invalid_argument);
  s.type = "x";
  s.num_shards = 0;
  EXPECT_THROW(sharding->start(s, [](ActorContext&, SpawnOptions, const std::string&) { return ActorRef(); }),
               std::invalid_argument);
}

TEST(EntityNames, OnlySafeBytesSurviveUnescaped) {
  EXPECT_EQ(entity_child_name("user-42_a.b"), "user-42_a.b");
  EXPECT_EQ(entity_child_name("a/b"), "a%2Fb");
  EXPECT_EQ(entity_child_name("$x"), "%24x");
  EXPECT_EQ(entity_child_name("a%b"), "a%25b");
  for (std::string id : {"user-1", "a/b", "$x", "a%b", "é ü\n", "%", "100%"}) {
    EXPECT_EQ(entity_id_of_name(entity_child_name(id)), id);
  }
  // Too long once escaped: a hashed name of the longest an actor name may be, not inverted.
  const std::string long_id(90, '/');
  const auto name = entity_child_name(long_id);
  EXPECT_EQ(name.size(), 255u);
  EXPECT_EQ(name.front(), '~');
  EXPECT_EQ(entity_id_of_name(name), "");
  EXPECT_NE(entity_child_name(long_id + "/"), name);
}

}  // namespace
}  // namespace troupe::sharding
