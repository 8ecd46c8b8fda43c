// sharding_bench: cluster sharding end to end between real processes on loopback, CURVE on.
// Three troupe-node processes host the built-in test entity (and the test actors); this process
// is a ShardingClient (not a member) that found them through their endpoints.
//
//   e2e: the client tells entities spread over the three nodes (every message crosses to another
//        node), msg/s, beside the same client telling the actor /user/sink on one node directly
//        (plain remoting, actor to actor), in the same run with the same windowing; the same
//        sharded tell to the entities of that one node only (sharded_tell_rate_one_node); and
//        ask latency p50 to an entity beside an ask to /user/echo.
//   recovery: under load (the client asking every entity in turn), SIGKILL one node (preset
//        `lan` unless --preset): per entity of the lost node, the time from the kill until it
//        answers again on a survivor (p50, p99, max), the time until the survivors downed the
//        node, and the asks that went unanswered meanwhile (lost with that node's mailboxes).
//
// Every told message is a fresh EntityAdd carrying --payload bytes (64 by default, the size of the
// remoting benchmark's figure that the issue names as the baseline; bench/run.sh puts the two
// side by side as sharded_tell_vs_remote_tell_64B), on both sides, in that benchmark's windowed
// flow (at most 50,000 messages unconfirmed, a sync point every 10,000), as it builds a fresh
// Blob for every send.
//
// Usage: sharding_bench [--only e2e|e2e_tell|recovery] [--messages N] [--entities E] [--payload B]
//                       [--preset P] [--side both|sharded|direct|one_node] [--runs R]
// (e2e_tell: the tell rates without the ask latencies; bench/run.sh alternates `--only e2e_tell
// --side sharded --runs 1` with the remoting benchmark's remote_tell_64B for #8's ratio.)
// Prints one JSON line per figure: {"name","value","unit","peer","peer_value"} (peer_value only
// where the figure has a baseline measured here).

#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <fstream>
#include <future>
#include <iterator>
#include <map>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include <troupe/membership/keyring.hpp>
#include <troupe/node/node.hpp>
#include <troupe/remoting/security.hpp>
#include <troupe/sharding/client.hpp>

#include "node_generated.h"
#include "node_process.hpp"

namespace {

using namespace troupe;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using Proc = testkit::NodeProcess;

const std::string kType = "bench";
constexpr std::uint32_t kShards = 256;

void emit(const std::string& name, double value, const std::string& unit, const std::string& peer = "",
          double peer_value = 0) {
  if (peer.empty()) {
    std::printf("{\"name\":\"%s\",\"value\":%.3f,\"unit\":\"%s\",\"peer\":null,\"peer_value\":null}\n", name.c_str(), value,
                unit.c_str());
  } else {
    std::printf("{\"name\":\"%s\",\"value\":%.3f,\"unit\":\"%s\",\"peer\":\"%s\",\"peer_value\":%.3f}\n", name.c_str(), value,
                unit.c_str(), peer.c_str(), peer_value);
  }
  std::fflush(stdout);
}

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<std::size_t>(p * static_cast<double>(v.size())))];
}

struct Cluster {
  testkit::TempDir dir;
  std::vector<remoting::CurveKeyPair> keys;
  std::vector<std::unique_ptr<Proc>> nodes;
  std::unique_ptr<node::Node> client_node;
  std::unique_ptr<sharding::ShardingClient> client;

