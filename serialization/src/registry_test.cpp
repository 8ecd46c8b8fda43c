#include <troupe/serialization/registry.hpp>

#include <cstring>

#include <gtest/gtest.h>

#include <atomic>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "test_messages_generated.h"

namespace troupe {
namespace {

std::vector<std::uint8_t> ping_bytes(std::uint64_t seq) {
  flatbuffers::FlatBufferBuilder b;
  b.Finish(test::CreatePing(b, seq, 1));
  return {b.GetBufferPointer(), b.GetBufferPointer() + b.GetSize()};
}

TEST(MessageRegistry, DecodesARegisteredVerifiedBuffer) {
  MessageRegistry reg;
  reg.add<test::Ping>();
  auto bytes = ping_bytes(9);
  auto r = reg.decode(type_id_of<test::Ping>(), bytes);
  ASSERT_TRUE(r.ok()) << r.error().message();
  EXPECT_EQ(r->as<test::Ping>()->seq(), 9u);
  EXPECT_EQ(reg.stats().accepted, 1u);
  EXPECT_EQ(reg.name_of(type_id_of<test::Ping>()), "troupe.test.Ping");
}

TEST(MessageRegistry, BytesAtAnOddAddressAreVerifiedOnAnAlignedCopy) {
  // A payload nested in another buffer may sit at any address its sender chose: the verifier
  // must never read scalars in place there (UBSan caught it under the sharding fuzzer).
  MessageRegistry reg;
  reg.add<test::Ping>();
  auto bytes = ping_bytes(11);
  std::vector<std::uint8_t> odd(bytes.size() + 1);
  std::memcpy(odd.data() + 1, bytes.data(), bytes.size());
  auto r = reg.decode(type_id_of<test::Ping>(), {odd.data() + 1, bytes.size()});
  ASSERT_TRUE(r.ok()) << r.error().message();
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(r->bytes().data()) % 16, 0u);
  EXPECT_EQ(r->as<test::Ping>()->seq(), 11u);
}

TEST(MessageRegistry, RejectsUnregisteredTypeId) {
  MessageRegistry reg;
  reg.add<test::Ping>();
  auto bytes = ping_bytes(1);
  auto r = reg.decode(type_id_of<test::Text>(), bytes);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error(), DecodeErrc::unknown_type);
  EXPECT_EQ(reg.stats().unknown_type, 1u);
  EXPECT_EQ(reg.stats().accepted, 0u);
}

TEST(MessageRegistry, ALookUpRememberedByOneRegistryNeverAnswersForAnother) {
  // A thread remembers its last look-up: another registry (even one built where a destroyed one
  // was) must still refuse a type it does not know, and accept it once registered.
  auto bytes = ping_bytes(3);
  {
    auto knows = std::make_unique<MessageRegistry>();
    knows->add<test::Ping>();
    ASSERT_TRUE(knows->decode(type_id_of<test::Ping>(), bytes).ok());
  }
  for (int round = 0; round < 2; ++round) {
    auto unaware = std::make_unique<MessageRegistry>();  // may reuse the destroyed one's memory
    auto r = unaware->decode(type_id_of<test::Ping>(), bytes);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error(), DecodeErrc::unknown_type);
    unaware->add<test::Ping>();
    ASSERT_TRUE(unaware->decode(type_id_of<test::Ping>(), bytes).ok());
    EXPECT_EQ(unaware->stats().unknown_type, 1u);
    EXPECT_EQ(unaware->stats().accepted, 1u);
  }
}

TEST(MessageRegistry, RejectsBufferThatFailsVerification) {
  MessageRegistry reg;
  reg.add<test::Text>();
  // A Text whose string offset points far outside the buffer.
  flatbuffers::FlatBufferBuilder b;
  b.Finish(test::CreateTextDirect(b, "hello world"));
  std::vector<std::uint8_t> bytes(b.GetBufferPointer(), b.GetBufferPointer() + b.GetSize());
  bytes.resize(bytes.size() - 8);  // truncate the string's bytes away
  auto r = reg.decode(type_id_of<test::Text>(), bytes);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error(), DecodeErrc::verification_failed);
  EXPECT_EQ(reg.stats().verification_failed, 1u);
}

TEST(MessageRegistry, RejectsEmptyAndOversizedBuffers) {
  MessageRegistry reg(DecodeLimits{.max_bytes = 16});
  reg.add<test::Text>();
  EXPECT_EQ(reg.decode(type_id_of<test::Text>(), {}).error(), DecodeErrc::empty);
  std::vector<std::uint8_t> big(17, 0);
  EXPECT_EQ(reg.decode(type_id_of<test::Text>(), big).error(), DecodeErrc::oversized);
  EXPECT_EQ(reg.stats().empty, 1u);
  EXPECT_EQ(reg.stats().oversized, 1u);
}

TEST(MessageRegistry, RandomBytesNeverVerifyAsATableWithAString) {
  MessageRegistry reg;
  reg.add<test::Text>();
  std::mt19937_64 rng(12345);
  int accepted = 0;
  for (int i = 0; i < 2000; ++i) {
    std::vector<std::uint8_t> junk(8 + rng() % 120);
    for (auto& c : junk) c = static_cast<std::uint8_t>(rng());
    auto r = reg.decode(type_id_of<test::Text>(), junk);
    if (r.ok()) {
      ++accepted;  // the verifier accepted it: then reading it must be safe
      const auto* t = r->as<test::Text>();
      if (t->value()) (void)t->value()->str();
    }
  }
  EXPECT_EQ(reg.stats().accepted + reg.stats().verification_failed, 2000u);
  EXPECT_LT(accepted, 2000);
}

TEST(MessageRegistry, TypeIdCollisionIsAnError) {
  MessageRegistry reg;
  reg.add(42, "a.A", [](flatbuffers::Verifier&) { return true; });
  reg.add(42, "a.A", [](flatbuffers::Verifier&) { return true; });  // same name: harmless
  EXPECT_THROW(reg.add(42, "b.B", [](flatbuffers::Verifier&) { return true; }), std::logic_error);
}

// Decoders read the registry without a lock while types are still being registered (a node
// registers more when it starts sharding): every decode of the registered type succeeds, and
// every new type is there afterwards.
TEST(MessageRegistry, DecodesWhileOtherTypesAreRegistered) {
  MessageRegistry reg;
  reg.add<test::Ping>();
  const auto bytes = ping_bytes(5);
  std::atomic<bool> done{false};
  std::atomic<int> failed{0};
  std::vector<std::thread> readers;
  for (int t = 0; t < 2; ++t) {
    readers.emplace_back([&] {
      while (!done.load()) {
        if (!reg.decode(type_id_of<test::Ping>(), bytes).ok()) ++failed;
      }
    });
  }
  for (TypeId id = 1000; id < 1200; ++id) {
    reg.add(id, "t." + std::to_string(id), [](flatbuffers::Verifier&) { return true; });
  }
  done = true;
  for (auto& r : readers) r.join();
  EXPECT_EQ(failed.load(), 0);
  for (TypeId id = 1000; id < 1200; ++id) EXPECT_EQ(reg.name_of(id), "t." + std::to_string(id));
  EXPECT_TRUE(reg.contains(type_id_of<test::Ping>()));
}

}  // namespace
}  // namespace troupe
