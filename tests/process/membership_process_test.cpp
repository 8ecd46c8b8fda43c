// Membership between real troupe-node processes on loopback (real UDP, sealed gossip): five
// nodes form; SIGKILL one (all others down it); SIGSTOP one shorter than the tolerance (nobody
// downs it) and longer (it is downed, and when it wakes it learns so and exits 3); a graceful
// leave (SIGTERM); a restarted node rejoins as a new incarnation. The nodes print one line per
// membership event; the test waits for the lines it expects.

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>

#include <troupe/membership/keyring.hpp>
#include <troupe/node/node.hpp>
#include <troupe/remoting/security.hpp>
#include <troupe/serialization/system_generated.h>

#include "node_generated.h"
#include "node_process.hpp"
#include "testkit.hpp"

namespace troupe {
namespace {

using namespace std::chrono_literals;

using testkit::TempDir;
using Proc = testkit::NodeProcess;

struct Five : ::testing::Test {
  Five() {
    std::ofstream allow(dir.path / "allow");
    for (int i = 0; i < 6; ++i) {
      auto kp = remoting::generate_keypair().value();
      EXPECT_FALSE(remoting::save_keypair(kp, dir.path, name(i)));
      allow << kp.public_key << "\n";
    }
    allow.close();
    membership::Keyring ring(membership::generate_key().value());
    EXPECT_FALSE(membership::save_keyring(ring, dir.path / "keyring"));
  }
  static std::string name(int i) { return "n" + std::to_string(i); }
  /// Each node keeps its own keyring file (changes made through the cluster are written back).
  std::string keyring_of(int i) {
    const auto own = dir.path / ("keyring-" + name(i));
    if (!std::filesystem::exists(own)) std::filesystem::copy_file(dir.path / "keyring", own);
    return own.string();
  }
  std::vector<std::string> args(int i) {
    std::vector<std::string> a{"--name", name(i), "--port", "0", "--workers", "1",
                               "--key-file", (dir.path / (name(i) + ".key")).string(),
                               "--allow-list", (dir.path / "allow").string(),
                               "--keyring", keyring_of(i),
                               "--preset", "local", "--gossip-port", "0"};
    if (!seed.empty()) {
      a.push_back("--seed");
      a.push_back(seed);
    }
    return a;
  }
  void start_all(int n = 5) {
    nodes.push_back(std::make_unique<Proc>(args(0)));
    seed = nodes[0]->gossip;
    ASSERT_FALSE(seed.empty());
    for (int i = 1; i < n; ++i) nodes.push_back(std::make_unique<Proc>(args(i)));
    for (int i = 0; i < n; ++i) {
      for (int j = 0; j < n; ++j) {
        ASSERT_TRUE(nodes[i]->saw_event("up", name(j), 30s)) << name(i) << " never saw " << name(j) << " up";
      }
    }
  }
  TempDir dir;
  std::string seed;
  std::vector<std::unique_ptr<Proc>> nodes;
};

TEST_F(Five, FormThenAKilledNodeIsDownedByAllOthers) {
  start_all();
  nodes[3]->stop(SIGKILL);
  for (int i : {0, 1, 2, 4}) EXPECT_TRUE(nodes[i]->saw_event("downed", name(3), 30s)) << name(i);
}

TEST_F(Five, AShortStopDownsNobodyALongOneDownsTheNodeWhichThenExits) {
  start_all();
  nodes[2]->signal(SIGSTOP);
  std::this_thread::sleep_for(1s);  // the pause itself (local preset tolerance: ~4.5 s)
  nodes[2]->signal(SIGCONT);
  // Longer than the tolerance, after the pause: still nobody downed it.
  EXPECT_FALSE(nodes[0]->saw_event("downed", name(2), 8s));
  for (int i = 0; i < 5; ++i) EXPECT_EQ(nodes[i]->count_event("downed", name(2)), 0u) << name(i);

  nodes[2]->signal(SIGSTOP);
  for (int i : {0, 1, 3, 4}) EXPECT_TRUE(nodes[i]->saw_event("downed", name(2), 30s)) << name(i);
  nodes[2]->signal(SIGCONT);
  EXPECT_TRUE(nodes[2]->saw_event("self_downed", name(2), 30s));
  const int status = nodes[2]->stop(0);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 3) << "a downed node stops with exit code 3";
}

TEST_F(Five, AGracefulLeaveIsRemovedEverywhereAndExitsZero) {
  start_all();
  nodes[4]->signal(SIGTERM);
  for (int i : {0, 1, 2, 3}) EXPECT_TRUE(nodes[i]->saw_event("removed", name(4), 30s)) << name(i);
  const int status = nodes[4]->stop(0);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
  for (int i : {0, 1, 2, 3}) EXPECT_EQ(nodes[i]->count_event("downed", name(4)), 0u) << name(i);
}

TEST_F(Five, ARestartedNodeRejoinsAsANewIncarnation) {
  start_all();
  nodes[1]->stop(SIGKILL);
  nodes[1] = std::make_unique<Proc>(args(1));
  // The old incarnation is downed (replaced), the new one comes up: two "up n1" lines everywhere.
  for (int i : {0, 2, 3, 4}) {
    EXPECT_TRUE(nodes[i]->saw_event("downed", name(1), 30s)) << name(i);
    EXPECT_TRUE(nodes[i]->wait_count("up", name(1), 2, 30s)) << name(i);
  }
}

TEST_F(Five, KeyRotationWhileRunningReachesEveryProcessAndItsKeyringFile) {
  start_all(4);
  // The in-process member (n5) rotates the key for the whole cluster.
  node::NodeOptions o;
  o.name = name(5);
  o.workers = 1;
  o.transport.port = 0;
  o.transport.keys = remoting::load_keypair(dir.path / (name(5) + ".key")).value();
  o.transport.allow_list = std::make_shared<remoting::AllowList>();
  membership::MembershipServiceConfig mc;
  mc.membership = membership::MembershipConfig::local();
  mc.port = 0;
  mc.seeds = {seed};
  mc.keyring = membership::load_keyring(keyring_of(5)).value();
  mc.keyring_file = keyring_of(5);
  o.membership = mc;
  auto a = node::Node::start(std::move(o)).value();
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(nodes[i]->saw_event("up", name(5), 30s)) << name(i);
  const auto new_key = membership::generate_key().value();
  auto steps = a->membership()->rotate_key(new_key, 15s);
  ASSERT_EQ(steps.size(), 3u);
  for (const auto& s : steps) {
    EXPECT_TRUE(s.ok()) << membership::to_string(s.op) << ": " << s.failed.size() << " failed, " << s.missing.size()
                        << " missing";
    EXPECT_EQ(s.confirmed.size(), 5u) << membership::to_string(s.op);
  }
  for (int i = 0; i < 4; ++i) {
    auto ring = membership::load_keyring(keyring_of(i));
    ASSERT_TRUE(ring.ok()) << name(i);
    EXPECT_EQ((*ring)->size(), 1u) << name(i);
    EXPECT_EQ((*ring)->primary(), new_key) << name(i) << "'s keyring file holds the new key only";
  }
  // A new process that knows only the new key joins and is seen by everyone.
  {
    membership::Keyring fresh(new_key);
    ASSERT_FALSE(membership::save_keyring(fresh, dir.path / ("keyring-" + name(4))));
  }
  nodes.push_back(std::make_unique<Proc>(args(4)));
  for (int i = 0; i < 5; ++i) EXPECT_TRUE(nodes[i]->saw_event("up", name(4), 30s)) << name(i);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(nodes[i]->count_event("downed", name(5)), 0u);
  a->stop();
}

TEST_F(Five, ADownedMemberTerminatesEveryRemoteWatchOfItsActors) {
  // This test process is a member too (an in-process Node), watching an actor on n1.
  nodes.push_back(std::make_unique<Proc>(args(0)));
  seed = nodes[0]->gossip;
  auto a1 = args(1);
  a1.push_back("--test-actors");
  nodes.push_back(std::make_unique<Proc>(a1));
  node::NodeOptions o;
  o.name = name(5);
  o.workers = 2;
  o.transport.port = 0;
  o.transport.keys = remoting::load_keypair(dir.path / (name(5) + ".key")).value();
  std::ifstream in(dir.path / "allow");
  std::stringstream text;
  text << in.rdbuf();
  o.transport.allow_list = std::make_shared<remoting::AllowList>(remoting::parse_allow_list(text.str()).value());
  membership::MembershipServiceConfig mc;
  mc.membership = membership::MembershipConfig::local();
  mc.port = 0;
  mc.seeds = {seed};
  mc.keyring = membership::load_keyring(keyring_of(5)).value();
  o.membership = mc;
  std::mutex mu;
  std::condition_variable cv;
  std::string n1_remoting;
  o.on_event = [&](const membership::MembershipEvent& e) {
    if (e.kind == membership::EventKind::up && e.member.name == name(1)) {
      std::lock_guard lk(mu);
      n1_remoting = e.member.remoting;
      cv.notify_all();
    }
  };
  auto a = node::Node::start(std::move(o)).value();
  {
    std::unique_lock lk(mu);
    ASSERT_TRUE(cv.wait_for(lk, 30s, [&] { return !n1_remoting.empty(); }));
  }
  testkit::Probe probe(a->system());
  // The CURVE key came with the member record: no --peer-key needed.
  auto echo = a->transport().resolve(n1_remoting + "/user/echo").value();
  probe.watch(a->system(), echo);
  auto hello = Message::build<node::Echo>([](auto& b) { return node::CreateEcho(b, 7); });
  auto r = echo.ask(hello, 10s).get();
  ASSERT_TRUE(r.ok()) << "n1's echo answers through the key its member record carried: " << r.error().message();
  EXPECT_EQ(r->as<node::Echo>()->seq(), 7u);
  EXPECT_EQ(a->transport().stats().remote_watches, 1u);
  nodes[1]->stop(SIGKILL);
  auto t = probe.next(30s);
  ASSERT_TRUE(t) << "no Terminated after n1 was killed";
  ASSERT_TRUE(t->msg.is<sys::Terminated>());
  EXPECT_EQ(t->msg.as<sys::Terminated>()->reason(), sys::TerminationReason::NodeDown);
  EXPECT_TRUE(nodes[0]->saw_event("downed", name(1), 30s));
  a->stop();
}

}  // namespace
}  // namespace troupe
