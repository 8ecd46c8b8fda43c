// The cluster-aware group router across three in-process nodes (real UDP gossip, real ZeroMQ
// remoting with CURVE on loopback): it routes to the same path on every up member and follows
// membership as members join, leave and vanish.

#include <gtest/gtest.h>

#include <set>

#include <troupe/node/node.hpp>
#include <troupe/sharding/cluster_router.hpp>

#include "cluster_nodes.hpp"
#include "testkit.hpp"

namespace troupe {
namespace {

using namespace std::chrono_literals;

/// Answers every message with Text{its node's name}.
class Worker final : public Actor {
 public:
  void receive(const Message&) override {
    const auto& name = context().system().node_id();
    sender().tell(Message::build<test::Text>([&](auto& b) { return test::CreateTextDirect(b, name.c_str()); }), self());
  }
};

using testkit::ClusterKeys;
using testkit::eventually;

std::unique_ptr<node::Node> start(const ClusterKeys& k, int i, const std::string& seed,
                                  std::vector<std::string> roles = {}) {
  auto n = testkit::start_cluster_node(k, i, seed, {}, "127.0.0.1", std::move(roles));
  n->system().spawn<Worker>(SpawnOptions{.name = "worker"});
  return n;
}

/// Asks through the router until `names` answered (or `limit` asks); returns who answered.
std::set<std::string> answers(const ActorRef& router, int limit) {
  std::set<std::string> got;
  for (int i = 0; i < limit; ++i) {
    auto r = router.ask(testkit::cmd("who"), 5s).get();
    if (r && r->is<test::Text>()) got.insert(r->as<test::Text>()->value()->str());
  }
  return got;
}

TEST(ClusterGroup, RoutesToEveryUpMemberAndFollowsJoinsLeavesAndLosses) {
  ClusterKeys k;
  auto n0 = start(k, 0, "");
  const auto seed = n0->membership()->endpoint().to_string();
  auto n1 = start(k, 1, seed);
  auto n2 = start(k, 2, seed);
  sharding::ClusterGroupOptions opt;
  opt.path = "/user/worker";
  sharding::ClusterGroup group(n0->system(), n0->transport(), *n0->membership(), opt);
  ASSERT_TRUE(eventually([&] { return group.routees().size() == 3; })) << group.routees().size() << " routees";
  EXPECT_EQ(answers(group.ref(), 9), (std::set<std::string>{"n0", "n1", "n2"})) << "round robin over all three";

  // A member that joins later is added.
  auto n3 = start(k, 3, seed);
  ASSERT_TRUE(eventually([&] { return group.routees().size() == 4; }));
  EXPECT_EQ(answers(group.ref(), 12).count("n3"), 1u);

  // A member that leaves gracefully is taken out before it goes.
  n3->leave_and_stop(20s);
  ASSERT_TRUE(eventually([&] { return group.routees().size() == 3; }));
  EXPECT_EQ(answers(group.ref(), 9), (std::set<std::string>{"n0", "n1", "n2"}));

  // A member that vanishes (no leave) is taken out once unreachable, before it is downed.
  n2->stop();
  ASSERT_TRUE(eventually([&] { return group.routees().size() == 2; }));
  EXPECT_EQ(answers(group.ref(), 6), (std::set<std::string>{"n0", "n1"}));
  EXPECT_EQ(group.stats().no_routee, 0u);
}

TEST(ClusterGroup, WithARoleRoutesOnlyToMembersThatHaveIt) {
  ClusterKeys k;
  auto n0 = start(k, 0, "");
  const auto seed = n0->membership()->endpoint().to_string();
  auto n1 = start(k, 1, seed, {"worker"});
  auto n2 = start(k, 2, seed, {"frontend"});
  auto n3 = start(k, 3, seed, {"frontend", "worker"});
  auto member = [&](const std::string& name) -> std::optional<membership::MemberInfo> {
    for (auto& m : n0->membership()->members()) {
      if (m.name == name) return m;
    }
    return std::nullopt;
  };
  ASSERT_TRUE(eventually([&] {
    auto m = member("n3");
    return n0->membership()->members().size() == 4 && m && m->status == membership::MemberStatus::up;
  }));
  EXPECT_EQ(member("n3")->roles, (std::vector<std::string>{"frontend", "worker"}));
  sharding::ClusterGroupOptions opt;
  opt.path = "/user/worker";
  opt.role = "worker";
  sharding::ClusterGroup group(n0->system(), n0->transport(), *n0->membership(), opt);
  ASSERT_TRUE(eventually([&] { return group.routees().size() == 2; })) << group.routees().size() << " routees";
  EXPECT_EQ(answers(group.ref(), 8), (std::set<std::string>{"n1", "n3"}));
}

TEST(ClusterGroup, WithoutSelfRoutesOnlyToOtherMembers) {
  ClusterKeys k;
  auto n0 = start(k, 0, "");
  const auto seed = n0->membership()->endpoint().to_string();
  auto n1 = start(k, 1, seed);
  sharding::ClusterGroupOptions opt;
  opt.path = "/user/worker";
  opt.include_self = false;
  opt.router.kind = RoutingKind::broadcast;
  sharding::ClusterGroup group(n0->system(), n0->transport(), *n0->membership(), opt);
  ASSERT_TRUE(eventually([&] { return group.routees().size() == 1; }));
  EXPECT_EQ(answers(group.ref(), 3), (std::set<std::string>{"n1"}));
}

}  // namespace
}  // namespace troupe
