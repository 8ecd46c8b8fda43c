#include <troupe/membership/udp_transport.hpp>

#include <netinet/in.h>
#include <pthread.h>
#include <sys/socket.h>
#include <sys/types.h>
#ifdef __linux__
#include <linux/errqueue.h>
#endif

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <thread>
#include <unordered_map>
#include <vector>

#include <boost/asio/dispatch.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/udp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include <spdlog/spdlog.h>

#include <troupe/serialization/log.hpp>

namespace troupe::membership {

namespace asio = boost::asio;
using asio::ip::udp;
using boost::system::error_code;

std::chrono::nanoseconds SteadyClock::now() const {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch());
}

std::uint64_t UdpTransportStats::dropped_inbound() const {
  std::uint64_t n = truncated + unhandled + receive_errors;
  for (auto d : dropped) n += d;
  return n;
}

namespace {
UdpEndpoint to_endpoint(const udp::endpoint& ep) {
  auto a = ep.address();
  if (a.is_v6() && a.to_v6().is_v4_mapped()) a = asio::ip::make_address_v4(asio::ip::v4_mapped, a.to_v6());
  return {a.to_string(), ep.port()};
}

// "[::1]" → "::1": UdpEndpoint holds bare literals, but be lenient.
std::string bare_host(const std::string& host) {
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') return host.substr(1, host.size() - 2);
  return host;
}

using Counter = std::atomic<std::uint64_t>;
void bump(Counter& c, std::uint64_t n = 1) { c.fetch_add(n, std::memory_order_relaxed); }
}  // namespace

struct UdpTransport::Impl {
  struct Timer {
    explicit Timer(asio::io_context& io) : timer(io) {}
    asio::steady_timer timer;
    std::function<void()> fn;
    std::chrono::nanoseconds interval{0};
    bool repeat = false;
  };

  Impl(const UdpTransportConfig& c, std::shared_ptr<PacketSealer> s, std::shared_ptr<spdlog::logger> l)
      : config(c), sealer(std::move(s)), log(std::move(l)), socket(io), resolver(io), rx_buf(c.max_inbound + 1) {}

  UdpTransportConfig config;
  std::shared_ptr<PacketSealer> sealer;
  std::shared_ptr<spdlog::logger> log;
  ThrottledLog drop_log;

  // Asio objects: declared after io so that they are destroyed before it.
  asio::io_context io;
  asio::executor_work_guard<asio::io_context::executor_type> work = asio::make_work_guard(io);
  udp::socket socket;
  udp::resolver resolver;
  // Host names resolved (I/O thread): a member that advertises a name is sent to every probe
  // interval, and a lookup per datagram queued behind a slow resolver would delay the pings
  // until every such member looked suspect. One lookup per name at a time; its answer is looked
  // up again after kResolvedFor (the address in use meanwhile), a failure after kFailedFor; only
  // a name with no address yet holds datagrams back, and those are bounded.
  struct Resolved {
    std::optional<asio::ip::address> addr;
    std::chrono::steady_clock::time_point until{};
    bool looking = false;
    std::vector<std::pair<std::uint16_t, std::shared_ptr<std::vector<std::uint8_t>>>> waiting;
  };
  static constexpr auto kResolvedFor = std::chrono::seconds(5);  // a restarted container may have a new address
  static constexpr auto kFailedFor = std::chrono::seconds(1);
  static constexpr std::size_t kMaxWaiting = 64, kMaxNames = 1024;
  std::unordered_map<std::string, Resolved> resolved;
  udp::endpoint local;
  std::vector<std::uint8_t> rx_buf;  // max_inbound + 1: a full buffer means a longer datagram
  udp::endpoint rx_from;
  std::unordered_map<TimerId, std::shared_ptr<Timer>> timers;  // I/O thread only
  std::atomic<TimerId> next_timer{1};

  std::thread thread;
  std::mutex stop_mu;
  std::atomic<bool> stopping{false};

  std::mutex handler_mu;
  std::shared_ptr<const Handler> handler;
  std::shared_ptr<const MismatchHandler> mismatch_handler;
  std::shared_ptr<const UnreachableHandler> unreachable_handler;

  Counter sent{0}, delivered{0}, truncated{0}, unhandled{0}, receive_errors{0}, handler_failures{0};
  Counter oversized_outbound{0}, seal_failures{0}, resolve_errors{0}, send_errors{0}, resolutions{0};
  Counter port_unreachable{0}, icmp_other{0};
  std::array<Counter, kSealErrcCount> dropped{};

