#pragma once
/// \file
/// Membership configuration: SWIM/Lifeguard timings, dissemination, downing and flap damping,
/// with presets for a single machine, a LAN and a WAN. validate() names the first bad field.

#include <chrono>
#include <cstddef>
#include <string>

namespace troupe::membership {

using std::chrono::milliseconds;

struct MembershipConfig {
  /// Packets of another cluster are refused (it is authenticated data of every packet).
  std::string cluster_name = "troupe";

  // -- failure detection (SWIM + Lifeguard) --
  milliseconds probe_interval{1000};  ///< one probe per interval (stretched by local health)
  milliseconds probe_timeout{500};    ///< direct ack deadline, then ping-req through others
  unsigned indirect_checks = 3;       ///< k members asked to ping-req
  /// Suspicion lasts suspicion_mult * max(1, log10(n)) * probe_interval at least, and up to
  /// suspicion_max_mult times that without independent confirmations (Lifeguard).
  double suspicion_mult = 4;
  double suspicion_max_mult = 6;
  unsigned expected_confirmations = 3;  ///< confirmations that bring the timeout to its minimum
  unsigned max_local_health = 8;        ///< Lifeguard local-health multiplier cap

  // -- dissemination --
  unsigned retransmit_mult = 4;          ///< each update is piggybacked retransmit_mult*log10(n+1) times
  milliseconds gossip_interval{200};     ///< extra gossip packets to random members
  unsigned gossip_nodes = 3;
  milliseconds push_pull_interval{30000};  ///< full-state sync with one random member
  milliseconds join_retry_interval{500};
  /// The first seed forms a new cluster when no other seed answered within this time.
  milliseconds form_after{3000};
  /// An exiting member stops this long after it saw itself exiting even if the removal never
  /// reached it.
  milliseconds exit_timeout{10000};

  // -- downing (keep-majority split-brain resolver) --
  milliseconds stable_after{7000};      ///< the unreachable set must be unchanged this long
  milliseconds removal_margin{3000};    ///< down -> removed (and shards reallocated) after this
  bool auto_down = true;                ///< false: only an operator downs members
  /// A member whose gossip port answers two pings with ICMP port unreachable has lost its
  /// process (a partition never refuses): it is unreachable at once, without suspicion, and the
  /// leader, having seen the refusals itself, downs it without waiting stable_after when every
  /// unreachable member refuses (keep-majority still applies). false: refusals are ignored.
  bool down_on_refusal = true;

  // -- flap damping --
  unsigned flap_threshold = 4;          ///< reachability flips within flap_window...
  milliseconds flap_window{60000};
  milliseconds degraded_for{60000};     ///< ...make a member degraded until stable this long

  // -- bounds --
  std::size_t max_history = 256;        ///< decisions kept per node (why)
  std::size_t max_members = 100000;
  /// Largest incarnation jump accepted in one record (only refutations raise it, one by one).
  std::uint64_t max_incarnation_jump = 1u << 20;

  /// A single machine (tests, development): fast and tolerant of scheduler noise only.
  static MembershipConfig local();
  /// A data-centre LAN: detection in about two seconds.
  static MembershipConfig lan();
  /// Across regions: slower, more tolerant.
  static MembershipConfig wan();

  /// "" when valid, else "<field>: <problem>".
  std::string validate() const;
};

}  // namespace troupe::membership
