// task_routing: every request about one task goes to the one entity that owns the task, so the
// task's state needs no lock. One process runs a two-node cluster (real gossip and CURVE remoting
// on loopback) hosting the "task" entity type; client threads attached to both nodes start tasks
// and report steps for the same tasks at the same time, then every task is queried: each must
// have exactly every step of every worker, each worker's steps in its own order, none lost or
// doubled, and the two nodes must each have owned some tasks.
//
// usage: task_routing [--tasks N] [--clients N] [--steps N]
//
// Why one process: the point is the programming model (one entity per task serialises its
// requests), and a single self-contained program shows it without key files or scripts; the
// cluster is still real (two nodes, messages cross between them over ZeroMQ with CURVE). The
// targeting example shows the node + ShardingClient deployment. See examples/README.md.

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <future>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <troupe/membership/keyring.hpp>
#include <troupe/node/node.hpp>
#include <troupe/remoting/security.hpp>

#include "task_routing_generated.h"

using namespace troupe;
using namespace std::chrono_literals;

namespace task_routing {
namespace {

const std::string kType = "task";
constexpr std::uint32_t kShards = 32;

void register_messages(MessageRegistry& r) {
  r.add<StartTask>();
  r.add<Step>();
  r.add<StepAck>();
  r.add<QueryTask>();
  r.add<TaskStatus>();
}

/// One task's progress. Plain members, no mutex: the region hands this entity one message at a
/// time, whichever node and thread sent it.
class TaskEntity final : public sharding::Entity {
 public:
  explicit TaskEntity(std::string id) : id_(std::move(id)) {}
  void receive(const Message& m) override {
    if (const auto* s = m.as<StartTask>()) {
      if (!started_) {
        started_ = true;
        total_ = s->total_steps();
      }
      ack(true, "");
    } else if (const auto* st = m.as<Step>()) {
      step(st->worker() ? st->worker()->str() : "", st->seq());
    } else if (m.is<QueryTask>()) {
      sender().tell(status(), self());
    }
  }
  std::optional<Message> snapshot() override { return status(); }
  void restore(const Message& m) override {
    const auto* s = m.as<TaskStatus>();
    if (!s) return;
    started_ = s->started();
    total_ = s->total();
    progress_ = s->progress();
    rejected_ = s->rejected();
    if (s->workers()) {
      for (const auto* w : *s->workers()) workers_.push_back(w->str());
    }
    if (s->log()) {
      for (const auto* r : *s->log()) {
        log_.push_back(*r);
        next_seq_[workers_.at(r->worker())] = r->seq() + 1;
      }
    }
  }

 private:
  void step(const std::string& worker, std::uint32_t seq) {
    // Read-modify-write of several fields; two senders racing here would lose or reorder steps
    // without a lock. One entity, one message at a time: they cannot race.
    auto& next = next_seq_[worker];
    if (!started_ || seq != next || worker.empty()) {
      ++rejected_;
      return ack(false, !started_ ? "not started" : "out of order");
    }
    ++next;
    ++progress_;
    auto w = std::find(workers_.begin(), workers_.end(), worker);
    if (w == workers_.end()) w = workers_.insert(w, worker);
    log_.emplace_back(static_cast<std::uint16_t>(w - workers_.begin()), seq);
    ack(true, "");
  }
  void ack(bool accepted, const char* reason) {
    sender().tell(Message::build<StepAck>([&](auto& b) { return CreateStepAckDirect(b, accepted, progress_, reason); }), self());
  }
  Message status() const {
    const auto& node = context().system().node_id();
    return Message::build<TaskStatus>([&](flatbuffers::FlatBufferBuilder& b) {
      return CreateTaskStatus(b, b.CreateString(id_), b.CreateString(node), started_, total_, progress_,
                              started_ && progress_ == total_, rejected_, b.CreateVectorOfStrings(workers_),
                              b.CreateVectorOfStructs(log_));
    });
  }

  std::string id_;
  bool started_ = false;
  std::uint32_t total_ = 0, progress_ = 0, rejected_ = 0;
  std::map<std::string, std::uint32_t> next_seq_;
  std::vector<std::string> workers_;
  std::vector<StepRecord> log_;
};

/// Starts node `name` on loopback (any free ports) hosting the task type; joins `seed` (gossip
/// "host:port") unless empty.
std::unique_ptr<node::Node> start_node(const std::string& name, const remoting::CurveKeyPair& keys,
                                       const std::shared_ptr<remoting::AllowList>& allow,
                                       const membership::Key& gossip_key, const std::string& seed) {
  node::NodeOptions o;
  o.name = name;
  o.workers = 2;
  o.transport.port = 0;
  o.transport.keys = keys;
  o.transport.allow_list = allow;
  membership::MembershipServiceConfig mc;
  mc.membership = membership::MembershipConfig::local();
  mc.port = 0;
  if (!seed.empty()) mc.seeds = {seed};
  mc.keyring = std::make_shared<membership::Keyring>(gossip_key);
  o.membership = mc;
  o.sharding.emplace();
  auto n = node::Node::start(std::move(o));
  if (!n) {
    std::fprintf(stderr, "task_routing: cannot start %s: %s\n", name.c_str(), n.error().message().c_str());
    std::exit(2);
  }
  register_messages((*n)->system().registry());
  (*n)->sharding()->start<TaskEntity>({.type = kType, .num_shards = kShards, .passivate_after = 60s});
  return std::move(n).value();
}

template <class P>
bool eventually(P pred, std::chrono::milliseconds limit) {
  const auto end = std::chrono::steady_clock::now() + limit;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > end) return false;
    std::this_thread::sleep_for(20ms);
  }
  return true;
}

}  // namespace
}  // namespace task_routing

