#pragma once
/// \file
/// Transport: actor messages between nodes over ZeroMQ, CURVE-authenticated by default.
///
/// One I/O thread owns every socket: a ROUTER bound on this node's port (CURVE server, gated by a
/// ZAP handler that admits only the allow-list) receives; one DEALER per peer incarnation
/// (CURVE client, connected on first use, reconnecting with back-off) sends. Actors hand
/// messages to the I/O thread through a queue; it packs whatever is queued for a peer into one
/// frame (up to `max_batch_bytes`), so CURVE's per-frame cost is shared by many messages.
///
/// Refs to remote actors come from resolve() or arrive as the sender of a remote message; they
/// are ordinary ActorRefs (tell, ask, watch). Delivery is at most once, FIFO per sender and
/// recipient. Everything Troupe cannot deliver goes to the system's dead letters and is counted
/// in stats(); frames already handed to ZeroMQ when a connection breaks are lost with it (the
/// disconnect is counted, the messages are not: at most once).

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <functional>
#include <span>
#include <string>
#include <string_view>

#include <troupe/actor/actor_system.hpp>
#include <troupe/remoting/address.hpp>
#include <troupe/remoting/frame.hpp>
#include <troupe/remoting/security.hpp>
#include <troupe/serialization/result.hpp>

namespace troupe::remoting {

struct TransportConfig {
  /// Interface to bind ("0.0.0.0" for all).
  std::string bind_host = "127.0.0.1";
  /// Port to bind; 0 picks a free one (see Transport::address()).
  std::uint16_t port = 7947;
  /// Host other nodes use to reach this one; empty: bind_host (which then must not be 0.0.0.0).
  std::string advertise_host;
  /// This node's CURVE key pair (required unless `insecure`).
  CurveKeyPair keys;
  /// Public keys allowed to connect (required unless `insecure`). Replace its contents at any
  /// time: new handshakes are checked against it, and frames from a connected peer whose key was
  /// removed are dropped.
  std::shared_ptr<AllowList> allow_list;
  /// NULL security: no encryption, no authentication. Local development only; logs a warning.
  bool insecure = false;
  /// ZAP domain of the ROUTER (must not be empty).
  std::string zap_domain = "troupe";
  /// Messages queued for one peer before new ones are dropped to dead letters.
  std::size_t max_queue_per_peer = 100'000;
  /// A frame is sent once it reaches this size (or when nothing more is queued).
  std::size_t max_batch_bytes = 64u << 10;
  /// Limits for decoding inbound frames; ZMQ_MAXMSGSIZE is max_frame_bytes + 64 KiB, so a
  /// somewhat larger frame is read and counted as oversized and a much larger one drops the
  /// connection (counted as a disconnect).
  FrameLimits limits{};
  /// Reconnect back-off of DEALERs (ZeroMQ doubles the interval up to the maximum).
  std::chrono::milliseconds reconnect_min{100};
  std::chrono::milliseconds reconnect_max{5000};
  /// After it handled a few messages, the I/O thread keeps polling without sleeping for this
  /// long (yielding the core between polls) before it blocks: a reply that follows a delivery
  /// within it is picked up without a wake-up, which on a request/response path is one sleep and
  /// wake-up fewer per hop. Not after a round that moved 16 or more messages, or left some
  /// waiting for room in ZeroMQ's queue: a stream's next frame comes anyway, and polling would
  /// take the core from the threads producing it. 0: block at once (fewest cycles when idle).
  std::chrono::microseconds idle_spin{200};
  /// This node's incarnation id; 0: random (the normal case; tests may pin it).
  std::uint64_t node_uid = 0;
};

/// Counters (monotonic) and gauges.
struct TransportStats {
  std::uint64_t frames_out = 0, frames_in = 0, bytes_out = 0, bytes_in = 0;
  std::uint64_t messages_out = 0, messages_in = 0;
  // Outbound drops (each message also counted as a dead letter of the actor system).
  std::uint64_t dropped_queue_full = 0;      ///< the peer's outbound queue was full
  std::uint64_t dropped_node_lost = 0;       ///< for an incarnation known to be gone
  std::uint64_t dropped_no_peer_key = 0;     ///< no CURVE key known for the peer's endpoint
  std::uint64_t dropped_key_revoked = 0;     ///< the peer's key was removed from the allow-list
  std::uint64_t dropped_stopped = 0;         ///< the transport stopped with messages queued
  std::uint64_t dropped_send_failed = 0;     ///< ZeroMQ refused the frame
  std::uint64_t dropped_oversized = 0;       ///< larger than a frame may be (FrameLimits::max_frame_bytes)
  // Inbound drops.
  std::uint64_t frames_malformed = 0;        ///< truncated, lying lengths, bad origin, bad version
  std::uint64_t frames_oversized = 0;
  std::uint64_t frames_wrong_node = 0;       ///< meant for another incarnation of this address
  std::uint64_t frames_from_lost_node = 0;   ///< sent by an incarnation declared lost
  std::uint64_t frames_origin_mismatch = 0;  ///< origin claim does not match the peer's key
  std::uint64_t envelopes_unknown_type = 0;
  std::uint64_t envelopes_bad_payload = 0;
  std::uint64_t envelopes_bad_path = 0;
  std::uint64_t envelopes_no_recipient = 0;  ///< no actor at the path (dead letter)
  /// an origin-bound type (MessageRegistry::add_origin_bound) whose sender is not an actor of
  /// the node that sent it
  std::uint64_t envelopes_forged_sender = 0;
  std::uint64_t terminated_unsolicited = 0;  ///< a Terminated no local watch asked for
  std::uint64_t terminated_resent = 0;       ///< a Terminated for a remote watcher sent again (the first was dropped)
  std::uint64_t frames_key_revoked = 0;      ///< from a key removed from the allow-list since its handshake
  // Connections.
  std::uint64_t handshakes_failed = 0;       ///< CURVE/ZAP handshake failures (both directions)
  std::uint64_t zap_refused = 0;             ///< ZAP denials (key not allowed, wrong mechanism)
  std::uint64_t disconnects = 0;
  std::uint64_t nodes_lost = 0;
  std::uint64_t wakeups = 0;                 ///< times a sender had to wake the sleeping I/O thread
  std::uint64_t io_errors = 0;               ///< exceptions caught on the I/O thread (logged; it goes on)
  std::uint64_t peers = 0;                   ///< gauge: remote incarnations known
  std::uint64_t queued = 0;                  ///< gauge: messages waiting to be sent, all peers
  std::uint64_t remote_watches = 0;          ///< gauge: local watchers of remote actors
};

/// Told when a node incarnation is gone for good: declared down by membership, or replaced by a
/// new incarnation at its address. Every watch of its actors yields Terminated{NodeDown} and its
/// queued messages go to dead letters; later messages for it are dropped, never delivered to a
/// successor.
class NodeLossListener {
 public:
  virtual ~NodeLossListener() = default;
  virtual void node_lost(std::uint64_t node, std::string_view reason) = 0;
};

class Transport final : public NodeLossListener {
 public:
  /// Binds and starts the I/O thread. Fails (naming the reason) on a bad config, a port in use,
  /// or when the ZAP gate cannot be installed.
  static Result<std::unique_ptr<Transport>> start(ActorSystem& system, TransportConfig config);
  ~Transport() override;
  Transport(const Transport&) = delete;
  Transport& operator=(const Transport&) = delete;

