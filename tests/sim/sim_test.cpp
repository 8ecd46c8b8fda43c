// Membership scenarios in the deterministic simulator. Each test prints its seed on failure;
// TROUPE_SIM_SEED=<n> replays one.

#include <gtest/gtest.h>

#include <cstdlib>
#include <map>
#include <set>

#include "sim.hpp"

namespace troupe::sim {
namespace {

using membership::EventKind;
using membership::Liveness;
using membership::MemberStatus;

std::uint64_t seed_for(std::uint64_t fallback) {
  if (const char* s = std::getenv("TROUPE_SIM_SEED")) return std::strtoull(s, nullptr, 10);
  return fallback;
}

std::string name_of(int i) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "n%04d", i);
  return buf;
}

/// Adds `n` nodes that all join through node 0.
void form(Simulation& sim, int n, const MembershipConfig& cfg) {
  for (int i = 0; i < n; ++i) sim.add_node(name_of(i), cfg);
  for (int i = 0; i < n; ++i) sim.join(i, {0});
}

/// Node `i`'s view of the member named `name`.
std::optional<membership::MemberInfo> view(Simulation& sim, int i, int of) {
  return sim.node(i).member(name_of(of));
}

/// Every node of [0, n) sees exactly n members, all up and alive (one members() per node: cheap
/// enough for hundreds of nodes).
bool all_up(Simulation& sim, int n) {
  for (int i = 0; i < n; ++i) {
    const auto ms = sim.node(i).members();
    if (static_cast<int>(ms.size()) != n) return false;
    for (const auto& m : ms) {
      if (m.status != MemberStatus::up || m.liveness != Liveness::alive) return false;
    }
  }
  return true;
}

bool everyone_sees_all_up(Simulation& sim, const std::vector<int>& who, const std::vector<int>& of) {
  for (int i : who) {
    for (int j : of) {
      auto m = view(sim, i, j);
      if (!m || m->status != MemberStatus::up || m->liveness != Liveness::alive) return false;
    }
  }
  return true;
}

std::vector<int> range(int a, int b) {
  std::vector<int> v;
  for (int i = a; i < b; ++i) v.push_back(i);
  return v;
}

bool downed_by(Simulation& sim, int i, int of) {
  auto m = view(sim, i, of);
  return !m || m->status == MemberStatus::down || m->status == MemberStatus::removed;
}

bool downed_by_all(Simulation& sim, const std::vector<int>& who, int of) {
  for (int i : who) {
    if (!downed_by(sim, i, of)) return false;
  }
  return true;
}

int downs_seen(Simulation& sim, const std::vector<int>& who) {
  int n = 0;
  for (int i : who) {
    for (const auto& e : sim.events(i)) n += e.kind == EventKind::downed || e.kind == EventKind::self_downed;
  }
  return n;
}

/// Every node of `who` sees exactly the nodes of `who` up and alive, and all give each the same
/// non-zero up_order.
bool ages_agreed(Simulation& sim, const std::vector<int>& who) {
  std::map<std::string, std::uint64_t> first;
  for (int i : who) {
    std::map<std::string, std::uint64_t> ages;
    for (const auto& m : sim.node(i).members()) {
      if (m.status != MemberStatus::up || m.liveness != Liveness::alive) continue;
      if (m.up_order == 0) return false;
      ages[m.name] = m.up_order;
    }
    if (ages.size() != who.size()) return false;
    if (i == who.front()) {
      first = std::move(ages);
    } else if (ages != first) {
      return false;
    }
  }
  return true;
}

std::string oldest_seen_by(Simulation& sim, int i) {
  auto o = membership::oldest_up(sim.node(i).members());
  return o ? o->name : "";
}

struct Sim : ::testing::Test {
  void SetUp() override {
    seed = seed_for(std::hash<std::string>()(::testing::UnitTest::GetInstance()->current_test_info()->name()));
    sim = std::make_unique<Simulation>(seed);
  }
  void TearDown() override {
    if (HasFailure()) std::printf("replay with TROUPE_SIM_SEED=%llu\n", static_cast<unsigned long long>(seed));
  }
  std::uint64_t seed = 0;
  std::unique_ptr<Simulation> sim;
  MembershipConfig cfg = MembershipConfig::lan();
};

