#pragma once
// Test support for multi-process tests: a temporary directory, and a troupe-node child process
// whose stdout lines ("troupe-node ready ...", "troupe-node event ...") a reader thread collects
// for the test to wait on. TROUPE_NODE_BIN must name the troupe-node binary.

#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <functional>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <troupe/remoting/address.hpp>

namespace troupe::testkit {

struct TempDir {
  TempDir() {
    char tmpl[] = "/tmp/troupe-test-XXXXXX";
    path = ::mkdtemp(tmpl);
  }
  ~TempDir() { std::filesystem::remove_all(path); }
  std::filesystem::path path;
};

/// Runs troupe-node with `args` to its exit (at most 20 s: a start that should fail must not
/// hang a test): its exit code (-1 when killed) and everything it printed.
inline std::pair<int, std::string> run_node(const std::vector<std::string>& args) {
  std::string cmd = std::string("timeout 20 ") + TROUPE_NODE_BIN;
  for (const auto& a : args) cmd += " '" + a + "'";
  cmd += " 2>&1";
  std::string out;
  FILE* f = ::popen(cmd.c_str(), "r");
  char buf[512];
  while (f && std::fgets(buf, sizeof buf, f)) out += buf;
  const int status = f ? ::pclose(f) : -1;
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

class NodeProcess {
 public:
  /// Starts troupe-node with `args` and waits (up to 20 s) for its ready line. Unless `args` or
  /// the environment choose otherwise, the admin port is any free one (several nodes run at once).
  explicit NodeProcess(std::vector<std::string> args) {
    const bool admin_chosen = std::any_of(args.begin(), args.end(), [](const std::string& a) {
      return a.starts_with("--admin-port") || a.starts_with("--no-admin");
    }) || ::getenv("TROUPE_ADMIN_PORT") || ::getenv("TROUPE_NO_ADMIN");
    if (!admin_chosen) args.emplace_back("--admin-port=0");
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) throw std::runtime_error("pipe");
    pid_ = ::fork();
    if (pid_ == 0) {
      ::dup2(fds[1], 1);
      std::vector<char*> argv;
      static std::string bin = TROUPE_NODE_BIN;
      argv.push_back(bin.data());
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv(bin.c_str(), argv.data());
      ::_exit(127);
    }
    ::close(fds[1]);
    out_ = fds[0];
    reader_ = std::thread([this] { read_lines(); });
    constexpr std::string_view kReady = "troupe-node ready ";
    if (!wait_line([&](const std::string& l) { return l.starts_with(kReady); }, std::chrono::seconds(20))) {
      throw std::runtime_error("troupe-node did not get ready");
    }
    std::lock_guard lk(mu_);
    for (const auto& l : lines_) {
      if (!l.starts_with(kReady)) continue;
      // "<address>[ gossip <host:port>][ admin <host:port>]"
      auto rest = l.substr(kReady.size());
      if (auto a = rest.find(" admin "); a != std::string::npos) {
        admin = rest.substr(a + 7);
        rest.erase(a);
      }
      auto g = rest.find(" gossip ");
      address_str = rest.substr(0, g);
      if (g != std::string::npos) gossip = rest.substr(g + 8);
    }
    address = remoting::parse_node_address(address_str).value();
  }
  ~NodeProcess() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    reader_.join();
    ::close(out_);
  }
  NodeProcess(const NodeProcess&) = delete;
  NodeProcess& operator=(const NodeProcess&) = delete;

  void signal(int sig) const { ::kill(pid_, sig); }
  pid_t pid() const noexcept { return pid_; }
  /// Sends `sig` (none: 0) and reaps the process; returns its wait status.
  int stop(int sig = SIGTERM) {
    if (sig) ::kill(pid_, sig);
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
    return status;
  }
  /// Waits for a line (seen before or arriving later) that satisfies `pred`.
  bool wait_line(const std::function<bool(const std::string&)>& pred, std::chrono::milliseconds limit) {
    std::unique_lock lk(mu_);
    return cv_.wait_for(lk, limit, [&] { return std::any_of(lines_.begin(), lines_.end(), pred); });
  }
  /// Waits for the event line "troupe-node event <kind> <name> ...".
  bool saw_event(const std::string& kind, const std::string& name, std::chrono::milliseconds limit) {
    return wait_count(kind, name, 1, limit);
  }
  /// Waits until `n` lines of event `kind` about `name` were printed.
  bool wait_count(const std::string& kind, const std::string& name, std::size_t n, std::chrono::milliseconds limit) {
    std::unique_lock lk(mu_);
    return cv_.wait_for(lk, limit, [&] { return count_locked(kind, name) >= n; });
  }
  std::size_t count_event(const std::string& kind, const std::string& name) {
    std::lock_guard lk(mu_);
    return count_locked(kind, name);
  }

  std::string address_str;  ///< "troupe://<node>@<host>:<port>"
  remoting::NodeAddress address;
  std::string gossip;       ///< "host:port" when membership is on
  std::string admin;        ///< "host:port" of the admin HTTP server ("" with --no-admin)
  /// The admin port (0: none).
  std::uint16_t admin_port() const {
    const auto colon = admin.rfind(':');
    return colon == std::string::npos ? 0 : static_cast<std::uint16_t>(std::stoi(admin.substr(colon + 1)));
  }

 private:
  std::size_t count_locked(const std::string& kind, const std::string& name) const {
    const auto prefix = "troupe-node event " + kind + " " + name + " ";
    return static_cast<std::size_t>(
        std::count_if(lines_.begin(), lines_.end(), [&](const std::string& l) { return l.starts_with(prefix); }));
  }
  void read_lines() {
    std::string buf;
    char chunk[4096];
    for (;;) {
      auto k = ::read(out_, chunk, sizeof chunk);
      if (k <= 0) break;
      buf.append(chunk, static_cast<std::size_t>(k));
      std::size_t nl;
      while ((nl = buf.find('\n')) != std::string::npos) {
        {
          std::lock_guard lk(mu_);
          lines_.push_back(buf.substr(0, nl));
        }
        cv_.notify_all();
        buf.erase(0, nl + 1);
      }
    }
    cv_.notify_all();
  }

  pid_t pid_ = -1;
  int out_ = -1;
  std::thread reader_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::string> lines_;
};

}  // namespace troupe::testkit
