#pragma once
/// \file
/// Logging helpers shared by every layer: per-node spdlog loggers (the node id is in every line)
/// and a throttled logger for events that can repeat at line rate (drops, dead letters).

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include <spdlog/spdlog.h>

namespace troupe {

/// A logger whose every line carries `node=<node_id>`. Lines go to stderr. Thread-safe.
std::shared_ptr<spdlog::logger> make_node_logger(const std::string& node_id);

/// The logger used when no node logger was given (node id "-").
std::shared_ptr<spdlog::logger> default_logger();

/// Logs at most one line per `interval`; lines in between are counted and the count is reported
/// with the next line that gets through. Thread-safe; lock-free when suppressing.
class ThrottledLog {
 public:
  explicit ThrottledLog(std::chrono::milliseconds interval = std::chrono::seconds(1)) : interval_(interval) {}

  template <class... Args>
  void warn(spdlog::logger& log, spdlog::format_string_t<Args...> fmt, Args&&... args) {
    std::uint64_t suppressed = 0;
    if (!admit(suppressed)) return;
    log.warn(fmt, std::forward<Args>(args)...);
    if (suppressed) log.warn("({} similar lines suppressed)", suppressed);
  }

 private:
  bool admit(std::uint64_t& suppressed) noexcept;
  std::chrono::milliseconds interval_;
  std::atomic<std::int64_t> next_ns_{0};
  std::atomic<std::uint64_t> suppressed_{0};
};

}  // namespace troupe
