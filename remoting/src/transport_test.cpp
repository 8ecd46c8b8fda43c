// The transport between two or three in-process nodes over real loopback sockets with CURVE:
// tell/ask both ways, replies via the sender ref, per-pair ordering, remote deathwatch, node loss,
// restarts (new incarnation), overflow accounting, and every kind of bad input.

#include <troupe/remoting/transport.hpp>

#include <gtest/gtest.h>

#include <csignal>
#include <filesystem>
#include <fstream>
#include <future>
#include <map>
#include <random>
#include <set>
#include <thread>

#include <sys/syscall.h>
#include <unistd.h>

#include <zmq.hpp>

#include <troupe/serialization/envelope_generated.h>

#include "spin_policy.hpp"
#include "testkit.hpp"

namespace troupe::remoting {
namespace {

using namespace testkit;
using namespace std::chrono_literals;


/// Replies to every message with the message itself.
class Echo final : public Actor {
 public:
  void receive(const Message& m) override { sender().tell(m, self()); }
};

/// Checks that the Pings from each sender arrive in order; "report" answers Cmd{"ok"|"bad", count}.
class OrderChecker final : public Actor {
 public:
  void receive(const Message& m) override {
    if (const auto* p = m.as<test::Ping>()) {
      auto& last = last_[p->from()];
      if (p->seq() != last + 1) bad_ = true;
      last = p->seq();
      ++count_;
    } else if (op_of(m) == "report") {
      sender().tell(cmd(bad_ ? "bad" : "ok", count_));
    }
  }

 private:
  std::map<std::uint32_t, std::uint64_t> last_;
  std::uint64_t count_ = 0;
  bool bad_ = false;
};

/// Sends `n` Pings numbered 1..n to the target given in its Cmd{"go"} sender-less trigger.
class Blaster final : public Actor {
 public:
  Blaster(ActorRef target, std::uint32_t id) : target_(std::move(target)), id_(id) {}
  void receive(const Message& m) override {
    if (op_of(m) != "go") return;
    for (std::uint64_t i = 1; i <= m.as<test::Cmd>()->n(); ++i) target_.tell(ping(i, id_), self());
  }

 private:
  ActorRef target_;
  std::uint32_t id_;
};

struct Keys {
  CurveKeyPair a = generate_keypair().value();
  CurveKeyPair b = generate_keypair().value();
  CurveKeyPair c = generate_keypair().value();
  CurveKeyPair stranger = generate_keypair().value();
  std::shared_ptr<AllowList> allow = std::make_shared<AllowList>(std::vector{a.public_key, b.public_key, c.public_key});
};

struct Node {
  Node(const std::string& name, const CurveKeyPair& keys, std::shared_ptr<AllowList> allow, std::uint16_t port = 0,
       std::function<void(TransportConfig&)> tweak = {})
      : sys(test_config(name)), probe(sys), key(keys.public_key) {
    sys.registry().add<test::Ping>();
    sys.registry().add<test::Cmd>();
    sys.registry().add<test::Text>();
    TransportConfig cfg;
    cfg.port = port;
    cfg.keys = keys;
    cfg.allow_list = std::move(allow);
    if (tweak) tweak(cfg);
    auto t = Transport::start(sys, cfg);
    if (!t) throw std::runtime_error("transport did not start: " + t.error().message());
    transport = std::move(t).value();
  }
  ~Node() {
    transport->stop();
    sys.shutdown();
  }
  /// A ref to `path` on `other`, through this node's transport.
  ActorRef ref_on(const Node& other, const std::string& path) {
    transport->add_peer_key(other.transport->address().endpoint(), other.public_key());
    return transport->resolve(other.transport->address().to_string() + path).value();
  }
  std::string public_key() const { return key; }

  ActorSystem sys;
  Probe probe;
  std::string key;
  std::unique_ptr<Transport> transport;
};

struct TwoNodes : ::testing::Test {
  TwoNodes() {
    a = std::make_unique<Node>("a", keys.a, keys.allow);
    b = std::make_unique<Node>("b", keys.b, keys.allow);
    echo_b = b->sys.spawn<Echo>(SpawnOptions{.name = "echo"});
  }
  /// b restarts at its port with its key (a new incarnation, with an echo); returns the old uid.
  std::uint64_t restart_b() {
    const auto port = b->transport->address().port;
    const auto old_uid = b->transport->address().uid;
    echo_b = {};
    b.reset();
    b = std::make_unique<Node>("b2", keys.b, keys.allow, port);
    b->sys.spawn<Echo>(SpawnOptions{.name = "echo"});
    return old_uid;
  }
  Keys keys;
  std::unique_ptr<Node> a, b;
  ActorRef echo_b;
};

TEST_F(TwoNodes, TellReachesTheRemoteActorAndTheReplyComesBackViaTheSenderRef) {
  auto echo = a->ref_on(*b, "/user/echo");
  echo.tell(ping(7), a->probe.ref());
  auto r = a->probe.next();
  ASSERT_TRUE(r) << "no reply";
  ASSERT_TRUE(r->msg.is<test::Ping>());
  EXPECT_EQ(r->msg.as<test::Ping>()->seq(), 7u);
  EXPECT_EQ(r->sender, echo) << "the reply's sender is the same (interned) remote ref";
  EXPECT_EQ(r->sender.path(), b->transport->address().to_string() + "/user/echo");
  EXPECT_GE(a->transport->stats().messages_out, 1u);
  EXPECT_GE(b->transport->stats().messages_in, 1u);
}

TEST_F(TwoNodes, TheTransportsThreadsAreNamedForTopPerfAndGdb) {
  const auto names = thread_names();
  // One I/O thread and one ZAP handler per transport (two here), beside ZeroMQ's own.
  EXPECT_EQ(names.count("troupe-remoting"), 2u);
  EXPECT_EQ(names.count("troupe-zap"), 2u);
}

TEST_F(TwoNodes, KeyedMessagesReachTheInboxOfTheirPathWithTheirRoute) {
  // What b's inbox for /user/echo got, in order (the I/O thread calls it).
  struct Got {
    std::uint64_t seq;
    bool keyed;
    std::string entity_id;  // the route's id is a view into the frame, valid during the call
    KeyedRoute route;
    ActorRef sender;
  };
  std::mutex mu;
  std::vector<Got> got;
  b->transport->set_inbox("/user/echo", [&](std::span<Transport::Inbound> run) {
    std::lock_guard lk(mu);
    for (auto& in : run) {
      got.push_back({in.msg.as<test::Ping>()->seq(), in.route != nullptr,
                     in.route ? std::string(in.route->entity_id) : std::string(), in.route ? *in.route : KeyedRoute{},
                     in.sender});
    }
  });
  auto echo = a->ref_on(*b, "/user/echo");
  ASSERT_TRUE(a->transport->tell_keyed(echo, ping(1), a->probe.ref(), KeyedRoute{"user-42", 7, 3, 1}));
  echo.tell(ping(2), a->probe.ref());  // not keyed: the inbox gets it too, without a route
  // An id longer than an outbound message keeps inline travels as well.
  const std::string long_id(200, 'k');
  ASSERT_TRUE(a->transport->tell_keyed(echo, ping(10), {}, KeyedRoute{long_id, 8, 5, 2}));
  ASSERT_TRUE(eventually([&] {
    std::lock_guard lk(mu);
    return got.size() == 3;
  }));
  {
    std::lock_guard lk(mu);
    EXPECT_EQ(got[0].seq, 1u);
    ASSERT_TRUE(got[0].keyed);
    EXPECT_EQ(got[0].entity_id, "user-42");
    EXPECT_EQ(got[0].route.shard, 7u);
    EXPECT_EQ(got[0].route.epoch, 3u);
    EXPECT_EQ(got[0].route.hops, 1u);
    EXPECT_EQ(got[0].sender.path(), a->transport->address_of(a->probe.ref()));
    EXPECT_EQ(got[1].seq, 2u);
    EXPECT_FALSE(got[1].keyed);
    EXPECT_EQ(got[2].seq, 10u);
    EXPECT_EQ(got[2].entity_id, long_id);
    EXPECT_EQ(got[2].route.shard, 8u);
    EXPECT_EQ(got[2].route.epoch, 5u);
    EXPECT_FALSE(got[2].sender);
  }
  // Without the inbox the actor gets plain messages again (the first echo is 4's: the inbox took
  // 1, 2 and 10), and a keyed one has nowhere to go.
  b->transport->set_inbox("/user/echo", {});
  const auto no_recipient = b->transport->stats().envelopes_no_recipient;
  ASSERT_TRUE(a->transport->tell_keyed(echo, ping(3), a->probe.ref(), KeyedRoute{"user-42", 7, 3, 1}));
  echo.tell(ping(4), a->probe.ref());
  auto r = a->probe.next();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->msg.as<test::Ping>()->seq(), 4u) << "the first echo";
  EXPECT_EQ(b->transport->stats().envelopes_no_recipient, no_recipient + 1);
  // Only a remote ref of this transport can be told keyed.
  EXPECT_FALSE(a->transport->tell_keyed(a->probe.ref(), ping(5), {}, KeyedRoute{"x", 0, 1, 1}));
}

TEST_F(TwoNodes, AskWorksBothWays) {
  auto echo = a->ref_on(*b, "/user/echo");
  auto r = echo.ask(ping(1), 10s).get();
  ASSERT_TRUE(r.ok()) << r.error().message();
  EXPECT_EQ(r->as<test::Ping>()->seq(), 1u);

  auto echo_a = a->sys.spawn<Echo>(SpawnOptions{.name = "echo"});
  auto back = b->ref_on(*a, "/user/echo");
  auto r2 = back.ask(ping(2), 10s).get();
  ASSERT_TRUE(r2.ok()) << r2.error().message();
  EXPECT_EQ(r2->as<test::Ping>()->seq(), 2u);
}

TEST_F(TwoNodes, AskToAMissingPathIsAnsweredDeadTargetAndCountedThere) {
  auto nobody = a->ref_on(*b, "/user/nobody");
  const auto dead_before = b->sys.stats().dead_letters;
  auto r = nobody.ask(ping(1), 30s).get();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error(), ActorErrc::dead_target) << "answered by the remote node, not by the timeout";
  EXPECT_EQ(b->transport->stats().envelopes_no_recipient, 1u);
  EXPECT_GT(b->sys.stats().dead_letters, dead_before);
}