  explicit Cluster(const std::string& preset, int n = 3) {
    std::ofstream allow(dir.path / "allow");
    for (int i = 0; i <= n; ++i) {
      keys.push_back(remoting::generate_keypair().value());
      if (i < n) (void)remoting::save_keypair(keys.back(), dir.path, "n" + std::to_string(i));
      allow << keys.back().public_key << "\n";
    }
    allow.close();
    membership::Keyring ring(membership::generate_key().value());
    (void)membership::save_keyring(ring, dir.path / "keyring");
    std::string seed;
    for (int i = 0; i < n; ++i) {
      const auto name = "n" + std::to_string(i);
      const auto ring_file = dir.path / ("keyring-" + name);
      std::filesystem::copy_file(dir.path / "keyring", ring_file);
      std::vector<std::string> a{"--name", name, "--port", "0", "--workers", "2", "--key-file",
                                 (dir.path / (name + ".key")).string(), "--allow-list", (dir.path / "allow").string(),
                                 "--keyring", ring_file.string(), "--preset", preset, "--gossip-port", "0",
                                 "--entity", kType + ":" + std::to_string(kShards), "--test-actors"};
      if (!seed.empty()) {
        a.push_back("--seed");
        a.push_back(seed);
      }
      nodes.push_back(std::make_unique<Proc>(a));
      if (seed.empty()) seed = nodes.back()->gossip;
    }
    node::NodeOptions o;
    o.name = "client";
    o.workers = 2;
    o.transport.port = 0;
    o.transport.keys = keys[static_cast<std::size_t>(n)];
    o.transport.allow_list = std::make_shared<remoting::AllowList>();
    std::vector<std::string> pubs;
    for (const auto& k : keys) pubs.push_back(k.public_key);
    o.transport.allow_list->replace(pubs);
    client_node = node::Node::start(std::move(o)).value();
    node::register_test_messages(client_node->system().registry());
    sharding::ShardingClientConfig cc;
    for (int i = 0; i < n; ++i) {
      cc.contact_points.push_back(nodes[static_cast<std::size_t>(i)]->address.endpoint());
      client_node->transport().add_peer_key(nodes[static_cast<std::size_t>(i)]->address.endpoint(),
                                            keys[static_cast<std::size_t>(i)].public_key);
    }
    cc.sharding.resend_interval = 500ms;
    client = std::make_unique<sharding::ShardingClient>(client_node->system(), client_node->transport(), cc);
    client->start_proxy(kType, kShards);
  }
  ~Cluster() {
    client.reset();
    if (client_node) client_node->stop();
  }

  /// Every shard placed (none moving) on `n` nodes, as the client sees it.
  bool settled(std::size_t n) const {
    auto t = client->shards(kType);
    if (t.size() != kShards) return false;
    std::set<std::string> regions;
    for (const auto& s : t) {
      if (s.region.empty() || s.moving) return false;
      regions.insert(s.region);
    }
    return regions.size() == n;
  }
  bool wait_settled(std::size_t n, std::chrono::seconds limit) const {
    const auto end = Clock::now() + limit;
    while (!settled(n)) {
      if (Clock::now() > end) return false;
      std::this_thread::sleep_for(20ms);
    }
    return true;
  }
  Message get() const { return Message::build<node::EntityGet>([](auto& b) { return node::CreateEntityGet(b); }); }
  /// The node answering for `id`, "" on failure.
  std::string where(const std::string& id, std::chrono::milliseconds timeout = 5s) const {
    auto r = client->ask(kType, id, get(), timeout).get();
    if (!r || !r->is<node::EntityValue>()) return "";
    return r->as<node::EntityValue>()->node()->str();
  }
};

std::string id_of(int k) { return "e" + std::to_string(k); }

