// remote_bench: node-to-node remoting over loopback, two processes, CURVE on. Measures, side by
// side in one run:
//   zmq_tell_<size>      raw libzmq DEALER -> ROUTER with CURVE, one message per frame (the
//                        per-message limit of CURVE framing), msg/s at the receiver;
//   remote_tell_<size>   Troupe: an actor on this process tells an actor on the server process
//                        through a resolved remote ActorRef, msg/s at the receiver;
//   zmq_pingpong_p50_us / _p99_us   raw DEALER/ROUTER CURVE ping-pong, one outstanding;
//   remote_ask_p50_us / _p99_us     Troupe ask to a remote echo actor, one outstanding.
// Both throughput workloads use the same windowed flow: the receiver acks every `ack_every`
// messages and the sender keeps at most `window` unacknowledged (Troupe's per-peer queue is
// bounded and drops on overflow; a run with drops is invalid and emits no figure).
//
// Usage: remote_bench [--threads N] [--only NAME] [--scale F]
// Prints one JSON line per figure on stdout: {"name":"remote_tell_64B","value":1.0,"unit":"msg/s"}
//
// The server role runs in a child process: this binary re-executes itself with --serve zmq|troupe,
// reads the keys from its stdin, binds an ephemeral port, prints "READY <port|address>" on its
// stdout, serves until its stdin is closed, then exits.

#include <fcntl.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <future>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>
#include <zmq.hpp>

#include <troupe/remoting/security.hpp>
#include <troupe/remoting/transport.hpp>
#include <troupe/troupe.hpp>

#include "remote_bench_generated.h"

namespace {

using namespace troupe;
using Clock = std::chrono::steady_clock;
using remoting::CurveKeyPair;

struct Options {
  unsigned threads = 2;
  std::string only;
  double scale = 1.0;
};

/// The windowed flow shared by every throughput workload.
struct Flow {
  std::uint64_t window = 50'000;
  std::uint64_t ack_every = 10'000;
};

constexpr std::uint64_t kWarmupMessages = 20'000;
constexpr std::uint64_t kWarmupRoundTrips = 2'000;
constexpr auto kRunTimeout = std::chrono::seconds(120);

std::uint64_t scaled(const Options& o, std::uint64_t n) {
  return std::max<std::uint64_t>(1, static_cast<std::uint64_t>(static_cast<double>(n) * o.scale));
}

void emit(const std::string& name, double value, const char* unit) {
  std::printf("{\"name\":\"%s\",\"value\":%.1f,\"unit\":\"%s\"}\n", name.c_str(), value, unit);
  std::fflush(stdout);
}

std::string size_label(std::size_t size) { return size >= 1024 ? std::to_string(size / 1024) + "KiB" : std::to_string(size) + "B"; }

std::uint64_t ns_since(Clock::time_point t0) {
  return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count());
}

/// What the receiver reports at the end of a run.
struct RunResult {
  std::uint64_t received = 0, elapsed_ns = 0, misordered = 0, dropped = 0;
};

/// p50 and p99 of round-trip times, in microseconds.
std::pair<double, double> percentiles_us(std::vector<std::uint64_t> ns) {
  std::sort(ns.begin(), ns.end());
  auto at = [&](double q) {
    const auto i = std::min(ns.size() - 1, static_cast<std::size_t>(q * static_cast<double>(ns.size())));
    return static_cast<double>(ns[i]) / 1000.0;
  };
  return {at(0.50), at(0.99)};
}

// ---- the child process ---------------------------------------------------------------------------

/// Reads one '\n'-terminated line from `fd` byte by byte (nothing is buffered past it); false at EOF.
bool read_line_fd(int fd, std::string& line) {
  line.clear();
  char c = 0;
  for (;;) {
    const auto r = ::read(fd, &c, 1);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return !line.empty();
    if (c == '\n') return true;
    line.push_back(c);
  }
}

