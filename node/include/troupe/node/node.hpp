#pragma once
/// \file
/// Node: the composition root of a Troupe node process (troupe-node). It owns the actor system,
/// the remoting transport, membership, cluster sharding and the admin HTTP server. Embedding
/// programs may use it too.

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <functional>
#include <optional>

#include <troupe/actor/actor_system.hpp>
#include <troupe/node/admin.hpp>
#include <troupe/node/logging.hpp>
#include <troupe/membership/service.hpp>
#include <troupe/remoting/transport.hpp>
#include <troupe/serialization/result.hpp>
#include <troupe/sharding/region.hpp>

namespace troupe::node {

struct NodeOptions {
  /// Shown in every log line (empty: the random incarnation id of the actor system).
  std::string name;
  /// Worker threads (0: one per hardware thread).
  unsigned workers = 0;
  /// Log lines as text or as JSON objects (logging.hpp); the level is spdlog's global level.
  LogFormat log_format = LogFormat::text;
  remoting::TransportConfig transport;
  /// CURVE public keys of peers by endpoint ("host:port"), for nodes this one sends to first.
  std::vector<std::pair<std::string, std::string>> peer_keys;
  /// Host the built-in test actors (/user/echo, /user/relay, /user/sink; see node.fbs).
  bool test_actors = false;
  /// Gossip membership (absent: a remoting-only node). Its node_name, uid, remoting address and
  /// CURVE key are filled in from this node; a downed or removed member is a node loss for
  /// remoting (every watch of its actors terminates), and a member's advertised CURVE key is
  /// declared to remoting.
  std::optional<membership::MembershipServiceConfig> membership;
  /// Every membership event (on the gossip I/O thread), after the node has reacted to it.
  std::function<void(const membership::MembershipEvent&)> on_event;
  /// Cluster sharding (needs membership): the node's Sharding is made with this config. Entity
  /// types are started on it by the embedding program, or here for the built-in test entity.
  struct ShardingOptions {
    sharding::ClusterShardingConfig config;
    /// Types hosted with the built-in test entity (node.fbs: EntityAdd, EntityGet, Echo).
    std::vector<sharding::EntitySettings> test_entities;
    /// Types this node only routes to (type, number of shards).
    std::vector<std::pair<std::string, std::uint32_t>> proxies;
  };
  std::optional<ShardingOptions> sharding;
  /// The admin HTTP server (admin.hpp; absent: none). It reports on the entity types of
  /// `sharding` and those listed in AdminOptions::entity_types.
  std::optional<AdminOptions> admin;
};

class Node {
 public:
  /// Starts the actor system and binds the transport. Fails when the transport cannot start
  /// (the reason is logged).
  static Result<std::unique_ptr<Node>> start(NodeOptions options);
  ~Node();
  Node(const Node&) = delete;
  Node& operator=(const Node&) = delete;

  /// Stops the admin server, membership (without leaving), the transport, then the actor system.
  /// Idempotent.
  void stop();
  /// Leaves the cluster gracefully, then stops: hands every local shard off first (up to half
  /// of `timeout`), then leaves membership (waiting for the removal until `timeout` from the
  /// call is over).
  bool leave_and_stop(std::chrono::milliseconds timeout);

  ActorSystem& system() noexcept { return *system_; }
  remoting::Transport& transport() noexcept { return *transport_; }
  /// Null without membership.
  membership::MembershipService* membership() noexcept { return membership_.get(); }
  /// Null without sharding.
  sharding::Sharding* sharding() noexcept { return sharding_.get(); }
  /// Null without the admin server.
  AdminServer* admin() noexcept { return admin_.get(); }
  /// The admin server's bound port (0: no admin server).
  std::uint16_t admin_port() const noexcept { return admin_ ? admin_->port() : 0; }

 private:
  Node() = default;
  std::unique_ptr<ActorSystem> system_;
  std::unique_ptr<remoting::Transport> transport_;
  std::unique_ptr<membership::MembershipService> membership_;
  std::unique_ptr<sharding::Sharding> sharding_;
  std::unique_ptr<AdminServer> admin_;
  bool stopped_ = false;
};

/// Registers troupe-node's test-actor messages (node.fbs) in `registry` (for programs that talk
/// to those actors).
void register_test_messages(MessageRegistry& registry);

}  // namespace troupe::node
