#include <troupe/node/node.hpp>

#include <algorithm>

#include <random>

#include <fmt/format.h>
#include <spdlog/logger.h>

#include <troupe/serialization/system_generated.h>

#include "node_generated.h"

namespace troupe::node {

namespace {

class EchoActor final : public Actor {
 public:
  void receive(const Message& m) override {
    if (m.is<Poison>()) {
      context().stop(self());
      return;
    }
    sender().tell(m, self());
  }
};

class SinkActor final : public Actor {
 public:
  void receive(const Message& m) override {
    if (m.is<CountQuery>()) {
      sender().tell(Message::build<Count>([&](auto& b) { return CreateCount(b, count_); }), self());
      return;
    }
    ++count_;
  }

 private:
  std::uint64_t count_ = 0;
};

class RelayActor final : public Actor {
 public:
  explicit RelayActor(remoting::Transport* t) : transport_(t) {}
  void receive(const Message& m) override {
    const auto* r = m.as<Relay>();
    if (!r || !r->target()) return;
    auto target = transport_->resolve(r->target()->string_view());
    auto reply_to = sender();
    if (!target) {
      reply_to.tell(undeliverable("bad target address"), self());
      return;
    }
    auto echo = Message::build<Echo>([&](auto& b) { return CreateEcho(b, r->seq()); });
    context().ask(*target, echo, std::chrono::seconds(10), [reply_to, me = self()](Result<Message> res) {
      reply_to.tell(res ? *res : undeliverable(res.error().message()), me);
    });
  }

 private:
  static Message undeliverable(const std::string& why) {
    return Message::build<sys::Undeliverable>([&](auto& b) { return sys::CreateUndeliverableDirect(b, why.c_str()); });
  }
  remoting::Transport* transport_;
};

/// The built-in test entity: a counter whose count survives a graceful handoff.
class TestEntity final : public sharding::Entity {
 public:
  explicit TestEntity(std::string id) : id_(std::move(id)) {}
  void receive(const Message& m) override {
    if (const auto* a = m.as<EntityAdd>()) {
      count_ += a->n();
    } else if (m.is<EntityGet>()) {
      sender().tell(value(), self());
    } else if (m.is<Echo>()) {
      sender().tell(m, self());
    }
  }
  std::optional<Message> snapshot() override { return value(); }
  void restore(const Message& state) override {
    if (const auto* v = state.as<EntityValue>()) count_ = v->count();
  }