int run_e2e(std::size_t messages, int entities, const std::string& side, std::size_t payload, int runs, bool with_asks) {
  Cluster c("lan");
  if (!c.wait_settled(3, 60s)) {
    std::fprintf(stderr, "sharding_bench: the cluster did not settle\n");
    return 1;
  }
  // One entity per node to sync on (FIFO per path: when it answers, everything sent to its node
  // before has been handed to its entities), and the entities that take the load.
  std::map<std::string, std::string> probe_of_node;
  std::vector<std::string> ids, ids_on_n1;  // every entity; those on the direct side's node
  for (int k = 0; k < entities; ++k) {
    const auto node = c.where(id_of(k));
    if (node.empty()) {
      std::fprintf(stderr, "sharding_bench: entity %s does not answer\n", id_of(k).c_str());
      return 1;
    }
    ids.push_back(id_of(k));
    if (node == "n1") ids_on_n1.push_back(id_of(k));
    probe_of_node.emplace(node, id_of(k));
  }
  auto sink = c.client_node->transport().resolve(c.nodes[1]->address_str + "/user/sink").value();
  auto echo = c.client_node->transport().resolve(c.nodes[1]->address_str + "/user/echo").value();
  // Both sides send the same message: an EntityAdd carrying `payload` bytes (the remoting
  // benchmark's actor-to-actor figure, the baseline, is measured with 64).
  const std::vector<std::uint8_t> bytes(payload, 0x5a);
  // A fresh message for every send, as the remoting benchmark builds a fresh Blob for each.
  auto add = [&] {
    return Message::build<node::EntityAdd>(
        [&](auto& b) { return node::CreateEntityAdd(b, 1, b.CreateVector(bytes.data(), bytes.size())); });
  };
  // The remoting benchmark's windowed flow (its remote_tell_64B is the baseline): a sync point
  // every kSyncEvery messages, and the sender goes on while at most kWindow messages are not yet
  // confirmed, so the pipe never drains mid-run. A sync point is an ask per node (FIFO per path:
  // its answer means everything sent to that node before it was handed to the entities).
  constexpr std::size_t kSyncEvery = 10'000, kWindow = 50'000;
  struct Sync {
    std::size_t upto;  // messages sent before it
    std::vector<std::future<Result<Message>>> answers;
  };
  // Runs `tell(i)` for every message and `sync()` (the asks of one sync point) every kSyncEvery.
  auto windowed = [&](std::size_t count, auto&& tell, auto&& sync) {
    std::deque<Sync> open;
    std::size_t confirmed = 0;
    auto settle_oldest = [&] {
      for (auto& f : open.front().answers) {
        if (!f.get()) throw std::runtime_error("a sync ask was not answered");
      }
      confirmed = open.front().upto;
      open.pop_front();
    };
    const auto t0 = Clock::now();
    for (std::size_t i = 0; i < count; ++i) {
      while (i - confirmed >= kWindow) settle_oldest();
      tell(i);
      if ((i + 1) % kSyncEvery == 0 || i + 1 == count) open.push_back(Sync{i + 1, sync()});
    }
    while (!open.empty()) settle_oldest();
    return static_cast<double>(count) / std::chrono::duration<double>(Clock::now() - t0).count();
  };

  // `to`: the entities told in turn; at a sync point the probes of their nodes are asked.
  auto sharded = [&](const std::vector<std::string>& to, std::size_t count) {
    std::vector<std::string> probes;
    for (const auto& [node, id] : probe_of_node) {
      if (&to == &ids || node == "n1") probes.push_back(id);
    }
    return windowed(count, [&](std::size_t i) { c.client->tell(kType, to[i % to.size()], add()); },
                    [&] {
                      std::vector<std::future<Result<Message>>> asks;
                      for (const auto& id : probes) asks.push_back(c.client->ask(kType, id, c.get(), 30s));
                      return asks;
                    });
  };
  auto direct = [&](std::size_t count) {
    const auto query = Message::build<node::CountQuery>([](auto& b) { return node::CreateCountQuery(b); });
    return windowed(count, [&](std::size_t) { sink.tell(add()); },
                    [&] {
                      std::vector<std::future<Result<Message>>> asks;
                      asks.push_back(sink.ask(query, 30s));
                      return asks;
                    });
  };
  // Per run, on stderr: the client's frames (messages per frame, bytes per message, wake-ups of
  // its I/O thread) and the CPU time per message of the sending thread, the client process and
  // the three node processes together (steadier than the rates on a shared machine).
  auto node_cpu_s = [&] {
    double s = 0;
    for (const auto& n : c.nodes) {
      std::ifstream f("/proc/" + std::to_string(n->pid()) + "/stat");
      std::string line;
      std::getline(f, line);
      std::istringstream in(line.substr(line.rfind(')') + 2));
      std::vector<std::string> v{std::istream_iterator<std::string>(in), {}};
      if (v.size() > 12) s += static_cast<double>(std::stoull(v[11]) + std::stoull(v[12])) / static_cast<double>(::sysconf(_SC_CLK_TCK));
    }
    return s;
  };
  auto cpu_s = [](clockid_t id) {
    timespec t{};
    ::clock_gettime(id, &t);
    return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_nsec) * 1e-9;
  };
  auto framed = [&](const char* what, auto&& run) {
    const auto s0 = c.client_node->transport().stats();
    const double t0 = cpu_s(CLOCK_THREAD_CPUTIME_ID), p0 = cpu_s(CLOCK_PROCESS_CPUTIME_ID), n0 = node_cpu_s();
    const double rate = run();
    const double t1 = cpu_s(CLOCK_THREAD_CPUTIME_ID), p1 = cpu_s(CLOCK_PROCESS_CPUTIME_ID), n1 = node_cpu_s();
    const auto s1 = c.client_node->transport().stats();
    const auto frames = std::max<std::uint64_t>(1, s1.frames_out - s0.frames_out);
    const auto msgs = std::max<std::uint64_t>(1, s1.messages_out - s0.messages_out);
    const double ns = 1e9 / static_cast<double>(messages);
    std::fprintf(stderr,
                 "  %s: %.0f msg/s, %.1f messages per frame, %.1f bytes per message, %llu wake-ups, %llu messages in; "
                 "CPU ns per message: sending thread %.0f, client %.0f, nodes %.0f\n",
                 what, rate, static_cast<double>(msgs) / static_cast<double>(frames),
                 static_cast<double>(s1.bytes_out - s0.bytes_out) / static_cast<double>(msgs),
                 static_cast<unsigned long long>(s1.wakeups - s0.wakeups),
                 static_cast<unsigned long long>(s1.messages_in - s0.messages_in), (t1 - t0) * ns, (p1 - p0) * ns,
                 (n1 - n0) * ns);
    return rate;
  };
  // Untimed warm-ups first, as the remoting benchmark's (its first 20,000 messages).
  constexpr std::size_t kWarmup = 20'000;
  const bool any_direct = side == "both" || side == "direct";
  const bool any_sharded = side == "both" || side == "sharded";
  const bool any_one_node = (side == "both" || side == "one_node") && !ids_on_n1.empty();
  if (any_direct) direct(std::min(messages, kWarmup));
  if (any_sharded) sharded(ids, std::min(messages, kWarmup));
  if (any_one_node) sharded(ids_on_n1, std::min(messages, kWarmup));
  // Alternate, best of `runs` each: both see the same machine conditions.
  double best_sharded = 0, best_direct = 0, best_one_node = 0;
  for (int r = 0; r < runs; ++r) {
    if (any_direct) best_direct = std::max(best_direct, framed("direct", [&] { return direct(messages); }));
    if (any_sharded) best_sharded = std::max(best_sharded, framed("sharded", [&] { return sharded(ids, messages); }));
    if (any_one_node) {
      best_one_node = std::max(best_one_node, framed("sharded, one node", [&] { return sharded(ids_on_n1, messages); }));
    }
  }
  const auto lost_before = c.client->stats().unavailable;
  if (best_sharded > 0 && best_direct > 0) {
    emit("sharded_tell_rate", best_sharded, "msg/s", "remoting actor-to-actor tell, same run", best_direct);
  } else if (best_sharded > 0) {
    emit("sharded_tell_rate", best_sharded, "msg/s");
  }
  // The same with only the entities on the direct side's node (n1): the cost of sharding itself,
  // without the spread over three node processes (which share this machine's cores).
  if (best_one_node > 0 && best_direct > 0) {
    emit("sharded_tell_rate_one_node", best_one_node, "msg/s", "remoting actor-to-actor tell, same run", best_direct);
  } else if (best_one_node > 0) {
    emit("sharded_tell_rate_one_node", best_one_node, "msg/s");
  }
  if (!with_asks) return 0;

  // Ask latency: entity vs echo actor, one outstanding, alternating.
  std::vector<double> ent_us, echo_us;
  const auto ping = Message::build<node::Echo>([](auto& b) { return node::CreateEcho(b, 1); });
  for (int i = 0; i < 2000; ++i) {
    auto t0 = Clock::now();
    auto r = c.client->ask(kType, ids[static_cast<std::size_t>(i) % ids.size()], ping, 5s).get();
    if (r) ent_us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
    t0 = Clock::now();
    auto e = echo.ask(ping, 5s).get();
    if (e) echo_us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
  }
  emit("sharded_ask_p50_us", percentile(ent_us, 0.5), "us", "remoting ask to an actor, same run", percentile(echo_us, 0.5));
  emit("sharded_ask_p99_us", percentile(ent_us, 0.99), "us", "remoting ask to an actor, same run", percentile(echo_us, 0.99));
  if (c.client->stats().unavailable != lost_before) std::fprintf(stderr, "sharding_bench: messages refused during the run\n");
  return 0;
}

