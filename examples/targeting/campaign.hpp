#pragma once
// Campaign rules as data: a rule is a few sets and a date, parsed from one line of text, and
// matched against a user's facts by one pure function. Nodes (which subscribe users) and the
// generator (which knows whom it made eligible) read the same --campaign lines.
//
//   spring-sale: country=US,CA; installed_after=2026-01-01; events=foo,bar; pages=Buy
//
// Every clause is optional (an absent clause matches anyone); values are comma-separated; a
// user matches when every clause holds: country in the set, install date (ISO, YYYY-MM-DD)
// strictly after the given one, every listed event seen, every listed page viewed.

#include <algorithm>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace targeting {

/// What a user entity has learnt about its user from the event stream.
struct Facts {
  std::string country;       ///< latest reported ("" : not reported yet)
  std::string install_date;  ///< ISO date ("" : not reported yet)
  std::set<std::string> events;
  std::set<std::string> pages;
};

struct Campaign {
  std::string name;
  std::set<std::string> countries;  ///< empty: any country
  std::string installed_after;      ///< ISO date; empty: any install date
  std::set<std::string> events;     ///< all must have been seen
  std::set<std::string> pages;      ///< all must have been viewed
};

/// The rule itself.
inline bool matches(const Campaign& c, const Facts& f) {
  if (!c.countries.empty() && !c.countries.count(f.country)) return false;
  if (!c.installed_after.empty() && (f.install_date.empty() || f.install_date <= c.installed_after)) return false;
  auto has_all = [](const std::set<std::string>& need, const std::set<std::string>& got) {
    return std::includes(got.begin(), got.end(), need.begin(), need.end());
  };
  return has_all(c.events, f.events) && has_all(c.pages, f.pages);
}

namespace detail {
inline std::string trim(std::string s) {
  const auto b = s.find_first_not_of(" \t");
  const auto e = s.find_last_not_of(" \t");
  return b == std::string::npos ? std::string() : s.substr(b, e - b + 1);
}
inline std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::stringstream in(s);
  for (std::string item; std::getline(in, item, sep);) {
    if (auto t = trim(item); !t.empty()) out.push_back(std::move(t));
  }
  return out;
}
inline bool iso_date(const std::string& d) {
  return d.size() == 10 && d[4] == '-' && d[7] == '-' &&
         std::all_of(d.begin(), d.end(), [](char ch) { return ch == '-' || (ch >= '0' && ch <= '9'); });
}
}  // namespace detail

/// Parses "NAME: key=v1,v2; key=v; ...". Throws std::invalid_argument naming what is wrong.
inline Campaign parse_campaign(const std::string& spec) {
  const auto colon = spec.find(':');
  Campaign c;
  c.name = detail::trim(spec.substr(0, colon));
  if (c.name.empty() || colon == std::string::npos) throw std::invalid_argument("campaign '" + spec + "': expected NAME: clauses");
  for (const auto& clause : detail::split(spec.substr(colon + 1), ';')) {
    const auto eq = clause.find('=');
    const auto key = detail::trim(clause.substr(0, eq));
    const auto values = eq == std::string::npos ? std::vector<std::string>{} : detail::split(clause.substr(eq + 1), ',');
    if (values.empty()) throw std::invalid_argument("campaign " + c.name + ": clause '" + clause + "' has no value");
    if (key == "country") {
      c.countries.insert(values.begin(), values.end());
    } else if (key == "installed_after" && values.size() == 1 && detail::iso_date(values[0])) {
      c.installed_after = values[0];
    } else if (key == "events") {
      c.events.insert(values.begin(), values.end());
    } else if (key == "pages") {
      c.pages.insert(values.begin(), values.end());
    } else {
      throw std::invalid_argument("campaign " + c.name + ": unknown or bad clause '" + clause +
                                  "' (country=, installed_after=YYYY-MM-DD, events=, pages=)");
    }
  }
  return c;
}

/// The campaign of the MarkedUp story, used when no --campaign is given.
inline const char* kDefaultCampaign = "spring-sale: country=US,CA; installed_after=2026-01-01; events=foo,bar; pages=Buy";

}  // namespace targeting
