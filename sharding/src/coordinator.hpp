#pragma once
// Internal: the coordinator actor every cluster node runs (/system/sharding-coordinator). On
// the oldest up member it is active: it keeps the authoritative shard tables, allocates,
// rebalances and hands shards off. Everywhere it reports this node's shards to the active one.

#include <troupe/actor/actor.hpp>
#include <troupe/membership/member.hpp>

#include "shared.hpp"

namespace troupe::sharding {

Message membership_tick();
/// Local trigger: send this node's report to the coordinator again (types or leaving changed).
Message report_again();
/// Membership's subscription: keeps Shared::members and the coordinator, fences on self-down.
void on_membership_event(Sharding::Shared& s, const membership::MembershipEvent& e);

class Coordinator final : public Actor {
 public:
  explicit Coordinator(std::shared_ptr<Sharding::Shared> shared);
  ~Coordinator() override;
  void pre_start() override;
  void receive(const Message& m) override;

  struct State;

 private:
  std::unique_ptr<State> st_;
};

}  // namespace troupe::sharding
