#pragma once
// In-process cluster nodes for integration tests: real UDP gossip and real ZeroMQ remoting with
// CURVE on loopback, one troupe::node::Node each.

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <troupe/node/node.hpp>

#include "testkit.hpp"

namespace troupe::testkit {

/// CURVE key pairs for `n` nodes, an allow-list of all of them, and one gossip key.
struct ClusterKeys {
  std::vector<remoting::CurveKeyPair> pairs;
  std::shared_ptr<remoting::AllowList> allow = std::make_shared<remoting::AllowList>();
  std::shared_ptr<membership::Keyring> ring = std::make_shared<membership::Keyring>(membership::generate_key().value());
  explicit ClusterKeys(int n = 4) {
    std::vector<std::string> pubs;
    for (int i = 0; i < n; ++i) {
      pairs.push_back(remoting::generate_keypair().value());
      pubs.push_back(pairs.back().public_key);
    }
    allow->replace(pubs);
  }
};

/// Starts node "n<i>" on `host` (the `local` membership preset, free ports), joining through `seed`
/// ("host:port" of a member's gossip endpoint; empty: it forms the cluster). Registers the
/// testkit messages. `tune` may change the membership timings.
inline std::unique_ptr<node::Node> start_cluster_node(const ClusterKeys& k, int i, const std::string& seed,
                                                      std::function<void(const membership::MembershipEvent&)> on_event = {},
                                                      const std::string& host = "127.0.0.1",
                                                      std::vector<std::string> roles = {},
                                                      const std::function<void(membership::MembershipConfig&)>& tune = {}) {
  node::NodeOptions o;
  o.name = "n" + std::to_string(i);
  o.workers = 2;
  o.transport.bind_host = host;
  o.transport.port = 0;
  o.transport.keys = k.pairs[static_cast<std::size_t>(i)];
  o.transport.allow_list = k.allow;
  membership::MembershipServiceConfig mc;
  mc.membership = membership::MembershipConfig::local();
  if (tune) tune(mc.membership);
  mc.bind_host = host;
  mc.port = 0;
  if (!seed.empty()) mc.seeds = {seed};
  mc.roles = std::move(roles);
  mc.keyring = std::make_shared<membership::Keyring>(k.ring->primary());
  o.membership = mc;
  o.on_event = std::move(on_event);
  auto n = node::Node::start(std::move(o)).value();
  n->system().registry().add<test::Text>();
  n->system().registry().add<test::Cmd>();
  n->system().registry().add<test::Ping>();
  return n;
}

}  // namespace troupe::testkit
