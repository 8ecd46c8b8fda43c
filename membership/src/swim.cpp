// The SWIM/Lifeguard protocol core. See swim.hpp for what it does; the comments here say why.

#include <troupe/membership/swim.hpp>

#include <algorithm>
#include <cmath>
#include <unordered_map>
#include <unordered_set>

#include <fmt/format.h>
#include <spdlog/logger.h>

#include <troupe/serialization/gossip_generated.h>
#include <troupe/serialization/log.hpp>

namespace troupe::membership {

using std::chrono::nanoseconds;
namespace fb = flatbuffers;

namespace {

constexpr std::size_t kMaxText = 256;  // names, hosts, remoting addresses, keys

bool printable(std::string_view s, std::size_t max) {
  if (s.size() > max) return false;
  for (unsigned char c : s) {
    if (c < 0x21 || c > 0x7e) return false;
  }
  return true;
}

bool valid_host(std::string_view h) {
  if (h.empty() || h.size() > 253) return false;
  for (unsigned char c : h) {
    if (!(std::isalnum(c) || c == '.' || c == '-' || c == ':' || c == '_')) return false;
  }
  return true;
}

std::uint64_t mix(std::uint64_t x) {
  // splitmix64 finaliser: a well-spread per-member hash for the XOR digest.
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

std::uint64_t member_hash(std::uint64_t uid, MemberStatus s) { return mix(uid ^ (std::uint64_t(s) << 56)); }

/// A member record as it arrives: views into the packet, nothing copied until a member that is
/// new to this node has to be stored.
struct Rec {
  std::string_view name, host, remoting, curve_key;
  std::uint16_t port = 0;
  std::uint64_t uid = 0, incarnation = 0, from_uid = 0, up_order = 0;
  MemberStatus status = MemberStatus::joining;
  Liveness liveness = Liveness::alive;
  bool bad_enum = false;  // a status or liveness this version does not know (the record is rejected)
  // The roles: from a packet, or from a MemberInfo (assume_formed).
  const flatbuffers::Vector<flatbuffers::Offset<flatbuffers::String>>* packet_roles = nullptr;
  const std::vector<std::string>* info_roles = nullptr;
  std::size_t role_count() const {
    return packet_roles ? packet_roles->size() : info_roles ? info_roles->size() : 0;
  }
  std::string_view role(std::size_t i) const {
    if (info_roles) return (*info_roles)[i];
    const auto* s = packet_roles->Get(static_cast<flatbuffers::uoffset_t>(i));
    return s ? std::string_view(s->c_str(), s->size()) : std::string_view();
  }
};

bool valid_role(std::string_view r) { return !r.empty() && printable(r, 64); }

}  // namespace

/// What never changes about a member (one process incarnation): stored once per pool and shared
/// by every view that holds the member.
struct Ident {
  std::string name;
  std::uint64_t uid = 0;
  UdpEndpoint gossip;
  std::string remoting;
  std::string curve_key;
  std::vector<std::string> roles;
  bool same(const Rec& r) const {
    if (r.uid != uid || r.name != name || r.host != gossip.host || r.port != gossip.port || r.remoting != remoting ||
        r.curve_key != curve_key || r.role_count() != roles.size()) {
      return false;
    }
    for (std::size_t i = 0; i < roles.size(); ++i) {
      if (r.role(i) != roles[i]) return false;
    }
    return true;
  }
};

std::string validate_identity(std::string_view node_name, std::string_view gossip_host) {
  if (node_name.empty() || !printable(node_name, 128)) {
    return fmt::format("node_name: {:?} is not 1 to 128 printable ASCII characters without spaces", node_name);
  }
  if (!valid_host(gossip_host)) {
    return fmt::format("advertise_host: {:?} is not a host name or address every member accepts "
                       "(letters, digits and . - : _; no zone index)", gossip_host);
  }
  return {};
}

namespace {
/// An upper bound of a member record's bytes in a packet (8 of them for up_order).
template <class Id>
std::size_t record_estimate(const Id& i) {
  std::size_t roles = i.roles.empty() ? 0 : 8;
  for (const auto& r : i.roles) roles += 8 + r.size();
  return 104 + i.name.size() + i.gossip.host.size() + i.remoting.size() + i.curve_key.size() + roles;
}
/// A packet's bytes around its records, at most (push-pull's, the larger), beside its sender's name.
constexpr std::size_t kPacketFrame = 200 + 4 + 64;
}  // namespace

std::string validate_roles(const std::vector<std::string>& roles) {
  if (roles.size() > kMaxRoles) return fmt::format("roles: at most {}, not {}", kMaxRoles, roles.size());
  for (const auto& r : roles) {
    if (!valid_role(r)) return fmt::format("roles: {:?} is not 1 to 64 printable ASCII characters without spaces", r);
  }
  return {};
}

std::string SwimProtocol::record_fits(const Identity& self, std::size_t max_payload) {
  const auto need = record_estimate(self) + kPacketFrame + self.name.size();
  if (need <= max_payload) return {};
  return fmt::format("roles: this node's record (name, addresses and {} roles) takes up to {} bytes of a gossip "
                     "datagram, which carries {} with this mtu: fewer or shorter roles, or a larger mtu",
                     self.roles.size(), need, max_payload);
}

class IdentityPool {
 public:
  std::shared_ptr<const Ident> intern(const Rec& r) {
    auto& slot = by_uid_[r.uid];
    if (auto held = slot.lock(); held && held->same(r)) return held;
    std::vector<std::string> roles;
    roles.reserve(r.role_count());
    for (std::size_t i = 0; i < r.role_count(); ++i) roles.emplace_back(r.role(i));
    auto made = std::make_shared<const Ident>(Ident{std::string(r.name), r.uid, UdpEndpoint{std::string(r.host), r.port},
                                                    std::string(r.remoting), std::string(r.curve_key), std::move(roles)});
    slot = made;  // a different identity under a known uid (forged or a bug) replaces it here only
    if (by_uid_.size() >= sweep_at_) sweep();
    return made;
  }

 private:
  // Identities no view holds any more (removed members, restarted processes) go at the sweeps.
  void sweep() {
    std::erase_if(by_uid_, [](const auto& kv) { return kv.second.expired(); });
    sweep_at_ = std::max<std::size_t>(1024, 2 * by_uid_.size());
  }
  std::unordered_map<std::uint64_t, std::weak_ptr<const Ident>> by_uid_;
  std::size_t sweep_at_ = 1024;
};

std::shared_ptr<IdentityPool> make_identity_pool() { return std::make_shared<IdentityPool>(); }

struct SwimProtocol::State {
  // One member in this node's view. Kept small: a simulation of n nodes holds n^2 of them, and
  // what only a few members need at a time (a suspicion, reachability flips, refusals) lives in
  // the side tables below.
  struct Node {
    std::shared_ptr<const Ident> id;
    std::uint64_t incarnation = 0;
    std::uint64_t up_order = 0;
    std::uint64_t digest_seen = 0;
    nanoseconds status_since{0};
    nanoseconds digest_seen_since{0};
    nanoseconds hinted_at{0};  // when it was last told directly that this node suspects it
    nanoseconds asked_at{0};   // when the leader last pinged it for its view digest
    std::uint32_t pings = 0;   // pings sent to it
    std::uint16_t transmits_left = 0;
    bool tx_news = false;      // its pending transmissions carry a status change (sent first)
    MemberStatus status = MemberStatus::joining;
    Liveness liveness = Liveness::alive;
    bool degraded = false;
  };
  struct Suspicion {
    std::uint64_t from = 0;  // who this node last heard it from (passed on with the record)
    nanoseconds start{0}, deadline{0};
    std::set<std::uint64_t> confirmers;
  };
  struct Flaps {
    std::vector<nanoseconds> flips;  // within flap_window
    nanoseconds last{0};             // the last change between alive and not alive
  };
  // Evidence that its process is gone: ICMP port unreachable for pings to its gossip port.
  struct Refusals {
    unsigned count = 0;                   // counted, each after another ping (a stray ICMP is one)
    nanoseconds at{0};                    // the last one counted
    std::uint32_t pings_at = 0;           // pings when the last refusal was counted
    nanoseconds verified_at{0};           // when the leader last pinged it to see the refusal itself
  };
  struct Probe {
    std::uint64_t target = 0;
    std::uint64_t seq = 0;
    nanoseconds direct_deadline{0}, final_deadline{0};
    bool indirect_sent = false;
    unsigned nacks_expected = 0, nacks = 0;
  };
  struct Relay {
    UdpEndpoint requester;
    std::uint64_t their_seq = 0;
    nanoseconds deadline{0};
  };

  State(MembershipConfig c, Identity id, const Clock& clk, PacketTransport& t, std::uint64_t seed,
        std::shared_ptr<spdlog::logger> l, std::shared_ptr<IdentityPool> p)
      : cfg(std::move(c)), clock(clk), transport(t), rng(seed), log(std::move(l)),
        pool(p ? std::move(p) : make_identity_pool()) {
    self_uid = id.uid;
    Node me;
    me.id = std::make_shared<const Ident>(Ident{std::move(id.name), id.uid, std::move(id.gossip), std::move(id.remoting),
                                                std::move(id.curve_key), std::move(id.roles)});
    me.status_since = clock.now();
    self_node = &nodes.emplace(self_uid, std::move(me)).first->second;
    digest_value = member_hash(self_uid, MemberStatus::joining);
  }

