// The remoting frame codec: round trip, and every kind of bad input refused without a crash.

#include <troupe/remoting/frame.hpp>

#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include <troupe/serialization/envelope_generated.h>

#include "test_messages_generated.h"

namespace troupe::remoting {
namespace {

Message ping(std::uint64_t seq) {
  return Message::build<test::Ping>([&](auto& b) { return test::CreatePing(b, seq, 3); });
}

struct Frames : ::testing::Test {
  Frames() { registry.add<test::Ping>(); }
  std::vector<std::uint8_t> frame_of(int n, std::string recipient = "/user/echo") {
    BatchBuilder b;
    for (int i = 0; i < n; ++i) {
      auto m = ping(static_cast<std::uint64_t>(i));
      b.add(m.type(), recipient, "troupe://00ff@127.0.0.1:7947/user/client", 100 + i, m.bytes());
    }
    auto f = b.finish();
    return {f.begin(), f.end()};
  }
  MessageRegistry registry;
  FrameLimits limits;
  FrameReport report;
};

/// `e` is keyed for entity `id` with these stamps.
void expect_route(const InEnvelope& e, std::string_view id, std::uint32_t shard, std::uint64_t epoch, std::uint8_t hops) {
  ASSERT_TRUE(e.route);
  EXPECT_EQ(e.route->entity_id, id);
  EXPECT_EQ(e.route->shard, shard);
  EXPECT_EQ(e.route->epoch, epoch);
  EXPECT_EQ(e.route->hops, hops);
}

TEST_F(Frames, RoundTripKeepsEveryEnvelopeInOrder) {
  auto f = frame_of(50);
  auto r = decode_frame(f, registry, limits, report);
  ASSERT_TRUE(r.ok()) << r.error().message();
  ASSERT_EQ(r->envelopes.size(), 50u);
  for (int i = 0; i < 50; ++i) {
    const auto& e = r->envelopes[static_cast<std::size_t>(i)];
    EXPECT_EQ(e.recipient, "/user/echo");
    EXPECT_EQ(e.sender, "troupe://00ff@127.0.0.1:7947/user/client");
    EXPECT_EQ(e.correlation_id, 100u + static_cast<unsigned>(i));
    ASSERT_TRUE(e.payload.is<test::Ping>());
    EXPECT_EQ(e.payload.as<test::Ping>()->seq(), static_cast<std::uint64_t>(i));
  }
  EXPECT_EQ(report.accepted, 50u);
}

TEST_F(Frames, KeyedEnvelopesCarryTheirRouteAndBadEntityIdsAreDropped) {
  BatchBuilder b;
  auto m = ping(1);
  const KeyedRoute good{"user-42", 9, 4, 2};
  const KeyedRoute empty{"", 1, 1, 1};
  const std::string long_id(limits.max_path_bytes + 1, 'x');
  const KeyedRoute too_long{long_id, 1, 1, 1};
  b.add(m.type(), "/system/region", "", 0, m.bytes(), &good);
  b.add(m.type(), "/system/region", "", 0, m.bytes(), &empty);
  b.add(m.type(), "/system/region", "", 0, m.bytes(), &too_long);
  b.add(m.type(), "/system/region", "", 0, m.bytes());
  b.add(m.type(), "/user/other", "/user/s", 0, m.bytes());   // a run of one
  b.add(m.type(), "/system/region", "/user/s", 0, m.bytes());  // back: written again
  auto f = b.finish();
  auto r = decode_frame(f, registry, limits, report);
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->envelopes.size(), 4u);
  EXPECT_EQ(r->envelopes[1].recipient, "/system/region");
  EXPECT_EQ(r->envelopes[1].sender, "");
  EXPECT_EQ(r->envelopes[2].recipient, "/user/other");
  EXPECT_EQ(r->envelopes[2].sender, "/user/s");
  EXPECT_EQ(r->envelopes[3].recipient, "/system/region");
  EXPECT_EQ(r->envelopes[3].sender, "/user/s");
  expect_route(r->envelopes[0], "user-42", 9, 4, 2);
  EXPECT_FALSE(r->envelopes[1].route);
  EXPECT_EQ(report.bad_path, 2u);
}

// The builder lays Envelope tables out by hand: any mix of shapes (keyed or not, with or without
// a correlation id), strings and payload sizes must read back through the generated code, pass
// the verifier with alignment checked, and keep every field. Seeded, several frames per seed.
TEST_F(Frames, HandLaidEnvelopesOfEveryShapeReadBackThroughTheGeneratedCode) {
  for (std::uint32_t seed = 1; seed <= 40; ++seed) {
    std::mt19937 rng(seed);
    auto pick = [&rng](std::uint32_t n) { return std::uniform_int_distribution<std::uint32_t>(0, n - 1)(rng); };
    struct Want {
      std::string recipient, sender, id;
      std::uint64_t corr, seq, epoch;
      std::uint32_t shard;
      std::uint8_t hops;
    };
    std::vector<Want> want;
    BatchBuilder b(seed % 2 ? 64u << 10 : 256);  // small: the buffer grows under the writes
    const int n = 1 + static_cast<int>(pick(300));
    for (int i = 0; i < n; ++i) {
      Want w;
      w.recipient = pick(4) ? "/system/region-a" : "/user/r" + std::to_string(pick(3));
      w.sender = pick(3) ? "" : "/user/s" + std::string(pick(40), 'q');
      w.corr = pick(2) ? 0 : (std::uint64_t{pick(1u << 31)} << 32) | pick(1u << 31);
      w.seq = rng();
      const bool keyed = pick(2);
      if (keyed) {
        w.id = std::string(1 + pick(120), static_cast<char>('a' + pick(26)));
        // Mostly stamps that fit an EntityRoute (as a cluster's do), some that need an EntityStamp.
        w.epoch = pick(3) ? pick(1u << 31) * 2 + pick(2) : (std::uint64_t{rng()} << 32) | rng();
        w.shard = pick(3) ? pick(1u << 16) : rng();
        w.hops = static_cast<std::uint8_t>(pick(256));
      }
      // A payload of the registered type, of varying size (a Text pads it out).
      Message m = pick(2) ? ping(w.seq) : Message::build<test::Text>([&](auto& fb) {
        return test::CreateText(fb, fb.CreateString(std::string(pick(700), 'p') + std::to_string(w.seq)));
      });
      const KeyedRoute route{w.id, w.shard, w.epoch, w.hops};
      b.add(m.type(), w.recipient, w.sender, w.corr, m.bytes(), keyed ? &route : nullptr);
      want.push_back(std::move(w));
    }
    auto f = b.finish("troupe://00aa@127.0.0.1:7000", seed);
    std::vector<std::uint8_t> bytes(f.begin(), f.end());
    flatbuffers::Verifier strict(bytes.data(), bytes.size());  // alignment checked (the default)
    ASSERT_TRUE(strict.VerifyBuffer<wire::Batch>(nullptr)) << "seed " << seed;
    MessageRegistry reg;
    reg.add<test::Ping>();
    reg.add<test::Text>();
    FrameReport rep;
    auto r = decode_frame(bytes, reg, limits, rep);
    ASSERT_TRUE(r.ok()) << "seed " << seed << ": " << r.error().message();
    ASSERT_EQ(r->envelopes.size(), want.size()) << "seed " << seed;
    EXPECT_EQ(r->origin, "troupe://00aa@127.0.0.1:7000");
    EXPECT_EQ(r->target_node, seed);
    for (std::size_t i = 0; i < want.size(); ++i) {
      const auto& e = r->envelopes[i];
      const auto& w = want[i];
      EXPECT_EQ(e.recipient, w.recipient) << "seed " << seed << " #" << i;
      EXPECT_EQ(e.sender, w.sender) << "seed " << seed << " #" << i;
      EXPECT_EQ(e.correlation_id, w.corr) << "seed " << seed << " #" << i;
      if (const auto* p = e.payload.as<test::Ping>()) {
        EXPECT_EQ(p->seq(), w.seq) << "seed " << seed << " #" << i;
      } else {
        ASSERT_TRUE(e.payload.is<test::Text>()) << "seed " << seed << " #" << i;
        EXPECT_TRUE(e.payload.as<test::Text>()->value()->string_view().ends_with(std::to_string(w.seq)));
      }
      ASSERT_EQ(e.route.has_value(), !w.id.empty()) << "seed " << seed << " #" << i;
      if (e.route) {
        EXPECT_EQ(e.route->entity_id, w.id);
        EXPECT_EQ(e.route->epoch, w.epoch);
        EXPECT_EQ(e.route->shard, w.shard);
        EXPECT_EQ(e.route->hops, w.hops);
      }
    }
    EXPECT_EQ(rep.accepted, want.size());
    // Each keyed envelope carries its stamps once, in the smallest struct that holds them.
    const auto* envs = flatbuffers::GetRoot<wire::Batch>(bytes.data())->envelopes();
    ASSERT_EQ(envs->size(), want.size());
    for (std::size_t i = 0; i < want.size(); ++i) {
      const auto* e = envs->Get(static_cast<flatbuffers::uoffset_t>(i));
      const auto& w = want[i];
      const bool fits = w.epoch <= 0xffff'ffffu && w.shard <= 0xffffu;
      EXPECT_EQ(e->route() != nullptr, !w.id.empty() && fits) << "seed " << seed << " #" << i;
      EXPECT_EQ(e->stamp() != nullptr, !w.id.empty() && !fits) << "seed " << seed << " #" << i;
    }
  }
}

// A keyed envelope's stamps take 8 bytes (an EntityRoute) where protocol 1 took 16 (an
// EntityStamp): a frame of keyed tells is 8 bytes an envelope smaller than the same frame with
// stamps too large for an EntityRoute, and both read back the same.
TEST_F(Frames, KeyedEnvelopesCarryStampsThatFitInEightBytes) {
  auto m = ping(5);
  auto frame_of = [&](std::uint64_t epoch) {
    BatchBuilder b(64u << 10);
    for (int i = 0; i < 100; ++i) {
      const std::string id = "e" + std::to_string(i * 37);
      const KeyedRoute route{id, static_cast<std::uint32_t>(i), epoch + static_cast<std::uint64_t>(i), 1};
      b.add(m.type(), "/system/region-a", "", 0, m.bytes(), &route);
    }
    auto f = b.finish("troupe://00aa@127.0.0.1:7000", 1);
    return std::vector<std::uint8_t>(f.begin(), f.end());
  };
  const auto narrow = frame_of(7), wide = frame_of(std::uint64_t{1} << 32);
  EXPECT_EQ(narrow.size() + 100 * 8, wide.size());
  for (const auto& [bytes, epoch] : {std::pair{narrow, std::uint64_t{7}}, std::pair{wide, std::uint64_t{1} << 32}}) {
    auto r = decode_frame(bytes, registry, limits, report);
    ASSERT_TRUE(r.ok());
    ASSERT_EQ(r->envelopes.size(), 100u);
    for (std::size_t i = 0; i < 100; ++i) {
      expect_route(r->envelopes[i], "e" + std::to_string(i * 37), static_cast<std::uint32_t>(i), epoch + i, 1);
    }
  }
}

// A protocol-1 frame (its keyed envelopes stamped with an EntityStamp, as the generated code
// writes them) is still read, stamps and all; an unstamped keyed envelope reads as epoch 0.
TEST_F(Frames, ProtocolOneFramesAreStillRead) {
  flatbuffers::FlatBufferBuilder fbb;
  auto m = ping(3);
  const wire::EntityStamp stamp(std::uint64_t{77}, 513, 2);
  const std::vector<std::uint8_t> payload(m.bytes().begin(), m.bytes().end());
  std::vector<flatbuffers::Offset<wire::Envelope>> envs{
      wire::CreateEnvelopeDirect(fbb, m.type(), "/system/region-a", nullptr, 0, &payload, "user-1", &stamp),
      wire::CreateEnvelopeDirect(fbb, m.type(), "/system/region-a", nullptr, 0, &payload, "user-2", nullptr)};
  fbb.Finish(wire::CreateBatch(fbb, 1, fbb.CreateVector(envs), fbb.CreateString("troupe://00aa@127.0.0.1:7000"), 1));
  auto r = decode_frame({fbb.GetBufferPointer(), fbb.GetSize()}, registry, limits, report);
  ASSERT_TRUE(r.ok()) << r.error().message();
  ASSERT_EQ(r->envelopes.size(), 2u);
  expect_route(r->envelopes[0], "user-1", 513, 77, 2);
  expect_route(r->envelopes[1], "user-2", 0, 0, 0);
  EXPECT_EQ(r->envelopes[0].payload.as<test::Ping>()->seq(), 3u);
}

// A tell from outside any actor has no sender: its envelope leaves the field out, as the
// generated code would, and reads back with an empty sender. That saves the field's 4 bytes per
// envelope; the table's alignment padding (0 or 4 bytes, by the sizes written before it) comes
// and goes as before, so over payloads of mixed sizes the saving averages about 4 bytes.
TEST_F(Frames, EnvelopesWithoutASenderLeaveTheFieldOut) {
  std::vector<Message> msgs;
  for (int i = 0; i < 100; ++i) {
    msgs.push_back(Message::build<test::Text>([&](auto& fb) { return test::CreateText(fb, fb.CreateString(std::string(i % 16, 't'))); }));
  }
  auto frame_of = [&](std::string_view sender, bool keyed) {
    BatchBuilder b(64u << 10);
    for (int i = 0; i < 100; ++i) {
      const std::string id = "e" + std::to_string(i * 37);
      const KeyedRoute route{id, 3, 9, 1};
      b.add(msgs[i].type(), "/system/region-a", sender, 0, msgs[i].bytes(), keyed ? &route : nullptr);
    }
    auto f = b.finish("troupe://00aa@127.0.0.1:7000", 1);
    return std::vector<std::uint8_t>(f.begin(), f.end());
  };
  for (const bool keyed : {false, true}) {
    const auto without = frame_of("", keyed);
    const auto with = frame_of("/user/a", keyed);
    EXPECT_LE(without.size() + 100 * 2, with.size()) << "keyed " << keyed;
    flatbuffers::Verifier strict(without.data(), without.size());
    ASSERT_TRUE(strict.VerifyBuffer<wire::Batch>(nullptr));
    const auto* batch = flatbuffers::GetRoot<wire::Batch>(without.data());
    for (const auto* e : *batch->envelopes()) {
      EXPECT_EQ(e->sender(), nullptr);
      EXPECT_EQ(e->type_id(), msgs[0].type());
      ASSERT_NE(e->recipient(), nullptr);
      EXPECT_EQ(e->recipient()->string_view(), "/system/region-a");
      EXPECT_EQ(e->entity_id() != nullptr, keyed);
    }
    MessageRegistry reg;
    reg.add<test::Text>();
    auto r = decode_frame(without, reg, limits, report);
    ASSERT_TRUE(r.ok());
    ASSERT_EQ(r->envelopes.size(), 100u);
    for (std::size_t i = 0; i < r->envelopes.size(); ++i) {
      const auto& e = r->envelopes[i];
      EXPECT_TRUE(e.sender.empty());
      ASSERT_TRUE(e.payload.is<test::Text>());
      EXPECT_EQ(e.payload.as<test::Text>()->value()->size(), i % 16);
      ASSERT_EQ(e.route.has_value(), keyed);
      if (keyed) {
        EXPECT_EQ(e.route->entity_id, "e" + std::to_string(i * 37));
        EXPECT_EQ(e.route->shard, 3u);
        EXPECT_EQ(e.route->epoch, 9u);
      }
    }
  }
}

TEST_F(Frames, ReleasedFrameBuffersComeBackThroughThePool) {
  FrameBufferPool pool(4096, 2);
  BatchBuilder b(pool.buffer_bytes(), &pool);
  auto m = ping(1);
  const std::uint8_t* first = nullptr;
  for (int round = 0; round < 3; ++round) {
    b.add(m.type(), "/user/a", "", 0, m.bytes());
    (void)b.finish();
    auto frame = b.release();  // as the transport hands it to ZeroMQ
    auto r = decode_frame({frame.data(), frame.size()}, registry, limits, report);
    ASSERT_TRUE(r.ok());
    ASSERT_EQ(r->envelopes.size(), 1u);
    // The frame sits at the end of its buffer: the same buffer gives the same address.
    if (round == 0) first = frame.data();
    EXPECT_EQ(frame.data(), first);
  }  // each frame is freed into the pool, and the next one is built in it
  EXPECT_EQ(pool.reused(), 2u);
  // A frame that outgrows the standard buffer still comes out whole (in a buffer of its own).
  // (Each its own recipient: a run of envelopes to one recipient shares its string.)
  auto long_path = [](int i) { return "/user/" + std::string(1000, static_cast<char>('a' + i)); };
  for (int i = 0; i < 5; ++i) b.add(m.type(), long_path(i), "", 0, m.bytes());
  (void)b.finish();
  auto frame = b.release();
  EXPECT_GT(frame.size(), pool.buffer_bytes());
  auto r = decode_frame({frame.data(), frame.size()}, registry, limits, report);
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->envelopes.size(), 5u);
  EXPECT_EQ(r->envelopes[4].recipient, long_path(4));
}