TEST_F(TwoNodes, MessagesFromEachSenderArriveInOrderUnderLoad) {
  auto checker = b->sys.spawn<OrderChecker>(SpawnOptions{.name = "checker"});
  auto remote = a->ref_on(*b, "/user/checker");
  constexpr std::uint64_t kEach = 20'000;
  std::vector<ActorRef> blasters;
  for (std::uint32_t i = 1; i <= 3; ++i) blasters.push_back(a->sys.spawn<Blaster>(SpawnOptions{}, remote, i));
  for (auto& bl : blasters) bl.tell(cmd("go", kEach));
  // The report is sent after every blaster finished: ask each blaster's messages to drain first
  // by asking the checker until it counted all of them.
  std::uint64_t seen = 0;
  std::string verdict;
  const auto end = std::chrono::steady_clock::now() + 60s;
  while (seen < 3 * kEach && std::chrono::steady_clock::now() < end) {
    auto r = remote.ask(cmd("report"), 10s).get();
    ASSERT_TRUE(r.ok()) << r.error().message();
    seen = r->as<test::Cmd>()->n();
    verdict = op_of(*r);
    ASSERT_EQ(verdict, "ok") << "out of order after " << seen;
  }
  EXPECT_EQ(seen, 3 * kEach);
  EXPECT_EQ(a->transport->stats().dropped_queue_full, 0u);
  EXPECT_LT(a->transport->stats().frames_out, a->transport->stats().messages_out) << "messages were batched";
}

TEST_F(TwoNodes, RemoteWatchGetsExactlyOneTerminatedWhenTheActorStops) {
  auto target = b->sys.spawn<Echo>(SpawnOptions{.name = "target"});
  auto remote = a->ref_on(*b, "/user/target");
  a->probe.watch(a->sys, remote);
  ASSERT_TRUE(eventually([&] { return a->transport->stats().remote_watches == 1; }));
  // The watch is registered on b once b answers a message sent after it (same pair, FIFO).
  ASSERT_TRUE(remote.ask(ping(1), 10s).get().ok());
  b->sys.stop(target);
  auto t = a->probe.next();
  ASSERT_TRUE(t);
  ASSERT_TRUE(t->msg.is<sys::Terminated>());
  EXPECT_EQ(t->msg.as<sys::Terminated>()->reason(), sys::TerminationReason::Stopped);
  EXPECT_EQ(t->msg.as<sys::Terminated>()->actor_path()->str(), remote.path());
  EXPECT_EQ(t->sender, remote);
  // Losing the node afterwards does not produce a second one.
  a->transport->node_lost(b->transport->address().uid, "test");
  auto echo = a->ref_on(*b, "/user/echo");
  echo.tell(ping(1), a->probe.ref());  // dropped: the node is lost
  a->probe.ref().tell(cmd("marker"));
  auto m = a->probe.next();
  ASSERT_TRUE(m);
  EXPECT_EQ(op_of(m->msg), "marker");
  EXPECT_EQ(a->transport->stats().remote_watches, 0u);
}

// A Watch that left (handed to ZeroMQ) but never took effect on the other side: lost with a
// broken connection. Here b drops it (a's key is out of b's allow-list for that moment), then
// a's connection to b is cut (ss -K) and a reconnects: the watch is sent again on the new
// connection, so a still gets its Terminated when the actor stops (before, only when b was lost).
TEST_F(TwoNodes, AWatchLostWithABrokenConnectionIsSentAgainWhenItIsRemade) {
  if (::geteuid() != 0 || std::system("command -v ss >/dev/null 2>&1") != 0) GTEST_SKIP() << "needs root and ss -K";
  auto target = b->sys.spawn<Echo>(SpawnOptions{.name = "target"});
  auto remote = a->ref_on(*b, "/user/target");
  ASSERT_TRUE(remote.ask(ping(1), 10s).get().ok());  // a's connection to b is up
  keys.allow->replace({keys.b.public_key, keys.c.public_key});  // b drops what a sends
  const auto revoked = b->transport->stats().frames_key_revoked;
  a->probe.watch(a->sys, remote);
  ASSERT_TRUE(eventually([&] { return b->transport->stats().frames_key_revoked > revoked; })) << "the Watch reached b";
  keys.allow->replace({keys.a.public_key, keys.b.public_key, keys.c.public_key});
  const auto port = std::to_string(b->transport->address().port);
  const auto disconnects = a->transport->stats().disconnects;
  ASSERT_EQ(std::system(("ss -K dst 127.0.0.1 dport = :" + port + " >/dev/null 2>&1").c_str()), 0);
  ASSERT_TRUE(eventually([&] { return a->transport->stats().disconnects > disconnects; })) << "the connection was not cut";
  // Once the watch is registered again, an ask after it (same pair, FIFO) comes back after it.
  ASSERT_TRUE(eventually([&] { return remote.ask(ping(2), 2s).get().ok(); }));
  b->sys.stop(target);
  auto t = a->probe.next(10s);
  ASSERT_TRUE(t) << "no Terminated: the lost Watch was not sent again";
  ASSERT_TRUE(t->msg.is<sys::Terminated>());
  EXPECT_EQ(t->sender, remote);
}

TEST_F(TwoNodes, AWatchDroppedBeforeItLeftIsSentAgain) {
  auto target = b->sys.spawn<Echo>(SpawnOptions{.name = "target"});
  // No key for b yet: the Watch is dropped (counted) ...
  auto remote = a->transport->resolve(b->transport->address().to_string() + "/user/target").value();
  a->probe.watch(a->sys, remote);
  ASSERT_TRUE(eventually([&] { return a->transport->stats().dropped_no_peer_key >= 1; }));
  // ... and sent again once b can be reached: b's stop then reaches the watcher.
  a->transport->add_peer_key(b->transport->address().endpoint(), b->public_key());
  ASSERT_TRUE(eventually([&] { return b->transport->stats().messages_in >= 1; }));
  ASSERT_TRUE(remote.ask(ping(1), 10s).get().ok());  // after the Watch on the same pair
  b->sys.stop(target);
  auto t = a->probe.next();
  ASSERT_TRUE(t);
  ASSERT_TRUE(t->msg.is<sys::Terminated>());
  EXPECT_EQ(t->msg.as<sys::Terminated>()->reason(), sys::TerminationReason::Stopped);
}