void write_all(int fd, const std::string& s) {
  std::size_t done = 0;
  while (done < s.size()) {
    const auto r = ::write(fd, s.data() + done, s.size() - done);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) throw std::runtime_error("writing to the server process failed");
    done += static_cast<std::size_t>(r);
  }
}

/// The server role in a child process: this binary re-executed with `args`.
class ServerProcess {
 public:
  ServerProcess(const std::vector<std::string>& args, const std::string& input) {
    // Everything the child needs is prepared before fork: it only calls dup2 and execv.
    std::vector<std::string> all{"remote_bench"};
    all.insert(all.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& a : all) argv.push_back(a.data());
    argv.push_back(nullptr);
    int in[2], out[2];
    if (::pipe2(in, O_CLOEXEC) != 0 || ::pipe2(out, O_CLOEXEC) != 0) throw std::runtime_error("pipe2 failed");
    pid_ = ::fork();
    if (pid_ < 0) throw std::runtime_error("fork failed");
    if (pid_ == 0) {
      ::dup2(in[0], 0);  // dup2 clears FD_CLOEXEC on the copy
      ::dup2(out[1], 1);
      ::execv("/proc/self/exe", argv.data());
      ::_exit(127);
    }
    ::close(in[0]);
    ::close(out[1]);
    in_ = in[1];
    out_ = ::fdopen(out[0], "r");
    write_all(in_, input);
  }
  ServerProcess(const ServerProcess&) = delete;
  ServerProcess& operator=(const ServerProcess&) = delete;
  ~ServerProcess() { finish(); }

  /// The value of the child's "READY <value>" line.
  std::string ready() {
    char buf[512];
    if (!std::fgets(buf, sizeof buf, out_)) throw std::runtime_error("the server process did not start");
    std::string line(buf);
    while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.pop_back();
    if (!line.starts_with("READY ")) throw std::runtime_error("unexpected line from the server process: " + line);
    return line.substr(6);
  }

