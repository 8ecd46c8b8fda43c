// troupectl: the operator's tool, against any node's admin HTTP port (node/src/admin.cpp).
//
//   troupectl [--admin HOST:PORT] [--token T] [--json] [--timeout MS] COMMAND
//     members                     the members as this node sees them
//     shards [--type T]           shards per node and entity type (with --type: every shard)
//     locate TYPE ID              the shard and owner of one entity
//     leave NODE | down NODE      ask NODE to leave / declare it down (token)
//     why NODE                    this node's membership decisions about NODE
//     shard history TYPE SHARD    the moves of one shard (ask the active coordinator's node)
//     keys list|install|use|remove [KEY]   the gossip keyring, cluster-wide (token for changes)
//     keygen [--dir DIR --name N] a CURVE key pair and a gossip key (no server needed)
//     watch [--count N]           membership events and shard table changes as they happen
//
// --admin defaults to $TROUPECTL_ADMIN or 127.0.0.1:7948, --token to $TROUPE_ADMIN_TOKEN.
// Tables by default, the server's JSON with --json. Exit 0 on success, 1 on an error (the
// message says what to do), 2 on a usage error.

#include <algorithm>
#include <cctype>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include <CLI/CLI.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <troupe/membership/keyring.hpp>
#include <troupe/remoting/security.hpp>

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

/// An error for the operator: printed as "troupectl: <what>", exit 1.
struct Failure {
  std::string what;
};

// ---- a small JSON reader (the admin API's answers) ----

struct Json {
  using Object = std::vector<std::pair<std::string, Json>>;
  using Array = std::vector<Json>;
  std::variant<std::nullptr_t, bool, double, std::string, Array, Object> v;

  const Json& operator[](std::string_view key) const {
    static const Json null{};
    if (const auto* o = std::get_if<Object>(&v)) {
      for (const auto& [k, j] : *o) {
        if (k == key) return j;
      }
    }
    return null;
  }
  const Array& items() const {
    static const Array none;
    const auto* a = std::get_if<Array>(&v);
    return a ? *a : none;
  }
  const Object& members() const {
    static const Object none;
    const auto* o = std::get_if<Object>(&v);
    return o ? *o : none;
  }
  std::string str(std::string_view dflt = "-") const {
    if (const auto* s = std::get_if<std::string>(&v)) return *s;
    if (const auto* d = std::get_if<double>(&v)) return num_text(*d);
    if (const auto* b = std::get_if<bool>(&v)) return *b ? "true" : "false";
    return std::string(dflt);
  }
  double num() const {
    const auto* d = std::get_if<double>(&v);
    return d ? *d : 0;
  }
  bool flag() const {
    const auto* b = std::get_if<bool>(&v);
    return b && *b;
  }
  bool null() const { return std::holds_alternative<std::nullptr_t>(v); }
  static std::string num_text(double d) {
    char buf[32];
    std::snprintf(buf, sizeof buf, d == static_cast<double>(static_cast<long long>(d)) ? "%.0f" : "%g", d);
    return buf;
  }
};

class JsonParser {
 public:
  explicit JsonParser(std::string_view s) : s_(s) {}
  std::optional<Json> parse() {
    auto j = value(0);
    ws();
    if (!j || i_ != s_.size()) return std::nullopt;
    return j;
  }

