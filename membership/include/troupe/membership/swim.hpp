#pragma once
/// \file
/// SwimProtocol: the membership protocol as a deterministic state machine. It owns the member
/// table of this node and reacts to two things only: a datagram (on_packet) and the passage of
/// time (poll, at next_wakeup() or later). Time comes from the injected Clock, packets leave
/// through the injected PacketTransport, randomness from a seeded generator: the same code runs
/// on Asio UDP in production and with thousands of virtual nodes in the simulator (tests/sim).
///
/// SWIM probes with Lifeguard's refinements (local health stretches this node's timeouts,
/// suspicion timeouts shrink with independent confirmations, nacks from ping-req helpers),
/// refutation by incarnation, piggybacked dissemination (fewest-sent first, up to the packet
/// budget), push-pull full-state sync in datagram-sized chunks, join through seeds, graceful
/// leave, a leader (lowest reachable up member) that moves joining -> up and leaving -> exiting
/// -> removed once the reachable members have converged, keep-majority downing (sooner for members
/// whose gossip port refuses: their process is gone, see on_port_unreachable), flap damping,
/// and a bounded history of the decisions taken. Not thread-safe: one thread drives it.

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <span>
#include <string>
#include <vector>

#include <troupe/membership/config.hpp>
#include <troupe/membership/member.hpp>
#include <troupe/membership/packet_transport.hpp>
#include <troupe/serialization/histogram.hpp>

namespace spdlog { class logger; }

namespace troupe::membership {

/// Gossip protocol versions this build speaks.
inline constexpr std::uint16_t kGossipProtocolVersion = 1;
/// Roles a member may carry; a record with more, or with a role that is empty, longer than 64
/// characters or not printable ASCII, is rejected.
inline constexpr std::size_t kMaxRoles = 16;
/// "" when `roles` may be a member's roles, else what is wrong with them.
std::string validate_roles(const std::vector<std::string>& roles);
/// "" when every member would accept a record with this name and gossip host, else what is
/// wrong with them (naming the field): a name is 1 to 128 printable ASCII characters without
/// spaces, a host letters, digits and . - : _ (no zone index).
std::string validate_identity(std::string_view node_name, std::string_view gossip_host);

struct SwimStats {
  std::uint64_t packets_in = 0, packets_out = 0;
  std::uint64_t probes = 0, probe_failures = 0, indirect_probes = 0, nacks_received = 0;
  std::uint64_t suspicions = 0, refutations = 0, unreachable_declared = 0;
  std::uint64_t port_refusals = 0;        ///< ICMP port unreachable from a member's gossip endpoint
  std::uint64_t updates_sent = 0, updates_received = 0;
  std::uint64_t push_pulls = 0;
  std::uint64_t repairs = 0;              ///< push-pulls started because two stable views differed
  // Drops (each also logged, throttled).
  std::uint64_t malformed = 0;            ///< not a verifiable gossip packet
  std::uint64_t unknown_body = 0;         ///< a body type this version does not know
  std::uint64_t wrong_version = 0;        ///< another protocol version (answered with Refused)
  std::uint64_t rejected_records = 0;     ///< bad names or addresses, impossible incarnations
  std::uint64_t misdirected = 0;          ///< a ping meant for another incarnation
  std::uint64_t stale = 0;                ///< answers nobody waits for
  std::uint64_t subscriber_failures = 0;  ///< exceptions from event subscribers (logged; the others still heard)
  std::uint64_t forgotten_records = 0;    ///< records of members removed long ago (their records expired): ignored
  std::uint64_t forgotten_told = 0;       ///< such a member talked, and was told it is down
  std::uint64_t forgotten_corrected = 0;  ///< a member still gossiped such a record, and was told it is removed
  std::uint64_t records_too_large = 0;    ///< times a member record no datagram can carry (a larger MTU's member) was left out
  std::uint64_t local_health = 0;         ///< gauge: Lifeguard multiplier (0 = healthy)
  /// Failure detection: from this node's first suspicion of a member to declaring it
  /// unreachable (a refused port skips the suspicion: not counted here).
  Histogram detection;
  /// Downing: from a member ceasing to be alive here (suspected, or its port refused) to its
  /// downing, as this node saw it.
  Histogram downing;
};

/// A keyring change the cluster applies member by member (see SwimProtocol::key_operation).
enum class KeyOp : std::uint8_t { install = 1, use = 2, remove = 3 };
const char* to_string(KeyOp op) noexcept;

struct KeyOpResult {
  KeyOp op = KeyOp::install;
  std::vector<std::string> confirmed;                       ///< members that applied it (this node too)
  std::vector<std::pair<std::string, std::string>> failed;  ///< member, its error
  std::vector<std::string> missing;                         ///< live members that did not answer in time
  bool ok() const { return failed.empty() && missing.empty(); }
};

/// Member identities (name, uid, endpoints, key: what never changes about a member) shared by
/// the protocols that use one pool, so that each is stored once however many views hold it: the
/// simulator runs thousands of protocols on one thread. Not thread-safe: the protocols sharing a
/// pool must run on one thread. A protocol given none has a pool of its own.
class IdentityPool;
std::shared_ptr<IdentityPool> make_identity_pool();

class SwimProtocol {
 public:
  /// Applies a keyring change on this node; returns "" or the error.
  using KeyHandler = std::function<std::string(KeyOp, std::span<const std::uint8_t> key)>;
  struct Identity {
    std::string name;
    std::uint64_t uid = 0;  ///< non-zero; the remoting incarnation when there is one
    UdpEndpoint gossip;     ///< the advertised gossip endpoint
    std::string remoting;
    std::string curve_key;
    std::vector<std::string> roles;  ///< at most kMaxRoles, each 1 to 64 printable characters
  };