int run_recovery(int entities, const std::string& preset) {
  Cluster c(preset);
  if (!c.wait_settled(3, 60s)) {
    std::fprintf(stderr, "sharding_bench: the cluster did not settle\n");
    return 1;
  }
  std::vector<std::string> victims;
  for (int k = 0; k < entities; ++k) {
    if (c.where(id_of(k)) == "n2") victims.push_back(id_of(k));
  }
  // Load: every entity asked in turn from a second thread while the node dies.
  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> asked{0}, unanswered{0};
  std::thread load([&] {
    for (int k = 0; !stop; k = (k + 1) % entities) {
      ++asked;
      if (!c.client->ask(kType, id_of(k), c.get(), 500ms).get()) ++unanswered;
    }
  });
  std::this_thread::sleep_for(1s);
  const auto killed = Clock::now();
  c.nodes[2]->stop(SIGKILL);
  // Each victim is asked until it answers from a survivor; all victims in parallel rounds.
  std::map<std::string, double> back;
  double downed_s = -1;
  while (back.size() < victims.size() && Clock::now() - killed < 120s) {
    std::vector<std::pair<std::string, std::future<Result<Message>>>> round;
    for (const auto& id : victims) {
      if (!back.count(id)) round.emplace_back(id, c.client->ask(kType, id, c.get(), 250ms));
    }
    for (auto& [id, f] : round) {
      auto r = f.get();
      if (r && r->is<node::EntityValue>() && r->as<node::EntityValue>()->node()->str() != "n2") {
        back[id] = std::chrono::duration<double>(Clock::now() - killed).count();
      }
    }
    if (downed_s < 0 && c.nodes[0]->count_event("downed", "n2") > 0) {
      downed_s = std::chrono::duration<double>(Clock::now() - killed).count();
    }
  }
  stop = true;
  load.join();
  if (back.size() < victims.size()) {
    std::fprintf(stderr, "sharding_bench: %zu of %zu entities never came back\n", victims.size() - back.size(), victims.size());
    return 1;
  }
  std::vector<double> t;
  for (const auto& [id, s] : back) t.push_back(s);
  emit("recovery_p50_s", percentile(t, 0.5), "s");
  emit("recovery_p99_s", percentile(t, 0.99), "s");
  emit("recovery_max_s", *std::max_element(t.begin(), t.end()), "s");
  if (downed_s >= 0) emit("recovery_downed_after_s", downed_s, "s");
  emit("recovery_entities", static_cast<double>(victims.size()), "entities");
  emit("recovery_unanswered_asks", static_cast<double>(unanswered.load()), "asks");
  emit("recovery_asks", static_cast<double>(asked.load()), "asks");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"sharding_bench: cluster sharding end to end and recovery, real processes"};
  std::string only, preset = "lan", side = "both";
  // As many tells per run as the remoting benchmark's remote_tell_64B (the baseline #8 names):
  // runs of 200,000 took ~0.1 s and their best of three still spread by a third.
  std::size_t messages = 2'000'000, payload = 64;
  int entities = 300;
  int runs = 3;
  app.add_option("--only", only, "e2e, e2e_tell (its tell rates only) or recovery (default: e2e and recovery)")
      ->check(CLI::IsMember({"e2e", "e2e_tell", "recovery"}));
  app.add_option("--runs", runs, "e2e: runs of each side (alternated); the best is reported")
      ->check(CLI::Range(1, 100))
      ->capture_default_str();
  app.add_option("--messages", messages, "messages per e2e tell run")->capture_default_str();
  app.add_option("--entities", entities, "entities")->capture_default_str();
  app.add_option("--payload", payload, "e2e: bytes carried by each told message (both sides)")
      ->check(CLI::Range(0, 1 << 20))
      ->capture_default_str();
  app.add_option("--side", side, "e2e: run only one side: sharded, direct, or one_node (the sharded tell to one node's entities only), for profiling")
      ->check(CLI::IsMember({"both", "sharded", "direct", "one_node"}))
      ->capture_default_str();
  app.add_option("--preset", preset, "membership preset of the nodes in the recovery workload")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  spdlog::set_level(spdlog::level::warn);
  int rc = 0;
  if (only.empty() || only == "e2e" || only == "e2e_tell") {
    rc |= run_e2e(messages, entities, side, payload, runs, only != "e2e_tell");
  }
  if (only.empty() || only == "recovery") rc |= run_recovery(entities, preset);
  return rc;
}
