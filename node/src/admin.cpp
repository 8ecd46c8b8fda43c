#include <troupe/node/admin.hpp>

#include <algorithm>
#include <array>
#include <charconv>
#include <cstdio>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string_view>
#include <thread>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <fmt/format.h>
#include <spdlog/logger.h>

#include <troupe/membership/keyring.hpp>
#include <troupe/sharding/placement.hpp>

#include "dashboard.hpp"

namespace troupe::node {

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using Request = http::request<http::string_body>;
using Response = http::response<http::string_body>;

/// `s` as a JSON string. Bytes >= 0x80 pass through (names and ids are expected in UTF-8).
std::string json_str(std::string_view s) {
  std::string out = "\"";
  for (char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20 || c == 0x7f) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out.push_back(ch);
        }
    }
  }
  return out + "\"";
}

std::string hex16(std::uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

/// A Prometheus label value: backslash, quote and newline escaped (text format 0.0.4).
std::string label_value(std::string_view s) {
  std::string out;
  for (char c : s) {
    if (c == '\\') out += "\\\\";
    else if (c == '"') out += "\\\"";
    else if (c == '\n') out += "\\n";
    else out.push_back(c);
  }
  return out;
}

/// Whether `s` is well-formed UTF-8 (no overlong forms, surrogates or code points past U+10FFFF).
bool valid_utf8(std::string_view s) {
  std::size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    std::size_t n = 0;
    std::uint32_t cp = 0;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xe0) == 0xc0) {
      n = 1, cp = c & 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
      n = 2, cp = c & 0x0f;
    } else if ((c & 0xf8) == 0xf0) {
      n = 3, cp = c & 0x07;
    } else {
      return false;
    }
    if (i + n >= s.size()) return false;
    for (std::size_t k = 1; k <= n; ++k) {
      const auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3f);
    }
    constexpr std::uint32_t kMin[] = {0, 0x80, 0x800, 0x10000};
    if (cp < kMin[n] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
    i += n + 1;
  }
  return true;
}

/// %XX decoding ('+' is a space only in a query); nothing for a broken escape or for bytes that
/// are not UTF-8 (names, types and ids are text, and answers are JSON).
std::optional<std::string> percent_decode(std::string_view s, bool query) {
  std::string out;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%') {
      if (i + 2 >= s.size()) return std::nullopt;
      auto hex = [](char c) -> int {
        if (c >= '0' && c <= '9') return c - '0';
        if (c >= 'a' && c <= 'f') return c - 'a' + 10;
        if (c >= 'A' && c <= 'F') return c - 'A' + 10;
        return -1;
      };
      const int hi = hex(s[i + 1]), lo = hex(s[i + 2]);
      if (hi < 0 || lo < 0) return std::nullopt;
      out.push_back(static_cast<char>(hi * 16 + lo));
      i += 2;
    } else if (query && s[i] == '+') {
      out.push_back(' ');
    } else {
      out.push_back(s[i]);
    }
  }
  if (!valid_utf8(out)) return std::nullopt;
  return out;
}

/// The value of `key` in a query string ("a=1&b=2"), decoded, in `value` (nullopt: absent).
/// False when it is there but badly encoded.
bool query_param(std::string_view query, std::string_view key, std::optional<std::string>& value) {
  value.reset();
  while (!query.empty()) {
    const auto amp = query.find('&');
    auto pair = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view() : query.substr(amp + 1);
    const auto eq = pair.find('=');
    if (pair.substr(0, eq) != key) continue;
    value = percent_decode(eq == std::string_view::npos ? std::string_view() : pair.substr(eq + 1), true);
    return value.has_value();
  }
  return true;
}

/// The string member `field` of a flat JSON object made of string members only ({"key":"..."}),
/// unescaped; nothing when the body is not such an object or lacks the field.
std::optional<std::string> json_string_field(std::string_view body, std::string_view field) {
  std::size_t i = 0;
  auto ws = [&] {
    while (i < body.size() && (body[i] == ' ' || body[i] == '\t' || body[i] == '\n' || body[i] == '\r')) ++i;
  };
  auto str = [&]() -> std::optional<std::string> {
    if (i >= body.size() || body[i] != '"') return std::nullopt;
    std::string out;
    for (++i; i < body.size(); ++i) {
      const char c = body[i];
      if (c == '"') {
        ++i;
        return out;
      }
      if (static_cast<unsigned char>(c) < 0x20) return std::nullopt;
      if (c != '\\') {
        out.push_back(c);
        continue;
      }
      if (++i >= body.size()) return std::nullopt;
      switch (body[i]) {
        case '"': case '\\': case '/': out.push_back(body[i]); break;
        case 'n': out.push_back('\n'); break;
        case 't': out.push_back('\t'); break;
        case 'r': out.push_back('\r'); break;
        default: return std::nullopt;  // \b \f \uXXXX: never in a key
      }
    }
    return std::nullopt;
  };
  std::optional<std::string> found;
  ws();
  if (i >= body.size() || body[i++] != '{') return std::nullopt;
  ws();
  if (i < body.size() && body[i] == '}') return std::nullopt;
  for (;;) {
    ws();
    auto name = str();
    ws();
    if (!name || i >= body.size() || body[i++] != ':') return std::nullopt;
    ws();
    auto value = str();
    if (!value) return std::nullopt;
    if (*name == field) found = std::move(value);
    ws();
    if (i < body.size() && body[i] == ',') {
      ++i;
      continue;
    }
    if (i >= body.size() || body[i++] != '}') return std::nullopt;
    ws();
    return i == body.size() ? found : std::nullopt;
  }
}

std::string key_id_hex(membership::KeyId id) {
  char buf[9];
  std::snprintf(buf, sizeof buf, "%08x", static_cast<unsigned>(id));
  return buf;
}

std::int64_t mono_ms(std::chrono::nanoseconds t) { return std::chrono::duration_cast<std::chrono::milliseconds>(t).count(); }
std::int64_t mono_now_ms() { return mono_ms(std::chrono::steady_clock::now().time_since_epoch()); }

/// A membership event as one JSON object (one SSE data line: no newline inside).
std::string event_json(const membership::MembershipEvent& e) {
  return "{\"event\":\"member\",\"kind\":\"" + std::string(membership::to_string(e.kind)) + "\",\"name\":" +
         json_str(e.member.name) + ",\"uid\":\"" + hex16(e.member.uid) + "\",\"status\":\"" +
         membership::to_string(e.member.status) + "\",\"liveness\":\"" + membership::to_string(e.member.liveness) +
         "\",\"at_ms\":" + std::to_string(mono_ms(e.at)) + ",\"detail\":" + json_str(e.detail) + "}";
}

/// Comparison whose time does not depend on where the strings differ (token checks).
bool same_secret(std::string_view a, std::string_view b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (std::size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ (i < b.size() ? b[i] : 0));
  return diff == 0;
}

