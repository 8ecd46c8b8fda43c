// Remoting between separate processes on loopback: this test process is node A (a troupe::node
// Node with the test actors), and B and C are troupe-node processes started with key files and
// an allow-list. Covers tell/ask both ways, ordering under load, replies via the sender ref,
// remote deathwatch on stop and on SIGKILL (node loss driven through the NodeLossListener, as the
// failure detector will), reconnect to a restarted peer (new incarnation), three nodes, and queue
// overflow accounting while a peer is frozen (SIGSTOP).

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <thread>

#include <troupe/node/node.hpp>
#include <troupe/serialization/system_generated.h>

#include "node_generated.h"
#include "node_process.hpp"
#include "testkit.hpp"

namespace troupe {
namespace {

using namespace std::chrono_literals;
using remoting::NodeAddress;

using testkit::NodeProcess;
using testkit::TempDir;

Message echo(std::uint64_t seq, std::size_t payload = 0) {
  return Message::build<node::Echo>([&](flatbuffers::FlatBufferBuilder& b) {
    std::vector<std::uint8_t> p(payload, 0x5a);
    return node::CreateEchoDirect(b, seq, payload ? &p : nullptr);
  });
}

/// Sends `n` Echo messages to `target` and checks the replies come back complete and in order;
/// tells `report` Cmd{"ok"|"bad", count} once all replies are in.
class RoundTripChecker final : public Actor {
 public:
  RoundTripChecker(ActorRef target, ActorRef report, std::uint64_t n)
      : target_(std::move(target)), report_(std::move(report)), n_(n) {}
  void pre_start() override {
    for (std::uint64_t i = 1; i <= n_; ++i) target_.tell(echo(i), self());
  }
  void receive(const Message& m) override {
    const auto* e = m.as<node::Echo>();
    if (!e) return;
    if (e->seq() != ++next_) bad_ = true;
    if (next_ == n_) report_.tell(testkit::cmd(bad_ ? "bad" : "ok", next_));
  }

 private:
  ActorRef target_, report_;
  std::uint64_t n_, next_ = 0;
  bool bad_ = false;
};

struct Processes : ::testing::Test {
  Processes() {
    for (auto* k : {&ka, &kb, &kc}) *k = remoting::generate_keypair().value();
    EXPECT_FALSE(remoting::save_keypair(kb, dir.path, "b"));
    EXPECT_FALSE(remoting::save_keypair(kc, dir.path, "c"));
    std::ofstream(dir.path / "allow") << "# the cluster\n"
                                      << ka.public_key << "  # a\n"
                                      << kb.public_key << "  # b\n"
                                      << kc.public_key << "  # c\n";
  }
  std::vector<std::string> args(const std::string& name, std::uint16_t port = 0) {
    return {"--name", name, "--port", std::to_string(port), "--workers", "1",
            "--key-file", (dir.path / (name + ".key")).string(), "--allow-list", (dir.path / "allow").string(),
            "--test-actors"};
  }
  void start_a(std::size_t max_queue = 100'000) {
    node::NodeOptions o;
    o.name = "a";
    o.workers = 2;
    o.test_actors = true;
    o.transport.port = 0;
    o.transport.keys = ka;
    o.transport.allow_list = std::make_shared<remoting::AllowList>(
        std::vector{ka.public_key, kb.public_key, kc.public_key});
    o.transport.max_queue_per_peer = max_queue;
    a = node::Node::start(std::move(o)).value();
    probe = std::make_unique<testkit::Probe>(a->system());
  }
  ActorRef on(const NodeProcess& p, const std::string& key, const std::string& path) {
    a->transport().add_peer_key(p.address.endpoint(), key);
    return a->transport().resolve(p.address_str + path).value();
  }
  std::optional<testkit::Received> marker_after() {
    probe->ref().tell(testkit::cmd("marker"));
    return probe->next();
  }
  ~Processes() override {
    probe.reset();
    if (a) a->stop();
  }

