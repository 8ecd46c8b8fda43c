#pragma once
/// \file
/// The admin HTTP server of a node (Boost.Beast, one I/O thread): health and readiness probes,
/// Prometheus metrics, JSON views of members, shards and entities, and the operator actions
/// leave and down (bearer token). See DESIGN.md "Node and operations".
///
///   GET  /healthz                          200 "ok" while the server runs
///   GET  /readyz                           200 when this member is up and every known entity
///                                          type has a complete shard table; else 503 + reason
///   GET  /metrics                          Prometheus text format 0.0.4
///   GET  /api/v1/members                   JSON array of members
///   GET  /api/v1/shards[?type=T]           JSON object per entity type
///   GET  /api/v1/entities/{type}/{id}      JSON: the entity's shard and owning region
///   POST /api/v1/members/{name}/leave|down Authorization: Bearer <token>; 403 without a token
///                                          configured, 401 for a missing or wrong one; 202
///                                          done, 404 unknown name, 409 listed but no longer
///                                          live (down or removed)
///   GET  /api/v1/members/{name}/history    JSON: this node's membership decisions about that
///                                          member (probes, suspicions, confirmations,
///                                          refutations, downing with the sides counted), oldest
///                                          first, monotonic times; 404 for a name never seen
///   GET  /api/v1/shards/{type}/{shard}/history
///                                          JSON: the shard's current owner and epoch and the
///                                          moves (owner, epoch, reason) that THIS node's
///                                          coordinator decided while active; "coordinator" names
///                                          the active one and "active_here" says whether it is
///                                          this node (if not, ask that node's admin port for
///                                          the full history). 400 for a bad shard number, 404
///                                          for an unknown type
///   GET  /api/v1/keys                      JSON: the gossip keyring's key ids (never the keys),
///                                          which one is primary
///   POST /api/v1/keys/install|use|remove   body {"key":"<base64>"}, bearer token as above: the
///                                          keyring change on every live member (it waits until
///                                          each confirmed or key_timeout). 200 when all did, 502
///                                          naming who failed or did not answer, 409 while
///                                          another key operation runs
///   GET  /api/v1/events                    Server-Sent Events (text/event-stream): one JSON
///                                          object per "data:" line, a membership event each
///                                          ({"event":"member",...}) and a summary when a shard
///                                          table changed ({"event":"shards",...}); a comment
///                                          line every event_heartbeat. A client that falls
///                                          max_event_queue events behind is dropped (counted);
///                                          beyond max_event_streams open: 503 (counted)
///   GET  /                                 the dashboard page (HTML)
///
/// Path segments and query values are percent-decoded and must be UTF-8 (else 400). Every
/// refusal is counted in AdminStats and /metrics.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <troupe/actor/actor_system.hpp>
#include <troupe/membership/service.hpp>
#include <troupe/remoting/transport.hpp>
#include <troupe/serialization/result.hpp>
#include <troupe/sharding/region.hpp>

namespace troupe::node {

struct AdminOptions {
  std::string bind_host = "127.0.0.1";
  std::uint16_t port = 7948;  ///< 0: any free port (see Node::admin_port())
  /// Bearer token for the write endpoints; empty: writes are refused (403).
  std::string token;
  /// A connection that sends no complete request within this time is closed.
  std::chrono::milliseconds read_timeout{5'000};
  /// Limits per request (larger: 400 or 413, and the connection is closed).
  std::size_t max_header_bytes = 8 * 1024;
  std::size_t max_body_bytes = 8 * 1024;
  /// Connections open at once (event streams included); more are closed on accept (counted).
  std::size_t max_connections = 64;
  /// Event streams open at once (of max_connections); another is answered 503 (counted), so
  /// that streams never leave health checks and scrapes without a connection.
  std::size_t max_event_streams = 16;
  /// How long POST /api/v1/keys/... waits for every member to confirm.
  std::chrono::milliseconds key_timeout{8'000};
  /// Events queued for one /api/v1/events client; one more and the client is dropped.
  std::size_t max_event_queue = 256;
  /// A comment line on every event stream this often (finds clients that went away).
  std::chrono::milliseconds event_heartbeat{15'000};
  /// Entity types the embedding program starts on Node::sharding() itself (type, number of
  /// shards); the types of NodeOptions::sharding are added by Node.
  std::vector<std::pair<std::string, std::uint32_t>> entity_types;
};

/// Counters of the admin server itself (also in /metrics).
struct AdminStats {
  std::uint64_t connections = 0;           ///< accepted
  std::uint64_t connections_refused = 0;   ///< over max_connections
  std::uint64_t requests = 0;              ///< answered, any status
  std::uint64_t bad_requests = 0;          ///< unparsable or over a size limit
  std::uint64_t timeouts = 0;              ///< connections closed by the read timeout
  std::uint64_t unauthorized = 0;          ///< writes with a missing or wrong token (401)
  std::uint64_t forbidden = 0;             ///< writes while no token is configured (403)
  std::uint64_t not_found = 0;
  std::uint64_t method_not_allowed = 0;
  std::uint64_t internal_errors = 0;       ///< a handler threw (500)
  std::uint64_t conflicts = 0;             ///< refused by the state (409): a key operation running, a
                                           ///< member to down or leave that is no longer live
  std::uint64_t event_streams = 0;         ///< /api/v1/events streams opened
  std::uint64_t event_streams_refused = 0; ///< over max_event_streams (503)
  std::uint64_t events_sent = 0;           ///< frames (events and keep-alives) handed to stream clients
  std::uint64_t slow_clients_dropped = 0;  ///< stream clients dropped: too far behind or stuck
};

/// What the server reports on. Every pointer but `system` may be null; all must outlive the
/// server.
struct AdminSources {
  ActorSystem* system = nullptr;
  remoting::Transport* transport = nullptr;
  membership::MembershipService* membership = nullptr;
  sharding::Sharding* sharding = nullptr;
  /// Entity types this node runs (hosts or proxies): type, number of shards.
  std::vector<std::pair<std::string, std::uint32_t>> entity_types;
};

class AdminServer {
 public:
  /// Binds and starts serving on its own thread. Fails when the address cannot be bound.
  static Result<std::unique_ptr<AdminServer>> start(AdminOptions options, AdminSources sources);
  ~AdminServer();
  AdminServer(const AdminServer&) = delete;
  AdminServer& operator=(const AdminServer&) = delete;

  /// Closes the port and every connection, joins the thread. Idempotent.
  void stop();
  /// The bound port (the real one when options.port was 0).
  std::uint16_t port() const noexcept;
  AdminStats stats() const;

  struct Impl;

 private:
  explicit AdminServer(std::shared_ptr<Impl> impl);
  std::shared_ptr<Impl> impl_;
};

}  // namespace troupe::node
