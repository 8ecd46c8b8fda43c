#pragma once
/// \file
/// ShardingClient: routes to sharded entities from a program that hosts none and is not a
/// member of the cluster (a web service, a batch job). It finds a member at one of its contact
/// points (remoting endpoints, "host:port"), registers with the active coordinator through it,
/// keeps the coordinator's shard tables and sends every message straight to the owning node's
/// region. Messages wait (bounded) while a shard has no home; a full buffer answers
/// ShardUnavailable. When the coordinator stops answering it registers again through the
/// contact points, or failing those any node of its tables, routing with its last tables
/// meanwhile.
///
/// The client needs a transport whose allow-list admits the members' keys, the contact points'
/// CURVE keys (Transport::add_peer_key), and its own key on the members' allow-lists; it learns
/// the other members' keys from the tables.

#include <chrono>
#include <cstdint>
#include <future>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <troupe/sharding/region.hpp>

namespace troupe::sharding {

struct ShardingClientConfig {
  /// Remoting endpoints ("host:port") of members, tried in turn.
  std::vector<std::string> contact_points;
  /// How long one contact point may take to answer.
  std::chrono::milliseconds contact_timeout{1'000};
  /// Buffers, retry_after, and the registration period (resend_interval).
  ClusterShardingConfig sharding;
};

class ShardingClient {
 public:
  /// `transport` must outlive the client. Throws std::invalid_argument without contact points.
  ShardingClient(ActorSystem& system, remoting::Transport& transport, ShardingClientConfig config);
  ~ShardingClient();
  ShardingClient(const ShardingClient&) = delete;
  ShardingClient& operator=(const ShardingClient&) = delete;

  /// Routes to entity type `type` (its number of shards as the cluster runs it).
  ActorRef start_proxy(std::string type, std::uint32_t num_shards = 1024, std::size_t max_id_bytes = 256);

  /// `msg` by value: a temporary moves all the way into the transport's envelope.
  void tell(std::string_view type, std::string_view id, Message msg, const ActorRef& sender = {});
  std::future<Result<Message>> ask(std::string_view type, std::string_view id, const Message& msg,
                                   std::chrono::milliseconds timeout);
  /// With retries and an idempotency key (see AskOptions).
  std::future<Result<Message>> ask(std::string_view type, std::string_view id, const Message& msg, AskOptions options);

  /// The coordinator's node this client is registered with (0: none yet).
  std::uint64_t coordinator() const;
  std::vector<ShardInfo> shards(std::string_view type) const;
  ShardingStats stats() const;

  struct State;

 private:
  Sharding sharding_;
  std::shared_ptr<State> state_;
};

}  // namespace troupe::sharding