/// Prometheus text exposition: one family per call, the node label on every sample.
class MetricsText {
 public:
  explicit MetricsText(std::string_view node) : node_(label_value(node)) {}
  void counter(std::string_view name, std::string_view help, std::uint64_t v) {
    family(std::string(name) + "_total", "counter", help);
    sample(std::string(name) + "_total", "", v);
  }
  void gauge(std::string_view name, std::string_view help, std::uint64_t v) {
    family(name, "gauge", help);
    sample(name, "", v);
  }
  void family(std::string_view name, std::string_view type, std::string_view help) {
    out_ += "# HELP ";
    out_ += name;
    out_ += ' ';
    out_ += help;
    out_ += "\n# TYPE ";
    out_ += name;
    out_ += ' ';
    out_ += type;
    out_ += '\n';
  }
  /// `labels`: extra labels, already formatted (`status="up"`).
  void sample(std::string_view name, std::string_view labels, std::uint64_t v) {
    out_ += name;
    out_ += "{node=\"" + node_ + "\"";
    if (!labels.empty()) {
      out_ += ',';
      out_ += labels;
    }
    out_ += "} " + std::to_string(v) + '\n';
  }
  /// A histogram in seconds: cumulative _bucket{le=...} samples, then _sum and _count.
  void histogram(std::string_view name, std::string_view help, const Histogram& h) {
    family(name, "histogram", help);
    std::uint64_t cumulative = 0;
    for (std::size_t i = 0; i < h.counts.size(); ++i) {
      cumulative += h.counts[i];
      const auto le = i < Histogram::kBounds.size() ? fmt::format("{}", Histogram::kBounds[i]) : std::string("+Inf");
      sample(std::string(name) + "_bucket", "le=\"" + le + "\"", cumulative);
    }
    out_ += std::string(name) + "_sum{node=\"" + node_ + "\"} " + fmt::format("{}", h.sum) + '\n';
    sample(std::string(name) + "_count", "", h.count);
  }
  std::string take() { return std::move(out_); }

 private:
  std::string node_;
  std::string out_;
};

}  // namespace

namespace {
class Session;
}

struct AdminServer::Impl {
  AdminOptions opt;
  AdminSources src;
  // Counters (mutable: the read-only handlers count what they refuse; error() counts every 404).
  mutable std::atomic<std::uint64_t> connections{0}, connections_refused{0}, requests{0}, bad_requests{0}, timeouts{0},
      unauthorized{0}, forbidden{0}, not_found{0}, method_not_allowed{0}, internal_errors{0}, conflicts{0},
      event_streams{0}, event_streams_refused{0}, events_sent{0}, slow_clients_dropped{0};
  std::atomic<std::size_t> open{0};
  std::uint16_t port = 0;
  std::mutex stop_mu;
  bool stopped = false;
  // Work handed to the admin thread from others (membership events, key operation results):
  // posted only while `accepting`, which stop() clears first.
  std::mutex post_mu;
  bool accepting = true;
  // One key operation at a time, on its own thread (it blocks until every member answered).
  std::atomic<bool> key_busy{false};
  std::thread key_worker;
  // Event streams (admin thread only); their count is read by the membership thread to skip
  // formatting events nobody waits for.
  std::vector<std::shared_ptr<Session>> streams;
  std::atomic<std::size_t> stream_count{0};
  std::map<std::string, std::uint64_t> table_digest;  // type -> digest of its last streamed table
  std::chrono::steady_clock::time_point next_heartbeat{};
  // Declared last: destroyed first, taking pending sessions with them while the counters live.
  std::unique_ptr<asio::io_context> ioc = std::make_unique<asio::io_context>(1);
  std::unique_ptr<tcp::acceptor> acceptor;
  std::unique_ptr<asio::steady_timer> retry, stream_timer;
  std::thread thread;

  /// What respond() could not answer at once.
  struct Deferred {
    enum Kind { none, stream, key_op } kind = none;
    membership::KeyOp op = membership::KeyOp::install;
    membership::Key key{};
  };

  spdlog::logger& log() const { return src.system->log(); }
  void accept();
  Response respond(const Request& req, Deferred& later);
  /// Runs `op` on the key worker thread; `done` gets the response on the admin thread.
  void run_key_op(const Request& req, const Deferred& d, std::function<void(Response)> done);
  /// Runs `fn` on the admin thread unless the server is stopping.
  void post(std::function<void()> fn) {
    std::lock_guard lk(post_mu);
    if (accepting) asio::post(*ioc, std::move(fn));
  }
  void add_stream(std::shared_ptr<Session> s);
  void remove_stream(const Session* s);
  /// Queues one SSE frame to every stream (admin thread).
  void broadcast(const std::string& frame);
  void stream_tick();
  /// nullopt when `req` carries the token; else the refusal (counted).
  std::optional<Response> check_token(const Request& req);
  Response keys(const Request& req) const;
  Response member_history(const Request& req, const std::string& name);
  Response shard_history(const Request& req, const std::string& type, std::string_view shard);
  Response reply(const Request& req, http::status status, std::string body,
                 std::string_view type = "application/json") const;
  Response error(const Request& req, http::status status, std::string_view why) const {
    if (status == http::status::not_found) ++not_found;
    return reply(req, status, "{\"error\":" + json_str(why) + "}\n");
  }
  Response readyz(const Request& req) const;
  std::string metrics() const;
  std::string members_json() const;
  std::string type_json(const std::string& type, std::uint32_t num_shards) const;
  Response shards(const Request& req, std::string_view query) const;
  Response entity(const Request& req, const std::string& type, const std::string& id) const;
  Response member_action(const Request& req, const std::string& name, bool down);
  const std::pair<std::string, std::uint32_t>* find_type(std::string_view type) const {
    for (const auto& t : src.entity_types) {
      if (t.first == type) return &t;
    }
    return nullptr;
  }
};

