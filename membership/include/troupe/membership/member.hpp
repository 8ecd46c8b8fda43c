#pragma once
/// \file
/// Members as the rest of Troupe sees them, the events membership publishes, and the decision
/// history (why a node suspected, downed or moved something).

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <troupe/membership/packet_transport.hpp>

namespace troupe::membership {

/// Decided by the cluster; never moves backwards.
enum class MemberStatus : std::uint8_t { joining = 0, up, leaving, exiting, down, removed };
/// This node's view of a member's reachability (SWIM).
enum class Liveness : std::uint8_t { alive = 0, suspect, unreachable };

const char* to_string(MemberStatus s) noexcept;
const char* to_string(Liveness l) noexcept;

struct MemberInfo {
  std::string name;
  std::uint64_t uid = 0;     ///< process incarnation (random at start)
  UdpEndpoint gossip;
  std::string remoting;      ///< "troupe://<uid>@<host>:<port>" or ""
  std::string curve_key;     ///< Z85 or ""
  /// What the member is for, fixed at its start (e.g. "worker"); routers can pick members by role.
  std::vector<std::string> roles;
  std::uint64_t incarnation = 0;
  MemberStatus status = MemberStatus::joining;
  /// Order in which members became up, assigned by the leader (1 for the member that formed the
  /// cluster); lower is older; ties (possible only after a partition) broken by name then uid.
  /// 0 = not up yet. Once set it never changes (but for two given on both sides of a split: the
  /// smaller wins), so every node ends with the same age order.
  std::uint64_t up_order = 0;
  Liveness liveness = Liveness::alive;
  bool degraded = false;     ///< flapping: gets no new shards until stable
};

/// True when `a` is older than `b`: smaller non-zero up_order (0, not up yet, is the youngest),
/// then name, then uid. A strict total order on distinct members.
bool older(const MemberInfo& a, const MemberInfo& b) noexcept;
/// The oldest member that is up and not unreachable (where a cluster singleton runs), if any.
std::optional<MemberInfo> oldest_up(const std::vector<MemberInfo>& members);

enum class EventKind {
  joined,          ///< a member appeared (status joining)
  up,
  leaving,
  exiting,
  removed,
  downed,
  unreachable,
  reachable,
  leader_changed,  ///< member = the new leader (empty name: none)
  degraded,
  recovered,
  self_downed,     ///< this node was downed (by the resolver or an operator): it must stop
  self_removed,    ///< this node left the cluster: it may stop
  join_refused,    ///< a seed refused this node (detail says why)
};
const char* to_string(EventKind k) noexcept;

struct MembershipEvent {
  EventKind kind;
  MemberInfo member;
  std::chrono::nanoseconds at{0};  ///< monotonic
  std::string detail;
};

/// One explained decision.
struct Decision {
  std::chrono::nanoseconds at{0};  ///< monotonic
  std::string subject;             ///< member name
  std::string what;
};

}  // namespace troupe::membership