TEST_F(Sim, FiftyNodesJoinAndEveryoneSeesEveryoneUp) {
  form(*sim, 50, cfg);
  ASSERT_TRUE(sim->run_until([&] { return everyone_sees_all_up(*sim, range(0, 50), range(0, 50)); }, 60s))
      << "not converged at t=" << sim->now().count() / 1e9 << " s";
  // One leader, the same everywhere, and the same digest.
  for (int i = 0; i < 50; ++i) {
    ASSERT_TRUE(sim->node(i).leader());
    EXPECT_EQ(sim->node(i).leader()->name, name_of(0));
  }
  sim->run_for(2s);
  for (int i = 1; i < 50; ++i) EXPECT_EQ(sim->node(i).digest(), sim->node(0).digest());
}

TEST_F(Sim, AClusterAssumedFormedBehavesAsOneThatFormedByJoins) {
  // The benchmark's 10,000-node clusters start this way: every node with the same converged view.
  const int n = 300;
  for (int i = 0; i < n; ++i) sim->add_node(name_of(i), cfg);
  sim->assume_formed(0, n);
  EXPECT_TRUE(all_up(*sim, n));
  EXPECT_TRUE(ages_agreed(*sim, range(0, n)));
  sim->run_for(3s);
  for (int i = 0; i < n; ++i) {
    ASSERT_TRUE(sim->node(i).leader()) << name_of(i);
    EXPECT_EQ(sim->node(i).leader()->name, name_of(0));
    EXPECT_EQ(sim->node(i).digest(), sim->node(0).digest());
    EXPECT_EQ(sim->node(i).stats().suspicions, 0u) << name_of(i) << ": a quiet, lossless cluster";
    EXPECT_FALSE(sim->node(i).joining());
  }
  // A joiner becomes up everywhere (the leader sees the convergence it asks for)...
  const int j = sim->add_node(name_of(n), cfg);
  sim->join(j, {0});
  ASSERT_TRUE(sim->run_until([&] { return all_up(*sim, n + 1); }, 60s));
  EXPECT_TRUE(ages_agreed(*sim, range(0, n + 1)));
  EXPECT_EQ(sim->node(j).self().up_order, std::uint64_t(n + 1)) << "the next age after the assumed ones";
  // ... and a killed member is downed by every live one.
  sim->kill(7);
  std::vector<int> live = range(0, n + 1);
  live.erase(live.begin() + 7);
  ASSERT_TRUE(sim->run_until([&] { return downed_by_all(*sim, live, 7); }, 60s));
  for (int i : live) EXPECT_FALSE(sim->node(i).stopped()) << name_of(i);
}

TEST_F(Sim, AKilledNodeIsDownedByEveryLiveNode) {
  form(*sim, 20, cfg);
  ASSERT_TRUE(sim->run_until([&] { return everyone_sees_all_up(*sim, range(0, 20), range(0, 20)); }, 60s));
  const auto killed_at = sim->now();
  sim->kill(7);
  std::vector<int> live = range(0, 20);
  live.erase(live.begin() + 7);
  ASSERT_TRUE(sim->run_until([&] { return downed_by_all(*sim, live, 7); }, 60s));
  const auto took = sim->now() - killed_at;
  EXPECT_LT(took, nanoseconds(cfg.stable_after) + 10s) << "detection + downing took " << took.count() / 1e9 << " s";
  for (int i : live) EXPECT_FALSE(sim->node(i).stopped()) << name_of(i);
  // Every survivor can explain it.
  EXPECT_FALSE(sim->node(live.front()).history(name_of(7)).empty());
  // The detection and downing histograms of the metrics saw it: every survivor that suspected
  // it itself timed the suspicion (bounded by the kill), and every survivor timed the downing.
  std::uint64_t detections = 0;
  for (int i : live) {
    const auto s = sim->node(i).stats();
    detections += s.detection.count;
    EXPECT_LE(s.detection.sum, std::chrono::duration<double>(took).count() * double(s.detection.count)) << name_of(i);
    EXPECT_LE(s.downing.count, 1u) << name_of(i);
    EXPECT_LE(s.downing.sum, std::chrono::duration<double>(took).count()) << name_of(i);
  }
  EXPECT_GE(detections, 1u);
  EXPECT_EQ(sim->node(0).stats().downing.count, 1u) << "the leader downed it after suspecting it";
}