  // ---- helpers -------------------------------------------------------------------------------
  nanoseconds now() const { return clock.now(); }
  Node& me() { return *self_node; }
  const Node& me() const { return *self_node; }
  static MemberInfo info_of(const Node& n) {
    MemberInfo i;
    if (n.id) {
      i.name = n.id->name;
      i.uid = n.id->uid;
      i.gossip = n.id->gossip;
      i.remoting = n.id->remoting;
      i.curve_key = n.id->curve_key;
      i.roles = n.id->roles;
    }
    i.incarnation = n.incarnation;
    i.status = n.status;
    i.up_order = n.up_order;
    i.liveness = n.liveness;
    i.degraded = n.degraded;
    return i;
  }
  nanoseconds last_flip(const Node& n) const {
    auto it = flaps.find(n.id->uid);
    return it == flaps.end() ? nanoseconds{0} : it->second.last;
  }
  /// Forgets a member entirely (an expired tombstone).
  Node* live_named(const std::string& name);
  void erase_node(std::uint64_t uid) {
    auto n = nodes.find(uid);
    if (n == nodes.end() || uid == self_uid) return;
    if (n->second.transmits_left) pending_tx[tx_key(n->second)].erase(uid);
    refused.erase(uid);
    suspects.erase(uid);
    flaps.erase(uid);
    refusals.erase(uid);
    nodes.erase(n);
  }
  bool stopped() const {
    auto s = me().status;
    return s == MemberStatus::down || s == MemberStatus::removed || self_exited;
  }
  static bool live_status(MemberStatus s) { return s != MemberStatus::down && s != MemberStatus::removed; }
  std::size_t cluster_size() const { return std::max<std::size_t>(1, live_count); }
  nanoseconds scaled(milliseconds d) const { return nanoseconds(d) * (local_health + 1); }
  /// How much rarer full-state exchanges (periodic push-pulls, digest repairs) are than
  /// configured: 1 up to 32 members, then one more per doubling (memberlist's pushPullScale), so
  /// that the cluster-wide O(n^2) traffic they cost grows like n log n.
  unsigned push_pull_scale() const {
    const auto n = cluster_size();
    if (n <= 32) return 1;
    return static_cast<unsigned>(std::ceil(std::log2(double(n)) - 5.0)) + 1;
  }

  void decide(const std::string& subject, std::string what) {
    if (history.size() >= cfg.max_history) history.pop_front();
    history.push_back(Decision{now(), subject, std::move(what)});
  }
  void emit(EventKind k, const Node& n, std::string detail = {}) {
    MembershipEvent e{k, info_of(n), now(), std::move(detail)};
    // A subscriber runs in the middle of a state change: one that throws must neither leave the
    // change half done nor keep the others from hearing of it.
    for (auto& fn : subscribers) {
      try {
        fn(e);
      } catch (const std::exception& ex) {
        ++stats.subscriber_failures;
        log->error("a membership subscriber failed on {} of {:?}: {}", to_string(k), e.member.name, ex.what());
      } catch (...) {
        ++stats.subscriber_failures;
        log->error("a membership subscriber failed on {} of {:?} (not a std::exception)", to_string(k), e.member.name);
      }
    }
  }
  unsigned retransmit_limit() const {
    return cfg.retransmit_mult * static_cast<unsigned>(std::ceil(std::log10(double(cluster_size()) + 1)));
  }
  /// Queues `n`'s record for piggybacking, retransmit_limit() times. `news`: a change of
  /// membership (a member appeared, changed status or got its age), which goes before liveness
  /// chatter (suspicions, refutations): in a large cluster with some loss there is always more
  /// chatter than packets can carry, and fewest-sent-first alone starved older news.
  void broadcast(Node& n, bool news = false) {
    if (n.transmits_left) pending_tx[tx_key(n)].erase(n.id->uid);
    n.tx_news = news || (n.tx_news && n.transmits_left);
    n.transmits_left = static_cast<std::uint16_t>(retransmit_limit());
    pending_tx[tx_key(n)].insert(n.id->uid);
  }
  static unsigned tx_key(const Node& n) { return n.transmits_left + (n.tx_news ? 0x10000u : 0u); }

  // ---- statuses and liveness -------------------------------------------------------------------
  void set_status(Node& n, MemberStatus s, const std::string& why) {
    if (s <= n.status) return;
    view_changed = true;
    const bool was_live = live_status(n.status);
    // The digest covers members that are not removed: a removed member leaves it entirely, so
    // that a node that never knew it (a later joiner) can still converge with the others.
    digest_value ^= member_hash(n.id->uid, n.status);
    if (s != MemberStatus::removed) digest_value ^= member_hash(n.id->uid, s);
    digest_changed_at = now();
    n.status = s;
    n.status_since = now();
    if (was_live && !live_status(s) && live_count) --live_count;
    const auto age = s == MemberStatus::up && n.up_order ? fmt::format(", up_order {}", n.up_order) : "";
    decide(n.id->name, fmt::format("status -> {} ({}){}", to_string(s), why, age));
    log->info("member {} ({}) is {}: {}{}", n.id->name, fmt::format("{:016x}", n.id->uid), to_string(s), why, age);
    broadcast(n, true);
    const bool is_me = n.id->uid == self_uid;
    switch (s) {
      case MemberStatus::up: emit(EventKind::up, n, why); break;
      case MemberStatus::leaving: emit(EventKind::leaving, n, why); break;
      case MemberStatus::exiting:
        emit(EventKind::exiting, n, why);
        if (is_me) exiting_since = now();
        break;
      case MemberStatus::down:
        if (!is_me && n.liveness != Liveness::alive) stats.downing.observe(now() - last_flip(n));
        emit(EventKind::downed, n, why);
        if (is_me) emit(EventKind::self_downed, n, why);
        break;
      case MemberStatus::removed:
        emit(EventKind::removed, n, why);
        if (is_me) emit(EventKind::self_removed, n, why);
        removed_at[n.id->uid] = now();
        break;
      case MemberStatus::joining: break;
    }
    if (is_me && (s == MemberStatus::down || s == MemberStatus::removed)) {
      // Tell the others once more before going quiet.
      send_gossip_round(true);
    }
  }

  void set_liveness(Node& n, Liveness l, const std::string& why) {
    const Liveness old = n.liveness;
    if (old == l) return;
    if (old == Liveness::suspect && l == Liveness::unreachable) stats.detection.observe(now() - last_flip(n));
    // What maintenance recounts (the leader, members to move, the unreachable) does not depend on
    // suspicions: a large cluster with some loss suspects someone nearly all the time, and each
    // rescan costs O(members).
    if ((old == Liveness::unreachable) != (l == Liveness::unreachable)) view_changed = true;
    n.liveness = l;
    if ((old == Liveness::alive) != (l == Liveness::alive)) {
      auto& f = flaps[n.id->uid];
      f.flips.push_back(now());
      f.last = now();
      std::erase_if(f.flips, [&](nanoseconds at) { return now() - at > nanoseconds(cfg.flap_window); });
      if (!n.degraded && f.flips.size() >= cfg.flap_threshold) {
        n.degraded = true;
        ++degraded_count;
        decide(n.id->name, fmt::format("degraded: {} reachability flips within {} ms", f.flips.size(),
                                        cfg.flap_window.count()));
        emit(EventKind::degraded, n);
      }
    }
    if (l != Liveness::suspect) {
      if (auto it = suspects.find(n.id->uid); it != suspects.end()) {
        suspicions.erase({it->second.deadline, n.id->uid});
        suspects.erase(it);
      }
    }
    if (l == Liveness::unreachable) {
      decide(n.id->name, "unreachable: " + why);
      log->warn("member {} is unreachable: {}", n.id->name, why);
      emit(EventKind::unreachable, n, why);
    } else if (old == Liveness::unreachable) {
      decide(n.id->name, "reachable again: " + why);
      log->info("member {} is reachable again: {}", n.id->name, why);
      emit(EventKind::reachable, n, why);
    }
  }

  nanoseconds suspicion_timeout(std::size_t confirmations) const {
    const double n = double(cluster_size());
    const double min = cfg.suspicion_mult * std::max(1.0, std::log10(n)) * double(nanoseconds(cfg.probe_interval).count());
    const double max = cfg.suspicion_max_mult * min;
    const double k = double(cfg.expected_confirmations);
    double t = max - (max - min) * std::log(double(confirmations) + 1) / std::log(k + 1);
    return nanoseconds(static_cast<std::int64_t>(std::max(min, t)));
  }

  void suspect(Node& n, std::uint64_t incarnation, std::uint64_t from, const std::string& why) {
    n.incarnation = incarnation;
    if (n.liveness != Liveness::suspect) {
      set_liveness(n, Liveness::suspect, why);
      ++stats.suspicions;
      auto& sp = suspects[n.id->uid];
      sp.start = now();
      sp.from = from;
      sp.confirmers = {from};
      sp.deadline = sp.start + suspicion_timeout(0);
      suspicions.insert({sp.deadline, n.id->uid});
      decide(n.id->name, fmt::format("suspected by {:016x}: {} (incarnation {}, timeout {} ms)", from, why,
                                      incarnation, sp.deadline.count() / 1'000'000 - now().count() / 1'000'000));
      broadcast(n);
      return;
    }
    auto& sp = suspects[n.id->uid];
    if (sp.confirmers.size() < 64 && sp.confirmers.insert(from).second) {
      // Lifeguard: an independent confirmation shortens the suspicion.
      suspicions.erase({sp.deadline, n.id->uid});
      sp.deadline = sp.start + suspicion_timeout(sp.confirmers.size() - 1);
      suspicions.insert({sp.deadline, n.id->uid});
      decide(n.id->name, fmt::format("suspicion confirmed by {:016x} ({} confirmations)", from, sp.confirmers.size() - 1));
      // Pass the confirmation on (this node's own evidence or news of another's), so that every
      // node counts it: one originator's retransmissions alone reach only some of them.
      sp.from = from;
      broadcast(n);
    }
  }

  void refute(std::uint64_t claimed, const std::string& why) {
    Node& m = me();
    if (claimed >= m.incarnation && claimed - m.incarnation >= cfg.max_incarnation_jump) {
      // Nobody can have seen such an incarnation of this node: a forged record; keep counting.
      ++stats.rejected_records;
      return;
    }
    m.incarnation = std::max(m.incarnation, claimed) + 1;
    ++stats.refutations;
    local_health = std::min(local_health + 1, cfg.max_local_health);
    decide(m.id->name, fmt::format("refuted '{}' with incarnation {}", why, m.incarnation));
    broadcast(m);
  }

  // ---- merging what others say -----------------------------------------------------------------
  /// An up_order gossiped for `n`. Set once and never changed, so that the age order is the same
  /// everywhere; two different ones (given on both sides of a split) settle on the smaller.
  void learn_up_order(Node& n, std::uint64_t given) {
    if (given == 0 || given == n.up_order) return;
    max_up_order = std::max(max_up_order, given);
    if (n.up_order != 0 && n.up_order < given) {
      broadcast(n, true);  // the sender holds the larger one: spread the smaller
      return;
    }
    if (n.up_order != 0) {
      decide(n.id->name, fmt::format("up_order {} -> {}: the smaller of two given on both sides of a split",
                                      n.up_order, given));
    }
    n.up_order = given;
    broadcast(n, true);
  }

