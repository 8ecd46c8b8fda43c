// troupe-node: runs one Troupe node. This is the remoting-stage daemon: it binds the remoting
// port with its CURVE key pair and allow-list read from files and can host the test actors;
// configuration files, environment variables, membership and the admin HTTP server come later.
//
// On start it prints one line to stdout, "troupe-node ready <address>", then runs until SIGTERM
// or SIGINT (exit 0). SIGHUP re-reads the allow-list file. A bad flag or file exits 2 with a
// message naming it.

#include <csignal>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>

#include <CLI/CLI.hpp>

#include <troupe/node/node.hpp>
#include <troupe/remoting/security.hpp>

namespace {

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

int main(int argc, char** argv) {
  using namespace troupe;
  CLI::App app{"troupe-node: one node of a Troupe cluster"};
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
  app.add_flag("--test-actors", opt.test_actors, "host /user/echo, /user/relay and /user/sink (tests, benchmarks)");
  CLI11_PARSE(app, argc, argv);
  opt.transport.max_queue_per_peer = max_queue;

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
  for (const auto& pk : peer_keys) {
    const auto eq = pk.find('=');
    if (eq == std::string::npos || !remoting::parse_endpoint(pk.substr(0, eq)) ||
        !remoting::valid_z85_key(pk.substr(eq + 1))) {
      return fail("--peer-key " + pk + ": expected host:port=<40-character Z85 public key>");
    }
    opt.peer_keys.emplace_back(pk.substr(0, eq), pk.substr(eq + 1));
  }

  // Block the stop signals before any thread starts, then wait for one on this thread.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  auto allow = opt.transport.allow_list;
  auto n = node::Node::start(std::move(opt));
  if (!n) return fail("cannot start: " + n.error().message());
  auto& log = (*n)->system().log();
  std::cout << "troupe-node ready " << (*n)->transport().address().to_string() << std::endl;
  for (;;) {
    int sig = 0;
    sigwait(&stop_signals, &sig);
    if (sig != SIGHUP) {
      log.info("signal {}: stopping", sig);
      break;
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
  (*n)->stop();
  return 0;
}
