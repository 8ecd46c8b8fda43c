#pragma once
// Intrusive multi-producer single-consumer queue (Vyukov's algorithm): a push is one atomic
// exchange and one store, a pop touches no shared counter; no allocation beyond the node.

#include <atomic>

namespace troupe::detail {

struct MpscNode {
  std::atomic<MpscNode*> next{nullptr};
};

class Mailbox {
 public:
  Mailbox() noexcept : head_(&stub_), tail_(&stub_) {}
  Mailbox(const Mailbox&) = delete;
  Mailbox& operator=(const Mailbox&) = delete;

  /// Any thread. seq_cst: the caller then reads the actor's scheduled flag (Dekker pairing with
  /// the consumer's clear-then-check in Cell::finish_turn).
  void push(MpscNode* n) noexcept { link(claim(n), n); }
  /// A push's two steps, apart for tests: between them a pop finds nothing yet while
  /// maybe_nonempty() is true (a producer preempted there holds the consumer up).
  MpscNode* claim(MpscNode* n) noexcept {
    n->next.store(nullptr, std::memory_order_relaxed);
    return head_.exchange(n, std::memory_order_seq_cst);
  }
  static void link(MpscNode* prev, MpscNode* n) noexcept { prev->next.store(n, std::memory_order_release); }

  /// Consumer only. nullptr when empty or when a producer is half-way through a push (then
  /// maybe_nonempty() is true and a later pop will succeed).
  MpscNode* pop() noexcept {
    MpscNode* tail = tail_;
    MpscNode* next = tail->next.load(std::memory_order_acquire);
    if (tail == &stub_) {
      if (!next) return nullptr;
      tail_ = next;
      tail = next;
      next = next->next.load(std::memory_order_acquire);
    }
    if (next) {
      tail_ = next;
      // The next node was written by another core: start fetching it while this one is handled.
      __builtin_prefetch(next);
      return tail;
    }
    if (tail != head_.load(std::memory_order_acquire)) return nullptr;
    push(&stub_);
    next = tail->next.load(std::memory_order_acquire);
    if (next) {
      tail_ = next;
      return tail;
    }
    return nullptr;
  }

  /// Consumer only. False only when no message is queued or being queued.
  bool maybe_nonempty() const noexcept {
    return tail_ != &stub_ || head_.load(std::memory_order_seq_cst) != &stub_;
  }

 private:
  std::atomic<MpscNode*> head_;  // producers' end
  MpscNode* tail_;               // consumer's end
  MpscNode stub_;
};

}  // namespace troupe::detail