 private:
  void ws() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\n' || s_[i_] == '\r' || s_[i_] == '\t')) ++i_;
  }
  bool lit(std::string_view w) {
    if (s_.substr(i_, w.size()) != w) return false;
    i_ += w.size();
    return true;
  }
  std::optional<std::string> string() {
    if (i_ >= s_.size() || s_[i_] != '"') return std::nullopt;
    std::string out;
    for (++i_; i_ < s_.size(); ++i_) {
      char c = s_[i_];
      if (c == '"') {
        ++i_;
        return out;
      }
      if (c != '\\') {
        out.push_back(c);
        continue;
      }
      if (++i_ >= s_.size()) return std::nullopt;
      switch (s_[i_]) {
        case 'n': out.push_back('\n'); break;
        case 't': out.push_back('\t'); break;
        case 'r': out.push_back('\r'); break;
        case 'b': out.push_back('\b'); break;
        case 'f': out.push_back('\f'); break;
        case 'u': {
          unsigned cp = 0;
          if (i_ + 4 >= s_.size() || std::from_chars(s_.data() + i_ + 1, s_.data() + i_ + 5, cp, 16).ptr != s_.data() + i_ + 5) {
            return std::nullopt;
          }
          i_ += 4;
          if (cp < 0x80) {
            out.push_back(static_cast<char>(cp));
          } else if (cp < 0x800) {
            out.push_back(static_cast<char>(0xc0 | (cp >> 6)));
            out.push_back(static_cast<char>(0x80 | (cp & 0x3f)));
          } else {  // surrogates are not expected from the admin API; kept as they come
            out.push_back(static_cast<char>(0xe0 | (cp >> 12)));
            out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3f)));
            out.push_back(static_cast<char>(0x80 | (cp & 0x3f)));
          }
          break;
        }
        default: out.push_back(s_[i_]);
      }
    }
    return std::nullopt;
  }
  std::optional<Json> value(int depth) {
    if (depth > 64) return std::nullopt;
    ws();
    if (i_ >= s_.size()) return std::nullopt;
    const char c = s_[i_];
    if (c == '{') {
      ++i_;
      Json::Object o;
      ws();
      if (i_ < s_.size() && s_[i_] == '}') {
        ++i_;
        return Json{std::move(o)};
      }
      for (;;) {
        ws();
        auto k = string();
        ws();
        if (!k || i_ >= s_.size() || s_[i_++] != ':') return std::nullopt;
        auto v = value(depth + 1);
        if (!v) return std::nullopt;
        o.emplace_back(std::move(*k), std::move(*v));
        ws();
        if (i_ < s_.size() && s_[i_] == ',') {
          ++i_;
          continue;
        }
        if (i_ >= s_.size() || s_[i_++] != '}') return std::nullopt;
        return Json{std::move(o)};
      }
    }
    if (c == '[') {
      ++i_;
      Json::Array a;
      ws();
      if (i_ < s_.size() && s_[i_] == ']') {
        ++i_;
        return Json{std::move(a)};
      }
      for (;;) {
        auto v = value(depth + 1);
        if (!v) return std::nullopt;
        a.push_back(std::move(*v));
        ws();
        if (i_ < s_.size() && s_[i_] == ',') {
          ++i_;
          continue;
        }
        if (i_ >= s_.size() || s_[i_++] != ']') return std::nullopt;
        return Json{std::move(a)};
      }
    }
    if (c == '"') {
      auto str = string();
      if (!str) return std::nullopt;
      return Json{std::move(*str)};
    }
    if (lit("true")) return Json{true};
    if (lit("false")) return Json{false};
    if (lit("null")) return Json{nullptr};
    const auto start = i_;
    while (i_ < s_.size() && (std::isdigit(static_cast<unsigned char>(s_[i_])) || std::string_view("+-.eE").find(s_[i_]) != std::string_view::npos)) ++i_;
    if (start == i_) return std::nullopt;
    try {
      return Json{std::stod(std::string(s_.substr(start, i_ - start)))};
    } catch (const std::exception&) {
      return std::nullopt;
    }
  }
  std::string_view s_;
  std::size_t i_ = 0;
};

Json parse_json(const std::string& body) {
  auto j = JsonParser(body).parse();
  if (!j) throw Failure{"the admin server sent something that is not JSON: " + body.substr(0, 200)};
  return *j;
}

// ---- HTTP ----

struct Options {
  std::string admin = "127.0.0.1:7948";
  std::string token;
  bool json = false;
  long timeout_ms = 10'000;
};

struct Endpoint {
  std::string host, port;
};