  static bool valid(const Rec& r) {
    if (r.bad_enum || r.role_count() > kMaxRoles) return false;
    for (std::size_t i = 0; i < r.role_count(); ++i) {
      if (!valid_role(r.role(i))) return false;
    }
    return r.uid != 0 && !r.name.empty() && printable(r.name, 128) && valid_host(r.host) && r.port != 0 &&
           printable(r.remoting, kMaxText) && (r.remoting.empty() || r.remoting.starts_with("troupe://")) &&
           printable(r.curve_key, kMaxText);
  }

  /// `from`: the uid of the member whose packet carried the record.
  void merge(const Rec& r, std::uint64_t from) {
    ++stats.updates_received;
    if (!valid(r)) {
      ++stats.rejected_records;
      drop_log.warn(*log, "rejected a member record with a malformed name, address, status or liveness ({:?}, {:?})",
                    r.name, r.host);
      return;
    }
    const auto& in = r;
    if (in.uid == self_uid) return merge_about_self(r);
    if (forgotten.count(in.uid)) {
      // Removed long ago (its record expired): gone for good, whatever its record says now. The
      // sender missed the removal (cut off while it happened): its view would differ from
      // everyone's for good (no convergence, so the leader would move nobody), and it would
      // gossip the member back in once its entry here expires. It is told (on_packet).
      ++stats.forgotten_records;
      if (in.status != MemberStatus::removed && from != in.uid) stale_about_forgotten.push_back(in.uid);
      return;
    }
    auto it = nodes.find(in.uid);
    if (it == nodes.end()) {
      if (in.status == MemberStatus::removed) return;
      if (nodes.size() >= cfg.max_members) {
        ++stats.rejected_records;
        return;
      }
      if (in.incarnation >= cfg.max_incarnation_jump) {
        // Incarnations start at 0 and only refutations raise them, one by one.
        ++stats.rejected_records;
        drop_log.warn(*log, "rejected the first record of {} at incarnation {}", in.name, in.incarnation);
        return;
      }
      // A restarted process joins under its old name with a new uid: the old one is gone. Only
      // the joining process itself says so: a joining record passed on by another member may
      // be an earlier incarnation's (one that crashed while joining), older than the member of
      // that name here, which it would down. The others learn of the downing by gossip.
      if (in.status == MemberStatus::joining && from == in.uid) {
        for (auto& [uid, other] : nodes) {
          if (uid != self_uid && other.id->name == in.name && live_status(other.status)) {
            set_status(other, MemberStatus::down, fmt::format("restarted as incarnation {:016x}", in.uid));
          }
        }
      }
      Node n;
      n.id = pool->intern(in);
      n.incarnation = in.incarnation;
      n.up_order = in.up_order;
      n.status_since = now();
      view_changed = true;
      auto& added = nodes.emplace(in.uid, std::move(n)).first->second;
      max_up_order = std::max(max_up_order, in.up_order);
      ++live_count;
      digest_value ^= member_hash(in.uid, MemberStatus::joining);
      digest_changed_at = now();
      // At a random place in the probe order (as memberlist does): appended, every member that
      // learned of a set of members from the same push-pull would probe them in the same order,
      // and a crash among the last of them would go unnoticed for most of a round everywhere.
      order.push_back(in.uid);
      std::swap(order.back(), order[std::uniform_int_distribution<std::size_t>(0, order.size() - 1)(rng)]);
      decide(added.id->name, fmt::format("learned: {} at {}", to_string(in.status), added.id->gossip.to_string()));
      emit(EventKind::joined, added);
      broadcast(added, true);
      if (in.status != MemberStatus::joining) set_status(added, in.status, "gossip");
      if (in.liveness == Liveness::suspect) suspect(added, in.incarnation, r.from_uid, "gossip");
      if (in.liveness == Liveness::unreachable) set_liveness(added, Liveness::unreachable, "gossip");
      return;
    }
    Node& n = it->second;
    if (in.incarnation > n.incarnation && in.incarnation - n.incarnation > cfg.max_incarnation_jump) {
      ++stats.rejected_records;
      drop_log.warn(*log, "rejected a record of {} jumping from incarnation {} to {}", n.id->name,
                    n.incarnation, in.incarnation);
      return;
    }
    learn_up_order(n, in.up_order);  // first: the up event carries it
    if (in.status > n.status) set_status(n, in.status, "gossip");
    switch (in.liveness) {
      case Liveness::alive:
        if (in.incarnation > n.incarnation) {
          n.incarnation = in.incarnation;
          set_liveness(n, Liveness::alive, fmt::format("refuted with incarnation {}", in.incarnation));
          broadcast(n);
        }
        break;
      case Liveness::suspect:
        if (in.incarnation > n.incarnation ||
            (in.incarnation == n.incarnation && n.liveness != Liveness::unreachable)) {
          suspect(n, in.incarnation, r.from_uid, "gossip");
        }
        break;
      case Liveness::unreachable:
        if (in.incarnation > n.incarnation ||
            (in.incarnation == n.incarnation && n.liveness != Liveness::unreachable)) {
          n.incarnation = in.incarnation;
          set_liveness(n, Liveness::unreachable, "gossip");
          broadcast(n);
        }
        break;
    }
  }

  void merge_about_self(const Rec& r) {
    Node& m = me();
    const auto& in = r;
    // Only the leader gives this node its age; it learns it here and passes it on like others.
    learn_up_order(m, in.up_order);
    if (in.status > m.status) {
      switch (in.status) {
        case MemberStatus::up:
        case MemberStatus::leaving:
        case MemberStatus::exiting:
        case MemberStatus::down:
        case MemberStatus::removed: set_status(m, in.status, "the cluster says so"); break;
        case MemberStatus::joining: break;
      }
    }
    if (stopped()) return;
    if (in.liveness != Liveness::alive && in.incarnation >= m.incarnation) {
      refute(in.incarnation, fmt::format("{} at incarnation {}", to_string(in.liveness), in.incarnation));
    } else if (in.incarnation > m.incarnation) {
      refute(in.incarnation, "a higher incarnation of this node");
    } else if (in.liveness != Liveness::alive) {
      // Someone still holds a suspicion this node already refuted: its refutation did not reach
      // them. Send the current record again (to the sender at once, see on_packet).
      stale_view_of_me = true;
      broadcast(m);
    }
  }

  // ---- packets ---------------------------------------------------------------------------------
  fb::Offset<gossip::Member> write(fb::FlatBufferBuilder& b, const Node& n) const {
    const auto& i = *n.id;
    std::uint64_t suspect_from = 0;
    if (n.liveness == Liveness::suspect) {
      if (auto it = suspects.find(i.uid); it != suspects.end()) suspect_from = it->second.from;
    }
    fb::Offset<fb::Vector<fb::Offset<fb::String>>> roles;
    if (!i.roles.empty()) roles = b.CreateVectorOfStrings(i.roles);
    auto name = b.CreateString(i.name);
    auto host = b.CreateString(i.gossip.host);
    auto remoting = b.CreateString(i.remoting);
    auto key = b.CreateString(i.curve_key);
    return gossip::CreateMember(b, name, i.uid, host, i.gossip.port, remoting, key, n.incarnation,
                                static_cast<gossip::MemberStatus>(n.status), static_cast<gossip::Liveness>(n.liveness),
                                suspect_from, n.up_order, roles);
  }

  static std::size_t estimate(const Node& n) { return record_estimate(*n.id); }

  /// Tells `to`, which still holds records of members removed long ago, that they are removed
  /// (at most once a probe interval per member).
  void correct_stale(const UdpEndpoint& to) {
    for (auto uid : stale_about_forgotten) {
      auto f = forgotten.find(uid);
      if (f == forgotten.end()) continue;
      auto& gone = f->second;
      if (gone.corrected && now() - *gone.corrected < nanoseconds(cfg.probe_interval)) continue;
      gone.corrected = now();
      ++stats.forgotten_corrected;
      drop_log.warn(*log, "{} still gossips {} ({:016x}), removed long ago: told it is removed", to.to_string(),
                    gone.id->name, uid);
      const auto removed = record_of(gone, MemberStatus::removed);
      send(to, gossip::Body::NONE, nullptr, &removed);
    }
    stale_about_forgotten.clear();
  }

  /// Sends a packet with `body` (may be none) and as many pending updates as fit; `must` is a
  /// member whose record goes first (a suspect being pinged gets to know it is suspected).
  void send(const UdpEndpoint& to, gossip::Body type, const std::function<fb::Offset<void>(fb::FlatBufferBuilder&)>& body,
            const Node* must = nullptr) {
    fb::FlatBufferBuilder b(1024);
    const auto body_off = body ? body(b) : fb::Offset<void>();
    const std::size_t budget = transport.max_payload();
    std::vector<fb::Offset<gossip::Member>> ups;
    auto room = [&](const Node& n) { return b.GetSize() + estimate(n) + 4 * (ups.size() + 1) + 160 + me().id->name.size() <= budget; };
    if (must && room(*must)) ups.push_back(write(b, *must));
    // Highest tx_key first: membership news before liveness chatter, and within each the
    // fewest-sent (the most transmissions left).
    std::vector<std::uint64_t> sent;
    std::vector<std::uint64_t> unsendable;
    for (auto bucket = pending_tx.rbegin(); bucket != pending_tx.rend(); ++bucket) {
      for (auto uid : bucket->second) {
        auto it = nodes.find(uid);
        if (it == nodes.end() || (must && uid == must->id->uid)) continue;
        if (!room(it->second)) {
          // Fits a packet without other records (and the largest body): the next one.
          if (estimate(it->second) + kPacketFrame + me().id->name.size() <= budget) goto full;
          // Too large for a packet of its own: it can never go, and at the head of the queue
          // it would hold back every record behind it.
          unsendable.push_back(uid);
          continue;
        }
        ups.push_back(write(b, it->second));
        sent.push_back(uid);
      }
    }
  full:
    for (auto uid : unsendable) {
      auto& n = nodes.at(uid);
      pending_tx[tx_key(n)].erase(uid);
      n.transmits_left = 0;
      n.tx_news = false;
      ++stats.records_too_large;
      drop_log.warn(*log, "the record of {} is too large for a datagram ({} bytes, {} at most): not gossiped", n.id->name,
                    estimate(n), budget);
    }
    for (auto uid : sent) {
      auto& n = nodes.at(uid);
      pending_tx[tx_key(n)].erase(uid);
      if (--n.transmits_left) {
        pending_tx[tx_key(n)].insert(uid);
      } else {
        n.tx_news = false;
      }
    }
    std::erase_if(pending_tx, [](const auto& kv) { return kv.second.empty(); });
    stats.updates_sent += ups.size();
    if (type == gossip::Body::NONE && ups.empty()) return;
    auto name = b.CreateString(me().id->name);
    auto upv = b.CreateVector(ups);
    gossip::PacketBuilder pb(b);
    pb.add_protocol_version(kGossipProtocolVersion);
    pb.add_from_uid(self_uid);
    pb.add_from_name(name);
    pb.add_digest(digest_value);
    if (type != gossip::Body::NONE) {
      pb.add_body_type(type);
      pb.add_body(body_off);
    }
    pb.add_updates(upv);
    b.Finish(pb.Finish());
    ++stats.packets_out;
    transport.send(to, {b.GetBufferPointer(), b.GetSize()});
  }

