#pragma once
// Contact points of a ShardingClient as a service gets them from its command line: "host:port"
// where the host may be a DNS name that resolves to several members (a Docker Compose service, a
// Kubernetes headless service), and no per-node key configuration, only the cluster's allow-list.
//
//   resolve_all("node:7947")       -> {"172.18.0.3:7947", "172.18.0.4:7947", ...}
//   find_contact_keys(t, eps, keys) -> declares, for each endpoint, the allow-listed key its node
//                                      answers to (Transport::add_peer_key)
//
// Self-contained (only troupe::troupe and POSIX getaddrinfo): copy it into your service.

#include <netdb.h>
#include <sys/socket.h>
#include <arpa/inet.h>

#include <algorithm>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include <troupe/remoting/transport.hpp>

namespace contact {

/// Every address `host_port` ("host:port", IPv6 in brackets) resolves to, each as "ip:port" (IPv6
/// in brackets), without duplicates. Empty when the name does not resolve (yet) or is malformed.
inline std::vector<std::string> resolve_all(const std::string& host_port) {
  auto ep = troupe::remoting::parse_endpoint(host_port);
  if (!ep) return {};
  std::string host = ep->host;
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (::getaddrinfo(host.c_str(), nullptr, &hints, &res) != 0) return {};
  std::vector<std::string> out;
  for (auto* a = res; a; a = a->ai_next) {
    char buf[INET6_ADDRSTRLEN] = {};
    std::string ip;
    if (a->ai_family == AF_INET) {
      ::inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(a->ai_addr)->sin_addr, buf, sizeof buf);
      ip = buf;
    } else if (a->ai_family == AF_INET6) {
      ::inet_ntop(AF_INET6, &reinterpret_cast<sockaddr_in6*>(a->ai_addr)->sin6_addr, buf, sizeof buf);
      ip = std::string("[") + buf + "]";
    } else {
      continue;
    }
    auto e = ip + ":" + std::to_string(ep->port);
    if (std::find(out.begin(), out.end(), e) == out.end()) out.push_back(std::move(e));
  }
  ::freeaddrinfo(res);
  return out;
}

/// For each endpoint, finds which of `candidate_keys` (the allow-list: the members' CURVE public
/// keys) the node listening there has: declares each candidate in turn with add_peer_key and
/// says hello (Transport::discover, up to `probe_timeout` each); the first key answered stays.
/// Endpoints are probed in parallel. Returns the endpoints whose key was found. With an insecure
/// transport no key is needed: returns the endpoints that answered.
inline std::vector<std::string> find_contact_keys(troupe::remoting::Transport& transport,
                                                  const std::vector<std::string>& endpoints,
                                                  const std::vector<std::string>& candidate_keys,
                                                  std::chrono::milliseconds probe_timeout = std::chrono::milliseconds(300)) {
  const bool insecure = transport.public_key().empty();
  std::vector<char> found(endpoints.size(), 0);
  std::vector<std::thread> probes;
  for (std::size_t i = 0; i < endpoints.size(); ++i) {
    probes.emplace_back([&, i] {
      if (insecure) {
        found[i] = static_cast<bool>(transport.discover(endpoints[i], probe_timeout));
        return;
      }
      for (const auto& key : candidate_keys) {
        if (key == transport.public_key()) continue;  // our own key: not a member's
        transport.add_peer_key(endpoints[i], key);
        if (transport.discover(endpoints[i], probe_timeout)) {
          found[i] = 1;
          return;
        }
      }
    });
  }
  for (auto& p : probes) p.join();
  std::vector<std::string> out;
  for (std::size_t i = 0; i < endpoints.size(); ++i) {
    if (found[i]) out.push_back(endpoints[i]);
  }
  return out;
}

}  // namespace contact