TEST_F(Sim, ACrashedProcessWhosePortRefusesIsDownedWellUnderStableAfter) {
  form(*sim, 20, cfg);
  ASSERT_TRUE(sim->run_until([&] { return everyone_sees_all_up(*sim, range(0, 20), range(0, 20)); }, 60s));
  const auto crashed_at = sim->now();
  sim->crash(7);
  std::vector<int> live = range(0, 20);
  live.erase(live.begin() + 7);
  ASSERT_TRUE(sim->run_until([&] { return downed_by_all(*sim, live, 7); }, 60s));
  const auto took = sim->now() - crashed_at;
  RecordProperty("took_ms", std::to_string(took.count() / 1'000'000));
  EXPECT_LT(took, nanoseconds(cfg.stable_after) / 2) << "detection + downing took " << took.count() / 1e9 << " s";
  for (int i : live) EXPECT_FALSE(sim->node(i).stopped()) << name_of(i);
  bool why = false;
  for (const auto& d : sim->node(0).history(name_of(7))) why |= d.what.starts_with("downed: its gossip port refuses");
  EXPECT_TRUE(why) << "the leader says why it did not wait";
}

TEST_F(Sim, NodesBehindOneDnsNameThatStartTogetherFormOneCluster) {
  // Replicas started at once behind one name: at first each resolves the name to itself only;
  // resolved again a second later, the name lists all of them (in address order, the same for
  // everyone). Seeds from a name wait form_after even when they list only this node, so the
  // replicas meet before anyone forms, and only the first address forms.
  for (int i = 0; i < 3; ++i) sim->add_node(name_of(i), cfg);
  for (int i = 0; i < 3; ++i) {
    sim->node(i).join({sim->endpoint(i)}, /*wait_to_form=*/true);
    sim->wake(i);
  }
  sim->run_for(1s);
  for (int i = 0; i < 3; ++i) {
    EXPECT_TRUE(sim->node(i).joining()) << name_of(i) << " formed alone";
    sim->node(i).update_seeds({sim->endpoint(0), sim->endpoint(1), sim->endpoint(2)});
    sim->wake(i);
  }
  ASSERT_TRUE(sim->run_until([&] { return everyone_sees_all_up(*sim, range(0, 3), range(0, 3)); }, 30s));
  for (int i = 0; i < 3; ++i) {
    int formed = 0;
    for (const auto& e : sim->events(i)) formed += e.kind == membership::EventKind::up && e.detail == "formed the cluster";
    EXPECT_EQ(formed, i == 0 ? 1 : 0) << name_of(i);
    EXPECT_FALSE(sim->node(i).joining()) << name_of(i);
  }
}

TEST_F(Sim, APauseShorterThanToleranceDownsNobody) {
  form(*sim, 20, cfg);
  ASSERT_TRUE(sim->run_until([&] { return everyone_sees_all_up(*sim, range(0, 20), range(0, 20)); }, 60s));
  const int before = downs_seen(*sim, range(0, 20));
  sim->pause(5);
  sim->run_for(3s);  // suspicion may even conclude, but downing waits stable_after (5 s)
  sim->resume(5);
  sim->run_for(30s);
  EXPECT_EQ(downs_seen(*sim, range(0, 20)), before);
  EXPECT_FALSE(sim->node(5).stopped());
  EXPECT_TRUE(everyone_sees_all_up(*sim, range(0, 20), range(0, 20)));
}

TEST_F(Sim, APartitionLeavesOnlyTheMajorityRunning) {
  form(*sim, 15, cfg);
  ASSERT_TRUE(sim->run_until([&] { return everyone_sees_all_up(*sim, range(0, 15), range(0, 15)); }, 60s));
  const auto major = range(0, 10), minor = range(10, 15);
  sim->partition({major, minor});
  ASSERT_TRUE(sim->run_until(
      [&] {
        for (int i : minor) {
          if (!sim->node(i).stopped()) return false;
        }
        for (int i : major) {
          for (int j : minor) {
            if (!downed_by(*sim, i, j)) return false;
          }
        }
        return true;
      },
      60s));
  for (int i : major) EXPECT_FALSE(sim->node(i).stopped()) << name_of(i);
  for (int i : minor) {
    EXPECT_EQ(sim->node(i).self().status, MemberStatus::down);
    bool self_downed = false;
    for (const auto& e : sim->events(i)) self_downed |= e.kind == EventKind::self_downed;
    EXPECT_TRUE(self_downed) << name_of(i);
  }
}

