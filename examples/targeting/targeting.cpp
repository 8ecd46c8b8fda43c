// targeting: real-time user targeting on cluster sharding, after the MarkedUp in-app marketing
// story. Apps send a stream of events about their users; one entity per app user accumulates
// facts (country, install date, events seen, pages viewed) and subscribes the user to every
// campaign whose rule it meets, the moment it meets it. No database on the hot path, no locks:
// each user's events are handled one at a time by the one entity that owns the user.
//
//   targeting node      hosts the "user" and "campaign" entity types (a cluster member)
//   targeting generate  simulates apps: sends an event stream through a ShardingClient (not a
//                       member), then checks every campaign's subscribers, and a sample of users,
//                       against what it expects (it knows whom it made eligible)
//
// Campaign rules are data (--campaign "NAME: country=US,CA; installed_after=2026-01-01;
// events=foo,bar; pages=Buy", see campaign.hpp); nodes and the generator take the same lines.
// Idle users passivate after --passivate-after; a user's state travels with it when its shard
// moves (snapshot()/restore()), e.g. when a node leaves. See examples/README.md.

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>

#include <troupe/membership/keyring.hpp>
#include <troupe/node/node.hpp>
#include <troupe/remoting/security.hpp>
#include <troupe/serialization/sharding_generated.h>
#include <troupe/sharding/client.hpp>

#include "campaign.hpp"
#include "contact_points.hpp"
#include "targeting_generated.h"

using namespace troupe;
using namespace std::chrono_literals;

namespace targeting {
namespace {

const std::string kUserType = "user";
const std::string kCampaignType = "campaign";

void register_messages(MessageRegistry& r) {
  r.add<AppEvent>();
  r.add<UserQuery>();
  r.add<UserState>();
  r.add<Subscribe>();
  r.add<SubscribersQuery>();
  r.add<Subscribers>();
}

std::set<std::string> strings_of(const flatbuffers::Vector<flatbuffers::Offset<flatbuffers::String>>* v) {
  std::set<std::string> out;
  if (v) {
    for (const auto* s : *v) out.insert(s->str());
  }
  return out;
}

template <class Set>
flatbuffers::Offset<flatbuffers::Vector<flatbuffers::Offset<flatbuffers::String>>> strings(flatbuffers::FlatBufferBuilder& b,
                                                                                             const Set& s) {
  return b.CreateVectorOfStrings(std::vector<std::string>(s.begin(), s.end()));
}

// ---------------------------------------------------------------------------------------------
// Entities (node mode)

/// One app user: a small state machine over its facts. Every event may complete a campaign's
/// rule; a campaign is joined once, and its campaign entity told.
class UserEntity final : public sharding::Entity {
 public:
  UserEntity(std::string id, std::shared_ptr<const std::vector<Campaign>> campaigns, sharding::Sharding* sharding)
      : id_(std::move(id)), campaigns_(std::move(campaigns)), sharding_(sharding) {}

  void receive(const Message& m) override {
    if (const auto* e = m.as<AppEvent>()) {
      if (e->country() && e->country()->size()) facts_.country = e->country()->str();
      if (e->install_date() && e->install_date()->size()) facts_.install_date = e->install_date()->str();
      if (e->event() && e->event()->size()) facts_.events.insert(e->event()->str());
      if (e->page() && e->page()->size()) facts_.pages.insert(e->page()->str());
      evaluate();
    } else if (m.is<UserQuery>()) {
      sender().tell(state(), self());
    }
  }
  std::optional<Message> snapshot() override { return state(); }
  void restore(const Message& m) override {
    const auto* s = m.as<UserState>();
    if (!s) return;
    facts_.country = s->country() ? s->country()->str() : "";
    facts_.install_date = s->install_date() ? s->install_date()->str() : "";
    facts_.events = strings_of(s->events());
    facts_.pages = strings_of(s->pages());
    joined_ = strings_of(s->campaigns());
    moves_ = s->moves() + 1;
  }

 private:
  void evaluate() {
    for (const auto& c : *campaigns_) {
      if (joined_.count(c.name) || !matches(c, facts_)) continue;
      joined_.insert(c.name);
      sharding_->tell(kCampaignType, c.name,
                      Message::build<Subscribe>([&](auto& b) { return CreateSubscribeDirect(b, id_.c_str()); }), self());
    }
  }
  Message state() const {
    const auto& node = context().system().node_id();
    return Message::build<UserState>([&](flatbuffers::FlatBufferBuilder& b) {
      return CreateUserState(b, b.CreateString(id_), b.CreateString(facts_.country), b.CreateString(facts_.install_date),
                             strings(b, facts_.events), strings(b, facts_.pages), strings(b, joined_), b.CreateString(node),
                             moves_);
    });
  }

