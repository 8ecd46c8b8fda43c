#include "coordinator.hpp"

#include <troupe/membership/service.hpp>

#include <algorithm>
#include <map>

#include <fmt/format.h>
#include <spdlog/logger.h>

#include <troupe/remoting/transport.hpp>
#include <troupe/serialization/sharding_generated.h>

namespace troupe::sharding {

using membership::EventKind;
using membership::Liveness;
using membership::MemberInfo;
using membership::MemberStatus;

Message membership_tick() {
  return Message::build<MembershipTick>([](auto& b) { return CreateMembershipTick(b); });
}

Message report_again() {
  return Message::build<ReportRequest>([](auto& b) { return CreateReportRequest(b, 0); });
}

bool Sharding::Shared::recompute_coordinator_locked() {
  auto runs_sharding = [](const MemberInfo& m) {
    return std::find(m.roles.begin(), m.roles.end(), kShardingRole) != m.roles.end();
  };
  // Roles never change for a member: every node that sees the same members decides the same.
  bool by_role = false;
  for (const auto& [uid, m] : members) by_role |= m.status != MemberStatus::removed && runs_sharding(m);
  const MemberInfo* best = nullptr;
  for (const auto& [uid, m] : members) {
    if (m.status != MemberStatus::up || (by_role && !runs_sharding(m))) continue;
    if (!best || membership::older(m, *best)) best = &m;
  }
  const std::uint64_t c = best ? best->uid : 0;
  return coordinator.exchange(c, std::memory_order_acq_rel) != c;
}

const char* to_string(MoveReason r) noexcept {
  switch (r) {
    case MoveReason::allocated: return "allocated";
    case MoveReason::rebalance: return "rebalance";
    case MoveReason::handoff: return "handoff";
    case MoveReason::downed: return "downed";
    case MoveReason::rebuilt: return "rebuilt";
    case MoveReason::no_home: return "no_home";
  }
  return "?";
}

void Sharding::Shared::record_move(const std::string& type, ShardId shard, std::uint64_t from, std::uint64_t to,
                                   std::uint64_t epoch, MoveReason reason) {
  std::lock_guard lk(mu);
  auto name = [&](std::uint64_t uid) {
    if (!uid) return std::string();
    auto it = members.find(uid);
    return it == members.end() ? remoting::format_uid(uid) : it->second.name;
  };
  auto& log = move_log[{type, shard}];
  if (log.size() >= kShardHistory) log.erase(log.begin());
  log.push_back(ShardMove{std::chrono::steady_clock::now(), name(from), name(to), epoch, reason});
}

bool in_majority(const std::vector<MemberInfo>& members, std::uint64_t self_uid,
                 const std::function<bool(const MemberInfo&)>& lost_fn) {
  std::size_t reach = 0, lost = 0;
  const MemberInfo* lowest = nullptr;
  bool lowest_lost = false;
  for (const auto& m : members) {
    if (m.status != MemberStatus::up && m.status != MemberStatus::leaving) continue;
    const bool is_lost = m.uid != self_uid && (m.liveness == Liveness::unreachable || (lost_fn && lost_fn(m)));
    ++(is_lost ? lost : reach);
    if (!lowest || std::tie(m.name, m.uid) < std::tie(lowest->name, lowest->uid)) {
      lowest = &m;
      lowest_lost = is_lost;
    }
  }
  if (reach + lost == 0) return true;  // nothing to decide yet
  if (reach != lost) return reach > lost;
  return lowest && !lowest_lost;
}

void on_membership_event(Sharding::Shared& s, const membership::MembershipEvent& e) {
  if (e.kind == EventKind::leader_changed || e.kind == EventKind::join_refused) return;
  std::vector<ActorRef> fence;
  ActorRef coordinator;
  {
    std::lock_guard lk(s.mu);
    if (e.kind == EventKind::removed) {
      s.members.erase(e.member.uid);
    } else {
      s.members[e.member.uid] = e.member;
    }
    // Downed, or removed without having heard of its downing (the others stopped gossiping to
    // it): either way this node is out and serves nothing more.
    if ((e.kind == EventKind::self_downed || e.kind == EventKind::self_removed) && !s.self_down.exchange(true)) {
      for (const auto& [name, t] : s.types) fence.push_back(t.region);
    }
    s.recompute_coordinator_locked();
    coordinator = s.coordinator_actor;
  }
  s.hosted_changed.notify_all();  // hand_off_all looks at the members too
  static const Message fence_all = Message::build<FenceAll>([](auto& b) { return CreateFenceAll(b); });
  for (const auto& r : fence) r.tell(fence_all);
  if (coordinator) coordinator.tell(membership_tick());
}

namespace {
std::string_view sv(const flatbuffers::String* s) { return s ? s->string_view() : std::string_view(); }
}  // namespace


struct Coordinator::State {
  using TP = TimerService::Clock::time_point;
  std::shared_ptr<Sharding::Shared> sh;
  ActorContext* ctx = nullptr;

  // ---- following (every node) ----
  std::uint64_t following = 0;
  bool report_acked = false;

