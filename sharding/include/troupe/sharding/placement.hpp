#pragma once
/// \file
/// Placement: entity -> shard by hash, shard -> node by a balanced table the coordinator keeps.
///
/// `shard_of` hashes (entity type, entity id) with XXH3-64 modulo the number of shards.
/// `ShardTable` maps every shard to a node and is immutable once built: routers read a shared
/// snapshot without locks, and a change builds the next one.
///
/// Shard -> node is *bounded-load rendezvous hashing* over the nodes hosting the type: every node
/// holds floor(S/n) or ceil(S/n) shards (max/avg <= ceil(S/n)/(S/n)), and `rebalance` keeps every
/// shard where it is unless its node left or holds more than its share, placing each shard it
/// must move on the node that ranks highest for that shard (by hash) among those with room. A
/// join therefore moves exactly the newcomer's share and a loss exactly the lost node's shards
/// (the minimum possible), where plain consistent hashing with virtual nodes leaves max/avg well
/// above 1.1 at about ten shards per node and rendezvous or jump hashing alone do not bound the
/// load (see bench/README.md, placement figures).

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace troupe::sharding {

using ShardId = std::uint32_t;

/// XXH3-64 of `type` and `id` (separated so that ("ab","c") and ("a","bc") differ):
/// entity_hash_seeded(type_hash(type), id).
std::uint64_t entity_hash(std::string_view type, std::string_view id) noexcept;
/// The type's part of entity_hash, for callers that route many ids of one type.
std::uint64_t type_hash(std::string_view type) noexcept;
std::uint64_t entity_hash_seeded(std::uint64_t type_hash, std::string_view id) noexcept;
/// The shard of an entity: entity_hash(type, id) % num_shards (0 when num_shards is 0).
inline ShardId shard_of(std::string_view type, std::string_view id, std::uint32_t num_shards) noexcept {
  return num_shards ? static_cast<ShardId>(entity_hash(type, id) % num_shards) : 0;
}
/// shard_of with the type's hash computed once (type_hash).
inline ShardId shard_of_seeded(std::uint64_t type_hash, std::string_view id, std::uint32_t num_shards) noexcept {
  return num_shards ? static_cast<ShardId>(entity_hash_seeded(type_hash, id) % num_shards) : 0;
}
/// The rendezvous weight of `shard` on `node`.
std::uint64_t rendezvous_weight(ShardId shard, std::uint64_t node) noexcept;

/// shard -> node (a node is its 64-bit id; 0: unassigned). Immutable.
class ShardTable {
 public:
  ShardTable() = default;
  explicit ShardTable(std::vector<std::uint64_t> owner) : owner_(std::move(owner)) {}
  std::uint64_t owner(ShardId s) const noexcept { return s < owner_.size() ? owner_[s] : 0; }
  std::uint32_t size() const noexcept { return static_cast<std::uint32_t>(owner_.size()); }
  const std::vector<std::uint64_t>& owners() const noexcept { return owner_; }
  /// Shards per node, for the given nodes (in their order).
  std::vector<std::uint32_t> loads(const std::vector<std::uint64_t>& nodes) const;

 private:
  std::vector<std::uint64_t> owner_;
};

/// The balanced table for `nodes` that moves as few shards as possible away from `previous`
/// (empty previous: a fresh allocation). `num_shards` fixed per entity type. No nodes: every
/// shard unassigned. Deterministic: the same inputs give the same table on every node.
ShardTable rebalance(const ShardTable& previous, std::uint32_t num_shards, std::vector<std::uint64_t> nodes);

/// Shards whose owner differs between two tables.
std::vector<ShardId> moved_shards(const ShardTable& from, const ShardTable& to);

}  // namespace troupe::sharding
