#pragma once
/// \file
/// Supervision: a parent decides what happens to a child that failed (threw from receive,
/// pre_start or post_restart). The strategy is the parent's (Actor::supervisor_strategy()); the
/// top-level actors' parent is the /user guardian (ActorSystemConfig::user_guardian_strategy).

#include <chrono>
#include <exception>
#include <functional>
#include <optional>

namespace troupe {

/// What to do with a failed child.
enum class Directive {
  resume,    ///< keep the instance and its state, go on with the next message
  restart,   ///< replace the instance with a fresh one (children are stopped first)
  stop,      ///< stop the child; watchers get Terminated{Failed}
  escalate,  ///< fail the parent with the child's exception; the child waits for its fate
};

/// Restarts allowed before a failing child is stopped instead: at most `max_restarts`
/// within `within` (counted per child; the window restarts after a quiet period).
struct RestartBudget {
  unsigned max_restarts = 10;
  std::chrono::milliseconds within = std::chrono::seconds(60);
};

/// Restart after exponentially growing delays: attempt n waits min(max, min * 2^(n-1)),
/// stretched by a random factor in [1, 1 + jitter). The child stays suspended (its messages
/// wait) until then.
struct Backoff {
  std::chrono::milliseconds min{100};
  std::chrono::milliseconds max{std::chrono::seconds(10)};
  double jitter = 0.2;
};

/// The delay before restart number `attempt` (1-based) given a uniform random `u` in [0, 1).
/// Pure; exposed for tests and tools.
std::chrono::nanoseconds backoff_delay(unsigned attempt, const Backoff& b, double u) noexcept;

struct SupervisorStrategy {
  enum class Scope {
    one_for_one,  ///< the directive applies to the failed child only
    all_for_one,  ///< restart/stop apply to all children of the parent
  };
  Scope scope = Scope::one_for_one;
  /// Maps the failure to a directive; empty means "restart". Runs on the parent's turn.
  std::function<Directive(std::exception_ptr)> decider;
  RestartBudget budget{};
  /// When set, restarts are delayed (back-off supervision).
  std::optional<Backoff> backoff;

  /// Default: restart the failed child, within the default budget.
  static SupervisorStrategy restarting() { return {}; }
  /// Stop any child that fails.
  static SupervisorStrategy stopping() {
    SupervisorStrategy s;
    s.decider = [](std::exception_ptr) { return Directive::stop; };
    return s;
  }
};

}  // namespace troupe