  // ---- active (the oldest up member) ----
  bool active = false, ready = false;
  TP rebuild_deadline{};
  struct NodeReg {
    std::string address;  // "troupe://<uid>@host:port"
    bool leaving = false, reported = false;
    bool client = false;  // a sharding client (not a member): routes only, kept while its lease lasts
    TP lease{};
    std::unordered_map<std::string, bool> types;  // type -> proxy
    std::unordered_map<std::string, std::uint64_t> acked, sent;
  };
  std::unordered_map<std::uint64_t, NodeReg> nodes;
  struct Claim {
    std::string type;
    std::uint32_t num_shards;
    std::vector<std::pair<ShardId, std::uint64_t>> shards;
  };
  std::unordered_map<std::uint64_t, std::vector<Claim>> claims;  // reports kept during a rebuild
  struct TypeState {
    std::uint32_t num_shards = 0;
    std::vector<std::uint64_t> owner, epoch;
    std::vector<std::uint8_t> moving;
    std::uint64_t version = 0;
    bool changed = true;
  };
  std::map<std::string, TypeState> types;
  struct Move {
    std::uint64_t from = 0, to = 0, version = 0;
    bool stopping = false;
    TP deadline{};
    bool leaving = false;  // the owner is leaving (a handoff), not a rebalance
    TP started{};          // for the handoff histogram
  };
  std::map<std::pair<std::string, ShardId>, Move> moves;
  std::unordered_map<std::uint64_t, TP> downed;  // node -> when its shards become free
  // Shards of a downed node -> it and when it was downed (for the history and the histogram).
  std::map<std::pair<std::string, ShardId>, std::pair<std::uint64_t, TP>> freed;
  std::uint64_t epoch_counter = 0;
  std::unordered_map<std::uint64_t, TP> heard;  // member -> when its last heartbeat came
  // Every node keeps, coordinator or not: member -> when this node first saw it down, removed
  // or gone from the list (where the reallocation histogram starts). A coordinator taking over
  // has no report from a downed member (its own predecessor, say), so it cannot tell that
  // member's shards from the rest; it allocates no unreported shard before every recently
  // downed member's margin (free_at) has passed.
  std::unordered_map<std::uint64_t, TP> seen_down;
  TP unreported_free_at{};
  unsigned minority_checks = 0;                  // checks in a row that saw a minority

  TP now() const { return ctx->system().timers().now(); }
  spdlog::logger& log() const { return ctx->system().log(); }
  std::uint64_t self_uid() const { return sh->self_uid; }

  std::unordered_map<std::uint64_t, MemberInfo> members() const {
    std::lock_guard lk(sh->mu);
    return sh->members;
  }
  static bool reachable(const std::unordered_map<std::uint64_t, MemberInfo>& ms, std::uint64_t uid) {
    auto it = ms.find(uid);
    return it != ms.end() && it->second.liveness != Liveness::unreachable;
  }
  /// A registered node that can be sent to: a reachable member, or a client whose lease lasts.
  bool alive(const std::unordered_map<std::uint64_t, MemberInfo>& ms, std::uint64_t uid, const NodeReg& reg) const {
    return reg.client ? now() < reg.lease : reachable(ms, uid);
  }
  std::uint64_t node_of(const ActorRef& ref) const {
    if (!ref) return 0;
    auto a = remoting::parse_actor_address(sh->transport->address_of(ref));
    return a ? a->node.uid : 0;
  }
  void tell(const std::string& address, const Message& m, const ActorRef& as = {}) {
    if (address.empty()) return;
    if (auto r = sh->transport->resolve(address); r && *r) r->tell(m, as ? as : ctx->self());
  }
  std::string region_address(std::uint64_t node, const std::string& type) const {
    auto it = nodes.find(node);
    return it == nodes.end() ? std::string() : it->second.address + "/system/" + region_name(type);
  }

  // ---- following ----

  void send_report() {
    std::string to;
    Message m;
    {
      std::lock_guard lk(sh->mu);
      to = sh->address_of_locked(following);
      m = Message::build<NodeReport>([&](flatbuffers::FlatBufferBuilder& b) {
        std::vector<flatbuffers::Offset<TypeReport>> reports;
        for (const auto& [name, t] : sh->types) {
          std::vector<std::uint32_t> shards;
          std::vector<std::uint64_t> epochs;
          for (const auto& [s, e] : t.hosted) {
            shards.push_back(s);
            epochs.push_back(e);
          }
          reports.push_back(CreateTypeReport(b, b.CreateString(name), t.settings.num_shards, t.proxy, b.CreateVector(shards),
                                           b.CreateVector(epochs)));
        }
        return CreateNodeReport(b, following, sh->self_uid, b.CreateVector(reports), sh->max_epoch.load(),
                                sh->leaving.load());
      });
    }
    if (!to.empty()) tell(to + "/system/" + kCoordinatorName, m);
  }

  void on_membership() {
    note_downed();
    const auto c = sh->coordinator.load(std::memory_order_acquire);
    if (c != following) {
      following = c;
      report_acked = false;
      if (c) {
        log().info("sharding: the coordinator is now {}", remoting::format_uid(c));
        send_report();
      }
    }
    const bool should = c == self_uid() && !sh->self_down.load();
    if (should && !active) become_active();
    if (!should && active) step_down();
    if (active) on_members_changed();
  }

  // ---- active ----