  void send_ping(const Node& target, std::uint64_t seq) {
    pinged(target.id->uid);
    send(target.id->gossip, gossip::Body::Ping,
         [&](fb::FlatBufferBuilder& b) { return gossip::CreatePing(b, seq, target.id->uid).Union(); },
         target.liveness != Liveness::alive ? &target : nullptr);
  }
  void send_ack(const UdpEndpoint& to, std::uint64_t seq) {
    send(to, gossip::Body::Ack, [&](fb::FlatBufferBuilder& b) { return gossip::CreateAck(b, seq).Union(); });
  }
  void send_nack(const UdpEndpoint& to, std::uint64_t seq) {
    send(to, gossip::Body::Nack, [&](fb::FlatBufferBuilder& b) { return gossip::CreateNack(b, seq).Union(); });
  }
  void send_refused(const UdpEndpoint& to, const std::string& reason) {
    send(to, gossip::Body::Refused,
         [&](fb::FlatBufferBuilder& b) { return gossip::CreateRefusedDirect(b, reason.c_str()).Union(); });
  }

  /// Full state in datagram-sized chunks.
  void send_push_pull(const UdpEndpoint& to, bool join, bool reply) {
    std::vector<const Node*> all;
    if (join && !reply) {
      all.push_back(&me());
    } else {
      for (const auto& [uid, n] : nodes) all.push_back(&n);
    }
    ++stats.push_pulls;
    std::size_t i = 0;
    unsigned chunk = 0;
    const std::size_t budget = transport.max_payload();
    do {
      fb::FlatBufferBuilder b(2048);
      std::vector<fb::Offset<gossip::Member>> ms;
      while (i < all.size() && b.GetSize() + estimate(*all[i]) + 4 * (ms.size() + 1) + 200 + me().id->name.size() <= budget) {
        ms.push_back(write(b, *all[i]));
        ++i;
      }
      if (ms.empty() && i < all.size()) {  // a record larger than a datagram cannot be sent
        ++stats.records_too_large;
        ++i;
      }
      auto v = b.CreateVector(ms);
      auto body = gossip::CreatePushPull(b, join, reply, v, static_cast<std::uint16_t>(chunk++));
      auto name = b.CreateString(me().id->name);
      gossip::PacketBuilder pb(b);
      pb.add_protocol_version(kGossipProtocolVersion);
      pb.add_from_uid(self_uid);
      pb.add_from_name(name);
      pb.add_digest(digest_value);
      pb.add_body_type(gossip::Body::PushPull);
      pb.add_body(body.Union());
      b.Finish(pb.Finish());
      ++stats.packets_out;
      transport.send(to, {b.GetBufferPointer(), b.GetSize()});
    } while (i < all.size());
  }

  static std::string_view view(const fb::String* s) { return s ? std::string_view(s->c_str(), s->size()) : std::string_view(); }
  static Rec read(const gossip::Member& m) {
    Rec r;
    r.name = view(m.name());
    r.uid = m.uid();
    r.host = view(m.gossip_host());
    r.port = m.gossip_port();
    r.remoting = view(m.remoting());
    r.curve_key = view(m.curve_key());
    r.incarnation = m.incarnation();
    r.bad_enum = m.status() > gossip::MemberStatus::MAX || m.liveness() > gossip::Liveness::MAX;
    r.status = static_cast<MemberStatus>(std::min<unsigned>(static_cast<unsigned>(m.status()), 5));
    r.liveness = static_cast<Liveness>(std::min<unsigned>(static_cast<unsigned>(m.liveness()), 2));
    r.from_uid = m.from_uid();
    r.up_order = m.up_order();
    r.packet_roles = m.roles();
    return r;
  }

  void on_packet(const UdpEndpoint& from, std::span<const std::uint8_t> bytes) {
    ++stats.packets_in;
    fb::Verifier v(bytes.data(), bytes.size(), 16, 100000);
    if (!v.VerifyBuffer<gossip::Packet>(nullptr)) {
      ++stats.malformed;
      drop_log.warn(*log, "dropped a malformed gossip packet ({} bytes) from {}", bytes.size(), from.to_string());
      return;
    }
    const auto* p = gossip::GetPacket(bytes.data());
    if (p->protocol_version() != kGossipProtocolVersion) {
      ++stats.wrong_version;
      drop_log.warn(*log, "refused a packet of gossip protocol version {} from {} (this node speaks {})",
                    p->protocol_version(), from.to_string(), kGossipProtocolVersion);
      if (p->body_type() != gossip::Body::Refused) {
        send_refused(from, fmt::format("gossip protocol version {} is not supported by {} (it speaks {})",
                                       p->protocol_version(), me().id->name, kGossipProtocolVersion));
      }
      return;
    }
    if (p->body_type() > gossip::Body::MAX) {
      // The verifier accepts a union type it does not know (and skips its value).
      ++stats.unknown_body;
      drop_log.warn(*log, "dropped a gossip packet from {} with a body of unknown type {}", from.to_string(),
                    static_cast<unsigned>(p->body_type()));
      return;
    }
    if (p->body_type() != gossip::Body::NONE && !p->body()) {
      // The verifier accepts a union type without its value (both fields are optional).
      ++stats.malformed;
      drop_log.warn(*log, "dropped a gossip packet from {} naming a body it does not carry", from.to_string());
      return;
    }
    if (stopped()) return;
    if (auto f = forgotten.find(p->from_uid()); f != forgotten.end()) {
      // A member removed long ago is talking (its process was paused past its removal, say):
      // nobody holds its record any more, so it would never learn it is down. Tell it (at most
      // once a probe interval); its own record in this packet is ignored.
      auto& gone = f->second;
      if (!gone.told || now() - *gone.told >= nanoseconds(cfg.probe_interval)) {
        gone.told = now();
        ++stats.forgotten_told;
        const auto down = record_of(gone, MemberStatus::down);
        drop_log.warn(*log, "{} ({:016x}), removed long ago, is talking from {}: told it is down", gone.id->name,
                      p->from_uid(), from.to_string());
        send(from, gossip::Body::NONE, nullptr, &down);
      }
    }
    Node* sender = nullptr;
    if (auto it = nodes.find(p->from_uid()); it != nodes.end()) {
      sender = &it->second;
      if (sender->digest_seen != p->digest()) {
        sender->digest_seen = p->digest();
        sender->digest_seen_since = now();
      }
    }
    if (!refused.empty()) heard_from(from, p->from_uid());
    if (p->updates()) {
      for (const auto* m : *p->updates()) merge(read(*m), p->from_uid());
      correct_stale(from);
    }
    if (stale_view_of_me) {
      stale_view_of_me = false;
      if (!sender || now() - sender->hinted_at >= nanoseconds(cfg.probe_interval)) {
        if (sender) sender->hinted_at = now();
        send(from, gossip::Body::NONE, nullptr, &me());
      }
    }
    // A member this node suspects (or found unreachable) is talking to it: tell it directly, so
    // that it refutes now rather than when a probe or a gossip round happens to carry the news.
    if (sender && sender->liveness != Liveness::alive && live_status(sender->status) &&
        now() - sender->hinted_at >= nanoseconds(cfg.probe_interval)) {
      sender->hinted_at = now();
      send(from, gossip::Body::NONE, nullptr, sender);
    }
    // Anti-entropy on evidence: both views have been stable for a while and still differ, so an
    // update was missed on one side (piggybacking is probabilistic). Repair with a push-pull now
    // rather than at the next periodic one.
    // Each costs O(n) datagrams both ways: one node starts them more rarely as the cluster grows
    // (see push_pull_scale).
    const auto settle = 2 * nanoseconds(cfg.probe_interval);
    if (sender && joined && p->digest() != digest_value && now() - digest_changed_at >= settle &&
        now() - sender->digest_seen_since >= settle && now() >= next_repair) {
      next_repair = now() + settle * push_pull_scale();
      ++stats.repairs;
      send_push_pull(from, false, false);
    }
    switch (p->body_type()) {
      case gossip::Body::Ping: {
        const auto* ping = p->body_as_Ping();
        if (ping->target_uid() != self_uid) {
          ++stats.misdirected;  // meant for an earlier incarnation at this address
          return;
        }
        send_ack(from, ping->seq());
        break;
      }
      case gossip::Body::Ack: on_ack(p->body_as_Ack()->seq()); break;
      case gossip::Body::Nack: {
        if (probe && probe->seq == p->body_as_Nack()->seq()) {
          ++probe->nacks;
          ++stats.nacks_received;
        }
        break;
      }
      case gossip::Body::PingReq: {
        const auto* req = p->body_as_PingReq();
        if (!req->target()) return;
        const Rec t = read(*req->target());
        if (!valid(t)) {
          ++stats.rejected_records;
          return;
        }
        const auto seq = ++next_seq;
        // Nack within 80 % of the timeout: the prober must still be waiting when it arrives
        // (it asked at probe_timeout and gives up at probe_interval).
        const auto budget_left = std::min(scaled(cfg.probe_timeout), scaled(cfg.probe_interval) - scaled(cfg.probe_timeout));
        relays[seq] = Relay{from, req->seq(), now() + budget_left * 4 / 5};
        pinged(t.uid);
        send(UdpEndpoint{std::string(t.host), t.port}, gossip::Body::Ping,
             [&](fb::FlatBufferBuilder& b) { return gossip::CreatePing(b, seq, t.uid).Union(); });
        break;
      }
      case gossip::Body::PushPull: {
        const auto* pp = p->body_as_PushPull();
        if (pp->members()) {
          for (const auto* m : *pp->members()) merge(read(*m), p->from_uid());
          correct_stale(from);
        }
        // One answer per request, not one per chunk of it.
        if (!pp->reply() && pp->chunk() == 0) send_push_pull(from, false, true);
        break;
      }
      case gossip::Body::Refused: {
        const auto* r = p->body_as_Refused();
        on_refused(from, r->reason() ? r->reason()->str() : "refused");
        break;
      }
      case gossip::Body::KeyOp: on_keyop(from, *p->body_as_KeyOp()); break;
      case gossip::Body::KeyOpReply: on_keyop_reply(p->from_uid(), *p->body_as_KeyOpReply()); break;
      case gossip::Body::NONE: break;
    }
  }