  /// Empty when this node's record fits a datagram of `max_payload` bytes with the packet around
  /// it, else why not (its name, addresses and roles together outgrow the MTU: no member could
  /// learn of it).
  static std::string record_fits(const Identity& self, std::size_t max_payload);

  SwimProtocol(MembershipConfig config, Identity self, const Clock& clock, PacketTransport& transport,
               std::uint64_t seed, std::shared_ptr<spdlog::logger> log, std::shared_ptr<IdentityPool> pool = nullptr);
  ~SwimProtocol();
  SwimProtocol(const SwimProtocol&) = delete;
  SwimProtocol& operator=(const SwimProtocol&) = delete;

  /// Starts joining through `seeds` (the node's own endpoint may be among them). With no seed,
  /// or when this node is the first seed and nobody answers within form_after, it forms a new
  /// cluster on its own. A lone seed that is this node forms at once, unless `wait_to_form`
  /// (seeds that came from a DNS name: the other nodes behind it may not be listed yet).
  void join(std::vector<UdpEndpoint> seeds, bool wait_to_form = false);
  /// Instead of join(): starts as a member of a cluster that has formed and converged, whose
  /// members are `members` (this node among them, by uid; others it does not list are ignored):
  /// every one up and alive here with the up_order and incarnation given, every view digest
  /// equal. No joined or up events are published for them (the first maintenance publishes the
  /// leader). Call it before any packet arrives: members already known keep what they have. For
  /// simulations of clusters too large to form by joins in reasonable time (tests/sim, the
  /// membership benchmark); a node process joins.
  void assume_formed(std::span<const MemberInfo> members);
  /// While joining: the seeds as resolved again (a DNS name lists more nodes as they start).
  /// The form_after wait keeps running from join().
  void update_seeds(std::vector<UdpEndpoint> seeds);
  /// True until this node is in a cluster (joined one, or formed one).
  bool joining() const;
  /// Leaves gracefully: leaving -> exiting -> removed, then self_removed. This node by its uid.
  void leave();
  /// Operator actions on any member by name; false when unknown. Of two live members with one
  /// name (a restarted process and its earlier incarnation), on the newer.
  bool leave(const std::string& name);
  bool down(const std::string& name);

  /// A datagram's plaintext from `from`.
  void on_packet(const UdpEndpoint& from, std::span<const std::uint8_t> packet);
  /// A peer refused us (sealed for another cluster name, seen by the transport).
  void on_refused(const UdpEndpoint& from, const std::string& reason);
  /// The transport saw ICMP port unreachable for a datagram sent to `to`: no process listens
  /// there (see MembershipConfig::down_on_refusal).
  void on_port_unreachable(const UdpEndpoint& to);
  /// A Refused packet from this node, to answer a packet this node cannot accept (e.g. one of
  /// another cluster: the transport seals it under that cluster's name).
  std::vector<std::uint8_t> refusal(const std::string& reason) const;
  /// Does what is due at clock.now().
  void poll();
  /// When poll() next has something to do.
  std::chrono::nanoseconds next_wakeup() const;

  /// How this node applies keyring changes (none: every KeyOp is refused).
  void set_key_handler(KeyHandler fn);
  /// Applies `op` here, then asks every live member (joining, up, leaving, exiting) to apply it,
  /// resending to those that have not answered; `done` runs once all answered or `timeout`
  /// passed. Serf-style rotation is install everywhere, then use, then remove, each step only
  /// after the previous one was confirmed by every member.
  void key_operation(KeyOp op, std::vector<std::uint8_t> key, std::chrono::nanoseconds timeout,
                     std::function<void(KeyOpResult)> done);

  /// Called synchronously for every event, in order.
  void subscribe(std::function<void(const MembershipEvent&)> fn);

  std::vector<MemberInfo> members() const;  ///< all but removed
  std::optional<MemberInfo> member(const std::string& name) const;
  std::optional<MemberInfo> leader() const;
  MemberInfo self() const;
  const UdpEndpoint& endpoint() const;  ///< this node's advertised gossip endpoint
  bool stopped() const noexcept;  ///< downed or removed: it no longer takes part
  /// Decisions about `name` (all when empty), oldest first.
  std::vector<Decision> history(const std::string& name = {}) const;
  SwimStats stats() const;
  /// Hash of this node's view of member statuses (equal on converged nodes).
  std::uint64_t digest() const;

  struct State;

 private:
  std::unique_ptr<State> s_;
};

}  // namespace troupe::membership