namespace {

/// One connection: requests in turn (keep-alive), each within the size limits and read timeout.
class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket s, AdminServer::Impl* server)
      : stream_(std::move(s)), buffer_(server->opt.max_header_bytes + server->opt.max_body_bytes + 1024), server_(server) {}
  ~Session() {
    --server_->open;
    if (streaming_) --server_->stream_count;
  }
  void start() { read(); }

  /// Queues an SSE frame; a client already max_event_queue frames behind is dropped.
  void push(const std::string& frame) {
    if (dropped_) return;
    if (queue_.size() >= server_->opt.max_event_queue) {
      ++server_->slow_clients_dropped;
      server_->log().warn("admin: dropped an event stream client {} frames behind", queue_.size());
      return drop();
    }
    queue_.push_back(frame);
    if (!writing_) write_next();
  }
  /// Ends the stream: the socket closes, pending operations finish with errors.
  void drop() {
    if (dropped_) return;
    dropped_ = true;
    // A write in flight still reads the front frame: keep it until its handler has run.
    if (writing_ && !queue_.empty()) queue_.erase(std::next(queue_.begin()), queue_.end());
    else queue_.clear();
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream_.socket().close(ignored);
    server_->remove_stream(this);  // may release the last reference: nothing after this
  }

 private:
  void read() {
    parser_.emplace();
    parser_->header_limit(static_cast<std::uint32_t>(server_->opt.max_header_bytes));
    parser_->body_limit(server_->opt.max_body_bytes);
    stream_.expires_after(server_->opt.read_timeout);
    http::async_read(stream_, buffer_, *parser_, beast::bind_front_handler(&Session::on_read, shared_from_this()));
  }
  void on_read(beast::error_code ec, std::size_t) {
    if (ec == http::error::end_of_stream || ec == asio::error::operation_aborted || ec == asio::error::connection_reset) {
      return close();
    }
    if (ec == beast::error::timeout) {
      ++server_->timeouts;  // tcp_stream closed the socket
      return;
    }
    if (ec) {
      // Unparsable or too large: answer once, then close (the rest of the stream is not trusted).
      ++server_->bad_requests;
      ++server_->requests;
      const bool too_large = ec == http::error::body_limit;
      res_ = {};
      res_.result(too_large ? http::status::payload_too_large : http::status::bad_request);
      res_.set(http::field::content_type, "application/json");
      res_.body() = "{\"error\":" + json_str(too_large ? "request too large" : "bad request: " + ec.message()) + "}\n";
      res_.keep_alive(false);
      return write();
    }
    AdminServer::Impl::Deferred later;
    res_ = server_->respond(parser_->get(), later);
    if (later.kind == AdminServer::Impl::Deferred::stream) return start_stream();
    if (later.kind == AdminServer::Impl::Deferred::key_op) {
      stream_.expires_never();  // the answer comes after key_timeout at most
      return server_->run_key_op(parser_->get(), later, [self = shared_from_this()](Response r) {
        self->res_ = std::move(r);
        self->write();
      });
    }
    write();
  }
  /// The connection becomes an event stream: a header without a length (the body ends when the
  /// connection does), then frames as events come. Reads only to notice the client leaving.
  void start_stream() {
    streaming_ = true;
    ++server_->stream_count;
    ++server_->event_streams;
    stream_.expires_never();
    server_->add_stream(shared_from_this());
    push("HTTP/1.1 200 OK\r\nServer: troupe-node\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n"
         "Connection: close\r\n\r\n: connected\n\n");
    watch_close();
  }
  void watch_close() {
    stream_.socket().async_read_some(asio::buffer(sink_), [self = shared_from_this()](beast::error_code ec, std::size_t) {
      if (ec) return self->drop();  // the client went away (or we closed)
      self->watch_close();          // whatever it sends is ignored
    });
  }
  void write_next() {
    writing_ = true;
    stream_.expires_after(server_->opt.read_timeout);  // a client that reads nothing is dropped
    asio::async_write(stream_, asio::buffer(queue_.front()), [self = shared_from_this()](beast::error_code ec, std::size_t) {
      self->writing_ = false;
      if (ec) {
        if (ec == beast::error::timeout && !self->dropped_) ++self->server_->slow_clients_dropped;
        return self->drop();
      }
      if (self->dropped_) return;
      self->queue_.pop_front();
      if (!self->queue_.empty()) return self->write_next();
      self->stream_.expires_never();
    });
  }
  void write() {
    res_.prepare_payload();
    stream_.expires_after(server_->opt.read_timeout);
    http::async_write(stream_, res_, beast::bind_front_handler(&Session::on_write, shared_from_this()));
  }
  void on_write(beast::error_code ec, std::size_t) {
    if (ec) return;
    if (!res_.keep_alive()) return close();
    read();
  }
  void close() {
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
  }

  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  Response res_;
  AdminServer::Impl* server_;
  // Event stream state (admin thread).
  bool streaming_ = false, writing_ = false, dropped_ = false;
  std::deque<std::string> queue_;
  std::array<char, 256> sink_{};
};

}  // namespace

void AdminServer::Impl::accept() {
  acceptor->async_accept([this](beast::error_code ec, tcp::socket s) {
    if (ec == asio::error::operation_aborted) return;
    if (ec) {
      // Out of descriptors and the like: try again shortly instead of spinning.
      log().warn("admin: accept failed: {}", ec.message());
      retry->expires_after(std::chrono::milliseconds(100));
      retry->async_wait([this](beast::error_code e) {
        if (!e) accept();
      });
      return;
    }
    if (open.load() >= opt.max_connections) {
      ++connections_refused;
      beast::error_code ignored;
      s.close(ignored);
    } else {
      ++open;
      ++connections;
      std::make_shared<Session>(std::move(s), this)->start();
    }
    accept();
  });
}

Response AdminServer::Impl::reply(const Request& req, http::status status, std::string body, std::string_view type) const {
  Response res{status, req.version()};
  res.set(http::field::server, "troupe-node");
  res.set(http::field::content_type, beast::string_view(type.data(), type.size()));
  res.set(http::field::cache_control, "no-store");
  res.keep_alive(req.keep_alive());
  res.body() = std::move(body);
  return res;
}

Response AdminServer::Impl::respond(const Request& req, Deferred& later) {
  ++requests;
  const std::string_view target(req.target().data(), req.target().size());
  const auto q = target.find('?');
  const auto path = target.substr(0, q);
  const auto query = q == std::string_view::npos ? std::string_view() : target.substr(q + 1);
  const bool get = req.method() == http::verb::get;
  auto wrong_method = [&](std::string_view allow) {
    ++method_not_allowed;
    auto res = error(req, http::status::method_not_allowed, "method not allowed");
    res.set(http::field::allow, beast::string_view(allow.data(), allow.size()));
    return res;
  };
  try {
    if (path == "/healthz" || path == "/readyz" || path == "/metrics" || path == "/api/v1/members" ||
        path == "/api/v1/shards") {
      if (!get) return wrong_method("GET");
      if (path == "/healthz") return reply(req, http::status::ok, "ok\n", "text/plain");
      if (path == "/readyz") return readyz(req);
      if (path == "/metrics") return reply(req, http::status::ok, metrics(), "text/plain; version=0.0.4; charset=utf-8");
      if (path == "/api/v1/members") {
        if (!src.membership) return error(req, http::status::not_found, "membership is not running");
        return reply(req, http::status::ok, members_json());
      }
      return shards(req, query);
    }
    if (path == "/") {
      if (!get) return wrong_method("GET");
      return reply(req, http::status::ok, dashboard_page(), "text/html; charset=utf-8");
    }
    if (path == "/api/v1/events") {
      if (!get) return wrong_method("GET");
      // Streams stay open: without a cap of their own they could take every connection, and
      // health checks and scrapes would be refused.
      if (stream_count.load() >= opt.max_event_streams) {
        ++event_streams_refused;
        log().warn("admin: refused an event stream: {} are open (max_event_streams)", stream_count.load());
        auto res = error(req, http::status::service_unavailable,
                         "too many event streams open (max_event_streams " + std::to_string(opt.max_event_streams) + ")");
        res.set(http::field::retry_after, "5");
        return res;
      }
      later.kind = Deferred::stream;
      return {};
    }
    constexpr std::string_view kKeys = "/api/v1/keys";
    if (path == kKeys || path.starts_with("/api/v1/keys/")) {
      const auto action = path.substr(std::min(path.size(), kKeys.size() + 1));
      if (path == kKeys) {
        if (!get) return wrong_method("GET");
        return keys(req);
      }
      if (action == "install" || action == "use" || action == "remove") {
        if (req.method() != http::verb::post) return wrong_method("POST");
        if (auto refused = check_token(req)) return *refused;
        if (!src.membership) return error(req, http::status::not_found, "membership is not running");
        auto text = json_string_field(req.body(), "key");
        auto key = text ? membership::decode_key(*text) : Result<membership::Key>(membership::KeyringErrc::bad_key);
        if (!key) {
          ++bad_requests;
          return error(req, http::status::bad_request, "the body must be {\"key\":\"<base64 of 32 bytes>\"}");
        }
        if (key_busy.exchange(true)) {
          ++conflicts;
          return error(req, http::status::conflict, "another key operation is running; try again");
        }
        later.kind = Deferred::key_op;
        later.op = action == "install" ? membership::KeyOp::install
                   : action == "use"   ? membership::KeyOp::use
                                       : membership::KeyOp::remove;
        later.key = *key;
        return {};
      }
    }
    constexpr std::string_view kShards = "/api/v1/shards/";
    if (path.starts_with(kShards) && path.ends_with("/history")) {
      // {type}/{shard}/history
      const auto rest = path.substr(kShards.size(), path.size() - kShards.size() - std::string_view("/history").size());
      const auto slash = rest.rfind('/');
      if (slash != std::string_view::npos && slash > 0) {
        if (!get) return wrong_method("GET");
        auto type = percent_decode(rest.substr(0, slash), false);
        if (!type) {
          ++bad_requests;
          return error(req, http::status::bad_request, "bad percent-encoding in the path");
        }
        return shard_history(req, *type, rest.substr(slash + 1));
      }
    }
    constexpr std::string_view kEntities = "/api/v1/entities/", kMembers = "/api/v1/members/";
    if (path.starts_with(kEntities)) {
      // {type}/{id}: the id is everything after the type's slash (it may hold encoded slashes).
      const auto rest = path.substr(kEntities.size());
      const auto slash = rest.find('/');
      if (slash != std::string_view::npos && slash > 0 && slash + 1 < rest.size()) {
        if (!get) return wrong_method("GET");
        auto type = percent_decode(rest.substr(0, slash), false);
        auto id = percent_decode(rest.substr(slash + 1), false);
        if (!type || !id) {
          ++bad_requests;
          return error(req, http::status::bad_request, "bad percent-encoding in the path");
        }
        return entity(req, *type, *id);
      }
    } else if (path.starts_with(kMembers)) {
      const auto rest = path.substr(kMembers.size());
      const auto slash = rest.find('/');
      const auto action = slash == std::string_view::npos ? std::string_view() : rest.substr(slash + 1);
      if (slash > 0 && (action == "leave" || action == "down" || action == "history")) {
        const bool history = action == "history";
        if (req.method() != (history ? http::verb::get : http::verb::post)) return wrong_method(history ? "GET" : "POST");
        auto name = percent_decode(rest.substr(0, slash), false);
        if (!name) {
          ++bad_requests;
          return error(req, http::status::bad_request, "bad percent-encoding in the path");
        }
        if (history) return member_history(req, *name);
        return member_action(req, *name, action == "down");
      }
    }
    return error(req, http::status::not_found, "no such resource: " + std::string(path));
  } catch (const std::exception& e) {
    ++internal_errors;
    log().error("admin: {} {}: {}", std::string(req.method_string()), std::string(target), e.what());
    return error(req, http::status::internal_server_error, "internal error");
  }
}