TEST_F(TwoNodes, WatchingAMissingRemoteActorYieldsAlreadyDead) {
  auto remote = a->ref_on(*b, "/user/never-was");
  a->probe.watch(a->sys, remote);
  auto t = a->probe.next();
  ASSERT_TRUE(t);
  ASSERT_TRUE(t->msg.is<sys::Terminated>());
  EXPECT_EQ(t->msg.as<sys::Terminated>()->reason(), sys::TerminationReason::AlreadyDead);
  EXPECT_EQ(t->sender, remote);
}

TEST_F(TwoNodes, NodeLossTerminatesEveryWatchOnceAndLaterMessagesAreDeadLetters) {
  auto remote = a->ref_on(*b, "/user/echo");
  a->probe.watch(a->sys, remote);
  ASSERT_TRUE(remote.ask(ping(1), 10s).get().ok());
  a->transport->node_lost(b->transport->address().uid, "declared down by the test");
  auto t = a->probe.next();
  ASSERT_TRUE(t);
  ASSERT_TRUE(t->msg.is<sys::Terminated>());
  EXPECT_EQ(t->msg.as<sys::Terminated>()->reason(), sys::TerminationReason::NodeDown);
  EXPECT_TRUE(remote.target()->terminated());
  const auto dropped = a->transport->stats().dropped_node_lost;
  remote.tell(ping(2), a->probe.ref());
  EXPECT_EQ(a->transport->stats().dropped_node_lost, dropped + 1);
  auto r = remote.ask(ping(3), 10s).get();
  EXPECT_EQ(r.error(), ActorErrc::dead_target);
  // b stops: no second Terminated for a's watch.
  b->sys.stop(echo_b);
  a->probe.ref().tell(cmd("marker"));
  auto m = a->probe.next();
  ASSERT_TRUE(m);
  EXPECT_EQ(op_of(m->msg), "marker");
}

// Many watches between one pair of nodes (each side finds a watch by its refs or paths in
// constant time): every watched actor's stop gives its watcher exactly one Terminated, and an
// unwatched one none.
TEST_F(TwoNodes, ThousandsOfWatchesOfOneNodesActorsEachEndOnce) {
  constexpr int kActors = 2000;
  std::vector<ActorRef> targets, remotes;
  for (int i = 0; i < kActors; ++i) {
    const auto name = "t" + std::to_string(i);
    targets.push_back(b->sys.spawn<Echo>(SpawnOptions{.name = name}));
    remotes.push_back(a->ref_on(*b, "/user/" + name));
  }
  for (auto& r : remotes) a->probe.watch(a->sys, r);
  for (auto& r : remotes) a->probe.watch(a->sys, r);  // twice: still one watch
  for (int i = 1; i < kActors; i += 2) a->sys.unwatch(remotes[i], a->probe.ref());
  ASSERT_TRUE(eventually([&] { return a->transport->stats().remote_watches == kActors / 2; }));
  ASSERT_TRUE(remotes[0].ask(ping(1), 10s).get().ok());  // every Watch and Unwatch reached b first
  for (auto& t : targets) b->sys.stop(t);
  std::set<std::string> ended;
  for (int i = 0; i < kActors / 2; ++i) {
    auto t = a->probe.next();
    ASSERT_TRUE(t) << "after " << i << " Terminated";
    ASSERT_TRUE(t->msg.is<sys::Terminated>());
    EXPECT_TRUE(ended.insert(t->msg.as<sys::Terminated>()->actor_path()->str()).second) << "a second Terminated";
  }
  for (int i = 0; i < kActors; i += 2) EXPECT_TRUE(ended.count(remotes[i].path())) << remotes[i].path();
  // b sent every Terminated before answering this (same pair, FIFO): nothing more is coming.
  ASSERT_TRUE(a->ref_on(*b, "/user/echo").ask(ping(2), 10s).get().ok());
  a->probe.ref().tell(cmd("marker"));
  auto m = a->probe.next();
  ASSERT_TRUE(m);
  EXPECT_EQ(op_of(m->msg), "marker");
  EXPECT_EQ(a->transport->stats().remote_watches, 0u);
  EXPECT_EQ(a->transport->stats().terminated_unsolicited, 0u);
  EXPECT_EQ(a->transport->stats().io_errors + b->transport->stats().io_errors, 0u);
}

// A watcher at a path watches an actor at a path; both stop and new ones come at the same
// paths, again and again: each watch ends with its own Terminated (the index by paths forgets a
// watch that ended; a stale entry made the I/O thread throw when the next Watch of those paths
// left).
TEST_F(TwoNodes, WatchesBetweenTheSamePathsAgainAndAgainEachEndOnce) {
  // Watches its target from pre_start and tells `to` of the Terminated.
  class Watcher final : public Actor {
   public:
    Watcher(ActorRef target, ActorRef to) : target_(std::move(target)), to_(std::move(to)) {}
    void pre_start() override { context().watch(target_); }
    void receive(const Message& m) override {
      if (m.is<sys::Terminated>()) to_.tell(m);
    }

   private:
    ActorRef target_, to_;
  };
  for (int round = 0; round < 3; ++round) {
    auto target = b->sys.spawn<Echo>(SpawnOptions{.name = "again"});
    auto remote = a->ref_on(*b, "/user/again");
    auto watcher = a->sys.spawn<Watcher>(SpawnOptions{.name = "watcher"}, remote, a->probe.ref());
    ASSERT_TRUE(eventually([&] { return a->transport->stats().remote_watches == 1; })) << "round " << round;
    ASSERT_TRUE(remote.ask(ping(1), 10s).get().ok());  // the Watch reached b first
    b->sys.stop(target);
    auto t = a->probe.next();
    ASSERT_TRUE(t) << "round " << round;
    ASSERT_TRUE(t->msg.is<sys::Terminated>()) << "round " << round;
    EXPECT_EQ(t->msg.as<sys::Terminated>()->reason(), sys::TerminationReason::Stopped);
    a->probe.watch(a->sys, watcher);
    a->sys.stop(watcher);
    auto w = a->probe.next();  // the watcher is gone and its name free
    ASSERT_TRUE(w && w->msg.is<sys::Terminated>());
    ASSERT_TRUE(eventually([&] { return a->transport->stats().remote_watches == 0 && !b->sys.lookup("/user/again"); }));
  }
  EXPECT_EQ(a->transport->stats().io_errors, 0u);
  EXPECT_EQ(a->transport->stats().terminated_unsolicited, 0u);
}

TEST_F(TwoNodes, UnwatchMeansNoTerminated) {
  auto target = b->sys.spawn<Echo>(SpawnOptions{.name = "target"});
  auto remote = a->ref_on(*b, "/user/target");
  a->probe.watch(a->sys, remote);
  a->sys.unwatch(remote, a->probe.ref());
  ASSERT_TRUE(eventually([&] { return a->transport->stats().remote_watches == 0; }));
  ASSERT_TRUE(remote.ask(ping(1), 10s).get().ok());  // Watch and Unwatch reached b before this
  b->sys.stop(target);
  // b would have sent the Terminated before answering this (same pair, FIFO).
  ASSERT_TRUE(a->ref_on(*b, "/user/echo").ask(ping(2), 10s).get().ok());
  a->probe.ref().tell(cmd("marker"));
  auto m = a->probe.next();
  ASSERT_TRUE(m);
  EXPECT_EQ(op_of(m->msg), "marker");
}

TEST_F(TwoNodes, ARestartedPeerIsANewIncarnationOldRefsGetTerminatedNewRefsWork) {
  auto old_echo = a->ref_on(*b, "/user/echo");
  a->probe.watch(a->sys, old_echo);
  ASSERT_TRUE(old_echo.ask(ping(1), 10s).get().ok());
  const auto old_uid = restart_b();
  ASSERT_NE(b->transport->address().uid, old_uid);
  // The old incarnation's ref: a's next frame reaches the new process, whose answer reveals the
  // new incarnation; the old one is lost and the watch fires once.
  old_echo.tell(ping(2), a->probe.ref());
  auto t = a->probe.next(20s);
  ASSERT_TRUE(t);
  ASSERT_TRUE(t->msg.is<sys::Terminated>()) << "the old incarnation's message must not be delivered";
  EXPECT_EQ(t->msg.as<sys::Terminated>()->reason(), sys::TerminationReason::NodeDown);
  EXPECT_TRUE(old_echo.target()->terminated());
  auto fresh = a->ref_on(*b, "/user/echo");
  auto r = fresh.ask(ping(3), 10s).get();
  ASSERT_TRUE(r.ok()) << r.error().message();
  EXPECT_EQ(r->as<test::Ping>()->seq(), 3u);
  EXPECT_EQ(a->probe.queued(), 0u) << "no reply from the old ref";
}

