// placement_bench: shard placement quality and speed, Troupe's bounded-load rendezvous table
// beside jump consistent hash (Lamping & Veach) and plain rendezvous (highest random weight)
// hashing, computed in the same run. 1,024 shards; 3, 10 and 100 nodes.
// Prints JSON lines {"name","value","unit","peer","peer_value"} (run.sh adds the ratio).
//   placement_lookup_ns            entity -> shard -> node, ns per lookup (peer: jump hash)
//   placement_maxavg_<n>           max/avg shards per node (peer: jump hash; rendezvous printed too)
//   placement_moved_join_<n>       shards moved when node n+1 joins / the minimum possible
//   placement_moved_loss_<n>       shards moved when a node is lost / the minimum possible
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include <troupe/sharding/placement.hpp>

using namespace troupe::sharding;

namespace {

constexpr std::uint32_t kShards = 1024;

// Jump consistent hash: bucket in [0, n) for a 64-bit key; buckets are node positions, so only
// the last node can leave without remapping (we measure its loss as the last node's).
std::int32_t jump(std::uint64_t key, std::int32_t n) {
  std::int64_t b = -1, j = 0;
  while (j < n) {
    b = j;
    key = key * 2862933555777941757ULL + 1;
    j = static_cast<std::int64_t>((b + 1) * (double(1LL << 31) / double((key >> 33) + 1)));
  }
  return static_cast<std::int32_t>(b);
}

std::vector<std::uint64_t> nodes_of(std::size_t n) {
  std::vector<std::uint64_t> v;
  for (std::size_t i = 0; i < n; ++i) v.push_back(0x9e3779b97f4a7c15ull * (i + 1));
  return v;
}

ShardTable jump_table(const std::vector<std::uint64_t>& nodes) {
  std::vector<std::uint64_t> o(kShards);
  for (ShardId s = 0; s < kShards; ++s) o[s] = nodes[static_cast<std::size_t>(jump(s * 0x9e3779b97f4a7c15ull + 1, static_cast<std::int32_t>(nodes.size())))];
  return ShardTable(o);
}

ShardTable hrw_table(const std::vector<std::uint64_t>& nodes) {
  std::vector<std::uint64_t> o(kShards);
  for (ShardId s = 0; s < kShards; ++s) {
    std::uint64_t best = 0, bw = 0;
    for (auto n : nodes) {
      auto w = rendezvous_weight(s, n);
      if (!best || w > bw) best = n, bw = w;
    }
    o[s] = best;
  }
  return ShardTable(o);
}

double maxavg(const ShardTable& t, const std::vector<std::uint64_t>& nodes) {
  auto l = t.loads(nodes);
  return double(*std::max_element(l.begin(), l.end())) / (double(kShards) / double(nodes.size()));
}

void line(const std::string& name, double v, const char* unit, const char* peer, double pv) {
  std::printf("{\"name\":\"%s\",\"value\":%.4f,\"unit\":\"%s\",\"peer\":\"%s\",\"peer_value\":%.4f}\n", name.c_str(), v,
              unit, peer, pv);
}

}  // namespace

int main() {
  // Lookup speed: entity -> shard -> owner through the table vs jump hash computed per lookup.
  {
    auto nodes = nodes_of(10);
    auto table = rebalance({}, kShards, nodes);
    std::vector<std::string> ids;
    for (int i = 0; i < 4096; ++i) ids.push_back("user-" + std::to_string(i * 7919));
    constexpr int kRounds = 2000;
    std::uint64_t sink = 0;
    auto t0 = std::chrono::steady_clock::now();
    for (int r = 0; r < kRounds; ++r) {
      for (const auto& id : ids) sink += table.owner(shard_of("user", id, kShards));
    }
    auto t1 = std::chrono::steady_clock::now();
    for (int r = 0; r < kRounds; ++r) {
      for (const auto& id : ids) sink += nodes[static_cast<std::size_t>(jump(entity_hash("user", id), 10))];
    }
    auto t2 = std::chrono::steady_clock::now();
    const double n = double(kRounds) * double(ids.size());
    line("placement_lookup_ns", std::chrono::duration<double, std::nano>(t1 - t0).count() / n, "ns", "jump consistent hash",
         std::chrono::duration<double, std::nano>(t2 - t1).count() / n);
    if (sink == 42) std::puts("");
  }
  for (std::size_t n : {3, 10, 100}) {
    auto nodes = nodes_of(n);
    auto t = rebalance({}, kShards, nodes);
    auto j = jump_table(nodes);
    auto h = hrw_table(nodes);
    line("placement_maxavg_" + std::to_string(n), maxavg(t, nodes), "max/avg", "jump consistent hash", maxavg(j, nodes));
    line("placement_maxavg_" + std::to_string(n) + "_vs_rendezvous", maxavg(t, nodes), "max/avg", "rendezvous hashing",
         maxavg(h, nodes));
    // Join: one more node; the minimum to move is the newcomer's fair share.
    auto grown = nodes;
    grown.push_back(0x1234567);
    const double min_join = double(kShards) / double(grown.size());
    auto t2 = rebalance(t, kShards, grown);
    auto j2 = jump_table(grown);
    line("placement_moved_join_" + std::to_string(n), double(moved_shards(t, t2).size()) / min_join, "x minimum",
         "jump consistent hash", double(moved_shards(j, j2).size()) / min_join);
    // Loss of the last node (jump hash can only lose its last bucket without remapping); the
    // minimum to move is what that node held.
    auto shrunk = nodes;
    shrunk.pop_back();
    auto t3 = rebalance(t, kShards, shrunk);
    auto j3 = jump_table(shrunk);
    const double min_t = t.loads({nodes.back()})[0], min_j = j.loads({nodes.back()})[0];
    line("placement_moved_loss_" + std::to_string(n), double(moved_shards(t, t3).size()) / min_t, "x minimum",
         "jump consistent hash", min_j ? double(moved_shards(j, j3).size()) / min_j : 1.0);
  }
  return 0;
}