  std::string id_;
  std::shared_ptr<const std::vector<Campaign>> campaigns_;
  sharding::Sharding* sharding_;
  Facts facts_;
  std::set<std::string> joined_;
  std::uint32_t moves_ = 0;
};

/// One campaign: its subscriber list (never passivated: the list lives only here).
class CampaignEntity final : public sharding::Entity {
 public:
  explicit CampaignEntity(std::string id) : name_(std::move(id)) {}
  void receive(const Message& m) override {
    if (const auto* s = m.as<Subscribe>()) {
      if (s->user()) users_.insert(s->user()->str());
    } else if (m.is<SubscribersQuery>()) {
      sender().tell(list(), self());
    }
  }
  std::optional<Message> snapshot() override { return list(); }
  void restore(const Message& m) override {
    if (const auto* s = m.as<Subscribers>()) users_ = strings_of(s->users());
  }

 private:
  Message list() const {
    return Message::build<Subscribers>([&](flatbuffers::FlatBufferBuilder& b) {
      return CreateSubscribers(b, b.CreateString(name_), strings(b, users_));
    });
  }
  std::string name_;
  std::set<std::string> users_;
};

std::vector<std::string> read_allow_list(const std::string& file) {
  std::ifstream in(file);
  if (!in) throw std::runtime_error("--allow-list " + file + ": cannot read the file");
  std::stringstream text;
  text << in.rdbuf();
  std::string why;
  auto keys = remoting::parse_allow_list(text.str(), &why);
  if (!keys) throw std::runtime_error("--allow-list " + file + ": " + why);
  return *keys;
}

/// CURVE settings shared by both modes.
struct Security {
  std::string key_file, allow_file;
  bool insecure = false;
  void apply(remoting::TransportConfig& t) const {
    t.insecure = insecure;
    if (insecure) return;
    if (key_file.empty() || allow_file.empty()) throw std::runtime_error("--key-file and --allow-list are required (or --insecure)");
    auto kp = remoting::load_keypair(key_file);
    if (!kp) throw std::runtime_error("--key-file " + key_file + ": " + kp.error().message());
    t.keys = *kp;
    t.allow_list = std::make_shared<remoting::AllowList>(read_allow_list(allow_file));
  }
};

// ---------------------------------------------------------------------------------------------
// Node mode

struct NodeArgs {
  std::string name, bind = "127.0.0.1", advertise, keyring, preset = "lan";
  std::uint16_t port = 7947, gossip_port = 7946;
  std::vector<std::string> seeds, campaigns;
  std::int64_t passivate_ms = 60'000;
  std::uint32_t shards = 64;
  unsigned workers = 2;
  std::optional<std::uint16_t> admin_port;  ///< loopback admin HTTP (troupectl); absent: none
};

int run_node(const NodeArgs& a, const Security& sec, const std::vector<Campaign>& campaigns) {
  node::NodeOptions o;
  o.name = a.name;
  o.workers = a.workers;
  o.transport.bind_host = a.bind;
  o.transport.port = a.port;
  o.transport.advertise_host = a.advertise;
  sec.apply(o.transport);
  membership::MembershipServiceConfig mc;
  mc.membership = a.preset == "local" ? membership::MembershipConfig::local()
                  : a.preset == "wan" ? membership::MembershipConfig::wan()
                                      : membership::MembershipConfig::lan();
  mc.bind_host = a.bind;
  mc.port = a.gossip_port;
  mc.advertise_host = a.advertise;
  mc.seeds = a.seeds;
  std::string why;
  auto ring = membership::load_keyring(a.keyring, &why);
  if (!ring) throw std::runtime_error("--keyring " + a.keyring + ": " + (why.empty() ? ring.error().message() : why));
  mc.keyring = *ring;
  o.membership = std::move(mc);
  o.sharding.emplace();
  if (a.admin_port) {
    o.admin.emplace();
    o.admin->port = *a.admin_port;
    o.admin->entity_types = {{kUserType, a.shards}, {kCampaignType, 16}};
  }

  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGUSR1);  // raised here: this node was downed or removed
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  // Membership events in troupe-node's format, so that its scripts and tests work for this too.
  o.on_event = [](const membership::MembershipEvent& e) {
    std::printf("troupe-node event %s %s %016llx %s\n", membership::to_string(e.kind), e.member.name.c_str(),
                static_cast<unsigned long long>(e.member.uid), membership::to_string(e.member.status));
    std::fflush(stdout);
    if (e.kind == membership::EventKind::self_downed || e.kind == membership::EventKind::self_removed) ::kill(::getpid(), SIGUSR1);
  };