Endpoint split_admin(const std::string& admin) {
  const auto colon = admin.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == admin.size()) {
    throw CLI::ValidationError("--admin", "expected HOST:PORT, got '" + admin + "'");
  }
  std::string host = admin.substr(0, colon);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  return {host, admin.substr(colon + 1)};
}

std::string percent_encode(std::string_view s) {
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out.push_back(static_cast<char>(c));
    } else {
      char buf[4];
      std::snprintf(buf, sizeof buf, "%%%02X", c);
      out += buf;
    }
  }
  return out;
}

struct Reply {
  int status = 0;
  std::string body;
};

/// One connection to the admin server; every operation bounded by --timeout.
class Client {
 public:
  explicit Client(const Options& o) : opt_(o), ep_(split_admin(o.admin)), stream_(ioc_) {}

  void connect() {
    beast::error_code ec;
    tcp::resolver resolver(ioc_);
    const auto found = resolver.resolve(ep_.host, ep_.port, ec);
    if (ec) unreachable(ec);
    stream_.expires_after(timeout());
    stream_.async_connect(found, [&](beast::error_code e, const tcp::endpoint&) { ec = e; });
    run();
    if (ec) unreachable(ec);
  }
  Reply call(http::verb verb, const std::string& target, const std::string& body = {}) {
    connect();
    http::request<http::string_body> req{verb, target, 11};
    req.set(http::field::host, ep_.host);
    req.set(http::field::user_agent, "troupectl");
    if (!opt_.token.empty()) req.set(http::field::authorization, "Bearer " + opt_.token);
    if (!body.empty()) {
      req.set(http::field::content_type, "application/json");
      req.body() = body;
    }
    req.keep_alive(false);
    req.prepare_payload();
    beast::error_code ec;
    stream_.expires_after(timeout());
    http::async_write(stream_, req, [&](beast::error_code e, std::size_t) { ec = e; });
    run();
    if (ec) unreachable(ec);
    beast::flat_buffer buf;
    http::response_parser<http::string_body> res;
    res.body_limit(64u << 20);
    stream_.expires_after(timeout());
    http::async_read(stream_, buf, res, [&](beast::error_code e, std::size_t) { ec = e; });
    run();
    if (ec) unreachable(ec);
    return {static_cast<int>(res.get().result_int()), res.get().body()};
  }
  /// GET `target` as an event stream: `on_data` gets each "data:" payload until it returns false
  /// or the server closes (a Failure).
  template <class F>
  void stream(const std::string& target, F on_data) {
    connect();
    std::string req = "GET " + target + " HTTP/1.1\r\nHost: " + ep_.host + "\r\nAccept: text/event-stream\r\nUser-Agent: troupectl\r\n"
                      "Connection: close\r\n\r\n";  // an error answer then ends with the connection
    beast::error_code ec;
    stream_.expires_after(timeout());
    asio::async_write(stream_, asio::buffer(req), [&](beast::error_code e, std::size_t) { ec = e; });
    run();
    if (ec) unreachable(ec);
    std::string buf;
    bool header = true;
    char chunk[4096];
    for (;;) {
      // The header must come in time; then events come when they happen, and the server's
      // keep-alive comment at least every 15 s: three missed mean a dead connection.
      if (header) stream_.expires_after(timeout());
      else stream_.expires_after(std::chrono::seconds(45));
      std::size_t n = 0;
      stream_.async_read_some(asio::buffer(chunk), [&](beast::error_code e, std::size_t k) {
        ec = e;
        n = k;
      });
      run();
      buf.append(chunk, n);
      if (header) {
        const auto end = buf.find("\r\n\r\n");
        if (end == std::string::npos) {
          if (ec) unreachable(ec);
          continue;
        }
        const auto status_line = buf.substr(0, buf.find("\r\n"));
        int status = 0;
        if (status_line.size() > 12) std::from_chars(status_line.data() + 9, status_line.data() + 12, status);
        if (status != 200) {
          // An error answer: its body (Content-Length) follows the header.
          std::string body = buf.substr(end + 4);
          while (!ec) {
            stream_.expires_after(timeout());
            stream_.async_read_some(asio::buffer(chunk), [&](beast::error_code e, std::size_t k) {
              ec = e;
              n = k;
            });
            run();
            body.append(chunk, n);
          }
          fail_status({status, body});
        }
        buf.erase(0, end + 4);
        header = false;
        std::fprintf(stderr, "watching events from %s (Ctrl-C to stop)\n", opt_.admin.c_str());
      }
      std::size_t nl;
      while ((nl = buf.find('\n')) != std::string::npos) {
        std::string line = buf.substr(0, nl);
        buf.erase(0, nl + 1);
        if (!line.empty() && line.back() == '\r') line.pop_back();
        if (line.starts_with("data:")) {
          std::string data = line.substr(5);
          if (!data.empty() && data.front() == ' ') data.erase(0, 1);
          if (!on_data(data)) return;
        }
      }
      if (ec) throw Failure{"the event stream from " + opt_.admin + " ended: " + ec.message()};
    }
  }

