// troupe-client-service: a service outside the cluster that embeds a ShardingClient, built
// against the installed package only (find_package(troupe) + troupe::troupe). It drives
// troupe-node's built-in test entity (troupe-node --entity TYPE; messages of node.fbs, installed
// as <troupe/node/node_generated.h>): on each of --ids counters it adds 1 and reads the counter
// back, --rate times per second, and checks that no counter ever goes backwards (a lost state).
//
// troupe-client-service --contact HOST:PORT [--contact ...] --key-file F --allow-list F [--insecure]
//                       --type kv --rate N --duration S --ids N
//                       [--shards 1024] [--timeout-ms 2000] [--bind HOST] [--advertise HOST] [--port P]
//
// A contact's host may resolve to several addresses: every one is a contact point. The members'
// CURVE keys are found among the allow-list's keys (each contact point answers to one of them).
// One line per second on stdout, counters since the start, p99 over the last second:
//   client t=<s> ok=<n> failed=<n> unavailable=<n> p99_ms=<x> wrong=<n>
// ok: a read answered; failed: a read timed out or was refused; unavailable: a ShardUnavailable
// reply (the shard is moving or its buffer is full); wrong: a read lower than the one before it,
// counted once per regression (a node crash loses its counters: each starts again from zero).
// SIGTERM or SIGINT: stop and exit 0. --duration S (0: until a signal): exit 0, or 1 when
// wrong > 0. Bad arguments: exit 2.

#include <arpa/inet.h>
#include <netdb.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <troupe/node/node_generated.h>
#include <troupe/serialization/sharding_generated.h>
#include <troupe/sharding/client.hpp>
#include <troupe/troupe.hpp>

#include "contact_points.hpp"

using namespace troupe;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

struct Args {
  std::vector<std::string> contacts;
  std::string key_file, allow_file, type = "kv", bind, advertise;
  bool insecure = false;
  double rate = 100;
  double duration = 0;
  std::size_t ids = 100;
  std::uint32_t shards = 1024;
  std::uint16_t port = 0;
  std::chrono::milliseconds timeout{2000};
};

int usage(const std::string& why) {
  std::fprintf(stderr,
               "troupe-client-service: %s\nusage: troupe-client-service --contact HOST:PORT... --key-file F --allow-list F "
               "[--insecure] --type TYPE --rate N --duration S --ids N [--shards N] [--timeout-ms MS] [--bind HOST] "
               "[--advertise HOST] [--port P]\n",
               why.c_str());
  return 2;
}

std::optional<Args> parse(int argc, char** argv, std::string& why) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i], value;
    if (auto eq = flag.find('='); eq != std::string::npos) {
      value = flag.substr(eq + 1);
      flag.erase(eq);
    } else if (flag != "--insecure") {
      if (i + 1 >= argc) return why = flag + " needs a value", std::nullopt;
      value = argv[++i];
    }
    try {
      if (flag == "--contact") a.contacts.push_back(value);
      else if (flag == "--key-file") a.key_file = value;
      else if (flag == "--allow-list") a.allow_file = value;
      else if (flag == "--insecure") a.insecure = true;
      else if (flag == "--type") a.type = value;
      else if (flag == "--rate") a.rate = std::stod(value);
      else if (flag == "--duration") a.duration = std::stod(value);
      else if (flag == "--ids") a.ids = std::stoul(value);
      else if (flag == "--shards") a.shards = static_cast<std::uint32_t>(std::stoul(value));
      else if (flag == "--timeout-ms") a.timeout = std::chrono::milliseconds(std::stol(value));
      else if (flag == "--bind") a.bind = value;
      else if (flag == "--advertise") a.advertise = value;
      else if (flag == "--port") a.port = static_cast<std::uint16_t>(std::stoul(value));
      else return why = "unknown flag " + flag, std::nullopt;
    } catch (const std::exception&) {
      return why = flag + " " + value + ": not a number", std::nullopt;
    }
  }
  if (a.contacts.empty()) return why = "--contact is required", std::nullopt;
  if (!a.insecure && (a.key_file.empty() || a.allow_file.empty())) return why = "--key-file and --allow-list are required (or --insecure)", std::nullopt;
  if (!(a.rate > 0) || a.duration < 0 || a.ids == 0 || a.shards == 0 || a.timeout.count() <= 0 || a.type.empty()) {
    return why = "--rate, --ids, --shards and --timeout-ms must be > 0, --duration >= 0, --type not empty", std::nullopt;
  }
  return a;
}

