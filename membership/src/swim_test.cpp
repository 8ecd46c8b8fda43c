// SwimProtocol on its own, with a manual clock and a transport that records what it sends:
// hostile and odd input is dropped, counted and changes nothing.

#include <troupe/membership/swim.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <optional>
#include <random>
#include <set>
#include <stdexcept>
#include <string_view>

#include <flatbuffers/flatbuffers.h>
#include <spdlog/sinks/null_sink.h>
#include <spdlog/spdlog.h>

#include <troupe/serialization/gossip_generated.h>

namespace troupe::membership {
namespace {

using namespace std::chrono_literals;
namespace fb = flatbuffers;

struct ManualClock final : Clock {
  std::chrono::nanoseconds t{1s};
  std::chrono::nanoseconds now() const override { return t; }
};

struct Recorder final : PacketTransport {
  struct Sent {
    UdpEndpoint to;
    std::vector<std::uint8_t> bytes;
  };
  void send(const UdpEndpoint& to, std::span<const std::uint8_t> p) override { sent.push_back({to, {p.begin(), p.end()}}); }
  std::size_t max_payload() const override { return 1300; }
  std::vector<Sent> sent;
};

std::shared_ptr<spdlog::logger> quiet() {
  return std::make_shared<spdlog::logger>("test", std::make_shared<spdlog::sinks::null_sink_mt>());
}

/// Finishes `b` as a packet from `from_uid` whose updates are the one record `m`.
std::vector<std::uint8_t> packet_of(fb::FlatBufferBuilder& b, fb::Offset<gossip::Member> m, std::uint16_t version = 1,
                                    std::uint64_t from_uid = 77) {
  std::vector<fb::Offset<gossip::Member>> ms{m};
  auto v = b.CreateVector(ms);
  auto from = b.CreateString("sender");
  gossip::PacketBuilder pb(b);
  pb.add_protocol_version(version);
  pb.add_from_uid(from_uid);
  pb.add_from_name(from);
  pb.add_updates(v);
  b.Finish(pb.Finish());
  return {b.GetBufferPointer(), b.GetBufferPointer() + b.GetSize()};
}

/// A packet from member `name`/`uid` carrying one member record.
std::vector<std::uint8_t> gossip_about(const std::string& name, std::uint64_t uid, const std::string& host,
                                       std::uint16_t port, std::uint64_t incarnation,
                                       gossip::MemberStatus status = gossip::MemberStatus::Up,
                                       gossip::Liveness live = gossip::Liveness::Alive, std::uint16_t version = 1,
                                       std::uint64_t from_uid = 77, std::uint64_t up_order = 0) {
  fb::FlatBufferBuilder b;
  auto m = gossip::CreateMemberDirect(b, name.c_str(), uid, host.c_str(), port, "", "", incarnation, status, live, 0,
                                      up_order);
  return packet_of(b, m, version, from_uid);
}

/// Gossip about one up member with `roles`.
std::vector<std::uint8_t> gossip_with_roles(const std::string& name, std::uint64_t uid, std::uint16_t port,
                                            const std::vector<std::string>& roles) {
  fb::FlatBufferBuilder b;
  std::vector<fb::Offset<fb::String>> rs;
  for (const auto& r : roles) rs.push_back(b.CreateString(r));
  auto m = gossip::CreateMemberDirect(b, name.c_str(), uid, "127.0.0.1", port, "", "", 0, gossip::MemberStatus::Up,
                                      gossip::Liveness::Alive, 0, 0, &rs);
  return packet_of(b, m);
}

/// A packet from `from_uid` that says only what its view digest is (what the leader waits for).
std::vector<std::uint8_t> digest_from(std::uint64_t from_uid, std::uint64_t digest) {
  fb::FlatBufferBuilder b;
  auto from = b.CreateString("sender");
  gossip::PacketBuilder pb(b);
  pb.add_protocol_version(1);
  pb.add_from_uid(from_uid);
  pb.add_from_name(from);
  pb.add_digest(digest);
  b.Finish(pb.Finish());
  return {b.GetBufferPointer(), b.GetBufferPointer() + b.GetSize()};
}

/// The up_order of member `uid` in the updates of the packets sent, if one carried it.
std::optional<std::uint64_t> sent_up_order(const std::vector<std::vector<std::uint8_t>>& packets, std::uint64_t uid) {
  for (const auto& bytes : packets) {
    const auto* p = gossip::GetPacket(bytes.data());
    if (!p->updates()) continue;
    for (const auto* m : *p->updates()) {
      if (m->uid() == uid) return m->up_order();
    }
  }
  return std::nullopt;
}

struct Swim : ::testing::Test {
  Swim() {
    SwimProtocol::Identity id{"me", 1, UdpEndpoint{"127.0.0.1", 7000}, "", "", {}};
    proto = std::make_unique<SwimProtocol>(MembershipConfig::lan(), id, clock, out, 1, quiet());
    proto->subscribe([this](const MembershipEvent& e) { events.push_back(e); });
    proto->join({});
    proto->poll();  // forms a cluster of one
  }
  ManualClock clock;
  Recorder out;
  std::unique_ptr<SwimProtocol> proto;
  std::vector<MembershipEvent> events;
  const UdpEndpoint peer{"127.0.0.1", 7001};
};

TEST_F(Swim, ASingleNodeFormsAClusterAndLeadsIt) {
  EXPECT_EQ(proto->self().status, MemberStatus::up);
  EXPECT_EQ(proto->self().up_order, 1u) << "the member that formed the cluster is the oldest";
  clock.t += 1s;
  proto->poll();
  ASSERT_TRUE(proto->leader());
  EXPECT_EQ(proto->leader()->name, "me");
}

TEST_F(Swim, MalformedTruncatedAndRandomPacketsAreDroppedAndCounted) {
  const auto digest = proto->digest();
  auto good = gossip_about("n2", 2, "127.0.0.1", 7002, 0);
  std::vector<std::uint8_t> truncated(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(good.size() / 2));
  proto->on_packet(peer, truncated);
  proto->on_packet(peer, {});
  std::mt19937 rng(7);
  for (int i = 0; i < 200; ++i) {
    std::vector<std::uint8_t> junk(1 + rng() % 400);
    for (auto& x : junk) x = static_cast<std::uint8_t>(rng());
    proto->on_packet(peer, junk);
  }
  EXPECT_GE(proto->stats().malformed, 200u);
  EXPECT_EQ(proto->digest(), digest);
  EXPECT_EQ(proto->members().size(), 1u);
}

TEST_F(Swim, ABodyTypeWithoutItsBodyIsMalformed) {
  // Found by gossip_fuzz: a union type whose value is absent passes the FlatBuffers verifier.
  for (auto type : {gossip::Body::Ping, gossip::Body::Ack, gossip::Body::PingReq, gossip::Body::Nack,
                    gossip::Body::PushPull, gossip::Body::Refused, gossip::Body::KeyOp, gossip::Body::KeyOpReply}) {
    fb::FlatBufferBuilder b;
    auto from = b.CreateString("x");
    gossip::PacketBuilder pb(b);
    pb.add_protocol_version(1);
    pb.add_from_uid(3);
    pb.add_from_name(from);
    pb.add_body_type(type);
    b.Finish(pb.Finish());
    proto->on_packet(peer, {b.GetBufferPointer(), b.GetSize()});
  }
  EXPECT_EQ(proto->stats().malformed, 8u);
}

TEST_F(Swim, RecordsWithMalformedAddressesOrNamesAreRejected) {
  proto->on_packet(peer, gossip_about("n2", 2, "bad host", 7002, 0));
  proto->on_packet(peer, gossip_about("n3", 3, "127.0.0.1", 0, 0));
  proto->on_packet(peer, gossip_about("", 4, "127.0.0.1", 7004, 0));
  proto->on_packet(peer, gossip_about("n5", 0, "127.0.0.1", 7005, 0));
  EXPECT_EQ(proto->stats().rejected_records, 4u);
  EXPECT_EQ(proto->members().size(), 1u);
}

TEST_F(Swim, RolesTravelWithTheRecordAndBadOnesAreRejected) {
  proto->on_packet(peer, gossip_with_roles("n2", 2, 7002, {"worker", "eu-west"}));
  auto m = proto->member("n2");
  ASSERT_TRUE(m);
  EXPECT_EQ(m->roles, (std::vector<std::string>{"worker", "eu-west"}));
  // Passed on as learned.
  out.sent.clear();
  for (int i = 0; i < 10 && out.sent.empty(); ++i) {
    clock.t += 200ms;
    proto->poll();
  }
  bool passed_on = false;
  for (const auto& s : out.sent) {
    const auto* p = gossip::GetPacket(s.bytes.data());
    if (!p->updates()) continue;
    for (const auto* u : *p->updates()) {
      if (u->uid() == 2 && u->roles() && u->roles()->size() == 2 && u->roles()->Get(1)->str() == "eu-west") passed_on = true;
    }
  }
  EXPECT_TRUE(passed_on);

  const auto rejected = proto->stats().rejected_records;
  proto->on_packet(peer, gossip_with_roles("n3", 3, 7003, std::vector<std::string>(kMaxRoles + 1, "r")));
  proto->on_packet(peer, gossip_with_roles("n4", 4, 7004, {"has space"}));
  proto->on_packet(peer, gossip_with_roles("n5", 5, 7005, {""}));
  proto->on_packet(peer, gossip_with_roles("n6", 6, 7006, {std::string(65, 'r')}));
  EXPECT_EQ(proto->stats().rejected_records, rejected + 4);
  EXPECT_EQ(proto->members().size(), 2u) << "me and n2 only";

  EXPECT_EQ(validate_roles({"worker", std::string(64, 'r')}), "");
  EXPECT_NE(validate_roles({"tab\there"}).find("roles:"), std::string::npos);
  EXPECT_NE(validate_roles(std::vector<std::string>(kMaxRoles + 1, "r")).find("at most"), std::string::npos);
}

TEST_F(Swim, AnImpossibleIncarnationJumpIsRejected) {
  proto->on_packet(peer, gossip_about("n2", 2, "127.0.0.1", 7002, 5));
  ASSERT_TRUE(proto->member("n2"));
  proto->on_packet(peer, gossip_about("n2", 2, "127.0.0.1", 7002, 5 + (1ull << 40), gossip::MemberStatus::Up,
                                      gossip::Liveness::Suspect));
  EXPECT_EQ(proto->stats().rejected_records, 1u);
  EXPECT_EQ(proto->member("n2")->incarnation, 5u);
  EXPECT_EQ(proto->member("n2")->liveness, Liveness::alive);
}

// A subscriber that throws runs in the middle of a state change: the change completes and the
// subscribers after it still hear of it.
TEST_F(Swim, ASubscriberThatThrowsNeitherStopsTheChangeNorTheOtherSubscribers) {
  proto->subscribe([](const MembershipEvent&) { throw std::runtime_error("a subscriber's bug"); });
  std::vector<MembershipEvent> later;
  proto->subscribe([&](const MembershipEvent& e) { later.push_back(e); });
  proto->on_packet(peer, gossip_about("n2", 2, "127.0.0.1", 7002, 0));
  ASSERT_TRUE(proto->member("n2"));
  EXPECT_EQ(proto->member("n2")->status, MemberStatus::up) << "the change went through";
  ASSERT_EQ(later.size(), 2u);
  EXPECT_EQ(later[0].kind, EventKind::joined);
  EXPECT_EQ(later[1].kind, EventKind::up);
  EXPECT_EQ(proto->stats().subscriber_failures, 2u);
}

// The last member leaves: the cluster has no leader any more, and the event that says so names
// nobody. A subscriber that throws on it is caught like any other (its log line took the
// nameless member's name from a null identity: a crash).
TEST_F(Swim, ASubscriberThatThrowsOnTheEventThatNamesNoLeaderIsCaught) {
  proto->subscribe([](const MembershipEvent&) { throw std::runtime_error("a subscriber's bug"); });
  ASSERT_TRUE(proto->leader());
  const auto failures = proto->stats().subscriber_failures;
  proto->leave();
  for (int i = 0; i < 10; ++i) {
    clock.t += 1s;
    proto->poll();
  }
  EXPECT_FALSE(proto->leader());
  EXPECT_TRUE(std::any_of(events.begin(), events.end(), [](const MembershipEvent& e) {
    return e.kind == EventKind::leader_changed && e.member.name.empty();
  })) << "no event said the cluster has no leader";
  EXPECT_GT(proto->stats().subscriber_failures, failures);
}

// A member record too large for any datagram (its roles; a member with a larger MTU can send
// it) is not gossiped, and it does not hold back the records queued behind it.
TEST_F(Swim, ARecordTooLargeForADatagramHoldsNoOtherBack) {
  proto->on_packet(peer, gossip_with_roles("n2", 2, 7002, std::vector<std::string>(kMaxRoles, std::string(64, 'r'))));
  ASSERT_TRUE(proto->member("n2"));
  proto->on_packet(peer, gossip_about("n3", 3, "127.0.0.1", 7003, 0));
  ASSERT_TRUE(proto->member("n3"));
  out.sent.clear();
  for (int i = 0; i < 5; ++i) {
    clock.t += 1s;
    proto->poll();
  }
  std::set<std::uint64_t> gossiped;
  for (const auto& s : out.sent) {
    const auto* p = gossip::GetPacket(s.bytes.data());
    if (!p->updates()) continue;
    for (const auto* m : *p->updates()) gossiped.insert(m->uid());
  }
  ASSERT_FALSE(out.sent.empty());
  EXPECT_TRUE(gossiped.count(3)) << "the record behind the large one never went out";
  EXPECT_FALSE(gossiped.count(2));
  EXPECT_GT(proto->stats().records_too_large, 0u);
}

// Large records that each fit a packet of their own, behind bodies that leave no room for them
// (an indirect probe carries its target's record): they wait for the next packet, and are not
// taken for records no datagram can carry.
TEST_F(Swim, LargeRecordsThatFitAPacketOfTheirOwnAreGossipedNotDropped) {
  const std::vector<std::string> roles(12, std::string(64, 'r'));
  for (std::uint64_t uid = 2; uid <= 4; ++uid) {
    proto->on_packet(peer, gossip_with_roles("n" + std::to_string(uid), uid, static_cast<std::uint16_t>(7000 + uid), roles));
  }
  out.sent.clear();
  for (int i = 0; i < 100; ++i) {  // no acks: probes fail, indirect probes go out
    clock.t += 100ms;
    proto->poll();
  }
  std::set<std::uint64_t> gossiped;
  bool indirect = false;
  for (const auto& s : out.sent) {
    const auto* p = gossip::GetPacket(s.bytes.data());
    indirect |= p->body_type() == gossip::Body::PingReq;
    if (!p->updates()) continue;
    for (const auto* m : *p->updates()) gossiped.insert(m->uid());
  }
  EXPECT_TRUE(indirect) << "no indirect probe: this test proves nothing";
  EXPECT_EQ(proto->stats().records_too_large, 0u);
  EXPECT_TRUE(gossiped.count(2) && gossiped.count(3) && gossiped.count(4));
}

// A member's record expires some time after its removal. A process paused past that (SIGSTOP,
// a frozen VM) comes back gossiping its old `up` record: it must not be admitted again, and it
// must learn that it is down, since nobody holds its record any more to tell it.
TEST_F(Swim, AMemberRemovedLongAgoIsNotAdmittedAgainAndIsToldItIsDown) {
  const UdpEndpoint n2_at{"127.0.0.1", 7002};
  proto->on_packet(n2_at, gossip_about("n2", 2, "127.0.0.1", 7002, 3, gossip::MemberStatus::Up, gossip::Liveness::Alive, 1, 2));
  ASSERT_TRUE(proto->member("n2"));
  proto->on_packet(peer, gossip_about("n2", 2, "127.0.0.1", 7002, 3, gossip::MemberStatus::Removed));
  ASSERT_EQ(events.back().kind, EventKind::removed);
  clock.t += 5 * std::chrono::nanoseconds(MembershipConfig::lan().push_pull_interval);
  proto->poll();  // its record expires
  // It speaks again, with its own record as it was before the pause.
  out.sent.clear();
  const auto joined_before = std::count_if(events.begin(), events.end(), [](const auto& e) { return e.kind == EventKind::joined; });
  proto->on_packet(n2_at, gossip_about("n2", 2, "127.0.0.1", 7002, 3, gossip::MemberStatus::Up, gossip::Liveness::Alive, 1, 2));
  EXPECT_FALSE(proto->member("n2")) << "admitted again";
  EXPECT_EQ(std::count_if(events.begin(), events.end(), [](const auto& e) { return e.kind == EventKind::joined; }), joined_before);
  EXPECT_EQ(proto->stats().forgotten_records, 1u);
  EXPECT_EQ(proto->stats().forgotten_told, 1u);
  bool told = false;
  for (const auto& s : out.sent) {
    const auto* p = gossip::GetPacket(s.bytes.data());
    if (!(s.to == n2_at) || !p->updates()) continue;
    for (const auto* m : *p->updates()) told |= m->uid() == 2 && m->status() == gossip::MemberStatus::Down;
  }
  EXPECT_TRUE(told) << "n2 was not told it is down";
}

// A member that missed a removal (cut off while it happened) still gossips the removed member
// after its record expired everywhere else: it is told the member is removed, and takes it (its
// view, and so its digest, would differ from everyone's for good: no convergence, and the leader
// would move nobody).
TEST_F(Swim, AMemberStillGossipingOneRemovedLongAgoIsToldItIsRemoved) {
  const UdpEndpoint n2_at{"127.0.0.1", 7002}, y_at{"127.0.0.1", 7003};
  proto->on_packet(n2_at, gossip_about("n2", 2, "127.0.0.1", 7002, 3, gossip::MemberStatus::Up, gossip::Liveness::Alive, 1, 2));
  proto->on_packet(peer, gossip_about("n2", 2, "127.0.0.1", 7002, 3, gossip::MemberStatus::Removed));
  clock.t += 5 * std::chrono::nanoseconds(MembershipConfig::lan().push_pull_interval);
  proto->poll();  // its record expires
  // Member y was cut off and still holds n2 as up.
  ManualClock y_clock;
  Recorder y_out;
  SwimProtocol y(MembershipConfig::lan(), SwimProtocol::Identity{"y", 3, y_at, "", "", {}}, y_clock, y_out, 3, quiet());
  y.on_packet(n2_at, gossip_about("n2", 2, "127.0.0.1", 7002, 3, gossip::MemberStatus::Up, gossip::Liveness::Alive, 1, 2));
  ASSERT_TRUE(y.member("n2"));
  out.sent.clear();
  const auto stale = gossip_about("n2", 2, "127.0.0.1", 7002, 3, gossip::MemberStatus::Up, gossip::Liveness::Alive, 1, 3);
  proto->on_packet(y_at, stale);
  EXPECT_FALSE(proto->member("n2")) << "admitted again";
  EXPECT_EQ(proto->stats().forgotten_corrected, 1u);
  std::size_t corrections = 0;
  for (const auto& s : out.sent) {
    const auto* p = gossip::GetPacket(s.bytes.data());
    if (!(s.to == y_at) || !p->updates()) continue;
    bool removed = false;
    for (const auto* m : *p->updates()) removed |= m->uid() == 2 && m->status() == gossip::MemberStatus::Removed;
    if (!removed) continue;
    ++corrections;
    y.on_packet(UdpEndpoint{"127.0.0.1", 7000}, s.bytes);
  }
  ASSERT_EQ(corrections, 1u) << "y was not told";
  EXPECT_FALSE(y.member("n2")) << "y still holds n2";
  // At most once a probe interval.
  proto->on_packet(y_at, stale);
  EXPECT_EQ(proto->stats().forgotten_corrected, 1u);
}

// A member's first record cannot start at an incarnation only a million refutations would reach:
// held, it would make the member's real records look stale and its refutations look forged.
TEST_F(Swim, AFirstRecordAtAnImpossibleIncarnationIsRejected) {
  proto->on_packet(peer, gossip_about("n3", 3, "127.0.0.1", 7003, 1ull << 63));
  EXPECT_FALSE(proto->member("n3"));
  EXPECT_EQ(proto->stats().rejected_records, 1u);
  proto->on_packet(peer, gossip_about("n3", 3, "127.0.0.1", 7003, 4));
  ASSERT_TRUE(proto->member("n3"));
  // Near the top of the range the comparison must not wrap either.
  proto->on_packet(peer, gossip_about("n3", 3, "127.0.0.1", 7003, ~0ull, gossip::MemberStatus::Up, gossip::Liveness::Suspect));
  EXPECT_EQ(proto->member("n3")->incarnation, 4u);
  EXPECT_EQ(proto->stats().rejected_records, 2u);
}

// A body type or a member status this version does not know: dropped and counted, not read as
// something else (an unknown status used to read as `removed`).
TEST_F(Swim, UnknownBodyTypesAndStatusesAreDroppedAndCounted) {
  fb::FlatBufferBuilder b;
  auto ack = gossip::CreateAck(b, 1);
  auto from = b.CreateString("sender");
  gossip::PacketBuilder pb(b);
  pb.add_protocol_version(kGossipProtocolVersion);
  pb.add_from_uid(77);
  pb.add_from_name(from);
  pb.add_body_type(static_cast<gossip::Body>(99));
  pb.add_body(ack.Union());
  b.Finish(pb.Finish());
  proto->on_packet(peer, {b.GetBufferPointer(), b.GetSize()});
  EXPECT_EQ(proto->stats().unknown_body, 1u);
  proto->on_packet(peer, gossip_about("n2", 2, "127.0.0.1", 7002, 0));
  ASSERT_TRUE(proto->member("n2"));
  proto->on_packet(peer, gossip_about("n2", 2, "127.0.0.1", 7002, 0, static_cast<gossip::MemberStatus>(9)));
  ASSERT_TRUE(proto->member("n2")) << "an unknown status must not remove it";
  EXPECT_EQ(proto->member("n2")->status, MemberStatus::up);
  EXPECT_EQ(proto->stats().rejected_records, 1u);
}

// leave() acts on this node by its uid; by name, on the newest live member of that name (a
// restarted process, not its earlier incarnation still in the view).
TEST_F(Swim, LeaveActsOnThisNodeAndByNameOnTheNewestOfTwoIncarnations) {
  proto->on_packet(peer, gossip_about("me", 9, "127.0.0.1", 7009, 0, gossip::MemberStatus::Up, gossip::Liveness::Alive, 1, 77, 5));
  proto->on_packet(peer, gossip_about("n2", 2, "127.0.0.1", 7002, 0, gossip::MemberStatus::Up, gossip::Liveness::Alive, 1, 77, 3));
  proto->on_packet(peer, gossip_about("n2", 4, "127.0.0.1", 7012, 0, gossip::MemberStatus::Up, gossip::Liveness::Alive, 1, 77, 6));
  auto status_of = [&](std::uint64_t uid) {
    for (const auto& m : proto->members()) {
      if (m.uid == uid) return m.status;
    }
    return MemberStatus::removed;
  };
  ASSERT_TRUE(proto->leave("n2"));
  EXPECT_EQ(status_of(4), MemberStatus::leaving) << "the newer n2";
  EXPECT_EQ(status_of(2), MemberStatus::up);
  proto->leave();
  EXPECT_EQ(proto->self().status, MemberStatus::leaving);
  EXPECT_EQ(status_of(9), MemberStatus::up) << "another member named like this node";
}

// A joining record under a known member's name and a new uid means a restarted process, but only
// from that process itself: passed on by another member it may be an earlier incarnation's (one
// that crashed while joining), and downing the member of that name would down the live one.
TEST_F(Swim, OnlyTheJoiningProcessItselfDownsTheOtherIncarnationOfItsName) {
  auto status_of = [&](std::uint64_t uid) {
    for (const auto& m : proto->members()) {
      if (m.uid == uid) return m.status;
    }
    return MemberStatus::removed;
  };
  proto->on_packet(peer, gossip_about("n2", 2, "127.0.0.1", 7002, 0));
  ASSERT_EQ(status_of(2), MemberStatus::up);
  // Relayed by member 77.
  proto->on_packet(peer, gossip_about("n2", 5, "127.0.0.1", 7002, 0, gossip::MemberStatus::Joining));
  EXPECT_EQ(status_of(5), MemberStatus::joining);
  EXPECT_EQ(status_of(2), MemberStatus::up) << "downed on a record passed on by another member";
  // From the joining process itself.
  proto->on_packet(UdpEndpoint{"127.0.0.1", 7002},
                   gossip_about("n2", 6, "127.0.0.1", 7002, 0, gossip::MemberStatus::Joining, gossip::Liveness::Alive, 1, 6));
  EXPECT_EQ(status_of(6), MemberStatus::joining);
  EXPECT_EQ(status_of(2), MemberStatus::down) << "a restarted process";
  EXPECT_EQ(status_of(5), MemberStatus::down);
}

TEST_F(Swim, ADuplicatedPacketChangesNothingTheSecondTime) {
  auto p = gossip_about("n2", 2, "127.0.0.1", 7002, 3, gossip::MemberStatus::Up, gossip::Liveness::Suspect);
  proto->on_packet(peer, p);
  const auto digest = proto->digest();
  const auto n_events = events.size();
  const auto suspicions = proto->stats().suspicions;
  proto->on_packet(peer, p);
  EXPECT_EQ(proto->digest(), digest);
  EXPECT_EQ(events.size(), n_events);
  EXPECT_EQ(proto->stats().suspicions, suspicions);
}

TEST_F(Swim, MembershipNewsIsPiggybackedBeforeLivenessChatter) {
  // A quiet cluster of 40 whose news has all been sent.
  for (std::uint64_t i = 2; i < 42; ++i) {
    proto->on_packet(peer, gossip_about("n" + std::to_string(i), i, "127.0.0.1", static_cast<std::uint16_t>(7000 + i), 0));
  }
  auto pending = [&] {
    out.sent.clear();
    clock.t += 200ms;
    proto->poll();
    return !out.sent.empty();
  };
  for (int i = 0; i < 2000 && pending(); ++i) {
  }
  ASSERT_FALSE(pending()) << "everything sent";
  auto carrying = [&] {  // for each packet just sent: does it carry n5's leave?
    std::vector<bool> v;
    for (const auto& sent : out.sent) {
      const auto* p = gossip::GetPacket(sent.bytes.data());
      bool leave = false;
      if (p->updates()) {
        for (const auto* u : *p->updates()) leave |= u->uid() == 5 && u->status() == gossip::MemberStatus::Leaving;
      }
      v.push_back(leave);
    }
    return v;
  };
  // n5 leaves: news, sent in a few packets...
  proto->on_packet(peer, gossip_about("n5", 5, "127.0.0.1", 7005, 0, gossip::MemberStatus::Leaving));
  ASSERT_TRUE(pending());
  const auto first = carrying();
  const auto sent_before = static_cast<std::size_t>(std::count(first.begin(), first.end(), true));
  ASSERT_GE(sent_before, 1u);
  ASSERT_LT(sent_before, 8u) << "retransmit_limit() is 8 for 42 members";
  // ... then fresh suspicions of 30 others, more than a packet holds, each with more
  // transmissions left than the news.
  for (std::uint64_t i = 10; i < 40; ++i) {
    proto->on_packet(peer, gossip_about("n" + std::to_string(i), i, "127.0.0.1", static_cast<std::uint16_t>(7000 + i), 0,
                                        gossip::MemberStatus::Up, gossip::Liveness::Suspect));
  }
  ASSERT_TRUE(pending());
  const auto next = carrying();
  ASSERT_GE(next.size(), 8u - sent_before);
  // The leave's remaining transmissions go first: in the first packets, each filled up with chatter.
  for (std::size_t k = 0; k < next.size(); ++k) EXPECT_EQ(next[k], k < 8 - sent_before) << "packet " << k;
}

TEST_F(Swim, SuspicionOfItselfIsRefutedWithAHigherIncarnation) {
  proto->on_packet(peer, gossip_about("me", 1, "127.0.0.1", 7000, 0, gossip::MemberStatus::Up,
                                      gossip::Liveness::Suspect));
  EXPECT_EQ(proto->self().incarnation, 1u);
  EXPECT_EQ(proto->stats().refutations, 1u);
  EXPECT_FALSE(proto->history("me").empty());
}

TEST_F(Swim, AnotherProtocolVersionIsRefusedClearlyAndTheJoinerSaysWhy) {
  out.sent.clear();
  proto->on_packet(peer, gossip_about("n2", 2, "127.0.0.1", 7002, 0, gossip::MemberStatus::Joining,
                                      gossip::Liveness::Alive, 9));
  EXPECT_EQ(proto->stats().wrong_version, 1u);
  EXPECT_FALSE(proto->member("n2"));
  ASSERT_EQ(out.sent.size(), 1u);
  const auto* reply = gossip::GetPacket(out.sent[0].bytes.data());
  ASSERT_EQ(reply->body_type(), gossip::Body::Refused);
  const std::string reason = reply->body_as_Refused()->reason()->str();
  EXPECT_NE(reason.find("version 9"), std::string::npos) << reason;

  // The refusal reaches a node that is still joining: it reports join_refused with the reason.
  ManualClock c2;
  Recorder o2;
  SwimProtocol joiner(MembershipConfig::lan(), {"j", 9, UdpEndpoint{"127.0.0.1", 7009}, "", "", {}}, c2, o2, 2, quiet());
  std::vector<MembershipEvent> got;
  joiner.subscribe([&](const MembershipEvent& e) { got.push_back(e); });
  joiner.join({UdpEndpoint{"127.0.0.1", 7000}});
  joiner.poll();
  joiner.on_packet(UdpEndpoint{"127.0.0.1", 7000}, out.sent[0].bytes);
  ASSERT_FALSE(got.empty());
  EXPECT_EQ(got.back().kind, EventKind::join_refused);
  EXPECT_NE(got.back().detail.find("version 9"), std::string::npos);
}

TEST_F(Swim, APingForAnotherIncarnationIsNotAnswered) {
  fb::FlatBufferBuilder b;
  auto ping = gossip::CreatePing(b, 5, 999);
  auto from = b.CreateString("x");
  gossip::PacketBuilder pb(b);
  pb.add_protocol_version(1);
  pb.add_from_uid(3);
  pb.add_from_name(from);
  pb.add_body_type(gossip::Body::Ping);
  pb.add_body(ping.Union());
  b.Finish(pb.Finish());
  out.sent.clear();
  proto->on_packet(peer, {b.GetBufferPointer(), b.GetSize()});
  EXPECT_EQ(proto->stats().misdirected, 1u);
  EXPECT_TRUE(out.sent.empty());
}

TEST_F(Swim, TheLeaderGivesAgesInOrderNamesBreakingTiesWithinOneMove) {
  // Two join together; their uids run against their names: the numbering follows the names.
  const auto joining = gossip::MemberStatus::Joining;
  const auto alive = gossip::Liveness::Alive;
  proto->on_packet(peer, gossip_about("nb", 2, "127.0.0.1", 7002, 0, joining, alive, 1, 2));
  proto->on_packet(peer, gossip_about("na", 3, "127.0.0.1", 7003, 0, joining, alive, 1, 3));
  auto converge = [&](std::initializer_list<std::uint64_t> uids) {
    for (auto uid : uids) proto->on_packet(peer, digest_from(uid, proto->digest()));
    clock.t += 300ms;
    proto->poll();
  };
  converge({2, 3});
  ASSERT_EQ(proto->member("na")->status, MemberStatus::up);
  ASSERT_EQ(proto->member("nb")->status, MemberStatus::up);
  EXPECT_EQ(proto->member("na")->up_order, 2u);
  EXPECT_EQ(proto->member("nb")->up_order, 3u);
  // The up event carries the age.
  bool announced = false;
  for (const auto& e : events) announced |= e.kind == EventKind::up && e.member.name == "na" && e.member.up_order == 2;
  EXPECT_TRUE(announced);

  // A later joiner is younger than those before it, even with a smaller name. (Names stay above
  // "me": the leader is the up member with the lowest name, and it must stay this node.)
  proto->on_packet(peer, gossip_about("n0", 4, "127.0.0.1", 7004, 0, joining, alive, 1, 4));
  converge({2, 3, 4});
  ASSERT_EQ(proto->member("n0")->status, MemberStatus::up);
  EXPECT_EQ(proto->member("n0")->up_order, 4u);
  EXPECT_EQ(oldest_up(proto->members())->name, "me");

  // A downed member's number is not given again.
  ASSERT_TRUE(proto->down("n0"));
  proto->on_packet(peer, gossip_about("nc", 5, "127.0.0.1", 7005, 0, joining, alive, 1, 5));
  converge({2, 3, 5});
  ASSERT_EQ(proto->member("nc")->status, MemberStatus::up);
  EXPECT_EQ(proto->member("nc")->up_order, 5u);
}

TEST_F(Swim, AnAgeGossipedIsKeptAndOnlyASmallerOneReplacesIt) {
  proto->on_packet(peer, gossip_about("n2", 2, "127.0.0.1", 7002, 0, gossip::MemberStatus::Up,
                                      gossip::Liveness::Alive, 1, 77, 4));
  EXPECT_EQ(proto->member("n2")->up_order, 4u);
  // Records that predate it (0) or a larger one (only after a split) leave it alone...
  for (std::uint64_t order : {0, 9}) {
    proto->on_packet(peer, gossip_about("n2", 2, "127.0.0.1", 7002, 0, gossip::MemberStatus::Up,
                                        gossip::Liveness::Alive, 1, 77, order));
    EXPECT_EQ(proto->member("n2")->up_order, 4u);
  }
  // ...and of two numbers given on both sides of a split, every node settles on the smaller.
  proto->on_packet(peer, gossip_about("n2", 2, "127.0.0.1", 7002, 0, gossip::MemberStatus::Up,
                                      gossip::Liveness::Alive, 1, 77, 3));
  EXPECT_EQ(proto->member("n2")->up_order, 3u);
  // A status learned later keeps the age.
  proto->on_packet(peer, gossip_about("n2", 2, "127.0.0.1", 7002, 0, gossip::MemberStatus::Leaving,
                                      gossip::Liveness::Alive, 1, 77, 0));
  EXPECT_EQ(proto->member("n2")->up_order, 3u);
}

TEST(SwimAge, AJoinerLearnsItsOwnAgeFromTheClusterAndPassesItOn) {
  ManualClock clock;
  Recorder out;
  const UdpEndpoint seed{"127.0.0.1", 7000};
  SwimProtocol j(MembershipConfig::lan(), {"j", 9, UdpEndpoint{"127.0.0.1", 7009}, "", "", {}}, clock, out, 2, quiet());
  j.join({seed});
  j.poll();
  EXPECT_EQ(j.self().up_order, 0u);
  j.on_packet(seed, gossip_about("j", 9, "127.0.0.1", 7009, 0, gossip::MemberStatus::Up, gossip::Liveness::Alive, 1, 1,
                                 5));
  EXPECT_EQ(j.self().status, MemberStatus::up);
  EXPECT_EQ(j.self().up_order, 5u);
  // Its own record goes out with the age (here on the ack to a ping).
  out.sent.clear();
  fb::FlatBufferBuilder b;
  auto ping = gossip::CreatePing(b, 5, 9);
  auto from = b.CreateString("seed");
  gossip::PacketBuilder pb(b);
  pb.add_protocol_version(1);
  pb.add_from_uid(1);
  pb.add_from_name(from);
  pb.add_body_type(gossip::Body::Ping);
  pb.add_body(ping.Union());
  b.Finish(pb.Finish());
  j.on_packet(seed, {b.GetBufferPointer(), b.GetSize()});
  std::vector<std::vector<std::uint8_t>> sent;
  for (const auto& s : out.sent) sent.push_back(s.bytes);
  EXPECT_EQ(sent_up_order(sent, 9), 5u);
  // Once set, its age does not move (except to a smaller one given on the other side of a split).
  j.on_packet(seed, gossip_about("j", 9, "127.0.0.1", 7009, 0, gossip::MemberStatus::Up, gossip::Liveness::Alive, 1, 1,
                                 7));
  EXPECT_EQ(j.self().up_order, 5u);
  j.on_packet(seed, gossip_about("j", 9, "127.0.0.1", 7009, 0, gossip::MemberStatus::Up, gossip::Liveness::Alive, 1, 1,
                                 3));
  EXPECT_EQ(j.self().up_order, 3u);
}

MemberInfo aged(std::string name, std::uint64_t uid, std::uint64_t up_order, MemberStatus status = MemberStatus::up,
                Liveness liveness = Liveness::alive) {
  MemberInfo m;
  m.name = std::move(name);
  m.uid = uid;
  m.up_order = up_order;
  m.status = status;
  m.liveness = liveness;
  return m;
}

TEST(MemberAge, OlderComparesUpOrderThenNameThenUid) {
  EXPECT_TRUE(older(aged("z", 9, 1), aged("a", 1, 2)));  // the age decides before the name
  EXPECT_FALSE(older(aged("a", 1, 2), aged("z", 9, 1)));
  EXPECT_TRUE(older(aged("z", 9, 7), aged("a", 1, 0)));  // 0 (not up yet) is the youngest
  EXPECT_FALSE(older(aged("a", 1, 0), aged("z", 9, 7)));
  EXPECT_TRUE(older(aged("a", 9, 3), aged("b", 1, 3)));  // a tie after a split: the name...
  EXPECT_FALSE(older(aged("b", 1, 3), aged("a", 9, 3)));
  EXPECT_TRUE(older(aged("a", 1, 3), aged("a", 2, 3)));  // ...then the uid
  EXPECT_FALSE(older(aged("a", 2, 3), aged("a", 1, 3)));
  EXPECT_TRUE(older(aged("a", 1, 0), aged("b", 1, 0)));
  EXPECT_FALSE(older(aged("a", 1, 3), aged("a", 1, 3)));  // irreflexive
}

TEST(MemberAge, OldestUpSkipsMembersNotUpOrUnreachable) {
  EXPECT_FALSE(oldest_up({}));
  std::vector<MemberInfo> ms{
      aged("a", 1, 0, MemberStatus::joining),
      aged("b", 2, 1, MemberStatus::down),
      aged("c", 3, 2, MemberStatus::leaving),
      aged("d", 4, 3, MemberStatus::up, Liveness::unreachable),
      aged("f", 6, 5),
      aged("e", 5, 4, MemberStatus::up, Liveness::suspect),  // suspected is still up
  };
  ASSERT_TRUE(oldest_up(ms));
  EXPECT_EQ(oldest_up(ms)->name, "e");
  ms.pop_back();
  EXPECT_EQ(oldest_up(ms)->name, "f");
  ms.push_back(aged("g", 8, 5));  // the same age as f (a split): the name decides
  ms.push_back(aged("0", 7, 6));
  EXPECT_EQ(oldest_up(ms)->name, "f");
  ms.push_back(aged("f", 0, 5));  // and then the uid
  EXPECT_EQ(oldest_up(ms)->uid, 0u);
  EXPECT_FALSE(oldest_up({aged("a", 1, 0, MemberStatus::joining), aged("b", 2, 1, MemberStatus::removed)}));
}

// ---- ICMP port unreachable: a process that is gone ----------------------------------------------

/// An Ack from member `uid` for ping `seq`.
std::vector<std::uint8_t> ack_from(std::uint64_t uid, std::uint64_t seq) {
  fb::FlatBufferBuilder b;
  auto ack = gossip::CreateAck(b, seq);
  auto from = b.CreateString("sender");
  gossip::PacketBuilder pb(b);
  pb.add_protocol_version(1);
  pb.add_from_uid(uid);
  pb.add_from_name(from);
  pb.add_body_type(gossip::Body::Ack);
  pb.add_body(ack.Union());
  b.Finish(pb.Finish());
  return {b.GetBufferPointer(), b.GetBufferPointer() + b.GetSize()};
}

bool mentions(const std::vector<Decision>& history, std::string_view text) {
  return std::any_of(history.begin(), history.end(),
                     [&](const Decision& d) { return d.what.find(text) != std::string::npos; });
}

/// "me" (the leader: the lowest name) with up members n2.. at ports 7002..; the members listed in
/// `answering` ack every probe, the others are silent.
struct Refusals : ::testing::Test {
  explicit Refusals(MembershipConfig c = MembershipConfig::lan()) : cfg(std::move(c)) {
    proto = std::make_unique<SwimProtocol>(cfg, SwimProtocol::Identity{"me", 1, UdpEndpoint{"127.0.0.1", 7000}, "", "", {}},
                                           clock, out, 1, quiet());
    proto->join({});
    proto->poll();
  }
  void add(int n) {
    for (int i = 2; i < 2 + n; ++i) {
      proto->on_packet(at(i), gossip_about("n" + std::to_string(i), i, "127.0.0.1", static_cast<std::uint16_t>(7000 + i), 0));
      answering.insert(i);
    }
    run_for(300ms);
    ASSERT_EQ(proto->leader()->name, "me");
  }
  static UdpEndpoint at(int i) { return UdpEndpoint{"127.0.0.1", static_cast<std::uint16_t>(7000 + i)}; }
  /// The kernel's report for a datagram to member i: its port refuses.
  void refuse(int i) { proto->on_port_unreachable(at(i)); }
  /// Lets time pass in small steps, the answering members acking the probes sent to them.
  void run_for(std::chrono::nanoseconds d) {
    for (const auto end = clock.t + d; clock.t < end;) {
      clock.t += 50ms;
      proto->poll();
      for (; acked < out.sent.size(); ++acked) {
        const auto* p = gossip::GetPacket(out.sent[acked].bytes.data());
        const int i = out.sent[acked].to.port - 7000;
        if (p->body_type() != gossip::Body::Ping || !answering.count(i) || p->body_as_Ping()->seq() == 0) continue;
        proto->on_packet(at(i), ack_from(static_cast<std::uint64_t>(i), p->body_as_Ping()->seq()));
      }
    }
  }
  bool pinged(int i, std::size_t since) const {
    for (auto k = since; k < out.sent.size(); ++k) {
      if (out.sent[k].to == at(i) && gossip::GetPacket(out.sent[k].bytes.data())->body_type() == gossip::Body::Ping) {
        return true;
      }
    }
    return false;
  }
  MemberInfo member(int i) const { return *proto->member("n" + std::to_string(i)); }