  [[noreturn]] void unreachable(const beast::error_code& ec) const {
    throw Failure{"cannot reach admin at " + opt_.admin + ": " +
                  (ec == beast::error::timeout ? "timed out after " + std::to_string(opt_.timeout_ms) + " ms" : ec.message())};
  }
  /// Turns an error status into the operator's message.
  [[noreturn]] static void fail_status(const Reply& r) {
    std::string why;
    if (auto j = JsonParser(r.body).parse()) why = (*j)["error"].str("");
    if (why.empty()) why = r.body.substr(0, 200);
    switch (r.status) {
      case 401: throw Failure{"unauthorized (401): the admin token is missing or wrong; pass --token or set TROUPE_ADMIN_TOKEN"};
      case 403: throw Failure{"forbidden (403): this node accepts no admin writes; start it with --admin-token"};
      case 404: throw Failure{"not found (404): " + why};
      case 409: throw Failure{"refused (409): " + why};
      default: throw Failure{"the admin server answered " + std::to_string(r.status) + ": " + why};
    }
  }

 private:
  std::chrono::milliseconds timeout() const { return std::chrono::milliseconds(opt_.timeout_ms); }
  void run() {
    ioc_.restart();
    ioc_.run();
  }
  const Options& opt_;
  Endpoint ep_;
  asio::io_context ioc_;
  beast::tcp_stream stream_;
};

/// A request whose success is a 2xx; with --json the body is printed as it came.
Reply fetch(const Options& o, http::verb verb, const std::string& target, const std::string& body = {}) {
  Client c(o);
  auto r = c.call(verb, target, body);
  if (r.status / 100 != 2) {
    if (o.json) std::fputs(r.body.c_str(), stdout);
    Client::fail_status(r);
  }
  return r;
}

// ---- output ----

/// Aligned columns, the header first.
void print_table(const std::vector<std::vector<std::string>>& rows) {
  std::vector<std::size_t> width;
  for (const auto& r : rows) {
    width.resize(std::max(width.size(), r.size()));
    for (std::size_t i = 0; i < r.size(); ++i) width[i] = std::max(width[i], r[i].size());
  }
  for (const auto& r : rows) {
    std::string line;
    for (std::size_t i = 0; i < r.size(); ++i) {
      line += r[i];
      if (i + 1 < r.size()) line += std::string(width[i] - r[i].size() + 2, ' ');
    }
    std::printf("%s\n", line.c_str());
  }
}