// a learns b's key from b's handshake (nobody declares it on a). b restarts at the same port
// with the same key: its first frame proves the key again and makes a lose the old incarnation.
// a keeps the key for the new one, so a's reply reaches it (before, losing the old incarnation
// took the key along, and the reply was dropped for want of one).
TEST_F(TwoNodes, APeerRestartedWithTheSameKeyGetsRepliesThroughTheKeyItsHandshakeProved) {
  a->sys.spawn<Echo>(SpawnOptions{.name = "echo"});
  ASSERT_TRUE(b->ref_on(*a, "/user/echo").ask(ping(1), 10s).get().ok());
  const auto port = b->transport->address().port;
  echo_b = {};
  b.reset();
  b = std::make_unique<Node>("b2", keys.b, keys.allow, port);
  auto r = b->ref_on(*a, "/user/echo").ask(ping(2), 10s).get();
  ASSERT_TRUE(r.ok()) << r.error().message();
  EXPECT_EQ(r->as<test::Ping>()->seq(), 2u);
  EXPECT_EQ(a->transport->stats().dropped_no_peer_key, 0u);
  EXPECT_EQ(a->transport->stats().nodes_lost, 1u) << "the old incarnation";
}

// a holds b's key as membership gives it (learned for b's incarnation, not configured). b
// restarts at the same port with the same key file; membership then vouches for the same key for
// the new incarnation, and downs the old one afterwards. Losing the old one must not take the key
// the new one needs (before, a's messages to it were dropped for want of a key).
TEST_F(TwoNodes, AKeyLearnedForARestartedPeerOutlivesTheLossOfItsEarlierIncarnation) {
  const auto endpoint = b->transport->address().endpoint();
  a->transport->learn_peer_key(endpoint, keys.b.public_key, b->transport->address().uid);
  auto echo = a->transport->resolve(b->transport->address().to_string() + "/user/echo").value();
  ASSERT_TRUE(echo.ask(ping(1), 10s).get().ok());
  const auto old_uid = restart_b();
  EXPECT_FALSE(a->transport->learn_peer_key(endpoint, keys.b.public_key, b->transport->address().uid))
      << "the key was known already";
  a->transport->node_lost(old_uid, "downed");
  auto fresh = a->transport->resolve(b->transport->address().to_string() + "/user/echo").value();
  auto r = fresh.ask(ping(2), 10s).get();
  ASSERT_TRUE(r.ok()) << r.error().message();
  EXPECT_EQ(a->transport->stats().dropped_no_peer_key, 0u);
}

// A Watch for a peer that cannot be reached yet waits in the peer's queue; the sweep that sends
// unsent Watches again (each second) leaves it there instead of queueing a copy each time.
// Before, each round added a copy, and a queue of three then refused the next message.
TEST_F(TwoNodes, AWatchWaitingForItsPeerIsQueuedOnceNotOncePerResend) {
  Node c("c", keys.c, keys.allow, 0, [](TransportConfig& t) { t.max_queue_per_peer = 3; });
  auto target = c.ref_on(*b, "/user/echo");
  echo_b = {};
  b.reset();  // nobody listens at its address any more; c does not know it is gone
  c.probe.watch(c.sys, target);
  // The scenario is time itself: the Watch stays unsent through at least two of the sweep's
  // one-second rounds (no event marks a round that adds nothing).
  std::this_thread::sleep_for(3500ms);
  target.tell(ping(1));
  EXPECT_EQ(c.transport->stats().dropped_queue_full, 0u);
}

// b watches a's echo, then a path with no actor (answered AlreadyDead), then unwatches the echo.
// The AlreadyDead answer ends no other watch on a, so the unwatch finds the echo's and the
// echo's later stop sends b nothing. Before, the answer ended the echo's served watch in its
// place: the unwatch missed it and the stop sent b an unsolicited Terminated.
TEST_F(TwoNodes, AnAlreadyDeadAnswerEndsNoOtherWatchOfTheSameWatcher) {
  auto echo_a = a->sys.spawn<Echo>(SpawnOptions{.name = "echo"});
  a->sys.spawn<Echo>(SpawnOptions{.name = "other"});
  auto echo = b->ref_on(*a, "/user/echo");
  auto other = b->ref_on(*a, "/user/other");
  b->probe.watch(b->sys, echo);
  b->probe.watch(b->sys, b->ref_on(*a, "/user/missing"));
  auto t = b->probe.next();
  ASSERT_TRUE(t);
  ASSERT_TRUE(t->msg.is<sys::Terminated>());
  EXPECT_EQ(t->msg.as<sys::Terminated>()->reason(), sys::TerminationReason::AlreadyDead);
  b->sys.unwatch(echo, b->probe.ref());
  // b's I/O thread queues the Unwatch when it takes the unwatch, which may be after it took a
  // message sent just after it (the first ask): an ask sent once that one is answered is
  // behind the Unwatch, so its answer says a has handled it.
  ASSERT_TRUE(other.ask(ping(1), 10s).get().ok());
  ASSERT_TRUE(other.ask(ping(3), 10s).get().ok());
  a->probe.watch(a->sys, echo_a);
  a->sys.stop(echo_a);
  auto down = a->probe.next();
  ASSERT_TRUE(down);
  ASSERT_TRUE(down->msg.is<sys::Terminated>());
  // Whatever the stop sent b left before this reply.
  ASSERT_TRUE(other.ask(ping(2), 10s).get().ok());
  EXPECT_EQ(b->transport->stats().terminated_unsolicited, 0u);
  EXPECT_EQ(b->probe.queued(), 0u);
}

// A Terminated for a remote watcher that is dropped before it leaves (here: its node's queue
// to the watcher is full) is sent again until one copy leaves, so the watcher still hears of
// the stop. Before, it was a dead letter and the watcher waited for ever.
TEST(RemoteWatch, ATerminatedDroppedOnAFullQueueIsSentAgain) {
  Keys keys;
  Node a("a", keys.a, keys.allow, 0, [](TransportConfig& t) { t.max_queue_per_peer = 4; });
  Node b("b", keys.b, keys.allow);
  auto watched = a.sys.spawn<Echo>(SpawnOptions{.name = "watched"});
  b.sys.spawn<Echo>(SpawnOptions{.name = "echo"});
  auto watched_from_b = b.ref_on(a, "/user/watched");
  b.probe.watch(b.sys, watched_from_b);
  ASSERT_TRUE(watched_from_b.ask(ping(1), 10s).get().ok());  // behind the Watch: a serves it
  // a's I/O thread stops in an inbox until the gate opens: nothing a queues for b leaves.
  std::promise<void> stalled, gate;
  auto open = gate.get_future().share();
  a.transport->set_inbox("/user/stall", [&stalled, open](std::span<Transport::Inbound>) {
    stalled.set_value();
    open.wait();
  });
  b.ref_on(a, "/user/stall").tell(ping(2));
  stalled.get_future().wait();
  auto echo_on_b = a.ref_on(b, "/user/echo");
  for (std::uint64_t i = 0; i < 4; ++i) echo_on_b.tell(ping(10 + i));  // a's queue for b is full
  const auto full = a.transport->stats().dropped_queue_full;
  a.sys.stop(watched);
  const bool dropped = eventually([&] { return a.transport->stats().dropped_queue_full > full; });
  gate.set_value();
  ASSERT_TRUE(dropped) << "the Terminated was not dropped: the test did not fill the queue";
  auto t = b.probe.next(10s);
  ASSERT_TRUE(t) << "the watcher never heard of the stop";
  ASSERT_TRUE(t->msg.is<sys::Terminated>());
  EXPECT_EQ(t->msg.as<sys::Terminated>()->reason(), sys::TerminationReason::Stopped);
  EXPECT_EQ(t->sender, watched_from_b);
  EXPECT_GE(a.transport->stats().terminated_resent, 1u);
  // Copies are a sweep (1 s) apart: two sweeps bring none.
  EXPECT_FALSE(eventually([&] { return b.probe.queued() > 0; }, 2500ms)) << "one Terminated, not one per copy";
  EXPECT_EQ(b.transport->stats().terminated_unsolicited, 0u);
}