  MembershipConfig cfg;
  ManualClock clock;
  Recorder out;
  std::unique_ptr<SwimProtocol> proto;
  std::set<int> answering;
  std::size_t acked = 0;
};

TEST_F(Refusals, TwoRefusalsMakeAMemberUnreachableAtOnceAndTheLeaderDownsItWithoutWaiting) {
  add(4);
  answering.erase(2);  // its process is gone
  const auto start = clock.t;
  const auto before = out.sent.size();
  refuse(2);
  EXPECT_EQ(member(2).liveness, Liveness::alive) << "one refusal is not evidence enough";
  EXPECT_TRUE(pinged(2, before)) << "the first refusal is confirmed with a ping at once";
  refuse(2);  // the answer to that ping
  EXPECT_EQ(member(2).liveness, Liveness::unreachable);
  EXPECT_TRUE(mentions(proto->history("n2"), "its gossip port refuses: the process is gone"));
  EXPECT_EQ(proto->stats().suspicions, 0u) << "no suspicion timeout";
  run_for(300ms);
  EXPECT_EQ(member(2).status, MemberStatus::down);
  EXPECT_LT(clock.t - start, std::chrono::nanoseconds(cfg.stable_after) / 10);
  EXPECT_TRUE(mentions(proto->history("n2"), "downed: its gossip port refuses"));
  EXPECT_TRUE(mentions(proto->history("n2"), "4 reachable vs 1 unreachable"));  // keep-majority counted
  for (int i : {3, 4, 5}) EXPECT_EQ(member(i).status, MemberStatus::up);
}

TEST_F(Refusals, TheLeaderDownsAMemberOthersFoundRefusingOnlyOnceItsPortRefusesItsOwnPings) {
  add(4);
  answering.erase(2);
  // Another node found n2 unreachable; this node has no evidence of its own yet.
  proto->on_packet(at(3), gossip_about("n2", 2, "127.0.0.1", 7002, 0, gossip::MemberStatus::Up,
                                       gossip::Liveness::Unreachable, 1, 3));
  ASSERT_EQ(member(2).liveness, Liveness::unreachable);
  const auto before = out.sent.size();
  run_for(300ms);
  EXPECT_EQ(member(2).status, MemberStatus::up) << "gossip alone is not this node's evidence";
  ASSERT_TRUE(pinged(2, before)) << "the leader checks for itself";
  refuse(2);
  refuse(2);
  run_for(300ms);
  EXPECT_EQ(member(2).status, MemberStatus::down);
}

TEST_F(Refusals, OneRefusalOrTwoTooFarApartChangeNothing) {
  add(4);
  answering.erase(2);
  refuse(2);
  run_for(300ms);
  EXPECT_EQ(member(2).liveness, Liveness::alive);
  EXPECT_EQ(member(2).status, MemberStatus::up);
  // The next one comes after the window: it counts as the first again.
  clock.t += 3s;
  refuse(2);
  EXPECT_NE(member(2).liveness, Liveness::unreachable);
  EXPECT_EQ(member(2).status, MemberStatus::up);
  EXPECT_FALSE(mentions(proto->history("n2"), "refuses"));
}

TEST_F(Refusals, APacketFromTheMemberClearsItsRefusals) {
  add(4);
  refuse(2);
  proto->on_packet(at(2), digest_from(2, 0));  // it answers after all (the ICMP was stray)
  refuse(2);
  EXPECT_EQ(member(2).liveness, Liveness::alive) << "the count started again";
  // Unreachable by refusals, then it talks: the leader no longer has evidence and waits as usual.
  refuse(2);
  ASSERT_EQ(member(2).liveness, Liveness::unreachable);
  proto->on_packet(at(2), digest_from(2, 0));
  answering.erase(2);  // silent again: a pause, not a crash
  run_for(1s);
  EXPECT_EQ(member(2).status, MemberStatus::up);
  run_for(std::chrono::nanoseconds(cfg.stable_after));
  EXPECT_EQ(member(2).status, MemberStatus::down);
  EXPECT_FALSE(mentions(proto->history("n2"), "downed: its gossip port refuses"));
}

TEST_F(Refusals, ANewProcessAtTheSameEndpointClearsTheOldUidsRefusals) {
  add(4);
  answering.erase(2);
  refuse(2);
  // A restarted process (another uid) at n2's address talks: the port is no longer closed.
  proto->on_packet(at(2), digest_from(20, 0));
  refuse(2);
  EXPECT_EQ(member(2).liveness, Liveness::alive);
}

TEST_F(Refusals, ARefusedAndASilentUnreachableMemberWaitForStableAfter) {
  add(4);
  answering.erase(2);
  answering.erase(3);
  // n3 is silent (a partition): unreachable by suspicion elsewhere.
  proto->on_packet(at(4), gossip_about("n3", 3, "127.0.0.1", 7003, 0, gossip::MemberStatus::Up,
                                       gossip::Liveness::Unreachable, 1, 4));
  refuse(2);
  refuse(2);
  ASSERT_EQ(member(2).liveness, Liveness::unreachable);
  const auto start = clock.t;
  // Keep n2's port refusing the leader's pings meanwhile.
  while (clock.t - start < std::chrono::nanoseconds(cfg.stable_after) - 500ms) {
    const auto before = out.sent.size();
    run_for(100ms);
    if (pinged(2, before)) refuse(2);
    ASSERT_EQ(member(2).status, MemberStatus::up) << "a silent member is unreachable too: the usual wait";
  }
  run_for(1s);
  EXPECT_EQ(member(2).status, MemberStatus::down);
  EXPECT_EQ(member(3).status, MemberStatus::down);
  EXPECT_TRUE(mentions(proto->history("n3"), "3 reachable vs 2 unreachable"));
}

struct RefusalsOff : Refusals {
  static MembershipConfig off() {
    auto c = MembershipConfig::lan();
    c.down_on_refusal = false;
    return c;
  }
  RefusalsOff() : Refusals(off()) {}
};

TEST_F(RefusalsOff, TheSwitchOffIgnoresRefusals) {
  add(4);
  answering.erase(2);
  refuse(2);
  refuse(2);
  refuse(2);
  EXPECT_EQ(member(2).liveness, Liveness::alive);
  EXPECT_EQ(proto->stats().port_refusals, 0u);
  // Detection by probing and suspicion, downing after stable_after: as before.
  run_for(2s);
  EXPECT_EQ(member(2).status, MemberStatus::up);
  for (int k = 0; k < 400 && member(2).status == MemberStatus::up; ++k) run_for(100ms);
  EXPECT_EQ(member(2).status, MemberStatus::down);
  EXPECT_FALSE(mentions(proto->history("n2"), "refuses"));
  EXPECT_TRUE(mentions(proto->history("n2"), "suspicion timed out"));
}

TEST(MembershipConfigTest, PresetsAreValidAndBadValuesNameTheField) {
  EXPECT_EQ(MembershipConfig::local().validate(), "");
  EXPECT_EQ(MembershipConfig::lan().validate(), "");
  EXPECT_EQ(MembershipConfig::wan().validate(), "");
  EXPECT_TRUE(MembershipConfig::lan().down_on_refusal);
  auto c = MembershipConfig::lan();
  c.probe_timeout = c.probe_interval;
  EXPECT_TRUE(c.validate().starts_with("probe_timeout")) << c.validate();
  c = MembershipConfig::lan();
  c.cluster_name = "has space";
  EXPECT_TRUE(c.validate().starts_with("cluster_name")) << c.validate();
  c = MembershipConfig::lan();
  c.stable_after = milliseconds(0);
  EXPECT_TRUE(c.validate().starts_with("stable_after")) << c.validate();
}

}  // namespace
}  // namespace troupe::membership
