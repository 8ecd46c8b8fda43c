// MembershipService: the protocol on real UDP sockets (loopback), sealed with the keyring.

#include <troupe/membership/service.hpp>

#include <gtest/gtest.h>

#include <condition_variable>
#include <mutex>
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
}

}  // namespace
}  // namespace troupe::membership
