#pragma once
/// \file
/// Node: the composition root of a Troupe node process (troupe-node). It owns the actor system
/// and the remoting transport; membership, sharding and the admin HTTP server join it as they
/// land. Embedding programs may use it too.

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <troupe/actor/actor_system.hpp>
#include <troupe/remoting/transport.hpp>
#include <troupe/serialization/result.hpp>

namespace troupe::node {

struct NodeOptions {
  /// Shown in every log line (empty: the random incarnation id of the actor system).
  std::string name;
  /// Worker threads (0: one per hardware thread).
  unsigned workers = 0;
  remoting::TransportConfig transport;
  /// CURVE public keys of peers by endpoint ("host:port"), for nodes this one sends to first.
  std::vector<std::pair<std::string, std::string>> peer_keys;
  /// Host the built-in test actors (/user/echo, /user/relay, /user/sink; see node.fbs).
  bool test_actors = false;
};

class Node {
 public:
  /// Starts the actor system and binds the transport. Fails when the transport cannot start
  /// (the reason is logged).
  static Result<std::unique_ptr<Node>> start(NodeOptions options);
  ~Node();
  Node(const Node&) = delete;
  Node& operator=(const Node&) = delete;

  /// Stops the transport, then the actor system. Idempotent.
  void stop();

  ActorSystem& system() noexcept { return *system_; }
  remoting::Transport& transport() noexcept { return *transport_; }

 private:
  Node() = default;
  std::unique_ptr<ActorSystem> system_;
  std::unique_ptr<remoting::Transport> transport_;
  bool stopped_ = false;
};

/// Registers troupe-node's test-actor messages (node.fbs) in `registry` (for programs that talk
/// to those actors).
void register_test_messages(MessageRegistry& registry);

}  // namespace troupe::node
