// CURVE keys, key files, allow-lists, and the ZAP handler on real ZeroMQ sockets: an allowed
// key gets through (and its frames carry its key as user id); an unknown key and a NULL peer
// are refused at the handshake, counted and seen by the socket monitor.

#include <gtest/gtest.h>

#include <sys/stat.h>

#include <filesystem>
#include <fstream>

#include <zmq.hpp>

#include <troupe/remoting/security.hpp>
#include <troupe/serialization/log.hpp>

#include "zap.hpp"

namespace troupe::remoting {
namespace {

namespace fs = std::filesystem;

struct TempDir {
  TempDir() : path(fs::temp_directory_path() / ("troupe-test-" + std::to_string(::getpid()) + "-" + std::to_string(n++))) {
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
  fs::path path;
  static inline int n = 0;
};

TEST(Keys, GeneratedPairsAreValidAndDistinct) {
  auto a = generate_keypair(), b = generate_keypair();
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_TRUE(valid_z85_key(a->public_key));
  EXPECT_TRUE(valid_z85_key(a->secret_key));
  EXPECT_NE(a->public_key, b->public_key);
  EXPECT_NE(a->secret_key, b->secret_key);
  EXPECT_FALSE(valid_z85_key("short"));
  EXPECT_FALSE(valid_z85_key(std::string(40, '"')));  // not in the Z85 alphabet
}

TEST(Keys, SavedPairLoadsBackAndAnExposedSecretFileIsRefused) {
  TempDir dir;
  auto kp = generate_keypair();
  ASSERT_FALSE(save_keypair(*kp, dir.path, "node1"));
  auto secret = dir.path / "node1.key";
  EXPECT_EQ(fs::status(secret).permissions() & fs::perms::all, fs::perms::owner_read | fs::perms::owner_write);
  auto loaded = load_keypair(secret);
  ASSERT_TRUE(loaded.ok()) << loaded.error().message();
  EXPECT_EQ(loaded->public_key, kp->public_key);
  EXPECT_EQ(loaded->secret_key, kp->secret_key);
  fs::permissions(secret, fs::perms::group_read, fs::perm_options::add);
  EXPECT_EQ(load_keypair(secret).error(), SecurityErrc::key_file_exposed);
  EXPECT_EQ(load_keypair(dir.path / "missing.key").error(), SecurityErrc::key_file_unreadable);
  std::ofstream(dir.path / "junk.key") << "not a key\n";
  fs::permissions(dir.path / "junk.key", fs::perms::owner_read | fs::perms::owner_write, fs::perm_options::replace);
  EXPECT_EQ(load_keypair(dir.path / "junk.key").error(), SecurityErrc::bad_key);
}

TEST(AllowListFile, ParsesKeysCommentsAndNamesABadLine) {
  auto k1 = generate_keypair()->public_key, k2 = generate_keypair()->public_key;
  auto ok = parse_allow_list("# cluster keys\n" + k1 + "  # node 1\n\n" + k2 + "\n");
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(*ok, (std::vector<std::string>{k1, k2}));
  std::string detail;
  auto bad = parse_allow_list(k1 + "\nnot-a-key\n", &detail);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(detail, "line 2: not a Z85 CURVE public key");
}

// A CURVE ROUTER guarded by the ZAP handler, with a monitor for handshake events.
struct Gate : ::testing::Test {
  Gate() {
    server_keys = *generate_keypair();
    allowed = *generate_keypair();
    allow = std::make_shared<AllowList>(std::vector<std::string>{allowed.public_key});
    zap = std::make_unique<detail::ZapHandler>(ctx, allow, "troupe", false, make_node_logger("zap-test"));
    zap->start();
    server = zmq::socket_t(ctx, zmq::socket_type::router);
    server.set(zmq::sockopt::linger, 0);
    server.set(zmq::sockopt::curve_server, 1);
    server.set(zmq::sockopt::curve_secretkey, server_keys.secret_key);
    detail::require_zap(server, "troupe");
    server.set(zmq::sockopt::rcvtimeo, 10000);
    zmq_socket_monitor(server.handle(), "inproc://gate-monitor",
                       ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_HANDSHAKE_FAILED_AUTH |
                           ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL | ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL);
    monitor = zmq::socket_t(ctx, zmq::socket_type::pair);
    monitor.set(zmq::sockopt::rcvtimeo, 10000);
    monitor.connect("inproc://gate-monitor");
    server.bind("tcp://127.0.0.1:*");
    endpoint = server.get(zmq::sockopt::last_endpoint);
  }
  ~Gate() override {
    server.close();
    monitor.close();
    zap->stop();
  }
  zmq::socket_t client(const CurveKeyPair* keys) {
    zmq::socket_t c(ctx, zmq::socket_type::dealer);
    c.set(zmq::sockopt::linger, 0);
    if (keys) {
      c.set(zmq::sockopt::curve_serverkey, server_keys.public_key);
      c.set(zmq::sockopt::curve_publickey, keys->public_key);
      c.set(zmq::sockopt::curve_secretkey, keys->secret_key);
    }
    c.connect(endpoint);
    return c;
  }
  /// The next handshake event on the server (0 on timeout).
  int next_event() {
    zmq::message_t ev, addr;
    if (!monitor.recv(ev) || !monitor.recv(addr)) return 0;
    std::uint16_t id;
    std::memcpy(&id, ev.data(), sizeof id);
    return id;
  }
  zmq::context_t ctx;
  CurveKeyPair server_keys, allowed;
  std::shared_ptr<AllowList> allow;
  std::unique_ptr<detail::ZapHandler> zap;
  zmq::socket_t server, monitor;
  std::string endpoint;
};

TEST_F(Gate, AllowedKeyGetsThroughAndItsFramesCarryItsKey) {
  auto c = client(&allowed);
  c.send(zmq::str_buffer("hello"), zmq::send_flags::none);
  zmq::message_t id, body;
  ASSERT_TRUE(server.recv(id));
  ASSERT_TRUE(server.recv(body));
  EXPECT_EQ(body.to_string(), "hello");
  EXPECT_EQ(std::string(body.gets("User-Id")), allowed.public_key);
  EXPECT_EQ(zap->stats().accepted.load(), 1u);
}

TEST_F(Gate, UnknownKeyIsRefusedAtTheHandshake) {
  auto stranger = *generate_keypair();
  auto c = client(&stranger);
  c.send(zmq::str_buffer("let me in"), zmq::send_flags::dontwait);
  EXPECT_EQ(next_event(), ZMQ_EVENT_HANDSHAKE_FAILED_AUTH);
  EXPECT_EQ(zap->stats().refused_key.load(), 1u);
  EXPECT_EQ(zap->stats().accepted.load(), 0u);
  // The allow-list is reloadable: the same key is admitted after it is added.
  allow->replace({allowed.public_key, stranger.public_key});
  auto again = client(&stranger);
  again.send(zmq::str_buffer("now?"), zmq::send_flags::none);
  zmq::message_t id, body;
  ASSERT_TRUE(server.recv(id));
  ASSERT_TRUE(server.recv(body));
  EXPECT_EQ(body.to_string(), "now?");
}

TEST_F(Gate, NullPeerCannotTalkToACurveServer) {
  auto c = client(nullptr);
  c.send(zmq::str_buffer("plain text"), zmq::send_flags::dontwait);
  const int ev = next_event();
  EXPECT_TRUE(ev == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL || ev == ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL) << ev;
  EXPECT_EQ(zap->stats().accepted.load(), 0u);
}

}  // namespace
}  // namespace troupe::remoting