TEST_F(Sim, AHealedPartitionReconverges) {
  form(*sim, 12, cfg);
  ASSERT_TRUE(sim->run_until([&] { return everyone_sees_all_up(*sim, range(0, 12), range(0, 12)); }, 60s));
  sim->partition({range(0, 8), range(8, 12)});
  sim->run_for(3500ms);  // long enough to become unreachable, shorter than stable_after
  sim->heal();
  ASSERT_TRUE(sim->run_until([&] { return everyone_sees_all_up(*sim, range(0, 12), range(0, 12)); }, 30s));
  EXPECT_EQ(downs_seen(*sim, range(0, 12)), 0);
}

TEST_F(Sim, OnePercentLossNoFalseDownsAndJoinsConverge) {
  sim->set_link(LinkSpec{0.01, 1ms, 1ms, 0.01});
  form(*sim, 30, cfg);
  ASSERT_TRUE(sim->run_until([&] { return everyone_sees_all_up(*sim, range(0, 30), range(0, 30)); }, 60s));
  sim->run_for(120s);
  EXPECT_EQ(downs_seen(*sim, range(0, 30)), 0);
}

TEST_F(Sim, TenPercentLossNoFalseDownsAndJoinsConverge) {
  sim->set_link(LinkSpec{0.10, 1ms, 2ms, 0.02});
  form(*sim, 30, cfg);
  ASSERT_TRUE(sim->run_until([&] { return everyone_sees_all_up(*sim, range(0, 30), range(0, 30)); }, 120s));
  sim->run_for(120s);
  EXPECT_EQ(downs_seen(*sim, range(0, 30)), 0);
}

TEST_F(Sim, OneBadLinkDoesNotDownAnybody) {
  form(*sim, 10, cfg);
  ASSERT_TRUE(sim->run_until([&] { return everyone_sees_all_up(*sim, range(0, 10), range(0, 10)); }, 60s));
  // Node 2 hears almost nothing from node 7 (and slowly): indirect probes through the others
  // keep node 7 alive in node 2's view.
  sim->set_link(7, 2, LinkSpec{0.9, 20ms, 10ms, 0});
  sim->run_for(120s);
  EXPECT_EQ(downs_seen(*sim, range(0, 10)), 0);
  EXPECT_TRUE(everyone_sees_all_up(*sim, range(0, 10), range(0, 10)));
}

TEST_F(Sim, AGracefulLeaveEndsRemovedEverywhere) {
  form(*sim, 10, cfg);
  ASSERT_TRUE(sim->run_until([&] { return everyone_sees_all_up(*sim, range(0, 10), range(0, 10)); }, 60s));
  sim->node(4).leave();
  ASSERT_TRUE(sim->run_until(
      [&] {
        for (int i = 0; i < 10; ++i) {
          if (i != 4 && view(*sim, i, 4)) return false;
        }
        return sim->node(4).stopped();
      },
      60s));
  EXPECT_EQ(downs_seen(*sim, range(0, 10)), 0);
  bool removed = false;
  for (const auto& e : sim->events(4)) removed |= e.kind == EventKind::self_removed;
  EXPECT_TRUE(removed);
}

TEST_F(Sim, AfterARemovalLaterJoinsAndLeavesStillComplete) {
  form(*sim, 5, cfg);
  ASSERT_TRUE(sim->run_until([&] { return everyone_sees_all_up(*sim, range(0, 5), range(0, 5)); }, 60s));
  sim->node(4).leave();
  ASSERT_TRUE(sim->run_until([&] { return sim->node(4).stopped() && !view(*sim, 0, 4); }, 60s));
  // A newcomer never knew n0004: it must still converge with the others and come up.
  const int late = sim->add_node(name_of(5), cfg);
  sim->join(late, {0});
  ASSERT_TRUE(sim->run_until([&] { return everyone_sees_all_up(*sim, {0, 1, 2, 3, 5}, {0, 1, 2, 3, 5}); }, 60s));
  EXPECT_EQ(sim->node(late).digest(), sim->node(0).digest());
  sim->node(3).leave();
  ASSERT_TRUE(sim->run_until([&] { return sim->node(3).stopped(); }, 60s)) << "a later leave completes";
}

TEST_F(Sim, ALoneNodeLeavesWithoutALeader) {
  sim->add_node(name_of(0), cfg);
  sim->join(0, {0});
  ASSERT_TRUE(sim->run_until([&] { return sim->node(0).self().status == MemberStatus::up; }, 10s));
  sim->node(0).leave();
  ASSERT_TRUE(sim->run_until([&] { return sim->node(0).stopped(); }, 5s));
}