Response AdminServer::Impl::readyz(const Request& req) const {
  auto not_ready = [&](const std::string& why) {
    return reply(req, http::status::service_unavailable, "{\"ready\":false,\"reason\":" + json_str(why) + "}\n");
  };
  if (src.membership) {
    const auto self = src.membership->self();
    if (self.status != membership::MemberStatus::up) {
      return not_ready(std::string("this member is ") + membership::to_string(self.status) + ", not up");
    }
  }
  if (src.sharding) {
    for (const auto& [type, n] : src.entity_types) {
      const auto table = src.sharding->shards(type);
      std::size_t homed = 0;
      for (const auto& s : table) homed += s.region.empty() ? 0 : 1;
      if (table.size() != n || homed != n) {
        return not_ready("shard table of " + type + " is incomplete: " + std::to_string(homed) + " of " + std::to_string(n) +
                         " shards have a region");
      }
    }
  }
  return reply(req, http::status::ok, "{\"ready\":true}\n");
}

std::string AdminServer::Impl::metrics() const {
  MetricsText m(src.system->node_id());
  {
    const auto s = src.system->stats();
    m.counter("troupe_actor_spawned", "Actors spawned.", s.actors_spawned);
    m.counter("troupe_actor_stopped", "Actors stopped.", s.actors_stopped);
    m.gauge("troupe_actor_live", "Live actors, guardians included.", s.actors_live);
    m.counter("troupe_actor_dead_letters", "Messages that could not be delivered.", s.dead_letters);
    m.counter("troupe_actor_failures", "Exceptions thrown by actors.", s.failures);
    m.counter("troupe_actor_restarts", "Actor restarts.", s.restarts);
    m.counter("troupe_actor_failed_messages_dropped", "Messages being processed at a failure.", s.failed_messages_dropped);
    m.counter("troupe_actor_escalations_past_user", "Failures that reached the /user guardian's parent.",
              s.escalations_past_user);
    m.counter("troupe_actor_callback_failures", "Ask reply callbacks that threw.", s.callback_failures);
    m.counter("troupe_actor_lifo_rescues",
              "Actors woken by a turn that then ran long, taken over by an idle worker.", s.lifo_rescues);
  }
  if (src.transport) {
    const auto s = src.transport->stats();
#define TROUPE_C(f, help) m.counter("troupe_remoting_" #f, help, s.f)
#define TROUPE_G(f, help) m.gauge("troupe_remoting_" #f, help, s.f)
    TROUPE_C(frames_out, "Frames sent.");
    TROUPE_C(frames_in, "Frames received.");
    TROUPE_C(bytes_out, "Bytes sent.");
    TROUPE_C(bytes_in, "Bytes received.");
    TROUPE_C(messages_out, "Messages sent.");
    TROUPE_C(messages_in, "Messages received.");
    TROUPE_C(dropped_queue_full, "Outbound messages dropped: the peer's queue was full.");
    TROUPE_C(dropped_node_lost, "Outbound messages dropped: the incarnation is gone.");
    TROUPE_C(dropped_no_peer_key, "Outbound messages dropped: no CURVE key for the peer.");
    TROUPE_C(dropped_key_revoked, "Outbound messages dropped: the peer's key was removed from the allow-list.");
    TROUPE_C(dropped_stopped, "Outbound messages dropped: the transport stopped.");
    TROUPE_C(dropped_send_failed, "Outbound messages dropped: ZeroMQ refused the frame.");
    TROUPE_C(dropped_oversized, "Outbound messages dropped: larger than a frame may be.");
    TROUPE_C(frames_malformed, "Inbound frames dropped as malformed.");
    TROUPE_C(frames_oversized, "Inbound frames dropped as oversized.");
    TROUPE_C(frames_wrong_node, "Inbound frames meant for another incarnation.");
    TROUPE_C(frames_from_lost_node, "Inbound frames from an incarnation declared lost.");
    TROUPE_C(frames_origin_mismatch, "Inbound frames whose origin does not match the peer's key.");
    TROUPE_C(envelopes_unknown_type, "Inbound envelopes of an unknown message type.");
    TROUPE_C(envelopes_bad_payload, "Inbound envelopes with a bad payload.");
    TROUPE_C(envelopes_bad_path, "Inbound envelopes with a bad actor path.");
    TROUPE_C(envelopes_no_recipient, "Inbound envelopes for no actor (dead letters).");
    TROUPE_C(envelopes_forged_sender,
             "Inbound protocol messages whose sender is not an actor of the node that sent them.");
    TROUPE_C(terminated_unsolicited, "Terminated notices no local watch asked for.");
    TROUPE_C(terminated_resent, "Terminated notices for a remote watcher sent again after the first was dropped.");
    TROUPE_C(frames_key_revoked, "Inbound frames from a key removed from the allow-list.");
    TROUPE_C(handshakes_failed, "CURVE/ZAP handshake failures.");
    TROUPE_C(zap_refused, "ZAP denials.");
    TROUPE_C(disconnects, "Connections broken.");
    TROUPE_C(nodes_lost, "Remote incarnations declared lost.");
    TROUPE_C(wakeups, "Times a sender had to wake the sleeping remoting I/O thread.");
    TROUPE_C(io_errors, "Exceptions caught on the remoting I/O thread.");
    TROUPE_G(peers, "Remote incarnations known.");
    TROUPE_G(queued, "Messages waiting to be sent, all peers.");
    TROUPE_G(remote_watches, "Local watchers of remote actors.");
#undef TROUPE_C
#undef TROUPE_G
  }
  if (src.membership) {
    const auto s = src.membership->stats();
#define TROUPE_C(f, help) m.counter("troupe_membership_" #f, help, s.f)
    TROUPE_C(packets_in, "Gossip packets received.");
    TROUPE_C(packets_out, "Gossip packets sent.");
    TROUPE_C(probes, "SWIM probes.");
    TROUPE_C(probe_failures, "SWIM probes without an ack.");
    TROUPE_C(indirect_probes, "Indirect probes.");
    TROUPE_C(nacks_received, "Nacks received.");
    TROUPE_C(suspicions, "Members suspected.");
    TROUPE_C(refutations, "Suspicions of this node refuted.");
    TROUPE_C(unreachable_declared, "Members declared unreachable.");
    TROUPE_C(port_refusals, "ICMP port unreachable from a member's gossip endpoint.");
    TROUPE_C(updates_sent, "Membership updates sent.");
    TROUPE_C(updates_received, "Membership updates received.");
    TROUPE_C(push_pulls, "Push-pull state exchanges.");
    TROUPE_C(repairs, "Push-pulls started because two stable views differed.");
    TROUPE_C(malformed, "Packets that are not verifiable gossip.");
    TROUPE_C(wrong_version, "Packets of another protocol version.");
    TROUPE_C(unknown_body, "Packets with a body type this version does not know.");
    TROUPE_C(rejected_records, "Member records rejected.");
    TROUPE_C(misdirected, "Pings meant for another incarnation.");
    TROUPE_C(stale, "Answers nobody waited for.");
    TROUPE_C(subscriber_failures, "Exceptions from membership event subscribers (the others still heard).");
    TROUPE_C(forgotten_records, "Records of members removed long ago, ignored.");
    TROUPE_C(forgotten_corrected, "Members told that a member they still gossip was removed long ago.");
    TROUPE_C(records_too_large, "Times a member record too large for any gossip datagram was left out.");
    TROUPE_C(forgotten_told, "Members removed long ago that talked, told they are down.");
#undef TROUPE_C
    m.gauge("troupe_membership_local_health", "Lifeguard local health multiplier (0: healthy).", s.local_health);
    m.histogram("troupe_membership_detection_seconds",
                "From this node's first suspicion of a member to declaring it unreachable.", s.detection);
    m.histogram("troupe_membership_downing_seconds",
                "From a member ceasing to be alive here (suspected or refused) to its downing.", s.downing);
    const auto u = src.membership->transport_stats();
#define TROUPE_C(f, help) m.counter("troupe_gossip_udp_" #f, help, u.f)
    TROUPE_C(sent, "Datagrams handed to the kernel.");
    TROUPE_C(delivered, "Opened datagrams given to the protocol.");
    m.counter("troupe_gossip_udp_dropped_inbound", "Inbound datagrams not delivered (every reason).", u.dropped_inbound());
    TROUPE_C(truncated, "Inbound datagrams larger than the limit.");
    TROUPE_C(unhandled, "Opened datagrams without a handler.");
    TROUPE_C(receive_errors, "Socket errors while receiving.");
    TROUPE_C(handler_failures, "Exceptions from the protocol's handlers and timers (the gossip thread carried on).");
    TROUPE_C(oversized_outbound, "Outbound payloads over the limit.");
    TROUPE_C(seal_failures, "Outbound datagrams whose sealing failed.");
    TROUPE_C(resolve_errors, "Datagrams dropped: their destination host name did not resolve.");
    TROUPE_C(resolutions, "Destination host name lookups started.");
    TROUPE_C(send_errors, "Socket errors while sending.");
    TROUPE_C(port_unreachable, "ICMP port unreachable for datagrams sent.");
    TROUPE_C(icmp_other, "Other ICMP errors for datagrams sent.");
#undef TROUPE_C
    std::map<std::string, std::uint64_t> by_status;
    for (auto st : {membership::MemberStatus::joining, membership::MemberStatus::up, membership::MemberStatus::leaving,
                    membership::MemberStatus::exiting, membership::MemberStatus::down, membership::MemberStatus::removed}) {
      by_status[membership::to_string(st)] = 0;
    }
    std::uint64_t unreachable = 0;
    for (const auto& mi : src.membership->members()) {
      ++by_status[membership::to_string(mi.status)];
      unreachable += mi.liveness == membership::Liveness::unreachable ? 1 : 0;
    }
    m.family("troupe_membership_members", "gauge", "Members this node knows, by status.");
    for (const auto& [st, n] : by_status) m.sample("troupe_membership_members", "status=\"" + st + "\"", n);
    m.gauge("troupe_membership_unreachable_members", "Members this node sees as unreachable.", unreachable);
  }
  if (src.sharding) {
    const auto s = src.sharding->stats();
#define TROUPE_C(f, help) m.counter("troupe_sharding_" #f, help, s.f)
    TROUPE_C(routed, "Messages handed to an entity.");
    TROUPE_C(front_door, "Messages from another node handed straight to a running entity (region front door).");
    TROUPE_C(activations, "Entities started.");
    TROUPE_C(passivations, "Entities stopped when idle or on request.");
    TROUPE_C(buffered, "Messages that waited (passivating entity, moving shard).");
    TROUPE_C(unknown_type, "Messages refused: no region for the entity type.");
    TROUPE_C(bad_id, "Messages refused: empty or over-long entity id.");
    TROUPE_C(start_failed, "Messages refused: the entity could not be started (its constructor threw).");
    TROUPE_C(forwarded, "Messages sent to another node's region.");
    TROUPE_C(rerouted, "Messages for a shard this node does not own, passed on.");
    TROUPE_C(stale_epoch, "Messages stamped with an older epoch than the owner's.");
    TROUPE_C(unavailable, "Messages refused with ShardUnavailable.");
    TROUPE_C(dropped_no_sender, "Messages refused with no sender to tell.");
    TROUPE_C(handoffs, "Shards stopped here for a handoff.");
    TROUPE_C(handoffs_called_off, "Handoffs called off: a new coordinator's table kept the shard here.");
    TROUPE_C(fenced, "Shards stopped at once (allocated elsewhere, or self downed).");
    TROUPE_C(suspended, "Shards suspended while this node was in a minority.");
    TROUPE_C(taken_back, "Messages queued for entities stopped at once when this node was in a minority, kept in the shard's buffer.");
    TROUPE_C(states_restored, "Entity states restored after a handoff.");
    TROUPE_C(tables_applied, "Shard tables applied.");
    TROUPE_C(stale_coordinator, "Coordinator messages from a node that is not the coordinator.");
    TROUPE_C(malformed, "Sharding protocol messages that do not add up.");
    TROUPE_C(rebalances, "Handoffs started by this node's coordinator.");
    TROUPE_C(allocations, "Shards allocated by this node's coordinator.");
    TROUPE_C(deduplicated, "Keyed messages answered from the reply cache.");
    TROUPE_C(retries, "Ask attempts after the first.");
#undef TROUPE_C
    m.gauge("troupe_sharding_live_entities", "Entities running on this node.", s.live_entities);
    m.gauge("troupe_sharding_shards_hosted", "Shards hosted on this node.", s.shards_hosted);
    m.histogram("troupe_sharding_handoff_seconds",
                "Handoffs decided by this node's coordinator: from the shard marked moving to its new owner.", s.handoff_time);
    m.histogram("troupe_sharding_reallocation_seconds",
                "Shards of downed members: from the downing to a new home (this node's coordinator).", s.reallocation_time);
    if (!src.entity_types.empty()) {
      m.family("troupe_sharding_shards_without_region", "gauge", "Shards of an entity type with no home in this node's table.");
      for (const auto& [type, n] : src.entity_types) {
        const auto table = src.sharding->shards(type);
        std::uint64_t homed = 0;
        for (const auto& si : table) homed += si.region.empty() ? 0 : 1;
        m.sample("troupe_sharding_shards_without_region", "type=\"" + label_value(type) + "\"", n - std::min<std::uint64_t>(n, homed));
      }
    }
  }
#define TROUPE_C(f, help) m.counter("troupe_admin_" #f, help, f.load())
  TROUPE_C(connections, "Admin connections accepted.");
  TROUPE_C(connections_refused, "Admin connections closed on accept (too many open).");
  TROUPE_C(requests, "Admin requests answered.");
  TROUPE_C(bad_requests, "Admin requests unparsable or over a size limit.");
  TROUPE_C(timeouts, "Admin connections closed by the read timeout.");
  TROUPE_C(unauthorized, "Admin writes with a missing or wrong token.");
  TROUPE_C(forbidden, "Admin writes refused: no token configured.");
  TROUPE_C(not_found, "Admin requests for an unknown resource.");
  TROUPE_C(method_not_allowed, "Admin requests with a wrong method.");
  TROUPE_C(internal_errors, "Admin requests whose handler failed.");
  TROUPE_C(conflicts, "Admin requests refused by the state: a key operation running, a member no longer live.");
  TROUPE_C(event_streams, "Admin event streams opened.");
  TROUPE_C(event_streams_refused, "Admin event streams refused: max_event_streams were open.");
  TROUPE_C(events_sent, "Events queued to admin event stream clients.");
  TROUPE_C(slow_clients_dropped, "Admin event stream clients dropped: too far behind or stuck.");
#undef TROUPE_C
  m.gauge("troupe_admin_event_streams_open", "Admin event streams open.", stream_count.load());
  return m.take();
}

