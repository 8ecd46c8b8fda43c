// troupe-node: runs one Troupe node: remoting (CURVE key pair and allow-list from files), gossip
// membership (--keyring), cluster sharding with the built-in test entity (--entity) and the test
// actors, and the admin HTTP server (--admin-port, default 7948; --no-admin turns it off). Every
// setting is a flag, a TROUPE_<NAME> environment variable and a key of the --config TOML file, in
// that order of precedence.
//
// On start it prints one line to stdout, "troupe-node ready <address>[ gossip <host:port>][ admin
// <host:port>]", then one line per membership event ("troupe-node event <kind> <name> <uid> <status>
// [detail]"), and "troupe-node leaving" when a graceful stop begins. SIGTERM or SIGINT: hand
// every local shard off, leave the cluster gracefully and exit 0; a second SIGINT meanwhile stops
// at once (exit 130, nothing handed off). Downed by the cluster: exit 3. SIGHUP re-reads the
// allow-list file. A bad flag or file exits 2 with a message naming it. Logs go to stderr, as
// text or JSON lines (--log-format), every line with the node name.

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cstdlib>
#include <set>
#include <string_view>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <thread>

#include <CLI/CLI.hpp>

#include <boost/asio/ip/address.hpp>
#include <spdlog/spdlog.h>

#include <troupe/node/node.hpp>
#include <troupe/membership/keyring.hpp>
#include <troupe/membership/swim.hpp>
#include <troupe/remoting/security.hpp>

#include <unistd.h>

namespace {

/// Loopback only: the admin port may run without a token there (no other host can reach it).
/// An address is judged by its value (127.0.0.0/8, ::1), not its text: a host name that merely
/// starts with "127." may resolve anywhere.
bool loopback_host(std::string h) {
  if (h == "localhost") return true;
  if (h.size() > 2 && h.front() == '[' && h.back() == ']') h = h.substr(1, h.size() - 2);
  boost::system::error_code ec;
  const auto a = boost::asio::ip::make_address(h, ec);
  return !ec && a.is_loopback();
}

int fail(const std::string& what) {
  std::cerr << "troupe-node: " << what << "\n";
  return 2;
}

struct AllowListFile {
  std::vector<std::string> keys;
  std::string problem;
  explicit operator bool() const { return problem.empty(); }
  const std::string& error() const { return problem; }
};

AllowListFile read_allow_list(const std::string& file) {
  AllowListFile out;
  std::ifstream in(file);
  if (!in) {
    out.problem = "--allow-list " + file + ": cannot read the file";
    return out;
  }
  std::stringstream text;
  text << in.rdbuf();
  std::string detail;
  auto keys = troupe::remoting::parse_allow_list(text.str(), &detail);
  if (!keys) {
    out.problem = "--allow-list " + file + ": " + detail;
    return out;
  }
  out.keys = std::move(keys).value();
  return out;
}

}  // namespace

/// The command line as CLI11 parses it (reversed), with every option not given as a flag but set
/// as TROUPE_<NAME> in the environment put in front: flags > environment > config file (CLI11
/// reads the file only for options still unset) > defaults. A list option's variable holds
/// comma-separated values.
std::vector<std::string> with_environment(const CLI::App& app, int argc, char** argv) {
  std::set<std::string> given;
  for (int i = 1; i < argc; ++i) {
    std::string_view a = argv[i];
    if (a.starts_with("--")) given.emplace(a.substr(2, a.find('=') == std::string_view::npos ? a.npos : a.find('=') - 2));
  }
  std::vector<std::string> args;
  for (const auto* o : app.get_options()) {
    if (o->get_lnames().empty()) continue;
    const auto& name = o->get_lnames().front();
    std::string env = "TROUPE_";
    for (char c : name) env.push_back(c == '-' ? '_' : static_cast<char>(std::toupper(static_cast<unsigned char>(c))));
    const char* v = std::getenv(env.c_str());
    if (!v || !*v || given.count(name)) continue;
    if (o->get_expected_max() > 1) {
      std::stringstream list(v);
      for (std::string item; std::getline(list, item, ',');) {
        if (!item.empty()) args.push_back("--" + name + "=" + item);
      }
    } else {
      args.push_back("--" + name + "=" + v);
    }
  }
  for (int i = 1; i < argc; ++i) args.emplace_back(argv[i]);
  std::reverse(args.begin(), args.end());
  return args;
}