/// The local address this host uses to reach `endpoint` ("ip:port"): what the members must
/// connect back to (replies travel on a connection from the member to this service).
std::string local_address_towards(const std::string& endpoint) {
  auto ep = remoting::parse_endpoint(endpoint);
  if (!ep) return "127.0.0.1";
  std::string host = ep->host;
  const bool v6 = host.size() > 2 && host.front() == '[';
  if (v6) host = host.substr(1, host.size() - 2);
  const int fd = ::socket(v6 ? AF_INET6 : AF_INET, SOCK_DGRAM, 0);
  std::string out = "127.0.0.1";
  sockaddr_storage ss{};
  socklen_t len = 0;
  if (v6) {
    auto* s6 = reinterpret_cast<sockaddr_in6*>(&ss);
    s6->sin6_family = AF_INET6;
    s6->sin6_port = htons(ep->port);
    ::inet_pton(AF_INET6, host.c_str(), &s6->sin6_addr);
    len = sizeof(sockaddr_in6);
  } else {
    auto* s4 = reinterpret_cast<sockaddr_in*>(&ss);
    s4->sin_family = AF_INET;
    s4->sin_port = htons(ep->port);
    ::inet_pton(AF_INET, host.c_str(), &s4->sin_addr);
    len = sizeof(sockaddr_in);
  }
  if (fd >= 0 && ::connect(fd, reinterpret_cast<sockaddr*>(&ss), len) == 0) {
    sockaddr_storage me{};
    socklen_t ml = sizeof me;
    char buf[INET6_ADDRSTRLEN] = {};
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&me), &ml) == 0) {
      if (me.ss_family == AF_INET) {
        ::inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(&me)->sin_addr, buf, sizeof buf);
        out = buf;
      } else if (me.ss_family == AF_INET6) {
        ::inet_ntop(AF_INET6, &reinterpret_cast<sockaddr_in6*>(&me)->sin6_addr, buf, sizeof buf);
        out = std::string("[") + buf + "]";
      }
    }
  }
  if (fd >= 0) ::close(fd);
  return out;
}

/// Counters shared by the load threads and the reporter.
struct Stats {
  std::atomic<std::uint64_t> ok{0}, failed{0}, unavailable{0}, wrong{0};
  std::mutex mu;
  std::vector<double> window_ms;  // latencies of the reads answered since the last report
  void latency(double ms) {
    std::lock_guard lk(mu);
    window_ms.push_back(ms);
  }
  double take_p99() {
    std::vector<double> w;
    {
      std::lock_guard lk(mu);
      w.swap(window_ms);
    }
    if (w.empty()) return 0;
    const auto k = static_cast<std::size_t>(std::ceil(0.99 * static_cast<double>(w.size()))) - 1;
    std::nth_element(w.begin(), w.begin() + static_cast<std::ptrdiff_t>(k), w.end());
    return w[k];
  }
};

}  // namespace

