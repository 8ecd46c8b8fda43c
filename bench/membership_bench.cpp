// membership_bench: failure detection and false positives between real processes on loopback,
// Troupe (troupe-node, gossip on sealed UDP) or its peer HashiCorp Serf (serf agent, memberlist),
// one system per invocation so that a driver (bench/run.sh) can alternate them.
//
//   detect_<n>   n processes form a cluster (Troupe: preset lan, CURVE keys and allow-list,
//                a gossip keyring; Serf: -profile lan, -encrypt with the same key), settle, then
//                one member (index n/2, neither the seed nor the leader) gets SIGKILL. Measured
//                from the kill until EVERY survivor has printed that it concluded the member is
//                unreachable (Troupe: "troupe-node event unreachable <name>"; Serf: "serf:
//                EventMemberFailed: <name>") and, for Troupe, until every survivor printed
//                "troupe-node event downed <name>" (after stable_after). --runs fresh clusters,
//                median reported. Figures: membership_detect_<n>_s, membership_down_<n>_s (Serf
//                has no separate downing: its figure is its failed time again).
//   false_downs  5 processes; one of them is stopped (SIGSTOP) for --pause-for seconds every
//                --pause-every seconds, for --false-seconds in all (then a quiet tail of 5 s).
//                Counted over every process: members downed (Troupe "event downed" and
//                "event self_downed" lines; Serf: EventMemberFailed lines) and, for the record,
//                members declared unreachable (Troupe "event unreachable"; Serf: failed again).
//                Figures: membership_false_downs, membership_false_unreachable.
//
// Usage: membership_bench --system troupe|serf --only detect_5|detect_9|false_downs
//                         [--runs 3] [--false-seconds 60] [--pause-every 10] [--pause-for 2]
//                         [--serf PATH] [--troupe-node PATH] [--keep]
// Prints one JSON line per figure on stdout ({"name","value","unit"} plus "runs" for detection);
// the details of every run (who concluded what when, and why) on stderr.

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>

#include <troupe/membership/keyring.hpp>
#include <troupe/remoting/security.hpp>

namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

struct Options {
  std::string system;
  std::string only;
  int runs = 3;
  double false_seconds = 60;
  double pause_every = 10;
  double pause_for = 2;
  std::string serf = "serf";
  std::string troupe_node = TROUPE_NODE_BIN;
  bool keep = false;
};

double secs(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

struct Line {
  Clock::time_point at;
  std::string text;
};

/// A child process whose stdout (and stderr, unless `err_file` is given) is read line by line by
/// a thread that stamps every line with the time it arrived.
class Proc {
 public:
  Proc(const std::vector<std::string>& argv, const fs::path& err_file = {}) {
    // Everything the child needs is prepared here: after fork() it only makes system calls.
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    const std::string err = err_file.string();
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) throw std::runtime_error("pipe");
    const pid_t parent = ::getpid();
    pid_ = ::fork();
    if (pid_ < 0) throw std::runtime_error("fork");
    if (pid_ == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive the harness
      if (::getppid() != parent) ::_exit(127);
      ::dup2(fds[1], 1);
      if (err.empty()) {
        ::dup2(fds[1], 2);
      } else {
        const int e = ::open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (e >= 0) ::dup2(e, 2);
      }
      ::execvp(args[0], args.data());
      ::_exit(127);
    }
    ::close(fds[1]);
    out_ = fds[0];
    reader_ = std::thread([this] { read_lines(); });
  }
  ~Proc() {
    kill_now();
    reader_.join();
    ::close(out_);
  }
  Proc(const Proc&) = delete;
  Proc& operator=(const Proc&) = delete;

  void signal(int sig) const {
    if (pid_ > 0) ::kill(pid_, sig);
  }
  void kill_now() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
      pid_ = -1;
    }
  }
  /// The arrival time of the first line at or after `since` that satisfies `pred`, waiting up to
  /// `limit` for it.
  std::optional<Line> wait_line(const std::function<bool(const std::string&)>& pred, Clock::duration limit,
                                Clock::time_point since = {}) {
    std::unique_lock lk(mu_);
    std::optional<Line> found;
    cv_.wait_for(lk, limit, [&] {
      for (const auto& l : lines_) {
        if (l.at >= since && pred(l.text)) {
          found = l;
          return true;
        }
      }
      return false;
    });
    return found;
  }
  std::size_t count(const std::function<bool(const std::string&)>& pred, Clock::time_point since = {}) {
    std::lock_guard lk(mu_);
    return static_cast<std::size_t>(
        std::count_if(lines_.begin(), lines_.end(), [&](const Line& l) { return l.at >= since && pred(l.text); }));
  }
  std::vector<Line> lines(const std::function<bool(const std::string&)>& pred, Clock::time_point since = {}) {
    std::lock_guard lk(mu_);
    std::vector<Line> out;
    for (const auto& l : lines_) {
      if (l.at >= since && pred(l.text)) out.push_back(l);
    }
    return out;
  }

 private:
  void read_lines() {
    std::string buf;
    char chunk[4096];
    for (;;) {
      const auto k = ::read(out_, chunk, sizeof chunk);
      if (k <= 0) break;
      const auto at = Clock::now();
      buf.append(chunk, static_cast<std::size_t>(k));
      std::size_t nl;
      while ((nl = buf.find('\n')) != std::string::npos) {
        {
          std::lock_guard lk(mu_);
          lines_.push_back(Line{at, buf.substr(0, nl)});
        }
        cv_.notify_all();
        buf.erase(0, nl + 1);
      }
    }
  }
  pid_t pid_ = -1;
  int out_ = -1;
  std::thread reader_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Line> lines_;
};

