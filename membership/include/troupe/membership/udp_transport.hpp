#pragma once
/// \file
/// The production PacketTransport: sealed datagrams over UDP (Boost.Asio), one I/O thread that is
/// also the membership protocol's thread (handlers, post() and timers all run on it).
///
/// Every datagram that is not delivered is counted (UdpTransportStats) and logged at most once a
/// second: datagrams that fail to open (by SealErrc), truncated ones (larger than max_inbound),
/// outbound payloads over max_payload(), seal failures, resolve and send errors.
///
/// The socket also reads its error queue (IP_RECVERR/IPV6_RECVERR, Linux): an ICMP port
/// unreachable for a datagram it sent means nothing listens at that endpoint any more (a process
/// that died on a host that lives) and goes to the unreachable handler. Other ICMP errors (host or
/// network unreachable: what a partition can look like too) are only counted.

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include <spdlog/fwd.h>

#include <troupe/membership/packet_seal.hpp>
#include <troupe/membership/packet_transport.hpp>
#include <troupe/serialization/result.hpp>

namespace troupe::membership {

/// std::chrono::steady_clock as a Clock.
class SteadyClock final : public Clock {
 public:
  std::chrono::nanoseconds now() const override;
};

struct UdpTransportConfig {
  /// Address to bind: an IPv4/IPv6 literal ("0.0.0.0", "::" for every interface) or a host name
  /// (resolved once, at start). Tests bind 127.0.0.1.
  std::string bind_host = "127.0.0.1";
  /// UDP port; 0 picks an ephemeral port (see local_endpoint()).
  std::uint16_t port = 0;
  /// Path MTU assumed for every datagram sent: max_payload() keeps sealed datagrams within it, so
  /// they are never fragmented. 1400 leaves room for tunnels/VPN encapsulation under Ethernet's
  /// 1500; raise it only on networks known to carry more.
  std::size_t mtu = 1400;
  /// Receive buffer: a longer datagram is dropped as truncated. 64 KiB holds any UDP datagram.
  std::size_t max_inbound = 64 * 1024;
};

/// Counters since start. Any thread may read them through UdpTransport::stats().
struct UdpTransportStats {
  std::uint64_t sent = 0;                 ///< datagrams handed to the kernel
  std::uint64_t delivered = 0;            ///< opened datagrams given to the handler
  std::array<std::uint64_t, kSealErrcCount> dropped{};  ///< inbound, by SealErrc (see dropped_by())
  std::uint64_t truncated = 0;            ///< inbound larger than max_inbound
  std::uint64_t unhandled = 0;            ///< opened, but no handler was set
  std::uint64_t receive_errors = 0;       ///< socket errors while receiving
  std::uint64_t handler_failures = 0;     ///< exceptions from a handler, timer or posted function (the thread carried on)
  std::uint64_t oversized_outbound = 0;   ///< send() of more than max_payload()
  std::uint64_t seal_failures = 0;        ///< send() whose sealing failed (nonce_exhausted)
  std::uint64_t resolve_errors = 0;       ///< datagrams dropped: their host name did not resolve (or too many waited)
  std::uint64_t resolutions = 0;          ///< host name lookups started (one per name, kept 5 s)
  std::uint64_t send_errors = 0;          ///< socket errors while sending (or address family mismatch)
  std::uint64_t port_unreachable = 0;     ///< ICMP port unreachable for a datagram sent (reported)
  std::uint64_t icmp_other = 0;           ///< other errors queued for datagrams sent (ignored)
  std::uint64_t dropped_by(SealErrc e) const { return dropped[static_cast<std::size_t>(e)]; }
  /// Inbound datagrams not delivered, every reason together.
  std::uint64_t dropped_inbound() const;
};

/// Sealed UDP transport. start() binds and starts the I/O thread; stop() (or destruction) ends it.
/// Unless noted, members may be called from any thread.
class UdpTransport final : public PacketTransport {
 public:
  /// Called on the I/O thread when an authentic datagram sealed for another cluster arrives;
  /// the protocol may answer with send_as(from, refusal, their_cluster).
  using MismatchHandler = std::function<void(const UdpEndpoint& from, const std::string& their_cluster)>;
  /// Called on the I/O thread when a datagram sent to `to` (the address literal it was sent to)
  /// was answered with ICMP port unreachable.
  using UnreachableHandler = std::function<void(const UdpEndpoint& to)>;
  /// Timer handle returned by schedule_once()/schedule_every().
  using TimerId = std::uint64_t;

