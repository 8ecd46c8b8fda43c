#pragma once
// A deterministic network simulator for the membership protocol: the real SwimProtocol code,
// many virtual nodes on one thread, virtual time, per-link loss, delay, jitter (reordering) and
// duplication, partitions, kills (host gone: silent), crashes (process gone, its host answers with
// ICMP port unreachable), pauses and clock-rate skew. Everything random comes from the
// seed, so a failing run is reproduced by its seed.

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <queue>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

#include <troupe/membership/swim.hpp>

namespace troupe::sim {

using namespace std::chrono_literals;
using std::chrono::nanoseconds;
using membership::MembershipConfig;
using membership::SwimProtocol;
using membership::UdpEndpoint;

struct LinkSpec {
  double loss = 0;             ///< probability a datagram is lost
  nanoseconds delay{500us};    ///< one-way base delay
  nanoseconds jitter{200us};   ///< uniform extra delay (reorders datagrams)
  double duplicate = 0;        ///< probability a datagram arrives twice
};

class Simulation {
 public:
  explicit Simulation(std::uint64_t seed);
  ~Simulation();

  /// Adds a node (not yet joined). `clock_rate` skews its clock (1.0: true time).
  int add_node(const std::string& name, MembershipConfig cfg, double clock_rate = 1.0);
  /// Starts node `i` joining through the nodes `seeds`.
  void join(int i, const std::vector<int>& seeds);
  /// Makes nodes [first, last) a formed, converged cluster at once (SwimProtocol::assume_formed;
  /// up_order follows the index): for sizes that would take long to form by joins.
  void assume_formed(int first, int last);
  SwimProtocol& node(int i);
  int size() const;
  UdpEndpoint endpoint(int i) const;

  /// Every link (defaults).
  void set_link(LinkSpec spec) { link_ = spec; }
  /// The link from `from` to `to` only (one direction).
  void set_link(int from, int to, LinkSpec spec) { links_[key(from, to)] = spec; }
  /// The node's host is gone: datagrams to it vanish.
  void kill(int i);
  /// The node's process is gone but its host lives: datagrams to it are answered with ICMP port
  /// unreachable (SwimProtocol::on_port_unreachable at the sender, after the link's delay).
  void crash(int i);
  void pause(int i);
  void resume(int i);
  bool alive(int i) const;
  /// Packets between different groups are dropped until heal().
  void partition(const std::vector<std::vector<int>>& groups);
  void heal();

  nanoseconds now() const { return now_; }
  void run_for(nanoseconds d);
  /// Runs until `pred` holds (checked after every event batch) or `limit` passes; true if it held.
  bool run_until(const std::function<bool()>& pred, nanoseconds limit);

  /// Events each node saw, in order (kept only while record_events is on, the default).
  const std::vector<membership::MembershipEvent>& events(int i) const;
  /// Large simulations turn the per-node event log off (it grows with members x nodes) and
  /// watch events through on_event instead.
  void record_events(bool on) { record_events_ = on; }
  /// Called for every event of every node, in order, with the node's index.
  void on_event(std::function<void(int, const membership::MembershipEvent&)> fn) { observer_ = std::move(fn); }
  /// Re-reads node `i`'s next wake-up after an action taken on it from outside (leave, down).
  void wake(int i) { schedule_wake(i); }
  std::uint64_t packets_delivered() const { return delivered_; }
  std::uint64_t packets_dropped() const { return dropped_; }

  struct Node;

 private:
  struct Event {
    nanoseconds at;
    std::uint64_t seq;
    int node;       // destination
    int from;       // -1: a wake-up
    std::vector<std::uint8_t> bytes;
    bool icmp = false;  // port unreachable for a datagram `node` sent to `from`
    bool operator>(const Event& o) const { return at != o.at ? at > o.at : seq > o.seq; }
  };
  void send(int from, const UdpEndpoint& to, std::span<const std::uint8_t> bytes);
  void schedule_wake(int i);
  void step(Event e);
  friend struct Node;

  std::mt19937_64 rng_;
  std::uint64_t seed_;
  nanoseconds now_{0};
  std::uint64_t seq_ = 0;
  LinkSpec link_;
  std::priority_queue<Event, std::vector<Event>, std::greater<>> queue_;
  std::vector<std::unique_ptr<Node>> nodes_;
  std::shared_ptr<membership::IdentityPool> pool_ = membership::make_identity_pool();  // shared: one thread
  std::unordered_map<std::string, int> by_endpoint_;
  std::vector<int> group_;  // partition group per node (-1: none)
  static std::uint64_t key(int from, int to) { return (std::uint64_t(std::uint32_t(from)) << 32) | std::uint32_t(to); }
  std::unordered_map<std::uint64_t, LinkSpec> links_;
  std::uint64_t delivered_ = 0, dropped_ = 0;
  bool record_events_ = true;
  std::function<void(int, const membership::MembershipEvent&)> observer_;
};

}  // namespace troupe::sim