std::string AdminServer::Impl::members_json() const {
  const auto self_uid = src.membership->self().uid;
  const auto leader = src.membership->leader();
  std::string out = "[";
  bool first = true;
  for (const auto& mi : src.membership->members()) {
    if (!first) out += ',';
    first = false;
    out += "{\"name\":" + json_str(mi.name) + ",\"uid\":\"" + hex16(mi.uid) + "\",\"gossip\":" + json_str(mi.gossip.to_string()) +
           ",\"remoting\":" + json_str(mi.remoting) + ",\"status\":\"" + membership::to_string(mi.status) +
           "\",\"liveness\":\"" + membership::to_string(mi.liveness) + "\",\"up_order\":" + std::to_string(mi.up_order) +
           ",\"incarnation\":" + std::to_string(mi.incarnation) + ",\"degraded\":" + (mi.degraded ? "true" : "false") +
           ",\"self\":" + (mi.uid == self_uid ? "true" : "false") +
           ",\"leader\":" + (leader && leader->uid == mi.uid ? "true" : "false") + ",\"roles\":[";
    for (std::size_t i = 0; i < mi.roles.size(); ++i) out += (i ? "," : "") + json_str(mi.roles[i]);
    out += "]}";
  }
  return out + "]\n";
}

std::string AdminServer::Impl::type_json(const std::string& type, std::uint32_t num_shards) const {
  const auto table = src.sharding->shards(type);
  std::map<std::string, std::uint64_t> per_region;
  std::uint64_t unallocated = num_shards > table.size() ? num_shards - table.size() : 0;
  std::string shards = "[";
  bool first = true;
  for (const auto& s : table) {
    if (!first) shards += ',';
    first = false;
    if (s.region.empty()) ++unallocated;
    else ++per_region[s.region];
    shards += "{\"shard\":" + std::to_string(s.shard) + ",\"region\":" + (s.region.empty() ? "null" : json_str(s.region)) +
              ",\"epoch\":" + std::to_string(s.epoch) + ",\"moving\":" + (s.moving ? "true" : "false") +
              ",\"hosted_here\":" + (s.hosted_here ? "true" : "false") + "}";
  }
  shards += "]";
  std::string regions = "{";
  first = true;
  for (const auto& [r, n] : per_region) {
    if (!first) regions += ',';
    first = false;
    regions += json_str(r) + ":" + std::to_string(n);
  }
  regions += "}";
  return "{\"num_shards\":" + std::to_string(num_shards) + ",\"unallocated\":" + std::to_string(unallocated) +
         ",\"regions\":" + regions + ",\"shards\":" + shards + "}";
}

