// Cluster sharding between real troupe-node processes on loopback (real UDP gossip, ZeroMQ with
// CURVE): three nodes host the built-in test entity, this test process is a proxy-only member
// that routes to them. Steady routing; a join moves exactly the newcomer's share with entity
// state; SIGTERM hands every shard off (state intact) and exits 0; SIGKILL of a node and of the
// coordinator's node (entities come back on survivors; shards that do not move keep answering).
// Every node writes an activation log; the checker fails on two live activations of one entity,
// counting a killed node's activations as ended when it died.

#include <signal.h>
#include <sys/wait.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include <troupe/membership/keyring.hpp>
#include <troupe/node/node.hpp>
#include <troupe/remoting/security.hpp>

#include "activation_check.hpp"
#include "cluster_nodes.hpp"
#include "node_generated.h"
#include "node_process.hpp"
#include "process_cluster.hpp"
#include "testkit.hpp"

namespace troupe {
namespace {

using namespace std::chrono_literals;
using testkit::TempDir;
using Proc = testkit::NodeProcess;

constexpr std::uint32_t kShards = 64;
const std::string kType = "account";

std::int64_t mono_now() { return std::chrono::steady_clock::now().time_since_epoch().count(); }

using testkit::eventually;

struct ShardProcs : ::testing::Test {
  ~ShardProcs() override {
    if (client) client->stop();
  }
  static std::string name(int i) { return testkit::ProcessClusterFiles::name(i); }
  std::string log_of(int i) const { return (files.dir.path / ("activations-" + name(i))).string(); }

  void start_node(int i) {
    auto a = files.node_args(i, 2, seed);
    a.insert(a.end(), {"--entity", kType + ":" + std::to_string(kShards), "--activation-log", log_of(i)});
    nodes[i] = std::make_unique<Proc>(a);
    if (seed.empty()) seed = nodes[i]->gossip;
  }

  /// This test process as a member that hosts nothing and routes to the type.
  void start_client() {
    auto o = files.member_options(seed);
    node::NodeOptions::ShardingOptions so;
    so.proxies.emplace_back(kType, kShards);
    o.sharding = so;
    client = node::Node::start(std::move(o)).value();
  }

  void start_cluster(int n) {
    for (int i = 0; i < n; ++i) start_node(i);
    start_client();
  }

  /// The client sees `live` nodes up and every shard placed (none moving) on exactly those
  /// nodes, each holding its share.
  bool settled(const std::vector<int>& live) {
    std::size_t up = 0;
    for (const auto& m : client->membership()->members()) {
      for (int i : live) up += m.uid == nodes[i]->address.uid && m.status == membership::MemberStatus::up;
    }
    if (up != live.size()) return false;
    const auto t = client->sharding()->shards(kType);
    if (t.size() != kShards) return false;
    std::map<std::string, std::size_t> per_region;
    for (const auto& s : t) {
      if (s.moving || s.region.empty()) return false;
      ++per_region[s.region];
    }
    if (per_region.size() != live.size()) return false;
    for (int i : live) {
      auto it = per_region.find(nodes[i]->address_str + "/system/sharding-" + kType);
      if (it == per_region.end() || it->second < kShards / live.size()) return false;
    }
    return true;
  }

  void add(const std::string& id, std::uint64_t n) {
    client->sharding()->tell(kType, id, Message::build<node::EntityAdd>([&](auto& b) { return node::CreateEntityAdd(b, n); }));
  }
  /// (answering node, count); ("", 0) when the ask failed.
  std::pair<std::string, std::uint64_t> get(const std::string& id, std::chrono::milliseconds timeout = 5s) {
    auto r = client->sharding()->ask(kType, id, Message::build<node::EntityGet>([](auto& b) { return node::CreateEntityGet(b); }),
                                     timeout).get();
    if (!r || !r->is<node::EntityValue>()) return {"", 0};
    const auto* v = r->as<node::EntityValue>();
    return {v->node()->str(), v->count()};
  }
  std::string region_of(int i) const { return nodes[i]->address_str + "/system/sharding-" + kType; }

  void sigkill(int i) {
    nodes[i]->stop(SIGKILL);
    killed_at[name(i)] = mono_now();
  }

  /// Reads every node's activation log; fails the test on overlapping activations of one entity.
  /// Returns the number of activations per entity id.
  std::map<std::string, int> check_activations() {
    struct Ev {
      std::int64_t t;
      bool start;
      std::string node, id;
      std::uint64_t inc;
    };
    std::vector<Ev> evs;
    std::map<std::pair<std::string, std::uint64_t>, std::pair<std::string, bool>> open;  // (node, inc) -> id, live
    for (int i = 0; i < 5; ++i) {
      std::ifstream in(log_of(i));
      for (std::string line; std::getline(in, line);) {
        std::istringstream ls(line);
        Ev e;
        std::string what, type;
        ls >> what >> e.node >> type >> e.id >> e.inc >> e.t;
        if (!ls) {
          ADD_FAILURE() << "bad activation log line: " << line;
          continue;
        }
        e.start = what == "start";
        evs.push_back(e);
        if (e.start) open[{e.node, e.inc}] = {e.id, true};
        else open.erase({e.node, e.inc});
      }
    }
    // A killed node's activations ended when it died.
    for (const auto& [key, v] : open) {
      auto k = killed_at.find(key.first);
      if (k != killed_at.end()) evs.push_back({k->second, false, key.first, v.first, key.second});
    }
    std::stable_sort(evs.begin(), evs.end(), [](const Ev& a, const Ev& b) { return a.t < b.t; });
    std::vector<testkit::ActivationRecord> records;
    for (const auto& e : evs) records.push_back({e.node, e.id, e.start});
    return testkit::check_single_activation(records);
  }