// A message larger than a frame may be is dropped by its sender (counted, a dead letter). Before,
// it went out alone in a frame the receiver refused, or (this far over the limit) one that made
// the receiver's ZeroMQ cut the connection, with whatever else was on it.
TEST(TransportLimits, AMessageLargerThanAFrameMayBeIsDroppedByItsSenderAndTheConnectionLives) {
  Keys keys;
  auto small = [](TransportConfig& t) {
    t.limits.max_frame_bytes = 64u << 10;
    t.max_batch_bytes = 16u << 10;
  };
  Node x("x", keys.a, keys.allow, 0, small), y("y", keys.b, keys.allow, 0, small);
  y.sys.spawn<Echo>(SpawnOptions{.name = "echo"});
  auto echo = x.ref_on(y, "/user/echo");
  ASSERT_TRUE(echo.ask(ping(1), 10s).get().ok());
  const std::string text(200u << 10, 'x');
  echo.tell(Message::build<test::Text>([&](auto& b) { return test::CreateTextDirect(b, text.c_str()); }), x.probe.ref());
  EXPECT_EQ(x.transport->stats().dropped_oversized, 1u);
  auto r = echo.ask(ping(2), 10s).get();
  ASSERT_TRUE(r.ok()) << r.error().message();
  EXPECT_EQ(y.transport->stats().frames_oversized, 0u);
  EXPECT_EQ(y.transport->stats().disconnects, 0u);
  EXPECT_EQ(x.probe.queued(), 0u) << "no echo of the big one";
}

TEST_F(TwoNodes, AKeyRemovedFromTheAllowListIsCutOffAndAReAddedOneWorksAgain) {
  auto echo = a->ref_on(*b, "/user/echo");
  ASSERT_TRUE(echo.ask(ping(1), 10s).get().ok());
  keys.allow->replace({keys.b.public_key, keys.c.public_key});  // a is out (both share the list)
  echo.tell(ping(2), a->probe.ref());
  ASSERT_TRUE(eventually([&] { return b->transport->stats().frames_key_revoked >= 1; }));
  EXPECT_EQ(a->probe.queued(), 0u);
  keys.allow->replace({keys.a.public_key, keys.b.public_key, keys.c.public_key});
  auto r = echo.ask(ping(3), 10s).get();
  ASSERT_TRUE(r.ok()) << r.error().message();
  EXPECT_EQ(r->as<test::Ping>()->seq(), 3u);
}

// The other way round: b's key is removed from a's allow-list (b taken out of the cluster, say).
// a sends b nothing more, over the connection it has or a new one, until the key is back.
TEST_F(TwoNodes, NothingIsSentToAPeerWhoseKeyWasRemovedFromTheAllowList) {
  auto echo = a->ref_on(*b, "/user/echo");
  ASSERT_TRUE(echo.ask(ping(1), 10s).get().ok());
  const auto received = b->transport->stats().messages_in;
  keys.allow->replace({keys.a.public_key, keys.c.public_key});  // b is out (both share the list)
  echo.tell(ping(2), a->probe.ref());
  ASSERT_TRUE(eventually([&] { return a->transport->stats().dropped_key_revoked >= 1; }));
  EXPECT_EQ(b->transport->stats().messages_in, received) << "b got a message after its key was removed";
  keys.allow->replace({keys.a.public_key, keys.b.public_key, keys.c.public_key});
  auto r = echo.ask(ping(3), 10s).get();
  ASSERT_TRUE(r.ok()) << r.error().message();
  EXPECT_EQ(r->as<test::Ping>()->seq(), 3u);
}

// A signal handled on the ZAP thread (a program that handles a signal without blocking it on
// the threads it did not make) interrupts its poll: the thread must go on, or no peer could
// connect again (before, the interruption escaped the thread and ended the process).
TEST_F(TwoNodes, ASignalInterruptingTheZapThreadLeavesHandshakesWorking) {
  struct sigaction on_usr1 {}, before {};
  on_usr1.sa_handler = [](int) {};
  sigemptyset(&on_usr1.sa_mask);
  ASSERT_EQ(sigaction(SIGUSR1, &on_usr1, &before), 0);
  int signalled = 0;
  for (const auto& task : std::filesystem::directory_iterator("/proc/self/task")) {
    std::ifstream comm(task.path() / "comm");
    std::string name;
    std::getline(comm, name);
    if (name != "troupe-zap") continue;
    const auto tid = std::stoi(task.path().filename().string());
    signalled += ::syscall(SYS_tgkill, ::getpid(), tid, SIGUSR1) == 0;
  }
  ASSERT_GE(signalled, 2) << "a's and b's ZAP threads";
  // A new peer's handshake with b needs b's ZAP thread.
  Node c("c", keys.c, keys.allow);
  auto r = c.ref_on(*b, "/user/echo").ask(ping(1), 10s).get();
  sigaction(SIGUSR1, &before, nullptr);
  ASSERT_TRUE(r.ok()) << r.error().message();
  EXPECT_EQ(r->as<test::Ping>()->seq(), 1u);
}

TEST_F(TwoNodes, WatchingThroughAStoppedTransportTerminatesAtOnce) {
  auto echo = a->ref_on(*b, "/user/echo");
  a->transport->stop();
  a->probe.watch(a->sys, echo);
  auto t = a->probe.next();
  ASSERT_TRUE(t);
  ASSERT_TRUE(t->msg.is<sys::Terminated>());
  EXPECT_EQ(t->msg.as<sys::Terminated>()->reason(), sys::TerminationReason::NodeDown);
  EXPECT_EQ(echo.ask(ping(1), 10s).get().error(), ActorErrc::dead_target);
  EXPECT_EQ(a->transport->stats().dropped_stopped, 1u);
}

/// The port a bound ZeroMQ socket listens on.
std::string bound_port(zmq::socket_t& s) {
  const auto ep = s.get(zmq::sockopt::last_endpoint);
  return ep.substr(ep.rfind(':') + 1);
}

/// A loopback port nothing listens on (bound, then closed).
std::string closed_port() {
  zmq::context_t ctx;
  zmq::socket_t hole(ctx, zmq::socket_type::router);
  hole.bind("tcp://127.0.0.1:*");
  auto port = bound_port(hole);
  hole.close();
  return port;
}

// Two nodes with the given idle_spin and an echo actor on b.
struct SpinPair {
  explicit SpinPair(std::chrono::microseconds spin)
      : a("a", keys.a, keys.allow, 0, [spin](TransportConfig& c) { c.idle_spin = spin; }),
        b("b", keys.b, keys.allow, 0, [spin](TransportConfig& c) { c.idle_spin = spin; }) {
    b.sys.spawn<Echo>(SpawnOptions{.name = "echo"});
    echo = a.ref_on(b, "/user/echo");
  }
  /// Asks seq first..last one after the other; each must come back.
  void asks(std::uint64_t first, std::uint64_t last) {
    for (std::uint64_t i = first; i <= last; ++i) {
      auto r = echo.ask(ping(i), 10s).get();
      ASSERT_TRUE(r.ok()) << r.error().message();
      EXPECT_EQ(r->as<test::Ping>()->seq(), i);
    }
  }
  /// How often a's and b's I/O threads had to be woken while asks first..last ran.
  std::pair<std::uint64_t, std::uint64_t> wakeups_during_asks(std::uint64_t first, std::uint64_t last) {
    const auto a0 = a.transport->stats().wakeups, b0 = b.transport->stats().wakeups;
    asks(first, last);
    return {a.transport->stats().wakeups - a0, b.transport->stats().wakeups - b0};
  }
  /// Asks first..last, and neither I/O thread may have been asleep for any of them.
  void expect_asks_need_no_wakeup(std::uint64_t first, std::uint64_t last) {
    const auto [a_woken, b_woken] = wakeups_during_asks(first, last);
    EXPECT_EQ(a_woken, 0u) << "the asker's I/O thread was asleep";
    EXPECT_EQ(b_woken, 0u) << "the echo's replies had to wake its node's I/O thread";
  }
  Keys keys;
  Node a, b;
  ActorRef echo;
};

