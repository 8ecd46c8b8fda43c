#include <troupe/sharding/client.hpp>

#include <atomic>
#include <condition_variable>
#include <set>
#include <stdexcept>
#include <thread>

#include <spdlog/logger.h>

#include <troupe/remoting/transport.hpp>
#include <troupe/serialization/sharding_generated.h>

#include "coordinator.hpp"
#include "shared.hpp"

namespace troupe::sharding {

struct ShardingClient::State {
  std::shared_ptr<Sharding::Shared> sh;
  ShardingClientConfig config;
  std::atomic<bool> needs_contact{true};
  std::mutex mu;
  std::condition_variable cv;
  bool stopping = false;
  std::thread finder;
  ThrottledLog contact_log;
};

namespace {

/// The client's stand-in for a coordinator (/system/sharding-coordinator): registers the
/// client's proxies with the active coordinator and keeps the registration alive.
class ClientAgent final : public Actor {
 public:
  explicit ClientAgent(std::shared_ptr<ShardingClient::State> st) : st_(std::move(st)) {}

  void pre_start() override {
    context().schedule_every(st_->sh->config.resend_interval,
                             Message::build<CoordinatorTick>([](auto& b) { return CreateCoordinatorTick(b); }));
  }

  void receive(const Message& m) override {
    auto& sh = *st_->sh;
    if (m.is<CoordinatorTick>()) return tick();
    if (const auto* c = m.as<ContactFound>()) {
      if (!c->address()) return;
      // From a member that does not coordinate: where the coordinator is, and its key (taken
      // only when it is on the allow-list and no key is known for that endpoint yet).
      if (c->curve_key() && c->curve_key()->size() > 0) {
        if (auto a = remoting::parse_node_address(c->address()->string_view())) {
          sh.transport->learn_peer_key(a->endpoint(), c->curve_key()->string_view(), a->uid);
        }
      }
      send_report(c->address()->str() + "/system/" + kCoordinatorName, 0);
      return;
    }
    if (const auto* a = m.as<ReportAck>()) {
      auto from = remoting::parse_actor_address(sh.transport->address_of(sender()));
      if (!from || from->node.uid != a->coordinator()) return;  // only the coordinator itself answers
      if (sh.coordinator.exchange(a->coordinator()) != a->coordinator()) {
        context().system().log().info("sharding client: registered with the coordinator at {}", from->node.to_string());
      }
      coordinator_address_ = from->node.to_string();
      last_ack_ = now();
      st_->needs_contact = false;
      return;
    }
    if (const auto* q = m.as<ReportRequest>()) {
      if (q->coordinator() == 0 && !coordinator_address_.empty()) send_report(coordinator_path(), sh.coordinator.load());
      return;
    }
  }

 private:
  TimerService::Clock::time_point now() const { return context().system().timers().now(); }
  std::string coordinator_path() const { return coordinator_address_ + "/system/" + kCoordinatorName; }

  void tick() {
    auto& sh = *st_->sh;
    if (coordinator_address_.empty()) {
      st_->needs_contact = true;
      return;
    }
    send_report(coordinator_path(), sh.coordinator.load());
    if (now() - last_ack_ > 3 * sh.config.resend_interval) {
      // The coordinator went quiet (it moved, or its node is gone): find it again.
      st_->needs_contact = true;
    }
  }

  void send_report(const std::string& to, std::uint64_t coordinator) {
    auto& sh = *st_->sh;
    auto ref = sh.transport->resolve(to);
    if (!ref || !*ref) return;
    Message m;
    {
      std::lock_guard lk(sh.mu);
      m = Message::build<NodeReport>([&](flatbuffers::FlatBufferBuilder& b) {
        std::vector<flatbuffers::Offset<TypeReport>> types;
        for (const auto& [name, t] : sh.types) types.push_back(CreateTypeReport(b, b.CreateString(name), t.settings.num_shards, true));
        return CreateNodeReport(b, coordinator, sh.self_uid, b.CreateVector(types), sh.max_epoch.load(), false,
                                b.CreateString(sh.transport->public_key()), true);
      });
    }
    ref->tell(m, self());
  }

