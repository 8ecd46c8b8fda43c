#include <troupe/remoting/address.hpp>

#include <cctype>
#include <charconv>

#include <fmt/format.h>

namespace troupe::remoting {

namespace {

constexpr std::string_view kScheme = "troupe://";

std::error_code bad() { return std::make_error_code(std::errc::invalid_argument); }

bool host_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '-' ||
         c == '_';
}

}  // namespace

std::string format_uid(std::uint64_t uid) { return fmt::format("{:016x}", uid); }

std::string NodeAddress::endpoint() const {
  return host.find(':') != std::string::npos ? fmt::format("[{}]:{}", host, port) : fmt::format("{}:{}", host, port);
}
std::string NodeAddress::zmq_endpoint() const { return "tcp://" + endpoint(); }
std::string NodeAddress::to_string() const { return std::string(kScheme) + format_uid(uid) + "@" + endpoint(); }

Result<NodeAddress> parse_endpoint(std::string_view s) {
  NodeAddress a;
  std::string_view host, port;
  if (s.starts_with('[')) {
    auto close = s.find(']');
    if (close == std::string_view::npos || close + 1 >= s.size() || s[close + 1] != ':') return bad();
    host = s.substr(1, close - 1);
    port = s.substr(close + 2);
    for (char c : host) {
      if (!(std::isxdigit(static_cast<unsigned char>(c)) || c == ':' || c == '.')) return bad();
    }
  } else {
    auto colon = s.rfind(':');
    if (colon == std::string_view::npos) return bad();
    host = s.substr(0, colon);
    port = s.substr(colon + 1);
    for (char c : host) {
      if (!host_char(c)) return bad();
    }
    // libzmq refuses names that do not start with a letter or digit.
    if (!host.empty() && !std::isalnum(static_cast<unsigned char>(host.front()))) return bad();
  }
  if (host.empty() || host.size() > 253 || port.empty()) return bad();
  unsigned p = 0;
  auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), p);
  if (ec != std::errc() || end != port.data() + port.size() || p == 0 || p > 65535) return bad();
  a.host = std::string(host);
  a.port = static_cast<std::uint16_t>(p);
  return a;
}

Result<NodeAddress> parse_node_address(std::string_view s) {
  if (!s.starts_with(kScheme)) return bad();
  s.remove_prefix(kScheme.size());
  auto at = s.find('@');
  if (at != 16) return bad();
  std::uint64_t uid = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + at, uid, 16);
  if (ec != std::errc() || end != s.data() + at || uid == 0) return bad();
  auto a = parse_endpoint(s.substr(at + 1));
  if (!a) return a.error();
  a->uid = uid;
  return a;
}

Result<ActorAddress> parse_actor_address(std::string_view s) {
  if (!s.starts_with(kScheme)) return bad();
  auto slash = s.find('/', kScheme.size());
  if (slash == std::string_view::npos || slash + 1 >= s.size()) return bad();
  // The path as the actor has it ('/'-separated names, none empty): another spelling would
  // reach the actor, but its Terminated (sent with the actor's own path) would match no watch.
  const auto path = s.substr(slash);
  if (path.back() == '/' || path.find("//") != std::string_view::npos) return bad();
  auto node = parse_node_address(s.substr(0, slash));
  if (!node) return node.error();
  return ActorAddress{std::move(node).value(), std::string(path)};
}

}  // namespace troupe::remoting
