#pragma once
/// \file
/// The admin server's dashboard page (GET /): one self-contained HTML document (no external
/// scripts, styles or fonts) that polls /api/v1/members and /api/v1/shards and draws the members
/// with status and reachability, and per entity type the shard map as a ring and a count per
/// node.

#include <string>

namespace troupe::node {

/// The page (text/html; UTF-8). Built once; the same bytes for every request.
const std::string& dashboard_page();

}  // namespace troupe::node
