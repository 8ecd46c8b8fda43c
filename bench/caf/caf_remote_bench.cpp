// caf_remote_bench.cpp -- peer baseline for the remoting benchmark: CAF 0.17 (libcaf-dev 0.17.6)
// remote actors over libcaf_io (io::middleman, publish / remote_actor), two processes on
// loopback. Mirrors remote_bench's remote_tell_<size> workload: an actor in this process sends
// (seq, payload bytes) messages to a published actor in a child process, keeping at most
// `window` unacknowledged; the receiver acks every `ack_every` messages and measures
// messages per second from its first message to its last.
//
// Note: libcaf_io speaks plain TCP (no encryption, no authentication); Troupe's figures are
// with CURVE. With --tls DIR both processes speak TLS instead (libcaf_openssl, CAF's own secure
// transport), each authenticating the other by the certificate DIR/cert.pem (key DIR/key.pem),
// which is also the only CA they trust: encrypted and mutually authenticated, as CURVE with
// Troupe's allow-list is. Its figures are named remote_tell_<size>_tls.
//
// Usage: caf_remote_bench [--threads N] [--only NAME] [--scale F] [--tls DIR]
// Prints one JSON line per figure on stdout: {"name":"remote_tell_64B","value":1.0,"unit":"msg/s"}
// The server role is this binary re-executed with --serve; it prints "READY <port>" on its
// stdout and serves until its stdin is closed.

#include <caf/all.hpp>
#include <caf/io/all.hpp>
#include <caf/openssl/all.hpp>

#include <fcntl.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <future>
#include <stdexcept>
#include <string>
#include <vector>

using namespace caf;

namespace {

using clock_type = std::chrono::steady_clock;

using begin_atom = atom_constant<atom("begin")>;
using ack_atom = atom_constant<atom("ack")>;
using go_atom = atom_constant<atom("go")>;

struct options {
  int64_t threads = 2;
  std::string only;
  double scale = 1.0;
  std::string tls;  // a directory with cert.pem and key.pem: TLS between the processes
};

/// The same flow as remote_bench.
constexpr uint64_t window = 50000;
constexpr uint64_t ack_every = 10000;
constexpr uint64_t warmup_messages = 20000;
constexpr auto run_timeout = std::chrono::seconds(120);

uint64_t scaled(const options& o, uint64_t n) {
  return std::max<uint64_t>(1, static_cast<uint64_t>(static_cast<double>(n) * o.scale));
}

void emit(const std::string& name, double value, const char* unit) {
  std::printf("{\"name\":\"%s\",\"value\":%.1f,\"unit\":\"%s\"}\n", name.c_str(), value, unit);
  std::fflush(stdout);
}

std::string size_label(size_t size) {
  return size >= 1024 ? std::to_string(size / 1024) + "KiB" : std::to_string(size) + "B";
}

uint64_t ns_since(clock_type::time_point t0) {
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(clock_type::now() - t0).count());
}

struct run_result {
  uint64_t received = 0;
  uint64_t elapsed_ns = 0;
  uint64_t misordered = 0;
};

/// Where the sender hands the receiver's last ack to the main thread (reset before every run).
struct run_slot {
  std::promise<run_result> done;
};

// -- actors -------------------------------------------------------------------

/// Server side: counts (seq, bytes) messages, acks every `ack_every` and the last one to the
/// sender of the begin message.
struct sink_state {
  uint64_t count = 0;
  uint64_t every = 1;
  uint64_t received = 0;
  uint64_t misordered = 0;
  clock_type::time_point t0;
  actor reply_to;
};

behavior sink(stateful_actor<sink_state>* self) {
  return {
    [=](begin_atom, uint64_t count, uint64_t every) {
      auto& st = self->state;
      st.count = count;
      st.every = std::max<uint64_t>(1, every);
      st.received = 0;
      st.misordered = 0;
      st.reply_to = actor_cast<actor>(self->current_sender());
    },
    [=](uint64_t seq, const std::vector<char>&) {
      auto& st = self->state;
      if (st.received == 0)
        st.t0 = clock_type::now();
      if (seq != st.received)
        ++st.misordered;
      ++st.received;
      if (st.received % st.every == 0 || st.received == st.count)
        self->send(st.reply_to, ack_atom::value, st.received, ns_since(st.t0), st.misordered);
    },
  };
}

