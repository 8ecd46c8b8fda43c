#pragma once
/// \file
/// Cluster-aware group router: one ActorRef in front of the actor at the same path on every
/// reachable `up` member of the cluster (Akka's cluster-aware group router). It follows
/// membership: a member that comes up adds its routee, one that becomes unreachable, leaves or is
/// downed takes its routee out (an unreachable member's routee comes back when it is reachable
/// again). Routing kinds are those of the local routers; routing runs in the sender's thread.

#include <memory>
#include <string>
#include <vector>

#include <troupe/actor/router.hpp>
#include <troupe/membership/service.hpp>
#include <troupe/remoting/transport.hpp>

namespace troupe::sharding {

struct ClusterGroupOptions {
  /// The routee's path on every member, e.g. "/user/worker".
  std::string path;
  /// Route to this node's own actor at `path` too.
  bool include_self = true;
  /// Only members with this role (MemberInfo::roles); empty: every member.
  std::string role;
  RouterConfig router;
};

class ClusterGroup {
 public:
  /// `transport` and `membership` must outlive the group.
  ClusterGroup(ActorSystem& system, remoting::Transport& transport, membership::MembershipService& membership,
               ClusterGroupOptions options);
  ~ClusterGroup();
  ClusterGroup(const ClusterGroup&) = delete;
  ClusterGroup& operator=(const ClusterGroup&) = delete;

  /// The ref to send through.
  ActorRef ref() const;
  std::vector<ActorRef> routees() const;
  RouterStats stats() const;

  struct State;

 private:
  std::shared_ptr<State> state_;
};

}  // namespace troupe::sharding