int main(int argc, char** argv) {
  using namespace troupe;
  CLI::App app{"troupe-node: one node of a Troupe cluster"};
  // A value given twice (environment, then flag) keeps the last.
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  app.allow_config_extras(false);  // an unknown key in the file is an error (a typo would go unnoticed)
  app.set_config("--config", "", "TOML file of settings: each key is a flag's long name (e.g. port = 7947, seed = [\"a:7946\"])");
  node::NodeOptions opt;
  std::string key_file, allow_file;
  std::vector<std::string> peer_keys;
  std::size_t max_queue = opt.transport.max_queue_per_peer;
  app.add_option("--name", opt.name, "node name shown in every log line (default: random id)");
  app.add_option("--workers", opt.workers, "actor worker threads (0: one per hardware thread)")->check(CLI::Range(0, 1024));
  app.add_option("--bind", opt.transport.bind_host, "interface for the remoting port")->capture_default_str();
  app.add_option("--port", opt.transport.port, "remoting port (0: any free port)")->capture_default_str();
  app.add_option("--advertise", opt.transport.advertise_host, "host other nodes use to reach this one (default: --bind)");
  app.add_option("--key-file", key_file, "this node's CURVE secret key file (troupe-keygen writes it; mode 0600)");
  app.add_option("--allow-list", allow_file, "file of the public keys allowed to connect, one per line");
  app.add_option("--peer-key", peer_keys, "host:port=PUBLICKEY of a node this one sends to first (repeatable)");
  app.add_option("--max-queue", max_queue, "messages queued per peer before drops")->check(CLI::Range(1, 100'000'000))
      ->capture_default_str();
  app.add_flag("--insecure", opt.transport.insecure, "no CURVE: no encryption or authentication (development only)");
  std::string log_format = "text", log_level = "info";
  app.add_option("--log-format", log_format, "log lines as text or json (one object per line)")
      ->check(CLI::IsMember({"text", "json"}))->capture_default_str();
  app.add_option("--log-level", log_level, "lowest level logged: trace, debug, info, warn, error or off")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "off"}))->capture_default_str();
  app.add_flag("--test-actors", opt.test_actors, "host /user/echo, /user/relay and /user/sink (tests, benchmarks)");
  // Membership (gossip): on when a keyring is given.
  std::string keyring_file, preset = "lan", cluster = "troupe", gossip_bind, gossip_advertise;
  std::uint16_t gossip_port = 7946;
  std::vector<std::string> seeds, roles;
  app.add_option("--keyring", keyring_file, "gossip keyring file (base64 AES-256 keys, primary first; mode 0600); "
                                             "enables membership");
  app.add_option("--preset", preset, "membership timings: local, lan or wan")->check(CLI::IsMember({"local", "lan", "wan"}))
      ->capture_default_str();
  app.add_option("--cluster", cluster, "cluster name (packets of another cluster are refused)")->capture_default_str();
  app.add_option("--gossip-bind", gossip_bind, "interface of the gossip port (default: --bind)");
  app.add_option("--gossip-port", gossip_port, "gossip UDP port (0: any free port)")->capture_default_str();
  app.add_option("--gossip-advertise", gossip_advertise, "host other nodes use for gossip (default: --advertise)");
  app.add_option("--seed", seeds, "host:port of a seed node (repeatable; a name resolves to all its addresses)");
  app.add_option("--role", roles, "a role of this member, e.g. worker (repeatable; cluster-aware routers pick "
                                  "members by role)");
  // Cluster sharding (needs membership): the built-in test entity for each --entity type.
  std::vector<std::string> entities, proxies;
  std::string activation_log;
  std::int64_t passivate_ms = 120'000;
  app.add_option("--entity", entities, "host entity type TYPE[:SHARDS] with the built-in test entity (repeatable)");
  app.add_option("--proxy", proxies, "route to entity type TYPE[:SHARDS] hosted elsewhere (repeatable)");
  app.add_option("--passivate-after", passivate_ms, "idle time (ms) before an entity is passivated; 0: never")
      ->check(CLI::Range(std::int64_t{0}, std::int64_t{86'400'000}))->capture_default_str();
  app.add_option("--activation-log", activation_log,
                 "append one line per entity start and stop to FILE (tests check that activations never overlap)");
  // Admin HTTP: on by default (loopback); writes need --admin-token, and so does any other bind.
  node::AdminOptions admin;
  bool no_admin = false;
  app.add_option("--admin-bind", admin.bind_host, "interface of the admin HTTP port (other than loopback: needs "
                                                  "--admin-token)")->capture_default_str();
  app.add_option("--admin-port", admin.port, "admin HTTP port (0: any free port)")->capture_default_str();
  app.add_option("--admin-token", admin.token, "bearer token for admin writes (leave, down); without it they are "
                                               "refused (prefer TROUPE_ADMIN_TOKEN: flags show in ps)");
  app.add_flag("--no-admin", no_admin, "no admin HTTP server");
  try {
    app.parse(with_environment(app, argc, argv));
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? 0 : 2;
  }
  opt.transport.max_queue_per_peer = max_queue;
  opt.log_format = *node::parse_log_format(log_format);  // checked by the option
  spdlog::set_level(spdlog::level::from_str(log_level));  // before any logger is made
  if (!no_admin) {
    if (admin.bind_host.size() > 2 && admin.bind_host.front() == '[' && admin.bind_host.back() == ']') {
      admin.bind_host = admin.bind_host.substr(1, admin.bind_host.size() - 2);  // "[::1]": the resolver wants ::1
    }
    if (admin.bind_host.empty()) return fail("--admin-bind must not be empty");
    if (!loopback_host(admin.bind_host) && admin.token.empty()) {
      return fail("--admin-bind " + admin.bind_host + " is not loopback: set --admin-token (or TROUPE_ADMIN_TOKEN) too");
    }
    opt.admin = admin;
  }

  if (!opt.transport.insecure) {
    if (key_file.empty()) return fail("--key-file is required (or --insecure for local development)");
    auto kp = remoting::load_keypair(key_file);
    if (!kp) return fail("--key-file " + key_file + ": " + kp.error().message());
    opt.transport.keys = *kp;
    if (allow_file.empty()) return fail("--allow-list is required (or --insecure for local development)");
    auto keys = read_allow_list(allow_file);
    if (!keys) return fail(keys.error());
    opt.transport.allow_list = std::make_shared<remoting::AllowList>(keys.keys);
  }
  std::shared_ptr<membership::Keyring> keyring;
  if (!keyring_file.empty()) {
    std::string detail;
    auto ring = membership::load_keyring(keyring_file, &detail);
    if (!ring) return fail("--keyring " + keyring_file + ": " + (detail.empty() ? ring.error().message() : detail));
    keyring = *ring;
    membership::MembershipServiceConfig mc;
    mc.membership = preset == "local" ? membership::MembershipConfig::local()
                    : preset == "wan" ? membership::MembershipConfig::wan()
                                      : membership::MembershipConfig::lan();
    mc.membership.cluster_name = cluster;
    mc.bind_host = gossip_bind.empty() ? opt.transport.bind_host : gossip_bind;
    mc.port = gossip_port;
    mc.advertise_host = !gossip_advertise.empty() ? gossip_advertise : opt.transport.advertise_host;
    mc.seeds = seeds;
    mc.roles = roles;
    mc.keyring = keyring;
    mc.keyring_file = keyring_file;  // keyring changes made through the cluster are kept
    opt.membership = std::move(mc);
  } else if (!seeds.empty()) {
    return fail("--seed needs --keyring (gossip is always encrypted)");
  } else if (!roles.empty()) {
    return fail("--role needs --keyring (roles are membership's)");
  }
  if (auto bad = membership::validate_roles(roles); !bad.empty()) {
    return fail("--role: " + bad.substr(bad.find(": ") + 2));
  }
  // A member that hosts or proxies an entity type runs sharding: its role lets the coordinator
  // be elected among such members only (a member without sharding is never made coordinator).
  if ((!entities.empty() || !proxies.empty()) && opt.membership &&
      std::find(opt.membership->roles.begin(), opt.membership->roles.end(), sharding::kShardingRole) ==
          opt.membership->roles.end()) {
    opt.membership->roles.push_back(sharding::kShardingRole);
  }
  for (const auto& pk : peer_keys) {
    const auto eq = pk.find('=');
    if (eq == std::string::npos || !remoting::parse_endpoint(pk.substr(0, eq)) ||
        !remoting::valid_z85_key(pk.substr(eq + 1))) {
      return fail("--peer-key " + pk + ": expected host:port=<40-character Z85 public key>");
    }
    opt.peer_keys.emplace_back(pk.substr(0, eq), pk.substr(eq + 1));
  }

  std::FILE* activation_file = nullptr;
  if (!entities.empty() || !proxies.empty()) {
    if (!opt.membership) return fail("--entity and --proxy need membership (--keyring)");
    node::NodeOptions::ShardingOptions so;
    auto parse_type = [](const std::string& flag, const std::string& v, std::string& type, std::uint32_t& shards) {
      const auto colon = v.find(':');
      type = v.substr(0, colon);
      shards = 1024;
      if (colon != std::string::npos) {
        try {
          std::size_t used = 0;
          const auto n = std::stoul(v.substr(colon + 1), &used);
          if (used != v.size() - colon - 1 || n == 0 || n > 65'536) throw std::out_of_range("shards");
          shards = static_cast<std::uint32_t>(n);
        } catch (const std::exception&) {
          return flag + " " + v + ": the number of shards must be 1 to 65536";
        }
      }
      if (type.empty() || type.size() > 128) return flag + " " + v + ": the type must be 1 to 128 characters";
      return std::string();
    };
    for (const auto& e : entities) {
      sharding::EntitySettings s;
      if (auto why = parse_type("--entity", e, s.type, s.num_shards); !why.empty()) return fail(why);
      s.passivate_after = std::chrono::milliseconds(passivate_ms);
      so.test_entities.push_back(s);
    }
    for (const auto& p : proxies) {
      std::string type;
      std::uint32_t shards = 0;
      if (auto why = parse_type("--proxy", p, type, shards); !why.empty()) return fail(why);
      so.proxies.emplace_back(type, shards);
    }
    if (!activation_log.empty()) {
      activation_file = std::fopen(activation_log.c_str(), "a");
      if (!activation_file) return fail("--activation-log " + activation_log + ": cannot open the file");
      so.config.on_activation = [activation_file, name = opt.name](const sharding::ActivationEvent& e) {
        // One line per event, written whole: "<start|stop> <node> <type> <id> <incarnation> <monotonic ns>".
        const auto t = std::chrono::steady_clock::now().time_since_epoch().count();
        std::fprintf(activation_file, "%s %s %s %s %llu %lld\n", e.started ? "start" : "stop", name.c_str(), e.type.c_str(),
                     e.id.c_str(), static_cast<unsigned long long>(e.incarnation), static_cast<long long>(t));
        std::fflush(activation_file);
      };
    }
    opt.sharding = std::move(so);
  } else if (!activation_log.empty()) {
    return fail("--activation-log needs --entity");
  }

  // Block the stop signals before any thread starts, then wait for one on this thread.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGHUP);
  sigaddset(&stop_signals, SIGUSR1);  // raised by this process: it was downed or removed
  sigaddset(&stop_signals, SIGUSR2);  // raised by this process: the graceful leave is over
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  // Membership events, one per line on stdout (for operators' scripts and the tests).
  std::atomic<int> exit_code{0};
  opt.on_event = [&exit_code](const membership::MembershipEvent& e) {
    std::printf("troupe-node event %s %s %016llx %s%s%s\n", membership::to_string(e.kind), e.member.name.c_str(),
                static_cast<unsigned long long>(e.member.uid), membership::to_string(e.member.status),
                e.detail.empty() ? "" : " ", e.detail.c_str());
    std::fflush(stdout);
    if (e.kind == membership::EventKind::self_downed) {
      exit_code = 3;
      ::kill(::getpid(), SIGUSR1);
    } else if (e.kind == membership::EventKind::self_removed) {
      ::kill(::getpid(), SIGUSR1);
    }
  };

  auto allow = opt.transport.allow_list;
  auto n = node::Node::start(std::move(opt));
  if (!n) return fail("cannot start: " + n.error().message());
  auto& log = (*n)->system().log();
  {
    std::string line = "troupe-node ready " + (*n)->transport().address().to_string();
    if (auto* m = (*n)->membership()) line += " gossip " + m->endpoint().to_string();
    if ((*n)->admin()) {
      const bool v6 = admin.bind_host.find(':') != std::string::npos && !admin.bind_host.starts_with("[");
      line += " admin " + (v6 ? "[" + admin.bind_host + "]" : admin.bind_host) + ":" + std::to_string((*n)->admin_port());
    }
    std::printf("%s\n", line.c_str());
    std::fflush(stdout);
  }
  // Waits for signals until the node stops. A graceful leave runs on its own thread so that a
  // second SIGINT can still cut it short.
  std::thread leaving;
  for (;;) {
    int sig = 0;
    sigwait(&stop_signals, &sig);
    if (leaving.joinable()) {
      if (sig == SIGUSR2) break;  // the leave is over
      if (sig == SIGINT) {
        log.warn("second interrupt: stopping at once, without handing shards off");
        log.flush();
        std::fflush(stdout);
        std::_Exit(130);
      }
      continue;  // SIGTERM, SIGHUP, or the removal the leave itself caused
    }
    if (sig == SIGUSR1) {
      log.warn(exit_code == 3 ? "this node was downed by the cluster: stopping" : "left the cluster: stopping");
      (*n)->stop();
      break;
    }
    if (sig == SIGUSR2) continue;
    if (sig != SIGHUP) {
      if (!(*n)->membership()) {
        log.info("signal {}: stopping", sig);
        (*n)->stop();
        break;
      }
      log.info("signal {}: handing shards off, leaving the cluster and stopping{}", sig,
               sig == SIGINT ? " (interrupt again to stop at once)" : "");
      std::printf("troupe-node leaving\n");  // for scripts: the graceful stop has begun
      std::fflush(stdout);
      leaving = std::thread([&node = *n] {
        node->leave_and_stop(std::chrono::seconds(15));
        ::kill(::getpid(), SIGUSR2);
      });
      continue;
    }
    // SIGHUP: re-read the allow-list; a bad file keeps the current list.
    if (!allow) continue;
    auto keys = read_allow_list(allow_file);
    if (!keys) {
      log.error("allow-list not reloaded, keeping {} keys: {}", allow->size(), keys.error());
      continue;
    }
    allow->replace(keys.keys);
    log.info("allow-list reloaded: {} keys", allow->size());
  }
  if (leaving.joinable()) leaving.join();
  if (activation_file) std::fclose(activation_file);  // the node has stopped: no more entity events
  return exit_code;
}