TEST(TransportIdleSpin, RepliesThatFollowADeliveryNeedNoWakeUpWhileTheIOThreadSpins) {
  // A spin far longer than the whole exchange: after the first ask nobody sleeps.
  SpinPair p(std::chrono::seconds(30));
  p.asks(0, 0);
  p.expect_asks_need_no_wakeup(1, 50);
}

TEST(TransportIdleSpin, WithoutTheSpinTheIOThreadSleepsAndIsWokenForEachSend) {
  SpinPair p(std::chrono::microseconds(0));
  // The I/O threads block after every round: sends find them asleep. (Not every one: a reply
  // may come before its I/O thread has gone to sleep. With a spin none would.)
  std::uint64_t seq = 1;
  EXPECT_TRUE(eventually([&] {
    p.asks(seq, seq + 9);
    seq += 10;
    return p.a.transport->stats().wakeups > 0 && p.b.transport->stats().wakeups > 0;
  }, 20s)) << p.a.transport->stats().wakeups << " and " << p.b.transport->stats().wakeups << " wake-ups";
}

// The I/O thread busy-polls after a round of a few messages (a request, a reply), not after a
// stream's round or one that left messages waiting for room in ZeroMQ's queue: there the next
// frame comes anyway, and polling took a fifth of the sharded tell's rate on 2 cores.
TEST(TransportIdleSpin, OnlyARoundOfAFewMessagesIsFollowedByABusyPoll) {
  using detail::SpinPolicy;
  const SpinPolicy policy{std::chrono::microseconds(200)};
  const auto now = std::chrono::steady_clock::now();
  const SpinPolicy::time_point none{};
  EXPECT_EQ(policy.after_round(now, 0, false), now + std::chrono::microseconds(200)) << "a poll that found a monitor event";
  EXPECT_EQ(policy.after_round(now, 1, false), now + std::chrono::microseconds(200)) << "one request or reply";
  EXPECT_EQ(policy.after_round(now, SpinPolicy::kStreamRound - 1, false), now + std::chrono::microseconds(200));
  EXPECT_EQ(policy.after_round(now, SpinPolicy::kStreamRound, false), none) << "a stream's round";
  EXPECT_EQ(policy.after_round(now, 400, false), none);
  EXPECT_EQ(policy.after_round(now, 1, true), none) << "waiting for room in ZeroMQ's queue";
  EXPECT_EQ((SpinPolicy{std::chrono::microseconds(0)}.after_round(now, 1, false)), none) << "idle_spin 0";
}

// A stream goes through in order with a spin far longer than the run, and the asks after it
// still need no wake-up: their rounds are of one message. (Whether a round of the stream moves
// enough to count as a stream's depends on how the threads are scheduled: that the I/O thread
// blocks after such a round is the policy's test above and the stalled peer's test below.)
TEST(TransportIdleSpin, AStreamThenAsksWithALongSpin) {
  SpinPair p(std::chrono::seconds(30));
  p.b.sys.spawn<OrderChecker>(SpawnOptions{.name = "checker"});
  auto checker = p.a.ref_on(p.b, "/user/checker");
  p.asks(0, 0);  // connected, and both I/O threads spinning
  constexpr std::uint64_t kEach = 20'000;
  auto blaster = p.a.sys.spawn<Blaster>(SpawnOptions{}, checker, 1);
  blaster.tell(cmd("go", kEach));
  std::uint64_t seen = 0;
  for (int i = 0; i < 600 && seen < kEach; ++i) {
    auto r = checker.ask(cmd("report"), 10s).get();
    ASSERT_TRUE(r.ok()) << r.error().message();
    ASSERT_EQ(op_of(*r), "ok") << "out of order after " << r->as<test::Cmd>()->n();
    seen = r->as<test::Cmd>()->n();
  }
  ASSERT_EQ(seen, kEach);
  EXPECT_LT(p.a.transport->stats().frames_out, p.a.transport->stats().messages_out / 4) << "rounds of many messages";
  p.asks(0, 0);
  p.expect_asks_need_no_wakeup(1, 30);
}

// A peer that takes the connection and then reads nothing: ZeroMQ's queue to it fills, and the
// I/O thread blocks (a send wakes it) instead of busy-polling until there is room. One message a
// round (a round of a stream's size blocks anyway): only the full queue can make it block.
TEST(TransportIdleSpin, AFullQueueToAStalledPeerMakesTheIOThreadBlock) {
  SpinPair p(std::chrono::seconds(30));
  zmq::context_t ctx;
  zmq::socket_t stalled(ctx, zmq::socket_type::router);
  stalled.set(zmq::sockopt::linger, 0);
  stalled.set(zmq::sockopt::rcvhwm, 1);
  stalled.set(zmq::sockopt::curve_server, 1);
  stalled.set(zmq::sockopt::curve_secretkey, p.keys.c.secret_key);
  stalled.bind("tcp://127.0.0.1:*");
  const auto port = bound_port(stalled);
  p.a.transport->add_peer_key("127.0.0.1:" + port, p.keys.c.public_key);
  auto ref = p.a.transport->resolve("troupe://00000000000000cc@127.0.0.1:" + port + "/user/x").value();
  p.asks(0, 0);  // a's I/O thread spinning
  const auto woken = p.a.transport->stats().wakeups;
  const std::string big(1 << 20, 'x');
  std::uint64_t sent = 0;
  // Kernel buffers and ZeroMQ's queue (64 frames) take some 70 MiB: keep sending until a send
  // finds the I/O thread asleep.
  EXPECT_TRUE(eventually([&] {
    ref.tell(cmd(big, sent++));
    return p.a.transport->stats().wakeups > woken;
  }, 30s)) << "the I/O thread never blocked; " << p.a.transport->stats().messages_out << " of " << sent << " sent";
  EXPECT_GT(p.a.transport->stats().queued, 0u) << "the stalled peer took everything";
}

// Messages for a peer that has not taken the connection wait (a node starting, or one gone but
// not yet declared lost); the I/O thread still spins after the asks to others, which therefore
// need no wake-up.
TEST(TransportIdleSpin, MessagesWaitingForAConnectionLeaveTheSpinOn) {
  SpinPair p(std::chrono::seconds(30));
  const auto port = closed_port();
  p.a.transport->add_peer_key("127.0.0.1:" + port, p.keys.c.public_key);
  auto ref = p.a.transport->resolve("troupe://00000000000000cc@127.0.0.1:" + port + "/user/x").value();
  ref.tell(ping(1));
  p.asks(0, 0);
  EXPECT_EQ(p.wakeups_during_asks(1, 30).first, 0u) << "the asker's I/O thread was asleep";
  EXPECT_EQ(p.a.transport->stats().queued, 1u) << "the waiting message was sent or dropped";
}

TEST(TransportInsecure, NodesWithoutCurveTalkWhenBothOptIn) {
  Keys keys;
  auto insecure = [](TransportConfig& c) {
    c.insecure = true;
    c.keys = {};
    c.allow_list = nullptr;
  };
  Node a("a", keys.a, keys.allow, 0, insecure), b("b", keys.b, keys.allow, 0, insecure);
  b.sys.spawn<Echo>(SpawnOptions{.name = "echo"});
  auto echo = a.transport->resolve(b.transport->address().to_string() + "/user/echo").value();
  auto r = echo.ask(ping(4), 10s).get();
  ASSERT_TRUE(r.ok()) << r.error().message();
  EXPECT_EQ(r->as<test::Ping>()->seq(), 4u);
  // A CURVE node refuses them.
  Node c("c", keys.c, keys.allow);
  c.sys.spawn<Echo>(SpawnOptions{.name = "echo"});
  auto secure = a.transport->resolve(c.transport->address().to_string() + "/user/echo").value();
  secure.tell(ping(5), a.probe.ref());
  ASSERT_TRUE(eventually([&] { return c.transport->stats().handshakes_failed >= 1; }));
  EXPECT_EQ(c.transport->stats().frames_in, 0u);
}

