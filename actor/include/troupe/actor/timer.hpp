#pragma once
/// \file
/// TimerService: where an ActorSystem's timers (schedule_once/every, ask timeouts) come from.
/// Injected so that tests drive time by hand (ManualTimerService) instead of sleeping.

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <unordered_map>

namespace troupe {

class TimerService {
 public:
  using Clock = std::chrono::steady_clock;
  virtual ~TimerService() = default;
  /// Runs `fn` once, no earlier than `delay` from now, on the service's own thread (real time)
  /// or inside advance() (manual time). Returns an id for cancel(). Thread-safe.
  virtual std::uint64_t schedule(std::chrono::nanoseconds delay, std::function<void()> fn) = 0;
  /// Cancels a pending timer; returns false if it already ran or is running. Thread-safe.
  virtual bool cancel(std::uint64_t id) = 0;
  /// The service's notion of now.
  virtual Clock::time_point now() const = 0;
  /// Drops every pending timer without running it and stops the thread, if any. Idempotent.
  virtual void shutdown() = 0;
};

/// Real time: one thread sleeping until the earliest deadline.
std::shared_ptr<TimerService> make_real_timer_service();

/// Manual time for deterministic tests: nothing happens until advance() is called, which runs
/// every timer that became due, in deadline order, on the calling thread.
class ManualTimerService final : public TimerService {
 public:
  std::uint64_t schedule(std::chrono::nanoseconds delay, std::function<void()> fn) override;
  bool cancel(std::uint64_t id) override;
  Clock::time_point now() const override;
  void shutdown() override;
  /// Moves time forward by `d`, running due timers (including ones they schedule that fall due
  /// within the same window).
  void advance(std::chrono::nanoseconds d);
  /// Number of pending timers.
  std::size_t pending() const;
  /// Waits (up to `timeout`) until at least `n` timers are pending; false on timeout. Lets a test
  /// wait for another thread to arm a timer before it moves time.
  bool await_pending(std::size_t n, std::chrono::milliseconds timeout);

 private:
  mutable std::mutex mu_;
  std::condition_variable armed_;
  Clock::time_point now_{};
  std::uint64_t next_id_ = 1;
  std::multimap<Clock::time_point, std::uint64_t> due_;
  std::unordered_map<std::uint64_t, std::pair<Clock::time_point, std::function<void()>>> fns_;
};

}  // namespace troupe
