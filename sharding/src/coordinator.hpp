#pragma once
// Internal: the coordinator actor every cluster node runs (/system/sharding-coordinator). On
// the oldest up member it is active: it keeps the authoritative shard tables, allocates,
// rebalances and hands shards off. Everywhere it reports this node's shards to the active one.

#include <functional>

#include <troupe/actor/actor.hpp>
#include <troupe/membership/member.hpp>

#include "shared.hpp"

namespace troupe::sharding {

Message membership_tick();
/// Local trigger: send this node's report to the coordinator again (types or leaving changed).
Message report_again();
/// Whether `self_uid`'s side holds a majority of the up and leaving members by keep-majority's
/// rule (a tie goes to the side of the lowest member): a member is lost when unreachable or
/// when `lost` says so.
bool in_majority(const std::vector<membership::MemberInfo>& members, std::uint64_t self_uid,
                 const std::function<bool(const membership::MemberInfo&)>& lost = {});
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