  auto started = node::Node::start(std::move(o));
  if (!started) throw std::runtime_error("cannot start: " + started.error().message());
  auto& n = **started;
  register_messages(n.system().registry());
  auto* sh = n.sharding();
  auto rules = std::make_shared<const std::vector<Campaign>>(campaigns);
  sharding::EntitySettings users{.type = kUserType, .num_shards = a.shards, .passivate_after = std::chrono::milliseconds(a.passivate_ms)};
  sh->start(users, [rules, sh](ActorContext& ctx, SpawnOptions so, const std::string& id) {
    return ctx.spawn<UserEntity>(std::move(so), id, rules, sh);
  });
  sh->start<CampaignEntity>({.type = kCampaignType, .num_shards = 16, .passivate_after = 0ms});

  // troupe-node's ready line, so that its scripts and tests work for this program too.
  std::printf("troupe-node ready %s gossip %s%s\n", n.transport().address().to_string().c_str(),
              n.membership()->endpoint().to_string().c_str(),
              n.admin() ? (" admin 127.0.0.1:" + std::to_string(n.admin_port())).c_str() : "");
  std::fflush(stdout);
  int sig = 0;
  sigwait(&stop_signals, &sig);
  const bool graceful = sig != SIGUSR1;
  if (graceful) n.leave_and_stop(15s);  // hands every shard off (users keep their facts), then leaves
  const auto st = sh->stats();
  std::printf("targeting node %s stopped: activations=%llu passivations=%llu states_restored=%llu handoffs=%llu\n",
              a.name.c_str(), static_cast<unsigned long long>(st.activations), static_cast<unsigned long long>(st.passivations),
              static_cast<unsigned long long>(st.states_restored), static_cast<unsigned long long>(st.handoffs));
  std::fflush(stdout);
  n.stop();
  return graceful ? 0 : 3;
}

// ---------------------------------------------------------------------------------------------
// Generator mode

struct GenArgs {
  std::vector<std::string> contacts;
  std::size_t users = 1000, sample = 100;
  double rate = 5000, eligible = 0.3;
  std::uint64_t rng_seed = 42;
  std::uint32_t shards = 64;
  std::int64_t check_timeout_ms = 15'000;
};

/// The generator's own record of one simulated user.
struct SimUser {
  std::string id;
  Facts facts;
  bool made_eligible = false;
};

/// Facts for a user who meets `c` (made_eligible) or misses it by exactly one clause.
Facts make_facts(const Campaign& c, bool eligible, std::mt19937_64& rng) {
  auto pick = [&](const std::vector<std::string>& v) { return v[std::uniform_int_distribution<std::size_t>(0, v.size() - 1)(rng)]; };
  const std::vector<std::string> countries{"US", "CA", "DE", "FR", "BR", "JP", "IN"};
  const std::vector<std::string> noise_events{"open", "foo", "bar", "baz", "share", "level_up"};
  const std::vector<std::string> noise_pages{"Home", "Buy", "Settings", "Help", "Store"};
  std::vector<std::string> dates;
  for (int y = 2024; y <= 2027; ++y) {
    for (int m = 1; m <= 12; m += 2) dates.push_back(std::to_string(y) + (m < 10 ? "-0" : "-") + std::to_string(m) + "-15");
  }
  std::vector<std::string> good_countries(c.countries.begin(), c.countries.end());
  if (good_countries.empty()) good_countries = countries;
  std::vector<std::string> good_dates, bad_dates;
  for (const auto& d : dates) (d > c.installed_after ? good_dates : bad_dates).push_back(d);
  if (good_dates.empty()) good_dates.push_back("9999-12-31");
  Facts f;
  f.country = pick(good_countries);
  f.install_date = pick(good_dates);
  f.events = c.events;
  f.events.insert("open");  // every app reports its start
  f.pages = c.pages;
  for (int i = 0; i < 2; ++i) f.events.insert(pick(noise_events));
  f.pages.insert(pick(noise_pages));
  if (eligible) return f;
  // Break one clause the campaign has.
  std::vector<int> breakable;
  std::vector<std::string> bad_countries;
  for (const auto& k : countries) {
    if (!c.countries.count(k)) bad_countries.push_back(k);
  }
  if (!c.countries.empty() && !bad_countries.empty()) breakable.push_back(0);
  if (!c.installed_after.empty() && !bad_dates.empty()) breakable.push_back(1);
  if (!c.events.empty()) breakable.push_back(2);
  if (!c.pages.empty()) breakable.push_back(3);
  if (breakable.empty()) return f;  // a rule with no clause: everyone is eligible
  auto drop_one = [&](std::set<std::string>& got, const std::set<std::string>& need) {
    auto it = need.begin();
    std::advance(it, std::uniform_int_distribution<std::size_t>(0, need.size() - 1)(rng));
    got.erase(*it);
  };
  switch (breakable[std::uniform_int_distribution<std::size_t>(0, breakable.size() - 1)(rng)]) {
    case 0: f.country = pick(bad_countries); break;
    case 1: f.install_date = pick(bad_dates); break;
    case 2: drop_one(f.events, c.events); break;
    default: drop_one(f.pages, c.pages); break;
  }
  return f;
}

Message app_event(const std::string& user, const std::string& country, const std::string& date, const std::string& event,
                  const std::string& page) {
  return Message::build<AppEvent>([&](flatbuffers::FlatBufferBuilder& b) {
    return CreateAppEventDirect(b, user.c_str(), country.c_str(), date.c_str(), event.c_str(), page.c_str());
  });
}

int run_generator(const GenArgs& a, const Security& sec, const std::vector<Campaign>& campaigns) {
  node::NodeOptions o;  // remoting only: a client is not a member
  o.name = "generator";
  o.workers = 2;
  o.transport.port = 0;
  sec.apply(o.transport);
  const auto allow = sec.insecure ? std::vector<std::string>{} : read_allow_list(sec.allow_file);
  auto started = node::Node::start(std::move(o));
  if (!started) throw std::runtime_error("cannot start: " + started.error().message());
  auto& n = **started;
  register_messages(n.system().registry());

  std::vector<std::string> endpoints;
  for (const auto& c : a.contacts) {
    for (auto& e : contact::resolve_all(c)) endpoints.push_back(std::move(e));
  }
  const auto found = contact::find_contact_keys(n.transport(), endpoints, allow);
  if (found.empty()) throw std::runtime_error("no contact point answered");
  sharding::ShardingClientConfig cc;
  cc.contact_points = found;
  cc.sharding.resend_interval = 500ms;
  sharding::ShardingClient client(n.system(), n.transport(), cc);
  client.start_proxy(kUserType, a.shards);
  client.start_proxy(kCampaignType, 16);
  auto placed = [&](const std::string& type) {
    auto t = client.shards(type);
    return !t.empty() && std::all_of(t.begin(), t.end(), [](const auto& s) { return !s.region.empty(); });
  };
  const auto ready_by = std::chrono::steady_clock::now() + 30s;
  while (!(placed(kUserType) && placed(kCampaignType))) {
    if (std::chrono::steady_clock::now() > ready_by) throw std::runtime_error("no shard table from the cluster within 30 s");
    std::this_thread::sleep_for(20ms);
  }

  // The simulated users, and every event they will send.
  std::mt19937_64 rng(a.rng_seed);
  std::vector<SimUser> users(a.users);
  std::bernoulli_distribution coin(a.eligible);
  for (std::size_t i = 0; i < users.size(); ++i) {
    users[i].id = "u" + std::to_string(i);
    users[i].made_eligible = coin(rng);
    users[i].facts = make_facts(campaigns.front(), users[i].made_eligible, rng);
    if (matches(campaigns.front(), users[i].facts) != users[i].made_eligible) throw std::logic_error("generator: bad facts");
  }
  struct Ev {
    std::size_t user;
    int kind;  // 0: profile (country, install date), 1: event, 2: page
    std::string what;
  };
  std::vector<Ev> events;
  for (std::size_t i = 0; i < users.size(); ++i) {
    events.push_back({i, 0, ""});
    for (const auto& e : users[i].facts.events) events.push_back({i, 1, e});
    for (const auto& p : users[i].facts.pages) events.push_back({i, 2, p});
    events.push_back({i, 0, ""});  // apps repeat themselves: harmless, facts are sets
  }
  std::shuffle(events.begin(), events.end(), rng);

  const auto t0 = std::chrono::steady_clock::now();
  std::size_t next_progress = 1;
  for (std::size_t k = 0; k < events.size(); ++k) {
    if (a.rate > 0) std::this_thread::sleep_until(t0 + std::chrono::duration<double>(static_cast<double>(k) / a.rate));
    const auto& e = events[k];
    const auto& u = users[e.user];
    client.tell(kUserType, u.id,
                e.kind == 0 ? app_event(u.id, u.facts.country, u.facts.install_date, "", "")
                            : app_event(u.id, "", "", e.kind == 1 ? e.what : "", e.kind == 2 ? e.what : ""));
    if ((k + 1) * 10 >= next_progress * events.size()) {
      std::printf("generator progress %zu%%\n", next_progress * 10);
      std::fflush(stdout);
      ++next_progress;
    }
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("generator sent %zu events for %zu users in %.2f s (%.0f events/s)\n", events.size(), users.size(), secs,
              static_cast<double>(events.size()) / std::max(secs, 1e-9));

  // Expected subscribers of every campaign: the rule applied to what each user sent.
  std::map<std::string, std::set<std::string>> expected;
  for (const auto& c : campaigns) {
    auto& set = expected[c.name];
    for (const auto& u : users) {
      if (matches(c, u.facts)) set.insert(u.id);
    }
  }
  sharding::AskOptions ask{.timeout = 2s, .attempts = 3, .backoff = 200ms, .idempotency_key = ""};
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(a.check_timeout_ms);
  bool ok = true;
  // 1. Every campaign's subscriber list equals the expected set (subscriptions arrive a moment
  //    after the last event: poll until they match or the deadline passes).
  for (const auto& c : campaigns) {
    std::set<std::string> got;
    for (;;) {
      auto r = client.ask(kCampaignType, c.name, Message::build<SubscribersQuery>([](auto& b) { return CreateSubscribersQuery(b); }), ask).get();
      if (r && r->is<Subscribers>()) got = strings_of(r->as<Subscribers>()->users());
      if (got == expected[c.name] || std::chrono::steady_clock::now() > deadline) break;
      std::this_thread::sleep_for(100ms);
    }
    std::size_t missing = 0, unexpected = 0;
    for (const auto& u : expected[c.name]) missing += !got.count(u);
    for (const auto& u : got) unexpected += !expected[c.name].count(u);
    std::printf("campaign %s: subscribed=%zu expected=%zu missing=%zu unexpected=%zu\n", c.name.c_str(), got.size(),
                expected[c.name].size(), missing, unexpected);
    ok = ok && missing == 0 && unexpected == 0;
  }
  // 2. A sample of users: each knows exactly the campaigns it should have joined.
  std::vector<std::size_t> sample(users.size());
  for (std::size_t i = 0; i < sample.size(); ++i) sample[i] = i;
  std::shuffle(sample.begin(), sample.end(), rng);
  if (a.sample > 0 && a.sample < sample.size()) sample.resize(a.sample);
  std::vector<std::future<Result<Message>>> answers;
  for (auto i : sample) answers.push_back(client.ask(kUserType, users[i].id, Message::build<UserQuery>([](auto& b) { return CreateUserQuery(b); }), ask));
  std::size_t wrong = 0, moved = 0, subscribed = 0;
  std::map<std::string, std::size_t> per_node;
  for (std::size_t k = 0; k < sample.size(); ++k) {
    auto r = answers[k].get();
    const auto& u = users[sample[k]];
    std::set<std::string> want;
    for (const auto& c : campaigns) {
      if (expected[c.name].count(u.id)) want.insert(c.name);
    }
    const auto* s = r && r->is<UserState>() ? r->as<UserState>() : nullptr;
    if (!s || strings_of(s->campaigns()) != want || strings_of(s->events()) != u.facts.events) {
      if (wrong++ < 5) std::printf("user %s: %s\n", u.id.c_str(), s ? "wrong state" : "no answer");
      continue;
    }
    subscribed += !want.empty();
    moved += s->moves() > 0;
    ++per_node[s->node() ? s->node()->str() : "?"];
  }
  std::printf("users asked=%zu subscribed=%zu wrong=%zu moved_by_handoff=%zu", sample.size(), subscribed, wrong, moved);
  for (const auto& [node, k] : per_node) std::printf(" on_%s=%zu", node.c_str(), k);
  std::printf("\n%s\n", ok && wrong == 0 ? "generator OK" : "generator MISMATCH");
  std::fflush(stdout);
  n.stop();
  return ok && wrong == 0 ? 0 : 1;
}

}  // namespace
}  // namespace targeting

