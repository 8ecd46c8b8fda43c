#include <troupe/node/logging.hpp>

#include <cstdio>

#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <troupe/serialization/log.hpp>

namespace troupe::node {

namespace {

/// Appends `s` to `dest` as the inside of a JSON string (quotes, backslashes and control
/// characters escaped; other bytes as they are, UTF-8 expected).
void append_json_escaped(std::string_view s, spdlog::memory_buf_t& dest) {
  for (char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"': dest.append(std::string_view("\\\"")); break;
      case '\\': dest.append(std::string_view("\\\\")); break;
      case '\n': dest.append(std::string_view("\\n")); break;
      case '\r': dest.append(std::string_view("\\r")); break;
      case '\t': dest.append(std::string_view("\\t")); break;
      default:
        if (c < 0x20 || c == 0x7f) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          dest.append(std::string_view(buf, 6));
        } else {
          dest.push_back(ch);
        }
    }
  }
}

/// %* in a pattern: the log message, JSON-escaped.
class EscapedMessage final : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg& msg, const std::tm&, spdlog::memory_buf_t& dest) override {
    append_json_escaped(std::string_view(msg.payload.data(), msg.payload.size()), dest);
  }
  std::unique_ptr<custom_flag_formatter> clone() const override { return std::make_unique<EscapedMessage>(); }
};

}  // namespace

std::optional<LogFormat> parse_log_format(std::string_view s) {
  if (s == "text") return LogFormat::text;
  if (s == "json") return LogFormat::json;
  return std::nullopt;
}

std::shared_ptr<spdlog::logger> make_logger(const std::string& node_id, LogFormat format) {
  if (format == LogFormat::text) return make_node_logger(node_id);
  auto log = std::make_shared<spdlog::logger>("node=" + node_id, std::make_shared<spdlog::sinks::stderr_sink_mt>());
  // The node id goes into the pattern itself, escaped once here (it is fixed for the logger).
  spdlog::memory_buf_t node;
  append_json_escaped(node_id, node);
  std::string node_text;
  for (char c : fmt::to_string(node)) node_text += c == '%' ? std::string("%%") : std::string(1, c);  // literal in a pattern
  auto f = std::make_unique<spdlog::pattern_formatter>(spdlog::pattern_time_type::utc);
  f->add_flag<EscapedMessage>('*').set_pattern(R"({"ts":"%Y-%m-%dT%H:%M:%S.%fZ","level":"%l","node":")" + node_text +
                                               R"(","msg":"%*"})");
  log->set_formatter(std::move(f));
  log->set_level(spdlog::get_level());
  return log;
}

}  // namespace troupe::node