  void on_refused(const UdpEndpoint& from, const std::string& reason) {
    if (joined) return;  // only a joining node cares: it is not part of that cluster
    decide(me().id->name, fmt::format("join refused by {}: {}", from.to_string(), reason));
    log->error("join refused by {}: {}", from.to_string(), reason);
    emit(EventKind::join_refused, me(), reason);
  }

  // ---- refusals: a process that is gone -----------------------------------------------------------
  void pinged(std::uint64_t uid) {
    if (auto it = nodes.find(uid); it != nodes.end()) ++it->second.pings;
  }
  nanoseconds refusal_window() const { return 2 * scaled(cfg.probe_interval); }
  bool refuses(const Node& n) const {
    auto it = refusals.find(n.id->uid);
    return it != refusals.end() && it->second.count >= 2 && now() - it->second.at <= refusal_window();
  }

  /// ICMP port unreachable for a datagram to `to`. Only a process that is gone (on a host that
  /// lives) gives it; a partition or a pause is silent. Two, each after another ping, within
  /// refusal_window() are evidence enough to skip the suspicion.
  void on_port_unreachable(const UdpEndpoint& to) {
    if (!cfg.down_on_refusal || stopped()) return;
    // Several uids may share the endpoint (a process restarted there): a packet from it clears
    // them all (heard_from), so refusals only count while nothing answers from there.
    // (A scan: ICMP errors are rare, and no index by endpoint is kept for them.)
    std::vector<std::uint64_t> uids;
    for (const auto& [uid, n] : nodes) {
      if (uid != self_uid && live_status(n.status) && n.id->gossip == to) uids.push_back(uid);
    }
    std::sort(uids.begin(), uids.end());
    for (auto uid : uids) {
      Node& n = nodes.at(uid);
      auto& r = refusals[uid];
      ++stats.port_refusals;
      if (r.count && now() - r.at > refusal_window()) r.count = 0;  // too old
      if (r.count && n.pings == r.pings_at) continue;  // no ping since the last one counted
      r.count = std::min(r.count + 1, 16u);
      r.at = now();
      r.pings_at = n.pings;
      refused.insert(uid);
      if (r.count == 1) {
        // Confirm at once with a ping of its own rather than at the next probe.
        ++n.pings;
        send(n.id->gossip, gossip::Body::Ping,
             [&](fb::FlatBufferBuilder& b) { return gossip::CreatePing(b, 0, n.id->uid).Union(); });
        continue;
      }
      if (n.liveness == Liveness::unreachable) continue;
      if (probe && probe->target == uid) probe.reset();  // answered: no helpers, no local-health penalty
      ++stats.unreachable_declared;
      set_liveness(n, Liveness::unreachable,
                   fmt::format("its gossip port refuses: the process is gone ({} ICMP port unreachable within {} ms)",
                               r.count, refusal_window().count() / 1'000'000));
      broadcast(n);
    }
  }

  /// A packet from `from` (uid `from_uid`): that member, and any process at that endpoint, is
  /// not gone; its refusals no longer count.
  void heard_from(const UdpEndpoint& from, std::uint64_t from_uid) {
    for (auto it = refused.begin(); it != refused.end();) {
      auto n = nodes.find(*it);
      if (n == nodes.end()) {
        it = refused.erase(it);
        continue;
      }
      if (n->first != from_uid && n->second.id->gossip != from) {
        ++it;
        continue;
      }
      if (auto r = refusals.find(n->first); r != refusals.end()) {
        if (r->second.count >= 2) {
          decide(n->second.id->name, fmt::format("its gossip port answers again ({}): refusals dropped", from.to_string()));
        }
        r->second.count = 0;
      }
      it = refused.erase(it);
    }
  }

  void on_ack(std::uint64_t seq) {
    if (seq == 0) return;  // the answer to a digest ping: its digest was all it carried
    if (probe && probe->seq == seq) {
      if (local_health) --local_health;
      probe.reset();
      return;
    }
    if (auto it = relays.find(seq); it != relays.end()) {
      send_ack(it->second.requester, it->second.their_seq);
      relays.erase(it);
      return;
    }
    ++stats.stale;
  }

  // ---- time ------------------------------------------------------------------------------------
  const Node* pick_probe_target() {
    for (std::size_t tries = 0; tries <= order.size(); ++tries) {
      if (order_idx >= order.size()) {
        std::erase_if(order, [&](std::uint64_t uid) {
          auto it = nodes.find(uid);
          return it == nodes.end() || !live_status(it->second.status);
        });
        std::shuffle(order.begin(), order.end(), rng);
        order_idx = 0;
        if (order.empty()) return nullptr;
      }
      auto it = nodes.find(order[order_idx++]);
      if (it != nodes.end() && live_status(it->second.status) && it->first != self_uid) return &it->second;
    }
    return nullptr;
  }

  std::vector<const Node*> random_members(std::size_t k, std::uint64_t exclude, bool reachable_only) {
    // O(k): random picks from the probe order (every member ever learned), rejecting the
    // ineligible; small clusters fall back to a full scan so that nobody is missed.
    auto eligible = [&](std::uint64_t uid) -> const Node* {
      if (uid == self_uid || uid == exclude) return nullptr;
      auto it = nodes.find(uid);
      if (it == nodes.end() || !live_status(it->second.status)) return nullptr;
      if (reachable_only && it->second.liveness == Liveness::unreachable) return nullptr;
      return &it->second;
    };
    std::vector<const Node*> out;
    if (order.size() <= 4 * k + 8) {
      std::vector<const Node*> all;
      for (auto uid : order) {
        if (const auto* n = eligible(uid)) all.push_back(n);
      }
      if (all.size() <= k) return all;
      std::sample(all.begin(), all.end(), std::back_inserter(out), k, rng);
      return out;
    }
    std::uniform_int_distribution<std::size_t> pick(0, order.size() - 1);
    for (std::size_t tries = 0; out.size() < k && tries < 8 * k; ++tries) {
      const auto* n = eligible(order[pick(rng)]);
      if (n && std::find(out.begin(), out.end(), n) == out.end()) out.push_back(n);
    }
    return out;
  }

  void send_gossip_round(bool force) {
    if (!force && pending_tx.empty()) return;
    for (const auto* n : random_members(cfg.gossip_nodes, 0, true)) {
      send(n->id->gossip, gossip::Body::NONE, nullptr);
    }
  }

  void run_probe() {
    const auto t = now();
    if (probe) {
      // The previous probe ran out of time without an ack.
      auto it = nodes.find(probe->target);
      ++stats.probe_failures;
      unsigned penalty = 1;
      if (probe->indirect_sent && probe->nacks < probe->nacks_expected) ++penalty;  // helpers silent too
      local_health = std::min(local_health + penalty, cfg.max_local_health);
      // Alive: this node's own suspicion. Already suspect: an independent confirmation (Lifeguard).
      if (it != nodes.end() && live_status(it->second.status) && it->second.liveness != Liveness::unreachable) {
        decide(it->second.id->name,
               fmt::format("probe {} got no ack (direct, then {} helpers, {} nacks)", probe->seq,
                           probe->nacks_expected, probe->nacks));
        suspect(it->second, it->second.incarnation, self_uid, "no ack to a probe");
      }
      probe.reset();
    }
    const Node* target = pick_probe_target();
    if (!target) return;
    ++stats.probes;
    Probe pr;
    pr.target = target->id->uid;
    pr.seq = ++next_seq;
    pr.direct_deadline = t + scaled(cfg.probe_timeout);
    pr.final_deadline = t + scaled(cfg.probe_interval);
    probe = pr;
    send_ping(*target, pr.seq);
  }

  void run_indirect() {
    probe->indirect_sent = true;
    auto it = nodes.find(probe->target);
    if (it == nodes.end()) return;
    const auto helpers = random_members(cfg.indirect_checks, probe->target, true);
    probe->nacks_expected = static_cast<unsigned>(helpers.size());
    ++stats.indirect_probes;
    const Node& target = it->second;
    const auto seq = probe->seq;
    for (const auto* h : helpers) {
      send(h->id->gossip, gossip::Body::PingReq, [&](fb::FlatBufferBuilder& b) {
        auto tm = write(b, target);
        return gossip::CreatePingReq(b, seq, tm).Union();
      });
    }
  }

  std::optional<std::uint64_t> compute_leader() const {
    const Node* best = nullptr;
    for (const auto& [uid, n] : nodes) {
      if (n.status != MemberStatus::up || n.liveness == Liveness::unreachable) continue;
      if (!best || std::tie(n.id->name, n.id->uid) < std::tie(best->id->name, best->id->uid)) best = &n;
    }
    if (!best) return std::nullopt;
    return best->id->uid;
  }

  bool converged() const {
    for (const auto& [uid, n] : nodes) {
      if (uid == self_uid || !live_status(n.status)) continue;
      if (n.liveness == Liveness::unreachable) {
        if (n.status == MemberStatus::exiting) continue;
        return false;
      }
      if (n.digest_seen != digest_value) return false;
    }
    return true;
  }

