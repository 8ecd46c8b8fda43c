// The sealed UDP transport on real loopback sockets: two transports talking, bad datagrams
// injected through a raw socket (each counted by reason, none delivered), outbound size limit,
// cluster mismatch and its refusal, host names, timers and posted work on the I/O thread, stop.
// Nothing sleeps: every wait is for an event (a delivered datagram, a timer, a promise).

#include <gtest/gtest.h>

#include <pthread.h>

#include <condition_variable>
#include <future>
#include <mutex>
#include <random>
#include <thread>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/udp.hpp>

#include <troupe/membership/udp_transport.hpp>
#include <troupe/serialization/log.hpp>

namespace troupe::membership {
namespace {

namespace asio = boost::asio;
using Bytes = std::vector<std::uint8_t>;
using namespace std::chrono_literals;

Bytes bytes(std::string_view s) { return Bytes(s.begin(), s.end()); }

constexpr auto kWait = 10s;

// Collects what a transport's handler receives; the test thread waits on it.
class Inbox {
 public:
  struct Item {
    UdpEndpoint from;
    std::string text;
    std::thread::id thread;
  };
  PacketTransport::Handler handler() {
    return [this](const UdpEndpoint& from, std::span<const std::uint8_t> p) {
      {
        std::lock_guard lk(mu_);
        items_.push_back({from, std::string(p.begin(), p.end()), std::this_thread::get_id()});
      }
      cv_.notify_all();
    };
  }
  /// Waits until `n` items arrived; false on timeout.
  bool wait_for(std::size_t n, std::chrono::milliseconds timeout = kWait) {
    std::unique_lock lk(mu_);
    return cv_.wait_for(lk, timeout, [&] { return items_.size() >= n; });
  }
  /// Waits for an item with this text.
  bool wait_for_text(const std::string& t, std::chrono::milliseconds timeout = kWait) {
    std::unique_lock lk(mu_);
    return cv_.wait_for(lk, timeout, [&] {
      return std::any_of(items_.begin(), items_.end(), [&](const Item& i) { return i.text == t; });
    });
  }
  std::vector<Item> items() const {
    std::lock_guard lk(mu_);
    return items_;
  }

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Item> items_;
};

// A plain UDP socket for injecting arbitrary bytes.
class RawSocket {
 public:
  RawSocket() : socket_(io_, asio::ip::udp::endpoint(asio::ip::make_address("127.0.0.1"), 0)) {}
  void send(const UdpEndpoint& to, const Bytes& b) {
    socket_.send_to(asio::buffer(b), asio::ip::udp::endpoint(asio::ip::make_address(to.host), to.port));
  }
  std::uint16_t port() const { return socket_.local_endpoint().port(); }

 private:
  asio::io_context io_;
  asio::ip::udp::socket socket_;
};

// Returns once every completion already queued on t's I/O thread has run. A send's completion
// is queued when the handler that sent it returns, so the barrier is posted from the I/O thread
// itself, behind whatever was queued when its first hop ran.
void drain(UdpTransport& t) {
  std::promise<void> done;
  t.post([&] { t.post([&] { done.set_value(); }); });
  done.get_future().wait();
}

std::unique_ptr<UdpTransport> start(std::shared_ptr<PacketSealer> sealer, UdpTransportConfig config = {}) {
  auto t = UdpTransport::start(config, std::move(sealer), make_node_logger("udp-test"));
  EXPECT_TRUE(t.ok()) << t.error().message();
  return t.ok() ? std::move(t).value() : nullptr;
}

struct Udp : ::testing::Test {
  Key key = *generate_key();
  Inbox inbox_a, inbox_b;  // outlive the transports
  std::shared_ptr<PacketSealer> sealer_a = std::make_shared<PacketSealer>(std::make_shared<Keyring>(key), "prod", 101);
  std::shared_ptr<PacketSealer> sealer_b = std::make_shared<PacketSealer>(std::make_shared<Keyring>(key), "prod", 202);
  std::unique_ptr<UdpTransport> a = start(sealer_a);
  std::unique_ptr<UdpTransport> b = start(sealer_b);