Response AdminServer::Impl::shards(const Request& req, std::string_view query) const {
  if (!src.sharding) return error(req, http::status::not_found, "sharding is not running");
  std::string body = "{";
  bool first = true;
  auto add = [&](const std::string& type, std::uint32_t n) {
    if (!first) body += ',';
    first = false;
    body += json_str(type) + ":" + type_json(type, n);
  };
  std::optional<std::string> t;
  if (!query_param(query, "type", t)) {
    ++bad_requests;
    return error(req, http::status::bad_request, "bad percent-encoding in the query (type)");
  }
  if (t) {
    const auto* known = find_type(*t);
    if (!known) return error(req, http::status::not_found, "unknown entity type: " + *t);
    add(known->first, known->second);
  } else {
    for (const auto& [type, n] : src.entity_types) add(type, n);
  }
  return reply(req, http::status::ok, body + "}\n");
}

Response AdminServer::Impl::entity(const Request& req, const std::string& type, const std::string& id) const {
  const auto* known = src.sharding ? find_type(type) : nullptr;
  if (!known) return error(req, http::status::not_found, "unknown entity type: " + type);
  const auto shard = sharding::shard_of(type, id, known->second);
  std::string region = "null", epoch = "0", moving = "false", here = "false";
  for (const auto& s : src.sharding->shards(type)) {
    if (s.shard != shard) continue;
    if (!s.region.empty()) region = json_str(s.region);
    epoch = std::to_string(s.epoch);
    moving = s.moving ? "true" : "false";
    here = s.hosted_here ? "true" : "false";
  }
  return reply(req, http::status::ok,
               "{\"type\":" + json_str(type) + ",\"id\":" + json_str(id) + ",\"shard\":" + std::to_string(shard) +
                   ",\"num_shards\":" + std::to_string(known->second) + ",\"region\":" + region + ",\"epoch\":" + epoch +
                   ",\"moving\":" + moving + ",\"hosted_here\":" + here + "}\n");
}