TEST_F(Sim, ARestartedNodeRejoinsAsANewIncarnation) {
  form(*sim, 8, cfg);
  ASSERT_TRUE(sim->run_until([&] { return everyone_sees_all_up(*sim, range(0, 8), range(0, 8)); }, 60s));
  const auto old_uid = sim->node(3).self().uid;
  sim->kill(3);
  const int again = sim->add_node(name_of(3), cfg);  // same name, new uid and address
  sim->join(again, {0});
  ASSERT_TRUE(sim->run_until(
      [&] {
        for (int i : {0, 1, 2, 4, 5, 6, 7}) {
          auto m = view(*sim, i, 3);
          if (!m || m->uid == old_uid || m->status != MemberStatus::up) return false;
        }
        return true;
      },
      60s));
  EXPECT_NE(sim->node(again).self().uid, old_uid);
}

TEST_F(Sim, SkewedClocksCauseNoFalseDowns) {
  for (int i = 0; i < 12; ++i) sim->add_node(name_of(i), cfg, i % 3 == 0 ? 1.05 : (i % 3 == 1 ? 0.95 : 1.0));
  for (int i = 0; i < 12; ++i) sim->join(i, {0});
  ASSERT_TRUE(sim->run_until([&] { return everyone_sees_all_up(*sim, range(0, 12), range(0, 12)); }, 60s));
  sim->run_for(60s);
  EXPECT_EQ(downs_seen(*sim, range(0, 12)), 0);
}

TEST_F(Sim, AFlappingMemberIsDegradedThenRecoversWithoutBeingDowned) {
  form(*sim, 8, cfg);
  ASSERT_TRUE(sim->run_until([&] { return everyone_sees_all_up(*sim, range(0, 8), range(0, 8)); }, 60s));
  auto rest = range(0, 8);
  rest.erase(rest.begin() + 6);
  for (int round = 0; round < 5; ++round) {
    sim->partition({rest, {6}});
    // Long enough to be found unreachable, shorter than stable_after: never downed.
    ASSERT_TRUE(sim->run_until([&] { return view(*sim, 0, 6)->liveness == Liveness::unreachable; }, 10s));
    sim->heal();
    // Everyone, node 6 included, sees everyone alive again before the next flap.
    ASSERT_TRUE(sim->run_until(
        [&] {
          for (int i = 0; i < 8; ++i) {
            for (int j = 0; j < 8; ++j) {
              if (view(*sim, i, j)->liveness != Liveness::alive) return false;
            }
          }
          return true;
        },
        10s));
  }
  EXPECT_TRUE(view(*sim, 0, 6)->degraded);
  bool degraded = false;
  for (const auto& e : sim->events(0)) degraded |= e.kind == EventKind::degraded && e.member.name == name_of(6);
  EXPECT_TRUE(degraded);
  EXPECT_EQ(downs_seen(*sim, range(0, 8)), 0);
  ASSERT_TRUE(sim->run_until([&] { return !view(*sim, 0, 6)->degraded; }, nanoseconds(cfg.degraded_for) + 10s));
  bool recovered = false;
  for (const auto& e : sim->events(0)) recovered |= e.kind == EventKind::recovered && e.member.name == name_of(6);
  EXPECT_TRUE(recovered);
  // The history explains it.
  bool explained = false;
  for (const auto& d : sim->node(0).history(name_of(6))) explained |= d.what.starts_with("degraded:");
  EXPECT_TRUE(explained);
}

TEST_F(Sim, ADowningDecisionRecordsTheSidesCounted) {
  form(*sim, 5, cfg);
  ASSERT_TRUE(sim->run_until([&] { return everyone_sees_all_up(*sim, range(0, 5), range(0, 5)); }, 60s));
  sim->kill(4);
  ASSERT_TRUE(sim->run_until([&] { return downed_by(*sim, 0, 4); }, 60s));
  bool sides = false, unreachable = false;
  for (const auto& d : sim->node(0).history(name_of(4))) {
    sides |= d.what.find("4 reachable vs 1 unreachable") != std::string::npos;
    unreachable |= d.what.starts_with("unreachable:");
  }
  EXPECT_TRUE(sides);
  EXPECT_TRUE(unreachable);
}