  std::size_t max_payload_for(std::size_t cluster_size) const {
    const auto room = kIpHeader + kUdpHeader + PacketSealer::overhead_for(cluster_size);
    return config.mtu > room ? config.mtu - room : 0;
  }

  bool on_io_thread() { return io.get_executor().running_in_this_thread(); }

  void run() {
    for (;;) {
      try {
        io.run();
        return;
      } catch (const std::exception& e) {
        // A posted function threw: the protocol thread must survive it.
        bump(handler_failures);
        log->error("membership transport: handler failed: {}", e.what());
      } catch (...) {
        bump(handler_failures);
        log->error("membership transport: handler failed with an exception that is not a std::exception");
      }
    }
  }

  // Runs `f` inside a completion handler that must re-arm itself whatever `f` does: an exception
  // that left the handler would end its chain (no receive outstanding, a timer never re-armed).
  template <class F>
  void guarded(const char* what, F&& f) {
    try {
      f();
    } catch (const std::exception& e) {
      bump(handler_failures);
      log->error("membership transport: {} failed: {}", what, e.what());
    } catch (...) {
      bump(handler_failures);
      log->error("membership transport: {} failed with an exception that is not a std::exception", what);
    }
  }

  void receive() {
    socket.async_receive_from(asio::buffer(rx_buf), rx_from, [this](const error_code& ec, std::size_t n) {
      if (ec == asio::error::operation_aborted || !socket.is_open()) return;
      if (ec == asio::error::message_size || (!ec && n > config.max_inbound)) {
        bump(truncated);
        drop_log.warn(*log, "membership transport: dropped a datagram from {} larger than {} bytes",
                      to_endpoint(rx_from).to_string(), config.max_inbound);
      } else if (ec == asio::error::connection_refused) {
        // With IP_RECVERR a queued ICMP error is also reported by the next receive: not a
        // receive failure, the error queue says what happened.
        guarded("reading the error queue", [this] { drain_errors(); });
      } else if (ec) {
        bump(receive_errors);
        drop_log.warn(*log, "membership transport: receive failed: {}", ec.message());
      } else {
        guarded("handling a datagram", [this, n] { deliver(n); });
      }
      receive();  // whatever happened, keep receiving
    });
  }

  // Asks the kernel to queue the ICMP errors of the datagrams sent (Linux): a port unreachable
  // tells that a member's process is gone, which silence alone cannot tell from a partition.
  void enable_error_queue() {
#ifdef __linux__
    const int fd = socket.native_handle();
    const int on = 1;
    int rc = 0;
    if (local.address().is_v6()) {
      rc = ::setsockopt(fd, SOL_IPV6, IPV6_RECVERR, &on, sizeof on);
      // v4-mapped peers of a dual-stack socket report through the IPv4 option.
      (void)::setsockopt(fd, SOL_IP, IP_RECVERR, &on, sizeof on);
    } else {
      rc = ::setsockopt(fd, SOL_IP, IP_RECVERR, &on, sizeof on);
    }
    if (rc != 0) {
      log->warn("membership transport: cannot enable the socket error queue ({}): crashed peers are found by "
                "probing only", std::strerror(errno));
      return;
    }
    watch_errors();
#endif
  }

  // An error queued on the socket makes it report EPOLLERR: wait for that, then drain.
  void watch_errors() {
    socket.async_wait(udp::socket::wait_error, [this](const error_code& ec) {
      if (ec == asio::error::operation_aborted || !socket.is_open()) return;
      guarded("reading the error queue", [this] { drain_errors(); });
      watch_errors();
    });
  }