std::optional<Response> AdminServer::Impl::check_token(const Request& req) {
  if (opt.token.empty()) {
    ++forbidden;
    return error(req, http::status::forbidden, "writes are disabled: no admin token is configured");
  }
  const auto auth = req[http::field::authorization];
  constexpr std::string_view kBearer = "Bearer ";
  const std::string_view given(auth.data(), auth.size());
  if (!given.starts_with(kBearer) || !same_secret(given.substr(kBearer.size()), opt.token)) {
    ++unauthorized;
    auto res = error(req, http::status::unauthorized, "a valid bearer token is required");
    res.set(http::field::www_authenticate, "Bearer");
    return res;
  }
  return std::nullopt;
}

Response AdminServer::Impl::member_action(const Request& req, const std::string& name, bool down) {
  if (auto refused = check_token(req)) return *refused;
  if (!src.membership) return error(req, http::status::not_found, "membership is not running");
  const auto members = src.membership->members();
  const bool known = std::any_of(members.begin(), members.end(), [&](const auto& m) { return m.name == name; });
  if (!known) return error(req, http::status::not_found, "unknown member: " + name);
  if (!(down ? src.membership->down(name) : src.membership->leave(name))) {
    // Listed, but no longer live: down already, or removed.
    ++conflicts;
    return error(req, http::status::conflict, "member " + name + " is no longer live (down or removed): nothing to " +
                                                  (down ? "down" : "leave"));
  }
  log().warn("admin: {} {} requested over HTTP", down ? "down" : "leave", name);
  return reply(req, http::status::accepted,
               "{\"member\":" + json_str(name) + ",\"action\":\"" + (down ? "down" : "leave") + "\"}\n");
}

Response AdminServer::Impl::member_history(const Request& req, const std::string& name) {
  if (!src.membership) return error(req, http::status::not_found, "membership is not running");
  const auto decisions = src.membership->history(name);
  const auto members = src.membership->members();
  if (decisions.empty() && std::none_of(members.begin(), members.end(), [&](const auto& m) { return m.name == name; })) {
    return error(req, http::status::not_found, "unknown member: " + name);
  }
  const auto now = mono_now_ms();
  std::string out = "{\"member\":" + json_str(name) + ",\"node\":" + json_str(src.membership->self().name) +
                    ",\"now_ms\":" + std::to_string(now) + ",\"decisions\":[";
  bool first = true;
  for (const auto& d : decisions) {
    if (!first) out += ',';
    first = false;
    out += "{\"at_ms\":" + std::to_string(mono_ms(d.at)) + ",\"age_ms\":" + std::to_string(now - mono_ms(d.at)) +
           ",\"what\":" + json_str(d.what) + "}";
  }
  return reply(req, http::status::ok, out + "]}\n");
}

Response AdminServer::Impl::shard_history(const Request& req, const std::string& type, std::string_view shard_text) {
  const auto* known = src.sharding ? find_type(type) : nullptr;
  if (!known) {
    return error(req, http::status::not_found, "unknown entity type: " + type);
  }
  sharding::ShardId shard = 0;
  const auto [end, ec] = std::from_chars(shard_text.data(), shard_text.data() + shard_text.size(), shard);
  if (ec != std::errc() || end != shard_text.data() + shard_text.size() || shard >= known->second) {
    ++bad_requests;
    return error(req, http::status::bad_request,
                 "bad shard number '" + std::string(shard_text) + "': " + type + " has shards 0.." + std::to_string(known->second - 1));
  }
  std::string owner = "null", epoch = "0", moving = "false";
  for (const auto& s : src.sharding->shards(type)) {
    if (s.shard != shard) continue;
    if (!s.region.empty()) owner = json_str(s.region);
    epoch = std::to_string(s.epoch);
    moving = s.moving ? "true" : "false";
  }
  // The active coordinator by name (this node records only what its own coordinator decided).
  std::string coordinator = "null";
  bool here = false;
  if (const auto c = src.sharding->coordinator(); c && src.membership) {
    here = src.membership->self().uid == c;
    for (const auto& m : src.membership->members()) {
      if (m.uid == c) coordinator = json_str(m.name);
    }
  }
  const auto now = std::chrono::steady_clock::now();
  std::string out = "{\"type\":" + json_str(type) + ",\"shard\":" + std::to_string(shard) + ",\"region\":" + owner +
                    ",\"epoch\":" + epoch + ",\"moving\":" + moving + ",\"coordinator\":" + coordinator +
                    ",\"active_here\":" + (here ? "true" : "false") + ",\"moves\":[";
  bool first = true;
  for (const auto& mv : src.sharding->shard_history(type, shard)) {
    if (!first) out += ',';
    first = false;
    out += "{\"at_ms\":" + std::to_string(mono_ms(mv.at.time_since_epoch())) + ",\"age_ms\":" +
           std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(now - mv.at).count()) +
           ",\"from\":" + (mv.from.empty() ? "null" : json_str(mv.from)) + ",\"to\":" + (mv.to.empty() ? "null" : json_str(mv.to)) +
           ",\"epoch\":" + std::to_string(mv.epoch) + ",\"reason\":\"" + sharding::to_string(mv.reason) + "\"}";
  }
  return reply(req, http::status::ok, out + "]}\n");
}

Response AdminServer::Impl::keys(const Request& req) const {
  if (!src.membership) return error(req, http::status::not_found, "membership is not running");
  const auto& ring = src.membership->keyring();
  const auto primary = membership::key_id(ring->primary());
  std::string out = "{\"primary\":\"" + key_id_hex(primary) + "\",\"keys\":[";
  bool first = true;
  for (const auto& k : ring->keys()) {  // ids only: key bytes never leave the node
    const auto id = membership::key_id(k);
    if (!first) out += ',';
    first = false;
    out += "{\"id\":\"" + key_id_hex(id) + "\",\"primary\":" + (id == primary ? "true" : "false") + "}";
  }
  return reply(req, http::status::ok, out + "]}\n");
}

void AdminServer::Impl::run_key_op(const Request& req, const Deferred& d, std::function<void(Response)> done) {
  if (key_worker.joinable()) key_worker.join();  // the previous one has finished (key_busy was false)
  const auto id = key_id_hex(membership::key_id(d.key));
  log().warn("admin: keyring {} of key {} requested over HTTP", membership::to_string(d.op), id);
  key_worker = std::thread([this, req, d, id, done = std::move(done)]() mutable {
    Response res;
    try {
      const auto r = src.membership->key_operation(d.op, d.key, opt.key_timeout);
      auto names = [](const std::vector<std::string>& v) {
        std::string o = "[";
        for (const auto& n : v) o += (o.size() > 1 ? "," : "") + json_str(n);
        return o + "]";
      };
      std::string failed = "[";
      for (const auto& [member, why] : r.failed) {
        failed += (failed.size() > 1 ? "," : "") + std::string("{\"member\":") + json_str(member) + ",\"error\":" + json_str(why) + "}";
      }
      failed += "]";
      if (!r.ok()) {
        log().warn("admin: keyring {} of key {}: {} failed, {} did not answer", membership::to_string(d.op), id,
                   r.failed.size(), r.missing.size());
      }
      res = reply(req, r.ok() ? http::status::ok : http::status::bad_gateway,
                  "{\"op\":\"" + std::string(membership::to_string(d.op)) + "\",\"key_id\":\"" + id + "\",\"ok\":" +
                      (r.ok() ? "true" : "false") + ",\"confirmed\":" + names(r.confirmed) + ",\"failed\":" + failed +
                      ",\"missing\":" + names(r.missing) + "}\n");
    } catch (const std::exception& e) {
      ++internal_errors;
      log().error("admin: keyring {}: {}", membership::to_string(d.op), e.what());
      res = error(req, http::status::internal_server_error, "internal error");
    }
    key_busy = false;
    post([done = std::move(done), res = std::move(res)]() mutable { done(std::move(res)); });
  });
}

