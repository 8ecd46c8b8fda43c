// The targeting example (examples/targeting) run for real: two `targeting node` processes form a
// cluster on loopback (gossip, CURVE remoting), `targeting generate` streams events through a
// ShardingClient and checks every campaign's subscribers and every user's state. Mid-stream one
// node leaves (SIGTERM: graceful handoff), so the users it hosted must carry their facts and
// subscriptions to the other node by snapshot()/restore(). Then the idle users passivate.
//
// TROUPE_NODE_BIN and EXAMPLE_BIN both name the targeting program (its node mode prints
// troupe-node's ready and event lines, so NodeProcess runs it).

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <fstream>
#include <regex>

#include <troupe/membership/keyring.hpp>
#include <troupe/remoting/security.hpp>

#include "child_process.hpp"
#include "node_process.hpp"
#include "testkit.hpp"

namespace troupe {
namespace {

using namespace std::chrono_literals;

using testkit::Child;
using testkit::field;

/// A counter of the admin server's /metrics (Prometheus text), summed over its samples; -1 when
/// the server does not answer or has no such counter.
long long metric(std::uint16_t port, const std::string& name) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(port);
  std::string out;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) {
    const std::string req = "GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n";
    if (::write(fd, req.data(), req.size()) == static_cast<ssize_t>(req.size())) {
      char buf[4096];
      for (ssize_t k; (k = ::read(fd, buf, sizeof buf)) > 0;) out.append(buf, static_cast<std::size_t>(k));
    }
  }
  ::close(fd);
  long long sum = -1;
  const std::regex sample("\n" + name + "(_total)?(\\{[^}]*\\})? ([0-9]+)");
  for (std::sregex_iterator it(out.begin(), out.end(), sample), end; it != end; ++it) sum = std::max(sum, 0LL) + std::stoll((*it)[3]);
  return sum;
}

TEST(TargetingExample, SubscribesExactlyTheEligibleUsersAcrossANodeLeavingMidStream) {
  testkit::TempDir dir;
  std::ofstream allow(dir.path / "allow");
  for (const std::string name : {"n0", "n1", "gen"}) {
    auto kp = remoting::generate_keypair().value();
    ASSERT_FALSE(remoting::save_keypair(kp, dir.path, name));
    allow << kp.public_key << "\n";
  }
  allow.close();
  ASSERT_FALSE(membership::save_keyring(membership::Keyring(membership::generate_key().value()), dir.path / "keyring"));
  const std::string campaign = "spring-sale: country=US,CA; installed_after=2026-01-01; events=foo,bar; pages=Buy";
  auto node_args = [&](const std::string& name, const std::string& seed) {
    std::vector<std::string> a{"node", "--name", name, "--port", "0", "--gossip-port", "0", "--preset", "local",
                               "--key-file", (dir.path / (name + ".key")).string(), "--allow-list", (dir.path / "allow").string(),
                               "--keyring", (dir.path / "keyring").string(), "--shards", "32", "--passivate-after", "6000",
                               "--campaign", campaign};
    if (!seed.empty()) a.insert(a.end(), {"--seed", seed});
    return a;
  };
  testkit::NodeProcess n0(node_args("n0", ""));
  testkit::NodeProcess n1(node_args("n1", n0.gossip));
  ASSERT_TRUE(n0.saw_event("up", "n1", 20s));
  ASSERT_TRUE(n1.saw_event("up", "n0", 20s));

  // ~4800 events at 1500/s: about 3 s of stream; n1 leaves once 30% are sent.
  Child gen({EXAMPLE_BIN, "generate", "--contact", n0.address.endpoint(), "--contact", n1.address.endpoint(),
             "--key-file", (dir.path / "gen.key").string(), "--allow-list", (dir.path / "allow").string(),
             "--users", "600", "--rate", "1500", "--eligible", "0.3", "--sample", "0", "--shards", "32",
             "--campaign", campaign, "--rng-seed", "7"});
  ASSERT_FALSE(gen.wait_line("generator progress 30%", 30s).empty()) << gen.output();
  const int n1_status = n1.stop(SIGTERM);  // graceful: hands its shards (and users' state) to n0
  EXPECT_TRUE(WIFEXITED(n1_status) && WEXITSTATUS(n1_status) == 0) << "n1 left gracefully";
  const int code = gen.wait_exit(60s);
  const auto out = gen.output();
  EXPECT_EQ(code, 0) << out;
  const auto summary = gen.wait_line("campaign spring-sale:", 0ms);
  ASSERT_FALSE(summary.empty()) << out;
  EXPECT_GT(field(summary, "expected"), 100) << summary;
  EXPECT_EQ(field(summary, "subscribed"), field(summary, "expected")) << summary;
  EXPECT_EQ(field(summary, "missing"), 0) << summary;
  EXPECT_EQ(field(summary, "unexpected"), 0) << summary;
  const auto users = gen.wait_line("users asked=", 0ms);
  EXPECT_EQ(field(users, "asked"), 600) << users;
  EXPECT_EQ(field(users, "wrong"), 0) << users;
  EXPECT_GT(field(users, "moved_by_handoff"), 0) << "some users' state came over from n1: " << users;
  EXPECT_EQ(field(users, "on_n0"), 600) << "n1 left: n0 hosts every user now: " << users;
  EXPECT_FALSE(gen.wait_line("generator OK", 0ms).empty()) << out;

  // Idle users passivate (6 s after their last message; the campaign entity never does).
  // No event crosses the process boundary for a passivation: the node's metric is polled.
  (void)testkit::eventually([&] { return metric(n0.admin_port(), "troupe_sharding_passivations") >= 600; }, 20s, 100ms);
  EXPECT_GE(metric(n0.admin_port(), "troupe_sharding_passivations"), 600) << "every idle user passivated on n0";
  EXPECT_EQ(metric(n0.admin_port(), "troupe_sharding_live_entities"), 1) << "only the campaign entity is left";

  // n0 restored the states n1 handed over, and leaves cleanly too.
  std::string n0_stats;
  EXPECT_EQ(WEXITSTATUS(n0.stop(SIGTERM)), 0);
  EXPECT_TRUE(n0.wait_line([&](const std::string& l) { return l.starts_with("targeting node n0 stopped") && (n0_stats = l, true); }, 5s));
  EXPECT_GT(field(n0_stats, "states_restored"), 0) << n0_stats;
}

}  // namespace
}  // namespace troupe