 private:
  Message value() const {
    const auto& node = context().system().node_id();
    return Message::build<EntityValue>([&](auto& b) { return CreateEntityValueDirect(b, node.c_str(), id_.c_str(), count_); });
  }
  std::string id_;
  std::uint64_t count_ = 0;
};

}  // namespace

void register_test_messages(MessageRegistry& registry) {
  registry.add<Echo>();
  registry.add<Relay>();
  registry.add<Poison>();
  registry.add<CountQuery>();
  registry.add<Count>();
  registry.add<EntityAdd>();
  registry.add<EntityGet>();
  registry.add<EntityValue>();
}

Result<std::unique_ptr<Node>> Node::start(NodeOptions options) {
  std::unique_ptr<Node> n(new Node);
  ActorSystemConfig sc;
  sc.node_id = options.name;
  sc.workers = options.workers;
  if (options.log_format != LogFormat::text) {
    if (sc.node_id.empty()) {  // the logger needs the id the actor system would make up
      std::random_device rd;
      sc.node_id = fmt::format("{:016x}", (static_cast<std::uint64_t>(rd()) << 32) ^ rd());
    }
    sc.logger = make_logger(sc.node_id, options.log_format);
  }
  n->system_ = std::make_unique<ActorSystem>(std::move(sc));
  register_test_messages(n->system_->registry());
  const std::string curve_key = options.transport.insecure ? std::string() : options.transport.keys.public_key;
  auto t = remoting::Transport::start(*n->system_, std::move(options.transport));
  if (!t) {
    n->system_->shutdown();
    return t.error();
  }
  n->transport_ = std::move(t).value();
  for (const auto& [endpoint, key] : options.peer_keys) n->transport_->add_peer_key(endpoint, key);
  if (options.membership) {
    auto mc = std::move(*options.membership);
    mc.node_name = n->system_->node_id();
    mc.uid = n->transport_->address().uid;
    mc.remoting = n->transport_->address().to_string();
    mc.curve_key = curve_key;
    std::string why;
    auto ms = membership::MembershipService::start(std::move(mc), n->system_->log_ptr(), &why);
    if (!ms) {
      n->transport_->stop();
      n->system_->shutdown();
      return ms.error();
    }
    n->membership_ = std::move(ms).value();
    auto* transport = n->transport_.get();
    const auto self_uid = n->transport_->address().uid;
    auto user = options.on_event;
    n->membership_->subscribe([transport, self_uid, user](const membership::MembershipEvent& e) {
      using membership::EventKind;
      const auto& m = e.member;
      if (m.uid != self_uid) {
        if ((e.kind == EventKind::joined || e.kind == EventKind::up) && !m.remoting.empty() && !m.curve_key.empty()) {
          if (auto a = remoting::parse_node_address(m.remoting); a && a->uid == m.uid) {
            transport->learn_peer_key(a->endpoint(), m.curve_key, a->uid);
          }
        }
        if (e.kind == EventKind::downed || e.kind == EventKind::removed) {
          transport->node_lost(m.uid, fmt::format("member {} is {}", m.name, membership::to_string(m.status)));
        }
      }
      if (user) user(e);
    });
  }
  if (options.sharding) {
    if (!n->membership_) {
      n->stop();
      return make_error_code(std::errc::invalid_argument);
    }
    auto& so = *options.sharding;
    n->sharding_ = std::make_unique<sharding::Sharding>(*n->system_, *n->transport_, *n->membership_, so.config);
    try {
      for (const auto& s : so.test_entities) n->sharding_->start<TestEntity>(s);
      for (const auto& [type, shards] : so.proxies) n->sharding_->start_proxy(type, shards);
    } catch (const std::exception& e) {
      n->system_->log().error("sharding: {}", e.what());
      n->stop();
      return make_error_code(std::errc::invalid_argument);
    }
  }
  if (options.test_actors) {
    n->system_->spawn<EchoActor>(SpawnOptions{.name = "echo"});
    n->system_->spawn<SinkActor>(SpawnOptions{.name = "sink"});
    n->system_->spawn<RelayActor>(SpawnOptions{.name = "relay"}, n->transport_.get());
  }
  // Last, so that it never reports on parts still starting.
  if (options.admin) {
    AdminSources src{n->system_.get(), n->transport_.get(), n->membership_.get(), n->sharding_.get(),
                     std::move(options.admin->entity_types)};
    if (options.sharding) {
      for (const auto& s : options.sharding->test_entities) src.entity_types.emplace_back(s.type, s.num_shards);
      for (const auto& p : options.sharding->proxies) src.entity_types.push_back(p);
    }
    auto a = AdminServer::start(std::move(*options.admin), std::move(src));
    if (!a) {
      n->stop();
      return a.error();
    }
    n->admin_ = std::move(a).value();
  }
  return n;
}

Node::~Node() { stop(); }

void Node::stop() {
  if (stopped_) return;
  stopped_ = true;
  if (admin_) admin_->stop();  // first: it reads every other part
  if (membership_) membership_->stop();
  if (transport_) transport_->stop();
  if (system_) system_->shutdown();
}

bool Node::leave_and_stop(std::chrono::milliseconds timeout) {
  // One budget for both steps (a container runtime kills the process when its grace period is
  // over): the hand-off gets half, the leave what is left of the whole.
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  bool left = true;
  if (sharding_ && !stopped_ && !sharding_->hand_off_all(timeout / 2)) {
    system_->log().warn("leaving with shards not handed off within {} ms: their entities' state is lost", (timeout / 2).count());
    left = false;
  }
  if (membership_ && !stopped_) {
    const auto rest = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    left = membership_->leave_and_wait(std::max(rest, std::chrono::milliseconds(0))) && left;
  }
  stop();
  return left;
}

}  // namespace troupe::node