  void maintenance() {
    const auto t = now();
    // Everything below depends on statuses and reachability only: with a large, quiet cluster
    // it costs nothing until something changes (the scans are O(members)).
    const bool changed = view_changed;
    view_changed = false;
    if (changed) recount();
    // Leader.
    const auto l = changed ? compute_leader() : leader_uid;
    if (l != leader_uid) {
      leader_uid = l;
      if (l) {
        decide(nodes.at(*l).id->name, "became the leader");
        emit(EventKind::leader_changed, nodes.at(*l));
      } else {
        emit(EventKind::leader_changed, Node{});
      }
    }
    if (leader_uid == self_uid && pending_moves) leader_actions();
    // Leaving with nobody up to lead (the last member, or alone): move on without a leader.
    if (!leader_uid && me().status == MemberStatus::leaving) {
      set_status(me(), MemberStatus::exiting, "leaving with no leader to move it");
    } else if (!leader_uid && me().status == MemberStatus::exiting && !self_exited) {
      set_status(me(), MemberStatus::removed, "exiting with no leader to remove it");
    }
    // Downing.
    if (cfg.auto_down && (unreachable_live || !unreachable_set.empty())) resolve_split_brain();
    // Flap damping recovery.
    if (degraded_count) {
      for (auto& [uid, n] : nodes) {
        if (n.degraded && t - last_flip(n) >= nanoseconds(cfg.degraded_for)) {
          n.degraded = false;
          flaps[uid].flips.clear();  // the last flip's time stays: downing and detection are timed from it
          --degraded_count;
          decide(n.id->name, "recovered: stable again");
          emit(EventKind::recovered, n);
        }
      }
    }
    // An exiting node stops once removed, or after exit_timeout at the latest.
    if (me().status == MemberStatus::exiting && !self_exited && t - exiting_since >= nanoseconds(cfg.exit_timeout)) {
      self_exited = true;
      decide(me().id->name, "exit timeout: stopping without having seen the removal");
      emit(EventKind::self_removed, me(), "exit timeout");
    }
    // Tombstones expire: the record goes, the uid is remembered (compactly) much longer.
    for (auto it = removed_at.begin(); it != removed_at.end();) {
      if (t - it->second > nanoseconds(cfg.push_pull_interval) * 4) {
        if (auto n = nodes.find(it->first); n != nodes.end() && it->first != self_uid) {
          forgotten[it->first] = Forgotten{n->second.id, n->second.incarnation, n->second.up_order, t, std::nullopt, std::nullopt};
        }
        erase_node(it->first);
        it = removed_at.erase(it);
      } else {
        ++it;
      }
    }
    if (!forgotten.empty() && (forgotten.size() > std::max<std::size_t>(1024, 4 * cfg.max_members) ||
                               t - forgotten_swept_at > nanoseconds(cfg.push_pull_interval))) {
      forgotten_swept_at = t;
      std::erase_if(forgotten, [&](const auto& kv) { return t - kv.second.at > nanoseconds(kForgetAfter); });
      while (forgotten.size() > std::max<std::size_t>(1024, 4 * cfg.max_members)) {
        auto oldest = std::min_element(forgotten.begin(), forgotten.end(),
                                       [](const auto& a, const auto& b) { return a.second.at < b.second.at; });
        forgotten.erase(oldest);
      }
    }
  }

  /// Counts the view's members that need the leader or the resolver (after a change).
  void recount() {
    pending_moves = 0;
    unreachable_live = 0;
    for (const auto& [uid, n] : nodes) {
      const auto st = n.status;
      if (st == MemberStatus::joining || st == MemberStatus::leaving || st == MemberStatus::exiting ||
          st == MemberStatus::down) {
        ++pending_moves;
      }
      if (live_status(st) && n.liveness == Liveness::unreachable) ++unreachable_live;
    }
  }

  /// The leader waits for every member to show the same view digest; in a quiet cluster it would
  /// hear from each only when its probe comes round (n probe intervals). Ask the lagging ones
  /// directly instead: their acks carry their digests (at most 32 per round).
  void ask_for_digests() {
    const auto t = now();
    unsigned asked = 0;
    for (auto& [uid, n] : nodes) {
      if (asked >= 32) break;
      if (uid == self_uid || !live_status(n.status) || n.liveness == Liveness::unreachable) continue;
      if (n.digest_seen == digest_value || t - n.asked_at < nanoseconds(cfg.probe_interval)) continue;
      n.asked_at = t;
      ++asked;
      ++n.pings;
      const auto target = n.id->uid;  // a named copy: clang 14 cannot capture a structured binding
      send(n.id->gossip, gossip::Body::Ping,
           [&](fb::FlatBufferBuilder& b) { return gossip::CreatePing(b, 0, target).Union(); });
    }
  }

  void leader_actions() {
    const auto t = now();
    const bool conv = converged();
    if (!conv) ask_for_digests();
    std::vector<Node*> coming_up;
    std::vector<std::pair<Node*, MemberStatus>> moves;
    for (auto& [uid, n] : nodes) {
      switch (n.status) {
        case MemberStatus::joining:
          if (conv && n.liveness != Liveness::unreachable) coming_up.push_back(&n);
          break;
        case MemberStatus::leaving:
          if (conv) moves.emplace_back(&n, MemberStatus::exiting);
          break;
        case MemberStatus::exiting:
          if (conv || n.liveness == Liveness::unreachable) moves.emplace_back(&n, MemberStatus::removed);
          break;
        case MemberStatus::down:
          if (t - n.status_since >= nanoseconds(cfg.removal_margin)) moves.emplace_back(&n, MemberStatus::removed);
          break;
        default: break;
      }
    }
    // Ages after every one this node has seen (removed members too: a number is never given
    // twice by one leader); members moved together are numbered in name order, not uid order.
    std::sort(coming_up.begin(), coming_up.end(), [](const Node* a, const Node* b) {
      return std::tie(a->id->name, a->id->uid) < std::tie(b->id->name, b->id->uid);
    });
    for (auto* n : coming_up) {
      if (!n->up_order) n->up_order = ++max_up_order;
      set_status(*n, MemberStatus::up, "leader, converged");
    }
    for (auto& [n, s] : moves) set_status(*n, s, conv ? "leader, converged" : "leader");
  }

  void resolve_split_brain() {
    std::vector<std::uint64_t> unreachable;
    for (const auto& [uid, n] : nodes) {
      if (uid == self_uid) continue;
      const auto s = n.status;
      if ((s == MemberStatus::joining || s == MemberStatus::up || s == MemberStatus::leaving) &&
          n.liveness == Liveness::unreachable) {
        unreachable.push_back(uid);
      }
    }
    std::sort(unreachable.begin(), unreachable.end());  // binary searches below
    if (unreachable != unreachable_set) {
      unreachable_set = unreachable;
      unreachable_since = now();
    }
    if (unreachable.empty()) return;
    const bool waited = now() - unreachable_since >= nanoseconds(cfg.stable_after);
    // The leader may down members whose processes are gone without waiting stable_after, when it
    // has seen their ports refuse itself and nothing else is unreachable: a crash, not a split
    // (a partitioned member is silent, and then the usual wait protects it).
    bool gone = false;
    if (cfg.down_on_refusal && leader_uid == self_uid) {
      gone = true;
      unsigned asked = 0;
      for (auto uid : unreachable) {
        auto& n = nodes.at(uid);
        if (!refuses(n)) gone = false;
        // Ping it now and then: this node's own evidence, kept fresh (at most 32 per round).
        auto& r = refusals[uid];
        if (asked < 32 && now() - r.verified_at >= scaled(cfg.probe_interval)) {
          r.verified_at = now();
          ++asked;
          ++n.pings;
          send(n.id->gossip, gossip::Body::Ping,
               [&](fb::FlatBufferBuilder& b) { return gossip::CreatePing(b, 0, n.id->uid).Union(); });
        }
      }
    }
    if (!waited && !gone) return;
    std::size_t reach = 0, lost = 0;
    const Node* lowest = nullptr;
    for (const auto& [uid, n] : nodes) {
      const auto s = n.status;
      if (s != MemberStatus::up && s != MemberStatus::leaving) continue;
      const bool is_lost = std::binary_search(unreachable.begin(), unreachable.end(), uid);
      ++(is_lost ? lost : reach);
      if (!lowest || std::tie(n.id->name, n.id->uid) < std::tie(lowest->id->name, lowest->id->uid)) lowest = &n;
    }
    bool majority = reach > lost;
    std::string rule = "keep-majority";
    if (reach == lost) {
      majority = lowest && !std::binary_search(unreachable.begin(), unreachable.end(), lowest->id->uid);
      rule = fmt::format("tie, lowest member {} decides", lowest ? lowest->id->name : "?");
    }
    const auto sides = fmt::format("{} reachable vs {} unreachable up/leaving members, {}", reach, lost, rule);
    if (majority) {
      if (leader_uid != self_uid) return;  // the leader of this side acts for it
      const auto for_ms = std::to_string((now() - unreachable_since).count() / 1'000'000);
      for (auto uid : unreachable) {
        auto& n = nodes.at(uid);
        if (!waited) {
          decide(n.id->name, "downed: its gossip port refuses: the process is gone (unreachable for " + for_ms +
                                  " ms, not waiting stable_after); " + sides);
          set_status(n, MemberStatus::down, "its gossip port refuses: the process is gone; " + sides);
          continue;
        }
        decide(n.id->name, "downed: unreachable for " + for_ms + " ms; " + sides);
        set_status(n, MemberStatus::down, "split-brain resolver: " + sides);
      }
    } else {
      if (!waited) return;  // refusals hasten downing the others, never this node's own
      decide(me().id->name, "downing itself: this side is the minority; " + sides);
      set_status(me(), MemberStatus::down, "split-brain resolver, minority side: " + sides);
    }
  }