/// Client side: on go (from main) tells the sink to begin and sends fresh (seq, bytes) messages,
/// keeping at most `window` unacknowledged; the sink's last ack completes the run.
struct sender_state {
  uint64_t count = 0;
  uint64_t window = 0;
  uint64_t sent = 0;
  uint64_t acked = 0;
};

behavior tell_sender(stateful_actor<sender_state>* self, actor target, size_t size, run_slot* slot) {
  auto pump = [=] {
    static const std::vector<char> filler = [] {
      std::vector<char> f(4096);
      for (size_t i = 0; i < f.size(); ++i)
        f[i] = static_cast<char>(i * 31u);
      return f;
    }();
    auto& st = self->state;
    for (; st.sent < st.count && st.sent - st.acked < st.window; ++st.sent)
      self->send(target, st.sent, std::vector<char>(filler.begin(), filler.begin() + static_cast<std::ptrdiff_t>(size)));
  };
  return {
    [=](go_atom, uint64_t count, uint64_t every, uint64_t win) {
      auto& st = self->state;
      st.count = count;
      st.window = win;
      st.sent = 0;
      st.acked = 0;
      self->send(target, begin_atom::value, count, every);
      pump();
    },
    [=](ack_atom, uint64_t received, uint64_t elapsed_ns, uint64_t misordered) {
      self->state.acked = received;
      if (received >= self->state.count)
        slot->done.set_value(run_result{received, elapsed_ns, misordered});
      else
        pump();
    },
  };
}

// -- processes ----------------------------------------------------------------

void configure(actor_system_config& cfg, const options& o) {
  cfg.load<io::middleman>();
  cfg.set("scheduler.max-threads", o.threads);
  if (!o.tls.empty()) {
    cfg.load<openssl::manager>();
    cfg.openssl_certificate = o.tls + "/cert.pem";
    cfg.openssl_key = o.tls + "/key.pem";
    cfg.openssl_cafile = o.tls + "/cert.pem";
  }
}

/// Blocks until stdin is closed (the parent's signal to stop).
void wait_for_eof() {
  char buf[64];
  for (;;) {
    auto r = ::read(0, buf, sizeof buf);
    if (r == 0 || (r < 0 && errno != EINTR))
      return;
  }
}

int serve(const options& o) {
  actor_system_config cfg;
  configure(cfg, o);
  actor_system sys{cfg};
  auto s = sys.spawn(sink);
  auto port = o.tls.empty() ? sys.middleman().publish(s, 0, "127.0.0.1") : openssl::publish(s, 0, "127.0.0.1");
  if (!port) {
    std::fprintf(stderr, "caf_remote_bench --serve: publish failed: %s\n", sys.render(port.error()).c_str());
    anon_send_exit(s, exit_reason::user_shutdown);
    return 1;
  }
  std::printf("READY %u\n", static_cast<unsigned>(*port));
  std::fflush(stdout);
  wait_for_eof();
  anon_send_exit(s, exit_reason::user_shutdown);
  return 0;
}

/// The server role: this binary re-executed with --serve, stdin and stdout on pipes.
class server_process {
public:
  explicit server_process(const options& o) {
    std::vector<std::string> all{"caf_remote_bench", "--serve", "--threads", std::to_string(o.threads)};
    if (!o.tls.empty()) {
      all.push_back("--tls");
      all.push_back(o.tls);
    }
    std::vector<char*> argv;
    for (auto& a : all)
      argv.push_back(&a[0]);
    argv.push_back(nullptr);
    int in[2];
    int out[2];
    if (::pipe2(in, O_CLOEXEC) != 0 || ::pipe2(out, O_CLOEXEC) != 0)
      throw std::runtime_error("pipe2 failed");
    pid_ = ::fork();
    if (pid_ < 0)
      throw std::runtime_error("fork failed");
    if (pid_ == 0) {
      ::dup2(in[0], 0);
      ::dup2(out[1], 1);
      ::execv("/proc/self/exe", argv.data());
      ::_exit(127);
    }
    ::close(in[0]);
    ::close(out[1]);
    in_ = in[1];
    out_ = ::fdopen(out[0], "r");
  }
  server_process(const server_process&) = delete;
  server_process& operator=(const server_process&) = delete;
  ~server_process() { finish(); }

