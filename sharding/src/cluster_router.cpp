#include <troupe/sharding/cluster_router.hpp>

#include <algorithm>
#include <mutex>
#include <unordered_map>

#include <spdlog/logger.h>

namespace troupe::sharding {

using membership::EventKind;
using membership::Liveness;
using membership::MemberInfo;
using membership::MemberStatus;

struct ClusterGroup::State {
  ActorSystem& system;
  remoting::Transport& transport;
  ClusterGroupOptions options;
  Router router;
  std::uint64_t self_uid = 0;
  std::mutex mu;
  bool active = true;
  std::unordered_map<std::uint64_t, ActorRef> routee_of;  // member uid -> its routee

  State(ActorSystem& s, remoting::Transport& t, ClusterGroupOptions o)
      : system(s), transport(t), options(std::move(o)) {}

  void add(const MemberInfo& m) {
    if (m.remoting.empty() || routee_of.count(m.uid)) return;
    if (m.uid == self_uid && !options.include_self) return;
    if (!options.role.empty() && std::find(m.roles.begin(), m.roles.end(), options.role) == m.roles.end()) return;
    auto ref = transport.resolve(m.remoting + options.path);
    if (!ref || !*ref) return;  // a local path with no actor (yet)
    routee_of.emplace(m.uid, *ref);
    router.add(*ref);
  }
  void remove(std::uint64_t uid) {
    auto it = routee_of.find(uid);
    if (it == routee_of.end()) return;
    router.remove(it->second);
    routee_of.erase(it);
  }
  void on_event(const membership::MembershipEvent& e) {
    std::lock_guard lk(mu);
    if (!active) return;
    const auto& m = e.member;
    switch (e.kind) {
      case EventKind::up:
        if (m.liveness != Liveness::unreachable) add(m);
        break;
      case EventKind::reachable:
        if (m.status == MemberStatus::up) add(m);
        break;
      case EventKind::unreachable:
      case EventKind::leaving:
      case EventKind::exiting:
      case EventKind::downed:
      case EventKind::removed: remove(m.uid); break;
      default: break;
    }
  }
};

ClusterGroup::ClusterGroup(ActorSystem& system, remoting::Transport& transport, membership::MembershipService& ms,
                           ClusterGroupOptions options)
    : state_(std::make_shared<State>(system, transport, std::move(options))) {
  auto& s = *state_;
  s.router = make_group(system, std::vector<ActorRef>{}, s.options.router);
  s.self_uid = ms.self().uid;
  std::weak_ptr<State> weak = state_;
  ms.subscribe([weak](const membership::MembershipEvent& e) {
    if (auto st = weak.lock()) st->on_event(e);
  });
  // Members already up when the group is made. The snapshot is taken without holding `mu`: it
  // waits for the gossip thread, which may be delivering an event that needs `mu`.
  const auto members = ms.members();
  std::lock_guard lk(s.mu);
  for (const auto& m : members) {
    if (m.status == MemberStatus::up && m.liveness != Liveness::unreachable) s.add(m);
  }
}

ClusterGroup::~ClusterGroup() {
  std::lock_guard lk(state_->mu);
  state_->active = false;
}

ActorRef ClusterGroup::ref() const { return state_->router.ref(); }
std::vector<ActorRef> ClusterGroup::routees() const { return state_->router.routees(); }
RouterStats ClusterGroup::stats() const { return state_->router.stats(); }

}  // namespace troupe::sharding