  void poll() {
    const auto t = now();
    if (stopped()) return;
    // Joining: contact seeds until a formed cluster answers, or form one.
    if (!joined) {
      bool formed = false;
      for (const auto& [uid, n] : nodes) {
        if (uid != self_uid && n.status == MemberStatus::up) formed = true;
      }
      if (formed || me().status != MemberStatus::joining) {
        joined = true;
      } else if (t >= next_join) {
        const bool first_seed = seeds.empty() || seeds.front() == me().id->gossip;
        const bool wait = seeds.size() > 1 || wait_to_form;
        if (first_seed && t - join_started >= nanoseconds(wait ? cfg.form_after : milliseconds(0))) {
          joined = true;
          decide(me().id->name, "formed a new cluster (first seed, no other seed answered)");
          me().up_order = 1;  // the oldest member of the new cluster
          max_up_order = std::max<std::uint64_t>(max_up_order, 1);
          set_status(me(), MemberStatus::up, "formed the cluster");
        } else {
          for (const auto& s : seeds) {
            if (s != me().id->gossip) send_push_pull(s, true, false);
          }
          next_join = t + nanoseconds(cfg.join_retry_interval);
        }
      }
    }
    // Probes.
    if (probe && !probe->indirect_sent && t >= probe->direct_deadline) run_indirect();
    if (t >= next_probe) {
      run_probe();
      next_probe = t + scaled(cfg.probe_interval);
    }
    // Relayed pings that got no answer: nack the requester.
    for (auto it = relays.begin(); it != relays.end();) {
      if (t >= it->second.deadline) {
        send_nack(it->second.requester, it->second.their_seq);
        it = relays.erase(it);
      } else {
        ++it;
      }
    }
    // Suspicions that ran out.
    while (!suspicions.empty() && suspicions.begin()->first <= t) {
      const auto uid = suspicions.begin()->second;
      suspicions.erase(suspicions.begin());
      auto it = nodes.find(uid);
      if (it == nodes.end() || it->second.liveness != Liveness::suspect) continue;
      ++stats.unreachable_declared;
      const auto& sp = suspects[uid];
      const auto why = fmt::format("suspicion timed out after {} ms with {} confirmations",
                                   (t - sp.start).count() / 1'000'000, sp.confirmers.size() - 1);
      set_liveness(it->second, Liveness::unreachable, why);
      broadcast(it->second);
    }
    if (t >= next_gossip) {
      send_gossip_round(false);
      next_gossip = t + nanoseconds(cfg.gossip_interval);
    }
    if (joined && t >= next_push_pull) {
      auto peers = random_members(1, 0, false);
      if (!peers.empty()) send_push_pull(peers.front()->id->gossip, false, false);
      // Jittered (+-10 %): nodes started together do not all exchange at the same moment.
      const auto every = nanoseconds(cfg.push_pull_interval) * push_pull_scale();
      std::uniform_int_distribution<std::int64_t> jitter(-every.count() / 10, every.count() / 10);
      next_push_pull = t + every + nanoseconds(jitter(rng));
    }
    if (!keyops.empty()) poll_keyops();
    if (t >= next_maintenance) {
      maintenance();
      next_maintenance = t + std::min<nanoseconds>(nanoseconds(cfg.probe_interval), nanoseconds(milliseconds(250)));
    }
  }

  nanoseconds next_wakeup() const {
    if (stopped()) return nanoseconds::max();
    nanoseconds w = std::min({next_probe, next_gossip, next_maintenance, joined ? next_push_pull : next_join});
    if (probe && !probe->indirect_sent) w = std::min(w, probe->direct_deadline);
    for (const auto& [seq, r] : relays) w = std::min(w, r.deadline);
    if (!suspicions.empty()) w = std::min(w, suspicions.begin()->first);
    for (const auto& [id, k] : keyops) w = std::min({w, k.next_send, k.deadline});
    return w;
  }

  MembershipConfig cfg;
  const Clock& clock;
  PacketTransport& transport;
  std::mt19937_64 rng;
  std::shared_ptr<spdlog::logger> log;
  ThrottledLog drop_log;

  std::uint64_t self_uid = 0;
  std::shared_ptr<IdentityPool> pool;
  // Members by uid (this node too). Unordered: O(1) look-ups for every record merged; members()
  // sorts what it answers, and nothing else depends on the order (a push-pull's records may come
  // in any).
  std::unordered_map<std::uint64_t, Node> nodes;
  Node* self_node = nullptr;
  std::unordered_map<std::uint64_t, Suspicion> suspects;  // members this node suspects
  std::unordered_map<std::uint64_t, Flaps> flaps;         // members whose reachability changed
  std::unordered_map<std::uint64_t, Refusals> refusals;   // members whose gossip port refused
  std::size_t live_count = 1;
  std::uint64_t digest_value = 0;
  nanoseconds digest_changed_at{0}, next_repair{0};
  std::map<unsigned, std::set<std::uint64_t>> pending_tx;  // transmissions left -> members
  std::set<std::pair<nanoseconds, std::uint64_t>> suspicions;
  std::unordered_map<std::uint64_t, nanoseconds> removed_at;
  // Members whose records expired (removed_at): ignored if their records come back, and told
  // they are down if they speak (a process paused past its removal). Kept kForgetAfter.
  struct Forgotten {
    std::shared_ptr<const Ident> id;
    std::uint64_t incarnation = 0, up_order = 0;
    nanoseconds at{0};
    std::optional<nanoseconds> told;
    std::optional<nanoseconds> corrected;  // last told a member that still holds its record
  };
  /// A forgotten member's last record, with `status`: what it is told, or others are told, of it.
  static Node record_of(const Forgotten& gone, MemberStatus status) {
    Node n;
    n.id = gone.id;
    n.incarnation = gone.incarnation;
    n.up_order = gone.up_order;
    n.status = status;
    return n;
  }
  /// Forgotten members whose records the packet being read carried (merge), to correct its sender.
  std::vector<std::uint64_t> stale_about_forgotten;
  static constexpr std::chrono::hours kForgetAfter{24};
  std::unordered_map<std::uint64_t, Forgotten> forgotten;
  nanoseconds forgotten_swept_at{0};
  std::vector<std::uint64_t> order;
  std::size_t order_idx = 0;
  std::optional<Probe> probe;
  std::map<std::uint64_t, Relay> relays;
  std::uint64_t next_seq = 0;
  unsigned local_health = 0;

  std::vector<UdpEndpoint> seeds;
  bool joined = false;
  bool self_exited = false;
  nanoseconds join_started{0}, next_join{0}, exiting_since{0};
  bool wait_to_form = false;  // the seeds came from a DNS name: a lone self still waits form_after
  nanoseconds next_probe{0}, next_gossip{0}, next_push_pull{0}, next_maintenance{0};
  std::optional<std::uint64_t> leader_uid;
  std::set<std::uint64_t> refused;   // members with refusals counted (cleared by any packet from them)
  std::vector<std::uint64_t> unreachable_set;
  nanoseconds unreachable_since{0};
  bool view_changed = true;          // statuses or unreachability changed since the last maintenance
  bool stale_view_of_me = false;     // the packet being handled holds an already refuted suspicion
  std::size_t pending_moves = 0;     // members the leader may move (joining, leaving, exiting, down)
  std::size_t unreachable_live = 0;  // live members unreachable in this view
  std::size_t degraded_count = 0;
  std::uint64_t max_up_order = 0;    // the highest up_order ever seen (the leader gives the next)

  std::vector<std::function<void(const MembershipEvent&)>> subscribers;
  std::deque<Decision> history;
  SwimStats stats;

  // Keyring operations this node started, by id.
  struct KeyOpState {
    KeyOp op;
    std::vector<std::uint8_t> key;
    nanoseconds deadline{0}, next_send{0};
    std::set<std::uint64_t> waiting;
    KeyOpResult result;
    std::function<void(KeyOpResult)> done;
  };
  KeyHandler key_handler;
  std::map<std::uint64_t, KeyOpState> keyops;
  std::uint64_t next_keyop = 0;

  void send_keyop(const Node& to, std::uint64_t id, const KeyOpState& k) {
    send(to.id->gossip, gossip::Body::KeyOp, [&](fb::FlatBufferBuilder& b) {
      auto kv = b.CreateVector(k.key);
      return gossip::CreateKeyOp(b, id, static_cast<std::uint8_t>(k.op), kv).Union();
    });
  }

  void start_keyop(KeyOp op, std::vector<std::uint8_t> key, nanoseconds timeout, std::function<void(KeyOpResult)> done) {
    const auto id = (self_uid << 16) ^ ++next_keyop;
    KeyOpState k;
    k.op = op;
    k.key = std::move(key);
    k.deadline = now() + timeout;
    k.result.op = op;
    k.done = std::move(done);
    const std::string mine = key_handler ? key_handler(op, k.key) : "no keyring on this node";
    if (mine.empty()) {
      k.result.confirmed.push_back(me().id->name);
    } else {
      k.result.failed.emplace_back(me().id->name, mine);
    }
    decide(me().id->name, fmt::format("keyring {}: started ({})", to_string(op), mine.empty() ? "applied here" : mine));
    for (const auto& [uid, n] : nodes) {
      if (uid != self_uid && live_status(n.status)) k.waiting.insert(uid);
    }
    auto& stored = keyops.emplace(id, std::move(k)).first->second;
    finish_keyop_if_done(id, stored);
  }

  void finish_keyop_if_done(std::uint64_t id, KeyOpState& k) {
    if (!k.waiting.empty() && now() < k.deadline) return;
    for (auto uid : k.waiting) {
      auto it = nodes.find(uid);
      if (it != nodes.end() && live_status(it->second.status)) k.result.missing.push_back(it->second.id->name);
    }
    decide(me().id->name, fmt::format("keyring {}: {} confirmed, {} failed, {} missing", to_string(k.op),
                                       k.result.confirmed.size(), k.result.failed.size(), k.result.missing.size()));
    auto done = std::move(k.done);
    auto result = std::move(k.result);
    keyops.erase(id);
    if (done) done(std::move(result));
  }

  void poll_keyops() {
    for (auto it = keyops.begin(); it != keyops.end();) {
      const auto id = it->first;
      auto& k = it->second;
      ++it;
      // A member that went down or away since no longer counts.
      std::erase_if(k.waiting, [&](std::uint64_t uid) {
        auto n = nodes.find(uid);
        return n == nodes.end() || !live_status(n->second.status);
      });
      if (now() >= k.next_send && now() < k.deadline) {
        for (auto uid : k.waiting) send_keyop(nodes.at(uid), id, k);
        k.next_send = now() + nanoseconds(cfg.probe_interval);
      }
      finish_keyop_if_done(id, k);
    }
  }

  void on_keyop(const UdpEndpoint& from, const gossip::KeyOp& op) {
    std::string error;
    const auto kind = static_cast<KeyOp>(op.op());
    if (kind != KeyOp::install && kind != KeyOp::use && kind != KeyOp::remove) {
      error = "unknown keyring operation";
    } else if (!key_handler) {
      error = "no keyring on this node";
    } else {
      const auto* kb = op.key();
      error = key_handler(kind, kb ? std::span<const std::uint8_t>(kb->data(), kb->size()) : std::span<const std::uint8_t>{});
    }
    decide(me().id->name, fmt::format("keyring {} asked by {}: {}", kind == KeyOp::install ? "install"
                                       : kind == KeyOp::use ? "use" : kind == KeyOp::remove ? "remove" : "?",
                                       from.to_string(), error.empty() ? "applied" : error));
    send(from, gossip::Body::KeyOpReply,
         [&](fb::FlatBufferBuilder& b) { return gossip::CreateKeyOpReplyDirect(b, op.id(), error.c_str()).Union(); });
  }