  uint16_t ready() {
    char buf[128];
    unsigned port = 0;
    if (!std::fgets(buf, sizeof buf, out_) || std::sscanf(buf, "READY %u", &port) != 1)
      throw std::runtime_error("the server process did not start");
    return static_cast<uint16_t>(port);
  }

  int finish() {
    if (pid_ <= 0)
      return status_;
    ::close(in_);
    int st = 0;
    while (::waitpid(pid_, &st, 0) < 0 && errno == EINTR) {
    }
    std::fclose(out_);
    pid_ = 0;
    status_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    return status_;
  }

private:
  pid_t pid_ = 0;
  int in_ = -1;
  std::FILE* out_ = nullptr;
  int status_ = 0;
};

run_result run(const actor& sender, run_slot& slot, uint64_t count) {
  slot.done = std::promise<run_result>();
  auto f = slot.done.get_future();
  anon_send(sender, go_atom::value, count, ack_every, window);
  if (f.wait_for(run_timeout) != std::future_status::ready)
    return run_result{};
  return f.get();
}

int remote_tell(const options& o, size_t size, uint64_t count) {
  const auto name = "remote_tell_" + size_label(size) + (o.tls.empty() ? "" : "_tls");
  server_process server{o};
  const auto port = server.ready();
  run_slot slot; // outlives the actor system: a late ack after a timeout still finds it
  run_result r;
  {
    actor_system_config cfg;
    configure(cfg, o);
    actor_system sys{cfg};
    auto target = o.tls.empty() ? sys.middleman().remote_actor("127.0.0.1", port)
                                : openssl::remote_actor(sys, "127.0.0.1", port);
    if (!target) {
      std::fprintf(stderr, "%s: remote_actor failed: %s\n", name.c_str(), sys.render(target.error()).c_str());
      return 1;
    }
    auto sender = sys.spawn(tell_sender, *target, size, &slot);
    auto warm = run(sender, slot, std::min(count, warmup_messages));
    if (warm.received != 0)
      r = run(sender, slot, count);
    anon_send_exit(sender, exit_reason::user_shutdown);
  }
  const int rc = server.finish();
  if (r.received != count || r.misordered != 0 || rc != 0) {
    std::fprintf(stderr, "%s: INVALID run (received %llu of %llu, %llu misordered, server exit %d)\n", name.c_str(),
                 static_cast<unsigned long long>(r.received), static_cast<unsigned long long>(count),
                 static_cast<unsigned long long>(r.misordered), rc);
    return 1;
  }
  const double s = static_cast<double>(r.elapsed_ns) / 1e9;
  std::fprintf(stderr, "  %s: %llu messages in %.3f s at the receiver\n", name.c_str(),
               static_cast<unsigned long long>(count), s);
  emit(name, static_cast<double>(count) / s, "msg/s");
  return 0;
}

} // namespace

int main(int argc, char** argv) {
  options o;
  bool server_role = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "missing value for %s\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--threads") {
      o.threads = std::stoll(value());
    } else if (a == "--only") {
      o.only = value();
    } else if (a == "--scale") {
      o.scale = std::stod(value());
    } else if (a == "--tls") {
      o.tls = value();
    } else if (a == "--serve") {
      server_role = true;
    } else {
      std::fprintf(stderr, "usage: caf_remote_bench [--threads N] [--only NAME] [--scale F] [--tls DIR]\n"
                           "workloads: remote_tell_64B remote_tell_1KiB\n");
      return 2;
    }
  }
  std::signal(SIGPIPE, SIG_IGN);
  try {
    if (server_role)
      return serve(o);
    int rc = 0;
    // --only takes the plain names (remote_tell_1KiB also with --tls).
    auto want = [&](const char* name) { return o.only.empty() || o.only == name; };
    if (want("remote_tell_64B"))
      rc |= remote_tell(o, 64, scaled(o, 2000000));
    if (want("remote_tell_1KiB"))
      rc |= remote_tell(o, 1024, scaled(o, 500000));
    return rc;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "caf_remote_bench%s: %s\n", server_role ? " (server)" : "", e.what());
    return 1;
  }
}
