// The client service example (examples/client_service) run for real against two troupe-node
// processes hosting the built-in test entity (--entity kv) on loopback with CURVE: it adds to and
// reads back counters through its ShardingClient at a steady rate, and reports once a second.
//
// TROUPE_NODE_BIN names troupe-node, EXAMPLE_BIN troupe-client-service (built in the tree from the
// same source as the out-of-tree build of tests/install).

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <fstream>
#include <regex>
#include <sstream>

#include <troupe/membership/keyring.hpp>
#include <troupe/remoting/security.hpp>

#include "child_process.hpp"
#include "node_process.hpp"

namespace troupe {
namespace {

using namespace std::chrono_literals;

using testkit::Child;
using testkit::field;

struct ClientServiceExample : ::testing::Test {
  ClientServiceExample() {
    std::ofstream allow(dir.path / "allow");
    for (const std::string name : {"n0", "n1", "client"}) {
      auto kp = remoting::generate_keypair().value();
      EXPECT_FALSE(remoting::save_keypair(kp, dir.path, name));
      allow << kp.public_key << "\n";
    }
    allow.close();
    EXPECT_FALSE(membership::save_keyring(membership::Keyring(membership::generate_key().value()), dir.path / "keyring"));
  }
  std::unique_ptr<testkit::NodeProcess> node(const std::string& name, const std::string& seed) {
    std::vector<std::string> a{"--name", name, "--port", "0", "--gossip-port", "0", "--preset", "local", "--workers", "2",
                               "--key-file", (dir.path / (name + ".key")).string(), "--allow-list", (dir.path / "allow").string(),
                               "--keyring", (dir.path / ("keyring")).string(), "--entity", "kv"};
    if (!seed.empty()) a.insert(a.end(), {"--seed", seed});
    return std::make_unique<testkit::NodeProcess>(a);
  }
  /// The client service's command line as the Compose cluster gives it; contacts: n0 by
  /// address, n1 by the name "localhost" (which may resolve to 127.0.0.1 and ::1: every address
  /// is tried).
  std::vector<std::string> client_args(const std::string& duration) {
    return {EXAMPLE_BIN, "--contact", nodes[0]->address.endpoint(), "--contact", "localhost:" + std::to_string(nodes[1]->address.port),
            "--key-file", (dir.path / "client.key").string(), "--allow-list", (dir.path / "allow").string(),
            "--type", "kv", "--rate", "200", "--duration", duration, "--ids", "20"};
  }
  void start_cluster() {
    nodes[0] = node("n0", "");
    nodes[1] = node("n1", nodes[0]->gossip);
    ASSERT_TRUE(nodes[0]->saw_event("up", "n1", 20s));
    ASSERT_TRUE(nodes[1]->saw_event("up", "n0", 20s));
  }
  testkit::TempDir dir;
  std::unique_ptr<testkit::NodeProcess> nodes[2];
};

TEST_F(ClientServiceExample, AddsAndReadsBackCountersWithoutFailuresOrValuesGoingBackwards) {
  start_cluster();
  Child client(client_args("4"));
  const int code = client.wait_exit(30s);
  const auto out = client.output();
  EXPECT_EQ(code, 0) << out;
  std::vector<std::string> lines;
  std::istringstream in(out);
  for (std::string l; std::getline(in, l);) {
    if (l.starts_with("client t=")) lines.push_back(l);
  }
  ASSERT_GE(lines.size(), 4u) << "a line per second and a last one: " << out;
  const std::regex format(R"(^client t=\d+ ok=\d+ failed=\d+ unavailable=\d+ p99_ms=\d+\.\d+ wrong=\d+$)");
  for (const auto& l : lines) EXPECT_TRUE(std::regex_match(l, format)) << l;
  const auto& last = lines.back();
  EXPECT_GT(field(last, "ok"), 100) << last;
  EXPECT_EQ(field(last, "failed"), 0) << last;
  EXPECT_EQ(field(last, "unavailable"), 0) << last;
  EXPECT_EQ(field(last, "wrong"), 0) << last;
}

TEST_F(ClientServiceExample, RunsUntilSigtermThenExitsZero) {
  start_cluster();
  Child client(client_args("0"));
  const auto busy = client.wait_line(
      [](const std::string& l) { return l.starts_with("client t=") && field(l, "ok") > 0; }, 20s);
  ASSERT_FALSE(busy.empty()) << client.output();
  client.signal(SIGTERM);
  EXPECT_EQ(client.wait_exit(10s), 0) << client.output();
  EXPECT_EQ(field(client.last_line("client t="), "wrong"), 0);
}

}  // namespace
}  // namespace troupe