TEST_F(Frames, AFrameAtAnOddAddressDecodesFromACopyThatLivesWithTheResult) {
  auto f = frame_of(3, "/user/odd");
  std::vector<std::uint8_t> shifted(f.size() + 1);
  std::memcpy(shifted.data() + 1, f.data(), f.size());
  auto r = decode_frame({shifted.data() + 1, f.size()}, registry, limits, report);
  ASSERT_TRUE(r.ok());
  shifted.assign(shifted.size(), 0);  // the views must not point into the caller's bytes
  ASSERT_EQ(r->envelopes.size(), 3u);
  EXPECT_FALSE(r->aligned.empty());
  EXPECT_EQ(r->envelopes[2].recipient, "/user/odd");
  EXPECT_EQ(r->envelopes[2].sender, "troupe://00ff@127.0.0.1:7947/user/client");
}

TEST_F(Frames, BuilderIsReusableAfterReset) {
  BatchBuilder b;
  auto m = ping(1);
  b.add(m.type(), "/user/a", "", 0, m.bytes());
  (void)b.finish();
  b.reset();
  EXPECT_EQ(b.count(), 0u);
  b.add(m.type(), "/user/b", "", 0, m.bytes());
  auto f = b.finish();
  auto r = decode_frame(f, registry, limits, report);
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->envelopes.size(), 1u);
  EXPECT_EQ(r->envelopes[0].recipient, "/user/b");
}