  TempDir dir;
  remoting::CurveKeyPair ka, kb, kc;
  std::unique_ptr<node::Node> a;
  std::unique_ptr<testkit::Probe> probe;
};

TEST_F(Processes, TellAndAskBothWaysWithRepliesViaTheSenderRef) {
  NodeProcess b(args("b"));
  start_a();
  auto echo_b = on(b, kb.public_key, "/user/echo");
  // a -> b, the reply via the sender ref
  echo_b.tell(echo(1), probe->ref());
  auto r = probe->next();
  ASSERT_TRUE(r);
  ASSERT_TRUE(r->msg.is<node::Echo>());
  EXPECT_EQ(r->msg.as<node::Echo>()->seq(), 1u);
  EXPECT_EQ(r->sender, echo_b);
  // a asks b
  auto x = echo_b.ask(echo(2), 10s).get();
  ASSERT_TRUE(x.ok()) << x.error().message();
  EXPECT_EQ(x->as<node::Echo>()->seq(), 2u);
  // b asks a: b's relay asks a's echo and answers with the reply
  auto relay = on(b, kb.public_key, "/user/relay");
  const auto a_echo = a->transport().address().to_string() + "/user/echo";
  auto y = relay.ask(Message::build<node::Relay>([&](auto& fb) { return node::CreateRelayDirect(fb, a_echo.c_str(), 3); }),
                     20s).get();
  ASSERT_TRUE(y.ok()) << y.error().message();
  ASSERT_TRUE(y->is<node::Echo>()) << "relay failed";
  EXPECT_EQ(y->as<node::Echo>()->seq(), 3u);
}

TEST_F(Processes, RepliesComeBackCompleteAndInOrderUnderLoad) {
  NodeProcess b(args("b"));
  start_a();
  auto echo_b = on(b, kb.public_key, "/user/echo");
  constexpr std::uint64_t kN = 50'000;
  a->system().spawn<RoundTripChecker>(SpawnOptions{}, echo_b, probe->ref(), kN);
  auto r = probe->next(60s);
  ASSERT_TRUE(r);
  EXPECT_EQ(testkit::op_of(r->msg), "ok");
  EXPECT_EQ(r->msg.as<test::Cmd>()->n(), kN);
  EXPECT_EQ(a->transport().stats().dropped_queue_full, 0u);
}

TEST_F(Processes, RemoteWatchFiresOnceWhenTheActorStops) {
  NodeProcess b(args("b"));
  start_a();
  auto echo_b = on(b, kb.public_key, "/user/echo");
  probe->watch(a->system(), echo_b);
  ASSERT_TRUE(echo_b.ask(echo(1), 10s).get().ok());  // the Watch went before this, FIFO
  echo_b.tell(Message::build<node::Poison>([](auto& fb) { return node::CreatePoison(fb); }));
  auto t = probe->next();
  ASSERT_TRUE(t);
  ASSERT_TRUE(t->msg.is<sys::Terminated>());
  EXPECT_EQ(t->msg.as<sys::Terminated>()->reason(), sys::TerminationReason::Stopped);
  EXPECT_EQ(t->sender, echo_b);
  a->transport().node_lost(b.address.uid, "test: after the stop");
  auto m = marker_after();
  ASSERT_TRUE(m);
  EXPECT_EQ(testkit::op_of(m->msg), "marker") << "exactly one Terminated";
}

TEST_F(Processes, RemoteWatchFiresOnceWhenThePeerIsKilled) {
  NodeProcess b(args("b"));
  start_a();
  auto echo_b = on(b, kb.public_key, "/user/echo");
  auto sink_b = on(b, kb.public_key, "/user/sink");
  probe->watch(a->system(), echo_b);
  ASSERT_TRUE(echo_b.ask(echo(1), 10s).get().ok());
  const int status = b.stop(SIGKILL);
  ASSERT_TRUE(WIFSIGNALED(status));
  // Messages sent into the void: queued (the connection is gone), then dropped at the loss.
  for (int i = 0; i < 100; ++i) sink_b.tell(echo(static_cast<std::uint64_t>(i)));
  EXPECT_EQ(probe->queued(), 0u) << "a dropped connection alone is not a node loss";
  a->transport().node_lost(b.address.uid, "test: the failure detector would say so");
  auto t = probe->next();
  ASSERT_TRUE(t);
  ASSERT_TRUE(t->msg.is<sys::Terminated>());
  EXPECT_EQ(t->msg.as<sys::Terminated>()->reason(), sys::TerminationReason::NodeDown);
  auto m = marker_after();
  ASSERT_TRUE(m);
  EXPECT_EQ(testkit::op_of(m->msg), "marker");
  auto s = a->transport().stats();
  EXPECT_EQ(s.messages_out + s.dropped_node_lost, 1u /*Watch*/ + 1u /*ask*/ + 100u)
      << "every message is either sent or counted as dropped (out " << s.messages_out << ", lost " << s.dropped_node_lost << ", frames " << s.frames_out << ")";
  EXPECT_GE(s.dropped_node_lost, 1u);
  auto r = sink_b.ask(echo(1), 10s).get();
  EXPECT_EQ(r.error(), ActorErrc::dead_target);
}

TEST_F(Processes, ARestartedPeerIsANewIncarnation) {
  auto b = std::make_unique<NodeProcess>(args("b"));
  start_a();
  const auto port = b->address.port;
  const auto old_uid = b->address.uid;
  auto old_echo = on(*b, kb.public_key, "/user/echo");
  probe->watch(a->system(), old_echo);
  ASSERT_TRUE(old_echo.ask(echo(1), 10s).get().ok());
  b->stop(SIGTERM);
  b = std::make_unique<NodeProcess>(args("b", port));
  ASSERT_NE(b->address.uid, old_uid);
  old_echo.tell(echo(2), probe->ref());  // reaches the new process, which refuses it and says who it is
  auto t = probe->next(30s);
  ASSERT_TRUE(t);
  ASSERT_TRUE(t->msg.is<sys::Terminated>()) << "the old incarnation's message must not be delivered";
  EXPECT_EQ(t->msg.as<sys::Terminated>()->reason(), sys::TerminationReason::NodeDown);
  auto fresh = on(*b, kb.public_key, "/user/echo");
  auto r = fresh.ask(echo(3), 10s).get();
  ASSERT_TRUE(r.ok()) << r.error().message();
  EXPECT_EQ(r->as<node::Echo>()->seq(), 3u);
  auto m = marker_after();
  ASSERT_TRUE(m);
  EXPECT_EQ(testkit::op_of(m->msg), "marker") << "no reply to the old ref's message";
}

TEST_F(Processes, ThreeNodesRelayAcrossTheCluster) {
  NodeProcess c(args("c"));
  auto bargs = args("b");
  bargs.push_back("--peer-key");
  bargs.push_back(c.address.endpoint() + "=" + kc.public_key);
  NodeProcess b(bargs);
  start_a();
  auto relay_b = on(b, kb.public_key, "/user/relay");
  const auto c_echo = c.address_str + "/user/echo";
  for (std::uint64_t i = 1; i <= 20; ++i) {
    auto r = relay_b.ask(
        Message::build<node::Relay>([&](auto& fb) { return node::CreateRelayDirect(fb, c_echo.c_str(), i); }), 20s).get();
    ASSERT_TRUE(r.ok()) << r.error().message();
    ASSERT_TRUE(r->is<node::Echo>());
    EXPECT_EQ(r->as<node::Echo>()->seq(), i);
  }
  // a talks to c directly too
  auto echo_c = on(c, kc.public_key, "/user/echo");
  EXPECT_TRUE(echo_c.ask(echo(99), 10s).get().ok());
}

TEST_F(Processes, SighupReloadsTheAllowList) {
  std::ofstream(dir.path / "allow") << kb.public_key << "\n";  // a is not allowed yet
  NodeProcess b(args("b"));
  start_a();
  auto echo_b = on(b, kb.public_key, "/user/echo");
  echo_b.tell(echo(1), probe->ref());
  (void)testkit::eventually([&] { return a->transport().stats().handshakes_failed != 0; }, 20s, 1ms);
  ASSERT_GE(a->transport().stats().handshakes_failed, 1u) << "b refuses a's key";
  std::ofstream(dir.path / "allow") << kb.public_key << "\n" << ka.public_key << "\n";
  b.signal(SIGHUP);
  // a's DEALER keeps retrying: once b has reloaded, the queued message and an ask get through.
  auto r = echo_b.ask(echo(2), 30s).get();
  ASSERT_TRUE(r.ok()) << r.error().message();
  EXPECT_EQ(r->as<node::Echo>()->seq(), 2u);
  auto first = probe->next();
  ASSERT_TRUE(first);
  EXPECT_EQ(first->msg.as<node::Echo>()->seq(), 1u) << "the message queued while refused is delivered";
}

TEST_F(Processes, BadFlagsAndFilesStopTheStartNamingTheProblem) {
  auto run = [](const std::vector<std::string>& extra) { return testkit::run_node(extra); };
  auto [c1, o1] = run({"--port", "0"});
  EXPECT_EQ(c1, 2);
  EXPECT_NE(o1.find("--key-file"), std::string::npos) << o1;
  auto [c2, o2] = run({"--port", "0", "--key-file", (dir.path / "b.key").string(), "--allow-list", "/nonexistent"});
  EXPECT_EQ(c2, 2);
  EXPECT_NE(o2.find("--allow-list"), std::string::npos) << o2;
  std::filesystem::permissions(dir.path / "b.key", std::filesystem::perms::group_read, std::filesystem::perm_options::add);
  auto [c3, o3] = run({"--port", "0", "--key-file", (dir.path / "b.key").string(), "--allow-list", (dir.path / "allow").string()});
  EXPECT_EQ(c3, 2);
  EXPECT_NE(o3.find("--key-file"), std::string::npos) << o3;
  auto [c4, o4] = run({"--port", "0", "--insecure", "--peer-key", "nonsense"});
  EXPECT_EQ(c4, 2);
  EXPECT_NE(o4.find("--peer-key"), std::string::npos) << o4;
  auto [c5, o5] = run({"--port", "99999", "--insecure"});
  EXPECT_NE(c5, 0);
  EXPECT_NE(o5.find("port"), std::string::npos) << o5;
}

TEST_F(Processes, OverflowWhileAPeerIsFrozenIsCountedAndNothingElseIsLost) {
  NodeProcess b(args("b"));
  start_a(1000);
  auto sink_b = on(b, kb.public_key, "/user/sink");
  ASSERT_TRUE(on(b, kb.public_key, "/user/echo").ask(echo(0), 10s).get().ok());  // connected
  b.signal(SIGSTOP);
  constexpr std::uint64_t kN = 50'000;  // 4 KiB each: far more than the buffers between a and b
  for (std::uint64_t i = 0; i < kN; ++i) sink_b.tell(echo(i, 4096));
  const auto dropped = a->transport().stats().dropped_queue_full;
  EXPECT_GT(dropped, 0u);
  b.signal(SIGCONT);
  // Once a's queue to b has drained, a count query queues behind everything accepted before it
  // (one queue per peer, FIFO).
  (void)testkit::eventually([&] { return a->transport().stats().queued == 0; }, 60s, 1ms);
  auto r = sink_b.ask(Message::build<node::CountQuery>([](auto& fb) { return node::CreateCountQuery(fb); }), 30s).get();
  ASSERT_TRUE(r.ok()) << r.error().message();
  ASSERT_TRUE(r->is<node::Count>());
  EXPECT_EQ(r->as<node::Count>()->n() + dropped, kN) << "received + dropped == sent";
  EXPECT_EQ(a->transport().stats().dropped_queue_full, dropped);
}

}  // namespace
}  // namespace troupe
