#include <troupe/membership/config.hpp>

#include <fmt/format.h>

#include <troupe/membership/member.hpp>

namespace troupe::membership {

MembershipConfig MembershipConfig::local() {
  MembershipConfig c;
  c.probe_interval = milliseconds(500);
  c.probe_timeout = milliseconds(200);
  c.suspicion_mult = 3;
  c.suspicion_max_mult = 4;
  c.gossip_interval = milliseconds(100);
  c.push_pull_interval = milliseconds(10000);
  c.join_retry_interval = milliseconds(200);
  c.form_after = milliseconds(1000);
  c.exit_timeout = milliseconds(5000);
  c.stable_after = milliseconds(3000);
  c.removal_margin = milliseconds(1000);
  return c;
}

MembershipConfig MembershipConfig::lan() {
  MembershipConfig c;
  c.probe_interval = milliseconds(500);
  c.probe_timeout = milliseconds(250);
  c.suspicion_mult = 3;
  c.suspicion_max_mult = 4;
  c.gossip_interval = milliseconds(200);
  c.push_pull_interval = milliseconds(30000);
  c.stable_after = milliseconds(5000);
  c.removal_margin = milliseconds(3000);
  return c;
}

MembershipConfig MembershipConfig::wan() {
  MembershipConfig c;
  c.probe_interval = milliseconds(5000);
  c.probe_timeout = milliseconds(3000);
  c.suspicion_mult = 6;
  c.suspicion_max_mult = 6;
  c.gossip_interval = milliseconds(500);
  c.gossip_nodes = 4;
  c.push_pull_interval = milliseconds(60000);
  c.join_retry_interval = milliseconds(2000);
  c.form_after = milliseconds(10000);
  c.exit_timeout = milliseconds(60000);
  c.stable_after = milliseconds(30000);
  c.removal_margin = milliseconds(15000);
  return c;
}

std::string MembershipConfig::validate() const {
  auto positive = [](milliseconds v) { return v.count() > 0; };
  if (cluster_name.empty() || cluster_name.size() > 64) return "cluster_name: must be 1 to 64 characters";
  for (unsigned char ch : cluster_name) {
    if (ch < 0x21 || ch > 0x7e) return "cluster_name: printable ASCII without spaces only";
  }
  if (!positive(probe_interval)) return "probe_interval: must be positive";
  if (!positive(probe_timeout) || probe_timeout >= probe_interval) {
    return "probe_timeout: must be positive and shorter than probe_interval";
  }
  if (indirect_checks > 16) return "indirect_checks: at most 16";
  if (suspicion_mult < 1) return "suspicion_mult: at least 1";
  if (suspicion_max_mult < 1) return "suspicion_max_mult: at least 1";
  if (expected_confirmations == 0) return "expected_confirmations: at least 1";
  if (max_local_health > 64) return "max_local_health: at most 64";
  if (retransmit_mult == 0) return "retransmit_mult: at least 1";
  if (!positive(gossip_interval)) return "gossip_interval: must be positive";
  if (!positive(push_pull_interval)) return "push_pull_interval: must be positive";
  if (!positive(join_retry_interval)) return "join_retry_interval: must be positive";
  if (form_after.count() < 0) return "form_after: must not be negative";
  if (!positive(exit_timeout)) return "exit_timeout: must be positive";
  if (!positive(stable_after)) return "stable_after: must be positive";
  if (removal_margin.count() < 0) return "removal_margin: must not be negative";
  if (flap_threshold < 2) return "flap_threshold: at least 2";
  if (!positive(flap_window)) return "flap_window: must be positive";
  if (degraded_for.count() < 0) return "degraded_for: must not be negative";
  if (max_history == 0) return "max_history: at least 1";
  if (max_members < 2) return "max_members: at least 2";
  if (max_incarnation_jump == 0) return "max_incarnation_jump: at least 1";
  return {};
}

const char* to_string(MemberStatus s) noexcept {
  switch (s) {
    case MemberStatus::joining: return "joining";
    case MemberStatus::up: return "up";
    case MemberStatus::leaving: return "leaving";
    case MemberStatus::exiting: return "exiting";
    case MemberStatus::down: return "down";
    case MemberStatus::removed: return "removed";
  }
  return "?";
}

const char* to_string(Liveness l) noexcept {
  switch (l) {
    case Liveness::alive: return "alive";
    case Liveness::suspect: return "suspect";
    case Liveness::unreachable: return "unreachable";
  }
  return "?";
}

bool older(const MemberInfo& a, const MemberInfo& b) noexcept {
  // 0 means not up yet: younger than any member that is.
  auto age = [](const MemberInfo& m) { return m.up_order ? m.up_order : UINT64_MAX; };
  const auto x = age(a), y = age(b);
  if (x != y) return x < y;
  if (a.name != b.name) return a.name < b.name;
  return a.uid < b.uid;
}

std::optional<MemberInfo> oldest_up(const std::vector<MemberInfo>& members) {
  const MemberInfo* best = nullptr;
  for (const auto& m : members) {
    if (m.status != MemberStatus::up || m.liveness == Liveness::unreachable) continue;
    if (!best || older(m, *best)) best = &m;
  }
  if (!best) return std::nullopt;
  return *best;
}

const char* to_string(EventKind k) noexcept {
  switch (k) {
    case EventKind::joined: return "joined";
    case EventKind::up: return "up";
    case EventKind::leaving: return "leaving";
    case EventKind::exiting: return "exiting";
    case EventKind::removed: return "removed";
    case EventKind::downed: return "downed";
    case EventKind::unreachable: return "unreachable";
    case EventKind::reachable: return "reachable";
    case EventKind::leader_changed: return "leader_changed";
    case EventKind::degraded: return "degraded";
    case EventKind::recovered: return "recovered";
    case EventKind::self_downed: return "self_downed";
    case EventKind::self_removed: return "self_removed";
    case EventKind::join_refused: return "join_refused";
  }
  return "?";
}

}  // namespace troupe::membership
