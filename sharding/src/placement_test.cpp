// Placement: entity hashing, and the balanced shard table under joins and losses (table tests
// and seeded property tests).

#include <troupe/sharding/placement.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <set>

namespace troupe::sharding {
namespace {

std::vector<std::uint64_t> nodes_of(std::size_t n, std::uint64_t base = 1000) {
  std::vector<std::uint64_t> v;
  for (std::size_t i = 0; i < n; ++i) v.push_back(base + i * 7919);
  return v;
}

void expect_balanced(const ShardTable& t, const std::vector<std::uint64_t>& nodes, std::uint32_t shards) {
  auto loads = t.loads(nodes);
  std::uint32_t total = 0;
  for (auto l : loads) total += l;
  EXPECT_EQ(total, shards) << "every shard has an owner among the nodes";
  auto [mn, mx] = std::minmax_element(loads.begin(), loads.end());
  EXPECT_LE(*mx - *mn, 1u) << "loads differ by at most one";
}

TEST(Placement, EntityHashIsStableSeparatesTypeAndIdAndSpreads) {
  EXPECT_EQ(entity_hash("user", "42"), entity_hash("user", "42"));
  EXPECT_NE(entity_hash("ab", "c"), entity_hash("a", "bc"));
  EXPECT_NE(entity_hash("user", "42"), entity_hash("order", "42"));
  // Routers hash the type once (type_hash) and each id with it: the same shard as shard_of.
  EXPECT_EQ(entity_hash_seeded(type_hash("user"), "42"), entity_hash("user", "42"));
  std::vector<int> count(64, 0);
  const auto user = type_hash("user");
  for (int i = 0; i < 64000; ++i) {
    const auto id = "user-" + std::to_string(i);
    ++count[shard_of("user", id, 64)];
    ASSERT_EQ(shard_of_seeded(user, id, 64), shard_of("user", id, 64)) << id;
  }
  for (int c : count) {
    EXPECT_GT(c, 800);   // expected 1000 per shard
    EXPECT_LT(c, 1200);
  }
}

TEST(Placement, AFreshTableIsBalancedForEveryClusterSize) {
  for (std::size_t n : {1, 2, 3, 7, 10, 100, 1024, 1500}) {
    auto nodes = nodes_of(n);
    auto t = rebalance({}, 1024, nodes);
    SCOPED_TRACE(n);
    if (n <= 1024) {
      expect_balanced(t, nodes, 1024);
    } else {
      for (ShardId s = 0; s < 1024; ++s) EXPECT_NE(t.owner(s), 0u);
    }
  }
  EXPECT_EQ(rebalance({}, 16, {}).owner(3), 0u) << "no nodes: unassigned";
}

TEST(Placement, TheSameInputsGiveTheSameTableInAnyNodeOrder) {
  auto nodes = nodes_of(10);
  auto a = rebalance({}, 1024, nodes);
  std::reverse(nodes.begin(), nodes.end());
  auto b = rebalance({}, 1024, nodes);
  EXPECT_EQ(a.owners(), b.owners());
}

TEST(Placement, AJoinMovesExactlyTheNewcomersShare) {
  for (std::size_t n : {1, 2, 3, 10, 100}) {
    auto nodes = nodes_of(n);
    auto before = rebalance({}, 1024, nodes);
    const std::uint64_t newcomer = 99;
    auto grown = nodes;
    grown.push_back(newcomer);
    auto after = rebalance(before, 1024, grown);
    SCOPED_TRACE(n);
    expect_balanced(after, grown, 1024);
    auto moved = moved_shards(before, after);
    const auto share = after.loads({newcomer})[0];
    EXPECT_EQ(moved.size(), share) << "only the newcomer's share moves";
    for (auto s : moved) EXPECT_EQ(after.owner(s), newcomer);
    EXPECT_GE(share, 1024 / (n + 1));
  }
}

TEST(Placement, ALossMovesTheLostNodesShardsAndAlmostNothingElse) {
  for (std::size_t n : {2, 3, 10, 100}) {
    auto nodes = nodes_of(n);
    auto before = rebalance({}, 1024, nodes);
    const auto lost = nodes[n / 2];
    const auto lost_load = before.loads({lost})[0];
    auto shrunk = nodes;
    std::erase(shrunk, lost);
    auto after = rebalance(before, 1024, shrunk);
    SCOPED_TRACE(n);
    expect_balanced(after, shrunk, 1024);
    auto moved = moved_shards(before, after);
    std::size_t of_lost = 0;
    for (auto s : moved) of_lost += before.owner(s) == lost;
    EXPECT_EQ(of_lost, lost_load) << "every shard of the lost node moves";
    EXPECT_LE(double(moved.size()), 1.05 * lost_load + 1) << "and (almost) only those";
  }
}

TEST(Placement, RandomJoinsAndLossesKeepBalanceAndMoveLittle) {
  for (std::uint64_t seed = 1; seed <= 20; ++seed) {
    std::mt19937_64 rng(seed);
    std::vector<std::uint64_t> nodes = nodes_of(5, seed * 100000);
    ShardTable t = rebalance({}, 1024, nodes);
    std::uint64_t next = seed * 100000 + 999983;
    for (int step = 0; step < 40; ++step) {
      auto before = t;
      std::size_t minimum = 0;
      if (nodes.size() > 1 && rng() % 2) {
        const auto victim = nodes[rng() % nodes.size()];
        minimum = before.loads({victim})[0];
        std::erase(nodes, victim);
      } else {
        nodes.push_back(next += 7);
      }
      t = rebalance(before, 1024, nodes);
      SCOPED_TRACE("seed " + std::to_string(seed) + " step " + std::to_string(step));
      expect_balanced(t, nodes, 1024);
      const auto moved = moved_shards(before, t).size();
      if (minimum == 0) minimum = 1024 / nodes.size();  // a join: the newcomer's share
      EXPECT_LE(double(moved), 1.05 * double(minimum) + 2);
    }
  }
}

}  // namespace
}  // namespace troupe::sharding
