// Cluster sharding across in-process nodes (real UDP gossip, real ZeroMQ remoting with CURVE on
// loopback): steady routing, a join that moves exactly the newcomer's share with entity state,
// graceful leave, loss of a member and of the coordinator's member, buffering while a shard has
// no home (in order, bounded, ShardUnavailable past the bound), and refused input. Every node
// writes one activation log; no test may show two live activations of one entity.

#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <cstdlib>
#include <future>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <stdexcept>
#include <thread>

#include <troupe/serialization/sharding_generated.h>
#include <troupe/sharding/client.hpp>
#include <troupe/sharding/region.hpp>

#include "activation_check.hpp"
#include "cluster_nodes.hpp"
#include "testkit.hpp"

namespace troupe {
namespace {

using namespace std::chrono_literals;
using testkit::ClusterKeys;
using testkit::cmd;
using testkit::eventually;
using testkit::op_of;

constexpr std::uint32_t kShards = 128;
const std::string kType = "account";

/// Every activation and stop on every node, in the order the regions reported them.
struct ActivationLog {
  std::mutex mu;
  struct Entry {
    int node;
    std::string id;
    std::uint64_t incarnation;
    bool started;
  };
  std::vector<Entry> entries;
  void add(int node, const sharding::ActivationEvent& e) {
    std::lock_guard lk(mu);
    entries.push_back({node, e.id, e.incarnation, e.started});
  }
  /// Fails on any moment with two live activations of one entity; returns activations per id.
  std::map<std::string, int> check() {
    std::lock_guard lk(mu);
    std::vector<testkit::ActivationRecord> records;
    for (const auto& e : entries) records.push_back({"n" + std::to_string(e.node), e.id, e.started});
    return testkit::check_single_activation(records);
  }
};

/// Where an entity's "hold" waits: it asks to be passivated, then blocks its turn until the test
/// opens the gate. The region meanwhile keeps the messages that come for it waiting.
testkit::Gate g_gate;

/// Closes the gate for its scope (declared after the cluster: opened before the nodes stop).
struct Held {
  Held() { g_gate.set(false); }
  ~Held() { g_gate.set(true); }
  Held(const Held&) = delete;
  Held& operator=(const Held&) = delete;
};

/// A counter with state that survives a graceful handoff. "add" n adds; "get" answers
/// Cmd{<node name>, count}; a Ping is echoed to its sender (order checks); "passivate" asks for
/// it, "hold" asks for it and then waits at the gate, "work" n takes n ms, and "addget" n adds
/// and answers as "get" does.
class Account final : public sharding::Entity {
 public:
  explicit Account(std::string id) : id_(std::move(id)) {}
  void receive(const Message& m) override {
    if (m.is<test::Ping>()) return sender().tell(m, self());
    const auto op = op_of(m);
    if (op == "add") count_ += m.as<test::Cmd>()->n();
    if (op == "addget") {
      count_ += m.as<test::Cmd>()->n();
      sender().tell(cmd(context().system().node_id(), count_), self());
    }
    if (op == "get") sender().tell(cmd(context().system().node_id(), count_), self());
    static const Message passivate = Message::build<sharding::Passivate>([](auto& b) { return sharding::CreatePassivate(b); });
    if (op == "passivate") context().parent().tell(passivate, self());
    // A turn that takes n ms: a stand-in for real work, so that a backlog builds up.
    if (op == "work") std::this_thread::sleep_for(std::chrono::milliseconds(m.as<test::Cmd>()->n()));
    if (op == "hold") {
      // Told from another thread: a cell this turn schedules would wait in this worker's
      // run-next slot until the turn ends, and this turn blocks.
      std::thread([region = context().parent(), me = self()] { region.tell(passivate, me); }).join();
      g_gate.wait();
    }
  }
  std::optional<Message> snapshot() override { return cmd("state", count_); }
  void restore(const Message& state) override {
    if (op_of(state) == "state") count_ = state.as<test::Cmd>()->n();
  }

 private:
  std::string id_;
  std::uint64_t count_ = 0;
};

struct ShardCluster {
  ClusterKeys keys{6};
  ActivationLog log;
  std::vector<std::unique_ptr<node::Node>> nodes;
  std::vector<std::unique_ptr<sharding::Sharding>> sh;
  std::string seed;
  std::size_t buffer_per_shard = 1000;
  std::chrono::milliseconds resend_interval = 300ms;
  std::function<void(membership::MembershipConfig&)> tune;  // membership timings, when set
  std::vector<std::string> roles;                           // of the nodes add() starts
  std::function<void(int, sharding::ClusterShardingConfig&)> tune_sharding;  // node i's, when set

  ShardCluster() : nodes(6), sh(6) {}
  ~ShardCluster() {
    for (auto& n : nodes) {
      if (n) n->stop();
    }
  }

  void add(int i, bool host = true, const std::string& ip = "127.0.0.1") {
    nodes[i] = testkit::start_cluster_node(keys, i, seed, {}, ip, roles, tune);
    if (seed.empty()) seed = nodes[i]->membership()->endpoint().to_string();
    sharding::ClusterShardingConfig cfg;
    cfg.resend_interval = resend_interval;
    cfg.buffer_per_shard = buffer_per_shard;
    cfg.on_activation = [this, i](const sharding::ActivationEvent& e) { log.add(i, e); };
    if (tune_sharding) tune_sharding(i, cfg);
    sh[i] = std::make_unique<sharding::Sharding>(nodes[i]->system(), nodes[i]->transport(), *nodes[i]->membership(), cfg);
    if (host) {
      sharding::EntitySettings s;
      s.type = kType;
      s.num_shards = kShards;
      sh[i]->start<Account>(s);
    } else {
      sh[i]->start_proxy(kType, kShards);
    }
  }
  /// Starts hosting nodes `ids` and waits until they settled.
  bool start(const std::vector<int>& ids) {
    for (int i : ids) add(i);
    return eventually([&] { return settled(ids, ids); }, 30s);
  }
  std::uint64_t uid(int i) const { return nodes[i]->transport().address().uid; }
  /// A remoting-only process (no membership) with the sixth key pair.
  std::unique_ptr<node::Node> remoting_only(const std::string& name) const {
    node::NodeOptions o;
    o.name = name;
    o.transport.port = 0;
    o.transport.keys = keys.pairs[5];
    o.transport.allow_list = keys.allow;
    return node::Node::start(std::move(o)).value();
  }