TEST_F(Frames, EmptyOversizedAndTruncatedFramesAreRefused) {
  EXPECT_EQ(decode_frame({}, registry, limits, report).error(), FrameErrc::empty);
  auto f = frame_of(3);
  FrameLimits small;
  small.max_frame_bytes = f.size() - 1;
  EXPECT_EQ(decode_frame(f, registry, small, report).error(), FrameErrc::oversized);
  auto whole = decode_frame(f, registry, limits, report);
  ASSERT_TRUE(whole.ok());
  std::size_t refused = 0;
  for (std::size_t cut = 1; cut < f.size(); ++cut) {
    auto r = decode_frame(std::span(f.data(), cut), registry, limits, report);
    if (!r.ok()) {
      ++refused;
      continue;
    }
    // Only trailing alignment padding may be cut: then the content is exactly the same.
    ASSERT_EQ(r->envelopes.size(), whole->envelopes.size()) << "cut to " << cut;
    for (std::size_t i = 0; i < r->envelopes.size(); ++i) {
      EXPECT_EQ(r->envelopes[i].payload.as<test::Ping>()->seq(), whole->envelopes[i].payload.as<test::Ping>()->seq());
    }
  }
  EXPECT_GE(refused, f.size() - 8);
}

TEST_F(Frames, RandomBytesAreRefusedWithoutACrash) {
  std::mt19937_64 rng(7);
  int refused = 0;
  for (int i = 0; i < 5000; ++i) {
    std::vector<std::uint8_t> junk(1 + rng() % 300);
    for (auto& c : junk) c = static_cast<std::uint8_t>(rng());
    auto r = decode_frame(junk, registry, limits, report);
    refused += r.ok() ? 0 : 1;
  }
  EXPECT_GT(refused, 4900);
}