  /// Closes the child's stdin (its signal to stop) and waits for it; returns its exit status.
  int finish() {
    if (pid_ <= 0) return status_;
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

/// Keys for one client/server pair, fresh from the CSPRNG.
struct Keys {
  CurveKeyPair server = remoting::generate_keypair().value();
  CurveKeyPair client = remoting::generate_keypair().value();
  /// What the server process reads on its stdin.
  std::string for_server() const { return server.public_key + "\n" + server.secret_key + "\n" + client.public_key + "\n"; }
};

/// Blocks until stdin is closed (the parent's signal to stop).
void wait_for_eof() {
  char buf[64];
  for (;;) {
    const auto r = ::read(0, buf, sizeof buf);
    if (r == 0 || (r < 0 && errno != EINTR)) return;
  }
}

// ---- raw libzmq ------------------------------------------------------------------------------------
// Frames: 'B' begin (count at 8, ack_every at 16), 'D' data (seq at 8, padded to the payload
// size), 'A' ack (received at 8, elapsed_ns at 16, misordered at 24), 'P' ping (echoed back).

void put64(std::uint8_t* p, std::uint64_t v) { std::memcpy(p, &v, sizeof v); }
std::uint64_t get64(const std::uint8_t* p) {
  std::uint64_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

int serve_zmq(const CurveKeyPair& server) {
  zmq::context_t ctx(1);
  zmq::socket_t r(ctx, zmq::socket_type::router);
  r.set(zmq::sockopt::linger, 0);
  r.set(zmq::sockopt::curve_server, 1);
  r.set(zmq::sockopt::curve_secretkey, server.secret_key);
  r.bind("tcp://127.0.0.1:*");
  const auto ep = r.get(zmq::sockopt::last_endpoint);
  std::printf("READY %s\n", ep.substr(ep.rfind(':') + 1).c_str());
  std::fflush(stdout);

  std::uint64_t count = 0, ack_every = 1, received = 0, misordered = 0;
  Clock::time_point t0{};
  std::array<std::uint8_t, 32> ack{};
  ack[0] = 'A';
  zmq_pollitem_t items[] = {{r.handle(), 0, ZMQ_POLLIN, 0}, {nullptr, 0, ZMQ_POLLIN, 0}};
  for (;;) {
    zmq::poll(items, 2, std::chrono::milliseconds(-1));
    if (items[1].revents != 0) {  // data, or POLLHUP (reported as ZMQ_POLLERR) once the parent closed it
      char buf[64];
      if (::read(0, buf, sizeof buf) <= 0) break;
    }
    if (!(items[0].revents & ZMQ_POLLIN)) continue;
    for (;;) {
      zmq::message_t rid, body;
      if (!r.recv(rid, zmq::recv_flags::dontwait)) break;
      (void)r.recv(body, zmq::recv_flags::none);  // the second part of a ROUTER message is always there
      const auto* p = static_cast<const std::uint8_t*>(body.data());
      if (body.size() < 16) continue;
      switch (p[0]) {
        case 'D':
          if (received == 0) t0 = Clock::now();
          if (get64(p + 8) != received) ++misordered;
          ++received;
          if (received % ack_every == 0 || received == count) {
            put64(ack.data() + 8, received);
            put64(ack.data() + 16, ns_since(t0));
            put64(ack.data() + 24, misordered);
            r.send(rid, zmq::send_flags::sndmore);
            r.send(zmq::buffer(ack), zmq::send_flags::none);
          }
          break;
        case 'P':
          r.send(rid, zmq::send_flags::sndmore);
          r.send(body, zmq::send_flags::none);
          break;
        case 'B':
          count = get64(p + 8);
          ack_every = std::max<std::uint64_t>(1, get64(p + 16));
          received = misordered = 0;
          break;
        default: break;
      }
    }
  }
  return 0;
}

zmq::socket_t zmq_client(zmq::context_t& ctx, const Keys& keys, const std::string& port) {
  zmq::socket_t d(ctx, zmq::socket_type::dealer);
  d.set(zmq::sockopt::linger, 0);
  d.set(zmq::sockopt::curve_serverkey, keys.server.public_key);
  d.set(zmq::sockopt::curve_publickey, keys.client.public_key);
  d.set(zmq::sockopt::curve_secretkey, keys.client.secret_key);
  d.connect("tcp://127.0.0.1:" + port);
  return d;
}

/// Reads an ack into `last`; false when none is there (dontwait).
bool zmq_ack(zmq::socket_t& d, RunResult& last, zmq::recv_flags flags) {
  zmq::message_t m;
  if (!d.recv(m, flags)) return false;
  const auto* p = static_cast<const std::uint8_t*>(m.data());
  if (m.size() < 32 || p[0] != 'A') throw std::runtime_error("unexpected frame from the raw server");
  last.received = get64(p + 8);
  last.elapsed_ns = get64(p + 16);
  last.misordered = get64(p + 24);
  return true;
}

RunResult zmq_run(zmq::socket_t& d, std::uint64_t count, std::size_t size, const Flow& flow) {
  std::array<std::uint8_t, 32> begin{};
  begin[0] = 'B';
  put64(begin.data() + 8, count);
  put64(begin.data() + 16, flow.ack_every);
  d.send(zmq::buffer(begin), zmq::send_flags::none);
  std::vector<std::uint8_t> frame(size, 0x5a);
  frame[0] = 'D';
  std::uint64_t sent = 0;
  RunResult last;
  while (last.received < count) {
    while (sent < count && sent - last.received < flow.window) {
      put64(frame.data() + 8, sent);
      d.send(zmq::buffer(frame), zmq::send_flags::none);  // one message, one frame
      ++sent;
      if ((sent & 63) == 0) {
        while (zmq_ack(d, last, zmq::recv_flags::dontwait)) {
        }
      }
    }
    if (last.received < count) zmq_ack(d, last, zmq::recv_flags::none);
  }
  return last;
}

int zmq_tell(std::size_t size, std::uint64_t count) {
  Keys keys;
  ServerProcess server({"--serve", "zmq"}, keys.for_server());
  const auto port = server.ready();
  const Flow flow;
  RunResult r;
  {
    zmq::context_t ctx(1);
    auto d = zmq_client(ctx, keys, port);
    zmq_run(d, std::min(count, kWarmupMessages), size, flow);
    r = zmq_run(d, count, size, flow);
  }
  if (server.finish() != 0 || r.misordered != 0) {
    std::fprintf(stderr, "zmq_tell_%s: invalid run (server exit or %llu misordered)\n", size_label(size).c_str(),
                 static_cast<unsigned long long>(r.misordered));
    return 1;
  }
  const double s = static_cast<double>(r.elapsed_ns) / 1e9;
  std::fprintf(stderr, "  zmq_tell_%s: %llu messages in %.3f s at the receiver\n", size_label(size).c_str(),
               static_cast<unsigned long long>(count), s);
  emit("zmq_tell_" + size_label(size), static_cast<double>(count) / s, "msg/s");
  return 0;
}

int zmq_pingpong(std::size_t size, std::uint64_t round_trips) {
  Keys keys;
  ServerProcess server({"--serve", "zmq"}, keys.for_server());
  const auto port = server.ready();
  std::vector<std::uint64_t> rtt;
  rtt.reserve(round_trips);
  {
    zmq::context_t ctx(1);
    auto d = zmq_client(ctx, keys, port);
    std::vector<std::uint8_t> frame(size, 0x5a);
    frame[0] = 'P';
    for (std::uint64_t i = 0; i < kWarmupRoundTrips + round_trips; ++i) {
      put64(frame.data() + 8, i);
      const auto t0 = Clock::now();
      d.send(zmq::buffer(frame), zmq::send_flags::none);
      zmq::message_t m;
      (void)d.recv(m, zmq::recv_flags::none);
      const auto dt = ns_since(t0);
      if (m.size() != size || get64(static_cast<const std::uint8_t*>(m.data()) + 8) != i) {
        throw std::runtime_error("wrong echo from the raw server");
      }
      if (i >= kWarmupRoundTrips) rtt.push_back(dt);
    }
  }
  if (server.finish() != 0) return 1;
  const auto [p50, p99] = percentiles_us(std::move(rtt));
  emit("zmq_pingpong_p50_us", p50, "us");
  emit("zmq_pingpong_p99_us", p99, "us");
  return 0;
}

// ---- Troupe ----------------------------------------------------------------------------------------

const std::array<std::uint8_t, 4096>& filler() {
  static const auto f = [] {
    std::array<std::uint8_t, 4096> a{};
    for (std::size_t i = 0; i < a.size(); ++i) a[i] = static_cast<std::uint8_t>(i * 31u);
    return a;
  }();
  return f;
}

/// A fresh Blob message for every send, `size` bytes of payload data.
Message blob(std::uint64_t seq, std::size_t size) {
  return Message::build<bench::Blob>([&](flatbuffers::FlatBufferBuilder& b) {
    auto data = b.CreateVector(filler().data(), size);
    return bench::CreateBlob(b, seq, data);
  });
}

Message begin_msg(std::uint64_t count, const Flow& flow) {
  return Message::build<bench::RemoteBegin>(
      [&](flatbuffers::FlatBufferBuilder& b) { return bench::CreateRemoteBegin(b, count, flow.ack_every, flow.window); });
}

void register_types(ActorSystem& sys) {
  sys.registry().add<bench::RemoteBegin>();
  sys.registry().add<bench::Blob>();
  sys.registry().add<bench::RemoteAck>();
}

/// Server side: counts Blobs, acks every `ack_every` and the last one.
class Sink final : public Actor {
 public:
  explicit Sink(remoting::Transport* transport) : transport_(transport) {}
  void receive(const Message& m) override {
    if (const auto* b = m.as<bench::Blob>()) {
      if (received_ == 0) t0_ = Clock::now();
      if (b->seq() != received_) ++misordered_;
      ++received_;
      if (received_ % ack_every_ == 0 || received_ == count_) {
        const std::uint64_t dropped = received_ == count_ ? transport_->stats().dropped_queue_full : 0;
        const auto elapsed = ns_since(t0_);
        const auto received = received_, misordered = misordered_;
        sender().tell(Message::build<bench::RemoteAck>([&](flatbuffers::FlatBufferBuilder& fb) {
                        return bench::CreateRemoteAck(fb, received, elapsed, misordered, dropped);
                      }),
                      self());
      }
    } else if (const auto* g = m.as<bench::RemoteBegin>()) {
      count_ = g->count();
      ack_every_ = std::max<std::uint64_t>(1, g->ack_every());
      received_ = misordered_ = 0;
    }
  }

 private:
  remoting::Transport* transport_;
  std::uint64_t count_ = 0, ack_every_ = 1, received_ = 0, misordered_ = 0;
  Clock::time_point t0_{};
};

/// Server side: replies to every message with the message itself.
class Echo final : public Actor {
 public:
  void receive(const Message& m) override { sender().tell(m, self()); }
};

/// Where a sender hands the receiver's final ack to the main thread (reset before every run).
struct RunSlot {
  std::promise<RunResult> done;
};

/// Client side: on a RemoteBegin (from main) forwards it to the remote sink and sends Blobs,
/// keeping at most `window` unacknowledged; the sink's last ack completes the run.
class TellSender final : public Actor {
 public:
  TellSender(ActorRef target, std::size_t size, RunSlot* slot) : target_(std::move(target)), size_(size), slot_(slot) {}
  void receive(const Message& m) override {
    if (const auto* a = m.as<bench::RemoteAck>()) {
      acked_ = a->received();
      if (acked_ >= count_) {
        slot_->done.set_value(RunResult{a->received(), a->elapsed_ns(), a->misordered(), a->dropped()});
      } else {
        pump();
      }
    } else if (const auto* g = m.as<bench::RemoteBegin>()) {
      count_ = g->count();
      window_ = g->window();
      sent_ = acked_ = 0;
      target_.tell(m, self());
      pump();
    }
  }

 private:
  void pump() {
    for (; sent_ < count_ && sent_ - acked_ < window_; ++sent_) target_.tell(blob(sent_, size_), self());
  }
  ActorRef target_;
  std::size_t size_;
  RunSlot* slot_;
  std::uint64_t count_ = 0, window_ = 0, sent_ = 0, acked_ = 0;
};

/// One node: an actor system and its transport (stopped before the system shuts down).
struct Node {
  Node(const Options& o, const char* name, const CurveKeyPair& keys, const std::string& peer_public_key)
      : sys([&] {
          ActorSystemConfig c;
          c.workers = o.threads;
          c.node_id = name;
          return c;
        }()) {
    register_types(sys);
    remoting::TransportConfig cfg;
    cfg.port = 0;
    cfg.keys = keys;
    cfg.allow_list = std::make_shared<remoting::AllowList>(std::vector<std::string>{peer_public_key});
    auto t = remoting::Transport::start(sys, cfg);
    if (!t) throw std::runtime_error("the transport did not start: " + t.error().message());
    transport = std::move(t).value();
  }
  Node(const Node&) = delete;
  Node& operator=(const Node&) = delete;
  ~Node() {
    transport->stop();
    sys.shutdown();
  }
  /// A ref to `path` on the node at `address`, declaring that node's key first.
  ActorRef remote(const std::string& address, const std::string& path, const std::string& public_key) {
    auto node = remoting::parse_node_address(address);
    if (!node) throw std::runtime_error("bad node address from the server: " + address);
    transport->add_peer_key(node->endpoint(), public_key);
    auto r = transport->resolve(address + path);
    if (!r) throw std::runtime_error("resolve failed: " + r.error().message());
    return r.value();
  }

  ActorSystem sys;
  std::unique_ptr<remoting::Transport> transport;
};

int serve_troupe(const Options& o, const CurveKeyPair& server, const std::string& client_public_key) {
  Node node(o, "server", server, client_public_key);
  node.sys.spawn<Sink>(SpawnOptions{.name = "sink"}, node.transport.get());
  node.sys.spawn<Echo>(SpawnOptions{.name = "echo"});
  std::printf("READY %s\n", node.transport->address().to_string().c_str());
  std::fflush(stdout);
  wait_for_eof();
  const auto s = node.transport->stats();
  std::fprintf(stderr, "  server: frames_in %llu, messages_in %llu (%.1f per frame), bytes_in %llu, dropped %llu\n",
               static_cast<unsigned long long>(s.frames_in), static_cast<unsigned long long>(s.messages_in),
               s.frames_in ? static_cast<double>(s.messages_in) / static_cast<double>(s.frames_in) : 0.0,
               static_cast<unsigned long long>(s.bytes_in), static_cast<unsigned long long>(s.dropped_queue_full));
  return 0;
}

/// One run of the tell workload; nullopt-like (received == 0) on a timeout.
RunResult troupe_run(const ActorRef& sender, RunSlot& slot, std::uint64_t count, const Flow& flow) {
  slot.done = std::promise<RunResult>();
  auto f = slot.done.get_future();
  sender.tell(begin_msg(count, flow));
  if (f.wait_for(kRunTimeout) != std::future_status::ready) return RunResult{};
  return f.get();
}

int remote_tell(const Options& o, std::size_t size, std::uint64_t count) {
  Keys keys;
  ServerProcess server({"--serve", "troupe", "--threads", std::to_string(o.threads)}, keys.for_server());
  const auto address = server.ready();
  const Flow flow;
  const auto name = "remote_tell_" + size_label(size);
  RunResult r;
  remoting::TransportStats stats;
  RunSlot slot;  // outlives the node: a late ack after a timeout still finds it
  {
    Node node(o, "client", keys.client, keys.server.public_key);
    auto sink = node.remote(address, "/user/sink", keys.server.public_key);
    auto sender = node.sys.spawn<TellSender>(SpawnOptions{.name = "sender"}, sink, size, &slot);
    const auto warm = troupe_run(sender, slot, std::min(count, kWarmupMessages), flow);
    if (warm.received != 0) r = troupe_run(sender, slot, count, flow);
    stats = node.transport->stats();
    node.sys.stop(sender);
  }
  const bool finished = r.received == count;
  const int server_rc = server.finish();
  std::fprintf(stderr,
               "  %s: client frames_out %llu, messages_out %llu (%.1f per frame), bytes_out %llu, dropped_queue_full "
               "%llu (server %llu), misordered %llu\n",
               name.c_str(), static_cast<unsigned long long>(stats.frames_out),
               static_cast<unsigned long long>(stats.messages_out),
               stats.frames_out ? static_cast<double>(stats.messages_out) / static_cast<double>(stats.frames_out) : 0.0,
               static_cast<unsigned long long>(stats.bytes_out), static_cast<unsigned long long>(stats.dropped_queue_full),
               static_cast<unsigned long long>(r.dropped), static_cast<unsigned long long>(r.misordered));
  if (!finished || stats.dropped_queue_full != 0 || r.dropped != 0 || r.misordered != 0 || server_rc != 0) {
    std::fprintf(stderr, "%s: INVALID run (%s)\n", name.c_str(),
                 !finished ? "did not finish in time: messages were lost" : "drops, misordering or a server failure");
    return 1;
  }
  const double s = static_cast<double>(r.elapsed_ns) / 1e9;
  std::fprintf(stderr, "  %s: %llu messages in %.3f s at the receiver\n", name.c_str(),
               static_cast<unsigned long long>(count), s);
  emit(name, static_cast<double>(count) / s, "msg/s");
  return 0;
}

int remote_ask(const Options& o, std::size_t size, std::uint64_t round_trips) {
  Keys keys;
  ServerProcess server({"--serve", "troupe", "--threads", std::to_string(o.threads)}, keys.for_server());
  const auto address = server.ready();
  std::vector<std::uint64_t> rtt;
  rtt.reserve(round_trips);
  {
    Node node(o, "client", keys.client, keys.server.public_key);
    auto echo = node.remote(address, "/user/echo", keys.server.public_key);
    for (std::uint64_t i = 0; i < kWarmupRoundTrips + round_trips; ++i) {
      auto request = blob(i, size);  // built before the clock starts, as the raw frame is
      const auto t0 = Clock::now();
      auto r = echo.ask(std::move(request), std::chrono::seconds(10)).get();
      const auto dt = ns_since(t0);
      if (!r.ok()) throw std::runtime_error("remote ask failed: " + r.error().message());
      if (!r->is<bench::Blob>() || r->as<bench::Blob>()->seq() != i) throw std::runtime_error("wrong echo");
      if (i >= kWarmupRoundTrips) rtt.push_back(dt);
    }
  }
  if (server.finish() != 0) return 1;
  const auto [p50, p99] = percentiles_us(std::move(rtt));
  emit("remote_ask_p50_us", p50, "us");
  emit("remote_ask_p99_us", p99, "us");
  return 0;
}

int serve(const Options& o, const std::string& role) {
  std::string server_public, server_secret, client_public;
  if (!read_line_fd(0, server_public) || !read_line_fd(0, server_secret) || !read_line_fd(0, client_public)) {
    std::fprintf(stderr, "remote_bench --serve: expected three keys on stdin\n");
    return 2;
  }
  const CurveKeyPair server{server_public, server_secret};
  if (role == "zmq") return serve_zmq(server);
  if (role == "troupe") return serve_troupe(o, server, client_public);
  std::fprintf(stderr, "remote_bench --serve: unknown role %s\n", role.c_str());
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  std::string role;
  CLI::App app{"remote_bench: remoting throughput and latency, Troupe beside raw libzmq"};
  app.add_option("--threads", o.threads, "worker threads per node")->capture_default_str();
  app.add_option("--only", o.only, "one workload: zmq_tell_64B zmq_tell_1KiB remote_tell_64B remote_tell_1KiB "
                                   "zmq_pingpong remote_ask");
  app.add_option("--scale", o.scale, "multiplies message counts")->capture_default_str();
  app.add_option("--serve", role, "internal: the server role (zmq|troupe)");
  CLI11_PARSE(app, argc, argv);
  spdlog::set_level(spdlog::level::warn);
  std::signal(SIGPIPE, SIG_IGN);
  try {
    if (!role.empty()) return serve(o, role);
    int rc = 0;
    auto want = [&](const char* name) { return o.only.empty() || o.only == name; };
    if (want("zmq_tell_64B")) rc |= zmq_tell(64, scaled(o, 2'000'000));
    if (want("remote_tell_64B")) rc |= remote_tell(o, 64, scaled(o, 2'000'000));
    if (want("zmq_tell_1KiB")) rc |= zmq_tell(1024, scaled(o, 500'000));
    if (want("remote_tell_1KiB")) rc |= remote_tell(o, 1024, scaled(o, 500'000));
    if (want("zmq_pingpong")) rc |= zmq_pingpong(64, scaled(o, 20'000));
    if (want("remote_ask")) rc |= remote_ask(o, 64, scaled(o, 20'000));
    return rc;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "remote_bench%s: %s\n", role.empty() ? "" : " (server)", e.what());
    return 1;
  }
}
