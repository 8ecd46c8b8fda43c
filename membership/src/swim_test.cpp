// SwimProtocol on its own, with a manual clock and a transport that records what it sends:
// hostile and odd input is dropped, counted and changes nothing.

#include <troupe/membership/swim.hpp>

#include <gtest/gtest.h>

#include <random>

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

/// A packet from member `name`/`uid` carrying one member record.
std::vector<std::uint8_t> gossip_about(const std::string& name, std::uint64_t uid, const std::string& host,
                                       std::uint16_t port, std::uint64_t incarnation,
                                       gossip::MemberStatus status = gossip::MemberStatus::Up,
                                       gossip::Liveness live = gossip::Liveness::Alive, std::uint16_t version = 1,
                                       std::uint64_t from_uid = 77) {
  fb::FlatBufferBuilder b;
  auto m = gossip::CreateMemberDirect(b, name.c_str(), uid, host.c_str(), port, "", "", incarnation, status, live, 0);
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

struct Swim : ::testing::Test {
  Swim() {
    SwimProtocol::Identity id{"me", 1, UdpEndpoint{"127.0.0.1", 7000}, "", ""};
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

TEST_F(Swim, AnImpossibleIncarnationJumpIsRejected) {
  proto->on_packet(peer, gossip_about("n2", 2, "127.0.0.1", 7002, 5));
  ASSERT_TRUE(proto->member("n2"));
  proto->on_packet(peer, gossip_about("n2", 2, "127.0.0.1", 7002, 5 + (1ull << 40), gossip::MemberStatus::Up,
                                      gossip::Liveness::Suspect));
  EXPECT_EQ(proto->stats().rejected_records, 1u);
  EXPECT_EQ(proto->member("n2")->incarnation, 5u);
  EXPECT_EQ(proto->member("n2")->liveness, Liveness::alive);
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
  SwimProtocol joiner(MembershipConfig::lan(), {"j", 9, UdpEndpoint{"127.0.0.1", 7009}, "", ""}, c2, o2, 2, quiet());
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

TEST(MembershipConfigTest, PresetsAreValidAndBadValuesNameTheField) {
  EXPECT_EQ(MembershipConfig::local().validate(), "");
  EXPECT_EQ(MembershipConfig::lan().validate(), "");
  EXPECT_EQ(MembershipConfig::wan().validate(), "");
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
