#pragma once
// When the remoting I/O thread busy-polls after a round of work instead of blocking at once
// (TransportConfig::idle_spin).

#include <chrono>
#include <cstddef>

namespace troupe::remoting::detail {

/// A request's reply, or the next request of a conversation, usually follows a round of a few
/// messages within microseconds: polling on for `spin` catches it without a sleep and a wake-up
/// (a remote ask's round trip halves). A round that moved a stream's worth of messages, or that
/// left messages waiting for room in ZeroMQ's queue, is followed by the next frame anyway, and a
/// wake-up is then shared by all its messages; polling there only takes the core from the
/// threads that produce and consume the stream (on 2 cores, a fifth of the sharded tell's rate).
struct SpinPolicy {
  using time_point = std::chrono::steady_clock::time_point;
  /// Envelopes sent and received in one round from which it counts as a stream's.
  static constexpr std::size_t kStreamRound = 16;

  std::chrono::microseconds spin;

  /// Until when to busy-poll after a round at `now` that sent and received `moved` envelopes;
  /// `held_back`: some peer's messages waited for room in ZeroMQ's queue (the poll wakes the
  /// thread when there is). The epoch: block at once.
  time_point after_round(time_point now, std::size_t moved, bool held_back) const noexcept {
    if (moved >= kStreamRound || held_back || spin.count() <= 0) return time_point{};
    return now + spin;
  }
};

}  // namespace troupe::remoting::detail