TEST_F(Frames, FlippedBytesNeverYieldAnUnverifiedPayload) {
  // Every single-byte corruption of a valid frame (lying lengths and offsets included) is
  // either refused, or decodes into envelopes whose payloads passed their verifier.
  auto f = frame_of(4);
  for (std::size_t i = 0; i < f.size(); ++i) {
    for (std::uint8_t x : {0x01, 0x80, 0xff}) {
      auto g = f;
      g[i] ^= x;
      FrameReport rep;
      auto r = decode_frame(g, registry, limits, rep);
      if (!r) continue;
      for (const auto& e : r->envelopes) {
        EXPECT_FALSE(registry.verify(e.payload)) << "byte " << i;
        EXPECT_EQ(e.recipient.front(), '/');
      }
    }
  }
}

TEST_F(Frames, UnknownTypeAndBadPayloadDropOnlyThatEnvelope) {
  BatchBuilder b;
  auto good = ping(1);
  b.add(good.type(), "/user/a", "", 0, good.bytes());
  b.add(type_id_of<test::Text>(), "/user/a", "", 0, good.bytes());  // not registered
  std::vector<std::uint8_t> broken(good.bytes().begin(), good.bytes().end());
  broken[0] = 0xff;  // root offset points outside the payload
  b.add(good.type(), "/user/a", "", 0, broken);
  b.add(good.type(), "/user/a", "", 0, {});  // empty payload
  b.add(good.type(), "/user/b", "", 0, good.bytes());
  auto f = b.finish();
  auto r = decode_frame(f, registry, limits, report);
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->envelopes.size(), 2u);
  EXPECT_EQ(r->envelopes[1].recipient, "/user/b");
  EXPECT_EQ(report.unknown_type, 1u);
  EXPECT_EQ(report.bad_payload, 2u);
  EXPECT_EQ(report.accepted, 2u);
}

