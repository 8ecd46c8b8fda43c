// cluster_demo: joins a running Troupe cluster as one more member, lists the members it sees,
// asks each node's /user/echo (troupe-node --test-actors) and relays a question from the first
// node to the last through /user/relay, then leaves gracefully. scripts/demo.sh starts three
// troupe-node processes and runs this against them (`make demo`).
//
// usage: cluster_demo KEY_FILE ALLOW_LIST KEYRING SEED_HOST:PORT EXPECTED_NODES [ASKS]

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

#include <troupe/node/node.hpp>
#include <troupe/remoting/security.hpp>

#include "node_generated.h"

using namespace troupe;
using namespace std::chrono_literals;

int main(int argc, char** argv) {
  if (argc < 6) {
    std::fprintf(stderr, "usage: cluster_demo KEY_FILE ALLOW_LIST KEYRING SEED EXPECTED_NODES [ASKS]\n");
    return 2;
  }
  const std::size_t expected = std::stoul(argv[5]);
  const int asks = argc > 6 ? std::stoi(argv[6]) : 1000;

  node::NodeOptions o;
  o.name = "demo-client";
  o.workers = 2;
  o.transport.port = 0;
  auto keys = remoting::load_keypair(argv[1]);
  if (!keys) return std::fprintf(stderr, "key file: %s\n", keys.error().message().c_str()), 2;
  o.transport.keys = *keys;
  std::ifstream in(argv[2]);
  std::stringstream text;
  text << in.rdbuf();
  o.transport.allow_list = std::make_shared<remoting::AllowList>(remoting::parse_allow_list(text.str()).value());
  membership::MembershipServiceConfig mc;
  mc.membership = membership::MembershipConfig::local();
  mc.port = 0;
  mc.seeds = {argv[4]};
  auto ring = membership::load_keyring(argv[3]);
  if (!ring) return std::fprintf(stderr, "keyring: %s\n", ring.error().message().c_str()), 2;
  mc.keyring = *ring;
  o.membership = mc;

  std::mutex mu;
  std::condition_variable cv;
  std::vector<membership::MemberInfo> up;
  o.on_event = [&](const membership::MembershipEvent& e) {
    if (e.kind != membership::EventKind::up || e.member.name == "demo-client") return;
    std::lock_guard lk(mu);
    up.push_back(e.member);
    cv.notify_all();
  };
  auto started = node::Node::start(std::move(o));
  if (!started) return std::fprintf(stderr, "cannot start: %s\n", started.error().message().c_str()), 1;
  auto& n = **started;
  {
    std::unique_lock lk(mu);
    if (!cv.wait_for(lk, 30s, [&] { return up.size() >= expected; })) {
      std::fprintf(stderr, "only %zu of %zu nodes came up\n", up.size(), expected);
      return 1;
    }
  }
  std::sort(up.begin(), up.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
  std::printf("\nmembers seen by demo-client (leader: %s)\n", n.membership()->leader() ? n.membership()->leader()->name.c_str() : "-");
  for (const auto& m : n.membership()->members()) {
    std::printf("  %-12s %-8s %-11s %s\n", m.name.c_str(), membership::to_string(m.status),
                membership::to_string(m.liveness), m.remoting.c_str());
  }
  std::printf("\n%-12s %8s %10s %10s\n", "node", "asks", "p50 (us)", "p99 (us)");
  bool ok = true;
  for (const auto& m : up) {
    auto echo = n.transport().resolve(m.remoting + "/user/echo").value();
    std::vector<double> us;
    for (int i = 0; i < asks; ++i) {
      auto msg = Message::build<node::Echo>([&](auto& b) { return node::CreateEcho(b, static_cast<std::uint64_t>(i)); });
      const auto t0 = std::chrono::steady_clock::now();
      auto r = echo.ask(msg, 5s).get();
      us.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
      if (!r || r->as<node::Echo>()->seq() != static_cast<std::uint64_t>(i)) ok = false;
    }
    std::sort(us.begin(), us.end());
    std::printf("%-12s %8d %10.0f %10.0f\n", m.name.c_str(), asks, us[us.size() / 2], us[us.size() * 99 / 100]);
  }
  // The first node asks the last one on our behalf.
  auto relay = n.transport().resolve(up.front().remoting + "/user/relay").value();
  const auto target = up.back().remoting + "/user/echo";
  auto r = relay.ask(Message::build<node::Relay>([&](auto& b) { return node::CreateRelayDirect(b, target.c_str(), 42); }), 10s).get();
  const bool relayed = r && r->is<node::Echo>() && r->as<node::Echo>()->seq() == 42;
  std::printf("\nrelay %s -> %s: %s\n", up.front().name.c_str(), up.back().name.c_str(), relayed ? "ok" : "FAILED");
  ok = ok && relayed;
  n.leave_and_stop(10s);
  std::printf("%s\n", ok ? "demo ok" : "demo FAILED");
  return ok ? 0 : 1;
}