  void note_downed() {
    const auto ms = members();
    const auto t = now();
    for (const auto& [uid, m] : ms) {
      if (m.status == MemberStatus::down || m.status == MemberStatus::removed) seen_down.try_emplace(uid, t);
    }
    // Kept a while after the member leaves the list: its margin is seconds.
    for (auto it = seen_down.begin(); it != seen_down.end();) {
      it = !ms.count(it->first) && t - it->second > std::chrono::minutes(1) ? seen_down.erase(it) : std::next(it);
    }
  }

  void become_active() {
    step_down();
    active = true;
    epoch_counter = sh->max_epoch.load();
    rebuild_deadline = now() + sh->config.rebuild_timeout;
    // A member downed lately may still serve its shards (the previous coordinator among them:
    // it may not know yet). Shards no member reports wait for its margin, as they would have
    // waited under the previous coordinator.
    unreported_free_at = now();
    for (const auto& [uid, t] : seen_down) unreported_free_at = std::max(unreported_free_at, free_at(uid, t));
    if (const auto wait = unreported_free_at - now(); wait > TP::duration::zero()) {
      static const Message plan_tick = Message::build<PlanTick>([](auto& b) { return CreatePlanTick(b); });
      ctx->schedule_once(std::chrono::duration_cast<std::chrono::milliseconds>(wait) + std::chrono::milliseconds(1), plan_tick);
      log().info("sharding: shards no member reports wait {} ms for the margin of a member downed lately",
                 std::chrono::duration_cast<std::chrono::milliseconds>(wait).count());
    }
    log().info("sharding: this node is the coordinator; rebuilding the shard tables from the members' reports");
    const auto ms = members();
    const auto ask = Message::build<ReportRequest>([&](auto& b) { return CreateReportRequest(b, self_uid()); });
    for (const auto& [uid, m] : ms) {
      if (uid != self_uid() && (m.status == MemberStatus::up || m.status == MemberStatus::leaving)) {
        tell(m.remoting + "/system/" + kCoordinatorName, ask);
      }
    }
    check_rebuild();
  }

  void step_down() {
    if (active) log().info("sharding: this node is no longer the coordinator");
    active = ready = false;
    nodes.clear();
    claims.clear();
    types.clear();
    moves.clear();
    downed.clear();
    freed.clear();
  }