TEST_F(Frames, MalformedAddressesAreDropped) {
  BatchBuilder b;
  auto m = ping(1);
  b.add(m.type(), "user/no-slash", "", 0, m.bytes());
  b.add(m.type(), "/user/a", "http://not-troupe", 0, m.bytes());
  b.add(m.type(), std::string("/user/\0nul", 10), "", 0, m.bytes());
  b.add(m.type(), "/" + std::string(2000, 'a'), "", 0, m.bytes());
  b.add(m.type(), "/user/ok", "", 0, m.bytes());
  auto f = b.finish();
  auto r = decode_frame(f, registry, limits, report);
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->envelopes.size(), 1u);
  EXPECT_EQ(report.bad_path, 4u);
}

// Runs of envelopes share their strings, and a string found good is not checked again: a bad one
// shared by a run, between good runs, still drops every envelope of its run.
TEST_F(Frames, ABadAddressSharedByARunDropsTheWholeRunAndNothingElse) {
  BatchBuilder b;
  auto m = ping(1);
  const std::string good_from = "troupe://00ff@127.0.0.1:7947/user/client";
  for (int i = 0; i < 3; ++i) b.add(m.type(), "/user/ok", good_from, 0, m.bytes());
  for (int i = 0; i < 3; ++i) b.add(m.type(), "user/no-slash", good_from, 0, m.bytes());
  for (int i = 0; i < 3; ++i) b.add(m.type(), "/user/ok", "http://not-troupe", 0, m.bytes());
  for (int i = 0; i < 3; ++i) b.add(m.type(), "/user/ok", good_from, 0, m.bytes());
  auto f = b.finish();
  auto r = decode_frame(f, registry, limits, report);
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->envelopes.size(), 6u);
  for (const auto& e : r->envelopes) {
    EXPECT_EQ(e.recipient, "/user/ok");
    EXPECT_EQ(e.sender, good_from);
  }
  EXPECT_EQ(report.bad_path, 6u);
}

