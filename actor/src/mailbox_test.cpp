// The mailbox's contract with the cell that drains it: FIFO per producer, and a push caught
// between its two steps shows as "nothing to pop yet, but not empty" (Cell::process yields then).

#include "mailbox.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

namespace troupe::detail {
namespace {

struct Item : MpscNode {
  int producer = 0;
  std::uint64_t seq = 0;
};

TEST(Mailbox, PopsInOrderAndIsEmptyOnlyWhenNothingIsQueued) {
  Mailbox m;
  EXPECT_EQ(m.pop(), nullptr);
  EXPECT_FALSE(m.maybe_nonempty());
  Item items[5];
  for (std::size_t i = 0; i < 5; ++i) {
    items[i].seq = i;
    m.push(&items[i]);
  }
  EXPECT_TRUE(m.maybe_nonempty());
  for (std::size_t i = 0; i < 5; ++i) {
    auto* n = static_cast<Item*>(m.pop());
    ASSERT_NE(n, nullptr);
    EXPECT_EQ(n->seq, i);
  }
  EXPECT_EQ(m.pop(), nullptr);
  EXPECT_FALSE(m.maybe_nonempty());
}

TEST(Mailbox, APushHalfWayHidesItselfAndWhatFollowsUntilItIsLinked) {
  Mailbox m;
  Item a, b, c;
  m.push(&a);
  // A producer claims its place and stops there (preempted); another pushes after it. Even a
  // is held back: the consumer hands out a node once it knows the node's successor.
  MpscNode* prev = m.claim(&b);
  m.push(&c);
  EXPECT_EQ(m.pop(), nullptr) << "b is not linked yet";
  EXPECT_TRUE(m.maybe_nonempty()) << "the consumer must come back (Cell::process reports it)";
  EXPECT_EQ(m.pop(), nullptr);
  Mailbox::link(prev, &b);
  EXPECT_EQ(m.pop(), &a);
  EXPECT_EQ(m.pop(), &b);
  EXPECT_EQ(m.pop(), &c);
  EXPECT_EQ(m.pop(), nullptr);
  EXPECT_FALSE(m.maybe_nonempty());
}

TEST(Mailbox, ConcurrentProducersLoseNothingAndKeepTheirOwnOrder) {
  constexpr int kProducers = 4;
  constexpr std::uint64_t kEach = 50'000;
  Mailbox m;
  std::vector<std::unique_ptr<Item[]>> items;
  for (int p = 0; p < kProducers; ++p) items.push_back(std::make_unique<Item[]>(kEach));
  std::atomic<bool> go{false};
  std::vector<std::thread> producers;
  for (int p = 0; p < kProducers; ++p) {
    producers.emplace_back([&, p] {
      while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
      for (std::uint64_t i = 0; i < kEach; ++i) {
        items[p][i].producer = p;
        items[p][i].seq = i;
        m.push(&items[p][i]);
      }
    });
  }
  go.store(true, std::memory_order_release);
  std::vector<std::uint64_t> next(kProducers, 0);
  std::uint64_t got = 0;
  while (got < kProducers * kEach) {
    auto* n = static_cast<Item*>(m.pop());
    if (!n) {
      std::this_thread::yield();  // a push half-way, or the producers not there yet
      continue;
    }
    ASSERT_EQ(n->seq, next[n->producer]) << "producer " << n->producer;
    ++next[n->producer];
    ++got;
  }
  for (auto& t : producers) t.join();
  EXPECT_EQ(m.pop(), nullptr);
  EXPECT_FALSE(m.maybe_nonempty());
}

}  // namespace
}  // namespace troupe::detail