  void on_report(const NodeReport& r, const ActorRef& from) {
    const auto ms = members();
    auto m = ms.find(r.node());
    // Only a report that says it is a client's is one: a member whose report comes before
    // gossip told this node of it is not answered (below) and reports again, as a member.
    if (m == ms.end() && r.client() && node_of(from) == r.node()) return on_client_report(r, from);
    if (!active) {
      sh->stale_coordinator.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    if (m == ms.end() || node_of(from) != r.node() || m->second.status == MemberStatus::down) {
      sh->stale_coordinator.fetch_add(1, std::memory_order_relaxed);
      sh->protocol_log.warn(log(), "sharding: ignored a report from {}, which is not a member (or not its sender)",
                            remoting::format_uid(r.node()));
      return;
    }
    auto& reg = nodes[r.node()];
    reg.client = false;
    reg.address = m->second.remoting;
    reg.leaving = r.leaving() || m->second.status == MemberStatus::leaving || m->second.status == MemberStatus::exiting;
    reg.reported = true;
    reg.types.clear();
    reg.acked.clear();
    reg.sent.clear();
    std::vector<Claim> cs;
    if (r.types()) {
      for (const auto* t : *r.types()) {
        const auto name = std::string(sv(t->entity_type()));
        const auto n = t->num_shards();
        const auto* shards = t->shards();
        const auto* epochs = t->epochs();
        if (name.empty() || n == 0 || n > 65'536 || (shards && (!epochs || epochs->size() != shards->size()))) {
          sh->malformed.fetch_add(1, std::memory_order_relaxed);
          continue;
        }
        if (auto ts = types.find(name); ts != types.end() && ts->second.num_shards != n) {
          sh->malformed.fetch_add(1, std::memory_order_relaxed);
          log().error("sharding: member {} runs type '{}' with {} shards, the cluster with {}; ignored there",
                      m->second.name, name, n, ts->second.num_shards);
          continue;
        }
        reg.types[name] = t->proxy();
        Claim c{name, n, {}};
        if (shards && !t->proxy()) {
          for (std::uint32_t i = 0; i < shards->size(); ++i) {
            if (shards->Get(i) < n) c.shards.emplace_back(shards->Get(i), epochs->Get(i));
          }
        }
        cs.push_back(std::move(c));
      }
    }
    epoch_counter = std::max(epoch_counter, r.max_epoch());
    from.tell(Message::build<ReportAck>([&](auto& b) { return CreateReportAck(b, self_uid()); }), ctx->self());
    if (!ready) {
      claims[r.node()] = std::move(cs);
      check_rebuild();
      return;
    }
    for (auto& c : cs) adopt(r.node(), c);
    plan();
    publish_all();
  }

  /// A report from a program that is not a member: a sharding client. A node that does not
  /// coordinate answers the client's first report with where the coordinator it follows is
  /// (and that node's key), and the client reports there itself: a report only ever counts
  /// from the client's own connection (NodeReport is bound to its origin), never passed on.
  void on_client_report(const NodeReport& r, const ActorRef& from) {
    auto a = remoting::parse_actor_address(sh->transport->address_of(from));
    if (!a) return;
    // Its key, to answer it (taken only when allow-listed, never replacing a known one).
    if (r.curve_key() && r.curve_key()->size() > 0) sh->transport->learn_peer_key(a->node.endpoint(), r.curve_key()->string_view(), a->node.uid);
    if (!active) {
      if (r.coordinator() != 0 || !following || following == self_uid()) return;
      membership::MemberInfo coordinator;
      {
        std::lock_guard lk(sh->mu);
        if (auto it = sh->members.find(following); it != sh->members.end()) coordinator = it->second;
      }
      if (coordinator.remoting.empty()) return;
      from.tell(Message::build<ContactFound>([&](flatbuffers::FlatBufferBuilder& b) {
                  return CreateContactFound(b, b.CreateString(coordinator.remoting), b.CreateString(coordinator.curve_key));
                }),
                ctx->self());
      return;
    }
    if (!ready) return;  // it asks again
    auto& reg = nodes[r.node()];
    const bool fresh = !reg.client || reg.address != a->node.to_string();
    reg.client = true;
    reg.address = a->node.to_string();
    reg.reported = true;
    reg.lease = now() + 3 * sh->config.resend_interval + sh->config.rebuild_timeout;
    std::unordered_map<std::string, bool> wanted;
    if (r.types()) {
      for (const auto* t : *r.types()) {
        const auto name = std::string(sv(t->entity_type()));
        auto ts = types.find(name);
        if (name.empty() || ts == types.end() || ts->second.num_shards != t->num_shards()) {
          // A type the cluster does not run (yet), or with another number of shards.
          if (ts != types.end()) sh->malformed.fetch_add(1, std::memory_order_relaxed);
          continue;
        }
        wanted[name] = true;
      }
    }
    if (fresh || wanted != reg.types) {
      reg.types = std::move(wanted);
      reg.acked.clear();
      reg.sent.clear();
    }
    from.tell(Message::build<ReportAck>([&](auto& b) { return CreateReportAck(b, self_uid()); }), ctx->self());
    publish_all();
  }

  TypeState& type_state(const std::string& name, std::uint32_t n) {
    auto [it, fresh] = types.try_emplace(name);
    if (fresh) {
      it->second.num_shards = n;
      it->second.owner.assign(n, 0);
      it->second.epoch.assign(n, 0);
      it->second.moving.assign(n, 0);
    }
    return it->second;
  }

  /// Takes a member's claim to the shards it hosts where the table has no other home for them.
  void adopt(std::uint64_t node, const Claim& c) {
    auto& ts = type_state(c.type, c.num_shards);
    if (ts.num_shards != c.num_shards) return;
    for (const auto& [s, e] : c.shards) {
      epoch_counter = std::max(epoch_counter, e);
      if (ts.owner[s] == node && ts.epoch[s] == e) continue;
      if (ts.owner[s] == 0 || e > ts.epoch[s]) {
        if (ts.owner[s] != 0) {
          log().warn("sharding {}: shard {} claimed by {} (epoch {}) and {} (epoch {}); the later epoch wins", c.type, s,
                     remoting::format_uid(ts.owner[s]), ts.epoch[s], remoting::format_uid(node), e);
        }
        const auto before = ts.owner[s];
        ts.owner[s] = node;
        ts.epoch[s] = e;
        ts.moving[s] = 0;
        ts.changed = true;
        sh->record_move(c.type, s, before, node, e, MoveReason::rebuilt);
        freed.erase({c.type, s});
      } else {
        log().warn("sharding {}: {} claims shard {} at epoch {}, which is allocated to {} at epoch {}; it will be fenced",
                   c.type, remoting::format_uid(node), s, e, remoting::format_uid(ts.owner[s]), ts.epoch[s]);
      }
    }
  }

  /// What the tables this node's regions applied last give each member, as claims.
  std::unordered_map<std::uint64_t, std::vector<Claim>> claims_in_applied_tables() const {
    std::unordered_map<std::uint64_t, std::vector<Claim>> out;
    std::map<std::string, std::uint64_t> seen;  // region address -> its node
    std::lock_guard lk(sh->mu);
    for (const auto& [name, te] : sh->types) {
      std::unordered_map<std::uint64_t, Claim> by_node;
      for (const auto& si : te.table) {
        if (si.region.empty()) continue;
        auto it = seen.find(si.region);
        if (it == seen.end()) {
          auto a = remoting::parse_actor_address(si.region);
          it = seen.emplace(si.region, a ? a->node.uid : 0).first;
        }
        if (!it->second) continue;
        auto& c = by_node[it->second];
        c.type = name;
        c.num_shards = static_cast<std::uint32_t>(te.table.size());
        c.shards.emplace_back(si.shard, si.epoch);
      }
      for (auto& [node, c] : by_node) out[node].push_back(std::move(c));
    }
    return out;
  }

  void check_rebuild() {
    if (!active || ready) return;
    const auto ms = members();
    const auto t = now();
    std::vector<std::uint64_t> silent;
    for (const auto& [uid, m] : ms) {
      if (m.status != MemberStatus::up && m.status != MemberStatus::leaving) continue;
      if (auto it = nodes.find(uid); it != nodes.end() && it->second.reported) continue;
      // An unreachable member may host shards: nothing is allocated before it answers or is
      // downed. A reachable one that stays silent past rebuild_timeout runs no sharding,
      // unless the last tables this node applied give it shards: then it is slow, or its
      // report was lost (it is sent again until acknowledged). It keeps those shards, at those
      // epochs, as if it had reported them, until its report comes (or it is downed): they
      // are not given to anyone else while it may still serve them.
      if (m.liveness == Liveness::unreachable || t < rebuild_deadline) return;
      silent.push_back(uid);
    }
    auto applied = silent.empty() ? decltype(claims_in_applied_tables()){} : claims_in_applied_tables();
    for (auto uid : silent) {
      auto it = applied.find(uid);
      if (it == applied.end() || claims.count(uid)) continue;
      log().warn("sharding: member {} has not reported within rebuild_timeout; the shards the last tables give it stay "
                 "with it until it does",
                 remoting::format_uid(uid));
      // Registered as a host of those types (it is still asked for its report, which replaces
      // all of this when it comes).
      auto& reg = nodes[uid];
      reg.address = ms.at(uid).remoting;
      for (const auto& c : it->second) reg.types[c.type] = false;
      claims[uid] = std::move(it->second);
    }
    ready = true;
    for (const auto& [node, cs] : claims) {
      for (const auto& c : cs) adopt(node, c);
    }
    claims.clear();
    for (auto& [name, ts] : types) ts.changed = true;
    log().info("sharding: coordinator ready: {} entity types from {} members' reports", types.size(), nodes.size());
    plan();
    publish_all();
  }

  void on_members_changed() {
    const auto ms = members();
    const auto t = now();
    for (auto& [uid, reg] : nodes) {
      if (reg.client) continue;
      auto m = ms.find(uid);
      const bool gone = m == ms.end() || m->second.status == MemberStatus::down || m->second.status == MemberStatus::removed;
      if (gone && !downed.count(uid)) {
        downed[uid] = free_at(uid, t);
        seen_down.try_emplace(uid, t);  // gone from the list without being seen down
        // Plan the moment its margin ends: the periodic tick (resend_interval) would add up to
        // a period to every recovery.
        static const Message plan_tick = Message::build<PlanTick>([](auto& b) { return CreatePlanTick(b); });
        ctx->schedule_once(std::chrono::duration_cast<std::chrono::milliseconds>(downed[uid] - t) +
                               std::chrono::milliseconds(1),
                           plan_tick);
        log().info("sharding: member {} is gone; its shards wait for new homes for {} ms", remoting::format_uid(uid),
                   std::chrono::duration_cast<std::chrono::milliseconds>(downed[uid] - t).count());
        for (auto& [name, ts] : types) {
          for (ShardId s = 0; s < ts.num_shards; ++s) {
            if (ts.owner[s] == uid && !ts.moving[s]) {
              ts.moving[s] = 1;  // senders buffer instead of sending into the void
              ts.changed = true;
            }
          }
        }
      }
      if (m != ms.end() && (m->second.status == MemberStatus::leaving || m->second.status == MemberStatus::exiting)) {
        reg.leaving = true;
      }
    }
    if (!ready) return check_rebuild();
    plan();
    publish_all();
  }

  /// When the shards of `uid`, downed at `t`, may go elsewhere: once it must have stopped serving
  /// were it alive on the other side of a partition (it suspends minority_after after it last
  /// heard from a majority, which is about when we last heard from it, checked twice in a row),
  /// and never sooner than 500 ms after the downing (a member that still hears the cluster
  /// learns of its downing and stops within that).
  TP free_at(std::uint64_t uid, TP t) const {
    const auto floor = t + std::chrono::milliseconds(500);
    auto h = heard.find(uid);
    if (h == heard.end()) return t + sh->config.down_margin;
    return std::max(floor, h->second + sh->config.minority_after + 3 * sh->config.minority_check_interval +
                               std::chrono::milliseconds(250));
  }

  void allocate(TypeState& ts, ShardId s, std::uint64_t node) {
    ts.owner[s] = node;
    ts.epoch[s] = ++epoch_counter;
    ts.moving[s] = 0;
    ts.changed = true;
    sh->allocations.fetch_add(1, std::memory_order_relaxed);
  }

  void plan() {
    // A coordinator that sees itself in a minority allocates nothing: the majority's will.
    if (!active || !ready || !sh->in_majority.load()) return;
    const auto t = now();
    // Members downed long enough: their shards are free.
    for (auto it = downed.begin(); it != downed.end();) {
      if (t < it->second) {
        ++it;
        continue;
      }
      const auto uid = it->first;
      for (auto& [name, ts] : types) {
        for (ShardId s = 0; s < ts.num_shards; ++s) {
          if (ts.owner[s] == uid) {
            ts.owner[s] = 0;
            ts.moving[s] = 0;
            ts.changed = true;
            const auto seen = seen_down.find(uid);
            freed[{name, s}] = {uid, seen != seen_down.end() ? seen->second : t};
          }
        }
      }
      for (auto mv = moves.begin(); mv != moves.end();) mv = mv->second.from == uid ? moves.erase(mv) : std::next(mv);
      nodes.erase(uid);
      it = downed.erase(it);
    }
    const auto ms = members();
    for (auto& [name, ts] : types) {
      std::vector<std::uint64_t> hosts, live;
      for (const auto& [uid, reg] : nodes) {
        auto ty = reg.types.find(name);
        if (reg.client || ty == reg.types.end() || ty->second || reg.leaving || downed.count(uid)) continue;
        auto m = ms.find(uid);
        if (m == ms.end() || m->second.status != MemberStatus::up) continue;
        hosts.push_back(uid);
        if (m->second.liveness != Liveness::unreachable) live.push_back(uid);
      }
      if (live.empty()) continue;
      std::sort(hosts.begin(), hosts.end());
      std::sort(live.begin(), live.end());
      const bool all_live = live.size() == hosts.size();
      const auto target = rebalance(ShardTable(ts.owner), ts.num_shards, live);
      std::unordered_map<std::uint64_t, std::uint32_t> load;
      for (auto o : ts.owner) {
        if (o) ++load[o];
      }
      // While someone is unreachable the balanced table would count its shards as free: a shard
      // goes to the least loaded live member instead (ties by rendezvous weight).
      auto least_loaded = [&](ShardId s) {
        std::uint64_t best = 0;
        for (auto n : live) {
          if (!best || load[n] < load[best] || (load[n] == load[best] && rendezvous_weight(s, n) > rendezvous_weight(s, best))) best = n;
        }
        return best;
      };
      for (ShardId s = 0; s < ts.num_shards; ++s) {
        if (ts.owner[s] != 0 || ts.moving[s] || t < unreported_free_at) continue;
        const std::uint64_t dest = all_live ? target.owner(s) : least_loaded(s);
        if (!dest) continue;
        allocate(ts, s, dest);
        ++load[dest];
        auto f = freed.find({name, s});
        sh->record_move(name, s, f == freed.end() ? 0 : f->second.first, dest, ts.epoch[s],
                        f == freed.end() ? MoveReason::allocated : MoveReason::downed);
        if (f != freed.end()) {
          sh->observe_reallocation(t - f->second.second);
          freed.erase(f);
        }
      }
      if (!all_live) {
        for (const auto& [key, mv] : moves) {
          if (key.first == name) ++load[mv.to];  // on their way there
        }
      }
      // Hand off what the balanced table puts elsewhere, a bounded number at a time. While
      // someone is unreachable nothing is rebalanced, but a leaving member's shards still move
      // (to the least loaded live member), so that a graceful leave (a rolling restart) hands
      // its entities off with their state while another member is out of reach.
      for (ShardId s = 0; s < ts.num_shards && moves.size() < sh->config.max_simultaneous_handoffs; ++s) {
        const auto o = ts.owner[s];
        if (!o || ts.moving[s] || downed.count(o) || !nodes.count(o) || !reachable(ms, o)) continue;
        if (!all_live && !nodes.at(o).leaving) continue;
        const auto to = all_live ? target.owner(s) : least_loaded(s);
        if (!to || to == o) continue;
        ++load[to];
        ts.moving[s] = 1;
        ts.changed = true;
        moves[{name, s}] = Move{o, to, 0, false, t + sh->config.handoff_ack_timeout, nodes.at(o).leaving, t};
        sh->rebalances.fetch_add(1, std::memory_order_relaxed);
        log().info("sharding {}: moving shard {} from {} to {}", name, s, remoting::format_uid(o), remoting::format_uid(to));
      }
    }
  }

  Message table_message(const std::string& name, const TypeState& ts) {
    std::vector<std::uint64_t> region_nodes;
    std::unordered_map<std::uint64_t, std::uint16_t> index;
    std::vector<std::uint16_t> owners(ts.num_shards, 0);
    for (ShardId s = 0; s < ts.num_shards; ++s) {
      const auto o = ts.owner[s];
      if (!o) continue;
      auto [it, fresh] = index.try_emplace(o, static_cast<std::uint16_t>(region_nodes.size() + 1));
      if (fresh) region_nodes.push_back(o);
      owners[s] = it->second;
    }
    std::vector<std::string> regions, keys;
    {
      std::lock_guard lk(sh->mu);
      for (auto n : region_nodes) {
        regions.push_back(region_address(n, name));
        auto m = sh->members.find(n);
        keys.push_back(m == sh->members.end() ? std::string() : m->second.curve_key);
      }
    }
    return Message::build<ShardTableUpdate>([&](flatbuffers::FlatBufferBuilder& b) {
      return CreateShardTableUpdate(b, b.CreateString(name), self_uid(), ts.version, ts.num_shards,
                                    b.CreateVectorOfStrings(regions), b.CreateVector(owners), b.CreateVector(ts.epoch),
                                    b.CreateVector(ts.moving), b.CreateVectorOfStrings(keys));
    });
  }

  /// Sends each type's table to every member with the type that has not got its version (or,
  /// on `resend`, not acknowledged it).
  void publish_all(bool resend = false) {
    if (!active || !ready) return;
    const auto ms = members();
    for (auto& [name, ts] : types) {
      if (ts.changed) {
        ts.version = sh->table_versions.fetch_add(1, std::memory_order_relaxed) + 1;
        ts.changed = false;
        for (auto& [key, mv] : moves) {
          if (key.first == name && mv.version == 0) mv.version = ts.version;
        }
      }
      Message table;
      for (auto& [uid, reg] : nodes) {
        if (!reg.types.count(name) || downed.count(uid) || !alive(ms, uid, reg)) continue;
        const bool due = resend ? reg.acked[name] < ts.version : reg.sent[name] < ts.version;
        if (!due) continue;
        if (!table) table = table_message(name, ts);
        tell(region_address(uid, name), table);
        reg.sent[name] = ts.version;
      }
    }
    advance_moves();
  }

  void on_table_ack(const TableAck& a, const ActorRef& from) {
    if (!active || a.coordinator() != self_uid() || node_of(from) != a.node()) return;
    auto it = nodes.find(a.node());
    if (it == nodes.end()) return;
    auto& v = it->second.acked[std::string(sv(a.entity_type()))];
    v = std::max(v, a.version());
    advance_moves();
  }

  void send_handoff(const std::string& name, ShardId s, const Move& mv) {
    const auto& ts = types.at(name);
    tell(region_address(mv.from, name), Message::build<HandOff>([&](auto& b) {
           return CreateHandOff(b, b.CreateString(name), self_uid(), s, ts.epoch[s]);
         }));
  }

  /// A move whose "moving" table every member and client with the type has acknowledged (or that waited
  /// long enough) asks the owner to stop the shard.
  void advance_moves() {
    const auto ms = members();
    const auto t = now();
    for (auto& [key, mv] : moves) {
      if (mv.stopping || mv.version == 0) continue;
      bool all = true;
      for (auto& [uid, reg] : nodes) {
        if (!reg.types.count(key.first)) continue;
        // A client (its lease lasting) routes straight to the owner too: until it buffers the
        // shard, a message it sends by its older table could reach the owner after the stop
        // and the new home after the client's later ones.
        if (reg.client ? t >= reg.lease : downed.count(uid) || !reachable(ms, uid)) continue;
        if (reg.acked[key.first] < mv.version) all = false;
      }
      if (!all && t < mv.deadline) continue;
      mv.stopping = true;
      mv.deadline = t + sh->config.handoff_ack_timeout;
      send_handoff(key.first, key.second, mv);
    }
  }

  void on_stopped(const ShardStopped& st, const ActorRef& from) {
    if (!active || !ready || node_of(from) != st.node()) return;
    const auto name = std::string(sv(st.entity_type()));
    auto mv = moves.find({name, st.shard()});
    auto ts = types.find(name);
    if (mv == moves.end() || ts == types.end() || mv->second.from != st.node() || ts->second.epoch[st.shard()] != st.epoch()) {
      return;  // a duplicate or a stale answer
    }
    const auto s = st.shard();
    auto to = mv->second.to;
    const auto reason = mv->second.leaving ? MoveReason::handoff : MoveReason::rebalance;
    const auto started = mv->second.started;
    moves.erase(mv);
    const auto ms = members();
    auto eligible = [&](std::uint64_t n) {
      auto r = nodes.find(n);
      auto m = ms.find(n);
      return r != nodes.end() && !r->second.leaving && !downed.count(n) && r->second.types.count(name) &&
             !r->second.types.at(name) && m != ms.end() && m->second.status == MemberStatus::up &&
             m->second.liveness != Liveness::unreachable;
    };
    if (!eligible(to)) to = 0;
    if (!to) {
      std::unordered_map<std::uint64_t, std::uint32_t> load;
      for (auto o : ts->second.owner) ++load[o];
      for (const auto& [n, reg] : nodes) {
        if (n != st.node() && eligible(n) && (!to || load[n] < load[to])) to = n;
      }
    }
    auto& t = ts->second;
    if (!to) {
      t.owner[s] = 0;
      t.moving[s] = 0;
      t.changed = true;
      log().warn("sharding {}: shard {} stopped but no member can take it; {} entity states dropped", name, s,
                 st.states() ? st.states()->size() : 0);
      sh->record_move(name, s, st.node(), 0, 0, MoveReason::no_home);
    } else {
      allocate(t, s, to);
      sh->record_move(name, s, st.node(), to, t.epoch[s], reason);
      sh->observe_handoff(now() - started);
      if (st.states() && st.states()->size() > 0) {
        tell(region_address(to, name), Message::build<ShardState>([&](flatbuffers::FlatBufferBuilder& b) {
               std::vector<flatbuffers::Offset<EntityState>> v;
               for (const auto* e : *st.states()) {
                 if (!e || !e->entity_id() || !e->payload()) continue;
                 v.push_back(CreateEntityState(b, b.CreateString(e->entity_id()->string_view()), e->type_id(),
                                               b.CreateVector(e->payload()->data(), e->payload()->size())));
               }
               return CreateShardState(b, b.CreateString(name), self_uid(), s, t.epoch[s], b.CreateVector(v));
             }));
      }
      log().info("sharding {}: shard {} handed off to {} at epoch {}", name, s, remoting::format_uid(to), t.epoch[s]);
    }
    plan();
    publish_all();
  }

  /// Which side of a partition this node is on: every member's coordinator actor tells every
  /// other one it is alive each minority_check_interval; a member not heard from for
  /// minority_after (or unreachable) is lost. Regions suspend in a minority and resume in the
  /// majority. Heartbeats of our own rather than SWIM's suspicions: Lifeguard slows a node's
  /// probing when its probes fail, so on the minority side suspicions come late, while this
  /// node must stop serving well before the majority can down it and take its shards.
  void check_side() {
    if (!sh->membership || sh->self_down.load()) return;
    const auto ms = sh->membership->members();
    const auto t = now();
    static const Message beat = Message::build<SideHeartbeat>([](auto& b) { return CreateSideHeartbeat(b); });
    for (const auto& m : ms) {
      if (m.uid == self_uid() || m.remoting.empty()) continue;
      if (m.status != MemberStatus::up && m.status != MemberStatus::leaving && m.status != MemberStatus::joining) continue;
      tell(m.remoting + "/system/" + kCoordinatorName, beat);
    }
    for (auto it = heard.begin(); it != heard.end();) {
      const bool known = std::any_of(ms.begin(), ms.end(), [&](const MemberInfo& m) { return m.uid == it->first; });
      it = known ? std::next(it) : heard.erase(it);
    }
    // Members never heard from (starting, or running no sharding) are judged by SWIM alone.
    const bool majority = in_majority(ms, self_uid(), [&](const MemberInfo& m) {
      auto h = heard.find(m.uid);
      return h != heard.end() && t - h->second > sh->config.minority_after;
    });
    // Suspend only when the last two checks agree: after a stall of this process, heartbeats
    // already queued are read before the next check.
    if (!majority && minority_checks++ == 0) return;
    if (majority) minority_checks = 0;
    if (sh->in_majority.exchange(majority) == majority) return;
    static const Message suspend = Message::build<Suspend>([](auto& b) { return CreateSuspend(b); });
    static const Message resume = Message::build<Resume>([](auto& b) { return CreateResume(b); });
    std::vector<ActorRef> regions;
    {
      std::lock_guard lk(sh->mu);
      for (const auto& [name, type] : sh->types) regions.push_back(type.region);
    }
    for (const auto& r : regions) r.tell(majority ? resume : suspend);
  }

  void on_heartbeat(const ActorRef& from) {
    if (const auto n = node_of(from)) heard[n] = now();
  }

  void on_plan_tick() {
    if (!active || !ready) return;
    plan();
    publish_all();
  }

  void on_tick() {
    if (following && !report_acked) send_report();
    if (!active) return;
    if (!ready) {
      const auto ms = members();
      const auto ask = Message::build<ReportRequest>([&](auto& b) { return CreateReportRequest(b, self_uid()); });
      for (const auto& [uid, m] : ms) {
        if (m.status != MemberStatus::up && m.status != MemberStatus::leaving) continue;
        if (auto it = nodes.find(uid); it == nodes.end() || !it->second.reported) tell(m.remoting + "/system/" + kCoordinatorName, ask);
      }
      check_rebuild();
      return;
    }
    const auto t = now();
    for (auto it = nodes.begin(); it != nodes.end();) {
      it = it->second.client && t >= it->second.lease ? nodes.erase(it) : std::next(it);
    }
    plan();
    publish_all(true);
    const auto ms = members();
    for (auto& [key, mv] : moves) {
      if (mv.stopping && t >= mv.deadline && reachable(ms, mv.from)) {
        mv.deadline = t + sh->config.handoff_ack_timeout;
        send_handoff(key.first, key.second, mv);
      }
    }
  }
};

Coordinator::Coordinator(std::shared_ptr<Sharding::Shared> shared) : st_(std::make_unique<State>()) {
  st_->sh = std::move(shared);
}
Coordinator::~Coordinator() = default;

void Coordinator::pre_start() {
  st_->ctx = &context();
  context().schedule_every(st_->sh->config.resend_interval,
                           Message::build<CoordinatorTick>([](auto& b) { return CreateCoordinatorTick(b); }));
  context().schedule_every(st_->sh->config.minority_check_interval,
                           Message::build<MajorityTick>([](auto& b) { return CreateMajorityTick(b); }));
  // A restarted instance starts with nothing (no coordinator followed, not active): it looks at
  // the members now rather than at the next membership event, which may never come.
  context().self().tell(membership_tick());
}

void Coordinator::receive(const Message& m) {
  auto& s = *st_;
  if (m.is<MembershipTick>()) return s.on_membership();
  if (m.is<CoordinatorTick>()) return s.on_tick();
  if (m.is<MajorityTick>()) return s.check_side();
  if (m.is<PlanTick>()) return s.on_plan_tick();
  if (m.is<SideHeartbeat>()) return s.on_heartbeat(sender());
  if (const auto* r = m.as<NodeReport>()) return s.on_report(*r, sender());
  if (const auto* a = m.as<TableAck>()) return s.on_table_ack(*a, sender());
  if (const auto* st = m.as<ShardStopped>()) return s.on_stopped(*st, sender());
  if (const auto* q = m.as<ReportRequest>()) {
    if (q->coordinator() == 0) {
      s.report_acked = false;
      return s.send_report();
    }
    // A newly active coordinator asks before this node may see it as such: answer it.
    if (q->coordinator() == s.following || s.node_of(sender()) == q->coordinator()) {
      const auto keep = s.following;
      s.following = q->coordinator();
      s.send_report();
      s.following = keep;
    }
    return;
  }
  if (const auto* a = m.as<ReportAck>()) {
    if (a->coordinator() == s.following) s.report_acked = true;
    return;
  }
}

}  // namespace troupe::sharding