TEST_F(Frames, AFrameAtAnOddAddressDecodes) {
  auto f = frame_of(3);
  std::vector<std::uint8_t> shifted(f.size() + 1);
  std::copy(f.begin(), f.end(), shifted.begin() + 1);
  auto r = decode_frame({shifted.data() + 1, f.size()}, registry, limits, report);
  ASSERT_TRUE(r.ok()) << r.error().message();
  ASSERT_EQ(r->envelopes.size(), 3u);
  EXPECT_EQ(r->envelopes[2].payload.as<test::Ping>()->seq(), 2u);
}

TEST_F(Frames, OriginAndTargetNodeRoundTrip) {
  BatchBuilder b;
  auto m = ping(1);
  b.add(m.type(), "/user/a", "/user/sender", 0, m.bytes());
  auto f = b.finish("troupe://00000000000000ab@127.0.0.1:7947", 0xabcdu);
  auto r = decode_frame(f, registry, limits, report);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->origin, "troupe://00000000000000ab@127.0.0.1:7947");
  EXPECT_EQ(r->target_node, 0xabcdu);
  ASSERT_EQ(r->envelopes.size(), 1u);
  EXPECT_EQ(r->envelopes[0].sender, "/user/sender");
}

TEST_F(Frames, MalformedOriginRefusesTheFrame) {
  BatchBuilder b;
  auto m = ping(1);
  b.add(m.type(), "/user/a", "", 0, m.bytes());
  auto f = b.finish("http://elsewhere", 1);
  EXPECT_EQ(decode_frame(f, registry, limits, report).error(), FrameErrc::malformed);
  b.reset();
  b.add(m.type(), "/user/a", "", 0, m.bytes());
  auto g = b.finish("troupe://" + std::string(2000, 'x'), 1);
  EXPECT_EQ(decode_frame(g, registry, limits, report).error(), FrameErrc::malformed);
}

