#pragma once
/// \file
/// Addresses of nodes and of actors on them:
///   node:  troupe://<node>@<host>:<port>
///   actor: troupe://<node>@<host>:<port>/<path>
/// `<node>` is the node's incarnation id: 64 random bits chosen at start, written as 16 hex
/// digits. A restarted node is a new incarnation, so refs to the old one never reach the new one.
/// `<host>` is a DNS name, an IPv4 address, or an IPv6 address in brackets.

#include <compare>
#include <cstdint>
#include <string>
#include <string_view>

#include <troupe/serialization/result.hpp>

namespace troupe::remoting {

struct NodeAddress {
  std::uint64_t uid = 0;  ///< incarnation id; never 0 for a real node
  std::string host;
  std::uint16_t port = 0;

  /// "troupe://<node>@<host>:<port>"
  std::string to_string() const;
  /// "<host>:<port>" (the key of an endpoint in the peer key table)
  std::string endpoint() const;
  /// "tcp://<host>:<port>" for ZeroMQ
  std::string zmq_endpoint() const;
  friend bool operator==(const NodeAddress&, const NodeAddress&) = default;
};

struct ActorAddress {
  NodeAddress node;
  std::string path;  ///< "/user/echo"
  std::string to_string() const { return node.to_string() + path; }
};

/// 16 lower-case hex digits.
std::string format_uid(std::uint64_t uid);
/// Parses "troupe://<node>@<host>:<port>" (std::errc::invalid_argument when malformed).
Result<NodeAddress> parse_node_address(std::string_view s);
/// Parses "troupe://<node>@<host>:<port>/<path>"; the path must start with '/'.
Result<ActorAddress> parse_actor_address(std::string_view s);
/// Parses "<host>:<port>" (IPv6 in brackets).
Result<NodeAddress> parse_endpoint(std::string_view s);

}  // namespace troupe::remoting
