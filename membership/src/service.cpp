#include <troupe/membership/service.hpp>

#include <algorithm>
#include <condition_variable>
#include <exception>
#include <future>
#include <mutex>
#include <random>
#include <thread>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/udp.hpp>
#include <fmt/format.h>
#include <spdlog/logger.h>

namespace troupe::membership {

namespace {

std::uint64_t random_u64() {
  std::random_device rd;
  std::uint64_t v = 0;
  while (v == 0) v = (std::uint64_t{rd()} << 32) ^ rd();
  return v;
}

/// "host:port" (IPv6 in brackets) -> endpoint; nullopt when malformed.
std::optional<UdpEndpoint> split(const std::string& s) {
  std::string host, port;
  if (!s.empty() && s.front() == '[') {
    auto close = s.find(']');
    if (close == std::string::npos || close + 2 > s.size() || s[close + 1] != ':') return std::nullopt;
    host = s.substr(1, close - 1);
    port = s.substr(close + 2);
  } else {
    auto colon = s.rfind(':');
    if (colon == std::string::npos) return std::nullopt;
    host = s.substr(0, colon);
    port = s.substr(colon + 1);
  }
  if (host.empty() || port.empty() || port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos) {
    return std::nullopt;
  }
  const auto p = std::stoul(port);
  if (p == 0 || p > 65535) return std::nullopt;
  return UdpEndpoint{host, static_cast<std::uint16_t>(p)};
}

/// Every address of `ep.host` (itself when it is a literal), in address order: the resolver
/// lists a container's own address first, and every node behind one name must agree on which
/// of them is the first seed. Empty when it does not resolve.
std::vector<UdpEndpoint> resolve_all(const UdpEndpoint& ep) {
  boost::asio::io_context io;
  boost::asio::ip::udp::resolver r(io);
  boost::system::error_code ec;
  auto results = r.resolve(ep.host, std::to_string(ep.port), ec);
  std::vector<UdpEndpoint> out;
  if (ec) return out;
  std::vector<boost::asio::ip::address> addresses;
  for (const auto& e : results) addresses.push_back(e.endpoint().address());
  std::sort(addresses.begin(), addresses.end());
  addresses.erase(std::unique(addresses.begin(), addresses.end()), addresses.end());
  for (const auto& a : addresses) out.push_back(UdpEndpoint{a.to_string(), ep.port});
  return out;
}

bool is_name(const std::string& host) {
  boost::system::error_code ec;
  boost::asio::ip::make_address(host, ec);
  return static_cast<bool>(ec);
}

/// Every address of every seed; this node itself, under the address other nodes use, keeps its
/// place in the list. A name that does not resolve (yet) stays as given (logged once).
std::vector<UdpEndpoint> resolve_seeds(const std::vector<UdpEndpoint>& seeds, const UdpEndpoint& self,
                                       const std::string& bind_host, spdlog::logger* log) {
  std::vector<UdpEndpoint> resolved;
  for (const auto& s : seeds) {
    auto all = resolve_all(s);
    if (all.empty()) {
      if (log) log->warn("membership: seed {} does not resolve (yet); using the name as given", s.to_string());
      all.push_back(s);
    }
    for (auto& a : all) {
      if (a.port == self.port && (a.host == self.host || a.host == bind_host)) a = self;
      resolved.push_back(a);
    }
  }
  return resolved;
}

}  // namespace

struct MembershipService::Impl {
  MembershipServiceConfig cfg;
  std::shared_ptr<spdlog::logger> log;
  std::unique_ptr<UdpTransport> udp;
  SteadyClock clock;
  std::unique_ptr<SwimProtocol> proto;
  std::thread::id io_thread;
  std::vector<std::function<void(const MembershipEvent&)>> subscribers;  // io thread after start
  std::mutex sub_mu;
  std::atomic<bool> stopped{false};
  std::atomic<std::uint64_t> subscriber_failures{0};  // the service's subscribers' (stats() adds the protocol's)
  // Seeds given by name are resolved again while joining (more nodes appear behind the name).
  std::thread reresolver;
  std::mutex rr_mu;
  std::condition_variable rr_cv;
  bool rr_stop = false;  // under rr_mu
  // stop(): done once; begun on the I/O thread (from a subscriber), finished by `stopper`.
  std::once_flag stop_once;
  std::mutex stop_mu;
  std::thread stopper;  // under stop_mu

  void finish_stop() {
    std::call_once(stop_once, [this] {
      // The re-resolver first, while the I/O thread still runs the calls it posts (once
      // stopped, a call runs inline: only one thread may then touch the protocol).
      {
        std::lock_guard lk(rr_mu);
        rr_stop = true;
      }
      rr_cv.notify_all();
      if (reresolver.joinable()) reresolver.join();
      udp->stop();  // joins the I/O thread
      stopped = true;
    });
  }

