#include <troupe/serialization/log.hpp>

#include <spdlog/sinks/stdout_color_sinks.h>

namespace troupe {

std::shared_ptr<spdlog::logger> make_node_logger(const std::string& node_id) {
  auto sink = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
  auto log = std::make_shared<spdlog::logger>("node=" + node_id, std::move(sink));
  log->set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%-5l%$ [%n] %v");
  log->set_level(spdlog::get_level());
  return log;
}

std::shared_ptr<spdlog::logger> default_logger() {
  static const auto log = make_node_logger("-");
  return log;
}

bool ThrottledLog::admit(std::uint64_t& suppressed) noexcept {
  const auto now = std::chrono::duration_cast<std::chrono::nanoseconds>(
                       std::chrono::steady_clock::now().time_since_epoch()).count();
  auto next = next_ns_.load(std::memory_order_relaxed);
  if (now < next || !next_ns_.compare_exchange_strong(next, now + std::chrono::nanoseconds(interval_).count())) {
    suppressed_.fetch_add(1, std::memory_order_relaxed);
    return false;
  }
  suppressed = suppressed_.exchange(0, std::memory_order_relaxed);
  return true;
}

}  // namespace troupe
