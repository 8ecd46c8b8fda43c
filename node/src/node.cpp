#include <troupe/node/node.hpp>

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

}  // namespace

void register_test_messages(MessageRegistry& registry) {
  registry.add<Echo>();
  registry.add<Relay>();
  registry.add<Poison>();
  registry.add<CountQuery>();
  registry.add<Count>();
}

Result<std::unique_ptr<Node>> Node::start(NodeOptions options) {
  std::unique_ptr<Node> n(new Node);
  ActorSystemConfig sc;
  sc.node_id = options.name;
  sc.workers = options.workers;
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
            transport->learn_peer_key(a->endpoint(), m.curve_key);
          }
        }
        if (e.kind == EventKind::downed || e.kind == EventKind::removed) {
          transport->node_lost(m.uid, fmt::format("member {} is {}", m.name, membership::to_string(m.status)));
        }
      }
      if (user) user(e);
    });
  }
  if (options.test_actors) {
    n->system_->spawn<EchoActor>(SpawnOptions{.name = "echo"});
    n->system_->spawn<SinkActor>(SpawnOptions{.name = "sink"});
    n->system_->spawn<RelayActor>(SpawnOptions{.name = "relay"}, n->transport_.get());
  }
  return n;
}

Node::~Node() { stop(); }

void Node::stop() {
  if (stopped_) return;
  stopped_ = true;
  if (membership_) membership_->stop();
  if (transport_) transport_->stop();
  if (system_) system_->shutdown();
}

bool Node::leave_and_stop(std::chrono::milliseconds timeout) {
  bool left = true;
  if (membership_ && !stopped_) left = membership_->leave_and_wait(timeout);
  stop();
  return left;
}

}  // namespace troupe::node