std::string age(double ms) {
  char buf[32];
  if (ms < 1'000) std::snprintf(buf, sizeof buf, "%.0fms ago", ms);
  else if (ms < 120'000) std::snprintf(buf, sizeof buf, "%.1fs ago", ms / 1'000);
  else std::snprintf(buf, sizeof buf, "%.0fm ago", ms / 60'000);
  return buf;
}

/// Member names by uid, to show regions ("troupe://<uid>@host:port/...") by name.
std::map<std::string, std::string> names_by_uid(const Options& o) {
  std::map<std::string, std::string> out;
  try {
    const auto j = parse_json(fetch(o, http::verb::get, "/api/v1/members").body);
    for (const auto& m : j.items()) out[m["uid"].str()] = m["name"].str();
  } catch (const Failure&) {
    // No membership on that node: addresses it is.
  }
  return out;
}

std::string region_node(const std::string& region, const std::map<std::string, std::string>& names) {
  constexpr std::string_view kScheme = "troupe://";
  if (!region.starts_with(kScheme)) return region;
  const auto at = region.find('@');
  if (at == std::string::npos) return region;
  auto uid = region.substr(kScheme.size(), at - kScheme.size());
  if (auto it = names.find(uid); it != names.end()) return it->second;
  const auto slash = region.find('/', at);
  return region.substr(0, slash);
}

int cmd_members(const Options& o) {
  const auto r = fetch(o, http::verb::get, "/api/v1/members");
  if (o.json) return std::fputs(r.body.c_str(), stdout), 0;
  const auto j = parse_json(r.body);
  std::vector<std::vector<std::string>> rows{
      {"NAME", "STATUS", "REACHABLE", "ADDRESS", "UP_ORDER", "INCARNATION", "UID", "ROLES", "NOTES"}};
  for (const auto& m : j.items()) {
    const auto liveness = m["liveness"].str();
    std::string notes;
    for (const char* flag : {"self", "leader", "degraded"}) {
      if (m[flag].flag()) notes += (notes.empty() ? "" : ",") + std::string(flag);
    }
    std::string roles;
    for (const auto& role : m["roles"].items()) roles += (roles.empty() ? "" : ",") + role.str();
    const auto up = m["up_order"].num();
    rows.push_back({m["name"].str(), m["status"].str(), liveness == "alive" ? "yes" : liveness == "suspect" ? "suspect" : "no",
                    m["gossip"].str(), up > 0 ? Json::num_text(up) : "-", m["incarnation"].str(), m["uid"].str(),
                    roles.empty() ? "-" : roles, notes.empty() ? "-" : notes});
  }
  print_table(rows);
  return 0;
}

int cmd_shards(const Options& o, const std::string& type) {
  const auto r = fetch(o, http::verb::get, "/api/v1/shards" + (type.empty() ? "" : "?type=" + percent_encode(type)));
  if (o.json) return std::fputs(r.body.c_str(), stdout), 0;
  const auto j = parse_json(r.body);
  const auto names = names_by_uid(o);
  bool first = true;
  for (const auto& [name, t] : j.members()) {
    if (!first) std::printf("\n");
    first = false;
    std::printf("%s: %s shards, %s without a home\n", name.c_str(), t["num_shards"].str().c_str(), t["unallocated"].str().c_str());
    std::vector<std::vector<std::string>> rows{{"NODE", "SHARDS"}};
    for (const auto& [region, n] : t["regions"].members()) rows.push_back({region_node(region, names), n.str()});
    print_table(rows);
    if (type.empty()) continue;
    std::printf("\n");
    std::vector<std::vector<std::string>> shards{{"SHARD", "OWNER", "EPOCH", "STATE"}};
    for (const auto& s : t["shards"].items()) {
      const auto region = s["region"];
      shards.push_back({s["shard"].str(), region.null() ? "-" : region_node(region.str(), names), s["epoch"].str(),
                        s["moving"].flag() ? "moving" : region.null() ? "no home" : "ok"});
    }
    print_table(shards);
  }
  if (first) std::printf("no entity types on this node\n");
  return 0;
}

int cmd_locate(const Options& o, const std::string& type, const std::string& id) {
  const auto r = fetch(o, http::verb::get, "/api/v1/entities/" + percent_encode(type) + "/" + percent_encode(id));
  if (o.json) return std::fputs(r.body.c_str(), stdout), 0;
  const auto j = parse_json(r.body);
  const auto names = names_by_uid(o);
  std::printf("%s/%s: shard %s of %s, owner %s, epoch %s%s\n", type.c_str(), id.c_str(), j["shard"].str().c_str(),
              j["num_shards"].str().c_str(), j["region"].null() ? "none yet" : region_node(j["region"].str(), names).c_str(),
              j["epoch"].str().c_str(), j["moving"].flag() ? " (moving)" : "");
  return 0;
}

int cmd_member_action(const Options& o, const std::string& node, const char* action) {
  const auto r = fetch(o, http::verb::post, "/api/v1/members/" + percent_encode(node) + "/" + action);
  if (o.json) return std::fputs(r.body.c_str(), stdout), 0;
  std::printf("%s of %s requested\n", action, node.c_str());
  return 0;
}

int cmd_why(const Options& o, const std::string& node) {
  const auto r = fetch(o, http::verb::get, "/api/v1/members/" + percent_encode(node) + "/history");
  if (o.json) return std::fputs(r.body.c_str(), stdout), 0;
  const auto j = parse_json(r.body);
  std::printf("decisions of %s about %s (oldest first):\n", j["node"].str().c_str(), node.c_str());
  std::vector<std::vector<std::string>> rows{{"WHEN", "DECISION"}};
  for (const auto& d : j["decisions"].items()) rows.push_back({age(d["age_ms"].num()), d["what"].str()});
  if (rows.size() == 1) std::printf("none recorded\n");
  else print_table(rows);
  return 0;
}

int cmd_shard_history(const Options& o, const std::string& type, const std::string& shard) {
  const auto r = fetch(o, http::verb::get, "/api/v1/shards/" + percent_encode(type) + "/" + percent_encode(shard) + "/history");
  if (o.json) return std::fputs(r.body.c_str(), stdout), 0;
  const auto j = parse_json(r.body);
  const auto names = names_by_uid(o);
  std::printf("%s shard %s: owner %s, epoch %s%s; coordinator %s%s\n", type.c_str(), shard.c_str(),
              j["region"].null() ? "none" : region_node(j["region"].str(), names).c_str(), j["epoch"].str().c_str(),
              j["moving"].flag() ? " (moving)" : "", j["coordinator"].str("none").c_str(),
              j["active_here"].flag() ? " (this node)" : "");
  if (!j["active_here"].flag()) {
    std::printf("note: this node is not the active coordinator: below is only what it decided while it was one; "
                "ask the admin port of %s for the full history\n", j["coordinator"].str("the coordinator").c_str());
  }
  std::vector<std::vector<std::string>> rows{{"WHEN", "FROM", "TO", "EPOCH", "REASON"}};
  for (const auto& m : j["moves"].items()) {
    rows.push_back({age(m["age_ms"].num()), m["from"].str(), m["to"].str(), m["epoch"].str(), m["reason"].str()});
  }
  if (rows.size() == 1) std::printf("no moves recorded\n");
  else print_table(rows);
  return 0;
}

int cmd_keys(const Options& o, const std::string& action, const std::string& key) {
  if (action == "list") {
    const auto r = fetch(o, http::verb::get, "/api/v1/keys");
    if (o.json) return std::fputs(r.body.c_str(), stdout), 0;
    const auto j = parse_json(r.body);
    std::vector<std::vector<std::string>> rows{{"KEY_ID", "PRIMARY"}};
    for (const auto& k : j["keys"].items()) rows.push_back({k["id"].str(), k["primary"].flag() ? "yes" : "no"});
    print_table(rows);
    return 0;
  }
  if (!troupe::membership::decode_key(key)) throw CLI::ValidationError("KEY", "not a base64-encoded 32-byte key (troupectl keygen makes one)");
  Client c(o);
  const auto r = c.call(http::verb::post, "/api/v1/keys/" + action, "{\"key\":\"" + key + "\"}");
  if (o.json) std::fputs(r.body.c_str(), stdout);
  if (r.status == 502) {
    // The change did not reach everyone: say who.
    const auto j = parse_json(r.body);
    std::string who;
    for (const auto& f : j["failed"].items()) who += "\n  " + f["member"].str() + ": " + f["error"].str();
    for (const auto& m : j["missing"].items()) who += "\n  " + m.str() + ": did not answer";
    throw Failure{"keyring " + action + " of key " + j["key_id"].str() + " did not reach every member:" + who};
  }
  if (r.status / 100 != 2) Client::fail_status(r);
  if (!o.json) {
    const auto j = parse_json(r.body);
    std::printf("keyring %s of key %s: confirmed by %zu members\n", action.c_str(), j["key_id"].str().c_str(),
                j["confirmed"].items().size());
  }
  return 0;
}

int cmd_keygen(const std::string& dir, const std::string& name) {
  auto kp = troupe::remoting::generate_keypair();
  if (!kp) throw Failure{"cannot make a CURVE key pair: " + kp.error().message()};
  auto gossip = troupe::membership::generate_key();
  if (!gossip) throw Failure{"cannot make a gossip key: " + gossip.error().message()};
  const auto gossip_text = troupe::membership::encode_key(*gossip);
  if (dir.empty()) {
    std::printf("curve_public %s\ncurve_secret %s\ngossip_key %s\n", kp->public_key.c_str(), kp->secret_key.c_str(),
                gossip_text.c_str());
    return 0;
  }
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) throw Failure{"cannot create " + dir + ": " + ec.message()};
  if (auto e = troupe::remoting::save_keypair(*kp, dir, name)) throw Failure{"cannot write " + dir + "/" + name + ".key: " + e.message()};
  const auto ring_file = std::filesystem::path(dir) / (name + ".keyring");
  if (auto e = troupe::membership::save_keyring(troupe::membership::Keyring(*gossip), ring_file)) {
    throw Failure{"cannot write " + ring_file.string() + ": " + e.message()};
  }
  std::printf("wrote %s/%s.key (CURVE secret, 0600), %s/%s.pub, %s (gossip keyring, 0600)\n", dir.c_str(), name.c_str(),
              dir.c_str(), name.c_str(), ring_file.c_str());
  std::printf("%s  # %s: add to the cluster's allow-list\n", kp->public_key.c_str(), name.c_str());
  std::printf("every node needs the same gossip keyring: give the new ones a copy of one (or install this key "
              "cluster-wide with troupectl keys install)\n");
  return 0;
}

int cmd_watch(const Options& o, long count) {
  Client c(o);
  long seen = 0;
  auto names = names_by_uid(o);
  auto node_of = [&](const std::string& region) {
    auto n = region_node(region, names);
    if (n.starts_with("troupe://")) {  // a member that joined since: ask again
      names = names_by_uid(o);
      n = region_node(region, names);
    }
    return n;
  };
  c.stream("/api/v1/events", [&](const std::string& data) {
    if (o.json) {
      std::printf("%s\n", data.c_str());
    } else {
      auto j = JsonParser(data).parse();
      if (!j) {
        std::printf("%s\n", data.c_str());
      } else if ((*j)["event"].str() == "member") {
        std::printf("member %-14s %-12s status=%s liveness=%s%s%s\n", (*j)["kind"].str().c_str(), (*j)["name"].str().c_str(),
                    (*j)["status"].str().c_str(), (*j)["liveness"].str().c_str(), (*j)["detail"].str("").empty() ? "" : " ",
                    (*j)["detail"].str("").c_str());
      } else {
        std::string regions;
        for (const auto& [r, n] : (*j)["regions"].members()) regions += " " + node_of(r) + "=" + n.str();
        std::printf("shards %s moving=%s%s\n", (*j)["type"].str().c_str(), (*j)["moving"].str().c_str(), regions.c_str());
      }
    }
    std::fflush(stdout);
    return count <= 0 || ++seen < count;
  });
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"troupectl: operate a Troupe cluster through any node's admin port"};
  app.require_subcommand(1);
  Options o;
  app.add_option("--admin", o.admin, "HOST:PORT of a node's admin HTTP server")->envname("TROUPECTL_ADMIN")->capture_default_str();
  app.add_option("--token", o.token, "bearer token for admin writes")->envname("TROUPE_ADMIN_TOKEN");
  app.add_flag("--json", o.json, "print the server's JSON (for scripts)");
  app.add_option("--timeout", o.timeout_ms, "connect and answer timeout (ms)")->check(CLI::Range(1L, 3'600'000L))->capture_default_str();

  auto* members = app.add_subcommand("members", "list the members");
  std::string type;
  auto* shards = app.add_subcommand("shards", "shards per node (and per shard with --type)");
  shards->add_option("--type", type, "one entity type, every shard listed");
  std::string a1, a2;
  auto* locate = app.add_subcommand("locate", "where an entity lives");
  locate->add_option("TYPE", a1)->required();
  locate->add_option("ID", a2)->required();
  auto* leave = app.add_subcommand("leave", "ask a member to leave gracefully (token)");
  leave->add_option("NODE", a1)->required();
  auto* down = app.add_subcommand("down", "declare a member down (token)");
  down->add_option("NODE", a1)->required();
  auto* why = app.add_subcommand("why", "this node's membership decisions about a member");
  why->add_option("NODE", a1)->required();
  auto* shard = app.add_subcommand("shard", "one shard");
  shard->require_subcommand(1);
  auto* history = shard->add_subcommand("history", "the moves of a shard (owner, epoch, reason)");
  history->add_option("TYPE", a1)->required();
  history->add_option("SHARD", a2)->required();
  auto* keys = app.add_subcommand("keys", "the gossip keyring, cluster-wide");
  keys->add_option("ACTION", a1, "list | install | use | remove")->required()->check(CLI::IsMember({"list", "install", "use", "remove"}));
  keys->add_option("KEY", a2, "base64 key (install, use, remove)");
  std::string dir, name = "node";
  auto* keygen = app.add_subcommand("keygen", "a CURVE key pair and a gossip key (no server needed)");
  keygen->add_option("--dir", dir, "write DIR/NAME.key, DIR/NAME.pub and DIR/NAME.keyring (else print them)");
  keygen->add_option("--name", name, "file name stem")->capture_default_str();
  long count = 0;
  auto* watch = app.add_subcommand("watch", "follow membership events and shard table changes");
  watch->add_option("--count", count, "stop after N events (0: until Ctrl-C)")->check(CLI::NonNegativeNumber);

  try {
    app.parse(argc, argv);
    if (keys->parsed() && a1 != "list" && a2.empty()) throw CLI::ValidationError("KEY", "keys " + a1 + " needs a KEY");
    if (!keygen->parsed()) split_admin(o.admin);  // a bad --admin is a usage error
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    app.exit(e);
    return 2;
  }
  try {
    if (members->parsed()) return cmd_members(o);
    if (shards->parsed()) return cmd_shards(o, type);
    if (locate->parsed()) return cmd_locate(o, a1, a2);
    if (leave->parsed()) return cmd_member_action(o, a1, "leave");
    if (down->parsed()) return cmd_member_action(o, a1, "down");
    if (why->parsed()) return cmd_why(o, a1);
    if (history->parsed()) return cmd_shard_history(o, a1, a2);
    if (keys->parsed()) return cmd_keys(o, a1, a2);
    if (keygen->parsed()) return cmd_keygen(dir, name);
    if (watch->parsed()) return cmd_watch(o, count);
  } catch (const CLI::ParseError& e) {
    app.exit(e);
    return 2;
  } catch (const Failure& f) {
    std::fflush(stdout);
    std::fprintf(stderr, "troupectl: %s\n", f.what.c_str());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "troupectl: %s\n", e.what());
    return 1;
  }
  return 2;
}