auto starts(std::string prefix) {
  return [p = std::move(prefix)](const std::string& l) { return l.starts_with(p); };
}
auto contains(std::string part) {
  return [p = std::move(part)](const std::string& l) { return l.find(p) != std::string::npos; };
}

struct TempDir {
  TempDir() {
    char tmpl[] = "/tmp/troupe-mbench-XXXXXX";
    if (!::mkdtemp(tmpl)) throw std::runtime_error("mkdtemp");
    path = tmpl;
  }
  ~TempDir() {
    if (keep) {
      std::fprintf(stderr, "kept %s\n", path.c_str());
    } else {
      std::error_code ec;
      fs::remove_all(path, ec);
    }
  }
  fs::path path;
  bool keep = false;
};

/// A free port for both TCP and UDP on 127.0.0.1 (Serf binds both); the socket stays open in
/// `hold` until the caller drops it, so that consecutive calls give distinct ports.
int free_port(std::vector<int>& hold) {
  for (int attempt = 0; attempt < 50; ++attempt) {
    const int t = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = 0;
    socklen_t len = sizeof a;
    if (::bind(t, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
        ::getsockname(t, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
      ::close(t);
      continue;
    }
    const int u = ::socket(AF_INET, SOCK_DGRAM, 0);
    if (::bind(u, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
      ::close(t);
      ::close(u);
      continue;
    }
    hold.push_back(t);
    hold.push_back(u);
    return ntohs(a.sin_port);
  }
  throw std::runtime_error("no free port");
}

/// One cluster of one system: start, wait until formed, then the workloads poke at it.
class Cluster {
 public:
  virtual ~Cluster() = default;
  virtual std::string name(int i) const = 0;
  /// The line prefix a survivor prints when it concluded that member `i` is unreachable/failed.
  virtual std::function<bool(const std::string&)> unreachable_line(int i) const = 0;
  /// ... and when it downed it (Serf: none, the same as failed).
  virtual std::function<bool(const std::string&)> downed_line(int i) const = 0;
  /// Any member downed / declared unreachable (false-positive counting).
  virtual std::function<bool(const std::string&)> any_downed() const = 0;
  virtual std::function<bool(const std::string&)> any_unreachable() const = 0;
  /// Why a survivor concluded so, from its line (and its other lines).
  virtual std::string why(Proc& p, const Line& l, int victim, Clock::time_point killed) const = 0;
  std::vector<std::unique_ptr<Proc>> procs;
};

class TroupeCluster final : public Cluster {
 public:
  TroupeCluster(const Options& o, int n, TempDir& dir) {
    std::ofstream allow(dir.path / "allow");
    for (int i = 0; i < n; ++i) {
      auto kp = troupe::remoting::generate_keypair();
      if (!kp) throw std::runtime_error("generate_keypair");
      if (troupe::remoting::save_keypair(*kp, dir.path, name(i))) throw std::runtime_error("save_keypair");
      allow << kp->public_key << "\n";
    }
    allow.close();
    auto key = troupe::membership::generate_key();
    if (!key) throw std::runtime_error("generate_key");
    troupe::membership::Keyring ring(*key);
    if (troupe::membership::save_keyring(ring, dir.path / "keyring")) throw std::runtime_error("save_keyring");
    std::string seed;
    for (int i = 0; i < n; ++i) {
      std::vector<std::string> a{o.troupe_node, "--name", name(i), "--port", "0", "--workers", "1",
                                 "--key-file", (dir.path / (name(i) + ".key")).string(),
                                 "--allow-list", (dir.path / "allow").string(),
                                 "--keyring", (dir.path / "keyring").string(),
                                 "--preset", "lan", "--gossip-port", "0", "--admin-port", "0"};
      if (i > 0) {
        a.push_back("--seed");
        a.push_back(seed);
      }
      procs.push_back(std::make_unique<Proc>(a, dir.path / (name(i) + ".log")));
      auto ready = procs.back()->wait_line(starts("troupe-node ready "), 20s);
      if (!ready) throw std::runtime_error(name(i) + " did not get ready (see its log)");
      if (i == 0) {
        const auto g = ready->text.find(" gossip ");
        if (g == std::string::npos) throw std::runtime_error("no gossip endpoint on the ready line");
        seed = ready->text.substr(g + 8);
        seed = seed.substr(0, seed.find(' '));  // " admin host:port" may follow
      }
    }
    for (int i = 0; i < n; ++i) {
      for (int j = 0; j < n; ++j) {
        if (!procs[i]->wait_line(starts("troupe-node event up " + name(j) + " "), 60s)) {
          throw std::runtime_error(name(i) + " never saw " + name(j) + " up");
        }
      }
    }
  }
  std::string name(int i) const override { return "n" + std::to_string(i); }
  std::function<bool(const std::string&)> unreachable_line(int i) const override {
    return starts("troupe-node event unreachable " + name(i) + " ");
  }
  std::function<bool(const std::string&)> downed_line(int i) const override {
    return starts("troupe-node event downed " + name(i) + " ");
  }
  std::function<bool(const std::string&)> any_downed() const override {
    return [](const std::string& l) {
      return l.starts_with("troupe-node event downed ") || l.starts_with("troupe-node event self_downed ");
    };
  }
  std::function<bool(const std::string&)> any_unreachable() const override {
    return starts("troupe-node event unreachable ");
  }
  std::string why(Proc&, const Line& l, int, Clock::time_point killed) const override {
    // "troupe-node event unreachable <name> <uid> <status> <detail>"
    std::size_t pos = 0;
    for (int f = 0; f < 6 && pos != std::string::npos; ++f) pos = l.text.find(' ', pos + 1);
    std::string out = pos == std::string::npos ? "" : l.text.substr(pos + 1);
    // Its own suspicion began "suspicion timed out after <ms> ms" before the line.
    static constexpr std::string_view kAfter = "suspicion timed out after ";
    if (const auto k = out.find(kAfter); k != std::string::npos) {
      const double ms = std::atof(out.c_str() + k + kAfter.size());
      char buf[64];
      std::snprintf(buf, sizeof buf, "; suspected at %.3f s", secs(l.at - killed) - ms / 1000);
      out += buf;
    }
    return out;
  }
};

class SerfCluster final : public Cluster {
 public:
  SerfCluster(const Options& o, int n, TempDir& dir) {
    // The same kind of key as Troupe's keyring: 32 random bytes, base64 (AES-256-GCM in both).
    auto key = troupe::membership::generate_key();
    if (!key) throw std::runtime_error("generate_key");
    troupe::membership::Keyring ring(*key);
    if (troupe::membership::save_keyring(ring, dir.path / "keyring")) throw std::runtime_error("save_keyring");
    std::ifstream in(dir.path / "keyring");
    std::string b64;
    while (std::getline(in, b64) && (b64.empty() || b64.front() == '#')) {
    }
    std::vector<int> hold;
    std::vector<int> bind, rpc;
    for (int i = 0; i < n; ++i) {
      bind.push_back(free_port(hold));
      rpc.push_back(free_port(hold));
    }
    for (int fd : hold) ::close(fd);
    for (int i = 0; i < n; ++i) {
      std::vector<std::string> a{o.serf, "agent", "-node=" + name(i), "-bind=127.0.0.1:" + std::to_string(bind[i]),
                                 "-rpc-addr=127.0.0.1:" + std::to_string(rpc[i]),
                                 "-encrypt=" + b64, "-profile=lan", "-log-level=info"};
      if (i > 0) a.push_back("-join=127.0.0.1:" + std::to_string(bind[0]));
      procs.push_back(std::make_unique<Proc>(a));
      if (!procs.back()->wait_line(contains("Serf agent running!"), 20s)) {
        for (const auto& l : procs.back()->lines([](const std::string&) { return true; })) {
          std::fprintf(stderr, "  %s: %s\n", name(i).c_str(), l.text.c_str());
        }
        throw std::runtime_error(name(i) + " (serf agent) did not start");
      }
    }
    for (int i = 0; i < n; ++i) {
      for (int j = 0; j < n; ++j) {
        if (!procs[i]->wait_line(contains("serf: EventMemberJoin: " + name(j) + " "), 60s)) {
          throw std::runtime_error(name(i) + " never saw " + name(j) + " join");
        }
      }
    }
  }
  std::string name(int i) const override { return "s" + std::to_string(i); }
  std::function<bool(const std::string&)> unreachable_line(int i) const override {
    return contains("serf: EventMemberFailed: " + name(i) + " ");
  }
  std::function<bool(const std::string&)> downed_line(int i) const override { return unreachable_line(i); }
  std::function<bool(const std::string&)> any_downed() const override { return contains("serf: EventMemberFailed: "); }
  std::function<bool(const std::string&)> any_unreachable() const override { return any_downed(); }
  std::string why(Proc& p, const Line& l, int victim, Clock::time_point killed) const override {
    // memberlist logs its own conclusion right before Serf's event; otherwise it learned it.
    auto marks = p.lines(contains("memberlist: Marking " + name(victim) + " as failed"), l.at - 2s);
    std::string out = "learned from gossip";
    if (!marks.empty()) {
      const auto& t = marks.back().text;
      const auto k = t.find("suspect");
      out = k == std::string::npos ? t : t.substr(k);
    }
    auto sus = p.lines(contains("memberlist: Suspect " + name(victim) + " has failed"), killed);
    if (!sus.empty()) {
      char buf[96];
      std::snprintf(buf, sizeof buf, "; its own first probe failure at %.3f s", secs(sus.front().at - killed));
      out += buf;
    }
    return out;
  }
};

std::unique_ptr<Cluster> make_cluster(const Options& o, int n, TempDir& dir) {
  if (o.system == "troupe") return std::make_unique<TroupeCluster>(o, n, dir);
  return std::make_unique<SerfCluster>(o, n, dir);
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

std::string runs_json(const std::vector<double>& v) {
  std::string s = "[";
  for (std::size_t i = 0; i < v.size(); ++i) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%s%.3f", i ? "," : "", v[i]);
    s += buf;
  }
  return s + "]";
}

void emit(const std::string& name, double value, const char* unit, const std::vector<double>& runs = {}) {
  if (runs.empty()) {
    std::printf("{\"name\":\"%s\",\"value\":%.3f,\"unit\":\"%s\"}\n", name.c_str(), value, unit);
  } else {
    std::printf("{\"name\":\"%s\",\"value\":%.3f,\"unit\":\"%s\",\"runs\":%s}\n", name.c_str(), value, unit,
                runs_json(runs).c_str());
  }
  std::fflush(stdout);
}

/// Detection: kill one member, time until every survivor concluded it. Returns false when a run
/// did not complete (no figure then).
bool detect(const Options& o, int n) {
  std::vector<double> unreach, down;
  const int victim = n / 2;
  for (int run = 0; run < o.runs; ++run) {
    TempDir dir;
    dir.keep = o.keep;
    const auto t_start = Clock::now();
    auto c = make_cluster(o, n, dir);
    std::fprintf(stderr, "[%s detect_%d run %d] formed in %.1f s\n", o.system.c_str(), n, run + 1,
                 secs(Clock::now() - t_start));
    std::this_thread::sleep_for(2s);  // let the join gossip die down
    const auto t0 = Clock::now();
    c->procs[victim]->kill_now();
    double last_unreach = 0, first_unreach = 1e9;
    bool ok = true;
    for (int i = 0; i < n; ++i) {
      if (i == victim) continue;
      auto l = c->procs[i]->wait_line(c->unreachable_line(victim), 60s, t0);
      if (!l) {
        std::fprintf(stderr, "[%s detect_%d run %d] %s never concluded %s failed within 60 s\n", o.system.c_str(), n,
                     run + 1, c->name(i).c_str(), c->name(victim).c_str());
        ok = false;
        continue;
      }
      const double t = secs(l->at - t0);
      last_unreach = std::max(last_unreach, t);
      first_unreach = std::min(first_unreach, t);
      std::fprintf(stderr, "[%s detect_%d run %d]   %s: %s failed/unreachable at %.3f s (%s)\n", o.system.c_str(), n,
                   run + 1, c->name(i).c_str(), c->name(victim).c_str(), t, c->why(*c->procs[i], *l, victim, t0).c_str());
    }
    double last_down = 0;
    if (ok && o.system == "troupe") {
      for (int i = 0; i < n; ++i) {
        if (i == victim) continue;
        auto l = c->procs[i]->wait_line(c->downed_line(victim), 60s, t0);
        if (!l) {
          std::fprintf(stderr, "[%s detect_%d run %d] %s never downed %s within 60 s\n", o.system.c_str(), n, run + 1,
                       c->name(i).c_str(), c->name(victim).c_str());
          ok = false;
          continue;
        }
        last_down = std::max(last_down, secs(l->at - t0));
      }
    } else {
      last_down = last_unreach;
    }
    if (!ok) return false;
    std::fprintf(stderr, "[%s detect_%d run %d] unreachable: first %.3f s, everywhere %.3f s; downed everywhere %.3f s\n",
                 o.system.c_str(), n, run + 1, first_unreach, last_unreach, last_down);
    unreach.push_back(last_unreach);
    down.push_back(last_down);
  }
  emit("membership_detect_" + std::to_string(n) + "_s", median(unreach), "s", unreach);
  emit("membership_down_" + std::to_string(n) + "_s", median(down), "s", down);
  return true;
}

/// False positives: one member stopped for pause_for every pause_every, for false_seconds.
bool false_downs(const Options& o) {
  const int n = 5, victim = 2;
  TempDir dir;
  dir.keep = o.keep;
  auto c = make_cluster(o, n, dir);
  std::this_thread::sleep_for(2s);
  const auto t0 = Clock::now();
  const auto every = std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o.pause_every));
  const auto pause = std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o.pause_for));
  const auto total = std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o.false_seconds));
  int pauses = 0;
  for (auto next = t0; next - t0 < total; next += every) {
    std::this_thread::sleep_until(next);
    c->procs[victim]->signal(SIGSTOP);
    std::this_thread::sleep_until(next + pause);
    c->procs[victim]->signal(SIGCONT);
    ++pauses;
  }
  // A quiet tail after the last period (which already ends pause_every - pause_for after the
  // last resume): a downing needs the unreachable set unchanged for stable_after (5 s, lan).
  std::this_thread::sleep_until(t0 + total + 5s);
  std::size_t downs = 0, unreach = 0;
  for (int i = 0; i < n; ++i) {
    for (const auto& l : c->procs[i]->lines(c->any_downed(), t0)) {
      ++downs;
      std::fprintf(stderr, "[%s false_downs] %s at %.1f s: %s\n", o.system.c_str(), c->name(i).c_str(), secs(l.at - t0),
                   l.text.c_str());
    }
    for (const auto& l : c->procs[i]->lines(c->any_unreachable(), t0)) {
      ++unreach;
      if (o.system == "troupe") {
        std::fprintf(stderr, "[%s false_downs] %s at %.1f s: %s\n", o.system.c_str(), c->name(i).c_str(),
                     secs(l.at - t0), l.text.c_str());
      }
    }
  }
  std::fprintf(stderr, "[%s false_downs] %d pauses of %.1f s every %.1f s over %.0f s: %zu downed, %zu unreachable\n",
               o.system.c_str(), pauses, o.pause_for, o.pause_every, o.false_seconds, downs, unreach);
  emit("membership_false_downs", double(downs), "downs");
  emit("membership_false_unreachable", double(unreach), "events");
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"membership_bench: failure detection and false positives, Troupe or Serf"};
  app.add_option("--system", o.system, "troupe or serf")->required()->check(CLI::IsMember({"troupe", "serf"}));
  app.add_option("--only", o.only, "detect_5, detect_9 or false_downs")->required();
  app.add_option("--runs", o.runs, "fresh clusters per detection figure (median)")->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--false-seconds", o.false_seconds, "length of false_downs")->capture_default_str();
  app.add_option("--pause-every", o.pause_every, "false_downs: seconds between pauses")->capture_default_str();
  app.add_option("--pause-for", o.pause_for, "false_downs: seconds a pause lasts")->capture_default_str();
  app.add_option("--serf", o.serf, "serf binary")->capture_default_str();
  app.add_option("--troupe-node", o.troupe_node, "troupe-node binary")->capture_default_str();
  app.add_flag("--keep", o.keep, "keep the work directory");
  CLI11_PARSE(app, argc, argv);
  if (o.pause_for >= o.pause_every) {
    std::fprintf(stderr, "membership_bench: --pause-for must be shorter than --pause-every\n");
    return 2;
  }
  ::signal(SIGPIPE, SIG_IGN);
  try {
    bool ok = false;
    if (o.only.starts_with("detect_")) {
      ok = detect(o, std::atoi(o.only.c_str() + 7));
    } else if (o.only == "false_downs") {
      ok = false_downs(o);
    } else {
      std::fprintf(stderr, "unknown workload %s\n", o.only.c_str());
      return 2;
    }
    return ok ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "membership_bench (%s %s): %s\n", o.system.c_str(), o.only.c_str(), e.what());
    return 1;
  }
}