  /// Sizes of the headers under the sealed datagram, for max_payload(): an IPv6 header (40 bytes,
  /// the larger of IPv4's 20 and IPv6's 40, so the bound holds for either family) and UDP's 8.
  static constexpr std::size_t kIpHeader = 40;
  static constexpr std::size_t kUdpHeader = 8;

  /// Binds `config.bind_host:config.port` and starts the I/O thread. Errors: the bind or resolve
  /// error, or std::errc::invalid_argument for a config that leaves no room for a payload (the
  /// field is named in the log). `sealer` and `log` must not be null.
  static Result<std::unique_ptr<UdpTransport>> start(const UdpTransportConfig& config,
                                                     std::shared_ptr<PacketSealer> sealer,
                                                     std::shared_ptr<spdlog::logger> log);
  /// stop()s. Must not run on the I/O thread.
  ~UdpTransport() override;
  UdpTransport(const UdpTransport&) = delete;
  UdpTransport& operator=(const UdpTransport&) = delete;

  /// The bound address and port (the actual port when config.port was 0).
  UdpEndpoint local_endpoint() const;
  /// Sets the receiver of opened datagrams (plaintext and source), called on the I/O thread one
  /// at a time; it must not block. Datagrams that arrive while none is set are counted unhandled.
  void set_handler(Handler handler);
  /// Sets the receiver of cluster mismatches (see MismatchHandler). Optional.
  void set_mismatch_handler(MismatchHandler handler);
  /// Sets the receiver of port-unreachable reports (see UnreachableHandler). Optional.
  void set_unreachable_handler(UnreachableHandler handler);

  /// Seals `plaintext` (on the calling thread) and sends it to `to` from the I/O thread, best
  /// effort; a failure is counted, never reported. Literal IPv4/IPv6 addresses are used directly,
  /// host names are resolved asynchronously (an address of the socket's family preferred).
  /// Ignored once stop() was called.
  void send(const UdpEndpoint& to, std::span<const std::uint8_t> plaintext) override;
  /// Like send(), sealed for `their_cluster` instead of ours: only to answer a cluster mismatch.
  void send_as(const UdpEndpoint& to, std::span<const std::uint8_t> plaintext, std::string_view their_cluster);
  /// The largest plaintext send() accepts:
  ///   mtu - kIpHeader - kUdpHeader - sealer overhead (50 + cluster name length),
  /// e.g. 1400 - 40 - 8 - (50 + 6) = 1296 for cluster "troupe".
  std::size_t max_payload() const override;

  /// Runs `fn` on the I/O thread (FIFO with other posted work). Dropped once stop() was called.
  /// An exception escaping `fn` (or any handler or timer) is logged and counted
  /// (handler_failures), and the I/O thread carries on: receiving, and every timer, go on.
  void post(std::function<void()> fn);
  /// Runs `fn` once on the I/O thread after `delay`.
  TimerId schedule_once(std::chrono::nanoseconds delay, std::function<void()> fn);
  /// Runs `fn` on the I/O thread every `interval` (first after one interval). A late run does
  /// not cause a burst of catch-up runs: the next one is due one interval after it.
  TimerId schedule_every(std::chrono::nanoseconds interval, std::function<void()> fn);
  /// Cancels a timer; `fn` does not run after cancel() returns when called on the I/O thread,
  /// and at most once more (an already due run) when called from another thread. Unknown ids
  /// are ignored.
  void cancel(TimerId id);

  /// Closes the socket and joins the I/O thread; pending work and timers are dropped. Idempotent.
  /// Called on the I/O thread it only requests the stop; the join happens in a later call from
  /// another thread (or the destructor).
  void stop();

  /// A snapshot of the counters.
  UdpTransportStats stats() const;
  /// The sealer's own counters (every seal and open, including those of other users).
  const PacketSealer& sealer() const;

 private:
  struct Impl;
  explicit UdpTransport(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace troupe::membership