  testkit::ProcessClusterFiles files{5};
  std::unique_ptr<Proc> nodes[5];
  std::unique_ptr<node::Node> client;
  std::string seed;
  std::map<std::string, std::int64_t> killed_at;
};

std::string id_of(int k) { return "acct-" + std::to_string(k); }

TEST_F(ShardProcs, RoutesToOneActivationPerEntityAndRecoversFromASigkill) {
  start_cluster(3);
  ASSERT_TRUE(eventually([&] { return settled({0, 1, 2}); }, 60s));
  std::set<std::string> on_n2, answered;
  for (int k = 0; k < 90; ++k) add(id_of(k), 2);
  for (int k = 0; k < 90; ++k) {
    auto [node, count] = get(id_of(k));
    ASSERT_EQ(count, 2u) << id_of(k);
    answered.insert(node);
    if (node == "n2") on_n2.insert(id_of(k));
  }
  EXPECT_EQ(answered, (std::set<std::string>{"n0", "n1", "n2"}));
  sigkill(2);
  ASSERT_TRUE(eventually([&] { return settled({0, 1}); }, 60s)) << "n2's shards found new homes";
  for (int k = 0; k < 90; ++k) {
    auto [node, count] = get(id_of(k));
    EXPECT_TRUE(node == "n0" || node == "n1") << id_of(k) << ": '" << node << "'";
    EXPECT_EQ(count, on_n2.count(id_of(k)) ? 0u : 2u) << id_of(k) << " (state dies with a crash)";
  }
  for (const auto& [id, n] : check_activations()) EXPECT_EQ(n, on_n2.count(id) ? 2 : 1) << id;
}

TEST_F(ShardProcs, JoinMovesExactlyTheNewcomersShareAndSigtermHandsEverythingOff) {
  start_cluster(3);
  ASSERT_TRUE(eventually([&] { return settled({0, 1, 2}); }, 60s));
  for (int k = 0; k < 90; ++k) add(id_of(k), 3);
  for (int k = 0; k < 90; ++k) ASSERT_EQ(get(id_of(k)).second, 3u) << id_of(k);
  const auto before = client->sharding()->shards(kType);

  start_node(3);
  ASSERT_TRUE(eventually([&] { return settled({0, 1, 2, 3}); }, 60s));
  const auto after = client->sharding()->shards(kType);
  int moved = 0;
  for (std::size_t s = 0; s < kShards; ++s) {
    if (before[s].region == after[s].region) continue;
    ++moved;
    EXPECT_EQ(after[s].region, region_of(3)) << "shard " << s << " moved between old members";
  }
  EXPECT_EQ(moved, static_cast<int>(kShards / 4));
  for (int k = 0; k < 90; ++k) EXPECT_EQ(get(id_of(k)).second, 3u) << id_of(k) << " after the join";

  // SIGTERM: n1 hands its shards off (state travels), leaves and exits 0.
  const int status = nodes[1]->stop(SIGTERM);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
  ASSERT_TRUE(eventually([&] { return settled({0, 2, 3}); }, 60s));
  for (int k = 0; k < 90; ++k) {
    auto [node, count] = get(id_of(k));
    EXPECT_EQ(count, 3u) << id_of(k) << " after n1 left (answered by '" << node << "')";
    EXPECT_NE(node, "n1");
  }
  check_activations();
}

TEST_F(ShardProcs, CoordinatorSigkillStallsNoShardThatStays) {
  start_cluster(3);
  ASSERT_TRUE(eventually([&] { return settled({0, 1, 2}); }, 60s));
  EXPECT_EQ(client->sharding()->coordinator(), nodes[0]->address.uid) << "the oldest member coordinates";
  std::vector<std::string> steady;
  for (int k = 0; k < 300 && steady.size() < 20; ++k) {
    auto [node, count] = get(id_of(k));
    if (node == "n1" || node == "n2") steady.push_back(id_of(k));
  }
  ASSERT_EQ(steady.size(), 20u);
  sigkill(0);
  int asked = 0, failed = 0;
  const auto until = std::chrono::steady_clock::now() + 60s;
  while (std::chrono::steady_clock::now() < until && !settled({1, 2})) {
    for (const auto& id : steady) {
      ++asked;
      failed += get(id, 1s).first.empty();
    }
  }
  ASSERT_TRUE(settled({1, 2}));
  EXPECT_GT(asked, 20);
  EXPECT_EQ(failed, 0) << "asks to shards that stayed failed while the coordinator moved";
  // The troupe-node processes carry the sharding role (this test's own member does not): the
  // coordinator is the oldest of them.
  std::vector<membership::MemberInfo> running_sharding;
  for (const auto& m : client->membership()->members()) {
    if (std::find(m.roles.begin(), m.roles.end(), sharding::kShardingRole) != m.roles.end()) running_sharding.push_back(m);
  }
  const auto oldest = membership::oldest_up(running_sharding);
  ASSERT_TRUE(oldest);
  EXPECT_EQ(client->sharding()->coordinator(), oldest->uid) << "the next oldest member running sharding coordinates";
  EXPECT_NE(oldest->uid, nodes[0]->address.uid);
  for (int k = 0; k < 60; ++k) EXPECT_FALSE(get(id_of(k)).first.empty()) << id_of(k);
  check_activations();
}

}  // namespace
}  // namespace troupe
