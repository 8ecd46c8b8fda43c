// The admin HTTP server over real sockets: a one-node cluster (insecure remoting, gossip on
// loopback, the built-in test entity) and a tiny Beast client.

#include <troupe/node/admin.hpp>
#include <troupe/node/node.hpp>

#include <cstring>
#include <map>
#include <regex>
#include <set>
#include <sstream>

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <gtest/gtest.h>

#include "cluster_nodes.hpp"

namespace troupe::node {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using namespace std::chrono_literals;

struct Reply {
  int status = 0;
  std::string body;
  std::string content_type;
};

tcp::endpoint local(std::uint16_t port) { return {asio::ip::make_address("127.0.0.1"), port}; }

Reply request(std::uint16_t port, http::verb verb, const std::string& target, const std::string& auth = {},
              const std::string& body = {}) {
  asio::io_context ioc;
  beast::tcp_stream s(ioc);
  s.connect(local(port));
  http::request<http::string_body> req{verb, target, 11};
  req.set(http::field::host, "127.0.0.1");
  if (!auth.empty()) req.set(http::field::authorization, auth);
  req.body() = body;
  req.prepare_payload();
  http::write(s, req);
  beast::flat_buffer buf;
  http::response<http::string_body> res;
  http::read(s, buf, res);
  return {static_cast<int>(res.result_int()), res.body(), std::string(res[http::field::content_type])};
}
Reply get(std::uint16_t port, const std::string& target) { return request(port, http::verb::get, target); }

/// Sends `bytes` as they are and returns everything the server sends until it closes.
std::string raw(std::uint16_t port, const std::string& bytes) {
  asio::io_context ioc;
  tcp::socket s(ioc);
  s.connect(local(port));
  if (!bytes.empty()) asio::write(s, asio::buffer(bytes));
  std::string out;
  boost::system::error_code ec;
  asio::read(s, asio::dynamic_buffer(out), ec);  // until EOF
  return out;
}

NodeOptions cluster_options(const std::string& name, const std::string& token) {
  NodeOptions o;
  o.name = name;
  o.workers = 2;
  o.transport.insecure = true;
  o.transport.bind_host = "127.0.0.1";
  o.transport.port = 0;
  membership::MembershipServiceConfig mc;
  mc.membership = membership::MembershipConfig::local();
  mc.bind_host = "127.0.0.1";
  mc.port = 0;
  mc.keyring = std::make_shared<membership::Keyring>(membership::generate_key().value());
  o.membership = mc;
  NodeOptions::ShardingOptions so;
  sharding::EntitySettings s;
  s.type = "counter";
  s.num_shards = 16;
  so.test_entities.push_back(s);
  o.sharding = so;
  AdminOptions a;
  a.port = 0;
  a.token = token;
  o.admin = a;
  return o;
}

class AdminTest : public ::testing::Test {
 protected:
  void SetUp() override {
    node_ = Node::start(cluster_options("a1", "s3cret")).value();
    port_ = node_->admin_port();
    ASSERT_NE(port_, 0);
  }
  std::unique_ptr<Node> node_;
  std::uint16_t port_ = 0;
};

TEST_F(AdminTest, HealthAndReadiness) {
  auto h = get(port_, "/healthz");
  EXPECT_EQ(h.status, 200);
  EXPECT_EQ(h.body, "ok\n");
  // Ready once this member is up and the coordinator gave every shard a home.
  ASSERT_TRUE(testkit::eventually([&] { return get(port_, "/readyz").status == 200; }));
  EXPECT_EQ(get(port_, "/readyz").body, "{\"ready\":true}\n");
}

TEST_F(AdminTest, MetricsAreValidPrometheusText) {
  ASSERT_TRUE(testkit::eventually([&] { return get(port_, "/readyz").status == 200; }));
  auto r = get(port_, "/metrics");
  ASSERT_EQ(r.status, 200);
  EXPECT_EQ(r.content_type.rfind("text/plain; version=0.0.4", 0), 0u) << r.content_type;
  const std::regex sample(R"(^([a-zA-Z_:][a-zA-Z0-9_:]*)\{node="a1"(,[a-z_]+="[^"]*")*\} [0-9]+(\.[0-9]+)?(e[-+]?[0-9]+)?$)");
  const std::regex type_line(R"(^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram)$)");
  std::set<std::string> typed, seen, histograms;
  std::map<std::string, std::string> values;
  std::istringstream in(r.body);
  for (std::string line; std::getline(in, line);) {
    std::smatch m;
    if (line.starts_with("# HELP ")) continue;
    if (line.starts_with("#")) {
      ASSERT_TRUE(std::regex_match(line, m, type_line)) << line;
      typed.insert(m[1]);
      if (m[2] == "histogram") histograms.insert(m[1]);
      continue;
    }
    ASSERT_TRUE(std::regex_match(line, m, sample)) << line;
    std::string family = m[1];
    for (const char* suffix : {"_bucket", "_sum", "_count"}) {
      if (family.ends_with(suffix) && histograms.count(family.substr(0, family.size() - std::strlen(suffix)))) {
        family.resize(family.size() - std::strlen(suffix));
      }
    }
    EXPECT_TRUE(typed.count(family)) << "no TYPE before " << line;
    seen.insert(m[1]);
    values[line.substr(0, line.rfind(' '))] = line.substr(line.rfind(' ') + 1);
  }
  for (const char* name : {"troupe_remoting_frames_out_total", "troupe_remoting_peers", "troupe_membership_probes_total",
                           "troupe_gossip_udp_sent_total", "troupe_membership_members", "troupe_sharding_routed_total",
                           "troupe_sharding_shards_hosted", "troupe_actor_live", "troupe_admin_requests_total"}) {
    EXPECT_TRUE(seen.count(name)) << name;
  }
  EXPECT_EQ(values["troupe_membership_members{node=\"a1\",status=\"up\"}"], "1");
  // Histograms: cumulative buckets ending in +Inf, which equals _count.
  for (const char* h : {"troupe_membership_detection_seconds", "troupe_membership_downing_seconds",
                        "troupe_sharding_handoff_seconds", "troupe_sharding_reallocation_seconds"}) {
    ASSERT_TRUE(histograms.count(h)) << h;
    std::uint64_t last = 0;
    std::size_t buckets = 0;
    std::istringstream again(r.body);
    for (std::string line; std::getline(again, line);) {
      if (!line.starts_with(std::string(h) + "_bucket{")) continue;
      const auto v = std::stoull(line.substr(line.rfind(' ') + 1));
      EXPECT_GE(v, last) << line;
      last = v;
      ++buckets;
      if (line.find("le=\"+Inf\"") != std::string::npos) {
        EXPECT_EQ(line.substr(line.rfind(' ') + 1), values[std::string(h) + "_count{node=\"a1\"}"]) << line;
      }
    }
    EXPECT_EQ(buckets, Histogram::kBounds.size() + 1) << h;
    EXPECT_TRUE(values.count(std::string(h) + "_sum{node=\"a1\"}")) << h;
  }
  EXPECT_EQ(values["troupe_sharding_shards_hosted{node=\"a1\"}"], "16");
}

