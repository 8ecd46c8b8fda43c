#pragma once
/// \file
/// The seams of the membership protocol: a monotonic clock and a datagram transport, injected
/// so that the same protocol code runs on Boost.Asio UDP in production and on virtual time and
/// virtual links in the simulator (tests/sim).

#include <chrono>
#include <compare>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>

namespace troupe::membership {

/// A UDP endpoint: an IPv4/IPv6 literal or a host name, and a port.
struct UdpEndpoint {
  std::string host;
  std::uint16_t port = 0;
  /// "host:port" ("[v6]:port" for IPv6 literals)
  std::string to_string() const {
    return (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":" + std::to_string(port);
  }
  friend auto operator<=>(const UdpEndpoint&, const UdpEndpoint&) = default;
};

/// Monotonic time.
class Clock {
 public:
  virtual ~Clock() = default;
  virtual std::chrono::nanoseconds now() const = 0;
};

/// Sends datagrams. Received datagrams are handed to the handler given by the owner of the
/// transport (the protocol's runtime), one at a time, on the protocol's thread.
class PacketTransport {
 public:
  using Handler = std::function<void(const UdpEndpoint& from, std::span<const std::uint8_t> packet)>;
  virtual ~PacketTransport() = default;
  /// Sends one datagram, best effort (a failure is counted by the transport, not reported).
  virtual void send(const UdpEndpoint& to, std::span<const std::uint8_t> packet) = 0;
  /// The largest payload send() accepts (what fits one datagram under the MTU after sealing).
  virtual std::size_t max_payload() const = 0;
};

}  // namespace troupe::membership