int main(int argc, char** argv) {
  std::string why;
  auto parsed = parse(argc, argv, why);
  if (!parsed) return usage(why);
  const Args a = *parsed;

  // Stop signals are taken by the main thread only (sigtimedwait): block them before any thread.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  // Security and addresses.
  remoting::TransportConfig tc;
  tc.insecure = a.insecure;
  tc.port = a.port;
  std::vector<std::string> allow;
  if (!a.insecure) {
    auto kp = remoting::load_keypair(a.key_file);
    if (!kp) return usage("--key-file " + a.key_file + ": " + kp.error().message());
    tc.keys = *kp;
    std::ifstream in(a.allow_file);
    std::stringstream text;
    text << in.rdbuf();
    auto keys = remoting::parse_allow_list(text.str(), &why);
    if (!in || !keys) return usage("--allow-list " + a.allow_file + ": " + (in ? why : "cannot read the file"));
    allow = *keys;
    tc.allow_list = std::make_shared<remoting::AllowList>(allow);
  }
  std::vector<std::string> endpoints;
  auto resolve = [&] {
    for (const auto& c : a.contacts) {
      for (auto& e : contact::resolve_all(c)) {
        if (std::find(endpoints.begin(), endpoints.end(), e) == endpoints.end()) endpoints.push_back(std::move(e));
      }
    }
  };
  resolve();
  for (const auto& c : a.contacts) {
    if (!remoting::parse_endpoint(c)) return usage("--contact " + c + ": expected HOST:PORT");
  }
  // Members connect back to this service: by default bind where the first contact is reached from.
  const auto local = endpoints.empty() ? std::string("127.0.0.1") : local_address_towards(endpoints.front());
  const bool loopback = local.starts_with("127.") || local == "[::1]";
  tc.bind_host = !a.bind.empty() ? a.bind : loopback ? local : "0.0.0.0";
  tc.advertise_host = !a.advertise.empty() ? a.advertise : (tc.bind_host == "0.0.0.0" ? local : "");

  ActorSystemConfig sc;
  sc.node_id = "client-service";
  sc.workers = 2;
  ActorSystem system(std::move(sc));
  system.registry().add<node::EntityAdd>();
  system.registry().add<node::EntityGet>();
  system.registry().add<node::EntityValue>();
  auto started = remoting::Transport::start(system, tc);
  if (!started) {
    std::fprintf(stderr, "troupe-client-service: cannot start the transport: %s\n", started.error().message().c_str());
    return 1;
  }
  auto transport = std::move(started).value();

  Stats stats;
  std::atomic<bool> stopping{false};
  std::unique_ptr<sharding::ShardingClient> client;
  std::vector<std::thread> load;
  const auto t0 = Clock::now();

  // Setup (find the contacts' keys, wait for the shard table) and then the load, off the main
  // thread: the main thread reports every second and waits for the stop signal meanwhile.
  std::thread setup([&] {
    std::vector<std::string> found;
    while (!stopping) {
      if (endpoints.empty()) resolve();  // names of containers not started yet
      found = contact::find_contact_keys(*transport, endpoints, allow);
      if (!found.empty()) break;
      std::this_thread::sleep_for(500ms);
    }
    if (stopping) return;
    sharding::ShardingClientConfig cc;
    cc.contact_points = found;
    cc.sharding.resend_interval = 500ms;
    client = std::make_unique<sharding::ShardingClient>(system, *transport, cc);
    client->start_proxy(a.type, a.shards);
    // Contacts whose key was not found stay unusable as contacts (probing them later could race
    // with a key the client learns from the tables); members' keys come with the tables anyway.
    for (const auto end = Clock::now() + 30s; !stopping && Clock::now() < end;) {
      auto t = client->shards(a.type);
      if (!t.empty() && std::all_of(t.begin(), t.end(), [](const auto& s) { return !s.region.empty(); })) break;
      std::this_thread::sleep_for(20ms);
    }
    // The load: threads own disjoint ids (a counter is read by one thread, so "never backwards"
    // compares reads in the order they were made); slots are handed out at --rate.
    const std::size_t threads = std::min<std::size_t>(a.ids, 32);
    auto next_slot = std::make_shared<std::atomic<std::uint64_t>>(0);
    const auto load_t0 = Clock::now();
    for (std::size_t w = 0; w < threads; ++w) {
      load.emplace_back([&, w, threads, next_slot, load_t0] {
        std::vector<std::string> ids;
        for (std::size_t i = w; i < a.ids; i += threads) ids.push_back("c" + std::to_string(i));
        std::vector<std::uint64_t> last(ids.size(), 0);
        const auto add = Message::build<node::EntityAdd>([](auto& b) { return node::CreateEntityAdd(b, 1); });
        const auto get = Message::build<node::EntityGet>([](auto& b) { return node::CreateEntityGet(b); });
        for (std::size_t k = 0; !stopping; k = (k + 1) % ids.size()) {
          const auto slot = next_slot->fetch_add(1);
          const auto due = load_t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(static_cast<double>(slot) / a.rate));
          // A thread that fell behind (a read timed out) does not burst to catch up.
          if (due < Clock::now() - 1s) next_slot->store(static_cast<std::uint64_t>(std::chrono::duration<double>(Clock::now() - load_t0).count() * a.rate));
          while (!stopping && Clock::now() < due) std::this_thread::sleep_for(std::min<Clock::duration>(due - Clock::now(), 50ms));
          if (stopping) break;
          client->tell(a.type, ids[k], add);
          const auto sent = Clock::now();
          auto r = client->ask(a.type, ids[k], get, a.timeout).get();
          const double ms = std::chrono::duration<double, std::milli>(Clock::now() - sent).count();
          if (r && r->is<node::EntityValue>()) {
            const auto v = r->as<node::EntityValue>()->count();
            if (v < last[k]) {
              stats.wrong.fetch_add(1);
              std::fprintf(stderr, "troupe-client-service: %s went backwards: %llu after %llu\n", ids[k].c_str(),
                           static_cast<unsigned long long>(v), static_cast<unsigned long long>(last[k]));
            }
            last[k] = v;  // a regression counts once: later reads compare with the new value
            stats.ok.fetch_add(1);
            stats.latency(ms);
          } else if (r && r->is<sharding::ShardUnavailable>()) {
            stats.unavailable.fetch_add(1);
          } else {
            stats.failed.fetch_add(1);
          }
        }
      });
    }
  });

  auto report = [&] {
    const auto t = static_cast<long long>(std::llround(std::chrono::duration<double>(Clock::now() - t0).count()));
    std::printf("client t=%lld ok=%llu failed=%llu unavailable=%llu p99_ms=%.2f wrong=%llu\n", t,
                static_cast<unsigned long long>(stats.ok.load()), static_cast<unsigned long long>(stats.failed.load()),
                static_cast<unsigned long long>(stats.unavailable.load()), stats.take_p99(),
                static_cast<unsigned long long>(stats.wrong.load()));
    std::fflush(stdout);
  };
  bool signalled = false;
  const auto end = a.duration > 0 ? t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(a.duration))
                                  : Clock::time_point::max();
  for (auto next = t0 + 1s;;) {
    const auto left = std::max<Clock::duration>(std::min(next, end) - Clock::now(), Clock::duration::zero());
    const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(left).count();
    timespec ts{static_cast<time_t>(ns / 1'000'000'000), static_cast<long>(ns % 1'000'000'000)};
    if (::sigtimedwait(&stop_signals, nullptr, &ts) > 0) {
      signalled = true;
      break;
    }
    if (Clock::now() >= end) break;
    if (Clock::now() >= next) {
      report();
      next += 1s;
    }
  }
  stopping = true;
  setup.join();
  for (auto& t : load) t.join();
  report();
  client.reset();
  transport->stop();
  system.shutdown();
  return signalled || stats.wrong == 0 ? 0 : 1;
}
