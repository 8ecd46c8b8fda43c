#include "sim.hpp"

#include <cmath>

#include <spdlog/sinks/null_sink.h>
#include <spdlog/spdlog.h>

namespace troupe::sim {

namespace {
std::shared_ptr<spdlog::logger> quiet_logger() {
  static auto l = std::make_shared<spdlog::logger>("sim", std::make_shared<spdlog::sinks::null_sink_mt>());
  return l;
}
}  // namespace

struct Simulation::Node final : membership::Clock, membership::PacketTransport {
  Node(Simulation& s, int i, double r) : sim(s), index(i), rate(r) {}
  nanoseconds now() const override {
    return nanoseconds(static_cast<std::int64_t>(double(sim.now_.count()) * rate));
  }
  void send(const UdpEndpoint& to, std::span<const std::uint8_t> packet) override { sim.send(index, to, packet); }
  std::size_t max_payload() const override { return 1400 - 28 - 64; }

  Simulation& sim;
  int index;
  double rate;
  bool dead = false;
  bool refuses = false;  // crashed: its host answers with ICMP port unreachable
  bool paused = false;
  nanoseconds wake{nanoseconds::max()};
  std::vector<Event> inbox;  // held while paused
  std::vector<membership::MembershipEvent> events;
  std::unique_ptr<SwimProtocol> proto;
};

Simulation::Simulation(std::uint64_t seed) : rng_(seed), seed_(seed) {}
Simulation::~Simulation() = default;

int Simulation::add_node(const std::string& name, MembershipConfig cfg, double clock_rate) {
  const int i = static_cast<int>(nodes_.size());
  auto n = std::make_unique<Node>(*this, i, clock_rate);
  SwimProtocol::Identity id;
  id.name = name;
  id.uid = (seed_ * 0x9e3779b97f4a7c15ull) ^ (std::uint64_t(i + 1) << 20) ^ std::uint64_t(i + 1);
  if (id.uid == 0) id.uid = 1;
  id.gossip = UdpEndpoint{"10." + std::to_string(i / 65536) + "." + std::to_string((i / 256) % 256) + "." +
                              std::to_string(i % 256),
                          7946};
  by_endpoint_[id.gossip.to_string()] = i;
  n->proto = std::make_unique<SwimProtocol>(std::move(cfg), id, *n, *n, rng_(), quiet_logger(), pool_);
  auto* raw = n.get();
  n->proto->subscribe([this, raw](const membership::MembershipEvent& e) {
    if (record_events_) raw->events.push_back(e);
    if (observer_) observer_(raw->index, e);
  });
  nodes_.push_back(std::move(n));
  group_.push_back(-1);
  return i;
}

void Simulation::join(int i, const std::vector<int>& seeds) {
  std::vector<UdpEndpoint> eps;
  for (int s : seeds) eps.push_back(endpoint(s));
  nodes_[i]->proto->join(std::move(eps));
  schedule_wake(i);
}

void Simulation::assume_formed(int first, int last) {
  std::vector<membership::MemberInfo> members;
  members.reserve(static_cast<std::size_t>(last - first));
  for (int i = first; i < last; ++i) {
    auto m = nodes_[i]->proto->self();
    m.status = membership::MemberStatus::up;
    m.up_order = static_cast<std::uint64_t>(i - first + 1);
    members.push_back(std::move(m));
  }
  for (int i = first; i < last; ++i) {
    nodes_[i]->proto->assume_formed(members);
    schedule_wake(i);
  }
}

SwimProtocol& Simulation::node(int i) { return *nodes_[i]->proto; }
int Simulation::size() const { return static_cast<int>(nodes_.size()); }
UdpEndpoint Simulation::endpoint(int i) const { return nodes_[i]->proto->endpoint(); }
const std::vector<membership::MembershipEvent>& Simulation::events(int i) const { return nodes_[i]->events; }

void Simulation::kill(int i) { nodes_[i]->dead = true; }
void Simulation::crash(int i) {
  nodes_[i]->dead = true;
  nodes_[i]->refuses = true;
}
void Simulation::pause(int i) { nodes_[i]->paused = true; }
bool Simulation::alive(int i) const { return !nodes_[i]->dead; }

void Simulation::resume(int i) {
  auto& n = *nodes_[i];
  n.paused = false;
  auto held = std::move(n.inbox);
  n.inbox.clear();
  for (auto& e : held) {
    e.at = now_;
    step(std::move(e));
  }
  n.wake = nanoseconds::max();
  schedule_wake(i);
}

void Simulation::partition(const std::vector<std::vector<int>>& groups) {
  std::fill(group_.begin(), group_.end(), -1);
  for (std::size_t g = 0; g < groups.size(); ++g) {
    for (int i : groups[g]) group_[i] = static_cast<int>(g);
  }
}

void Simulation::heal() { std::fill(group_.begin(), group_.end(), -1); }

void Simulation::send(int from, const UdpEndpoint& to, std::span<const std::uint8_t> bytes) {
  auto it = by_endpoint_.find(to.to_string());
  if (it == by_endpoint_.end()) {
    ++dropped_;
    return;
  }
  const int dst = it->second;
  if (group_[from] != group_[dst] && group_[from] >= 0 && group_[dst] >= 0) {
    ++dropped_;
    return;
  }
  auto override_it = links_.find(key(from, dst));
  const LinkSpec& link = override_it != links_.end() ? override_it->second : link_;
  std::uniform_real_distribution<double> u(0, 1);
  if (u(rng_) < link.loss) {
    ++dropped_;
    return;
  }
  const int copies = u(rng_) < link.duplicate ? 2 : 1;
  for (int c = 0; c < copies; ++c) {
    std::uniform_int_distribution<std::int64_t> j(0, std::max<std::int64_t>(0, link.jitter.count()));
    queue_.push(Event{now_ + link.delay + nanoseconds(j(rng_)), seq_++, dst, from,
                      std::vector<std::uint8_t>(bytes.begin(), bytes.end())});
  }
}

void Simulation::schedule_wake(int i) {
  auto& n = *nodes_[i];
  if (n.dead || n.paused) return;
  const auto local = n.proto->next_wakeup();
  if (local == nanoseconds::max()) return;
  // Round up: waking a skewed node a nanosecond before its local deadline would loop.
  auto global = nanoseconds(static_cast<std::int64_t>(std::ceil(double(local.count()) / n.rate)) + 1);
  if (global < now_) global = now_;
  if (global >= n.wake && n.wake >= now_) return;  // an earlier wake-up is already queued
  n.wake = global;
  queue_.push(Event{global, seq_++, i, -1, {}});
}

void Simulation::step(Event e) {
  auto& n = *nodes_[e.node];
  if (n.dead) {
    if (n.refuses && e.from >= 0 && !e.icmp) {
      // The host answers for the process that is gone (back over the reverse link's delay).
      auto it = links_.find(key(e.node, e.from));
      const LinkSpec& link = it != links_.end() ? it->second : link_;
      queue_.push(Event{now_ + link.delay, seq_++, e.from, e.node, {}, true});
    }
    return;
  }
  if (n.paused) {
    if (e.from >= 0 && n.inbox.size() < 4096) n.inbox.push_back(std::move(e));
    return;
  }
  if (e.from < 0) {
    if (e.at != n.wake) return;  // superseded
    n.wake = nanoseconds::max();
    n.proto->poll();
  } else if (e.icmp) {
    n.proto->on_port_unreachable(nodes_[e.from]->proto->endpoint());
    n.proto->poll();
  } else {
    ++delivered_;
    n.proto->on_packet(nodes_[e.from]->proto->endpoint(), e.bytes);
    n.proto->poll();
  }
  schedule_wake(e.node);
}

void Simulation::run_for(nanoseconds d) {
  run_until([] { return false; }, d);
}

bool Simulation::run_until(const std::function<bool()>& pred, nanoseconds limit) {
  const auto end = now_ + limit;
  auto next_check = now_;
  while (!queue_.empty() && queue_.top().at <= end) {
    Event e = std::move(const_cast<Event&>(queue_.top()));  // popped right away
    queue_.pop();
    now_ = e.at;
    step(std::move(e));
    if (now_ >= next_check) {
      if (pred()) return true;
      next_check = now_ + 10ms;
    }
  }
  now_ = end;
  return pred();
}

}  // namespace troupe::sim
