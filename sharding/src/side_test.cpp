// Which side of a partition a node is on (regions suspend in a minority): keep-majority's rule
// over up and leaving members, unreachable members and those the caller says (members not heard
// from lately) counted as lost, a tie to the side of the lowest member; joining and removed
// members do not count.

#include <gtest/gtest.h>

#include "coordinator.hpp"

namespace troupe::sharding {
namespace {

using membership::Liveness;
using membership::MemberInfo;
using membership::MemberStatus;

MemberInfo member(const std::string& name, std::uint64_t uid, Liveness l = Liveness::alive,
                  MemberStatus s = MemberStatus::up) {
  MemberInfo m;
  m.name = name;
  m.uid = uid;
  m.liveness = l;
  m.status = s;
  return m;
}

/// Lost: unreachable, or (the heartbeat rule in the tests) suspect.
bool suspect(const MemberInfo& m) { return m.liveness == Liveness::suspect; }

TEST(Side, MajorityCountsUnreachableAndWhatTheCallerSaysAsLost) {
  struct Case {
    const char* what;
    std::vector<Liveness> others;  // members b, c, d, e (self is "a", uid 1)
    bool majority;
  };
  const std::vector<Case> cases = {
      {"everyone alive", {Liveness::alive, Liveness::alive, Liveness::alive, Liveness::alive}, true},
      {"two of five lost", {Liveness::suspect, Liveness::unreachable, Liveness::alive, Liveness::alive}, true},
      {"three of five suspected", {Liveness::suspect, Liveness::suspect, Liveness::suspect, Liveness::alive}, false},
      {"alone", {Liveness::unreachable, Liveness::unreachable, Liveness::suspect, Liveness::suspect}, false},
  };
  for (const auto& c : cases) {
    std::vector<MemberInfo> ms{member("a", 1)};
    const char* names[] = {"b", "c", "d", "e"};
    for (std::size_t i = 0; i < c.others.size(); ++i) ms.push_back(member(names[i], i + 2, c.others[i]));
    EXPECT_EQ(in_majority(ms, 1, suspect), c.majority) << c.what;
  }
}

TEST(Side, ATieGoesToTheSideOfTheLowestMember) {
  // Four members, two on each side: "a" is the lowest.
  std::vector<MemberInfo> ms{member("a", 1), member("b", 2), member("c", 3, Liveness::unreachable),
                             member("d", 4, Liveness::suspect)};
  EXPECT_TRUE(in_majority(ms, 1, suspect));
  // Seen from "c": "a" and "b" are lost, and "a" is the lowest: c's side is the minority.
  std::vector<MemberInfo> from_c{member("a", 1, Liveness::unreachable), member("b", 2, Liveness::unreachable),
                                 member("c", 3), member("d", 4)};
  EXPECT_FALSE(in_majority(from_c, 3, suspect));
}

TEST(Side, JoiningExitingAndDownMembersDoNotCount) {
  std::vector<MemberInfo> ms{member("a", 1), member("b", 2, Liveness::unreachable, MemberStatus::joining),
                             member("c", 3, Liveness::unreachable, MemberStatus::down),
                             member("d", 4, Liveness::unreachable, MemberStatus::exiting), member("e", 5)};
  EXPECT_TRUE(in_majority(ms, 1, suspect));
  // Leaving members still count.
  ms[1].status = MemberStatus::leaving;
  ms.push_back(member("f", 6, Liveness::suspect, MemberStatus::leaving));
  EXPECT_TRUE(in_majority(ms, 1, suspect)) << "2 alive vs 2 lost, and the lowest (a) is alive: a tie a wins";
  ms[0].name = "z";
  EXPECT_FALSE(in_majority(ms, 1, suspect)) << "now the lowest is b, lost";
}

TEST(Side, WithNoUpMembersANodeIsNotInAMinority) {
  EXPECT_TRUE(in_majority({}, 1)) << "nothing to decide (starting, or a client)";
  EXPECT_TRUE(in_majority({member("a", 1)}, 1));
}

TEST(Side, WithoutAPredicateOnlyUnreachableMembersAreLost) {
  std::vector<MemberInfo> ms{member("a", 1), member("b", 2, Liveness::suspect), member("c", 3, Liveness::suspect)};
  EXPECT_TRUE(in_majority(ms, 1));
  ms[1].liveness = Liveness::unreachable;
  ms[2].liveness = Liveness::unreachable;
  EXPECT_FALSE(in_majority(ms, 1));
}

}  // namespace
}  // namespace troupe::sharding
