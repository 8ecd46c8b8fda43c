// MembershipService: the protocol on real UDP sockets (loopback), sealed with the keyring.

#include <troupe/membership/service.hpp>

#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <stdexcept>
#include <thread>

#include <troupe/serialization/log.hpp>

namespace troupe::membership {
namespace {

using namespace std::chrono_literals;

/// Collects a service's events; the test waits for one that matches.
struct EventLog {
  void attach(MembershipService& s) {
    s.subscribe([this](const MembershipEvent& e) {
      std::lock_guard lk(mu);
      events.push_back(e);
      cv.notify_all();
    });
  }
  bool wait_for(const std::function<bool(const MembershipEvent&)>& pred, std::chrono::milliseconds limit = 20s) {
    std::unique_lock lk(mu);
    return cv.wait_for(lk, limit, [&] { return std::any_of(events.begin(), events.end(), pred); });
  }
  std::mutex mu;
  std::condition_variable cv;
  std::vector<MembershipEvent> events;
};

struct Cluster : ::testing::Test {
  MembershipServiceConfig config(const std::string& name, std::vector<std::string> seeds,
                                 std::shared_ptr<Keyring> ring = nullptr, std::string cluster = "test") {
    MembershipServiceConfig c;
    c.membership = MembershipConfig::local();
    c.membership.cluster_name = std::move(cluster);
    c.node_name = name;
    c.port = 0;
    c.seeds = std::move(seeds);
    c.keyring = ring ? ring : keyring;
    return c;
  }
  std::unique_ptr<MembershipService> start(MembershipServiceConfig c, EventLog* log = nullptr) {
    auto logger = make_node_logger(c.node_name);
    auto s = MembershipService::start(std::move(c), logger).value();
    if (log) log->attach(*s);
    return s;
  }
  std::shared_ptr<Keyring> keyring = std::make_shared<Keyring>(generate_key().value());
};

auto is(EventKind k, const std::string& name) {
  return [k, name](const MembershipEvent& e) { return e.kind == k && e.member.name == name; };
}

TEST_F(Cluster, ThreeNodesFormAndAGracefulLeaveEndsRemoved) {
  EventLog la, lb, lc;
  auto a = start(config("a", {}), &la);
  const auto seed = "127.0.0.1:" + std::to_string(a->endpoint().port);
  auto b = start(config("b", {seed}), &lb);
  auto c = start(config("c", {seed}), &lc);
  ASSERT_TRUE(la.wait_for(is(EventKind::up, "b")));
  ASSERT_TRUE(la.wait_for(is(EventKind::up, "c")));
  ASSERT_TRUE(lb.wait_for(is(EventKind::up, "c")));
  ASSERT_TRUE(lc.wait_for(is(EventKind::up, "b")));
  EXPECT_EQ(a->members().size(), 3u);
  EXPECT_EQ(b->leader()->name, "a");
  EXPECT_TRUE(c->leave_and_wait(20s));
  ASSERT_TRUE(la.wait_for(is(EventKind::removed, "c")));
  ASSERT_TRUE(lb.wait_for(is(EventKind::removed, "c")));
  EXPECT_EQ(a->members().size(), 2u);
  EXPECT_EQ(a->transport_stats().dropped_inbound(), 0u);
}

// The program's subscriber throws: those subscribed after it (the sharding layer, which fences
// its shards on self_downed) still hear of every event.
TEST_F(Cluster, ASubscriberThatThrowsKeepsNoLaterSubscriberFromItsEvents) {
  auto a = start(config("a", {}));
  std::atomic<int> thrown{0};
  for (int k = 0; k < 2; ++k) {
    a->subscribe([&](const MembershipEvent&) {
      ++thrown;
      throw std::runtime_error("a subscriber's bug");
    });
  }
  EventLog la;
  la.attach(*a);
  auto b = start(config("b", {"127.0.0.1:" + std::to_string(a->endpoint().port)}));
  EXPECT_TRUE(la.wait_for(is(EventKind::up, "b"))) << "the subscriber after the one that threw heard nothing";
  EXPECT_GT(thrown.load(), 0);
  // Each failure counted: once a has stopped (its I/O thread joined) no event comes any more.
  a->stop();
  EXPECT_EQ(a->stats().subscriber_failures, static_cast<std::uint64_t>(thrown.load())) << "not each failure counted";
}

// stop() from a subscriber (on the I/O thread; on join_refused, say): the I/O thread cannot join
// itself (or wait for a re-resolver whose calls wait for it), so the stop completes after the
// event. The others see the node go, and a stop() from another thread waits for the one begun.
TEST_F(Cluster, StopFromASubscriberCompletesAfterTheEvent) {
  EventLog lb;
  auto a = start(config("a", {}));
  std::atomic<bool> asked{false};
  a->subscribe([&](const MembershipEvent& e) {
    if (e.kind == EventKind::up && e.member.name == "b" && !asked.exchange(true)) a->stop();
  });
  auto b = start(config("b", {"127.0.0.1:" + std::to_string(a->endpoint().port)}), &lb);
  ASSERT_TRUE(lb.wait_for([](const MembershipEvent& e) { return e.member.name == "a" && e.kind == EventKind::unreachable; }))
      << "a never went quiet";
  EXPECT_TRUE(asked.load());
  a->stop();
  EXPECT_EQ(a->stats().subscriber_failures, 0u);
  EXPECT_EQ(a->members().size(), 2u) << "its view, read on this thread once stopped";
}

// A subscriber destroys the service (the program drops it on self_downed, say): on the I/O
// thread, which cannot wait for itself, so a thread of its own finishes the stop and frees it.
// (It ended the program: a thread still joinable was destroyed.)
TEST_F(Cluster, ASubscriberMayDestroyTheService) {
  EventLog lb;
  std::unique_ptr<MembershipService> a = start(config("a", {}));
  const auto seed = "127.0.0.1:" + std::to_string(a->endpoint().port);
  std::atomic<bool> destroyed{false};
  auto* owner = &a;
  a->subscribe([owner, &destroyed](const MembershipEvent& e) {
    if (e.kind == EventKind::up && e.member.name == "b" && !destroyed.exchange(true)) owner->reset();
  });
  auto b = start(config("b", {seed}), &lb);
  ASSERT_TRUE(lb.wait_for([](const MembershipEvent& e) { return e.member.name == "a" && e.kind == EventKind::unreachable; }))
      << "a never went quiet";
  EXPECT_TRUE(destroyed.load());
}

TEST_F(Cluster, AStoppedProcessWhosePortRefusesIsDownedWithoutWaitingStableAfter) {
  EventLog la;
  auto a = start(config("a", {}), &la);
  const auto seed = "127.0.0.1:" + std::to_string(a->endpoint().port);
  auto b = start(config("b", {seed}), &la);
  auto c = start(config("c", {seed}));
  ASSERT_TRUE(la.wait_for(is(EventKind::up, "b")));
  ASSERT_TRUE(la.wait_for(is(EventKind::up, "c")));
  const auto stopped_at = std::chrono::steady_clock::now();
  c->stop();  // its socket is closed: the kernel refuses datagrams to its port
  ASSERT_TRUE(la.wait_for(is(EventKind::downed, "c")));
  const auto took = std::chrono::steady_clock::now() - stopped_at;
  EXPECT_LT(took, a->config().stable_after) << "took " << std::chrono::duration<double>(took).count() << " s";
  bool why = false;
  for (const auto& d : a->history("c")) why |= d.what.find("its gossip port refuses") != std::string::npos;
  EXPECT_TRUE(why);
  EXPECT_GE(a->transport_stats().port_unreachable, 2u);
  EXPECT_FALSE(b->self().status == MemberStatus::down);
}

TEST_F(Cluster, AnotherClusterNameIsRefusedWithAClearErrorOnBothSides) {
  EventLog la, lx;
  auto a = start(config("a", {}), &la);
  const auto seed = "127.0.0.1:" + std::to_string(a->endpoint().port);
  auto x = start(config("x", {seed}, keyring, "other"), &lx);
  ASSERT_TRUE(lx.wait_for([](const MembershipEvent& e) {
    return e.kind == EventKind::join_refused && e.detail.find("cluster name mismatch") != std::string::npos &&
           e.detail.find("'test'") != std::string::npos;
  }));
  EXPECT_GE(a->transport_stats().dropped_by(SealErrc::cluster_mismatch), 1u);
  EXPECT_EQ(a->members().size(), 1u);
}

TEST_F(Cluster, ANodeWithoutTheKeyCannotJoinAndIsCounted) {
  auto a = start(config("a", {}));
  const auto seed = "127.0.0.1:" + std::to_string(a->endpoint().port);
  auto other_ring = std::make_shared<Keyring>(generate_key().value());
  auto x = start(config("x", {seed}, other_ring));
  const auto end = std::chrono::steady_clock::now() + 10s;
  while (a->transport_stats().dropped_by(SealErrc::unknown_key) == 0 && std::chrono::steady_clock::now() < end) {
    std::this_thread::sleep_for(5ms);
  }
  EXPECT_GE(a->transport_stats().dropped_by(SealErrc::unknown_key), 1u);
  EXPECT_EQ(a->members().size(), 1u);
  EXPECT_EQ(x->members().size(), 1u);
}

TEST_F(Cluster, KeyRotationWhileRunningIsConfirmedStepByStepByEveryMember) {
  EventLog la, lb, lc;
  auto a = start(config("a", {}), &la);
  const auto seed = "127.0.0.1:" + std::to_string(a->endpoint().port);
  // Each node has its own keyring object holding the same key, as separate processes would.
  auto ring_b = std::make_shared<Keyring>(keyring->primary());
  auto ring_c = std::make_shared<Keyring>(keyring->primary());
  auto b = start(config("b", {seed}, ring_b), &lb);
  auto c = start(config("c", {seed}, ring_c), &lc);
  ASSERT_TRUE(la.wait_for(is(EventKind::up, "b")));
  ASSERT_TRUE(la.wait_for(is(EventKind::up, "c")));
  const Key old_key = keyring->primary();
  const Key new_key = generate_key().value();
  auto steps = a->rotate_key(new_key, 10s);
  ASSERT_EQ(steps.size(), 3u);
  for (const auto& s : steps) {
    EXPECT_TRUE(s.ok()) << to_string(s.op) << ": " << s.failed.size() << " failed, " << s.missing.size() << " missing";
    EXPECT_EQ(s.confirmed.size(), 3u) << to_string(s.op);
  }
  for (const auto* r : {keyring.get(), ring_b.get(), ring_c.get()}) {
    EXPECT_EQ(r->primary(), new_key);
    EXPECT_EQ(r->size(), 1u) << "the old key is gone everywhere";
  }
  // A node holding only the new key joins; one holding only the old key cannot.
  EventLog ld;
  auto d = start(config("d", {seed}, std::make_shared<Keyring>(new_key)), &ld);
  ASSERT_TRUE(la.wait_for(is(EventKind::up, "d")));
  ASSERT_TRUE(lb.wait_for(is(EventKind::up, "d")));
  auto stale = start(config("stale", {seed}, std::make_shared<Keyring>(old_key)));
  const auto end = std::chrono::steady_clock::now() + 10s;
  while (a->transport_stats().dropped_by(SealErrc::unknown_key) == 0 && std::chrono::steady_clock::now() < end) {
    std::this_thread::sleep_for(5ms);
  }
  EXPECT_GE(a->transport_stats().dropped_by(SealErrc::unknown_key), 1u);
  EXPECT_FALSE(a->history("a").empty());
  for (auto* l : {&la, &lb, &lc}) {
    std::lock_guard lk(l->mu);
    for (const auto& e : l->events) EXPECT_NE(e.kind, EventKind::downed) << "nobody was lost during the rotation";
  }
}

TEST_F(Cluster, AKeyOperationNamesTheMembersThatRefuseIt) {
  EventLog la;
  auto a = start(config("a", {}), &la);
  const auto seed = "127.0.0.1:" + std::to_string(a->endpoint().port);
  auto ring_b = std::make_shared<Keyring>(keyring->primary());
  auto b = start(config("b", {seed}, ring_b));
  ASSERT_TRUE(la.wait_for(is(EventKind::up, "b")));
  // Using a key nobody installed: refused here and on b, each with its reason.
  auto r = a->key_operation(KeyOp::use, generate_key().value(), 10s);
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.failed.size(), 2u);
  EXPECT_TRUE(r.missing.empty());
  // Removing the primary is refused too.
  auto r2 = a->key_operation(KeyOp::remove, keyring->primary(), 10s);
  EXPECT_EQ(r2.failed.size(), 2u);
}

TEST_F(Cluster, ASeedGivenByNameIsResolved) {
  EventLog la;
  auto a = start(config("a", {}), &la);
  auto b = start(config("b", {"localhost:" + std::to_string(a->endpoint().port)}));
  ASSERT_TRUE(la.wait_for(is(EventKind::up, "b")));
}

TEST_F(Cluster, BadConfigurationNamesTheField) {
  std::string why;
  auto c = config("a", {"no-port"});
  EXPECT_FALSE(MembershipService::start(c, make_node_logger("a"), &why).ok());
  EXPECT_TRUE(why.starts_with("seeds")) << why;
  c = config("", {});
  EXPECT_FALSE(MembershipService::start(c, make_node_logger("a"), &why).ok());
  EXPECT_TRUE(why.starts_with("node_name")) << why;
  c = config("a", {});
  c.keyring = nullptr;
  EXPECT_FALSE(MembershipService::start(c, make_node_logger("a"), &why).ok());
  EXPECT_TRUE(why.starts_with("keyring")) << why;
  c = config("a", {});
  c.membership.probe_timeout = milliseconds(0);
  EXPECT_FALSE(MembershipService::start(c, make_node_logger("a"), &why).ok());
  EXPECT_TRUE(why.starts_with("probe_timeout")) << why;
  c = config("a", {});
  c.bind_host = "0.0.0.0";
  EXPECT_FALSE(MembershipService::start(c, make_node_logger("a"), &why).ok());
  EXPECT_TRUE(why.starts_with("advertise_host")) << why;
  // A name or host every other member would reject in this node's record: refused here, rather
  // than a node that joins and is never admitted.
  c = config("n\xc5\x93ud-1", {});
  EXPECT_FALSE(MembershipService::start(c, make_node_logger("a"), &why).ok());
  EXPECT_TRUE(why.starts_with("node_name")) << why;
  c = config("a", {});
  c.advertise_host = "fe80::1%lo";
  EXPECT_FALSE(MembershipService::start(c, make_node_logger("a"), &why).ok());
  EXPECT_TRUE(why.starts_with("advertise_host")) << why;
  // Roles each valid, but together too many bytes for a gossip datagram: no member could learn
  // of this node (its joins would go out empty).
  c = config("a", {});
  c.roles = std::vector<std::string>(kMaxRoles, std::string(64, 'r'));
  EXPECT_FALSE(MembershipService::start(c, make_node_logger("a"), &why).ok());
  EXPECT_TRUE(why.starts_with("roles")) << why;
  EXPECT_NE(why.find("mtu"), std::string::npos) << why;
  c.roles.resize(4);
  EXPECT_TRUE(MembershipService::start(c, make_node_logger("a"), &why).ok()) << why;
}

}  // namespace
}  // namespace troupe::membership
