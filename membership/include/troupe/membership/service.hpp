#pragma once
/// \file
/// MembershipService: the production runtime of the membership protocol. It runs SwimProtocol on
/// the I/O thread of a sealed UdpTransport (AES-256-GCM keyring), resolves seeds (a DNS name
/// yields all its addresses), answers another cluster's packets with a clear refusal, and
/// offers thread-safe queries and operator actions. Events reach subscribers on the I/O thread.

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <troupe/membership/config.hpp>
#include <troupe/membership/keyring.hpp>
#include <troupe/membership/member.hpp>
#include <troupe/membership/swim.hpp>
#include <troupe/membership/udp_transport.hpp>
#include <troupe/serialization/result.hpp>

namespace troupe::membership {

struct MembershipServiceConfig {
  MembershipConfig membership = MembershipConfig::lan();
  std::string node_name;               ///< unique in the cluster
  std::uint64_t uid = 0;               ///< this process's incarnation (the remoting uid); 0: random
  std::string bind_host = "127.0.0.1";
  std::uint16_t port = 7946;           ///< 0: any free port
  std::string advertise_host;          ///< empty: bind_host (must then not be a wildcard)
  /// "host:port" each; a host name is resolved to all its addresses. Empty: form a new cluster.
  std::vector<std::string> seeds;
  std::string remoting;                ///< this node's remoting address, advertised to others
  std::string curve_key;               ///< its CURVE public key
  std::vector<std::string> roles;      ///< this member's roles (see MemberInfo::roles)
  std::shared_ptr<Keyring> keyring;    ///< required
  /// When set, the keyring is written back here after every change a KeyOp applied (0600).
  std::string keyring_file;
  std::size_t mtu = 1400;
};

class MembershipService {
 public:
  /// Validates the configuration (the error names the field), binds the UDP port and starts
  /// joining.
  static Result<std::unique_ptr<MembershipService>> start(MembershipServiceConfig config,
                                                          std::shared_ptr<spdlog::logger> log,
                                                          std::string* error_detail = nullptr);
  ~MembershipService();
  MembershipService(const MembershipService&) = delete;
  MembershipService& operator=(const MembershipService&) = delete;

  /// Stops at once (no leave). Idempotent. From a subscriber (on the I/O thread) it returns at
  /// once and the stop completes after the event; a later stop() or the destructor waits for it.
  void stop();
  /// Leaves gracefully and waits (up to `timeout`) until this node is removed; true if it was.
  bool leave_and_wait(std::chrono::milliseconds timeout);
  bool leave(const std::string& name);
  bool down(const std::string& name);

  /// Subscribers run on the I/O thread; subscribe before start() returns events you need...
  /// events that happened earlier are not replayed.
  void subscribe(std::function<void(const MembershipEvent&)> fn);

  /// Applies a keyring change here and on every live member; blocks until all confirmed or
  /// `timeout` (the result names who failed or did not answer).
  KeyOpResult key_operation(KeyOp op, const Key& key, std::chrono::milliseconds timeout);
  /// Rotates to `new_key`: install everywhere, then use everywhere, then remove the old primary
  /// everywhere, each step only once every member confirmed the previous one. Returns the steps
  /// run; the last one tells why it stopped if it did not succeed.
  std::vector<KeyOpResult> rotate_key(const Key& new_key, std::chrono::milliseconds step_timeout);

  std::vector<MemberInfo> members() const;
  std::optional<MemberInfo> leader() const;
  MemberInfo self() const;
  std::vector<Decision> history(const std::string& name = {}) const;
  SwimStats stats() const;
  UdpTransportStats transport_stats() const;
  UdpEndpoint endpoint() const;
  /// The protocol timings this service runs with.
  const MembershipConfig& config() const noexcept;
  const std::shared_ptr<Keyring>& keyring() const;

  struct Impl;

 private:
  explicit MembershipService(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace troupe::membership