  void SetUp() override {
    ASSERT_TRUE(a && b);
    a->set_handler(inbox_a.handler());
    b->set_handler(inbox_b.handler());
  }
};

TEST_F(Udp, TwoTransportsExchangeDatagramsOnTheIoThread) {
  b->set_handler([&](const UdpEndpoint& from, std::span<const std::uint8_t> p) {
    inbox_b.handler()(from, p);
    b->send(from, bytes("pong:" + std::string(p.begin(), p.end())));  // a reply from the handler
  });
  EXPECT_EQ(a->local_endpoint().host, "127.0.0.1");
  EXPECT_NE(a->local_endpoint().port, 0);
  a->send(b->local_endpoint(), bytes("ping"));
  ASSERT_TRUE(inbox_a.wait_for(1));
  const auto got_b = inbox_b.items(), got_a = inbox_a.items();
  ASSERT_EQ(got_b.size(), 1u);
  EXPECT_EQ(got_b[0].text, "ping");
  EXPECT_EQ(got_b[0].from, a->local_endpoint());
  EXPECT_EQ(got_a[0].text, "pong:ping");
  EXPECT_EQ(got_a[0].from, b->local_endpoint());
  EXPECT_NE(got_a[0].thread, std::this_thread::get_id());

  // post() runs on the same thread as the handler.
  std::promise<std::thread::id> where;
  a->post([&] { where.set_value(std::this_thread::get_id()); });
  auto f = where.get_future();
  ASSERT_EQ(f.wait_for(kWait), std::future_status::ready);
  EXPECT_EQ(f.get(), got_a[0].thread);
  // That thread is named, for top -H, perf and gdb.
  std::promise<std::string> name;
  a->post([&] {
    char n[16] = {};
    pthread_getname_np(pthread_self(), n, sizeof n);
    name.set_value(n);
  });
  auto fn = name.get_future();
  ASSERT_EQ(fn.wait_for(kWait), std::future_status::ready);
  EXPECT_EQ(fn.get(), "troupe-gossip");

  EXPECT_EQ(a->stats().delivered, 1u);
  EXPECT_EQ(b->stats().delivered, 1u);
  EXPECT_EQ(b->stats().dropped_inbound(), 0u);
  EXPECT_EQ(sealer_b->stats().opened, 1u);
}

TEST_F(Udp, ManyDatagramsArriveIntactAndInOrderOnLoopback) {
  constexpr int n = 200;
  for (int i = 0; i < n; ++i) a->send(b->local_endpoint(), bytes("m" + std::to_string(i)));
  ASSERT_TRUE(inbox_b.wait_for(n));
  const auto got = inbox_b.items();
  for (int i = 0; i < n; ++i) EXPECT_EQ(got[static_cast<std::size_t>(i)].text, "m" + std::to_string(i));
  drain(*a);
  EXPECT_EQ(a->stats().sent, static_cast<std::uint64_t>(n));
  EXPECT_EQ(a->stats().send_errors, 0u);
}

TEST(UdpBadInput, EveryBadDatagramIsCountedByReasonAndNeverDelivered) {
  const auto key = *generate_key();
  Inbox inbox;
  // max_datagram below max_inbound: 1400..2000 bytes is "oversized", over 2000 is "truncated".
  auto rx_sealer =
      std::make_shared<PacketSealer>(std::make_shared<Keyring>(key), "prod", 303, SealerOptions{.max_datagram = 1400});
  auto rx = start(rx_sealer, UdpTransportConfig{.max_inbound = 2000});
  ASSERT_TRUE(rx);
  rx->set_handler(inbox.handler());
  const auto to = rx->local_endpoint();

  PacketSealer peer(std::make_shared<Keyring>(key), "prod", 404);
  PacketSealer stranger(std::make_shared<Keyring>(*generate_key()), "prod", 505);
  RawSocket raw;

  raw.send(to, {});                                          // too_short (an empty datagram)
  raw.send(to, bytes("x"));                                  // too_short
  raw.send(to, Bytes{2, 4, 'p', 'r', 'o', 'd'});            // bad_version
  raw.send(to, *stranger.seal(bytes("not our key")));       // unknown_key
  auto tampered = *peer.seal(bytes("tampered"));
  tampered[tampered.size() - 20] ^= 1;
  raw.send(to, tampered);                                    // auth_failed
  auto tag = *peer.seal(bytes("bad tag"));
  tag.back() ^= 0x40;
  raw.send(to, tag);                                         // auth_failed
  const auto genuine = *peer.seal(bytes("genuine"));
  raw.send(to, genuine);                                     // delivered
  raw.send(to, genuine);                                     // replayed
  raw.send(to, Bytes(1500, 1));                              // oversized
  raw.send(to, Bytes(3000, 1));                              // truncated
  std::mt19937 rng(99);
  for (int i = 0; i < 20; ++i) {                             // random: dropped, whatever the reason
    Bytes junk(1 + rng() % 200);
    for (auto& x : junk) x = static_cast<std::uint8_t>(rng());
    raw.send(to, junk);
  }
  // A datagram from the same socket after all of them: once it is delivered, every earlier one
  // has been processed (loopback keeps one socket's datagrams in order).
  raw.send(to, *peer.seal(bytes("marker")));
  ASSERT_TRUE(inbox.wait_for_text("marker"));

  const auto items = inbox.items();
  ASSERT_EQ(items.size(), 2u);
  EXPECT_EQ(items[0].text, "genuine");
  EXPECT_EQ(items[1].text, "marker");
  EXPECT_EQ(items[0].from, (UdpEndpoint{"127.0.0.1", raw.port()}));
  const auto s = rx->stats();
  EXPECT_EQ(s.delivered, 2u);
  EXPECT_GE(s.dropped_by(SealErrc::too_short), 2u);
  EXPECT_GE(s.dropped_by(SealErrc::bad_version), 1u);
  EXPECT_GE(s.dropped_by(SealErrc::unknown_key), 1u);
  EXPECT_EQ(s.dropped_by(SealErrc::auth_failed), 2u);
  EXPECT_EQ(s.dropped_by(SealErrc::replayed), 1u);
  EXPECT_EQ(s.dropped_by(SealErrc::oversized), 1u);
  EXPECT_EQ(s.truncated, 1u);
  EXPECT_EQ(s.dropped_inbound(), 9u + 20u);  // the 9 bad ones above, then the random ones
  EXPECT_EQ(s.unhandled, 0u);
}

TEST_F(Udp, MaxPayloadIsTheMtuMinusHeadersAndSealingAndLargerSendsAreRefused) {
  // 1400 - 40 (IPv6 header) - 8 (UDP) - (50 + 4 for "prod")
  EXPECT_EQ(a->max_payload(), 1298u);
  a->send(b->local_endpoint(), Bytes(a->max_payload() + 1, 'x'));
  EXPECT_EQ(a->stats().oversized_outbound, 1u);  // refused synchronously
  a->send(b->local_endpoint(), Bytes(a->max_payload(), 'y'));
  ASSERT_TRUE(inbox_b.wait_for(1));
  EXPECT_EQ(inbox_b.items()[0].text, std::string(1298, 'y'));
  EXPECT_EQ(b->stats().delivered, 1u);
}

TEST_F(Udp, AnotherClusterIsRefusedClearlyThroughTheMismatchHandler) {
  Inbox inbox_c;
  auto c = start(std::make_shared<PacketSealer>(std::make_shared<Keyring>(key), "staging", 303));
  ASSERT_TRUE(c);
  c->set_handler(inbox_c.handler());
  std::promise<std::pair<UdpEndpoint, std::string>> mismatch;
  b->set_mismatch_handler([&](const UdpEndpoint& from, const std::string& their_cluster) {
    mismatch.set_value({from, their_cluster});
    b->send_as(from, bytes("refused: this is cluster prod"), their_cluster);
  });
  c->send(b->local_endpoint(), bytes("join"));
  ASSERT_TRUE(inbox_c.wait_for(1));
  EXPECT_EQ(inbox_c.items()[0].text, "refused: this is cluster prod");
  EXPECT_EQ(inbox_c.items()[0].from, b->local_endpoint());
  auto m = mismatch.get_future().get();
  EXPECT_EQ(m.first, c->local_endpoint());
  EXPECT_EQ(m.second, "staging");
  EXPECT_EQ(b->stats().dropped_by(SealErrc::cluster_mismatch), 1u);
  EXPECT_EQ(b->stats().delivered, 0u);
  EXPECT_TRUE(inbox_b.items().empty());
}

TEST_F(Udp, APortNobodyListensOnIsReportedWithItsEndpointAndNothingBreaks) {
  // A port that was bound and closed again: the kernel answers with ICMP port unreachable.
  std::uint16_t closed = 0;
  {
    RawSocket gone;
    closed = gone.port();
  }
  const UdpEndpoint dead{"127.0.0.1", closed};
  std::mutex mu;
  std::condition_variable cv;
  std::vector<UdpEndpoint> refused;
  a->set_unreachable_handler([&](const UdpEndpoint& to) {
    std::lock_guard lk(mu);
    refused.push_back(to);
    cv.notify_all();
  });
  auto wait_refusals = [&](std::size_t n) {
    std::unique_lock lk(mu);
    return cv.wait_for(lk, kWait, [&] { return refused.size() >= n; });
  };
  a->send(dead, bytes("anyone?"));
  ASSERT_TRUE(wait_refusals(1));
  EXPECT_EQ(refused[0], dead);
  // Several at once, with a datagram to a live peer among them: every refusal is reported and
  // the pending error fails neither the receive nor that send.
  a->send(dead, bytes("anyone? 2"));
  a->send(dead, bytes("anyone? 3"));
  a->send(b->local_endpoint(), bytes("to b"));
  ASSERT_TRUE(wait_refusals(3));
  ASSERT_TRUE(inbox_b.wait_for_text("to b"));
  b->send(a->local_endpoint(), bytes("to a"));
  ASSERT_TRUE(inbox_a.wait_for_text("to a"));
  for (const auto& r : refused) EXPECT_EQ(r, dead);
  const auto s = a->stats();
  EXPECT_EQ(s.port_unreachable, 3u);
  EXPECT_EQ(s.receive_errors, 0u);
  EXPECT_EQ(s.send_errors, 0u);
  EXPECT_EQ(s.sent, 4u);
}

TEST_F(Udp, KeyRotationOverTheWire) {
  const auto k2 = *generate_key();
  ASSERT_FALSE(sealer_a->keyring()->install(k2));
  ASSERT_FALSE(sealer_b->keyring()->install(k2));
  ASSERT_FALSE(sealer_a->keyring()->use(k2));
  a->send(b->local_endpoint(), bytes("under k2"));
  b->send(a->local_endpoint(), bytes("under k1"));
  ASSERT_TRUE(inbox_b.wait_for(1));
  ASSERT_TRUE(inbox_a.wait_for(1));
  ASSERT_FALSE(sealer_b->keyring()->use(k2));
  ASSERT_FALSE(sealer_a->keyring()->remove(key));
  ASSERT_FALSE(sealer_b->keyring()->remove(key));
  a->send(b->local_endpoint(), bytes("k2 only"));
  ASSERT_TRUE(inbox_b.wait_for_text("k2 only"));
  EXPECT_EQ(b->stats().dropped_inbound(), 0u);
}

// A host name is looked up once, not once a datagram (a slow resolver would delay every probe
// of a member that advertises a name); datagrams sent meanwhile wait for the answer.
TEST_F(Udp, HostNamesAreResolvedOnceForManyDatagrams) {
  for (int i = 0; i < 20; ++i) a->send({"localhost", b->local_endpoint().port}, bytes("by name " + std::to_string(i)));
  ASSERT_TRUE(inbox_b.wait_for(20));
  EXPECT_EQ(inbox_b.items()[0].text, "by name 0");
  a->send({"localhost", b->local_endpoint().port}, bytes("later"));
  ASSERT_TRUE(inbox_b.wait_for_text("later"));
  EXPECT_EQ(a->stats().resolve_errors, 0u);
  EXPECT_EQ(a->stats().resolutions, 1u);
}

TEST(UdpIpv6, LoopbackWorksOverIpv6) {
  const auto key = *generate_key();
  auto config = UdpTransportConfig{.bind_host = "::1"};
  auto a = UdpTransport::start(config, std::make_shared<PacketSealer>(std::make_shared<Keyring>(key), "prod", 1),
                               make_node_logger("udp-test"));
  if (!a.ok()) GTEST_SKIP() << "no IPv6 loopback: " << a.error().message();
  Inbox inbox;
  auto b = start(std::make_shared<PacketSealer>(std::make_shared<Keyring>(key), "prod", 2), config);
  ASSERT_TRUE(b);
  b->set_handler(inbox.handler());
  EXPECT_EQ((*a)->local_endpoint().host, "::1");
  (*a)->send(b->local_endpoint(), bytes("v6"));
  ASSERT_TRUE(inbox.wait_for(1));
  EXPECT_EQ(inbox.items()[0].from, (*a)->local_endpoint());
  EXPECT_EQ(inbox.items()[0].from.to_string(), "[::1]:" + std::to_string((*a)->local_endpoint().port));
  // An IPv6 destination from an IPv4 socket is a counted send error, not a crash.
  Inbox none;
  auto v4 = start(std::make_shared<PacketSealer>(std::make_shared<Keyring>(key), "prod", 3));
  ASSERT_TRUE(v4);
  std::promise<void> posted;
  v4->send(b->local_endpoint(), bytes("wrong family"));
  v4->post([&] { posted.set_value(); });  // runs after the posted send
  posted.get_future().wait();
  EXPECT_EQ(v4->stats().send_errors, 1u);
}

TEST_F(Udp, TimersRunOnTheIoThreadAndStopWhenCancelled) {
  std::promise<std::thread::id> once;
  a->schedule_once(1ms, [&] { once.set_value(std::this_thread::get_id()); });
  auto io_thread = once.get_future().get();
  EXPECT_NE(io_thread, std::this_thread::get_id());

  // A periodic timer that cancels itself on its 3rd run never runs a 4th time: checked after a
  // later one-shot timer (5 periods further) has fired.
  std::atomic<int> runs{0};
  std::promise<void> third;
  UdpTransport::TimerId every = 0;
  std::promise<UdpTransport::TimerId> id_ready;
  auto id_future = id_ready.get_future().share();
  every = a->schedule_every(2ms, [&, id_future] {
    if (++runs == 3) {
      a->cancel(id_future.get());
      third.set_value();
    }
  });
  id_ready.set_value(every);
  third.get_future().get();
  std::promise<void> later;
  a->schedule_once(10ms, [&] { later.set_value(); });
  later.get_future().get();
  EXPECT_EQ(runs, 3);

  // Cancelled from another thread before it is due: never runs. The I/O thread is held until
  // both the scheduling and the cancellation are queued.
  std::promise<void> release;
  auto held = release.get_future().share();
  a->post([held] { held.wait(); });
  std::atomic<bool> fired{false};
  const auto id = a->schedule_once(0ms, [&] { fired = true; });
  a->cancel(id);
  a->cancel(12345);  // unknown ids are ignored
  release.set_value();
  std::promise<void> after;
  a->schedule_once(5ms, [&] { after.set_value(); });
  after.get_future().get();
  EXPECT_FALSE(fired);
}

// A handler or a timer that throws must not end the chain it runs in: the next datagram is
// still received and a repeating timer still repeats; each failure is counted.
TEST_F(Udp, AHandlerOrTimerThatThrowsLeavesReceivingAndTimersGoing) {
  std::atomic<int> seen{0};
  b->set_handler([&](const UdpEndpoint& from, std::span<const std::uint8_t> p) {
    if (seen++ == 0) throw std::runtime_error("the protocol failed on this one");
    inbox_b.handler()(from, p);
  });
  a->send(b->local_endpoint(), bytes("first"));
  a->send(b->local_endpoint(), bytes("second"));
  ASSERT_TRUE(inbox_b.wait_for(1)) << "receiving stopped after the handler threw";
  EXPECT_EQ(inbox_b.items()[0].text, "second");
  struct Runs {  // shared with the timer, which may run once more after it is cancelled
    std::atomic<int> n{0};
    std::promise<void> third;
  };
  auto runs = std::make_shared<Runs>();
  const auto every = b->schedule_every(1ms, [runs] {
    const int n = ++runs->n;
    if (n == 3) runs->third.set_value();
    if (n <= 2) throw 42;  // not even a std::exception
  });
  ASSERT_EQ(runs->third.get_future().wait_for(kWait), std::future_status::ready) << "the timer stopped repeating";
  b->cancel(every);
  EXPECT_EQ(b->stats().handler_failures, 3u);
}

TEST_F(Udp, StopIsIdempotentWorksFromTheIoThreadAndSilencesTheTransport) {
  std::promise<void> stopped_inside;
  b->post([&] {
    b->stop();  // only requests the stop: must not deadlock on its own thread
    stopped_inside.set_value();
  });
  ASSERT_EQ(stopped_inside.get_future().wait_for(kWait), std::future_status::ready);
  b->stop();  // joins
  b->stop();  // idempotent
  b->send(a->local_endpoint(), bytes("after stop"));
  b->post([] { FAIL() << "ran after stop"; });
  // a is alive and hears nothing from b; a marker from a itself (to itself) comes through.
  a->send(a->local_endpoint(), bytes("self"));
  ASSERT_TRUE(inbox_a.wait_for(1));
  EXPECT_EQ(inbox_a.items().size(), 1u);
  EXPECT_EQ(inbox_a.items()[0].text, "self");
  EXPECT_EQ(b->stats().sent, 0u);
  a->stop();
  a.reset();
}

TEST(UdpConfig, BadConfigAndABusyPortAreErrors) {
  const auto key = *generate_key();
  auto sealer = std::make_shared<PacketSealer>(std::make_shared<Keyring>(key), "prod", 1);
  auto log = make_node_logger("udp-test");
  EXPECT_EQ(UdpTransport::start({.mtu = 100}, sealer, log).error(), std::errc::invalid_argument);
  EXPECT_EQ(UdpTransport::start({.mtu = 9000, .max_inbound = 1500}, sealer, log).error(), std::errc::invalid_argument);
  auto first = UdpTransport::start({}, sealer, log);
  ASSERT_TRUE(first.ok());
  const auto busy = UdpTransport::start({.port = (*first)->local_endpoint().port}, sealer, log);
  EXPECT_EQ(busy.error(), std::errc::address_in_use);
  EXPECT_FALSE(UdpTransport::start({.bind_host = "192.0.2.1"}, sealer, log).ok());  // not a local address
}

TEST(UdpClock, SteadyClockIsMonotonic) {
  SteadyClock clock;
  const auto t0 = clock.now();
  const auto t1 = clock.now();
  EXPECT_GE(t1, t0);
  EXPECT_GT(t0.count(), 0);
}

}  // namespace
}  // namespace troupe::membership