  void on_keyop_reply(std::uint64_t from_uid, const gossip::KeyOpReply& r) {
    auto it = keyops.find(r.id());
    if (it == keyops.end()) return;
    auto& k = it->second;
    if (!k.waiting.erase(from_uid)) return;  // a duplicate answer
    auto n = nodes.find(from_uid);
    const std::string name = n != nodes.end() ? n->second.id->name : fmt::format("{:016x}", from_uid);
    const std::string err = r.error() ? r.error()->str() : std::string();
    if (err.empty()) {
      k.result.confirmed.push_back(name);
    } else {
      k.result.failed.emplace_back(name, err);
    }
    finish_keyop_if_done(r.id(), k);
  }
};

// ---- SwimProtocol -------------------------------------------------------------------------------

SwimProtocol::SwimProtocol(MembershipConfig config, Identity self, const Clock& clock, PacketTransport& transport,
                           std::uint64_t seed, std::shared_ptr<spdlog::logger> log, std::shared_ptr<IdentityPool> pool)
    : s_(std::make_unique<State>(std::move(config), std::move(self), clock, transport, seed, std::move(log),
                                 std::move(pool))) {
  const auto t = clock.now();
  // Spread the periodic work of many nodes started together.
  std::uniform_int_distribution<std::int64_t> jitter(0, nanoseconds(s_->cfg.probe_interval).count());
  s_->next_probe = t + nanoseconds(jitter(s_->rng));
  s_->next_gossip = t + nanoseconds(jitter(s_->rng)) / 4;
  // The first full-state exchange anywhere in [interval/2, 3 interval/2): nodes that start
  // together must not all exchange at once (at 10,000 nodes that is 10,000 x O(n) datagrams).
  s_->next_push_pull = t + nanoseconds(s_->cfg.push_pull_interval) / 2 +
                       nanoseconds(std::uniform_int_distribution<std::int64_t>(
                           0, nanoseconds(s_->cfg.push_pull_interval).count())(s_->rng));
  s_->next_maintenance = t;
  s_->next_join = nanoseconds::max();
}

SwimProtocol::~SwimProtocol() = default;

void SwimProtocol::update_seeds(std::vector<UdpEndpoint> seeds) {
  if (s_->joined || seeds == s_->seeds) return;
  s_->decide(s_->me().id->name, fmt::format("seeds resolved again: {} (was {})", seeds.size(), s_->seeds.size()));
  s_->seeds = std::move(seeds);
}

bool SwimProtocol::joining() const { return !s_->joined; }

void SwimProtocol::join(std::vector<UdpEndpoint> seeds, bool wait_to_form) {
  s_->wait_to_form = wait_to_form;
  s_->seeds = std::move(seeds);
  s_->join_started = s_->now();
  s_->next_join = s_->now();
  s_->decide(s_->me().id->name, fmt::format("joining through {} seeds", s_->seeds.size()));
}

void SwimProtocol::leave() {
  // This node itself, by its uid: its name may also be held by an earlier incarnation of the
  // same process that the view still has (a restart).
  if (State::live_status(s_->me().status)) s_->set_status(s_->me(), MemberStatus::leaving, "asked to leave");
}

// The live member called `name`; of several (a restarted process and its earlier incarnation,
// until that is downed) the newest: the one that became up last, or is not up yet.
SwimProtocol::State::Node* SwimProtocol::State::live_named(const std::string& name) {
  Node* best = nullptr;
  auto age = [](const Node& n) { return n.up_order == 0 ? ~std::uint64_t{0} : n.up_order; };
  for (auto& [uid, n] : nodes) {
    if (n.id->name == name && live_status(n.status) && (!best || age(n) > age(*best))) best = &n;
  }
  return best;
}

bool SwimProtocol::leave(const std::string& name) {
  auto* n = s_->live_named(name);
  if (!n) return false;
  s_->set_status(*n, MemberStatus::leaving, "asked to leave");
  return true;
}

bool SwimProtocol::down(const std::string& name) {
  auto* n = s_->live_named(name);
  if (!n) return false;
  s_->set_status(*n, MemberStatus::down, "downed by an operator");
  return true;
}

void SwimProtocol::on_packet(const UdpEndpoint& from, std::span<const std::uint8_t> packet) { s_->on_packet(from, packet); }
void SwimProtocol::on_refused(const UdpEndpoint& from, const std::string& reason) { s_->on_refused(from, reason); }
void SwimProtocol::on_port_unreachable(const UdpEndpoint& to) { s_->on_port_unreachable(to); }
void SwimProtocol::poll() { s_->poll(); }

std::vector<std::uint8_t> SwimProtocol::refusal(const std::string& reason) const {
  fb::FlatBufferBuilder b(256);
  auto body = gossip::CreateRefusedDirect(b, reason.c_str());
  auto name = b.CreateString(s_->me().id->name);
  gossip::PacketBuilder pb(b);
  pb.add_protocol_version(kGossipProtocolVersion);
  pb.add_from_uid(s_->self_uid);
  pb.add_from_name(name);
  pb.add_body_type(gossip::Body::Refused);
  pb.add_body(body.Union());
  b.Finish(pb.Finish());
  return {b.GetBufferPointer(), b.GetBufferPointer() + b.GetSize()};
}
std::chrono::nanoseconds SwimProtocol::next_wakeup() const { return s_->next_wakeup(); }
void SwimProtocol::set_key_handler(KeyHandler fn) { s_->key_handler = std::move(fn); }

void SwimProtocol::key_operation(KeyOp op, std::vector<std::uint8_t> key, std::chrono::nanoseconds timeout,
                                 std::function<void(KeyOpResult)> done) {
  s_->start_keyop(op, std::move(key), timeout, std::move(done));
}

const char* to_string(KeyOp op) noexcept {
  switch (op) {
    case KeyOp::install: return "install";
    case KeyOp::use: return "use";
    case KeyOp::remove: return "remove";
  }
  return "?";
}

void SwimProtocol::subscribe(std::function<void(const MembershipEvent&)> fn) { s_->subscribers.push_back(std::move(fn)); }

std::vector<MemberInfo> SwimProtocol::members() const {
  std::vector<MemberInfo> out;
  for (const auto& [uid, n] : s_->nodes) {
    if (n.status != MemberStatus::removed) out.push_back(State::info_of(n));
  }
  std::sort(out.begin(), out.end(), [](const MemberInfo& a, const MemberInfo& b) { return a.uid < b.uid; });
  return out;
}

void SwimProtocol::assume_formed(std::span<const MemberInfo> members) {
  auto& s = *s_;
  const auto t = s.now();
  s.nodes.reserve(members.size());
  s.order.reserve(members.size());
  auto& me = s.me();
  for (const auto& m : members) {
    if (m.uid == s.self_uid) {
      me.up_order = m.up_order;
      me.incarnation = std::max(me.incarnation, m.incarnation);
      continue;
    }
    if (m.uid == 0 || s.nodes.count(m.uid)) continue;
    State::Node n;
    Rec r{m.name, m.gossip.host, m.remoting, m.curve_key, m.gossip.port, m.uid, 0, 0, 0};
    r.info_roles = &m.roles;
    n.id = s.pool->intern(r);
    n.incarnation = m.incarnation;
    n.up_order = m.up_order;
    n.status = MemberStatus::up;
    n.status_since = t;
    s.nodes.emplace(m.uid, std::move(n));
    s.order.push_back(m.uid);
    ++s.live_count;
    s.digest_value ^= member_hash(m.uid, MemberStatus::up);
    s.max_up_order = std::max(s.max_up_order, m.up_order);
  }
  s.digest_value ^= member_hash(s.self_uid, me.status) ^ member_hash(s.self_uid, MemberStatus::up);
  me.status = MemberStatus::up;
  me.status_since = t;
  s.max_up_order = std::max(s.max_up_order, me.up_order);
  // Every member holds this same view: converged, as the leader would see it.
  for (auto& [uid, n] : s.nodes) {
    n.digest_seen = s.digest_value;
    n.digest_seen_since = t;
  }
  // Each node probes in an order of its own: in one shared order a crash would go unnoticed
  // until the whole cluster's round came back to it.
  std::shuffle(s.order.begin(), s.order.end(), s.rng);
  // And the periodic full-state exchanges spread over their (scaled) period.
  s.next_push_pull = t + nanoseconds(std::uniform_int_distribution<std::int64_t>(
                             0, (nanoseconds(s.cfg.push_pull_interval) * s.push_pull_scale()).count())(s.rng));
  s.digest_changed_at = t;
  s.joined = true;
  s.view_changed = true;
  s.decide(me.id->name, fmt::format("assumed a formed cluster of {} members", s.nodes.size()));
}

std::optional<MemberInfo> SwimProtocol::member(const std::string& name) const {
  for (const auto& [uid, n] : s_->nodes) {
    if (n.id->name == name && n.status != MemberStatus::removed) return State::info_of(n);
  }
  return std::nullopt;
}

std::optional<MemberInfo> SwimProtocol::leader() const {
  if (!s_->leader_uid) return std::nullopt;
  auto it = s_->nodes.find(*s_->leader_uid);
  if (it == s_->nodes.end()) return std::nullopt;
  return State::info_of(it->second);
}

MemberInfo SwimProtocol::self() const { return State::info_of(s_->me()); }
const UdpEndpoint& SwimProtocol::endpoint() const { return s_->me().id->gossip; }
bool SwimProtocol::stopped() const noexcept { return s_->stopped(); }

std::vector<Decision> SwimProtocol::history(const std::string& name) const {
  std::vector<Decision> out;
  for (const auto& d : s_->history) {
    if (name.empty() || d.subject == name) out.push_back(d);
  }
  return out;
}

SwimStats SwimProtocol::stats() const {
  auto s = s_->stats;
  s.local_health = s_->local_health;
  return s;
}

std::uint64_t SwimProtocol::digest() const { return s_->digest_value; }

}  // namespace troupe::membership
