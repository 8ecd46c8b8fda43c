#pragma once
/// \file
/// A latency histogram with fixed buckets (seconds), as Prometheus exposes them: counts per
/// bucket, their sum and number. Plain values: the owner serialises access (a protocol core on
/// one thread, an actor) and copies it out for the metrics.

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>

namespace troupe {

struct Histogram {
  /// Upper bounds (seconds) of the buckets; one more bucket (+Inf) follows.
  static constexpr std::array<double, 14> kBounds = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                                     1,     2.5,  5,     10,   30,  60,   120};
  std::array<std::uint64_t, kBounds.size() + 1> counts{};  ///< per bucket, not cumulative
  double sum = 0;                                          ///< seconds
  std::uint64_t count = 0;

  void observe(double seconds) noexcept {
    if (seconds < 0) seconds = 0;
    std::size_t i = 0;
    while (i < kBounds.size() && seconds > kBounds[i]) ++i;
    ++counts[i];
    sum += seconds;
    ++count;
  }
  template <class Rep, class Period>
  void observe(std::chrono::duration<Rep, Period> d) noexcept {
    observe(std::chrono::duration<double>(d).count());
  }
};

}  // namespace troupe