int main(int argc, char** argv) {
  using namespace task_routing;
  unsigned tasks = 20, clients = 8, steps = 25;
  for (int i = 1; i + 1 < argc; i += 2) {
    const unsigned v = static_cast<unsigned>(std::stoul(argv[i + 1]));
    if (!std::strcmp(argv[i], "--tasks")) tasks = v;
    else if (!std::strcmp(argv[i], "--clients")) clients = v;
    else if (!std::strcmp(argv[i], "--steps")) steps = v;
    else return std::fprintf(stderr, "usage: task_routing [--tasks N] [--clients N] [--steps N]\n"), 2;
  }
  if (tasks == 0 || clients == 0 || steps == 0 || clients > 60'000) return std::fprintf(stderr, "task_routing: counts must be > 0\n"), 2;

  // The cluster: two nodes, each with its own CURVE key, both on the allow-list; one gossip key.
  const auto k0 = remoting::generate_keypair().value(), k1 = remoting::generate_keypair().value();
  auto allow = std::make_shared<remoting::AllowList>(std::vector<std::string>{k0.public_key, k1.public_key});
  const auto gossip_key = membership::generate_key().value();
  std::unique_ptr<node::Node> nodes[2];
  nodes[0] = start_node("n0", k0, allow, gossip_key, "");
  nodes[1] = start_node("n1", k1, allow, gossip_key, nodes[0]->membership()->endpoint().to_string());
  auto placed_on_both = [&](node::Node& n) {
    std::set<std::string> regions;
    for (const auto& s : n.sharding()->shards(kType)) {
      if (s.region.empty() || s.moving) return false;
      regions.insert(s.region);
    }
    return regions.size() == 2;
  };
  if (!eventually([&] { return placed_on_both(*nodes[0]) && placed_on_both(*nodes[1]); }, 30s)) {
    std::fprintf(stderr, "task_routing: the two nodes did not settle on a shard table\n");
    return 1;
  }
  std::printf("cluster up: n0 and n1 host %u task shards between them\n", kShards);

  auto task_id = [](unsigned t) { return "task-" + std::to_string(t); };
  // Client c is worker "w<c>" of every task and talks to node c % 2: for each step it reports that
  // step for every task at once, then waits for the acks (its steps of one task stay in order;
  // the other clients' steps of the same task interleave with them from both nodes).
  for (unsigned t = 0; t < tasks; ++t) {
    auto r = nodes[t % 2]->sharding()->ask(kType, task_id(t), Message::build<StartTask>([&](auto& b) {
      return CreateStartTask(b, clients * steps);
    }), 5s).get();
    if (!r || !r->is<StepAck>()) return std::fprintf(stderr, "task_routing: %s did not start\n", task_id(t).c_str()), 1;
  }
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<std::future<unsigned>> workers;
  for (unsigned c = 0; c < clients; ++c) {
    workers.push_back(std::async(std::launch::async, [&, c] {
      auto& sh = *nodes[c % 2]->sharding();
      const auto me = "w" + std::to_string(c);
      unsigned refused = 0;
      for (unsigned s = 0; s < steps; ++s) {
        std::vector<std::future<Result<Message>>> acks;
        for (unsigned t = 0; t < tasks; ++t) {
          acks.push_back(sh.ask(kType, task_id(t), Message::build<Step>([&](auto& b) { return CreateStepDirect(b, me.c_str(), s); }), 5s));
        }
        for (auto& a : acks) {
          auto r = a.get();
          refused += !(r && r->is<StepAck>() && r->as<StepAck>()->accepted());
        }
      }
      return refused;
    }));
  }
  unsigned refused = 0;
  for (auto& w : workers) refused += w.get();
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const unsigned total = tasks * clients * steps;
  std::printf("%u clients reported %u steps of %u tasks in %.2f s (%.0f steps/s), %u refused\n", clients, total, tasks, secs,
              total / std::max(secs, 1e-9), refused);

  // Every task: every worker's steps exactly 0..steps-1 in order, nothing else.
  unsigned bad = 0;
  std::map<std::string, unsigned> per_node;
  for (unsigned t = 0; t < tasks; ++t) {
    auto r = nodes[(t + 1) % 2]->sharding()->ask(kType, task_id(t), Message::build<QueryTask>([](auto& b) { return CreateQueryTask(b); }), 5s).get();
    const auto* st = r && r->is<TaskStatus>() ? r->as<TaskStatus>() : nullptr;
    std::map<std::string, std::vector<std::uint32_t>> seqs;
    if (st && st->log() && st->workers()) {
      for (const auto* rec : *st->log()) {
        if (rec->worker() < st->workers()->size()) seqs[st->workers()->Get(rec->worker())->str()].push_back(rec->seq());
      }
    }
    bool exact = st && st->done() && st->progress() == clients * steps && st->rejected() == 0 && seqs.size() == clients;
    for (const auto& [w, v] : seqs) {
      for (std::uint32_t i = 0; exact && i < v.size(); ++i) exact = v[i] == i;
      exact = exact && v.size() == steps;
    }
    if (st) ++per_node[st->node()->str()];
    if (!exact) {
      ++bad;
      std::printf("%s: %s\n", task_id(t).c_str(), st ? "steps not exact" : "no answer");
    }
  }
  std::printf("tasks exact=%u of %u (n0 owned %u, n1 owned %u)\n", tasks - bad, tasks, per_node["n0"], per_node["n1"]);
  const bool good = bad == 0 && refused == 0 && (tasks < 8 || (per_node["n0"] > 0 && per_node["n1"] > 0));
  std::printf("%s\n", good ? "all good" : "FAILED");
  nodes[1]->stop();
  nodes[0]->stop();
  return good ? 0 : 1;
}
