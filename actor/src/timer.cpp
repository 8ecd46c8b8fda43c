#include <troupe/actor/timer.hpp>

#include <pthread.h>

#include <algorithm>
#include <thread>
#include <vector>

namespace troupe {

namespace {

class RealTimerService final : public TimerService {
 public:
  RealTimerService() : thread_([this] { loop(); }) {
    pthread_setname_np(thread_.native_handle(), "troupe-timers");  // for top -H, perf and gdb
  }
  ~RealTimerService() override { shutdown(); }

  std::uint64_t schedule(std::chrono::nanoseconds delay, std::function<void()> fn) override {
    std::lock_guard lk(mu_);
    if (stop_) return 0;
    const auto when = Clock::now() + delay;
    const auto id = next_id_++;
    due_.emplace(when, id);
    fns_.emplace(id, std::make_pair(when, std::move(fn)));
    // Wake the timer thread only if it would sleep past this deadline: an ask's timeout, far
    // away, then costs no context switch (it matters on the ask round trip).
    if (when < sleep_until_) cv_.notify_one();
    return id;
  }

  bool cancel(std::uint64_t id) override {
    std::function<void()> victim;  // destroyed outside the lock
    std::lock_guard lk(mu_);
    auto it = fns_.find(id);
    if (it == fns_.end()) return false;
    auto [lo, hi] = due_.equal_range(it->second.first);
    for (auto d = lo; d != hi; ++d) {
      if (d->second == id) {
        due_.erase(d);
        break;
      }
    }
    victim = std::move(it->second.second);
    fns_.erase(it);
    return true;
  }

  Clock::time_point now() const override { return Clock::now(); }

  void shutdown() override {
    std::unordered_map<std::uint64_t, std::pair<Clock::time_point, std::function<void()>>> dropped;
    {
      std::lock_guard lk(mu_);
      if (stop_) return;
      stop_ = true;
      dropped.swap(fns_);
      due_.clear();
      cv_.notify_one();
    }
    if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id()) thread_.join();
  }

 private:
  void loop() {
    std::unique_lock lk(mu_);
    while (!stop_) {
      const auto now = Clock::now();
      // Idle, or the next deadline is far: look again within kHorizon at the latest, so that a
      // new timer due later than that needs no wake-up.
      const auto horizon = now + kHorizon;
      if (due_.empty() || due_.begin()->first > now) {
        sleep_until_ = due_.empty() ? horizon : std::min(due_.begin()->first, horizon);
        const auto until = sleep_until_;  // a copy: cancel() may erase the node while we wait
        cv_.wait_until(lk, until);
        sleep_until_ = Clock::time_point::min();
        continue;
      }
      auto first = due_.begin();
      const auto id = first->second;
      due_.erase(first);
      auto it = fns_.find(id);
      auto fn = std::move(it->second.second);
      fns_.erase(it);
      lk.unlock();
      fn();
      fn = nullptr;
      lk.lock();
    }
  }

  static constexpr std::chrono::milliseconds kHorizon{100};
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  // When the thread is due to wake up (min while it is running timers: no wake-up needed).
  Clock::time_point sleep_until_ = Clock::time_point::min();
  std::uint64_t next_id_ = 1;
  std::multimap<Clock::time_point, std::uint64_t> due_;
  std::unordered_map<std::uint64_t, std::pair<Clock::time_point, std::function<void()>>> fns_;
  std::thread thread_;  // last: starts after the members above exist
};

}  // namespace

std::shared_ptr<TimerService> make_real_timer_service() { return std::make_shared<RealTimerService>(); }

std::uint64_t ManualTimerService::schedule(std::chrono::nanoseconds delay, std::function<void()> fn) {
  std::lock_guard lk(mu_);
  const auto when = now_ + delay;
  const auto id = next_id_++;
  due_.emplace(when, id);
  fns_.emplace(id, std::make_pair(when, std::move(fn)));
  armed_.notify_all();
  return id;
}

bool ManualTimerService::await_pending(std::size_t n, std::chrono::milliseconds timeout) {
  std::unique_lock lk(mu_);
  return armed_.wait_for(lk, timeout, [&] { return fns_.size() >= n; });
}

bool ManualTimerService::cancel(std::uint64_t id) {
  std::function<void()> victim;
  std::lock_guard lk(mu_);
  auto it = fns_.find(id);
  if (it == fns_.end()) return false;
  auto [lo, hi] = due_.equal_range(it->second.first);
  for (auto d = lo; d != hi; ++d) {
    if (d->second == id) {
      due_.erase(d);
      break;
    }
  }
  victim = std::move(it->second.second);
  fns_.erase(it);
  return true;
}

TimerService::Clock::time_point ManualTimerService::now() const {
  std::lock_guard lk(mu_);
  return now_;
}

void ManualTimerService::shutdown() {
  decltype(fns_) dropped;
  std::lock_guard lk(mu_);
  dropped.swap(fns_);
  due_.clear();
}

void ManualTimerService::advance(std::chrono::nanoseconds d) {
  std::unique_lock lk(mu_);
  const auto target = now_ + d;
  for (;;) {
    auto first = due_.begin();
    if (first == due_.end() || first->first > target) break;
    now_ = std::max(now_, first->first);
    const auto id = first->second;
    due_.erase(first);
    auto it = fns_.find(id);
    auto fn = std::move(it->second.second);
    fns_.erase(it);
    lk.unlock();
    fn();
    fn = nullptr;
    lk.lock();
  }
  now_ = target;
}

std::size_t ManualTimerService::pending() const {
  std::lock_guard lk(mu_);
  return fns_.size();
}

}  // namespace troupe
