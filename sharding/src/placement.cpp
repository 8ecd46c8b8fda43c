#include <troupe/sharding/placement.hpp>

#include <algorithm>
#include <unordered_map>

#include <xxhash.h>

namespace troupe::sharding {

std::uint64_t entity_hash(std::string_view type, std::string_view id) noexcept {
  // The type's hash seeds the id's: no concatenation, no allocation.
  return entity_hash_seeded(type_hash(type), id);
}

std::uint64_t type_hash(std::string_view type) noexcept { return XXH3_64bits(type.data(), type.size()); }

std::uint64_t entity_hash_seeded(std::uint64_t type_hash, std::string_view id) noexcept {
  return XXH3_64bits_withSeed(id.data(), id.size(), type_hash);
}

std::uint64_t rendezvous_weight(ShardId shard, std::uint64_t node) noexcept {
  const std::uint64_t in[2] = {node, shard};
  return XXH3_64bits(in, sizeof in);
}

std::vector<std::uint32_t> ShardTable::loads(const std::vector<std::uint64_t>& nodes) const {
  std::unordered_map<std::uint64_t, std::size_t> index;
  for (std::size_t i = 0; i < nodes.size(); ++i) index.emplace(nodes[i], i);
  std::vector<std::uint32_t> out(nodes.size(), 0);
  for (auto o : owner_) {
    if (auto it = index.find(o); it != index.end()) ++out[it->second];
  }
  return out;
}

ShardTable rebalance(const ShardTable& previous, std::uint32_t num_shards, std::vector<std::uint64_t> nodes) {
  std::sort(nodes.begin(), nodes.end());
  nodes.erase(std::unique(nodes.begin(), nodes.end()), nodes.end());
  std::erase(nodes, 0);
  std::vector<std::uint64_t> owner(num_shards, 0);
  if (nodes.empty()) return ShardTable(std::move(owner));
  const std::size_t n = nodes.size();
  std::unordered_map<std::uint64_t, std::size_t> index;
  for (std::size_t i = 0; i < n; ++i) index.emplace(nodes[i], i);

  // Keep what stays on a remaining node.
  std::vector<std::vector<ShardId>> held(n);
  for (ShardId s = 0; s < num_shards; ++s) {
    if (auto it = index.find(previous.owner(s)); it != index.end()) held[it->second].push_back(s);
  }
  // Capacities: everyone gets floor(S/n); the S%n extra places go to the nodes already holding
  // the most (fewest moves), ties by node id.
  const std::uint32_t base = num_shards / static_cast<std::uint32_t>(n);
  std::uint32_t extra = num_shards % static_cast<std::uint32_t>(n);
  std::vector<std::size_t> by_load(n);
  for (std::size_t i = 0; i < n; ++i) by_load[i] = i;
  std::stable_sort(by_load.begin(), by_load.end(), [&](std::size_t a, std::size_t b) { return held[a].size() > held[b].size(); });
  std::vector<std::uint32_t> cap(n, base);
  for (std::size_t k = 0; k < n && extra; ++k, --extra) ++cap[by_load[k]];

  // A node over its capacity keeps the shards that rank highest for it and frees the rest.
  std::vector<ShardId> free_shards;
  for (ShardId s = 0; s < num_shards; ++s) {
    if (!index.count(previous.owner(s))) free_shards.push_back(s);
  }
  for (std::size_t i = 0; i < n; ++i) {
    auto& h = held[i];
    if (h.size() > cap[i]) {
      std::sort(h.begin(), h.end(), [&](ShardId a, ShardId b) {
        return rendezvous_weight(a, nodes[i]) > rendezvous_weight(b, nodes[i]);
      });
      free_shards.insert(free_shards.end(), h.begin() + cap[i], h.end());
      h.resize(cap[i]);
    }
    for (auto s : h) owner[s] = nodes[i];
  }
  // Place every free shard on the node ranking highest for it among those with room. Shards go
  // in a fixed order, so every coordinator computes the same table.
  std::sort(free_shards.begin(), free_shards.end());
  std::vector<std::uint32_t> load(n);
  for (std::size_t i = 0; i < n; ++i) load[i] = static_cast<std::uint32_t>(held[i].size());
  for (auto s : free_shards) {
    std::size_t best = n;
    std::uint64_t best_w = 0;
    for (std::size_t i = 0; i < n; ++i) {
      if (load[i] >= cap[i]) continue;
      const auto w = rendezvous_weight(s, nodes[i]);
      if (best == n || w > best_w) {
        best = i;
        best_w = w;
      }
    }
    owner[s] = nodes[best];
    ++load[best];
  }
  return ShardTable(std::move(owner));
}

std::vector<ShardId> moved_shards(const ShardTable& from, const ShardTable& to) {
  std::vector<ShardId> out;
  const auto n = std::max(from.size(), to.size());
  for (ShardId s = 0; s < n; ++s) {
    if (from.owner(s) != to.owner(s)) out.push_back(s);
  }
  return out;
}

}  // namespace troupe::sharding