TEST(TransportQueue, OverflowGoesToDeadLettersAndIsCounted) {
  Keys keys;
  Node a("a", keys.a, keys.allow, 0, [](TransportConfig& c) { c.max_queue_per_peer = 10; });
  // A peer that is not listening: nothing drains the queue.
  const auto port = closed_port();
  a.transport->add_peer_key("127.0.0.1:" + port, keys.b.public_key);
  auto ref = a.transport->resolve("troupe://00000000000000bb@127.0.0.1:" + port + "/user/x").value();
  const auto dead_before = a.sys.stats().dead_letters;
  for (int i = 0; i < 100; ++i) ref.tell(ping(static_cast<std::uint64_t>(i)));
  EXPECT_EQ(a.transport->stats().dropped_queue_full, 90u);
  EXPECT_EQ(a.sys.stats().dead_letters - dead_before, 90u);
  // Declaring the node lost drops what is still queued.
  a.transport->node_lost(0xbb, "test");
  EXPECT_TRUE(eventually([&] { return a.transport->stats().dropped_node_lost == 10; }));
}

TEST(TransportConfig, BadConfigurationsRefuseToStart) {
  ActorSystem sys(test_config("cfg"));
  TransportConfig c;
  c.port = 0;
  EXPECT_FALSE(Transport::start(sys, c).ok()) << "no keys";
  c.keys = generate_keypair().value();
  EXPECT_FALSE(Transport::start(sys, c).ok()) << "no allow-list";
  c.allow_list = std::make_shared<AllowList>();
  c.zap_domain = "";
  EXPECT_FALSE(Transport::start(sys, c).ok()) << "empty ZAP domain";
  c.zap_domain = "troupe";
  c.bind_host = "0.0.0.0";
  EXPECT_FALSE(Transport::start(sys, c).ok()) << "wildcard bind without advertise_host";
  c.advertise_host = "127.0.0.1";
  auto ok = Transport::start(sys, c);
  ASSERT_TRUE(ok.ok());
  TransportConfig same = c;
  same.port = (*ok)->address().port;
  EXPECT_FALSE(Transport::start(sys, same).ok()) << "port in use";
  (*ok)->stop();
  sys.shutdown();
}

TEST(TransportAddresses, ParseAndFormat) {
  auto a = parse_actor_address("troupe://00000000000000ab@127.0.0.1:7947/user/echo");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->node.uid, 0xabu);
  EXPECT_EQ(a->node.host, "127.0.0.1");
  EXPECT_EQ(a->node.port, 7947);
  EXPECT_EQ(a->path, "/user/echo");
  EXPECT_EQ(a->to_string(), "troupe://00000000000000ab@127.0.0.1:7947/user/echo");
  auto v6 = parse_node_address("troupe://00000000000000ab@[::1]:7947");
  ASSERT_TRUE(v6.ok());
  EXPECT_EQ(v6->host, "::1");
  EXPECT_EQ(v6->to_string(), "troupe://00000000000000ab@[::1]:7947");
  for (const char* bad : {"", "troupe://", "http://00000000000000ab@h:1/x", "troupe://ab@h:1/x",
                          "troupe://00000000000000ab@h/x", "troupe://00000000000000ab@h:0/x",
                          "troupe://00000000000000ab@h:70000/x", "troupe://0000000000000000@h:1/x",
                          "troupe://00000000000000ab@h:1", "troupe://00000000000000ab@h:1/", "troupe://0000000000000zab@h:1/x",
                          "troupe://00000000000000ab@ba d:1/x", "troupe://00000000000000ab@[::1:1/x",
                          "troupe://00000000000000ab@-h:1/x", "troupe://00000000000000ab@.h:1/x",
                          // another spelling of a path (a watch through it would never fire)
                          "troupe://00000000000000ab@h:1/user/echo/", "troupe://00000000000000ab@h:1//user/echo",
                          "troupe://00000000000000ab@h:1/user//echo"}) {
    EXPECT_FALSE(parse_actor_address(bad).ok()) << bad;
  }
}

// ---- bad input from a raw ZeroMQ client --------------------------------------------------------

struct RawClient {
  RawClient(const Node& target, const CurveKeyPair* keys) : sock(ctx, zmq::socket_type::dealer) {
    sock.set(zmq::sockopt::linger, 0);
    sock.set(zmq::sockopt::rcvtimeo, 10000);
    if (keys) {
      sock.set(zmq::sockopt::curve_serverkey, target.public_key());
      sock.set(zmq::sockopt::curve_publickey, keys->public_key);
      sock.set(zmq::sockopt::curve_secretkey, keys->secret_key);
    }
    sock.connect(target.transport->address().zmq_endpoint());
  }
  void send(std::span<const std::uint8_t> bytes) { sock.send(zmq::buffer(bytes.data(), bytes.size())); }
  void send(const std::vector<std::uint8_t>& bytes) { send(std::span<const std::uint8_t>(bytes)); }
  zmq::context_t ctx;
  zmq::socket_t sock;
};

struct BadInput : TwoNodes {
  BadInput() { raw_origin = "troupe://00000000000000cc@127.0.0.1:1"; }
  /// A good frame to b's probe from the raw client: when it arrives, everything sent before it
  /// on the same connection has been processed.
  std::vector<std::uint8_t> marker_frame(std::uint64_t seq) {
    BatchBuilder bb;
    auto m = ping(seq);
    bb.add(m.type(), b->probe.ref().path(), "", 0, m.bytes());
    auto f = bb.finish(raw_origin, b->transport->address().uid);
    return {f.begin(), f.end()};
  }
  void expect_marker(std::uint64_t seq) {
    auto r = b->probe.next();
    ASSERT_TRUE(r) << "marker " << seq << " did not arrive";
    ASSERT_TRUE(r->msg.is<test::Ping>());
    EXPECT_EQ(r->msg.as<test::Ping>()->seq(), seq);
    EXPECT_EQ(b->probe.queued(), 0u) << "nothing but the marker reached an actor";
  }
  std::string raw_origin;
};

TEST_F(BadInput, AKeyNotInTheAllowListIsRefusedAtTheHandshake) {
  RawClient c(*b, &keys.stranger);
  c.sock.send(zmq::buffer(marker_frame(1)), zmq::send_flags::dontwait);
  ASSERT_TRUE(eventually([&] { return b->transport->stats().zap_refused >= 1; }));
  EXPECT_TRUE(eventually([&] { return b->transport->stats().handshakes_failed >= 1; }));
  EXPECT_EQ(b->transport->stats().frames_in, 0u);
  EXPECT_EQ(b->probe.queued(), 0u);
}

TEST_F(BadInput, ANullPeerIsRefusedByACurveNode) {
  RawClient c(*b, nullptr);
  c.sock.send(zmq::buffer(marker_frame(1)), zmq::send_flags::dontwait);
  ASSERT_TRUE(eventually([&] { return b->transport->stats().handshakes_failed >= 1; }));
  EXPECT_EQ(b->transport->stats().frames_in, 0u);
  EXPECT_EQ(b->probe.queued(), 0u);
}

TEST_F(BadInput, TruncatedRandomAndLyingFramesAreDroppedAndCounted) {
  RawClient c(*b, &keys.c);
  c.send(marker_frame(1));
  expect_marker(1);
  auto good = marker_frame(2);
  std::vector<std::uint8_t> truncated(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(good.size() / 2));
  c.send(truncated);
  std::mt19937 rng(42);
  for (int i = 0; i < 20; ++i) {
    std::vector<std::uint8_t> junk(static_cast<std::size_t>(1 + rng() % 300));
    for (auto& x : junk) x = static_cast<std::uint8_t>(rng());
    c.send(junk);
  }
  auto lying = good;
  // The envelope vector's length field claims far more elements than the frame holds.
  const auto* batch = flatbuffers::GetRoot<wire::Batch>(lying.data());
  const auto off = static_cast<std::size_t>(reinterpret_cast<const std::uint8_t*>(batch->envelopes()) - lying.data());
  lying[off] = 0xff;
  lying[off + 1] = 0xff;
  c.send(lying);
  c.send(std::vector<std::uint8_t>{});
  c.send(marker_frame(3));
  expect_marker(3);
  EXPECT_GE(b->transport->stats().frames_malformed, 22u);
}