  /// Runs fn on the I/O thread and returns its result (inline when already there).
  template <class F>
  auto call(F&& fn) const -> decltype(fn()) {
    // On the I/O thread, or once it has ended (stopped), nothing else touches the protocol.
    if (std::this_thread::get_id() == io_thread || stopped) return fn();
    std::packaged_task<decltype(fn())()> task([&fn] { return fn(); });
    auto fut = task.get_future();
    udp->post([&task] { task(); });
    // A transport stopping drops posted tasks: once it has stopped (its thread joined), a task
    // that did not run never will, and this thread may run it.
    while (fut.wait_for(std::chrono::milliseconds(20)) != std::future_status::ready) {
      if (stopped && fut.wait_for(std::chrono::seconds(0)) != std::future_status::ready) return fn();
    }
    return fut.get();
  }
};

MembershipService::MembershipService(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Result<std::unique_ptr<MembershipService>> MembershipService::start(MembershipServiceConfig cfg,
                                                                    std::shared_ptr<spdlog::logger> log,
                                                                    std::string* error_detail) {
  auto fail = [&](std::string why) -> std::error_code {
    log->error("membership: {}", why);
    if (error_detail) *error_detail = std::move(why);
    return std::make_error_code(std::errc::invalid_argument);
  };
  if (auto bad = cfg.membership.validate(); !bad.empty()) return fail(bad);
  if (auto bad = validate_roles(cfg.roles); !bad.empty()) return fail(bad);
  if (cfg.node_name.empty() || cfg.node_name.size() > 128 ||
      cfg.node_name.find_first_of(" \t\r\n") != std::string::npos) {
    return fail("node_name: 1 to 128 characters without spaces");
  }
  if (!cfg.keyring) return fail("keyring: required (gossip is always sealed)");
  const std::string advertise = cfg.advertise_host.empty() ? cfg.bind_host : cfg.advertise_host;
  if (advertise.empty() || advertise == "0.0.0.0" || advertise == "::" || advertise == "*") {
    return fail("advertise_host: required when binding a wildcard address");
  }
  // What every member checks in a record: a node whose own record they would reject would
  // never be admitted, and nothing would say why.
  if (auto bad = validate_identity(cfg.node_name, advertise); !bad.empty()) return fail(bad);
  std::vector<UdpEndpoint> seeds;
  for (const auto& s : cfg.seeds) {
    auto ep = split(s);
    if (!ep) return fail("seeds: '" + s + "' is not host:port");
    seeds.push_back(*ep);
  }

  auto impl = std::make_unique<Impl>();
  auto& m = *impl;
  m.cfg = std::move(cfg);
  m.log = log;
  if (m.cfg.uid == 0) m.cfg.uid = random_u64();
  std::shared_ptr<PacketSealer> sealer;
  try {
    // The sealer's nonce prefix is its own random epoch: unique per process start.
    sealer = std::make_shared<PacketSealer>(m.cfg.keyring, m.cfg.membership.cluster_name, random_u64());
  } catch (const std::exception& e) {
    return fail(std::string("cluster_name: ") + e.what());
  }
  UdpTransportConfig ucfg;
  ucfg.bind_host = m.cfg.bind_host;
  ucfg.port = m.cfg.port;
  ucfg.mtu = m.cfg.mtu;
  auto udp = UdpTransport::start(ucfg, sealer, log);
  if (!udp) return fail(fmt::format("cannot bind gossip port {}:{}: {}", m.cfg.bind_host, m.cfg.port, udp.error().message()));
  m.udp = std::move(udp).value();

  SwimProtocol::Identity id;
  id.name = m.cfg.node_name;
  id.uid = m.cfg.uid;
  id.gossip = UdpEndpoint{advertise, m.udp->local_endpoint().port};
  id.remoting = m.cfg.remoting;
  id.curve_key = m.cfg.curve_key;
  id.roles = m.cfg.roles;
  if (auto bad = SwimProtocol::record_fits(id, m.udp->max_payload()); !bad.empty()) return fail(bad);

  // Seeds: every address of every name. The first configured seed decides who may form.
  const std::vector<UdpEndpoint> resolved = resolve_seeds(seeds, id.gossip, m.cfg.bind_host, log.get());
  const bool by_name = std::any_of(seeds.begin(), seeds.end(), [](const UdpEndpoint& s) { return is_name(s.host); });

  Impl* raw = &m;
  std::promise<void> ready;
  m.udp->post([raw, id, resolved, by_name, &ready] {
    raw->io_thread = std::this_thread::get_id();
    raw->proto = std::make_unique<SwimProtocol>(raw->cfg.membership, id, raw->clock, *raw->udp, random_u64(), raw->log);
    raw->proto->subscribe([raw](const MembershipEvent& e) {
      raw->log->info("membership event: {} {} ({:016x}) {}{}", to_string(e.kind), e.member.name, e.member.uid,
                     to_string(e.member.status), e.detail.empty() ? "" : ": " + e.detail);
      std::vector<std::function<void(const MembershipEvent&)>> subs;
      {
        std::lock_guard lk(raw->sub_mu);
        subs = raw->subscribers;
      }
      // Each subscriber hears of every event, whatever one before it throws (the sharding
      // layer fences its shards on self_downed, after the program's own subscribers). Each
      // failure is counted (with the protocol's, in stats()) and logged.
      for (auto& fn : subs) {
        try {
          fn(e);
        } catch (const std::exception& ex) {
          raw->subscriber_failures.fetch_add(1, std::memory_order_relaxed);
          raw->log->error("a membership subscriber failed on {} of {:?}: {}", to_string(e.kind), e.member.name, ex.what());
        } catch (...) {
          raw->subscriber_failures.fetch_add(1, std::memory_order_relaxed);
          raw->log->error("a membership subscriber failed on {} of {:?} (not a std::exception)", to_string(e.kind),
                          e.member.name);
        }
      }
    });
    raw->udp->set_handler([raw](const UdpEndpoint& from, std::span<const std::uint8_t> p) {
      raw->proto->on_packet(from, p);
      raw->proto->poll();
    });
    raw->udp->set_mismatch_handler([raw](const UdpEndpoint& from, const std::string& theirs) {
      auto why = fmt::format("cluster name mismatch: {} belongs to cluster '{}', not '{}'", raw->proto->self().name,
                             raw->cfg.membership.cluster_name, theirs);
      raw->log->warn("membership: refused a packet from {} of cluster '{}'", from.to_string(), theirs);
      const auto bytes = raw->proto->refusal(why);
      raw->udp->send_as(from, bytes, theirs);
    });
    raw->udp->set_unreachable_handler([raw](const UdpEndpoint& to) {
      raw->proto->on_port_unreachable(to);
      raw->proto->poll();
    });
    raw->proto->set_key_handler([raw](KeyOp op, std::span<const std::uint8_t> bytes) -> std::string {
      if (bytes.size() != sizeof(Key)) return "a key is 32 bytes";
      Key k;
      std::copy(bytes.begin(), bytes.end(), k.begin());
      auto& ring = *raw->cfg.keyring;
      std::error_code ec;
      switch (op) {
        case KeyOp::install: ec = ring.install(k); break;
        case KeyOp::use: ec = ring.use(k); break;
        case KeyOp::remove:
          ec = ring.remove(k);
          if (ec == KeyringErrc::not_installed) ec = {};  // already gone (a resent request)
          break;
      }
      if (ec) return ec.message();
      if (!raw->cfg.keyring_file.empty()) {
        if (auto w = save_keyring(ring, raw->cfg.keyring_file)) {
          raw->log->error("membership: keyring changed but not saved to {}: {}", raw->cfg.keyring_file, w.message());
          return "applied, but the keyring file could not be written: " + w.message();
        }
      }
      raw->log->info("membership: keyring {}: key {:08x} ({} keys)", to_string(op), key_id(k), ring.size());
      return {};
    });
    raw->proto->join(resolved, by_name);
    raw->udp->schedule_every(std::chrono::milliseconds(10), [raw] { raw->proto->poll(); });
    ready.set_value();
  });
  ready.get_future().get();
  log->info("membership: {} ({:016x}) gossiping at {} in cluster '{}', {} seeds", id.name, id.uid,
            id.gossip.to_string(), m.cfg.membership.cluster_name, resolved.size());
  if (by_name) {
    // Off the I/O thread: a slow resolver must not delay probes.
    m.reresolver = std::thread([raw, seeds, self = id.gossip] {
      std::unique_lock lk(raw->rr_mu);
      while (!raw->rr_cv.wait_for(lk, raw->cfg.membership.join_retry_interval, [raw] { return raw->rr_stop; })) {
        lk.unlock();
        auto again = resolve_seeds(seeds, self, raw->cfg.bind_host, nullptr);
        const bool joining = raw->call([&] {
          if (!raw->proto->joining()) return false;
          raw->proto->update_seeds(std::move(again));
          return true;
        });
        lk.lock();
        if (!joining) break;
      }
    });
  }
  return std::unique_ptr<MembershipService>(new MembershipService(std::move(impl)));
}

MembershipService::~MembershipService() {
  if (impl_ && std::this_thread::get_id() == impl_->io_thread && !impl_->stopped) {
    // Destroyed by a subscriber, on the I/O thread, which cannot wait for itself: a thread that
    // owns what is left finishes the stop once this event is done (the I/O thread's handlers
    // use the state until then) and then frees it.
    std::thread([impl = std::move(impl_)] {
      impl->finish_stop();
      std::thread begun;
      {
        std::lock_guard lk(impl->stop_mu);
        begun = std::move(impl->stopper);
      }
      if (begun.joinable()) begun.join();
    }).detach();
    return;
  }
  stop();
}

void MembershipService::stop() {
  auto& m = *impl_;
  if (std::this_thread::get_id() == m.io_thread) {
    // From a subscriber: the I/O thread can neither join itself nor wait for the re-resolver
    // (whose calls wait for it), and until it has ended, other threads' calls must not run the
    // protocol inline. A thread of the service's finishes the stop once this event is done.
    std::lock_guard lk(m.stop_mu);
    if (!m.stopper.joinable() && !m.stopped) m.stopper = std::thread([&m] { m.finish_stop(); });
    return;
  }
  m.finish_stop();
  std::thread begun;
  {
    std::lock_guard lk(m.stop_mu);
    begun = std::move(m.stopper);
  }
  if (begun.joinable()) begun.join();
}

bool MembershipService::leave_and_wait(std::chrono::milliseconds timeout) {
  auto done = std::make_shared<std::promise<bool>>();
  auto fut = done->get_future();
  auto fired = std::make_shared<std::atomic<bool>>(false);
  subscribe([done, fired](const MembershipEvent& e) {
    if (e.kind == EventKind::self_removed && !fired->exchange(true)) done->set_value(true);
  });
  impl_->call([&] {
    impl_->proto->leave();
    return true;
  });
  if (fut.wait_for(timeout) != std::future_status::ready) return false;
  return fut.get();
}

bool MembershipService::leave(const std::string& name) {
  return impl_->call([&] { return impl_->proto->leave(name); });
}
bool MembershipService::down(const std::string& name) {
  return impl_->call([&] { return impl_->proto->down(name); });
}

void MembershipService::subscribe(std::function<void(const MembershipEvent&)> fn) {
  std::lock_guard lk(impl_->sub_mu);
  impl_->subscribers.push_back(std::move(fn));
}

KeyOpResult MembershipService::key_operation(KeyOp op, const Key& key, std::chrono::milliseconds timeout) {
  auto done = std::make_shared<std::promise<KeyOpResult>>();
  auto fut = done->get_future();
  std::vector<std::uint8_t> bytes(key.begin(), key.end());
  impl_->call([&] {
    impl_->proto->key_operation(op, std::move(bytes), timeout, [done](KeyOpResult r) { done->set_value(std::move(r)); });
    return 0;
  });
  // The protocol answers by the timeout; a node that stopped meanwhile never does.
  if (fut.wait_for(timeout + std::chrono::seconds(2)) != std::future_status::ready) {
    KeyOpResult r;
    r.op = op;
    r.failed.emplace_back(impl_->cfg.node_name, "this node stopped before the operation completed");
    return r;
  }
  return fut.get();
}

std::vector<KeyOpResult> MembershipService::rotate_key(const Key& new_key, std::chrono::milliseconds step_timeout) {
  std::vector<KeyOpResult> steps;
  const Key old = impl_->cfg.keyring->primary();
  for (auto op : {KeyOp::install, KeyOp::use, KeyOp::remove}) {
    steps.push_back(key_operation(op, op == KeyOp::remove ? old : new_key, step_timeout));
    if (!steps.back().ok()) break;
  }
  return steps;
}

std::vector<MemberInfo> MembershipService::members() const {
  return impl_->call([&] { return impl_->proto->members(); });
}
std::optional<MemberInfo> MembershipService::leader() const {
  return impl_->call([&] { return impl_->proto->leader(); });
}
MemberInfo MembershipService::self() const {
  return impl_->call([&] { return impl_->proto->self(); });
}
std::vector<Decision> MembershipService::history(const std::string& name) const {
  return impl_->call([&] { return impl_->proto->history(name); });
}
SwimStats MembershipService::stats() const {
  auto s = impl_->call([&] { return impl_->proto->stats(); });
  s.subscriber_failures += impl_->subscriber_failures.load(std::memory_order_relaxed);
  return s;
}
UdpTransportStats MembershipService::transport_stats() const { return impl_->udp->stats(); }
const MembershipConfig& MembershipService::config() const noexcept { return impl_->cfg.membership; }

UdpEndpoint MembershipService::endpoint() const {
  return impl_->call([&] { return impl_->proto->self().gossip; });
}
const std::shared_ptr<Keyring>& MembershipService::keyring() const { return impl_->cfg.keyring; }

}  // namespace troupe::membership
