// troupe-node's settings: a TOML file (--config), TROUPE_<NAME> environment variables and flags,
// in that order of precedence; a bad value or an unknown key stops the start naming it.

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>

#include <troupe/membership/keyring.hpp>

#include "node_process.hpp"

namespace troupe {
namespace {

using testkit::NodeProcess;
using testkit::run_node;
using testkit::TempDir;

/// A TCP port free right now on 127.0.0.1.
std::uint16_t free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

/// Sets an environment variable for the lifetime of the object (children inherit it).
struct Env {
  std::string name;
  Env(std::string n, const std::string& v) : name(std::move(n)) { ::setenv(name.c_str(), v.c_str(), 1); }
  ~Env() { ::unsetenv(name.c_str()); }
};

std::string write(const TempDir& dir, const std::string& name, const std::string& text) {
  const auto path = (dir.path / name).string();
  std::ofstream(path) << text;
  return path;
}

TEST(NodeConfig, FlagsBeatTheEnvironmentWhichBeatsTheFile) {
  TempDir dir;
  const auto p1 = free_port(), p2 = free_port(), p3 = free_port();
  const auto file = write(dir, "node.toml", "insecure = true\nname = \"from-file\"\nport = " + std::to_string(p1) + "\n");
  {
    NodeProcess n({"--config", file});
    EXPECT_EQ(n.address.port, p1) << "the file";
    n.stop();
  }
  Env port("TROUPE_PORT", std::to_string(p2));
  {
    NodeProcess n({"--config", file});
    EXPECT_EQ(n.address.port, p2) << "the environment over the file";
    n.stop();
  }
  {
    NodeProcess n({"--config", file, "--port", std::to_string(p3)});
    EXPECT_EQ(n.address.port, p3) << "a flag over both";
    n.stop();
  }
  // The file itself can come from the environment too.
  Env config("TROUPE_CONFIG", file);
  NodeProcess n({});
  EXPECT_EQ(n.address.port, p2);
}

TEST(NodeConfig, ABadValueOrAnUnknownKeyStopsTheStartNamingIt) {
  TempDir dir;
  auto [c1, o1] = run_node({"--config", write(dir, "a.toml", "insecure = true\nport = 0\nworkers = 5000\n")});
  EXPECT_EQ(c1, 2);
  EXPECT_NE(o1.find("workers"), std::string::npos) << o1;
  auto [c2, o2] = run_node({"--config", write(dir, "b.toml", "insecure = true\nport = 0\ncolour = \"red\"\n")});
  EXPECT_EQ(c2, 2);
  EXPECT_NE(o2.find("colour"), std::string::npos) << o2;
  auto [c3, o3] = run_node({"--config", (dir.path / "missing.toml").string()});
  EXPECT_EQ(c3, 2);
  EXPECT_NE(o3.find("missing.toml"), std::string::npos) << o3;
  {
    Env workers("TROUPE_WORKERS", "many");
    auto [c4, o4] = run_node({"--insecure", "--port", "0"});
    EXPECT_EQ(c4, 2);
    EXPECT_NE(o4.find("workers"), std::string::npos) << o4;
  }
  auto [c5, o5] = run_node({"--config", write(dir, "c.toml", "insecure = true\nport = 0\npreset = \"fast\"\nkeyring = \"/x\"\n")});
  EXPECT_EQ(c5, 2);
  EXPECT_NE(o5.find("preset"), std::string::npos) << o5;
  // Roles are membership's: without a keyring, or not printable, the flag is named.
  auto [c6, o6] = run_node({"--insecure", "--port", "0", "--role", "worker"});
  EXPECT_EQ(c6, 2);
  EXPECT_NE(o6.find("--role needs --keyring"), std::string::npos) << o6;
  const auto ring = dir.path / "keyring";
  ASSERT_FALSE(membership::save_keyring(membership::Keyring(membership::generate_key().value()), ring));
  auto [c7, o7] = run_node({"--insecure", "--port", "0", "--keyring", ring.string(), "--gossip-port", "0", "--role",
                            "has space"});
  EXPECT_EQ(c7, 2);
  EXPECT_NE(o7.find("--role: \"has space\""), std::string::npos) << o7;
}

/// One HTTP/1.0 GET over a plain socket: the whole response ("" when it cannot connect).
std::string http_get(std::uint16_t port, const std::string& path) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(port);
  std::string out;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) {
    const std::string req = "GET " + path + " HTTP/1.0\r\nHost: localhost\r\n\r\n";
    if (::write(fd, req.data(), req.size()) == static_cast<ssize_t>(req.size())) {
      char buf[4096];
      for (ssize_t k; (k = ::read(fd, buf, sizeof buf)) > 0;) out.append(buf, static_cast<std::size_t>(k));
    }
  }
  ::close(fd);
  return out;
}

TEST(NodeConfig, TheAdminPortIsInTheReadyLineAndGuardedBeyondLoopback) {
  {
    NodeProcess n({"--insecure", "--port", "0"});
    ASSERT_NE(n.admin_port(), 0) << "no admin endpoint in the ready line";
    EXPECT_TRUE(n.admin.starts_with("127.0.0.1:")) << n.admin;
    EXPECT_EQ(http_get(n.admin_port(), "/healthz").rfind("HTTP/1.0 200", 0), 0u);
    EXPECT_NE(http_get(n.admin_port(), "/metrics").find("troupe_remoting_frames_in_total{node="), std::string::npos);
    n.stop();
  }
  {
    NodeProcess n({"--insecure", "--port", "0", "--no-admin"});
    EXPECT_EQ(n.admin, "");
    EXPECT_EQ(n.admin_port(), 0);
    n.stop();
  }
  auto [c1, o1] = run_node({"--insecure", "--port", "0", "--admin-bind", "0.0.0.0", "--admin-port", "0"});
  EXPECT_EQ(c1, 2);
  EXPECT_NE(o1.find("--admin-bind"), std::string::npos) << o1;
  EXPECT_NE(o1.find("--admin-token"), std::string::npos) << o1;
  // A host name that only looks like a loopback address is not one.
  auto [c2, o2] = run_node({"--insecure", "--port", "0", "--admin-bind", "127.example.invalid", "--admin-port", "0"});
  EXPECT_EQ(c2, 2);
  EXPECT_NE(o2.find("--admin-token"), std::string::npos) << o2;
  // Any address of 127.0.0.0/8 is loopback.
  NodeProcess n({"--insecure", "--port", "0", "--admin-bind", "127.0.0.2", "--admin-port", "0"});
  EXPECT_NE(n.admin_port(), 0);
  n.stop();
}

}  // namespace
}  // namespace troupe
