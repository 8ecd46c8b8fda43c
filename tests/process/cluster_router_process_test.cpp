// The cluster-aware group router in front of troupe-node processes on loopback (real UDP gossip,
// ZeroMQ with CURVE): this test process is a member that hosts no routee and routes to
// /user/sink on every up member with the role "worker" (troupe-node --role). A SIGKILLed node's
// routee leaves the group and the work goes on on the others; a node that starts later gets its
// share. Every node's sink says how many messages it received, so each share is counted where it
// arrived.

#include <signal.h>

#include <gtest/gtest.h>

#include <map>
#include <set>

#include <troupe/node/node.hpp>
#include <troupe/sharding/cluster_router.hpp>

#include "cluster_nodes.hpp"
#include "node_generated.h"
#include "node_process.hpp"
#include "process_cluster.hpp"

namespace troupe {
namespace {

using namespace std::chrono_literals;
using Proc = testkit::NodeProcess;

struct RouterProcs : ::testing::Test {
  ~RouterProcs() override {
    group.reset();
    if (client) client->stop();
  }

  void start_node(int i) {
    auto a = files.node_args(i, 1, seed);
    a.insert(a.end(), {"--test-actors", "--role", "worker"});
    nodes[i] = std::make_unique<Proc>(a);
    if (seed.empty()) seed = nodes[i]->gossip;
  }

  /// This process joins as a member and puts the router in front of /user/sink elsewhere.
  void start_client() {
    client = node::Node::start(files.member_options(seed)).value();
    sharding::ClusterGroupOptions opt;
    opt.path = "/user/sink";
    opt.include_self = false;  // the client hosts no sink
    opt.role = "worker";       // a flag of every troupe-node here, heard through gossip
    opt.router.kind = RoutingKind::round_robin;
    group = std::make_unique<sharding::ClusterGroup>(client->system(), client->transport(), *client->membership(), opt);
  }

  /// The group's routees, as the node uids they live on.
  std::set<std::uint64_t> routee_nodes() const {
    std::set<std::uint64_t> out;
    for (const auto& r : group->routees()) {
      auto a = remoting::parse_actor_address(r.path());
      if (a) out.insert(a->node.uid);
    }
    return out;
  }
  std::set<std::uint64_t> uids(std::initializer_list<int> is) const {
    std::set<std::uint64_t> out;
    for (int i : is) out.insert(nodes.at(i)->address.uid);
    return out;
  }

  /// Messages node i's sink has received so far.
  std::uint64_t sink_count(int i) {
    auto sink = client->transport().resolve(nodes.at(i)->address_str + "/user/sink");
    if (!sink) return ~0ull;
    auto r = sink->ask(Message::build<node::CountQuery>([](auto& b) { return node::CreateCountQuery(b); }), 10s).get();
    if (!r || !r->is<node::Count>()) return ~0ull;
    return r->as<node::Count>()->n();
  }

  /// Sends `n` messages through the router; returns how many each of `live` received of them
  /// (waiting until they add up: messages between two processes arrive in order, but later).
  std::map<int, std::uint64_t> send_and_count(std::uint64_t n, const std::vector<int>& live) {
    std::map<int, std::uint64_t> before;
    for (int i : live) before[i] = sink_count(i);
    for (std::uint64_t k = 0; k < n; ++k) {
      group->ref().tell(Message::build<node::Echo>([k](auto& b) { return node::CreateEcho(b, k); }));
    }
    std::map<int, std::uint64_t> got;
    testkit::eventually([&] {
      std::uint64_t sum = 0;
      for (int i : live) sum += (got[i] = sink_count(i) - before[i]);
      return sum >= n;
    });
    return got;
  }

  testkit::ProcessClusterFiles files{4};
  std::string seed;
  std::map<int, std::unique_ptr<Proc>> nodes;
  std::unique_ptr<node::Node> client;
  std::unique_ptr<sharding::ClusterGroup> group;
};

TEST_F(RouterProcs, ASigkilledNodesRouteeLeavesAndANewNodesRouteeJoins) {
  for (int i = 0; i < 3; ++i) start_node(i);
  start_client();
  ASSERT_TRUE(testkit::eventually([&] { return routee_nodes() == uids({0, 1, 2}); }, 30s))
      << group->routees().size() << " routees";
  // Round robin over three: exactly a third each.
  auto got = send_and_count(30, {0, 1, 2});
  EXPECT_EQ(got, (std::map<int, std::uint64_t>{{0, 10}, {1, 10}, {2, 10}}));

  // SIGKILL: the member becomes unreachable, then is downed; its routee leaves the group.
  nodes[2]->stop(SIGKILL);
  ASSERT_TRUE(testkit::eventually([&] { return routee_nodes() == uids({0, 1}); }, 30s))
      << group->routees().size() << " routees";
  // The work goes on on the others, nothing routed to the dead one.
  const auto dead_letters = client->system().stats().dead_letters;
  got = send_and_count(30, {0, 1});
  EXPECT_EQ(got, (std::map<int, std::uint64_t>{{0, 15}, {1, 15}}));
  EXPECT_EQ(client->system().stats().dead_letters, dead_letters);
  EXPECT_EQ(group->stats().no_routee, 0u);

  // A node that starts later joins the group and gets its share.
  start_node(3);
  ASSERT_TRUE(testkit::eventually([&] { return routee_nodes() == uids({0, 1, 3}); }, 30s))
      << group->routees().size() << " routees";
  got = send_and_count(30, {0, 1, 3});
  EXPECT_EQ(got, (std::map<int, std::uint64_t>{{0, 10}, {1, 10}, {3, 10}}));
}

}  // namespace
}  // namespace troupe
