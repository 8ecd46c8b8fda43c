#include <troupe/serialization/message.hpp>

#include <gtest/gtest.h>

#include "test_messages_generated.h"

namespace troupe {
namespace {

TEST(TypeId, StableHashOfFullyQualifiedName) {
  static_assert(type_id_of<test::Ping>() == type_id_of_name("troupe.test.Ping"));
  EXPECT_NE(type_id_of<test::Ping>(), type_id_of<test::Text>());
  // FNV-1a 64 reference value: changing the hash would break the wire format.
  EXPECT_EQ(type_id_of_name("a"), 0xaf63dc4c8601ec8cull);
}

TEST(Message, BuildAndReadBack) {
  auto m = Message::build<test::Ping>([](auto& b) { return test::CreatePing(b, 42, 7); });
  ASSERT_TRUE(m);
  EXPECT_TRUE(m.is<test::Ping>());
  EXPECT_FALSE(m.is<test::Text>());
  EXPECT_EQ(m.as<test::Text>(), nullptr);
  ASSERT_NE(m.as<test::Ping>(), nullptr);
  EXPECT_EQ(m.as<test::Ping>()->seq(), 42u);
  EXPECT_EQ(m.as<test::Ping>()->from(), 7u);
}

TEST(Message, CopiesShareTheBufferWithoutCopyingBytes) {
  auto m = Message::build<test::Text>([](auto& b) { return test::CreateTextDirect(b, "hello"); });
  const auto* bytes = m.bytes().data();
  Message c = m;
  EXPECT_EQ(c.bytes().data(), bytes);
  EXPECT_EQ(m.use_count(), 2u);
  Message moved = std::move(c);
  EXPECT_EQ(moved.bytes().data(), bytes);
  EXPECT_EQ(m.use_count(), 2u);
  EXPECT_FALSE(c);  // NOLINT: moved-from is empty by contract
}

TEST(Message, PayloadIsAlignedForFlatBuffers) {
  auto m = Message::build<test::Ping>([](auto& b) { return test::CreatePing(b, 1, 1); });
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(m.bytes().data()) % 8, 0u);
}

}  // namespace
}  // namespace troupe