  /// Shards node `i` hosts.
  std::set<sharding::ShardId> hosted(int i) const {
    std::set<sharding::ShardId> out;
    for (const auto& s : sh[i]->shards(kType)) {
      if (s.hosted_here) out.insert(s.shard);
    }
    return out;
  }
  /// Every live node sees every shard placed (none moving) on one of `hosts`, the hosts
  /// together host each shard exactly once, each its share, and the viewers agree on the table
  /// and on their members.
  bool settled(const std::vector<int>& hosts, const std::vector<int>& viewers) const {
    // Membership first: every viewer sees every viewer up.
    for (int v : viewers) {
      std::size_t up = 0;
      for (const auto& m : nodes[v]->membership()->members()) {
        for (int w : viewers) up += m.uid == uid(w) && m.status == membership::MemberStatus::up;
      }
      if (up != viewers.size()) return false;
    }
    std::size_t total = 0;
    for (int h : hosts) {
      const auto n = hosted(h).size();
      if (n < kShards / hosts.size()) return false;  // balanced: everyone holds its share
      total += n;
    }
    if (total != kShards) return false;
    std::set<sharding::ShardId> all;
    for (int h : hosts) {
      for (auto s : hosted(h)) all.insert(s);
    }
    if (all.size() != kShards) return false;
    std::vector<sharding::ShardInfo> first;
    for (int v : viewers) {
      auto t = sh[v]->shards(kType);
      if (t.size() != kShards) return false;
      for (const auto& s : t) {
        if (s.moving || s.region.empty()) return false;
      }
      if (first.empty()) {
        first = t;
      } else {
        for (std::size_t k = 0; k < t.size(); ++k) {
          if (t[k].region != first[k].region || t[k].epoch != first[k].epoch) return false;
        }
      }
    }
    return true;
  }
  Result<Message> ask(int via, const std::string& id, const Message& m, std::chrono::milliseconds timeout = 5s) {
    return sh[via]->ask(kType, id, m, timeout).get();
  }
  /// The count of `id` and the node that answered ("" on failure).
  std::pair<std::string, std::uint64_t> get(int via, const std::string& id, std::chrono::milliseconds timeout = 5s) {
    auto r = ask(via, id, cmd("get"), timeout);
    if (!r || !r->is<test::Cmd>()) return {"", 0};
    return {op_of(*r), r->as<test::Cmd>()->n()};
  }
};

std::string id_of(int k) { return "acct-" + std::to_string(k); }

TEST(ClusterSharding, RoutesEveryEntityToOneActivationOnItsOwner) {
  ShardCluster c;
  ASSERT_TRUE(c.start({0, 1, 2}));
  for (int i : {0, 1, 2}) EXPECT_EQ(c.sh[i]->coordinator(), c.uid(0)) << "the oldest member coordinates";
  std::set<std::string> answered_by;
  for (int k = 0; k < 60; ++k) {
    // Through the same node: one path, so the add arrives before the get.
    c.sh[k % 3]->tell(kType, id_of(k), cmd("add", 2));
    auto [node, count] = c.get(k % 3, id_of(k));
    EXPECT_EQ(count, 2u) << id_of(k);
    answered_by.insert(node);
  }
  EXPECT_EQ(answered_by, (std::set<std::string>{"n0", "n1", "n2"}));
  for (const auto& [id, n] : c.log.check()) EXPECT_EQ(n, 1) << id;
  std::uint64_t forwarded = 0;
  for (int i : {0, 1, 2}) forwarded += c.sh[i]->stats().forwarded;
  EXPECT_GT(forwarded, 0u) << "some messages crossed nodes";
}

TEST(ClusterSharding, TheFrontDoorHandsKeyedMessagesToRunningEntitiesInOrder) {
  // Node 2 only routes: every message crosses to the owner, keyed (the entity id in the
  // transport's envelope). The first messages for an entity go through its owner's region (it
  // starts the entity); once it runs, the region's front door hands them straight to it. A
  // sender sees its messages arrive in the order it sent them across that switch, and across
  // the entity's passivation and next activation.
  ShardCluster c;
  ASSERT_TRUE(c.start({0, 1}));
  c.add(2, /*host=*/false);
  ASSERT_TRUE(eventually([&] { return c.settled({0, 1}, {0, 1, 2}); }, 30s));
  testkit::Probe probe(c.nodes[2]->system());
  const std::vector<std::string> ids{"door-a", "door-b", "door-c", "door-d"};
  std::uint64_t seq = 0;
  auto send_round = [&](int n) {
    for (int i = 0; i < n; ++i) {
      ++seq;
      for (const auto& id : ids) c.sh[2]->tell(kType, id, testkit::ping(seq), probe.ref());
    }
  };
  std::map<std::string, std::uint64_t> last;  // by the echoing entity's id
  auto expect_in_order = [&](std::size_t n) {
    for (std::size_t k = 0; k < n; ++k) {
      auto r = probe.next(20s);
      ASSERT_TRUE(r) << "echo " << k << " of " << n;
      ASSERT_TRUE(r->msg.is<test::Ping>());
      const auto path = r->sender.path();
      const auto id = sharding::entity_id_of_name(path.substr(path.rfind('/') + 1));
      const auto got = r->msg.as<test::Ping>()->seq();
      EXPECT_EQ(got, last[id] + 1) << id;
      last[id] = got;
    }
  };
  // The first messages start the entities through their regions; once they answered, the
  // regions are idle and the entities run: what follows takes the front door.
  send_round(1);
  expect_in_order(ids.size());
  send_round(500);
  expect_in_order(500 * ids.size());
  std::uint64_t door = 0;
  for (int i : {0, 1}) door += c.sh[i]->stats().front_door;
  EXPECT_GT(door, 0u) << "running entities got messages through the front door";
  // A keyed message for a running entity that claims another shard of the same owner, at that
  // shard's epoch, never takes the door: only the claim check stops it there. The region drops
  // it (counted as malformed), and the sender's next messages still come through in order.
  {
    const auto table = c.sh[2]->shards(kType);
    const auto real = sharding::shard_of(kType, ids[0], kShards);
    std::string owner;
    for (const auto& si : table) {
      if (si.shard == real) owner = si.region;
    }
    const sharding::ShardInfo* other = nullptr;
    for (const auto& si : table) {
      if (si.shard != real && si.region == owner && !si.moving) other = &si;
    }
    ASSERT_FALSE(owner.empty());
    ASSERT_NE(other, nullptr);
    auto region = c.nodes[2]->transport().resolve(owner);
    ASSERT_TRUE(region);
    const auto malformed = [&] { return c.sh[0]->stats().malformed + c.sh[1]->stats().malformed; };
    const auto before = malformed();
    ASSERT_TRUE(c.nodes[2]->transport().tell_keyed(*region, testkit::ping(seq + 1000), probe.ref(),
                                                   remoting::KeyedRoute{ids[0], other->shard, other->epoch, 1}));
    send_round(1);
    expect_in_order(ids.size());  // the wrong claim's echo would have come first for ids[0]
    EXPECT_EQ(malformed(), before + 1);
  }
  // Each entity asks to be passivated while messages keep coming: those that arrive meanwhile
  // wait in the region and start its next activation, still in order.
  const auto passivations = [&] { return c.sh[0]->stats().passivations + c.sh[1]->stats().passivations; };
  const auto before = passivations();
  for (const auto& id : ids) c.sh[2]->tell(kType, id, cmd("passivate"));
  send_round(300);
  expect_in_order(300 * ids.size());
  EXPECT_EQ(passivations() - before, ids.size());
  // One activation at a time (check), and a second one only for messages that found the first
  // stopping (those already queued in it were handled by it).
  for (const auto& [id, n] : c.log.check()) {
    EXPECT_GE(n, 1) << id;
    EXPECT_LE(n, 2) << id;
  }
}

TEST(ClusterSharding, JoinMovesExactlyTheNewcomersShareWithEntityState) {
  ShardCluster c;
  ASSERT_TRUE(c.start({0, 1, 2}));
  for (int k = 0; k < 80; ++k) c.sh[0]->tell(kType, id_of(k), cmd("add", 5));
  for (int k = 0; k < 80; ++k) ASSERT_EQ(c.get(0, id_of(k)).second, 5u) << id_of(k);
  const auto before = c.sh[0]->shards(kType);
  const auto handoffs_before = c.sh[0]->stats().handoff_time.count;  // the start rebalanced too

  c.add(3);
  ASSERT_TRUE(eventually([&] { return c.settled({0, 1, 2, 3}, {0, 1, 2, 3}); }, 60s));
  const auto after = c.sh[0]->shards(kType);
  int moved = 0;
  for (std::size_t s = 0; s < kShards; ++s) {
    if (before[s].region != after[s].region) {
      ++moved;
      EXPECT_NE(after[s].region.find(remoting::format_uid(c.uid(3))), std::string::npos) << "moved to the newcomer only";
    }
  }
  EXPECT_EQ(moved, static_cast<int>(kShards / 4)) << "a join moves 1/(n+1) of the shards, no more";
  // State travelled with the shards: every count is intact, wherever the entity lives now.
  for (int k = 0; k < 80; ++k) EXPECT_EQ(c.get(2, id_of(k)).second, 5u) << id_of(k);
  EXPECT_GT(c.sh[3]->stats().states_restored, 0u);
  // The coordinator (n0, the oldest) timed each handoff.
  const auto h = c.sh[0]->stats().handoff_time;
  EXPECT_EQ(h.count - handoffs_before, kShards / 4);
  EXPECT_GT(h.sum, 0.0);
  c.log.check();
}

TEST(ClusterSharding, GracefulLeaveHandsEveryShardOffWithState) {
  ShardCluster c;
  ASSERT_TRUE(c.start({0, 1, 2}));
  for (int k = 0; k < 60; ++k) c.sh[1]->tell(kType, id_of(k), cmd("add", 3));
  for (int k = 0; k < 60; ++k) ASSERT_EQ(c.get(1, id_of(k)).second, 3u);
  // Keep traffic flowing through the move: nothing may be lost.
  ASSERT_TRUE(c.sh[2]->hand_off_all(30s));
  EXPECT_TRUE(c.hosted(2).empty());
  ASSERT_TRUE(eventually([&] { return c.settled({0, 1}, {0, 1}); }, 30s));
  for (int k = 0; k < 60; ++k) c.sh[0]->tell(kType, id_of(k), cmd("add", 1));
  for (int k = 0; k < 60; ++k) EXPECT_EQ(c.get(0, id_of(k)).second, 4u) << id_of(k);
  EXPECT_TRUE(c.nodes[2]->leave_and_stop(20s));
  for (int k = 0; k < 60; k += 7) EXPECT_EQ(c.get(0, id_of(k)).second, 4u) << id_of(k);
  c.log.check();
}

TEST(ClusterSharding, LostMembersShardsComeBackOnSurvivorsAfterItIsDowned) {
  ShardCluster c;
  ASSERT_TRUE(c.start({0, 1, 2}));
  for (int k = 0; k < 60; ++k) c.sh[0]->tell(kType, id_of(k), cmd("add", 1));
  std::set<std::string> on_n2;
  for (int k = 0; k < 60; ++k) {
    auto [node, count] = c.get(0, id_of(k));
    ASSERT_EQ(count, 1u);
    if (node == "n2") on_n2.insert(id_of(k));
  }
  ASSERT_FALSE(on_n2.empty());
  c.nodes[2]->stop();  // no leave: it vanishes
  ASSERT_TRUE(eventually([&] { return c.settled({0, 1}, {0, 1}); }, 60s));
  for (int k = 0; k < 60; ++k) {
    auto [node, count] = c.get(1, id_of(k));
    EXPECT_TRUE(node == "n0" || node == "n1") << id_of(k) << " answered by '" << node << "'";
    // State is lost with a crash (no state store yet); the others keep theirs.
    EXPECT_EQ(count, on_n2.count(id_of(k)) ? 0u : 1u) << id_of(k);
  }
  // The coordinator timed each of n2's shards from the downing to a new home: never under the
  // 500 ms a downed member gets to learn of it and stop.
  const auto r = c.sh[0]->stats().reallocation_time;
  EXPECT_GT(r.count, 0u);
  EXPECT_EQ(r.counts[0] + r.counts[1] + r.counts[2] + r.counts[3] + r.counts[4] + r.counts[5], 0u) << "none under 250 ms";
  c.log.check();
}

TEST(ClusterSharding, ADownedMembersShardsGetNewHomesWhenItsMarginEndsNotAtTheNextTick) {
  ShardCluster c;
  // Neither the coordinator's periodic tick nor the member's removal (a membership event) comes
  // before 10 s: only planning at the end of the margin gives the shards homes sooner.
  c.resend_interval = 10s;
  c.tune = [](membership::MembershipConfig& m) { m.removal_margin = 10s; };
  ASSERT_TRUE(c.start({0, 1, 2}));
  c.nodes[2]->stop();  // no leave: it vanishes
  ASSERT_TRUE(eventually([&] { return c.settled({0, 1}, {0, 1}); }, 60s));
  // From the downing to a new home: the margin (at least 500 ms, here about that), not 10 s.
  const auto r = c.sh[0]->stats().reallocation_time;
  ASSERT_GT(r.count, 0u);
  std::uint64_t within = 0;
  for (std::size_t b = 0; b < r.counts.size() && b < 9; ++b) within += r.counts[b];  // <= 2.5 s
  EXPECT_EQ(within, r.count) << "mean " << r.sum / static_cast<double>(r.count) << " s";
  c.log.check();
}

TEST(ClusterSharding, CoordinatorLossStallsNoShardThatDoesNotMove) {
  ShardCluster c;
  ASSERT_TRUE(c.start({0, 1, 2}));
  // Entities on n1 and n2: their shards never move when n0 goes.
  std::vector<std::string> steady;
  for (int k = 0; steady.size() < 20 && k < 400; ++k) {
    auto [node, count] = c.get(1, id_of(k));
    if (node == "n1" || node == "n2") steady.push_back(id_of(k));
  }
  ASSERT_EQ(steady.size(), 20u);
  c.nodes[0]->stop();
  // Until the new coordinator has taken over (n0 downed, tables rebuilt), asks to those
  // entities keep being answered promptly.
  int asked = 0, failed = 0;
  const auto until = std::chrono::steady_clock::now() + 60s;
  while (std::chrono::steady_clock::now() < until && !c.settled({1, 2}, {1, 2})) {
    for (const auto& id : steady) {
      ++asked;
      if (c.get(2, id, 1s).first.empty()) ++failed;
    }
  }
  ASSERT_TRUE(c.settled({1, 2}, {1, 2}));
  EXPECT_GT(asked, 0);
  EXPECT_EQ(failed, 0) << "asks to shards that did not move failed during the failover";
  EXPECT_EQ(c.sh[1]->coordinator(), c.uid(1)) << "the next oldest coordinates";
  for (int k = 0; k < 60; ++k) EXPECT_FALSE(c.get(2, id_of(k)).first.empty()) << id_of(k);
  c.log.check();
}

// The coordinator itself is downed. Its successor has no report from it, so it cannot tell the
// downed member's shards from the rest; it gives no unreported shard a home before that member's
// margin has passed (at least 500 ms after the downing), as a coordinator does for any other
// downed member. Before, the successor allocated them as soon as the survivors had reported.
TEST(ClusterSharding, ANewCoordinatorGivesTheDownedOnesShardsHomesOnlyAfterItsMargin) {
  ShardCluster c;
  ASSERT_TRUE(c.start({0, 1, 2}));
  ASSERT_EQ(c.sh[1]->coordinator(), c.uid(0));
  const auto on_n0 = c.hosted(0);
  ASSERT_FALSE(on_n0.empty());
  struct Seen {
    std::mutex mu;
    std::optional<std::chrono::steady_clock::time_point> downed_at;
  };
  auto seen = std::make_shared<Seen>();
  c.nodes[1]->membership()->subscribe([seen, uid = c.uid(0)](const membership::MembershipEvent& e) {
    if (e.member.uid != uid || e.member.status != membership::MemberStatus::down) return;
    std::lock_guard lk(seen->mu);
    if (!seen->downed_at) seen->downed_at = std::chrono::steady_clock::now();
  });
  c.nodes[0]->stop();  // no leave: it vanishes
  ASSERT_TRUE(eventually([&] { return c.settled({1, 2}, {1, 2}); }, 60s));
  ASSERT_EQ(c.sh[1]->coordinator(), c.uid(1));
  std::lock_guard lk(seen->mu);
  ASSERT_TRUE(seen->downed_at);
  for (const auto s : on_n0) {
    const auto h = c.sh[1]->shard_history(kType, s);
    ASSERT_FALSE(h.empty()) << "shard " << s;
    EXPECT_TRUE(h.back().to == "n1" || h.back().to == "n2") << "shard " << s << " went to '" << h.back().to << "'";
    EXPECT_GE(h.back().at - *seen->downed_at, 500ms) << "shard " << s;
  }
  c.log.check();
}

// A surviving member is reachable but silent while a new coordinator rebuilds the tables (its
// coordinator actor, which reports, is held here; a lost report does the same). Past
// rebuild_timeout the new coordinator goes on, but the shards the last tables give the silent
// member stay with it, at their epochs, until it reports. Before, it took the member for one
// that runs no sharding and allocated the member's shards afresh elsewhere while the member
// still served them.
TEST(ClusterSharding, ANewCoordinatorLeavesASilentMembersShardsWhereTheLastTablesPutThem) {
  ShardCluster c;
  ASSERT_TRUE(c.start({0, 1, 2}));
  std::map<sharding::ShardId, std::uint64_t> on_n2;  // shard -> epoch
  for (const auto& si : c.sh[2]->shards(kType)) {
    if (si.hosted_here) on_n2[si.shard] = si.epoch;
  }
  ASSERT_FALSE(on_n2.empty());
  Held held;
  auto& sys2 = c.nodes[2]->system();
  const auto reporter = sys2.lookup("/system/sharding-coordinator");
  ASSERT_TRUE(reporter);
  std::promise<void> holding;
  ASSERT_TRUE(sys2.run_with_actor(reporter, [&holding](Actor&) {
    holding.set_value();
    g_gate.wait();
  }));
  holding.get_future().wait();
  c.nodes[0]->stop();  // no leave: it vanishes; n1 takes over once n0 is downed
  ASSERT_TRUE(eventually([&] { return c.sh[1]->coordinator() == c.uid(1); }, 60s));
  // Well past rebuild_timeout (3 s): none of n2's shards is allocated anew meanwhile.
  const auto reallocated = [&] {
    for (const auto& si : c.sh[1]->shards(kType)) {
      if (auto it = on_n2.find(si.shard); it != on_n2.end() && si.epoch != it->second) return true;
    }
    return false;
  };
  EXPECT_FALSE(eventually(reallocated, 6s)) << "n2's shards were allocated again while n2 served them";
  // Nor does the silence stall the rest: n0's shards get homes while n2 is still silent.
  const auto n0 = remoting::format_uid(c.uid(0));
  EXPECT_TRUE(eventually([&] {
    const auto t = c.sh[1]->shards(kType);
    return !t.empty() && std::all_of(t.begin(), t.end(), [&](const auto& si) {
      return !si.region.empty() && si.region.find(n0) == std::string::npos && !si.moving;
    });
  }, 30s)) << "n0's shards wait for n2's report";
  g_gate.set(true);
  ASSERT_TRUE(eventually([&] { return c.settled({1, 2}, {1, 2}); }, 60s));
  for (const auto& si : c.sh[1]->shards(kType)) {
    if (auto it = on_n2.find(si.shard); it != on_n2.end()) {
      EXPECT_EQ(si.epoch, it->second) << "shard " << si.shard << " was allocated again";
      EXPECT_NE(si.region.find(remoting::format_uid(c.uid(2))), std::string::npos) << "shard " << si.shard;
    }
  }
  c.log.check();
}

/// An entity of `c` on node `i` (started there by an ask), or "".
std::string entity_on(ShardCluster& c, int i) {
  const std::string name = "n" + std::to_string(i);
  for (int k = 0; k < 200; ++k) {
    if (c.get(i, id_of(k)).first == name) return id_of(k);
  }
  return {};
}

/// An entity id of `shard` ("" if none of the first 100,000 candidates is).
std::string another_in_shard(sharding::ShardId shard) {
  for (int k = 0; k < 100'000; ++k) {
    auto candidate = "same-shard-" + std::to_string(k);
    if (sharding::shard_of(kType, candidate, kShards) == shard) return candidate;
  }
  return {};
}

/// The epoch of `shard` in node `i`'s table.
std::uint64_t epoch_on(ShardCluster& c, int i, sharding::ShardId shard) {
  for (const auto& s : c.sh[i]->shards(kType)) {
    if (s.shard == shard) return s.epoch;
  }
  return 0;
}

/// Holds entity `id` on node `i` passivating (its "hold" turn blocked at the closed gate) and
/// sends it `first` from `probe`: the message waits in the region for the entity to stop.
void hold_with_a_waiting_message(ShardCluster& c, int i, const std::string& id, testkit::Probe& probe, std::uint64_t first) {
  const auto passivations = c.sh[i]->stats().passivations;
  c.sh[i]->tell(kType, id, cmd("hold"));
  ASSERT_TRUE(eventually([&] { return c.sh[i]->stats().passivations > passivations; }, 10s));
  const auto buffered = c.sh[i]->stats().buffered;
  c.sh[i]->tell(kType, id, testkit::ping(first), probe.ref());
  ASSERT_TRUE(eventually([&] { return c.sh[i]->stats().buffered > buffered; }, 10s)) << "it waits for the entity";
}

// A message waits for a passivating entity; then its shard is handed off, and the same sender
// sends again. At the new home the first message comes first: it goes into the shard's buffer
// when the shard starts stopping, ahead of what the buffer takes later (before, it joined the
// buffer when the entity had stopped, behind the second).
TEST(ClusterSharding, AMessageThatWaitedForAPassivatingEntityStaysAheadWhenItsShardMoves) {
  ShardCluster c;
  ASSERT_TRUE(c.start({0, 1}));
  const auto id = entity_on(c, 1);
  ASSERT_FALSE(id.empty());
  Held held;
  testkit::Probe probe(c.nodes[1]->system());
  hold_with_a_waiting_message(c, 1, id, probe, 1);
  const auto hosted = c.hosted(1).size();
  std::jthread leaving([&] { c.sh[1]->hand_off_all(60s); });
  // Every shard of n1 was told to hand off: the held entity's shard is stopping.
  const bool stopping = eventually([&] { return c.sh[1]->stats().handoffs >= hosted; }, 30s);
  c.sh[1]->tell(kType, id, testkit::ping(2), probe.ref());
  g_gate.set(true);
  std::vector<std::uint64_t> seqs;
  for (int k = 0; k < 2; ++k) {
    auto r = probe.next(30s);
    if (!r || !r->msg.is<test::Ping>()) break;
    seqs.push_back(r->msg.as<test::Ping>()->seq());
  }
  leaving.join();
  ASSERT_TRUE(stopping);
  EXPECT_EQ(seqs, (std::vector<std::uint64_t>{1, 2}));
  EXPECT_EQ(c.get(0, id).first, "n0");
  c.log.check();
}

// A message waits for a passivating entity when its node is downed: the region fences its
// shards and refuses the message with ShardUnavailable (counted) instead of dropping it unseen.
// It is refused once the entity's turn ends, after whatever the entity still had queued (which
// came first).
TEST(ClusterSharding, AMessageThatWaitedForAPassivatingEntityIsRefusedNotLostWhenItsNodeIsDowned) {
  ShardCluster c;
  ASSERT_TRUE(c.start({0, 1, 2}));
  const auto id = entity_on(c, 1);
  ASSERT_FALSE(id.empty());
  Held held;
  testkit::Probe probe(c.nodes[1]->system());
  hold_with_a_waiting_message(c, 1, id, probe, 1);
  const auto unavailable = c.sh[1]->stats().unavailable;
  ASSERT_TRUE(c.nodes[0]->membership()->down("n1"));
  ASSERT_TRUE(eventually([&] { return c.sh[1]->stats().fenced > 0; }, 30s));
  g_gate.set(true);
  auto r = probe.next(30s);
  ASSERT_TRUE(r) << "the waiting message was dropped without a word";
  const auto* u = r->msg.as<sharding::ShardUnavailable>();
  ASSERT_NE(u, nullptr);
  EXPECT_EQ(u->entity_id()->str(), id);
  EXPECT_GT(c.sh[1]->stats().unavailable, unavailable);
  EXPECT_GT(c.sh[1]->stats().fenced, 0u);
}

// A retrying ask (an idempotency key) waits in its region for a passivating entity while its
// attempts time out, and the shard is handed off. The message waited with the reply cache's
// capture as its sender and cannot take its key to the new home: it is refused there, and the
// ask's next attempt runs it, once, at the new home. Before, it went on without its key, and an
// attempt sent to the new home meanwhile could run it a second time.
TEST(ClusterSharding, ARetryingAskThatWaitedThroughAHandoffRunsOnce) {
  ShardCluster c;
  ASSERT_TRUE(c.start({0, 1}));
  const auto id = entity_on(c, 1);
  ASSERT_FALSE(id.empty());
  Held held;
  const auto passivations = c.sh[1]->stats().passivations;
  c.sh[1]->tell(kType, id, cmd("hold"));
  ASSERT_TRUE(eventually([&] { return c.sh[1]->stats().passivations > passivations; }, 10s));
  sharding::AskOptions o;
  o.timeout = 300ms;
  o.attempts = 30;
  o.backoff = 50ms;
  const auto retries = c.sh[1]->stats().retries;
  const auto unavailable = c.sh[1]->stats().unavailable;
  auto reply = c.sh[1]->ask(kType, id, cmd("addget", 1), o);
  ASSERT_TRUE(eventually([&] { return c.sh[1]->stats().retries >= retries + 2; }, 10s)) << "attempts time out meanwhile";
  const auto hosted = c.hosted(1).size();
  std::jthread leaving([&] { c.sh[1]->hand_off_all(60s); });
  // Every shard of n1 was told to hand off: the held entity's shard is stopping.
  const bool stopping = eventually([&] { return c.sh[1]->stats().handoffs >= hosted; }, 30s);
  g_gate.set(true);
  ASSERT_TRUE(stopping);
  auto r = reply.get();
  leaving.join();
  ASSERT_TRUE(r) << r.error().message();
  ASSERT_TRUE(r->is<test::Cmd>());
  EXPECT_EQ(op_of(*r), "n0");
  EXPECT_EQ(r->as<test::Cmd>()->n(), 1u);
  auto [node, count] = c.get(0, id);
  EXPECT_EQ(node, "n0");
  EXPECT_EQ(count, 1u) << "the add ran more than once";
  // The race above is narrow; what closes it is this: the keyless message was refused at n1.
  EXPECT_GT(c.sh[1]->stats().unavailable, unavailable) << "the message went on without its key";
  c.log.check();
}

// An entity with a backlog when its node is downed: the region fences the shard and the entity
// stops after its current message. What it had queued is refused with ShardUnavailable to each
// sender (counted), not run and not dropped as dead letters.
TEST(ClusterSharding, WhatABusyEntityHadQueuedIsRefusedToItsSendersWhenItsNodeIsDowned) {
  ShardCluster c;
  ASSERT_TRUE(c.start({0, 1, 2}));
  const auto id = entity_on(c, 1);
  ASSERT_FALSE(id.empty());
  testkit::Probe probe(c.nodes[1]->system());
  constexpr int kBacklog = 1000;  // ten seconds of work
  const auto routed = c.sh[1]->stats().routed;
  for (int i = 0; i < kBacklog; ++i) c.sh[1]->tell(kType, id, cmd("work", 10), probe.ref());
  ASSERT_TRUE(eventually([&] { return c.sh[1]->stats().routed >= routed + kBacklog; }, 10s)) << "the backlog is in the mailbox";
  const auto unavailable = c.sh[1]->stats().unavailable;
  const auto dead = c.nodes[1]->system().stats().dead_letters;
  ASSERT_TRUE(c.nodes[0]->membership()->down("n1"));
  auto r = probe.next(30s);
  ASSERT_TRUE(r) << "the backlog was dropped without a word";
  const auto* u = r->msg.as<sharding::ShardUnavailable>();
  ASSERT_NE(u, nullptr);
  EXPECT_EQ(u->entity_id()->str(), id);
  ASSERT_TRUE(eventually([&] { return c.sh[1]->stats().live_entities == 0; }, 10s)) << "it stopped at once";
  const auto refused = c.sh[1]->stats().unavailable - unavailable;
  EXPECT_GT(refused, kBacklog / 2) << "most of the backlog had not run";
  EXPECT_LT(c.nodes[1]->system().stats().dead_letters - dead, kBacklog / 10) << "the backlog went to dead letters";
}

// A new coordinator rebuilds its table from the regions' reports while a region is handing a
// shard off for the old one (an entity still working through its queue): the region still
// reports the shard, and the new table puts it there, not moving. The region serves the shard
// again, its entities with their state, instead of finishing a handoff nobody waits for (it
// dropped the shard, and every message for it waited or was refused until another table).
TEST(ClusterSharding, AHandoffThatANewTableCallsOffServesTheShardAgainWithItsState) {
  ShardCluster c;
  ASSERT_TRUE(c.start({0, 1}));
  const auto held_id = entity_on(c, 1);
  ASSERT_FALSE(held_id.empty());
  const auto shard = sharding::shard_of(kType, held_id, kShards);
  const auto id = another_in_shard(shard);  // with state to carry
  ASSERT_FALSE(id.empty());
  auto added = c.ask(0, id, cmd("addget", 7));
  ASSERT_TRUE(added && added->is<test::Cmd>());
  ASSERT_EQ(op_of(*added), "n1");

  // The table as every node has it, to send again later as a new coordinator's.
  const auto table = c.sh[1]->shards(kType);
  ASSERT_EQ(table.size(), kShards);
  std::vector<std::string> regions;
  std::vector<std::uint16_t> owner;
  std::vector<std::uint64_t> epoch;
  for (const auto& s : table) {
    auto at = std::find(regions.begin(), regions.end(), s.region);
    if (at == regions.end()) at = regions.insert(regions.end(), s.region);
    owner.push_back(static_cast<std::uint16_t>(at - regions.begin() + 1));
    epoch.push_back(s.epoch);
  }
  const std::vector<std::uint8_t> moving(kShards, 0);

  Held held;
  testkit::Probe probe(c.nodes[1]->system());
  hold_with_a_waiting_message(c, 1, held_id, probe, 1);
  // The coordinator's actor on n0 asks n1's region to hand the shard off ...
  auto coord0 = c.nodes[0]->system().lookup("/system/sharding-coordinator");
  ASSERT_TRUE(coord0);
  auto region1 = c.nodes[0]->transport().resolve(c.nodes[1]->transport().address().to_string() + "/system/sharding-account");
  ASSERT_TRUE(region1);
  const auto handoffs = c.sh[1]->stats().handoffs;
  region1->tell(Message::build<sharding::HandOff>([&](flatbuffers::FlatBufferBuilder& b) {
    return sharding::CreateHandOff(b, b.CreateString(kType), c.uid(0), shard, epoch[shard]);
  }), coord0);
  ASSERT_TRUE(eventually([&] { return c.sh[1]->stats().handoffs > handoffs; }, 10s));
  // ... and then, as a new coordinator would from the reports, puts it where it is.
  const auto tables = c.sh[1]->stats().tables_applied;
  region1->tell(Message::build<sharding::ShardTableUpdate>([&](flatbuffers::FlatBufferBuilder& b) {
    return sharding::CreateShardTableUpdate(b, b.CreateString(kType), c.uid(0), 1'000'000, kShards,
                                            b.CreateVectorOfStrings(regions), b.CreateVector(owner), b.CreateVector(epoch),
                                            b.CreateVector(moving));
  }), coord0);
  ASSERT_TRUE(eventually([&] { return c.sh[1]->stats().tables_applied > tables; }, 10s));
  g_gate.set(true);
  // The message that waited for the held entity reaches its next activation, on n1.
  auto echoed = probe.next(20s);
  ASSERT_TRUE(echoed) << "the message for the shard was never delivered";
  ASSERT_TRUE(echoed->msg.is<test::Ping>()) << "refused instead of served";
  EXPECT_EQ(echoed->msg.as<test::Ping>()->seq(), 1u);
  EXPECT_TRUE(c.hosted(1).count(shard)) << "n1 dropped the shard";
  EXPECT_EQ(c.get(0, id), (std::pair<std::string, std::uint64_t>{"n1", 7})) << "served again, with its state";
  c.log.check();
}

// A node's ShardUnavailable asks for a longer pause (its retry_after) than the asker's own
// configuration allows for: the retrying ask cuts the pause short, and when no whole attempt fits
// any more the asker gets the ShardUnavailable before its own wait ends. (It waited the node's
// pause: the asker got a timeout, and the attempts went on behind its back.)
TEST(ClusterSharding, ARetryingAskAnswersWithinItsAskersWaitWhateverANodesRetryAfter) {
  ShardCluster c;
  c.buffer_per_shard = 1;
  c.tune_sharding = [](int i, sharding::ClusterShardingConfig& cfg) {
    if (i == 1) cfg.retry_after = 20s;
  };
  ASSERT_TRUE(c.start({0, 1}));
  const auto held_id = entity_on(c, 1);
  ASSERT_FALSE(held_id.empty());
  const auto shard = sharding::shard_of(kType, held_id, kShards);
  const auto id = another_in_shard(shard);
  ASSERT_FALSE(id.empty());
  const auto epoch = epoch_on(c, 1, shard);
  Held held;
  testkit::Probe probe(c.nodes[1]->system());
  hold_with_a_waiting_message(c, 1, held_id, probe, 1);
  // The shard starts a handoff that cannot finish (the held entity): the message that waited
  // for the entity fills the shard's buffer of one.
  testkit::Probe coordinator_node(c.nodes[0]->system());
  auto region1 = c.nodes[0]->transport().resolve(c.nodes[1]->transport().address().to_string() + "/system/sharding-account");
  ASSERT_TRUE(region1);
  const auto handoffs = c.sh[1]->stats().handoffs;
  region1->tell(Message::build<sharding::HandOff>([&](flatbuffers::FlatBufferBuilder& b) {
    return sharding::CreateHandOff(b, b.CreateString(kType), c.uid(0), shard, epoch);
  }), coordinator_node.ref());
  ASSERT_TRUE(eventually([&] { return c.sh[1]->stats().handoffs > handoffs; }, 10s));
  const sharding::AskOptions o{.timeout = 1s, .attempts = 2, .backoff = 100ms, .idempotency_key = {}};
  const auto unavailable = c.sh[1]->stats().unavailable;
  const auto started = std::chrono::steady_clock::now();
  auto r = c.sh[0]->ask(kType, id, cmd("get"), o).get();
  const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - started);
  ASSERT_TRUE(r) << r.error().message() << " after " << took.count() << " ms";
  ASSERT_TRUE(r->is<sharding::ShardUnavailable>()) << "answered after " << took.count() << " ms";
  EXPECT_EQ(r->as<sharding::ShardUnavailable>()->retry_after_ms(), 20'000u);
  EXPECT_EQ(c.sh[1]->stats().unavailable, unavailable + 2) << "both attempts made";
}

// The coordinator sends a HandOff again when no ShardStopped came back (the first one was lost:
// dropped on a full queue, say). The region gives the same answer, with the entities' states;
// an empty one (the shard is not here any more) lost them without a word.
TEST(ClusterSharding, AHandOffSentAgainGetsTheSameAnswerWithTheEntitiesStates) {
  ShardCluster c;
  ASSERT_TRUE(c.start({0, 1}));
  const auto id = entity_on(c, 1);
  ASSERT_FALSE(id.empty());
  auto added = c.ask(0, id, cmd("addget", 7));
  ASSERT_TRUE(added && added->is<test::Cmd>());
  const auto shard = sharding::shard_of(kType, id, kShards);
  const auto epoch = epoch_on(c, 1, shard);
  // An actor of the coordinator's node asks (the region answers whoever asked from there).
  testkit::Probe coordinator_node(c.nodes[0]->system());
  auto region1 = c.nodes[0]->transport().resolve(c.nodes[1]->transport().address().to_string() + "/system/sharding-account");
  ASSERT_TRUE(region1);
  const auto handoff = Message::build<sharding::HandOff>([&](flatbuffers::FlatBufferBuilder& b) {
    return sharding::CreateHandOff(b, b.CreateString(kType), c.uid(0), shard, epoch);
  });
  auto states_in = [&](const std::optional<testkit::Received>& r) -> int {
    if (!r || !r->msg.is<sharding::ShardStopped>()) return -1;
    const auto* st = r->msg.as<sharding::ShardStopped>();
    EXPECT_EQ(st->shard(), shard);
    EXPECT_EQ(st->epoch(), epoch);
    return st->states() ? static_cast<int>(st->states()->size()) : 0;
  };
  region1->tell(handoff, coordinator_node.ref());
  const int first = states_in(coordinator_node.next(20s));
  ASSERT_GE(first, 1) << "no ShardStopped with the entity's state";
  region1->tell(handoff, coordinator_node.ref());
  EXPECT_EQ(states_in(coordinator_node.next(20s)), first) << "the second answer lost the states";
}

// A node is downed while a shard's state and a table that gives it that shard are on their way
// from the coordinator: its region starts nothing from them. (It hosted the shard and started
// the entity whose state came along: a second activation once the majority gives the shard a
// home.)
TEST(ClusterSharding, ADownedNodeHostsNothingFromATableThatArrivesAfterItsDowning) {
  ShardCluster c;
  ASSERT_TRUE(c.start({0, 1, 2}));
  ASSERT_TRUE(c.nodes[0]->membership()->down("n1"));
  ASSERT_TRUE(eventually([&] { return c.sh[1]->stats().fenced > 0; }, 30s));
  ASSERT_TRUE(eventually([&] { return c.hosted(1).empty(); }, 10s));
  const std::string id = "arrives-late";
  const auto shard = sharding::shard_of(kType, id, kShards);
  const std::string region1_path = c.nodes[1]->transport().address().to_string() + "/system/sharding-account";
  // In flight from n0's coordinator: sent by it, as n1's transport delivers it.
  auto coord0 = c.nodes[1]->transport().resolve(c.nodes[0]->transport().address().to_string() + "/system/sharding-coordinator");
  ASSERT_TRUE(coord0);
  auto region1 = c.nodes[1]->system().lookup("/system/sharding-account");
  ASSERT_TRUE(region1);
  const std::uint64_t epoch = 1'000'000;
  const auto state = cmd("state", 42);
  region1.tell(Message::build<sharding::ShardState>([&](flatbuffers::FlatBufferBuilder& b) {
    std::vector<flatbuffers::Offset<sharding::EntityState>> v{sharding::CreateEntityState(
        b, b.CreateString(id), state.type(), b.CreateVector(state.bytes().data(), state.size()))};
    return sharding::CreateShardState(b, b.CreateString(kType), c.uid(0), shard, epoch, b.CreateVector(v));
  }), *coord0);
  const std::vector<std::string> regions{region1_path};
  const std::vector<std::uint16_t> owner(kShards, 1);
  const std::vector<std::uint64_t> epochs(kShards, epoch);
  const std::vector<std::uint8_t> moving(kShards, 0);
  const auto tables = c.sh[1]->stats().tables_applied;
  const auto restored = c.sh[1]->stats().states_restored;
  for (std::uint64_t version : {1'000'000u, 1'000'001u}) {
    region1.tell(Message::build<sharding::ShardTableUpdate>([&](flatbuffers::FlatBufferBuilder& b) {
      return sharding::CreateShardTableUpdate(b, b.CreateString(kType), c.uid(0), version, kShards,
                                              b.CreateVectorOfStrings(regions), b.CreateVector(owner),
                                              b.CreateVector(epochs), b.CreateVector(moving));
    }), *coord0);
  }
  // Both applied (the region takes one message at a time): the first one's hosting is done.
  ASSERT_TRUE(eventually([&] { return c.sh[1]->stats().tables_applied >= tables + 2; }, 10s))
      << "the tables were not taken as the coordinator's: this test proves nothing";
  EXPECT_TRUE(c.hosted(1).empty());
  EXPECT_EQ(c.sh[1]->stats().states_restored, restored);
  EXPECT_EQ(c.sh[1]->stats().live_entities, 0u);
  std::lock_guard lk(c.log.mu);
  for (const auto& e : c.log.entries) EXPECT_FALSE(e.node == 1 && e.id == id) << "started on the downed node";
}

// The coordinator actor fails and is restarted by its supervisor. The new instance takes up
// the role at once, with no membership event to prompt it (a new entity type gets homes), and
// its tables carry versions above the ones before, so the regions apply them (a join settles).
// Before, it stayed idle until the next membership event, then numbered its tables from 1,
// which the regions ignored as old.
TEST(ClusterSharding, ARestartedCoordinatorActorTakesUpTheRoleAndItsTablesAreApplied) {
  ShardCluster c;
  ASSERT_TRUE(c.start({0, 1, 2}));
  ASSERT_EQ(c.sh[1]->coordinator(), c.uid(0));
  auto& sys0 = c.nodes[0]->system();
  const auto coordinator = sys0.lookup("/system/sharding-coordinator");
  ASSERT_TRUE(coordinator);
  // Fails on its own turn; the supervisor restarts it (same ref, new instance, mailbox kept).
  ASSERT_TRUE(sys0.run_with_actor(coordinator, [](Actor&) { throw std::runtime_error("test: the coordinator fails"); }));
  // A second entity type on every node: only an active coordinator gives its shards homes (the
  // regions' reports reach the coordinator after the failure: they are sent later).
  for (int i : {0, 1, 2}) {
    sharding::EntitySettings s;
    s.type = "ledger";
    s.num_shards = 8;
    c.sh[i]->start<Account>(s);
  }
  EXPECT_TRUE(eventually([&] {
    const auto shards = c.sh[1]->shards("ledger");
    return shards.size() == 8 && std::all_of(shards.begin(), shards.end(), [](const auto& si) { return !si.region.empty(); });
  }, 30s)) << "the restarted coordinator allocates";
  const auto applied = c.sh[1]->stats().tables_applied;
  c.add(3);
  EXPECT_TRUE(eventually([&] { return c.settled({0, 1, 2, 3}, {0, 1, 2, 3}); }, 60s));
  EXPECT_GT(c.sh[1]->stats().tables_applied, applied);
  c.log.check();
}

TEST(ClusterSharding, ClientBeforeHostsBuffersInOrderAndRefusesPastTheBound) {
  ShardCluster c;
  c.buffer_per_shard = 5;
  c.add(0, /*host=*/false);  // a member that only routes: no shard has a home yet
  testkit::Probe probe(c.nodes[0]->system());
  ASSERT_TRUE(eventually([&] { return c.sh[0]->shards(kType).size() == kShards; }, 30s));
  for (std::uint64_t seq = 1; seq <= 7; ++seq) c.sh[0]->tell(kType, "early", testkit::ping(seq), probe.ref());
  // Past five buffered messages the sender is told, twice.
  for (int i = 0; i < 2; ++i) {
    auto r = probe.next(10s);
    ASSERT_TRUE(r);
    const auto* u = r->msg.as<sharding::ShardUnavailable>();
    ASSERT_NE(u, nullptr);
    EXPECT_EQ(u->entity_id()->str(), "early");
    EXPECT_EQ(u->retry_after_ms(), 500u);
  }
  EXPECT_EQ(c.sh[0]->stats().unavailable, 2u);
  // A host arrives: the five buffered messages reach the entity in order.
  c.add(1);
  for (std::uint64_t seq = 1; seq <= 5; ++seq) {
    auto r = probe.next(30s);
    ASSERT_TRUE(r) << "ping " << seq;
    ASSERT_TRUE(r->msg.is<test::Ping>());
    EXPECT_EQ(r->msg.as<test::Ping>()->seq(), seq);
  }
  c.log.check();
}

TEST(ClusterSharding, ARetryingAskGetsThroughOnceTheShardHasAHome) {
  ShardCluster c;
  c.buffer_per_shard = 0;  // nothing waits: every message for a shard without a home is refused
  c.add(0, /*host=*/false);
  ASSERT_TRUE(eventually([&] { return c.sh[0]->shards(kType).size() == kShards; }, 30s));
  sharding::AskOptions o;
  o.timeout = 2s;
  o.attempts = 30;
  o.backoff = 100ms;
  auto reply = c.sh[0]->ask(kType, "patient", cmd("get"), o);
  ASSERT_TRUE(eventually([&] { return c.sh[0]->stats().unavailable >= 2; }, 10s)) << "refused while no host exists";
  c.add(1);
  auto r = reply.get();
  ASSERT_TRUE(r.ok()) << r.error().message();
  ASSERT_TRUE(r->is<test::Cmd>());
  EXPECT_EQ(op_of(*r), "n1");
  EXPECT_GE(c.sh[0]->stats().retries, 2u);
}

TEST(ClusterSharding, RefusesForgedTablesMisroutedEnvelopesUnknownTypesAndBadIds) {
  ShardCluster c;
  ASSERT_TRUE(c.start({0, 1}));
  const auto tables = c.sh[0]->stats().tables_applied;
  // n1 is a member but not the coordinator: its table is ignored.
  auto region0 = c.nodes[1]->transport().resolve(c.nodes[0]->transport().address().to_string() + "/system/sharding-account");
  ASSERT_TRUE(region0);
  const std::vector<std::uint16_t> owner(kShards, 1);
  const std::vector<std::uint64_t> epoch(kShards, 999);
  const std::vector<std::uint8_t> moving(kShards, 0);
  const std::vector<std::string> regions{c.nodes[1]->transport().address().to_string() + "/system/sharding-account"};
  auto forged = [&](std::uint64_t coordinator) {
    return Message::build<sharding::ShardTableUpdate>([&](flatbuffers::FlatBufferBuilder& b) {
      return sharding::CreateShardTableUpdate(b, b.CreateString(kType), coordinator, 1'000'000, kShards,
                                              b.CreateVectorOfStrings(regions), b.CreateVector(owner), b.CreateVector(epoch),
                                              b.CreateVector(moving));
    });
  };
  // Without a sender, a table never reaches the region: the transport drops the protocol
  // message whose sender is not an actor of the node that sent it.
  region0->tell(forged(c.uid(1)));
  ASSERT_TRUE(eventually([&] { return c.nodes[0]->transport().stats().envelopes_forged_sender >= 1; }, 10s));
  // Sent by an actor of n1: it reaches the region, which refuses it (n1 is not the coordinator),
  // also when it names the coordinator.
  testkit::Probe n1_actor(c.nodes[1]->system());
  region0->tell(forged(c.uid(1)), n1_actor.ref());
  region0->tell(forged(c.uid(0)), n1_actor.ref());
  ASSERT_TRUE(eventually([&] { return c.sh[0]->stats().stale_coordinator >= 2; }, 10s));
  EXPECT_EQ(c.sh[0]->stats().tables_applied, tables);
  EXPECT_FALSE(c.hosted(0).empty()) << "n0 still serves its shards";

  // The coordinator's own table, but older than the one applied: acknowledged, not applied.
  auto coord0 = c.nodes[0]->system().lookup("/system/sharding-coordinator");
  ASSERT_TRUE(coord0);
  auto local_region0 = c.nodes[0]->system().lookup("/system/sharding-account");
  ASSERT_TRUE(local_region0);
  auto stale = Message::build<sharding::ShardTableUpdate>([&](flatbuffers::FlatBufferBuilder& b) {
    return sharding::CreateShardTableUpdate(b, b.CreateString(kType), c.uid(0), 1, kShards, b.CreateVectorOfStrings(regions),
                                            b.CreateVector(owner), b.CreateVector(epoch), b.CreateVector(moving));
  });
  local_region0.tell(stale, coord0);
  // A message sent after it through the same region is answered by its owner: n0 kept its table.
  EXPECT_FALSE(c.get(0, "after-stale").first.empty());
  EXPECT_EQ(c.sh[0]->stats().tables_applied, tables);
  EXPECT_FALSE(c.hosted(0).empty());

  // A correctly stamped envelope sent to a region that does not own the shard is passed on to
  // the owner, never delivered here.
  std::string elsewhere;
  for (int k = 0; elsewhere.empty() && k < 1000; ++k) {
    const auto id = "w" + std::to_string(k);
    if (!c.hosted(0).count(sharding::shard_of(kType, id, kShards))) elsewhere = id;
  }
  ASSERT_FALSE(elsewhere.empty());
  const auto rerouted = c.sh[0]->stats().rerouted;
  testkit::Probe asker(c.nodes[1]->system());
  region0->tell(Message::build<sharding::EntityEnvelope>([&](flatbuffers::FlatBufferBuilder& b) {
    auto m = cmd("get");
    return sharding::CreateEntityEnvelope(b, b.CreateString(elsewhere), m.type(), b.CreateVector(m.bytes().data(), m.size()),
                                          b.CreateString(kType), sharding::shard_of(kType, elsewhere, kShards), 1, 1);
  }), asker.ref());
  auto answer = asker.next(10s);
  ASSERT_TRUE(answer);
  EXPECT_EQ(op_of(answer->msg), "n1") << "answered by the owner";
  EXPECT_EQ(c.sh[0]->stats().rerouted, rerouted + 1);

  // An envelope stamped with a shard its id does not hash to is dropped.
  region0->tell(Message::build<sharding::EntityEnvelope>([&](flatbuffers::FlatBufferBuilder& b) {
    auto m = cmd("add", 1);
    const auto shard = (sharding::shard_of(kType, "x", kShards) + 1) % kShards;
    return sharding::CreateEntityEnvelope(b, b.CreateString("x"), m.type(), b.CreateVector(m.bytes().data(), m.size()),
                                          b.CreateString(kType), shard, 1, 0);
  }));
  ASSERT_TRUE(eventually([&] { return c.sh[0]->stats().malformed >= 1; }, 10s));

  // Unknown type, empty and over-long ids: EntityError to the asker.
  for (auto [type, id] : {std::pair<std::string, std::string>{"nosuch", "a"}, {kType, ""}, {kType, std::string(300, 'x')}}) {
    auto r = c.sh[1]->ask(type, id, cmd("get"), 5s).get();
    ASSERT_TRUE(r);
    EXPECT_TRUE(r->is<sharding::EntityError>()) << type << "/" << id.size();
  }
  EXPECT_EQ(c.sh[1]->stats().unknown_type, 1u);
  EXPECT_EQ(c.sh[1]->stats().bad_id, 2u);
  c.log.check();
}

// The oldest member runs no sharding (a gateway, say): with the sharding role on the members
// that do, the coordinator runs on the oldest of those, and the shards get homes.
TEST(ClusterSharding, TheCoordinatorRunsOnTheOldestMemberThatRunsSharding) {
  ShardCluster c;
  c.nodes[0] = testkit::start_cluster_node(c.keys, 0, "", {}, "127.0.0.1", {"gateway"});
  c.seed = c.nodes[0]->membership()->endpoint().to_string();
  c.roles = {sharding::kShardingRole};
  c.add(1);
  c.add(2);
  ASSERT_TRUE(eventually([&] { return c.settled({1, 2}, {1, 2}); }, 30s)) << "the shards never got homes";
  EXPECT_EQ(c.sh[1]->coordinator(), c.uid(1));
  EXPECT_EQ(c.sh[2]->coordinator(), c.uid(1));
  c.log.check();
}

/// A remoting-only process that speaks the sharding protocol by hand to n0's coordinator (not a
/// ShardingClient): it sends what the test says, from `probe`, and answers nothing.
struct HandMadeNode {
  HandMadeNode(ShardCluster& c, const std::string& name)
      : node(c.remoting_only(name)), types(node->system()), probe(node->system()) {
    node->transport().add_peer_key(c.nodes[0]->transport().address().endpoint(), c.keys.pairs[0].public_key);
    c.nodes[0]->transport().add_peer_key(node->transport().address().endpoint(), c.keys.pairs[5].public_key);
    coordinator = node->transport().resolve(c.nodes[0]->transport().address().to_string() + "/system/sharding-coordinator").value();
  }
  /// Its report, proxying the test's type: a client's, or a member's.
  Message report(const ShardCluster& c, bool client) const {
    return Message::build<sharding::NodeReport>([&](flatbuffers::FlatBufferBuilder& b) {
      std::vector<flatbuffers::Offset<sharding::TypeReport>> proxied{sharding::CreateTypeReport(b, b.CreateString(kType), kShards, true)};
      return sharding::CreateNodeReport(b, 0, node->transport().address().uid, b.CreateVector(proxied), 0, false,
                                        client ? b.CreateString(c.keys.pairs[5].public_key) : 0, client);
    });
  }
  std::unique_ptr<node::Node> node;
  sharding::Sharding types;  // registers the sharding protocol's messages there
  testkit::Probe probe;
  ActorRef coordinator;
};

// A joining member's report can reach the coordinator before gossip tells it of the member. It
// must not be taken for a sharding client's (which would keep the member from ever getting
// shards, and end its registration when the "client's" lease ran out): it is not answered, so
// the member reports again once it is known. A report that says it is a client's is answered.
TEST(ClusterSharding, AReportFromAnUnknownMemberIsNotTakenForAClientsAndIsNotAnswered) {
  ShardCluster c;
  ASSERT_TRUE(c.start({0, 1}));
  HandMadeNode early(c, "early");
  auto report = [&](bool client) { return early.report(c, client); };
  const auto ignored = c.sh[0]->stats().stale_coordinator;
  early.coordinator.tell(report(false), early.probe.ref());
  ASSERT_TRUE(eventually([&] { return c.sh[0]->stats().stale_coordinator > ignored; }, 10s))
      << "a member's report from a node the coordinator does not know was not ignored";
  // The same node saying it is a client: registered and answered (after the ignored one, on the
  // same connection: an answer to the first would have come first).
  early.coordinator.tell(report(true), early.probe.ref());
  auto r = early.probe.next(10s);
  ASSERT_TRUE(r);
  while (r && !r->msg.is<sharding::ReportAck>()) r = early.probe.next(10s);  // tables may come first
  ASSERT_TRUE(r) << "the client's report was not answered";
  EXPECT_EQ(r->msg.as<sharding::ReportAck>()->coordinator(), c.uid(0));
  std::size_t acks = 1;
  while (early.probe.queued() > 0) acks += early.probe.next(1s)->msg.is<sharding::ReportAck>() ? 1 : 0;
  EXPECT_EQ(acks, 1u) << "the member-style report was answered too";
  c.log.check();
}

// A client routes straight to the owners: before an owner stops a shard, the client too must
// have taken the table that marks it moving (and buffer its messages), or a message it sent by
// the older table could reach the old owner after the stop and the new home after the client's
// later ones. A registered client that never acknowledges holds each move until
// handoff_ack_timeout (2 s); clients used to be skipped.
TEST(ClusterSharding, AMoveWaitsForTheClientsToTakeTheMovingTable) {
  ShardCluster c;
  c.tune_sharding = [](int, sharding::ClusterShardingConfig& cfg) { cfg.rebuild_timeout = 30s; };
  ASSERT_TRUE(c.start({0, 1}));
  HandMadeNode silent(c, "silent-client");
  // Registered (answered), and acknowledges nothing. Its lease (three resend intervals and
  // rebuild_timeout) outlasts the test: one report is enough.
  silent.coordinator.tell(silent.report(c, true), silent.probe.ref());
  ASSERT_TRUE(eventually([&] {
    auto r = silent.probe.next(100ms);
    return r && r->msg.is<sharding::ReportAck>();
  }, 10s));
  const auto before = c.sh[0]->stats().handoff_time;
  c.add(2);
  ASSERT_TRUE(eventually([&] { return c.settled({0, 1, 2}, {0, 1, 2}); }, 60s));
  const auto after = c.sh[0]->stats().handoff_time;
  const auto moves = after.count - before.count;
  ASSERT_GT(moves, 0u);
  EXPECT_GE((after.sum - before.sum) / static_cast<double>(moves), 1.9) << "the moves did not wait for the client";
  c.log.check();
}

TEST(ClusterSharding, AClientThatIsNotAMemberRoutesThroughTheTablesAndFollowsACoordinatorMove) {
  ShardCluster c;
  ASSERT_TRUE(c.start({0, 1, 2}));
  // A remoting-only process: no membership; it knows one member's endpoint and key.
  auto client_node = c.remoting_only("client");
  client_node->system().registry().add<test::Cmd>();
  const auto contact = c.nodes[1]->transport().address().endpoint();  // not the coordinator: it says where that is
  client_node->transport().add_peer_key(contact, c.keys.pairs[1].public_key);
  sharding::ShardingClientConfig cc;
  cc.contact_points = {contact};
  cc.sharding.resend_interval = 300ms;
  auto client = std::make_unique<sharding::ShardingClient>(client_node->system(), client_node->transport(), cc);
  client->start_proxy(kType, kShards);
  ASSERT_TRUE(eventually([&] {
    auto t = client->shards(kType);
    return t.size() == kShards && std::all_of(t.begin(), t.end(), [](const auto& s) { return !s.region.empty() && !s.moving; });
  }, 30s));
  EXPECT_EQ(client->coordinator(), c.uid(0));
  auto get = [&](const std::string& id) -> std::pair<std::string, std::uint64_t> {
    auto r = client->ask(kType, id, cmd("get"), 3s).get();
    if (!r || !r->is<test::Cmd>()) return {"", 0};
    return {op_of(*r), r->as<test::Cmd>()->n()};
  };
  std::set<std::string> answered;
  for (int k = 0; k < 45; ++k) {
    client->tell(kType, id_of(k), cmd("add", 7));
    auto [node, count] = get(id_of(k));
    EXPECT_EQ(count, 7u) << id_of(k);
    answered.insert(node);
  }
  EXPECT_EQ(answered, (std::set<std::string>{"n0", "n1", "n2"})) << "straight to every owner";
  EXPECT_EQ(client->stats().forwarded, 90u) << "every message went straight to its owner's region";

  // The coordinator's node goes: the client finds the new coordinator through its contact.
  c.nodes[0]->stop();
  ASSERT_TRUE(eventually([&] { return c.settled({1, 2}, {1, 2}) && client->coordinator() == c.uid(1); }, 60s));
  ASSERT_TRUE(eventually([&] {
    for (int k = 0; k < 45; ++k) {
      if (get(id_of(k)).first.empty()) return false;
    }
    return true;
  }, 30s)) << "every entity answers the client again";
  client.reset();
  client_node->stop();
  c.log.check();
}

TEST(ClusterSharding, AClientWhoseOnlyContactPointIsLostFindsTheClusterThroughItsTables) {
  ShardCluster c;
  ASSERT_TRUE(c.start({0, 1, 2}));
  auto client_node = c.remoting_only("client");
  client_node->system().registry().add<test::Cmd>();
  // Its one contact point is the coordinator's node (as a lone seed in a Compose file would be).
  const auto contact = c.nodes[0]->transport().address().endpoint();
  client_node->transport().add_peer_key(contact, c.keys.pairs[0].public_key);
  sharding::ShardingClientConfig cc;
  cc.contact_points = {contact};
  cc.sharding.resend_interval = 300ms;
  auto client = std::make_unique<sharding::ShardingClient>(client_node->system(), client_node->transport(), cc);
  client->start_proxy(kType, kShards);
  ASSERT_TRUE(eventually([&] {
    auto t = client->shards(kType);
    return t.size() == kShards && std::all_of(t.begin(), t.end(), [](const auto& s) { return !s.region.empty() && !s.moving; });
  }, 30s));
  c.nodes[0]->stop();
  // No contact point answers now: the client asks the other nodes of its tables, registers with
  // the new coordinator and gets the tables that give n0's shards their new homes.
  ASSERT_TRUE(eventually([&] { return c.settled({1, 2}, {1, 2}) && client->coordinator() == c.uid(1); }, 60s));
  ASSERT_TRUE(eventually([&] {
    for (int k = 0; k < 45; ++k) {
      auto r = client->ask(kType, id_of(k), cmd("get"), 3s).get();
      if (!r || !r->is<test::Cmd>()) return false;
    }
    return true;
  }, 30s)) << "every entity answers the client again";
  client.reset();
  client_node->stop();
  c.log.check();
}

/// A chain of iptables rules of this test's own, removed on destruction (root only).
struct Partition {
  std::string chain = "TROUPE_PART_" + std::to_string(::getpid());
  bool ok = false;
  Partition() {
    ok = ::geteuid() == 0 && run("iptables -w -N " + chain) && run("iptables -w -I INPUT -j " + chain);
  }
  ~Partition() {
    run("iptables -w -D INPUT -j " + chain);
    run("iptables -w -F " + chain);
    run("iptables -w -X " + chain);
  }
  /// Drops every packet between the two addresses, both ways.
  bool cut(const std::string& a, const std::string& b) {
    return run("iptables -w -A " + chain + " -s " + a + " -d " + b + " -j DROP") &&
           run("iptables -w -A " + chain + " -s " + b + " -d " + a + " -j DROP");
  }
  static bool run(const std::string& cmd) { return std::system((cmd + " >/dev/null 2>&1").c_str()) == 0; }
};

TEST(ClusterSharding, AMinorityPartitionStopsServingBeforeTheMajorityTakesItsShards) {
  Partition part;
  if (!part.ok) GTEST_SKIP() << "needs root and iptables (the partition is made with iptables on loopback addresses)";
  ShardCluster c;
  auto ip = [](int i) { return "127.77.0." + std::to_string(i + 1); };
  for (int i = 0; i < 5; ++i) c.add(i, true, ip(i));
  ASSERT_TRUE(eventually([&] { return c.settled({0, 1, 2, 3, 4}, {0, 1, 2, 3, 4}); }, 60s));
  std::set<std::string> minority_ids;
  for (int k = 0; k < 100; ++k) {
    c.sh[0]->tell(kType, id_of(k), cmd("add", 1));
    auto [node, count] = c.get(0, id_of(k));
    ASSERT_EQ(count, 1u) << id_of(k);
    if (node == "n3" || node == "n4") minority_ids.insert(id_of(k));
  }
  ASSERT_FALSE(minority_ids.empty());
  for (int a : {0, 1, 2}) {
    for (int b : {3, 4}) ASSERT_TRUE(part.cut(ip(a), ip(b)));
  }
  // The majority asks for the minority's entities all along: each starts on the majority side
  // as soon as its shard is allocated there, which must be after the minority stopped it.
  ASSERT_TRUE(eventually([&] {
    for (const auto& id : minority_ids) c.sh[1]->tell(kType, id, cmd("add", 1));
    return c.settled({0, 1, 2}, {0, 1, 2});
  }, 60s));
  // The minority saw itself so and stopped every entity (it keeps their state in case the
  // majority comes back before it is downed).
  EXPECT_GT(c.sh[3]->stats().suspended + c.sh[4]->stats().suspended, 0u) << "the minority stopped serving";
  EXPECT_EQ(c.sh[3]->stats().live_entities + c.sh[4]->stats().live_entities, 0u);
  for (const auto& id : minority_ids) {
    auto [node, count] = c.get(1, id);
    EXPECT_TRUE(node == "n0" || node == "n1" || node == "n2") << id << ": '" << node << "'";
  }
  c.log.check();
}

// A rolling restart while another member is out of reach (not yet downed: here nobody downs
// it): the leaving member's shards must still move, with their state, rather than wait for the
// unreachable member and leave with the leaving one.
TEST(ClusterSharding, AGracefulLeaveHandsItsShardsOffWhileAnotherMemberIsUnreachable) {
  Partition part;
  if (!part.ok) GTEST_SKIP() << "needs root and iptables (the partition is made with iptables on loopback addresses)";
  ShardCluster c;
  c.tune = [](membership::MembershipConfig& m) { m.auto_down = false; };  // n4 stays up, unreachable
  auto ip = [](int i) { return "127.78.0." + std::to_string(i + 1); };
  for (int i = 0; i < 5; ++i) c.add(i, true, ip(i));
  ASSERT_TRUE(eventually([&] { return c.settled({0, 1, 2, 3, 4}, {0, 1, 2, 3, 4}); }, 60s));
  std::vector<std::string> on_n3;
  for (int k = 0; k < 200 && on_n3.size() < 10; ++k) {
    c.sh[0]->tell(kType, id_of(k), cmd("add", 5));
    auto [node, count] = c.get(0, id_of(k));
    ASSERT_EQ(count, 5u);
    if (node == "n3") on_n3.push_back(id_of(k));
  }
  ASSERT_FALSE(on_n3.empty());
  for (int a : {0, 1, 2, 3}) ASSERT_TRUE(part.cut(ip(a), ip(4)));
  ASSERT_TRUE(eventually([&] {
    for (const auto& m : c.nodes[0]->membership()->members()) {
      if (m.uid == c.uid(4)) return m.liveness == membership::Liveness::unreachable;
    }
    return false;
  }, 30s)) << "n4 never became unreachable";
  ASSERT_TRUE(c.sh[3]->hand_off_all(20s)) << "the leaving member's shards did not move";
  EXPECT_TRUE(c.hosted(3).empty());
  for (const auto& id : on_n3) {
    auto [node, count] = c.get(0, id);
    EXPECT_TRUE(node == "n0" || node == "n1" || node == "n2") << id << ": '" << node << "'";
    EXPECT_EQ(count, 5u) << id << ": its state did not travel";
  }
  c.log.check();
}

/// An entity on n3 (of five nodes on `subnet`.1-5) with twenty seconds of work queued through
/// n3's own region: far longer than the majority waits before it gives the shard a new home.
/// With `handing_off`, n3 leaves gracefully first, and every shard but the busy one's is handed
/// off: the busy one is stopping, its entity working through its mailbox. Then n3 and n4 are
/// cut off; the majority asks for the entity all along, which starts there once its shard is
/// allocated: that must be after the minority's activation stopped.
void busy_entity_in_a_minority(const std::string& subnet, bool handing_off) {
  Partition part;
  if (!part.ok) GTEST_SKIP() << "needs root and iptables (the partition is made with iptables on loopback addresses)";
  ShardCluster c;
  auto ip = [&](int i) { return subnet + "." + std::to_string(i + 1); };
  for (int i = 0; i < 5; ++i) c.add(i, true, ip(i));
  ASSERT_TRUE(eventually([&] { return c.settled({0, 1, 2, 3, 4}, {0, 1, 2, 3, 4}); }, 60s));
  std::string busy;
  for (int k = 0; k < 200 && busy.empty(); ++k) {
    if (c.get(0, id_of(k)).first == "n3") busy = id_of(k);
  }
  ASSERT_FALSE(busy.empty()) << "no entity of the first 200 lives on n3";
  constexpr int kBacklog = 2000;
  const auto routed = c.sh[3]->stats().routed;
  for (int i = 0; i < kBacklog; ++i) c.sh[3]->tell(kType, busy, cmd("work", 10));
  ASSERT_TRUE(eventually([&] { return c.sh[3]->stats().routed >= routed + kBacklog; }, 10s)) << "the backlog is in the mailbox";
  std::jthread leaving;
  if (handing_off) {
    const auto hosted = c.hosted(3).size();
    leaving = std::jthread([&] { c.sh[3]->hand_off_all(15s); });
    ASSERT_TRUE(eventually([&] { return c.sh[3]->stats().handoffs >= hosted; }, 30s));
    ASSERT_EQ(c.sh[3]->stats().live_entities, 1u);
  }
  for (int a : {0, 1, 2}) {
    for (int b : {3, 4}) ASSERT_TRUE(part.cut(ip(a), ip(b)));
  }
  ASSERT_TRUE(eventually([&] {
    c.sh[1]->tell(kType, busy, cmd("add", 1));
    return c.settled({0, 1, 2}, {0, 1, 2});
  }, 60s));
  const auto home = c.get(1, busy).first;
  EXPECT_TRUE(home == "n0" || home == "n1" || home == "n2") << "'" << home << "'";
  c.log.check();  // fails if n3's activation still runs (or ran on after the majority's started)
  EXPECT_EQ(c.sh[3]->stats().live_entities, 0u);
  const auto kept = c.sh[3]->stats().taken_back;
  EXPECT_GT(kept, 0u) << "what the entity had not run yet waits in the region";
  EXPECT_LT(kept, static_cast<std::uint64_t>(kBacklog));
}

// A backlog must not keep a minority's activation running after the majority may have started
// the entity elsewhere: the minority stops each entity after its current message, and what
// the entity had queued waits in the region's buffer (for a resume) instead of being run.
TEST(ClusterSharding, AMinorityStopsABusyEntityAtOnceAndKeepsWhatItHadQueued) {
  busy_entity_in_a_minority("127.77.1", false);
}

// The same when the busy entity's shard is already handing off as the partition comes: the
// handoff cannot finish across it, and the entity, which works through its mailbox before it
// hands its state over, stops after its current message too.
TEST(ClusterSharding, AMinorityStopsABusyEntityWhoseShardIsHandingOff) { busy_entity_in_a_minority("127.77.2", true); }

}  // namespace
}  // namespace troupe