  // I/O thread. Reads every queued error; reports the port unreachables by their destination.
  void drain_errors() {
#ifdef __linux__
    const int fd = socket.native_handle();
    for (int i = 0; i < 256; ++i) {  // bounded: the handler is not starved by an ICMP flood
      sockaddr_storage to{};
      std::array<char, 64> payload;  // the start of the datagram that failed; unused
      alignas(cmsghdr) std::array<char, 512> control;
      iovec iov{payload.data(), payload.size()};
      msghdr msg{};
      msg.msg_name = &to;
      msg.msg_namelen = sizeof to;
      msg.msg_iov = &iov;
      msg.msg_iovlen = 1;
      msg.msg_control = control.data();
      msg.msg_controllen = control.size();
      if (::recvmsg(fd, &msg, MSG_ERRQUEUE | MSG_DONTWAIT) < 0) {
        if (errno == EINTR) continue;
        return;  // EAGAIN: the queue is empty
      }
      bool refused = false;
      for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        const bool v4 = c->cmsg_level == SOL_IP && c->cmsg_type == IP_RECVERR;
        const bool v6 = c->cmsg_level == SOL_IPV6 && c->cmsg_type == IPV6_RECVERR;
        if (!v4 && !v6) continue;
        sock_extended_err ee;
        std::memcpy(&ee, CMSG_DATA(c), sizeof ee);
        // ICMP destination unreachable / port unreachable (3/3), ICMPv6 1/4. Host and network
        // unreachable are ignored: a partition can look like that.
        refused |= (ee.ee_origin == SO_EE_ORIGIN_ICMP && ee.ee_type == 3 && ee.ee_code == 3) ||
                   (ee.ee_origin == SO_EE_ORIGIN_ICMP6 && ee.ee_type == 1 && ee.ee_code == 4);
      }
      udp::endpoint dest;
      if (to.ss_family == AF_INET && msg.msg_namelen >= sizeof(sockaddr_in)) {
        const auto* a = reinterpret_cast<const sockaddr_in*>(&to);
        dest = udp::endpoint(asio::ip::address_v4(ntohl(a->sin_addr.s_addr)), ntohs(a->sin_port));
      } else if (to.ss_family == AF_INET6 && msg.msg_namelen >= sizeof(sockaddr_in6)) {
        const auto* a = reinterpret_cast<const sockaddr_in6*>(&to);
        asio::ip::address_v6::bytes_type b;
        std::memcpy(b.data(), &a->sin6_addr, b.size());
        dest = udp::endpoint(asio::ip::address_v6(b, a->sin6_scope_id), ntohs(a->sin6_port));
      } else {
        refused = false;  // no destination to report
      }
      if (!refused) {
        bump(icmp_other);
        continue;
      }
      bump(port_unreachable);
      std::shared_ptr<const UnreachableHandler> h;
      {
        std::lock_guard lk(handler_mu);
        h = unreachable_handler;
      }
      if (h && *h) (*h)(to_endpoint(dest));
    }
#endif
  }

  void deliver(std::size_t n) {
    const auto from = to_endpoint(rx_from);
    std::string their_cluster;
    auto opened = sealer->open({rx_buf.data(), n}, &their_cluster);
    if (!opened) {
      const auto ec = opened.error();
      if (ec.category() == seal_category()) bump(dropped[static_cast<std::size_t>(ec.value())]);
      drop_log.warn(*log, "membership transport: dropped a datagram from {}: {}", from.to_string(), ec.message());
      if (ec == SealErrc::cluster_mismatch) {
        std::shared_ptr<const MismatchHandler> h;
        {
          std::lock_guard lk(handler_mu);
          h = mismatch_handler;
        }
        if (h && *h) (*h)(from, their_cluster);
      }
      return;
    }
    std::shared_ptr<const Handler> h;
    {
      std::lock_guard lk(handler_mu);
      h = handler;
    }
    if (!h || !*h) {
      bump(unhandled);
      drop_log.warn(*log, "membership transport: no handler for a datagram from {}", from.to_string());
      return;
    }
    bump(delivered);
    (*h)(from, opened->plaintext);
  }

  void send(const UdpEndpoint& to, std::span<const std::uint8_t> plaintext, std::string_view cluster_override) {
    if (stopping.load(std::memory_order_relaxed)) return;
    const auto limit = max_payload_for(cluster_override.empty() ? sealer->cluster().size() : cluster_override.size());
    if (plaintext.size() > limit) {
      bump(oversized_outbound);
      drop_log.warn(*log, "membership transport: refused to send {} bytes to {} (max payload {})", plaintext.size(),
                    to.to_string(), limit);
      return;
    }
    auto sealed = sealer->seal(plaintext, cluster_override);
    if (!sealed) {
      bump(seal_failures);
      drop_log.warn(*log, "membership transport: cannot seal a datagram to {}: {}", to.to_string(),
                    sealed.error().message());
      return;
    }
    auto buf = std::make_shared<std::vector<std::uint8_t>>(std::move(*sealed));
    auto host = bare_host(to.host);
    error_code ec;
    const auto addr = asio::ip::make_address(host, ec);
    if (!ec) {
      asio::post(io, [this, buf, ep = udp::endpoint(addr, to.port)] { send_to(ep, buf); });
      return;
    }
    asio::post(io, [this, buf, host = std::move(host), port = to.port] { send_by_name(host, port, buf); });
  }

  // I/O thread.
  void send_by_name(const std::string& host, std::uint16_t port, const std::shared_ptr<std::vector<std::uint8_t>>& buf) {
    const auto now = std::chrono::steady_clock::now();
    auto it = resolved.find(host);
    if (it == resolved.end()) {
      if (resolved.size() >= kMaxNames) {
        std::erase_if(resolved, [&](const auto& kv) { return !kv.second.looking && kv.second.until <= now; });
      }
      if (resolved.size() >= kMaxNames) {
        bump(resolve_errors);
        drop_log.warn(*log, "membership transport: not resolving {}: {} names resolved already", host, kMaxNames);
        return;
      }
      it = resolved.emplace(host, Resolved{}).first;
    }
    auto& r = it->second;
    if (r.addr) {
      // Known: sent there at once. Past its time, it is looked up again meanwhile (a lookup
      // that fails keeps the address: a slow or failing resolver holds nothing back).
      send_to(udp::endpoint(*r.addr, port), buf);
      if (!r.looking && now >= r.until) look_up(host, r);
      return;
    }
    if (!r.looking && now < r.until) {
      bump(resolve_errors);  // failed a moment ago: not asked again yet
      return;
    }
    if (r.waiting.size() >= kMaxWaiting) {
      bump(resolve_errors);
      drop_log.warn(*log, "membership transport: {} datagrams already wait for {} to resolve: dropped", kMaxWaiting, host);
      return;
    }
    r.waiting.emplace_back(port, buf);
    if (!r.looking) look_up(host, r);
  }

  // I/O thread.
  void look_up(const std::string& host, Resolved& r) {
    r.looking = true;
    bump(resolutions);
    resolver.async_resolve(host, "0", udp::resolver::numeric_service,
                           [this, host](const error_code& rec, const udp::resolver::results_type& results) {
                             if (rec == asio::error::operation_aborted) return;
                             auto found = resolved.find(host);
                             if (found == resolved.end()) return;
                             auto& done = found->second;
                             done.looking = false;
                             auto waiting = std::move(done.waiting);
                             done.waiting.clear();
                             if (rec || results.empty()) {
                               done.until = std::chrono::steady_clock::now() + kFailedFor;
                               bump(resolve_errors, waiting.size());
                               drop_log.warn(*log, "membership transport: cannot resolve {}: {}{}", host,
                                             rec ? rec.message() : std::string("no address"),
                                             done.addr ? " (its last address is used meanwhile)" : "");
                               return;
                             }
                             // Prefer an address of the socket's own family.
                             auto pick = results.begin()->endpoint().address();
                             for (const auto& e : results) {
                               if (e.endpoint().protocol() == local.protocol()) {
                                 pick = e.endpoint().address();
                                 break;
                               }
                             }
                             done.addr = pick;
                             done.until = std::chrono::steady_clock::now() + kResolvedFor;
                             for (auto& [to_port, b] : waiting) send_to(udp::endpoint(pick, to_port), b);
                           });
  }

  // I/O thread. `retry`: a refused send is tried once more (see below).
  void send_to(udp::endpoint to, const std::shared_ptr<std::vector<std::uint8_t>>& buf, bool retry = true) {
    if (!socket.is_open()) return;
    const auto a = to.address();
    if (local.address().is_v6() && a.is_v4()) {
      to = udp::endpoint(asio::ip::make_address_v6(asio::ip::v4_mapped, a.to_v4()), to.port());
    } else if (local.address().is_v4() && a.is_v6()) {
      if (!a.to_v6().is_v4_mapped()) {
        bump(send_errors);
        drop_log.warn(*log, "membership transport: cannot send to IPv6 {} from an IPv4 socket", a.to_string());
        return;
      }
      to = udp::endpoint(asio::ip::make_address_v4(asio::ip::v4_mapped, a.to_v6()), to.port());
    }
    socket.async_send_to(asio::buffer(*buf), to, [this, buf, to, retry](const error_code& ec, std::size_t) {
      if (ec == asio::error::operation_aborted) return;
      if (ec == asio::error::connection_refused && retry) {
        // The pending ICMP error of an earlier datagram (IP_RECVERR) failed this send: it was
        // not sent. Read the error queue, then send it again.
        drain_errors();
        send_to(to, buf, false);
        return;
      }
      if (ec) {
        bump(send_errors);
        drop_log.warn(*log, "membership transport: send to {} failed: {}", to_endpoint(to).to_string(), ec.message());
        return;
      }
      bump(sent);
    });
  }

  // I/O thread.
  void arm(TimerId id, const std::shared_ptr<Timer>& t) {
    t->timer.async_wait([this, id, t](const error_code& ec) {
      if (ec == asio::error::operation_aborted) return;
      auto it = timers.find(id);
      if (it == timers.end() || it->second != t) return;  // cancelled
      if (!t->repeat) timers.erase(it);
      guarded("a timer", [&t] { t->fn(); });
      if (!t->repeat || timers.find(id) == timers.end()) return;  // fn may cancel its own timer
      auto next = t->timer.expiry() + t->interval;
      const auto now = asio::steady_timer::clock_type::now();
      if (next < now) next = now + t->interval;
      t->timer.expires_at(next);
      arm(id, t);
    });
  }

  TimerId schedule(std::chrono::nanoseconds delay, std::function<void()> fn, bool repeat) {
    const auto id = next_timer.fetch_add(1, std::memory_order_relaxed);
    if (stopping.load(std::memory_order_relaxed)) return id;
    asio::dispatch(io, [this, id, delay, repeat, fn = std::move(fn)]() mutable {
      auto t = std::make_shared<Timer>(io);
      t->fn = std::move(fn);
      t->interval = delay;
      t->repeat = repeat;
      t->timer.expires_after(delay);
      timers.emplace(id, t);
      arm(id, t);
    });
    return id;
  }
};