TEST_F(Sim, OperatorDownAndLeaveOfAnotherMember) {
  form(*sim, 6, cfg);
  ASSERT_TRUE(sim->run_until([&] { return everyone_sees_all_up(*sim, range(0, 6), range(0, 6)); }, 60s));
  ASSERT_TRUE(sim->node(0).down(name_of(5)));
  ASSERT_TRUE(sim->node(1).leave(name_of(4)));
  EXPECT_FALSE(sim->node(0).down("nobody"));
  ASSERT_TRUE(sim->run_until([&] { return sim->node(5).stopped() && sim->node(4).stopped(); }, 60s));
  EXPECT_GE(sim->node(5).self().status, MemberStatus::down);
}

TEST_F(Sim, TheFounderIsTheOldestAndEveryNodeAgreesOnTheAges) {
  form(*sim, 12, cfg);
  auto live = range(0, 12);
  ASSERT_TRUE(sim->run_until([&] { return ages_agreed(*sim, live); }, 60s));
  EXPECT_EQ(view(*sim, 5, 0)->up_order, 1u);
  std::set<std::uint64_t> ages;
  for (const auto& m : sim->node(0).members()) ages.insert(m.up_order);
  EXPECT_EQ(ages.size(), 12u) << "distinct";
  EXPECT_EQ(*ages.rbegin(), 12u) << "no gaps: numbered one after the other";
  for (int i : live) EXPECT_EQ(oldest_seen_by(*sim, i), name_of(0));

  // Newcomers with names below every other (and so, once up, the leaders that number the next
  // ones) are younger than everyone; the oldest stays the oldest.
  std::uint64_t youngest = 12;
  for (const char* name : {"a-late", "a-0"}) {
    const int late = sim->add_node(name, cfg);
    sim->join(late, {3});
    live.push_back(late);
    ASSERT_TRUE(sim->run_until([&] { return ages_agreed(*sim, live); }, 60s)) << name;
    EXPECT_EQ(sim->node(late).self().up_order, youngest + 1) << name;
    youngest = sim->node(late).self().up_order;
    for (int i : live) EXPECT_EQ(oldest_seen_by(*sim, i), name_of(0)) << name_of(i);
  }
  // The leader (lowest name) is another member: the oldest is not the leader.
  EXPECT_TRUE(sim->run_until([&] { return sim->node(0).leader() && sim->node(0).leader()->name == "a-0"; }, 5s));

  // The oldest is downed: the next oldest (up_order 2) takes over everywhere.
  std::string next;
  for (const auto& m : sim->node(4).members()) {
    if (m.up_order == 2) next = m.name;
  }
  ASSERT_FALSE(next.empty());
  ASSERT_TRUE(sim->node(4).down(name_of(0)));
  sim->wake(4);
  live.erase(live.begin());
  ASSERT_TRUE(sim->run_until(
      [&] {
        for (int i : live) {
          if (oldest_seen_by(*sim, i) != next) return false;
        }
        return ages_agreed(*sim, live);
      },
      60s));
  ASSERT_TRUE(sim->run_until([&] { return sim->node(0).stopped(); }, 30s));
}

TEST_F(Sim, JoinsInWavesUnderLossGetIncreasingAgesEveryoneAgreesOn) {
  sim->set_link(LinkSpec{0.05, 1ms, 2ms, 0.02});
  std::vector<int> live;
  std::uint64_t previous_wave_max = 0;
  for (int wave = 0; wave < 3; ++wave) {
    const auto members = range(wave * 8, wave * 8 + 8);
    for (int i : members) sim->add_node(name_of(i), cfg);
    for (int i : members) sim->join(i, {0});
    live.insert(live.end(), members.begin(), members.end());
    ASSERT_TRUE(sim->run_until([&] { return ages_agreed(*sim, live); }, 120s)) << "wave " << wave;
    std::uint64_t lo = UINT64_MAX, hi = 0;
    for (int i : members) {
      lo = std::min(lo, sim->node(i).self().up_order);
      hi = std::max(hi, sim->node(i).self().up_order);
    }
    EXPECT_GT(lo, previous_wave_max) << "wave " << wave << " is younger than the ones before";
    previous_wave_max = hi;
  }
  std::set<std::uint64_t> ages;
  for (const auto& m : sim->node(17).members()) ages.insert(m.up_order);
  EXPECT_EQ(ages.size(), live.size()) << "distinct";
  for (int i : live) EXPECT_EQ(oldest_seen_by(*sim, i), name_of(0));
}

}  // namespace
}  // namespace troupe::sim