  /// Stops the I/O thread; queued messages go to dead letters. Refs stay valid (their messages
  /// go to dead letters). Idempotent. Call before the ActorSystem shuts down.
  void stop();

  /// This node's address.
  const NodeAddress& address() const noexcept;
  /// This node's CURVE public key (Z85; empty when insecure).
  std::string public_key() const;
  /// A ref to the actor at `address` ("troupe://<node>@<host>:<port>/<path>"): local for this
  /// node's own address, remote otherwise. Fails only on a malformed address.
  Result<ActorRef> resolve(std::string_view address);
  /// The full address of `ref` as other nodes can use it ("" for a null ref).
  std::string address_of(const ActorRef& ref);
  /// Declares the CURVE public key of the node listening at `endpoint` ("host:port"). Keys of
  /// peers that connect to this node are learned from their handshake.
  void add_peer_key(std::string_view endpoint, std::string_view public_key);
  /// The address (with its incarnation) of the node listening at `endpoint` ("host:port"), as
  /// it answers a hello: how a program that is not a member finds nodes it knows only by
  /// endpoint. Blocks up to `timeout` (std::errc::timed_out); needs the endpoint's CURVE key
  /// (std::errc::permission_denied without one). Any thread.
  Result<NodeAddress> discover(std::string_view endpoint, std::chrono::milliseconds timeout);
  /// A key heard of (e.g. in a gossip member record): taken only when that key is on the
  /// allow-list and no key is known yet for the endpoint (a configured or handshake-learned key
  /// is never replaced). True when taken. `uid`: the incarnation it is for, when known; a key
  /// learned for two incarnations at one endpoint (a restart with the same key file) stays
  /// while either is not lost.
  bool learn_peer_key(std::string_view endpoint, std::string_view public_key, std::uint64_t uid = 0);

  /// Sends `msg` to the remote actor `to` keyed to an entity behind it (a sharded entity behind
  /// its region): the id and stamps travel in the envelope, and the receiving node hands the
  /// message to the inbox set for `to`'s path (set_inbox). False, and nothing sent, when `to`
  /// is not a remote ref of this transport. The route's id is copied: it need not outlive the call.
  /// `msg` is moved from only when this returns true.
  bool tell_keyed(const ActorRef& to, Message&& msg, const ActorRef& sender, const KeyedRoute& route);
  bool tell_keyed(const ActorRef& to, const Message& msg, const ActorRef& sender, const KeyedRoute& route) {
    return tell_keyed(to, Message(msg), sender, route);
  }

  /// One inbound message for a local path with an inbox.
  struct Inbound {
    Message msg;
    ActorRef sender;
    const KeyedRoute* route;  ///< the entity it is for (valid during the call), or null
  };
  /// Takes the messages of one run, in order (it may move from them).
  using Inbox = std::function<void(std::span<Inbound>)>;
  /// From now on every message that arrives for the local actor at `path` goes to `inbox`, on
  /// the I/O thread (it must be quick and must not block), instead of the actor's mailbox; an
  /// empty `inbox` removes it. Consecutive messages of one frame for the path come in one call
  /// (a run), so that the inbox pays its own fixed costs once a run. A keyed message for a path
  /// without an inbox is dropped (counted in envelopes_no_recipient, and a dead letter).
  void set_inbox(std::string path, Inbox inbox);

  void node_lost(std::uint64_t node, std::string_view reason) override;

  TransportStats stats() const;

  struct Core;

 private:
  explicit Transport(std::shared_ptr<Core> core);
  std::shared_ptr<Core> core_;
};

}  // namespace troupe::remoting