Result<std::unique_ptr<UdpTransport>> UdpTransport::start(const UdpTransportConfig& config,
                                                          std::shared_ptr<PacketSealer> sealer,
                                                          std::shared_ptr<spdlog::logger> log) {
  if (!sealer) throw std::invalid_argument("UdpTransport::start: sealer is null");
  if (!log) throw std::invalid_argument("UdpTransport::start: logger is null");
  const auto headers = kIpHeader + kUdpHeader + sealer->overhead();
  if (config.mtu <= headers) {
    log->error("membership transport: config.mtu ({}) leaves no room for a payload after {} bytes of headers",
               config.mtu, headers);
    return make_error_code(std::errc::invalid_argument);
  }
  if (config.max_inbound < config.mtu - kIpHeader - kUdpHeader) {
    log->error("membership transport: config.max_inbound ({}) is smaller than a full datagram ({})",
               config.max_inbound, config.mtu - kIpHeader - kUdpHeader);
    return make_error_code(std::errc::invalid_argument);
  }

  auto impl = std::make_unique<Impl>(config, std::move(sealer), log);
  error_code ec;
  udp::endpoint bind_ep;
  const auto bind_addr = asio::ip::make_address(bare_host(config.bind_host), ec);
  if (!ec) {
    bind_ep = udp::endpoint(bind_addr, config.port);
  } else {
    auto results = impl->resolver.resolve(config.bind_host, std::to_string(config.port),
                                          udp::resolver::numeric_service | udp::resolver::passive, ec);
    if (ec) {
      log->error("membership transport: cannot resolve config.bind_host {}: {}", config.bind_host, ec.message());
      return std::error_code(ec);
    }
    if (results.empty()) return make_error_code(std::errc::address_not_available);
    bind_ep = results.begin()->endpoint();
  }
  impl->socket.open(bind_ep.protocol(), ec);
  if (!ec) impl->socket.bind(bind_ep, ec);
  if (!ec) impl->local = impl->socket.local_endpoint(ec);
  if (ec) {
    log->error("membership transport: cannot bind {}: {}", to_endpoint(bind_ep).to_string(), ec.message());
    return std::error_code(ec);
  }
  impl->enable_error_queue();
  log->info("membership transport: listening on {} (cluster {}, max payload {})",
            to_endpoint(impl->local).to_string(), impl->sealer->cluster(),
            impl->max_payload_for(impl->sealer->cluster().size()));
  impl->receive();
  auto* raw = impl.get();
  impl->thread = std::thread([raw] { raw->run(); });
  pthread_setname_np(impl->thread.native_handle(), "troupe-gossip");  // for top -H, perf and gdb
  return std::unique_ptr<UdpTransport>(new UdpTransport(std::move(impl)));
}