void AdminServer::Impl::add_stream(std::shared_ptr<Session> s) {
  streams.push_back(std::move(s));
  if (streams.size() == 1) {
    next_heartbeat = std::chrono::steady_clock::now() + opt.event_heartbeat;
    // Tables as they are now: only later changes are streamed.
    table_digest.clear();
    stream_tick();
  }
}

void AdminServer::Impl::remove_stream(const Session* s) {
  auto it = std::find_if(streams.begin(), streams.end(), [&](const auto& p) { return p.get() == s; });
  if (it != streams.end()) streams.erase(it);
}

void AdminServer::Impl::broadcast(const std::string& frame) {
  const auto copy = streams;  // push() may drop a client, and so change `streams`
  for (const auto& s : copy) s->push(frame);
  events_sent += copy.size();
}

/// Every second while anyone streams: a summary of each entity type whose table changed (the
/// first tick only records them), and the heartbeat comment when due.
void AdminServer::Impl::stream_tick() {
  if (streams.empty()) return;
  if (src.sharding) {
    for (const auto& [type, n] : src.entity_types) {
      const auto table = src.sharding->shards(type);
      std::uint64_t digest = 1469598103934665603ull, moving = 0;
      std::map<std::string, std::uint64_t> per_region;
      for (const auto& si : table) {
        for (auto v : {std::hash<std::string>{}(si.region), std::size_t(si.epoch), std::size_t(si.moving)}) {
          digest = (digest ^ v) * 1099511628211ull;
        }
        moving += si.moving ? 1 : 0;
        if (!si.region.empty()) ++per_region[si.region];
      }
      auto [it, fresh] = table_digest.try_emplace(type, digest);
      if (fresh || it->second == digest) continue;
      it->second = digest;
      std::string regions = "{";
      for (const auto& [r, k] : per_region) regions += (regions.size() > 1 ? "," : "") + json_str(r) + ":" + std::to_string(k);
      broadcast("data: {\"event\":\"shards\",\"type\":" + json_str(type) + ",\"num_shards\":" + std::to_string(n) +
                ",\"moving\":" + std::to_string(moving) + ",\"regions\":" + regions + "},\"at_ms\":" +
                std::to_string(mono_now_ms()) + "}\n\n");
    }
  }
  if (std::chrono::steady_clock::now() >= next_heartbeat) {
    next_heartbeat = std::chrono::steady_clock::now() + opt.event_heartbeat;
    broadcast(": keep-alive\n\n");
  }
  if (streams.empty()) return;
  stream_timer->expires_after(std::chrono::seconds(1));
  stream_timer->async_wait([this](beast::error_code ec) {
    if (!ec) stream_tick();
  });
}

AdminServer::AdminServer(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}

AdminServer::~AdminServer() { stop(); }

Result<std::unique_ptr<AdminServer>> AdminServer::start(AdminOptions options, AdminSources sources) {
  auto impl = std::make_shared<Impl>();
  impl->opt = std::move(options);
  impl->src = std::move(sources);
  auto& log = impl->log();
  boost::system::error_code ec;
  tcp::resolver resolver(*impl->ioc);
  const auto found = resolver.resolve(impl->opt.bind_host, std::to_string(impl->opt.port),
                                      tcp::resolver::passive | tcp::resolver::numeric_service, ec);
  if (ec || found.empty()) {
    log.error("admin: cannot resolve {}: {}", impl->opt.bind_host, ec.message());
    return make_error_code(std::errc::invalid_argument);
  }
  const auto endpoint = found.begin()->endpoint();
  impl->acceptor = std::make_unique<tcp::acceptor>(*impl->ioc);
  impl->acceptor->open(endpoint.protocol(), ec);
  if (!ec) impl->acceptor->set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) impl->acceptor->bind(endpoint, ec);
  if (!ec) impl->acceptor->listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    log.error("admin: cannot listen on {}:{}: {}", impl->opt.bind_host, impl->opt.port, ec.message());
    return std::error_code(ec.value(), std::system_category());
  }
  impl->port = impl->acceptor->local_endpoint().port();
  impl->retry = std::make_unique<asio::steady_timer>(*impl->ioc);
  impl->stream_timer = std::make_unique<asio::steady_timer>(*impl->ioc);
  impl->accept();
  if (impl->src.membership) {
    // Events arrive on the gossip I/O thread: formatted there (only while someone streams),
    // handed to the admin thread. The service outlives no subscription, so the server is weak.
    impl->src.membership->subscribe([w = std::weak_ptr<Impl>(impl)](const membership::MembershipEvent& e) {
      auto i = w.lock();
      if (!i || i->stream_count.load() == 0) return;
      i->post([i = i.get(), frame = "data: " + event_json(e) + "\n\n"] { i->broadcast(frame); });
    });
  }
  impl->thread = std::thread([i = impl.get()] {
    for (;;) {
      try {
        i->ioc->run();
        return;
      } catch (const std::exception& e) {
        // One bad request must never take the server down.
        ++i->internal_errors;
        i->log().error("admin: {}", e.what());
      }
    }
  });
  log.info("admin: listening on {}:{}", impl->opt.bind_host, impl->port);
  return std::unique_ptr<AdminServer>(new AdminServer(std::move(impl)));
}

void AdminServer::stop() {
  if (!impl_) return;
  std::lock_guard lk(impl_->stop_mu);
  if (impl_->stopped) return;
  impl_->stopped = true;
  {
    std::lock_guard plk(impl_->post_mu);
    impl_->accepting = false;
  }
  impl_->ioc->stop();
  if (impl_->thread.joinable()) impl_->thread.join();
  if (impl_->key_worker.joinable()) impl_->key_worker.join();  // at most key_timeout
  // Closes the port, then every connection (their sessions go with the pending handlers).
  impl_->streams.clear();
  impl_->stream_timer.reset();
  impl_->retry.reset();
  impl_->acceptor.reset();
  impl_->ioc.reset();
}

std::uint16_t AdminServer::port() const noexcept { return impl_->port; }

AdminStats AdminServer::stats() const {
  const auto& i = *impl_;
  AdminStats s;
  s.connections = i.connections.load();
  s.connections_refused = i.connections_refused.load();
  s.requests = i.requests.load();
  s.bad_requests = i.bad_requests.load();
  s.timeouts = i.timeouts.load();
  s.unauthorized = i.unauthorized.load();
  s.forbidden = i.forbidden.load();
  s.not_found = i.not_found.load();
  s.method_not_allowed = i.method_not_allowed.load();
  s.internal_errors = i.internal_errors.load();
  s.conflicts = i.conflicts.load();
  s.event_streams = i.event_streams.load();
  s.event_streams_refused = i.event_streams_refused.load();
  s.events_sent = i.events_sent.load();
  s.slow_clients_dropped = i.slow_clients_dropped.load();
  return s;
}

}  // namespace troupe::node