  std::shared_ptr<ShardingClient::State> st_;
  std::string coordinator_address_;
  TimerService::Clock::time_point last_ack_{};
};

/// Where to look for the cluster: the configured contact points first, then every node that
/// owns a shard in the client's tables (so that losing every contact point, say the one seed it
/// was given, does not cut the client off while other members are alive).
std::vector<std::string> contact_candidates(const ShardingClient::State& s) {
  std::vector<std::string> out = s.config.contact_points;
  std::set<std::string> seen(out.begin(), out.end());
  std::lock_guard lk(s.sh->mu);
  for (const auto& [name, t] : s.sh->types) {
    for (const auto& si : t.table) {
      if (si.region.empty()) continue;
      if (auto a = remoting::parse_actor_address(si.region)) {
        if (auto e = a->node.endpoint(); seen.insert(e).second) out.push_back(std::move(e));
      }
    }
  }
  return out;
}

}  // namespace

ShardingClient::ShardingClient(ActorSystem& system, remoting::Transport& transport, ShardingClientConfig config)
    : sharding_(Sharding::ClientMode{}, system, transport, config.sharding), state_(std::make_shared<State>()) {
  if (config.contact_points.empty()) throw std::invalid_argument("ShardingClientConfig.contact_points: at least one");
  for (const auto& c : config.contact_points) {
    if (!remoting::parse_endpoint(c)) throw std::invalid_argument("ShardingClientConfig.contact_points: bad endpoint '" + c + "'");
  }
  auto& st = *state_;
  st.sh = sharding_.shared_;
  st.config = std::move(config);
  st.sh->coordinator_actor = system.spawn_system<ClientAgent>(SpawnOptions{.name = kCoordinatorName}, state_);
  // Contact points are tried off the actors' threads: finding one blocks up to contact_timeout.
  st.finder = std::thread([s = state_, &transport, &system] {
    std::size_t next = 0;
    std::unique_lock lk(s->mu);
    while (!s->stopping) {
      if (s->needs_contact) {
        lk.unlock();
        const auto candidates = contact_candidates(*s);
        const auto endpoint = candidates[next++ % candidates.size()];
        auto a = transport.discover(endpoint, s->config.contact_timeout);
        if (a) {
          s->sh->coordinator_actor.tell(Message::build<ContactFound>([&](flatbuffers::FlatBufferBuilder& b) {
            return CreateContactFound(b, b.CreateString(a->to_string()));
          }));
        } else {
          s->contact_log.warn(system.log(), "sharding client: contact point {} did not answer: {}", endpoint,
                              a.error().message());
        }
        lk.lock();
      }
      // Looks again each resend_interval, the period at which the agent decides it needs a
      // contact: a failing contact point is tried at most that often.
      s->cv.wait_for(lk, s->sh->config.resend_interval, [&] { return s->stopping; });
    }
  });
}

ShardingClient::~ShardingClient() {
  {
    std::lock_guard lk(state_->mu);
    state_->stopping = true;
  }
  state_->cv.notify_all();
  if (state_->finder.joinable()) state_->finder.join();
}

ActorRef ShardingClient::start_proxy(std::string type, std::uint32_t num_shards, std::size_t max_id_bytes) {
  return sharding_.start_proxy(std::move(type), num_shards, max_id_bytes);
}

void ShardingClient::tell(std::string_view type, std::string_view id, Message msg, const ActorRef& sender) {
  sharding_.tell(type, id, std::move(msg), sender);
}

std::future<Result<Message>> ShardingClient::ask(std::string_view type, std::string_view id, const Message& msg,
                                                 std::chrono::milliseconds timeout) {
  return sharding_.ask(type, id, msg, timeout);
}

std::future<Result<Message>> ShardingClient::ask(std::string_view type, std::string_view id, const Message& msg,
                                                 AskOptions options) {
  return sharding_.ask(type, id, msg, std::move(options));
}

std::uint64_t ShardingClient::coordinator() const { return sharding_.coordinator(); }
std::vector<ShardInfo> ShardingClient::shards(std::string_view type) const { return sharding_.shards(type); }
ShardingStats ShardingClient::stats() const { return sharding_.stats(); }

}  // namespace troupe::sharding