int main(int argc, char** argv) {
  using namespace targeting;
  CLI::App app{"targeting: real-time user targeting on Troupe cluster sharding"};
  app.require_subcommand(1);
  Security sec;
  std::vector<std::string> campaign_specs;
  auto common = [&](CLI::App* c) {
    c->add_option("--key-file", sec.key_file, "this process's CURVE secret key file");
    c->add_option("--allow-list", sec.allow_file, "public keys allowed to connect, one per line");
    c->add_flag("--insecure", sec.insecure, "no CURVE (development only)");
    c->add_option("--campaign", campaign_specs, "campaign rule \"NAME: country=..; installed_after=..; events=..; pages=..\" (repeatable)");
  };
  NodeArgs na;
  auto* node_cmd = app.add_subcommand("node", "host the user and campaign entities (a cluster member)");
  common(node_cmd);
  node_cmd->add_option("--name", na.name, "node name");
  node_cmd->add_option("--bind", na.bind, "interface of the remoting and gossip ports")->capture_default_str();
  node_cmd->add_option("--advertise", na.advertise, "host other nodes use to reach this one (default: --bind)");
  node_cmd->add_option("--port", na.port, "remoting port (0: any free port)")->capture_default_str();
  node_cmd->add_option("--gossip-port", na.gossip_port, "gossip UDP port (0: any free port)")->capture_default_str();
  node_cmd->add_option("--keyring", na.keyring, "gossip keyring file")->required();
  node_cmd->add_option("--seed", na.seeds, "gossip host:port of a member to join through (repeatable)");
  node_cmd->add_option("--preset", na.preset, "membership timings: local, lan or wan")->check(CLI::IsMember({"local", "lan", "wan"}));
  node_cmd->add_option("--passivate-after", na.passivate_ms, "idle time (ms) before a user entity is passivated; 0: never")
      ->capture_default_str();
  node_cmd->add_option("--shards", na.shards, "shards of the user type (the same on every node and generator)")->capture_default_str();
  node_cmd->add_option("--workers", na.workers, "actor worker threads")->capture_default_str();
  node_cmd->add_option("--admin-port", na.admin_port, "loopback admin HTTP port for troupectl (0: any free port; absent: none)");
  bool no_admin = false;
  node_cmd->add_flag("--no-admin", no_admin, "no admin HTTP server (the default)");
  GenArgs ga;
  auto* gen_cmd = app.add_subcommand("generate", "simulate apps sending events, then check the campaigns");
  common(gen_cmd);
  gen_cmd->add_option("--contact", ga.contacts, "remoting host:port of a member (repeatable; a name: all its addresses)")->required();
  gen_cmd->add_option("--users", ga.users, "simulated app users")->capture_default_str();
  gen_cmd->add_option("--rate", ga.rate, "events per second (0: as fast as possible)")->capture_default_str();
  gen_cmd->add_option("--eligible", ga.eligible, "fraction of users made eligible for the first campaign")->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  gen_cmd->add_option("--sample", ga.sample, "users asked for their state at the end (0: all)")->capture_default_str();
  gen_cmd->add_option("--rng-seed", ga.rng_seed, "seed of the simulated users and stream")->capture_default_str();
  gen_cmd->add_option("--shards", ga.shards, "shards of the user type (as the nodes run it)")->capture_default_str();
  gen_cmd->add_option("--check-timeout", ga.check_timeout_ms, "ms to wait for the campaigns to match")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  try {
    std::vector<Campaign> campaigns;
    for (const auto& s : campaign_specs) campaigns.push_back(parse_campaign(s));
    if (campaigns.empty()) campaigns.push_back(parse_campaign(kDefaultCampaign));
    if (*node_cmd) return run_node(na, sec, campaigns);
    return run_generator(ga, sec, campaigns);
  } catch (const std::exception& e) {
    std::cerr << "targeting: " << e.what() << "\n";
    return 2;
  }
}