TEST_F(AdminTest, MembersShardsAndEntities) {
  ASSERT_TRUE(testkit::eventually([&] { return get(port_, "/readyz").status == 200; }));
  auto m = get(port_, "/api/v1/members");
  ASSERT_EQ(m.status, 200);
  EXPECT_EQ(m.content_type, "application/json");
  EXPECT_NE(m.body.find("\"name\":\"a1\""), std::string::npos) << m.body;
  EXPECT_NE(m.body.find("\"status\":\"up\""), std::string::npos) << m.body;
  EXPECT_TRUE(std::regex_search(m.body, std::regex("\"uid\":\"[0-9a-f]{16}\""))) << m.body;
  EXPECT_NE(m.body.find("\"remoting\":\"troupe://"), std::string::npos) << m.body;

  auto s = get(port_, "/api/v1/shards");
  ASSERT_EQ(s.status, 200);
  EXPECT_NE(s.body.find("\"counter\":{\"num_shards\":16,\"unallocated\":0"), std::string::npos) << s.body;
  EXPECT_NE(s.body.find("\"shard\":15,"), std::string::npos) << s.body;
  EXPECT_EQ(s.body.find("\"hosted_here\":false"), std::string::npos) << s.body;
  EXPECT_TRUE(std::regex_search(s.body, std::regex(R"("regions":\{"[^"]+":16\})"))) << s.body;
  EXPECT_EQ(get(port_, "/api/v1/shards?type=counter").body, s.body);
  EXPECT_EQ(get(port_, "/api/v1/shards?type=nope").status, 404);

  auto e = get(port_, "/api/v1/entities/counter/x%2Fy");
  ASSERT_EQ(e.status, 200);
  std::smatch sm;
  ASSERT_TRUE(std::regex_search(e.body, sm, std::regex(R"("shard":([0-9]+),)"))) << e.body;
  EXPECT_LT(std::stoul(sm[1]), 16u);
  EXPECT_EQ(std::stoul(sm[1]), sharding::shard_of("counter", "x/y", 16));
  EXPECT_NE(e.body.find("\"id\":\"x/y\""), std::string::npos) << e.body;
  EXPECT_NE(e.body.find("\"hosted_here\":true"), std::string::npos) << e.body;
  EXPECT_EQ(e.body.find("\"region\":null"), std::string::npos) << e.body;
  EXPECT_EQ(get(port_, "/api/v1/entities/nope/x").status, 404);
}

TEST_F(AdminTest, WritesNeedTheToken) {
  ASSERT_TRUE(testkit::eventually([&] { return get(port_, "/readyz").status == 200; }));
  EXPECT_EQ(request(port_, http::verb::post, "/api/v1/members/a1/leave").status, 401);
  EXPECT_EQ(request(port_, http::verb::post, "/api/v1/members/a1/down", "Bearer wrong").status, 401);
  EXPECT_EQ(request(port_, http::verb::post, "/api/v1/members/a1/down", "s3cret").status, 401);
  EXPECT_EQ(request(port_, http::verb::post, "/api/v1/members/ghost/down", "Bearer s3cret").status, 404);
  EXPECT_EQ(node_->admin()->stats().unauthorized, 3u);
  // Nothing was done by the refused writes.
  EXPECT_EQ(node_->membership()->self().status, membership::MemberStatus::up);
  auto ok = request(port_, http::verb::post, "/api/v1/members/a1/leave", "Bearer s3cret");
  EXPECT_EQ(ok.status, 202) << ok.body;
  EXPECT_TRUE(testkit::eventually([&] { return node_->membership()->self().status != membership::MemberStatus::up; }));
}

TEST_F(AdminTest, BadRequestsAreAnsweredAndCounted) {
  EXPECT_EQ(get(port_, "/nope").status, 404);
  EXPECT_EQ(get(port_, "/api/v1/entities/counter").status, 404);
  EXPECT_EQ(request(port_, http::verb::post, "/healthz").status, 405);
  EXPECT_EQ(request(port_, http::verb::delete_, "/metrics").status, 405);
  EXPECT_EQ(get(port_, "/api/v1/members/a1/leave").status, 405);
  EXPECT_EQ(get(port_, "/api/v1/entities/counter/%zz").status, 400);
  // A filter badly encoded is refused, not ignored (it used to list every type).
  EXPECT_EQ(get(port_, "/api/v1/shards?type=%zz").status, 400);
  // Decoded bytes that are not UTF-8 would make the JSON answer invalid.
  EXPECT_EQ(get(port_, "/api/v1/entities/counter/%FF%FE").status, 400);
  EXPECT_EQ(get(port_, "/api/v1/members/%C0%AF/history").status, 400) << "an overlong '/'";
  auto utf8 = get(port_, "/api/v1/entities/counter/%C3%A9t%C3%A9");
  EXPECT_EQ(utf8.status, 200);
  EXPECT_NE(utf8.body.find("\"id\":\"\xC3\xA9t\xC3\xA9\""), std::string::npos) << utf8.body;
  // Every 404 is counted, whichever handler answers it.
  EXPECT_EQ(get(port_, "/api/v1/entities/nope/x").status, 404);
  EXPECT_EQ(get(port_, "/api/v1/shards?type=nope").status, 404);

  auto garbage = raw(port_, std::string("\x01\x02\xff") + " garbage\r\n\r\n");
  EXPECT_EQ(garbage.rfind("HTTP/1.1 400", 0), 0u) << garbage;
  auto huge = raw(port_, "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(10'000, 'a') + "\r\n\r\n");
  EXPECT_EQ(huge.rfind("HTTP/1.1 400", 0), 0u) << huge;
  auto big_body = raw(port_, "POST /api/v1/members/a1/leave HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n");
  EXPECT_EQ(big_body.rfind("HTTP/1.1 413", 0), 0u) << big_body;
  auto closing = raw(port_, "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  EXPECT_NE(closing.find("\r\n\r\nok\n"), std::string::npos) << closing;
  // Still serving.
  EXPECT_EQ(get(port_, "/healthz").status, 200);
  const auto st = node_->admin()->stats();
  EXPECT_EQ(st.bad_requests, 7u);  // 3 encodings, 1 not UTF-8 twice, garbage, huge header, huge body
  EXPECT_EQ(st.not_found, 4u);
  EXPECT_EQ(st.method_not_allowed, 3u);
  EXPECT_NE(get(port_, "/metrics").body.find("troupe_admin_bad_requests_total{node=\"a1\"} 7\n"), std::string::npos);
}

// A member listed but no longer live (downed here) cannot be downed or made to leave: 409, not
// "unknown member".
TEST_F(AdminTest, DowningAMemberThatIsNoLongerLiveIsAConflict) {
  ASSERT_TRUE(testkit::eventually([&] { return get(port_, "/readyz").status == 200; }));
  ASSERT_EQ(request(port_, http::verb::post, "/api/v1/members/a1/down", "Bearer s3cret").status, 202);
  ASSERT_TRUE(testkit::eventually([&] { return node_->membership()->self().status == membership::MemberStatus::down; }));
  auto again = request(port_, http::verb::post, "/api/v1/members/a1/down", "Bearer s3cret");
  EXPECT_EQ(again.status, 409) << again.body;
  EXPECT_NE(again.body.find("no longer live"), std::string::npos) << again.body;
  EXPECT_EQ(request(port_, http::verb::post, "/api/v1/members/a1/leave", "Bearer s3cret").status, 409);
  EXPECT_EQ(request(port_, http::verb::post, "/api/v1/members/ghost/down", "Bearer s3cret").status, 404);
  EXPECT_EQ(node_->admin()->stats().conflicts, 2u);
}

// Event streams have a cap of their own below the connection limit: streams that never end
// cannot take the connections that health checks and scrapes need.
TEST(AdminServer, EventStreamsBeyondTheirCapAreRefusedAndHealthChecksStillServed) {
  auto o = cluster_options("a1", "s3cret");
  o.admin->max_event_streams = 2;
  o.admin->max_connections = 8;
  auto node = Node::start(o).value();
  const auto port = node->admin_port();
  asio::io_context ioc;
  std::vector<std::unique_ptr<tcp::socket>> streams;
  auto open_stream = [&] {
    auto s = std::make_unique<tcp::socket>(ioc);
    s->connect(local(port));
    asio::write(*s, asio::buffer(std::string("GET /api/v1/events HTTP/1.1\r\nHost: x\r\n\r\n")));
    std::string head;
    boost::system::error_code ec;
    asio::read_until(*s, asio::dynamic_buffer(head), "\r\n\r\n", ec);
    streams.push_back(std::move(s));
    return head;
  };
  for (int i = 0; i < 2; ++i) EXPECT_EQ(open_stream().rfind("HTTP/1.1 200 OK\r\n", 0), 0u);
  const auto refused = open_stream();
  EXPECT_EQ(refused.rfind("HTTP/1.1 503", 0), 0u) << refused;
  EXPECT_NE(refused.find("Retry-After: 5\r\n"), std::string::npos) << refused;
  streams.pop_back();
  for (int i = 0; i < 5; ++i) EXPECT_EQ(get(port, "/healthz").status, 200);
  EXPECT_EQ(node->admin()->stats().event_streams_refused, 1u);
  EXPECT_NE(get(port, "/metrics").body.find("troupe_admin_event_streams_refused_total{node=\"a1\"} 1\n"),
            std::string::npos);
  // A stream that ends makes room for another.
  streams.erase(streams.begin());
  EXPECT_TRUE(testkit::eventually([&] {
    const auto head = open_stream();
    if (head.rfind("HTTP/1.1 200 OK\r\n", 0) == 0) return true;
    streams.pop_back();
    return false;
  }, 10s));
}

TEST_F(AdminTest, HistoriesOfMembersAndShards) {
  ASSERT_TRUE(testkit::eventually([&] { return get(port_, "/readyz").status == 200; }));
  auto h = get(port_, "/api/v1/members/a1/history");
  ASSERT_EQ(h.status, 200) << h.body;
  EXPECT_NE(h.body.find("\"member\":\"a1\""), std::string::npos) << h.body;
  EXPECT_TRUE(std::regex_search(h.body, std::regex(R"("decisions":\[\{"at_ms":[0-9]+,"age_ms":[0-9]+,"what":")"))) << h.body;
  EXPECT_NE(h.body.find("status -> up"), std::string::npos) << h.body;
  EXPECT_EQ(get(port_, "/api/v1/members/ghost/history").status, 404);

  // The only node coordinates: it allocated every shard once.
  auto s = get(port_, "/api/v1/shards/counter/3/history");
  ASSERT_EQ(s.status, 200) << s.body;
  EXPECT_NE(s.body.find("\"coordinator\":\"a1\",\"active_here\":true"), std::string::npos) << s.body;
  EXPECT_TRUE(std::regex_search(s.body, std::regex(R"("moves":\[\{"at_ms":[0-9]+,"age_ms":[0-9]+,"from":null,"to":"a1","epoch":[1-9][0-9]*,"reason":"allocated"\}\]\})")))
      << s.body;
  const auto before = node_->admin()->stats();
  EXPECT_EQ(get(port_, "/api/v1/shards/counter/16/history").status, 400);  // 16 shards: 0..15
  EXPECT_EQ(get(port_, "/api/v1/shards/counter/-1/history").status, 400);
  EXPECT_EQ(get(port_, "/api/v1/shards/counter/x/history").status, 400);
  EXPECT_EQ(get(port_, "/api/v1/shards/nope/1/history").status, 404);
  EXPECT_EQ(request(port_, http::verb::post, "/api/v1/shards/counter/1/history").status, 405);
  const auto after = node_->admin()->stats();
  EXPECT_EQ(after.bad_requests - before.bad_requests, 3u);
  EXPECT_EQ(after.not_found - before.not_found, 1u);
  EXPECT_EQ(after.method_not_allowed - before.method_not_allowed, 1u);
}

std::string key_id_of(const membership::Key& k) {
  char buf[9];
  std::snprintf(buf, sizeof buf, "%08x", membership::key_id(k));
  return buf;
}

TEST_F(AdminTest, KeyringListAndChanges) {
  const auto old_key = node_->membership()->keyring()->primary();
  auto list = get(port_, "/api/v1/keys");
  ASSERT_EQ(list.status, 200);
  EXPECT_EQ(list.body, "{\"primary\":\"" + key_id_of(old_key) + "\",\"keys\":[{\"id\":\"" + key_id_of(old_key) +
                           "\",\"primary\":true}]}\n");
  EXPECT_EQ(list.body.find(membership::encode_key(old_key)), std::string::npos);  // never the key itself

  const auto fresh = membership::generate_key().value();
  const auto body = "{\"key\":\"" + membership::encode_key(fresh) + "\"}";
  EXPECT_EQ(request(port_, http::verb::post, "/api/v1/keys/install", {}, body).status, 401);
  EXPECT_EQ(request(port_, http::verb::post, "/api/v1/keys/install", "Bearer nope", body).status, 401);
  EXPECT_EQ(request(port_, http::verb::get, "/api/v1/keys/install").status, 405);
  for (const std::string& bad : std::vector<std::string>{"", "nonsense", "{\"key\":\"c2hvcnQ=\"}", "{\"key\":42}", "{\"other\":\"x\"}", body + "x"}) {
    EXPECT_EQ(request(port_, http::verb::post, "/api/v1/keys/install", "Bearer s3cret", bad).status, 400) << bad;
  }
  EXPECT_EQ(node_->membership()->keyring()->size(), 1u);  // nothing refused did anything

  auto ok = request(port_, http::verb::post, "/api/v1/keys/install", "Bearer s3cret", body);
  ASSERT_EQ(ok.status, 200) << ok.body;
  EXPECT_NE(ok.body.find("\"ok\":true,\"confirmed\":[\"a1\"],\"failed\":[],\"missing\":[]"), std::string::npos) << ok.body;
  EXPECT_EQ(node_->membership()->keyring()->size(), 2u);
  ASSERT_EQ(request(port_, http::verb::post, "/api/v1/keys/use", "Bearer s3cret", body).status, 200);
  EXPECT_NE(get(port_, "/api/v1/keys").body.find("\"primary\":\"" + key_id_of(fresh) + "\""), std::string::npos);
  // The primary cannot go: this node refuses, and the answer says so.
  auto refused = request(port_, http::verb::post, "/api/v1/keys/remove", "Bearer s3cret", body);
  EXPECT_EQ(refused.status, 502) << refused.body;
  EXPECT_NE(refused.body.find("\"failed\":[{\"member\":\"a1\""), std::string::npos) << refused.body;
  const auto old_body = "{\"key\":\"" + membership::encode_key(old_key) + "\"}";
  ASSERT_EQ(request(port_, http::verb::post, "/api/v1/keys/remove", "Bearer s3cret", old_body).status, 200);
  EXPECT_EQ(node_->membership()->keyring()->keys(), std::vector<membership::Key>{fresh});
  EXPECT_GE(node_->admin()->stats().bad_requests, 6u);
  EXPECT_EQ(node_->admin()->stats().unauthorized, 2u);
}

TEST_F(AdminTest, EventStreamDeliversMembershipEvents) {
  ASSERT_TRUE(testkit::eventually([&] { return get(port_, "/readyz").status == 200; }));
  asio::io_context ioc;
  tcp::socket s(ioc);
  s.connect(local(port_));
  asio::write(s, asio::buffer(std::string("GET /api/v1/events HTTP/1.1\r\nHost: x\r\n\r\n")));
  s.non_blocking(true);
  std::string got;
  auto saw = [&](const std::string& what) {
    return testkit::eventually([&] {
      char buf[4096];
      boost::system::error_code ec;
      const auto n = s.read_some(asio::buffer(buf), ec);
      if (!ec) got.append(buf, n);
      return got.find(what) != std::string::npos;
    }, 20s);
  };
  ASSERT_TRUE(saw(": connected\n\n")) << got;
  EXPECT_EQ(got.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << got;
  EXPECT_NE(got.find("Content-Type: text/event-stream\r\n"), std::string::npos) << got;
  EXPECT_EQ(node_->admin()->stats().event_streams, 1u);
  // Other requests are served while the stream is open.
  EXPECT_EQ(get(port_, "/healthz").status, 200);
  ASSERT_EQ(request(port_, http::verb::post, "/api/v1/members/a1/leave", "Bearer s3cret").status, 202);
  EXPECT_TRUE(saw("data: {\"event\":\"member\",\"kind\":\"leaving\",\"name\":\"a1\",")) << got;
  // One JSON object per data line.
  EXPECT_TRUE(std::regex_search(got, std::regex("\ndata: \\{[^\n]*\"status\":\"leaving\"[^\n]*\\}\n\n"))) << got;
  // A client that leaves frees its connection.
  s.close();
  EXPECT_TRUE(testkit::eventually([&] {
    return get(port_, "/metrics").body.find("troupe_admin_event_streams_open{node=\"a1\"} 0\n") != std::string::npos;
  }, 10s));
}

TEST_F(AdminTest, DashboardPage) {
  auto r = get(port_, "/");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.content_type, "text/html; charset=utf-8");
  EXPECT_NE(r.body.find("<html"), std::string::npos);
  EXPECT_EQ(request(port_, http::verb::post, "/").status, 405);
}

TEST(AdminServer, WithoutTokenWritesAreForbiddenAndIdleConnectionsTimeOut) {
  // A remoting-only node: no membership, no sharding.
  NodeOptions o;
  o.name = "solo";
  o.workers = 1;
  o.transport.insecure = true;
  o.transport.port = 0;
  AdminOptions a;
  a.port = 0;
  a.read_timeout = 300ms;
  o.admin = a;
  auto n = Node::start(std::move(o)).value();
  const auto port = n->admin_port();
  EXPECT_EQ(request(port, http::verb::post, "/api/v1/members/solo/down", "Bearer x").status, 403);
  EXPECT_EQ(get(port, "/readyz").status, 200);
  EXPECT_EQ(get(port, "/api/v1/members").status, 404);
  EXPECT_EQ(get(port, "/api/v1/shards").status, 404);
  EXPECT_EQ(get(port, "/metrics").body.find("troupe_membership_"), std::string::npos);
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(raw(port, ""), "");  // closed by the server after the read timeout
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 5s);
  EXPECT_TRUE(testkit::eventually([&] { return n->admin()->stats().timeouts == 1; }, 5s));
  EXPECT_EQ(n->admin()->stats().forbidden, 1u);
  n->stop();
  boost::system::error_code ec;
  asio::io_context ioc;
  tcp::socket s(ioc);
  s.connect(local(port), ec);
  EXPECT_TRUE(ec) << "the port is still open after stop()";
}

TEST(AdminServer, PortInUseFailsTheStart) {
  NodeOptions o;
  o.transport.insecure = true;
  o.transport.port = 0;
  o.admin = AdminOptions{};
  o.admin->port = 0;
  auto first = Node::start(std::move(o)).value();
  NodeOptions p;
  p.transport.insecure = true;
  p.transport.port = 0;
  p.admin = AdminOptions{};
  p.admin->port = first->admin_port();
  EXPECT_FALSE(Node::start(std::move(p)));
}

}  // namespace
}  // namespace troupe::node