// FlatBuffers lets many tables point at one vector, and the verifier accepts it. A frame whose
// envelopes share one payload (or entity id) would decode into a copy per envelope: 4,000
// envelopes over one 4 KiB payload are 16 MiB of copies from a frame of about 100 KiB. No frame
// BatchBuilder writes shares them, so such a frame is refused whole, before any copy is kept.
TEST_F(Frames, EnvelopesSharingOnePayloadAreRefusedBeforeTheyAreCopied) {
  registry.add<test::Text>();
  auto text = Message::build<test::Text>([](auto& fb) { return test::CreateText(fb, fb.CreateString(std::string(4096, 't'))); });
  auto build = [&](bool share_payload, bool share_id) {
    flatbuffers::FlatBufferBuilder fbb;
    const auto payload = fbb.CreateVector(text.bytes().data(), text.size());
    const auto id = fbb.CreateString("entity-1");
    const auto recipient = fbb.CreateString("/system/region-a");
    std::vector<flatbuffers::Offset<wire::Envelope>> envs;
    for (int i = 0; i < 4000; ++i) {
      const auto p = share_payload || i == 0 ? payload : fbb.CreateVector(text.bytes().data(), text.size());
      const auto e = share_id || i == 0 ? id : fbb.CreateString("entity-" + std::to_string(i));
      envs.push_back(wire::CreateEnvelope(fbb, text.type(), recipient, 0, 0, p, e));
    }
    fbb.Finish(wire::CreateBatch(fbb, kProtocolVersion, fbb.CreateVector(envs), fbb.CreateString("troupe://00aa@127.0.0.1:7000"), 1));
    return std::vector<std::uint8_t>(fbb.GetBufferPointer(), fbb.GetBufferPointer() + fbb.GetSize());
  };
  FrameLimits big;
  big.max_frame_bytes = 64u << 20;
  big.max_envelopes = 4096;
  auto shared = build(true, true);
  ASSERT_LT(shared.size(), 200'000u);
  auto r = decode_frame(shared, registry, big, report);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error(), FrameErrc::malformed);
  EXPECT_EQ(report.accepted, 0u);
  // The same envelopes, each with a payload of its own: decoded, all of them.
  FrameReport own;
  auto ok = decode_frame(build(false, true), registry, big, own);
  ASSERT_TRUE(ok.ok()) << ok.error().message();
  EXPECT_EQ(ok->envelopes.size(), 4000u);
  EXPECT_EQ(own.accepted, 4000u);
}

TEST_F(Frames, UnsupportedVersionAndTooManyEnvelopesAreRefused) {
  flatbuffers::FlatBufferBuilder fbb;
  fbb.Finish(wire::CreateBatch(fbb, kProtocolVersion + 1, 0));
  EXPECT_EQ(decode_frame({fbb.GetBufferPointer(), fbb.GetSize()}, registry, limits, report).error(),
            FrameErrc::unsupported_version);
  auto f = frame_of(10);
  FrameLimits few;
  few.max_envelopes = 5;
  auto r = decode_frame(f, registry, few, report);
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(r.error() == FrameErrc::too_many_envelopes || r.error() == FrameErrc::malformed) << r.error().message();
}

}  // namespace
}  // namespace troupe::remoting
