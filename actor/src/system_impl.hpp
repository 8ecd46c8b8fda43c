#pragma once
// ActorSystem's private state, shared by the runtime's translation units.

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>

#include <troupe/actor/actor_system.hpp>
#include <troupe/serialization/log.hpp>

#include "cell.hpp"
#include "dispatcher.hpp"

namespace troupe {

struct ActorSystem::Impl {
  Impl(ActorSystem& owner, ActorSystemConfig cfg);

  /// Counts and logs (throttled) an undeliverable message; answers a waiting ask.
  void dead_letter(const Message& msg, const ActorRef& sender, const std::string& recipient,
                   const char* why);
  void on_stopped(detail::Cell* c);
  /// Blocks until `c` is dead.
  void await_dead(detail::Cell* c);

  ActorSystem& owner;
  ActorSystemConfig config;
  std::shared_ptr<spdlog::logger> log;
  MessageRegistry registry;
  std::shared_ptr<TimerService> timers;
  detail::Dispatcher dispatcher;
  unsigned throughput;

  detail::Ref<detail::Cell> root, user, system;

  std::atomic<std::uint64_t> next_id{1};
  std::atomic<std::uint64_t> spawned{0}, stopped{0}, dead_letters{0}, failures{0}, restarts{0},
      failed_dropped{0}, escalations{0}, callback_failures{0};
  ThrottledLog dead_letter_log;
  std::mutex term_mu;
  std::condition_variable term_cv;
  std::atomic<bool> shut_down{false};
};

}  // namespace troupe