UdpTransport::UdpTransport(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

UdpTransport::~UdpTransport() { stop(); }

UdpEndpoint UdpTransport::local_endpoint() const { return to_endpoint(impl_->local); }

void UdpTransport::set_handler(Handler handler) {
  auto h = std::make_shared<const Handler>(std::move(handler));
  std::lock_guard lk(impl_->handler_mu);
  impl_->handler = std::move(h);
}

void UdpTransport::set_mismatch_handler(MismatchHandler handler) {
  auto h = std::make_shared<const MismatchHandler>(std::move(handler));
  std::lock_guard lk(impl_->handler_mu);
  impl_->mismatch_handler = std::move(h);
}

void UdpTransport::set_unreachable_handler(UnreachableHandler handler) {
  auto h = std::make_shared<const UnreachableHandler>(std::move(handler));
  std::lock_guard lk(impl_->handler_mu);
  impl_->unreachable_handler = std::move(h);
}

void UdpTransport::send(const UdpEndpoint& to, std::span<const std::uint8_t> plaintext) {
  impl_->send(to, plaintext, {});
}

void UdpTransport::send_as(const UdpEndpoint& to, std::span<const std::uint8_t> plaintext,
                           std::string_view their_cluster) {
  impl_->send(to, plaintext, their_cluster);
}

std::size_t UdpTransport::max_payload() const { return impl_->max_payload_for(impl_->sealer->cluster().size()); }

void UdpTransport::post(std::function<void()> fn) {
  if (impl_->stopping.load(std::memory_order_relaxed)) return;
  asio::post(impl_->io, std::move(fn));
}

UdpTransport::TimerId UdpTransport::schedule_once(std::chrono::nanoseconds delay, std::function<void()> fn) {
  return impl_->schedule(delay, std::move(fn), false);
}

UdpTransport::TimerId UdpTransport::schedule_every(std::chrono::nanoseconds interval, std::function<void()> fn) {
  if (interval <= std::chrono::nanoseconds::zero()) throw std::invalid_argument("schedule_every: interval must be > 0");
  return impl_->schedule(interval, std::move(fn), true);
}

void UdpTransport::cancel(TimerId id) {
  auto* impl = impl_.get();
  asio::dispatch(impl->io, [impl, id] {
    auto it = impl->timers.find(id);
    if (it == impl->timers.end()) return;
    it->second->timer.cancel();
    impl->timers.erase(it);
  });
}

void UdpTransport::stop() {
  impl_->stopping.store(true);
  impl_->io.stop();
  if (impl_->on_io_thread()) return;  // joined later, from another thread
  std::lock_guard lk(impl_->stop_mu);
  if (!impl_->thread.joinable()) return;
  impl_->thread.join();
  // The I/O thread is gone: its objects are ours now.
  error_code ec;
  impl_->socket.close(ec);
  impl_->resolver.cancel();
  for (auto& [id, t] : impl_->timers) t->timer.cancel();
  impl_->timers.clear();
  impl_->log->info("membership transport: stopped ({})", to_endpoint(impl_->local).to_string());
}

UdpTransportStats UdpTransport::stats() const {
  const auto& i = *impl_;
  UdpTransportStats s;
  s.sent = i.sent.load(std::memory_order_relaxed);
  s.delivered = i.delivered.load(std::memory_order_relaxed);
  for (std::size_t k = 0; k < kSealErrcCount; ++k) s.dropped[k] = i.dropped[k].load(std::memory_order_relaxed);
  s.truncated = i.truncated.load(std::memory_order_relaxed);
  s.unhandled = i.unhandled.load(std::memory_order_relaxed);
  s.receive_errors = i.receive_errors.load(std::memory_order_relaxed);
  s.handler_failures = i.handler_failures.load(std::memory_order_relaxed);
  s.oversized_outbound = i.oversized_outbound.load(std::memory_order_relaxed);
  s.seal_failures = i.seal_failures.load(std::memory_order_relaxed);
  s.resolve_errors = i.resolve_errors.load(std::memory_order_relaxed);
  s.resolutions = i.resolutions.load(std::memory_order_relaxed);
  s.send_errors = i.send_errors.load(std::memory_order_relaxed);
  s.port_unreachable = i.port_unreachable.load(std::memory_order_relaxed);
  s.icmp_other = i.icmp_other.load(std::memory_order_relaxed);
  return s;
}

const PacketSealer& UdpTransport::sealer() const { return *impl_->sealer; }

}  // namespace troupe::membership
