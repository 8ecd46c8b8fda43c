#pragma once
/// \file
/// Log output of a node: human-readable text (the default of every Troupe logger) or one JSON
/// object per line for log shippers. Either way every line carries the node id.
///
///   text: 2026-11-25T10:00:00.123 info  [node=n1] member n2 is up
///   json: {"ts":"2026-11-25T10:00:00.123456Z","level":"info","node":"n1","msg":"member n2 is up"}

#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include <spdlog/common.h>

namespace spdlog { class logger; }

namespace troupe::node {

enum class LogFormat { text, json };

/// "text" or "json"; nullopt otherwise.
std::optional<LogFormat> parse_log_format(std::string_view s);

/// A stderr logger for `node_id` in `format`. JSON lines have UTC timestamps (microseconds) and
/// the message escaped as a JSON string.
std::shared_ptr<spdlog::logger> make_logger(const std::string& node_id, LogFormat format);

}  // namespace troupe::node
