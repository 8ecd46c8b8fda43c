// troupectl against a live local cluster of troupe-node processes (real gossip, ZeroMQ with
// CURVE, the admin HTTP servers on free loopback ports): the real binary is run as an operator
// would and its output and exit code checked. TROUPECTL_BIN names it.

#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <mutex>
#include <regex>
#include <thread>

#include <boost/asio/ip/tcp.hpp>

#include <troupe/membership/keyring.hpp>
#include <troupe/remoting/security.hpp>
#include <troupe/sharding/placement.hpp>

#include "cluster_nodes.hpp"
#include "node_process.hpp"
#include "process_cluster.hpp"

namespace troupe {
namespace {

using namespace std::chrono_literals;
using testkit::TempDir;
using Proc = testkit::NodeProcess;

const std::string kType = "account";
constexpr std::uint32_t kShards = 32;
const std::string kToken = "ctl-s3cret";

struct CtlRun {
  int code = -1;
  std::string out;  // stdout and stderr
};

/// Runs troupectl with `args` to its exit (at most 60 s).
CtlRun ctl(const std::vector<std::string>& args) {
  std::string cmd = std::string("timeout 60 ") + TROUPECTL_BIN;
  for (const auto& a : args) cmd += " '" + a + "'";
  cmd += " 2>&1";
  CtlRun r;
  FILE* f = ::popen(cmd.c_str(), "r");
  char buf[1024];
  while (f && std::fgets(buf, sizeof buf, f)) r.out += buf;
  const int status = f ? ::pclose(f) : -1;
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

/// Polls troupectl's view until `pred` holds (each look runs the real binary: every 100 ms).
template <class P>
bool eventually(P pred, std::chrono::milliseconds limit) {
  return testkit::eventually(pred, limit, 100ms);
}

std::size_t count_of(const std::string& s, const std::string& what) {
  std::size_t n = 0;
  for (auto p = s.find(what); p != std::string::npos; p = s.find(what, p + 1)) ++n;
  return n;
}

struct CtlCluster : ::testing::Test {
  static std::string name(int i) { return testkit::ProcessClusterFiles::name(i); }

  void start_node(int i) {
    auto a = files.node_args(i, 2, seed);
    a.insert(a.end(), {"--admin-token", kToken, "--entity", kType + ":" + std::to_string(kShards)});
    if (i == 0) a.insert(a.end(), {"--role", "frontend", "--role", "worker"});
    nodes[i] = std::make_unique<Proc>(a);
    if (seed.empty()) seed = nodes[i]->gossip;
  }
  /// troupectl against node i's admin port, with the token.
  CtlRun at(int i, std::vector<std::string> args) {
    args.insert(args.begin(), {"--admin", nodes[i]->admin, "--token", kToken});
    return ctl(args);
  }
  /// Starts nodes 0..n-1 and waits until each sees them all up and node 0 every shard placed.
  void start_cluster(int n) {
    for (int i = 0; i < n; ++i) start_node(i);
    for (int i = 0; i < n; ++i) {
      ASSERT_TRUE(eventually([&] { return count_of(at(i, {"members"}).out, " up ") == static_cast<std::size_t>(n); }, 30s))
          << at(i, {"members"}).out;
    }
    ASSERT_TRUE(eventually([&] {
      auto s = at(0, {"shards"});
      return s.out.find("0 without a home") != std::string::npos && count_of(s.out, "\nn") == static_cast<std::size_t>(n);
    }, 30s)) << at(0, {"shards"}).out;
  }

  testkit::ProcessClusterFiles files{4};
  TempDir& dir = files.dir;
  std::shared_ptr<membership::Keyring>& ring = files.ring;
  std::string seed;
  std::unique_ptr<Proc> nodes[4];
};

TEST_F(CtlCluster, MembersShardsAndLocate) {
  start_cluster(3);
  auto m = at(1, {"members"});
  ASSERT_EQ(m.code, 0) << m.out;
  EXPECT_EQ(m.out.rfind("NAME", 0), 0u) << m.out;
  for (int i = 0; i < 3; ++i) {
    EXPECT_TRUE(std::regex_search(m.out, std::regex("\\n" + name(i) + " +up +yes +127\\.0\\.0\\.1:[0-9]+ +[1-3] "))) << m.out;
  }
  EXPECT_NE(m.out.find("self"), std::string::npos) << m.out;
  EXPECT_NE(m.out.find("leader"), std::string::npos) << m.out;
  // Its own roles, and the one troupe-node adds to a member that runs sharding.
  EXPECT_TRUE(std::regex_search(m.out, std::regex("\\nn0 .* frontend,worker,sharding "))) << m.out;

  auto j = at(1, {"--json", "members"});
  ASSERT_EQ(j.code, 0) << j.out;
  EXPECT_EQ(j.out.front(), '[');
  EXPECT_EQ(count_of(j.out, "\"status\":\"up\""), 3u) << j.out;
  EXPECT_EQ(count_of(j.out, "\"roles\":[\"frontend\",\"worker\",\"sharding\"]"), 1u) << j.out;
  EXPECT_EQ(count_of(j.out, "\"roles\":[\"sharding\"]"), 2u) << j.out;

  auto s = at(2, {"shards", "--type", kType});
  ASSERT_EQ(s.code, 0) << s.out;
  EXPECT_NE(s.out.find(kType + ": 32 shards, 0 without a home"), std::string::npos) << s.out;
  EXPECT_TRUE(std::regex_search(s.out, std::regex("\\nSHARD +OWNER +EPOCH +STATE\\n0 +n[0-2] +[0-9]+ +ok\\n"))) << s.out;
  EXPECT_EQ(count_of(s.out, " ok\n"), kShards) << s.out;

  auto l = at(0, {"locate", kType, "user/42"});
  ASSERT_EQ(l.code, 0) << l.out;
  const auto shard = sharding::shard_of(kType, "user/42", kShards);
  EXPECT_TRUE(std::regex_search(l.out, std::regex(kType + "/user/42: shard " + std::to_string(shard) + " of 32, owner n[0-2], epoch [0-9]+")))
      << l.out;
  EXPECT_EQ(at(0, {"locate", "nope", "x"}).code, 1);
}

TEST_F(CtlCluster, ExplainsAKilledNodeAndTheMovesOfItsShards) {
  start_cluster(3);
  // A shard of n2's (n0 is the oldest member: its coordinator is the active one).
  auto table = at(0, {"--json", "shards", "--type", kType});
  std::smatch sm;
  ASSERT_TRUE(std::regex_search(table.out, sm, std::regex("\\{\"shard\":([0-9]+),\"region\":\"" + nodes[2]->address_str)))
      << table.out;
  const std::string shard = sm[1];
  auto before = at(0, {"shard", "history", kType, shard});
  ASSERT_EQ(before.code, 0) << before.out;
  EXPECT_NE(before.out.find("coordinator n0 (this node)"), std::string::npos) << before.out;

  nodes[2]->stop(SIGKILL);
  ASSERT_TRUE(nodes[0]->saw_event("downed", "n2", 30s));
  auto why = at(0, {"why", "n2"});
  ASSERT_EQ(why.code, 0) << why.out;
  EXPECT_NE(why.out.find("decisions of n0 about n2"), std::string::npos) << why.out;
  EXPECT_GE(count_of(why.out, " ago "), 2u) << why.out;  // it was learned, then lost
  EXPECT_NE(why.out.find("downed: "), std::string::npos) << why.out;

  CtlRun moved;
  ASSERT_TRUE(eventually([&] {
    moved = at(0, {"shard", "history", kType, shard});
    return moved.out.find(" downed\n") != std::string::npos;
  }, 30s)) << moved.out;
  EXPECT_TRUE(std::regex_search(moved.out, std::regex("ago +[^ \\n]+ +n[01] +[0-9]+ +downed\\n"))) << moved.out;
  // The same from a node that does not coordinate: it says where to ask.
  auto elsewhere = at(1, {"shard", "history", kType, shard});
  EXPECT_EQ(elsewhere.code, 0) << elsewhere.out;
  EXPECT_NE(elsewhere.out.find("not the active coordinator"), std::string::npos) << elsewhere.out;
  EXPECT_EQ(at(0, {"shard", "history", kType, "32"}).code, 1);
}

TEST_F(CtlCluster, RotatesTheGossipKeyAcrossTheCluster) {
  start_cluster(3);
  auto gen = ctl({"keygen"});
  ASSERT_EQ(gen.code, 0) << gen.out;
  std::smatch sm;
  ASSERT_TRUE(std::regex_search(gen.out, sm, std::regex("gossip_key ([A-Za-z0-9+/=]{44})\\n"))) << gen.out;
  const std::string fresh = sm[1];
  const auto old_key = membership::encode_key(ring->primary());
  char fresh_id[9], old_id[9];
  std::snprintf(fresh_id, sizeof fresh_id, "%08x", membership::key_id(membership::decode_key(fresh).value()));
  std::snprintf(old_id, sizeof old_id, "%08x", membership::key_id(ring->primary()));

  auto install = at(0, {"keys", "install", fresh});
  ASSERT_EQ(install.code, 0) << install.out;
  EXPECT_NE(install.out.find("confirmed by 3 members"), std::string::npos) << install.out;
  for (int i = 0; i < 3; ++i) EXPECT_EQ(count_of(at(i, {"keys", "list"}).out, "\n"), 3u) << i;  // header + 2 keys
  ASSERT_EQ(at(1, {"keys", "use", fresh}).code, 0);
  ASSERT_EQ(at(2, {"keys", "remove", old_key}).code, 0);
  for (int i = 0; i < 3; ++i) {
    auto l = at(i, {"keys", "list"});
    EXPECT_TRUE(std::regex_search(l.out, std::regex(std::string("KEY_ID +PRIMARY\\n") + fresh_id + " +yes\\n$"))) << l.out;
    EXPECT_EQ(l.out.find(old_id), std::string::npos) << l.out;
  }
  // Still one cluster, gossiping under the new key only.
  EXPECT_EQ(count_of(at(2, {"members"}).out, " up "), 3u);
  // Every node rewrote its keyring file.
  for (int i = 0; i < 3; ++i) {
    std::ifstream in(dir.path / ("keyring-" + name(i)));
    std::string first;
    while (std::getline(in, first) && (first.empty() || first.front() == '#')) {
    }
    EXPECT_EQ(first.substr(0, 44), fresh) << i;  // the primary first
  }
  auto bad = at(0, {"keys", "install", "not-a-key"});
  EXPECT_EQ(bad.code, 2) << bad.out;
}

TEST(Troupectl, KeygenWritesFilesANodeAccepts) {
  TempDir dir;
  auto r = ctl({"keygen", "--dir", dir.path.string(), "--name", "x"});
  ASSERT_EQ(r.code, 0) << r.out;
  for (const char* f : {"x.key", "x.keyring"}) {
    struct stat st {};
    ASSERT_EQ(::stat((dir.path / f).c_str(), &st), 0) << f;
    EXPECT_EQ(st.st_mode & 0777, 0600u) << f;
  }
  const auto pub = [&] {
    std::ifstream in(dir.path / "x.pub");
    std::string k;
    in >> k;
    return k;
  }();
  EXPECT_NE(r.out.find(pub + "  # x"), std::string::npos) << r.out;
  std::ofstream(dir.path / "allow") << pub << "\n";
  Proc n({"--name", "x", "--port", "0", "--key-file", (dir.path / "x.key").string(), "--allow-list",
          (dir.path / "allow").string(), "--keyring", (dir.path / "x.keyring").string(), "--preset", "local",
          "--gossip-port", "0"});
  EXPECT_NE(n.gossip, "");
  EXPECT_EQ(ctl({"--admin", n.admin, "keys", "list"}).code, 0);
}

TEST_F(CtlCluster, WatchPrintsAJoin) {
  start_cluster(2);
  // Settled (no shard moving), so that the first events are the join's.
  ASSERT_TRUE(eventually([&] { return count_of(at(0, {"shards", "--type", kType}).out, " ok\n") == kShards; }, 30s));
  std::mutex mu;
  std::string out;
  int code = -1;
  std::thread watcher([&] {
    const std::string cmd = std::string("timeout 60 ") + TROUPECTL_BIN + " --admin " + nodes[0]->admin + " watch --count 3 2>&1";
    FILE* f = ::popen(cmd.c_str(), "r");
    char buf[1024];
    while (f && std::fgets(buf, sizeof buf, f)) {
      std::lock_guard lk(mu);
      out += buf;
    }
    const int status = f ? ::pclose(f) : -1;
    std::lock_guard lk(mu);
    code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  });
  ASSERT_TRUE(eventually([&] {
    std::lock_guard lk(mu);
    return out.find("watching events") != std::string::npos;
  }, 20s));
  start_node(2);
  watcher.join();
  EXPECT_EQ(code, 0) << out;
  EXPECT_TRUE(std::regex_search(out, std::regex("\\nmember joined +n2 +status=joining"))) << out;
}

TEST_F(CtlCluster, ErrorsAreClear) {
  start_node(0);
  // A port nobody listens on.
  std::uint16_t free_port = 0;
  {
    boost::asio::io_context ioc;
    boost::asio::ip::tcp::acceptor a(ioc, {boost::asio::ip::make_address("127.0.0.1"), 0});
    free_port = a.local_endpoint().port();
  }
  const auto addr = "127.0.0.1:" + std::to_string(free_port);
  auto unreachable = ctl({"--admin", addr, "members"});
  EXPECT_EQ(unreachable.code, 1);
  EXPECT_NE(unreachable.out.find("troupectl: cannot reach admin at " + addr + ": "), std::string::npos) << unreachable.out;

  auto wrong = ctl({"--admin", nodes[0]->admin, "--token", "wrong", "leave", "n0"});
  EXPECT_EQ(wrong.code, 1);
  EXPECT_NE(wrong.out.find("401"), std::string::npos) << wrong.out;
  auto missing = ctl({"--admin", nodes[0]->admin, "down", "n0"});
  EXPECT_EQ(missing.code, 1);
  EXPECT_NE(missing.out.find("token is missing or wrong"), std::string::npos) << missing.out;

  auto ghost = at(0, {"why", "ghost"});
  EXPECT_EQ(ghost.code, 1);
  EXPECT_NE(ghost.out.find("not found (404): unknown member: ghost"), std::string::npos) << ghost.out;
  EXPECT_EQ(at(0, {"leave", "ghost"}).code, 1);

  EXPECT_EQ(ctl({"frobnicate"}).code, 2);
  EXPECT_EQ(ctl({"locate", "only-a-type"}).code, 2);
  EXPECT_EQ(ctl({"--admin", "no-port", "members"}).code, 2);
  // Nothing above harmed the node.
  EXPECT_EQ(count_of(at(0, {"members"}).out, " up "), 1u);
}

}  // namespace
}  // namespace troupe