TEST_F(BadInput, BadPayloadsUnknownTypesAndMissingRecipientsAreDropped) {
  RawClient c(*b, &keys.c);
  BatchBuilder bb;
  auto m = ping(9);
  std::vector<std::uint8_t> broken(m.bytes().begin(), m.bytes().end());
  broken[0] = 0xff;  // root offset out of range: fails the verifier
  bb.add(m.type(), b->probe.ref().path(), "", 0, broken);
  bb.add(0x1234567890abcdefull, b->probe.ref().path(), "", 0, m.bytes());
  bb.add(m.type(), "/user/no-such-actor", "", 0, m.bytes());
  auto f = bb.finish(raw_origin, b->transport->address().uid);
  c.send(f);
  c.send(marker_frame(1));
  expect_marker(1);
  auto s = b->transport->stats();
  EXPECT_EQ(s.envelopes_bad_payload, 1u);
  EXPECT_EQ(s.envelopes_unknown_type, 1u);
  EXPECT_EQ(s.envelopes_no_recipient, 1u);
}

// A Watch whose watcher path is longer than any path may be: dropped, not kept for the watch's
// life (every served watch holds its watcher's path).
TEST_F(BadInput, AWatchWithAnOverlongPathIsDropped) {
  RawClient c(*b, &keys.c);
  const auto watch = Message::build<wire::Watch>([&](flatbuffers::FlatBufferBuilder& fb) {
    return wire::CreateWatchDirect(fb, "/user/echo", ("/user/" + std::string(FrameLimits{}.max_path_bytes, 'w')).c_str());
  });
  BatchBuilder bb;
  bb.add(watch.type(), "/system/remoting", "", 0, watch.bytes());
  c.send(bb.finish(raw_origin, b->transport->address().uid));
  c.send(marker_frame(1));
  expect_marker(1);
  EXPECT_EQ(b->transport->stats().envelopes_bad_payload, 1u);
}

TEST_F(BadInput, OversizedFramesAreRefused) {
  echo_b = {};
  b.reset();
  b = std::make_unique<Node>("b", keys.b, keys.allow, 0,
                             [](TransportConfig& c) { c.limits.max_frame_bytes = 64u << 10; });
  RawClient c(*b, &keys.c);
  c.send(marker_frame(1));
  expect_marker(1);
  // Over the limit but under ZMQ_MAXMSGSIZE: read, refused and counted.
  c.send(std::vector<std::uint8_t>((64u << 10) + 1, 0));
  c.send(marker_frame(2));
  expect_marker(2);
  EXPECT_EQ(b->transport->stats().frames_oversized, 1u);
  // Far over: ZeroMQ drops the connection (counted); the node keeps serving others.
  const auto disc = b->transport->stats().disconnects;
  c.send(std::vector<std::uint8_t>(1u << 20, 0));
  EXPECT_TRUE(eventually([&] { return b->transport->stats().disconnects > disc; }));
  auto echo = a->ref_on(*b, "/user/echo");
  b->sys.spawn<Echo>(SpawnOptions{.name = "echo"});
  EXPECT_TRUE(echo.ask(ping(1), 10s).get().ok());
}

TEST_F(BadInput, FramesForAnotherIncarnationOrWithAForgedOriginAreDropped) {
  RawClient c(*b, &keys.c);
  c.send(marker_frame(1));
  expect_marker(1);
  BatchBuilder bb;
  auto m = ping(5);
  bb.add(m.type(), b->probe.ref().path(), "", 0, m.bytes());
  auto f = bb.finish(raw_origin, b->transport->address().uid ^ 1);
  c.send(f);
  c.send(marker_frame(2));
  expect_marker(2);
  EXPECT_EQ(b->transport->stats().frames_wrong_node, 1u);

  // Another connection with an allowed key claiming a's address (whose key b knows): refused.
  b->transport->add_peer_key(a->transport->address().endpoint(), keys.a.public_key);
  RawClient forger(*b, &keys.c);
  bb.reset();
  bb.add(m.type(), b->probe.ref().path(), "", 0, m.bytes());
  auto forged = bb.finish(a->transport->address().to_string(), b->transport->address().uid);
  forger.send(forged);
  ASSERT_TRUE(eventually([&] { return b->transport->stats().frames_origin_mismatch == 1; }));
  // And on the bound connection, a frame switching its origin is refused too.
  bb.reset();
  bb.add(m.type(), b->probe.ref().path(), "", 0, m.bytes());
  auto switched = bb.finish("troupe://00000000000000dd@127.0.0.1:2", b->transport->address().uid);
  c.send(switched);
  c.send(marker_frame(3));
  expect_marker(3);
  EXPECT_EQ(b->transport->stats().frames_origin_mismatch, 2u);
}

// A type bound to its origin (MessageRegistry::add_origin_bound: the sharding protocol's) is
// delivered only when its sender is an actor of the node the connection's key proved. Senders
// naming the receiving node itself, a third node, or nobody are dropped and counted; any other
// type may still carry a forwarded sender.
TEST_F(BadInput, AnOriginBoundMessageWhoseSenderIsNotAnActorOfItsNodeIsDropped) {
  b->sys.registry().add_origin_bound<test::Text>();
  RawClient c(*b, &keys.c);
  c.send(marker_frame(1));
  expect_marker(1);
  auto text = [](std::string v) {
    return Message::build<test::Text>([&](auto& fb) { return test::CreateText(fb, fb.CreateString(v)); });
  };
  const auto to = b->probe.ref().path();
  const std::string b_itself = b->transport->address().to_string() + "/user/echo";
  BatchBuilder bb;
  auto add = [&](const Message& m, const std::string& sender) { bb.add(m.type(), to, sender, 0, m.bytes()); };
  add(text("claims b"), b_itself);
  add(text("claims a third node"), "troupe://00000000000000dd@127.0.0.1:2/user/x");
  add(text("no sender"), "");
  add(text("a path on the origin"), "/user/x");
  add(text("the origin's full address"), raw_origin + "/user/y");
  add(ping(9), "troupe://00000000000000dd@127.0.0.1:2/user/x");  // not bound: forwarded senders pass
  auto f = bb.finish(raw_origin, b->transport->address().uid);
  c.send(f);
  for (const char* want : {"a path on the origin", "the origin's full address"}) {
    auto r = b->probe.next();
    ASSERT_TRUE(r);
    ASSERT_TRUE(r->msg.is<test::Text>());
    EXPECT_EQ(r->msg.as<test::Text>()->value()->str(), want);
  }
  auto p = b->probe.next();
  ASSERT_TRUE(p);
  ASSERT_TRUE(p->msg.is<test::Ping>());
  EXPECT_EQ(p->sender.path(), "troupe://00000000000000dd@127.0.0.1:2/user/x");
  c.send(marker_frame(2));
  expect_marker(2);
  EXPECT_EQ(b->transport->stats().envelopes_forged_sender, 3u);
}

TEST(ThreeNodes, ASenderRefForwardedThroughAThirdNodeStillReachesTheOrigin) {
  Keys keys;
  Node a("a", keys.a, keys.allow), b("b", keys.b, keys.allow), c("c", keys.c, keys.allow);
  // b forwards whatever it gets to c's echo, keeping the original sender: c replies straight to a.
  struct Forward final : Actor {
    explicit Forward(ActorRef to) : to_(std::move(to)) {}
    void receive(const Message& m) override { to_.tell(m, sender()); }
    ActorRef to_;
  };
  c.sys.spawn<Echo>(SpawnOptions{.name = "echo"});
  auto c_echo = b.ref_on(c, "/user/echo");
  b.sys.spawn<Forward>(SpawnOptions{.name = "fwd"}, c_echo);
  c.transport->add_peer_key(a.transport->address().endpoint(), keys.a.public_key);
  auto fwd = a.ref_on(b, "/user/fwd");
  fwd.tell(ping(11), a.probe.ref());
  auto r = a.probe.next();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->msg.as<test::Ping>()->seq(), 11u);
  EXPECT_EQ(r->sender.path(), c.transport->address().to_string() + "/user/echo");
  auto r2 = fwd.ask(ping(12), 10s).get();  // the ask's temporary ref travels a -> b -> c -> a
  ASSERT_TRUE(r2.ok()) << r2.error().message();
  EXPECT_EQ(r2->as<test::Ping>()->seq(), 12u);
}

}  // namespace
}  // namespace troupe::remoting
