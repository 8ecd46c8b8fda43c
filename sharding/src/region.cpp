#include <troupe/sharding/region.hpp>

#include <deque>
#include <stdexcept>

#include <fmt/format.h>
#include <spdlog/logger.h>

#include <troupe/serialization/log.hpp>
#include <troupe/serialization/sharding_generated.h>
#include <troupe/serialization/system_generated.h>

namespace troupe::sharding {

struct Sharding::Shared {
  std::mutex mu;
  struct TypeEntry {
    EntitySettings settings;
    ActorRef region;
  };
  std::unordered_map<std::string, TypeEntry> types;
  std::atomic<std::uint64_t> routed{0}, activations{0}, passivations{0}, buffered{0}, unknown_type{0}, bad_id{0},
      live{0};
  ThrottledLog refused_log;
};

namespace {

Message entity_error(std::string_view type, std::string_view id, const std::string& reason) {
  return Message::build<EntityError>([&](flatbuffers::FlatBufferBuilder& b) {
    return CreateEntityError(b, b.CreateString(type.data(), type.size()), b.CreateString(id.data(), id.size()),
                             b.CreateString(reason));
  });
}

/// One entity type's region on this node: owns the entities as children.
class Region final : public Actor {
 public:
  Region(EntitySettings s, EntityFactory f, std::shared_ptr<Sharding::Shared> shared)
      : settings_(std::move(s)), factory_(std::move(f)), shared_(std::move(shared)) {}

  void pre_start() override {
    if (settings_.passivate_after.count() > 0) {
      static const Message tick = Message::build<PassivationTick>([](auto& b) { return CreatePassivationTick(b); });
      context().schedule_every(settings_.passivate_after / 2, tick);
    }
  }

  void receive(const Message& m) override {
    if (const auto* env = m.as<EntityEnvelope>()) return on_envelope(*env);
    if (m.is<sys::Terminated>()) return on_terminated(sender());
    if (m.is<Passivate>()) return passivate_sender();
    if (m.is<PassivationTick>()) return on_tick();
  }

  void post_stop() override { shared_->live.fetch_sub(entities_.size(), std::memory_order_relaxed); }

 private:
  struct Entity {
    ActorRef ref;
    TimerService::Clock::time_point last_active;  // on the system's timer clock (tests drive it)
    bool passivating = false;
    // Messages that arrive while it passivates (allocated only then: most entities never need it).
    std::unique_ptr<std::deque<std::pair<Message, ActorRef>>> waiting;
  };

  void on_envelope(const EntityEnvelope& env) {
    const std::string id = env.entity_id() ? env.entity_id()->str() : std::string();
    auto msg = Message::copy_of(env.type_id(), env.payload() ? std::span<const std::uint8_t>(env.payload()->data(), env.payload()->size())
                                                             : std::span<const std::uint8_t>{});
    auto it = entities_.find(id);
    if (it == entities_.end()) it = activate(id);
    auto& e = it->second;
    if (e.passivating) {
      shared_->buffered.fetch_add(1, std::memory_order_relaxed);
      if (!e.waiting) e.waiting = std::make_unique<std::deque<std::pair<Message, ActorRef>>>();
      e.waiting->emplace_back(std::move(msg), sender());
      return;
    }
    e.last_active = context().system().timers().now();
    shared_->routed.fetch_add(1, std::memory_order_relaxed);
    e.ref.tell(std::move(msg), sender());
  }

  std::unordered_map<std::string, Entity>::iterator activate(const std::string& id) {
    auto ref = factory_(context(), SpawnOptions{.name = entity_child_name(id)}, id);
    context().watch(ref);
    shared_->activations.fetch_add(1, std::memory_order_relaxed);
    shared_->live.fetch_add(1, std::memory_order_relaxed);
    return entities_.emplace(id, Entity{ref, context().system().timers().now(), false, nullptr}).first;
  }

  void passivate(Entity& e) {
    if (e.passivating) return;
    e.passivating = true;
    shared_->passivations.fetch_add(1, std::memory_order_relaxed);
    // What the entity already has queued is processed first; later messages wait here.
    context().system().stop_after_queued(e.ref);
  }

  /// The entity `ref` is, found from its name (the last segment of its path): no reverse map,
  /// which would cost every idle entity another entry.
  std::unordered_map<std::string, Entity>::iterator find(const ActorRef& ref) {
    if (!ref) return entities_.end();
    const auto path = ref.path();
    auto it = entities_.find(entity_id_of_name(std::string_view(path).substr(path.rfind('/') + 1)));
    return it != entities_.end() && it->second.ref == ref ? it : entities_.end();
  }

  void passivate_sender() {
    if (auto it = find(sender()); it != entities_.end()) passivate(it->second);
  }

  void on_terminated(const ActorRef& who) {
    auto it = find(who);
    if (it == entities_.end()) return;
    const std::string id = it->first;
    auto e = std::move(it->second);
    entities_.erase(it);
    shared_->live.fetch_sub(1, std::memory_order_relaxed);
    if (!e.waiting || e.waiting->empty()) return;
    // Messages that arrived while it stopped start its next activation, in order.
    auto next = activate(id);
    for (auto& [msg, from] : *e.waiting) {
      shared_->routed.fetch_add(1, std::memory_order_relaxed);
      next->second.ref.tell(std::move(msg), from);
    }
  }

  void on_tick() {
    const auto idle_since = context().system().timers().now() - settings_.passivate_after;
    for (auto& [id, e] : entities_) {
      if (!e.passivating && e.last_active <= idle_since) passivate(e);
    }
  }

  EntitySettings settings_;
  EntityFactory factory_;
  std::shared_ptr<Sharding::Shared> shared_;
  std::unordered_map<std::string, Entity> entities_;
};

}  // namespace

std::string entity_child_name(std::string_view id) {
  std::string out;
  out.reserve(id.size());
  for (unsigned char c : id) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-') {
      out.push_back(static_cast<char>(c));
    } else {
      out += fmt::format("%{:02X}", c);
    }
  }
  return out;
}

std::string entity_id_of_name(std::string_view name) {
  std::string out;
  out.reserve(name.size());
  for (std::size_t i = 0; i < name.size(); ++i) {
    if (name[i] == '%' && i + 2 < name.size()) {
      auto hex = [](char c) { return c <= '9' ? c - '0' : (c & ~0x20) - 'A' + 10; };
      out.push_back(static_cast<char>(hex(name[i + 1]) * 16 + hex(name[i + 2])));
      i += 2;
    } else {
      out.push_back(name[i]);
    }
  }
  return out;
}

Sharding::Sharding(ActorSystem& system) : system_(system), shared_(std::make_shared<Shared>()) {
  system_.registry().add<EntityEnvelope>();
  system_.registry().add<EntityError>();
  system_.registry().add<Passivate>();
}

Sharding::~Sharding() = default;

ActorRef Sharding::start(EntitySettings settings, EntityFactory factory) {
  if (settings.type.empty() || settings.type.size() > 128) throw std::invalid_argument("EntitySettings.type: 1 to 128 characters");
  if (settings.num_shards == 0) throw std::invalid_argument("EntitySettings.num_shards: at least 1");
  if (settings.max_id_bytes == 0) throw std::invalid_argument("EntitySettings.max_id_bytes: at least 1");
  if (!factory) throw std::invalid_argument("an entity factory is required");
  std::lock_guard lk(shared_->mu);
  if (shared_->types.count(settings.type)) throw std::invalid_argument("entity type '" + settings.type + "' started twice");
  auto region = system_.spawn_system<Region>(SpawnOptions{.name = "sharding-" + entity_child_name(settings.type)},
                                             settings, std::move(factory), shared_);
  shared_->types.emplace(settings.type, Shared::TypeEntry{settings, region});
  return region;
}

namespace {

/// Routes `msg` to entity (type, id) through its region, or answers `sender` with EntityError.
void route(ActorSystem& system, Sharding::Shared& shared, std::string_view type, std::string_view id,
           const Message& msg, const ActorRef& sender) {
  ActorRef region;
  std::size_t max_id = 0;
  {
    std::lock_guard lk(shared.mu);
    if (auto it = shared.types.find(std::string(type)); it != shared.types.end()) {
      region = it->second.region;
      max_id = it->second.settings.max_id_bytes;
    }
  }
  std::string why;
  if (!region) {
    shared.unknown_type.fetch_add(1, std::memory_order_relaxed);
    why = fmt::format("unknown entity type '{}' on this node", type);
  } else if (id.empty() || id.size() > max_id) {
    shared.bad_id.fetch_add(1, std::memory_order_relaxed);
    why = fmt::format("entity id must be 1 to {} bytes (got {})", max_id, id.size());
  }
  if (!why.empty()) {
    shared.refused_log.warn(system.log(), "sharding: refused a message for {}/{}: {}", type,
                            id.substr(0, std::min<std::size_t>(id.size(), 64)), why);
    if (sender) sender.tell(entity_error(type, id.substr(0, std::min<std::size_t>(id.size(), 256)), why));
    return;
  }
  region.tell(Message::build<EntityEnvelope>([&](flatbuffers::FlatBufferBuilder& b) {
                auto i = b.CreateString(id.data(), id.size());
                auto p = b.CreateVector(msg.bytes().data(), msg.size());
                return CreateEntityEnvelope(b, i, msg.type(), p);
              }),
              sender);
}

/// One ask: forwards the question with the ask's reply address as the sender, then stops.
class AskForwarder final : public Actor {
 public:
  AskForwarder(std::shared_ptr<Sharding::Shared> shared, std::string type, std::string id)
      : shared_(std::move(shared)), type_(std::move(type)), id_(std::move(id)) {}
  void receive(const Message& m) override {
    route(context().system(), *shared_, type_, id_, m, sender());
    context().stop(self());
  }

 private:
  std::shared_ptr<Sharding::Shared> shared_;
  std::string type_, id_;
};

}  // namespace

void Sharding::tell(std::string_view type, std::string_view id, const Message& msg, const ActorRef& sender) {
  route(system_, *shared_, type, id, msg, sender);
}

std::future<Result<Message>> Sharding::ask(std::string_view type, std::string_view id, const Message& msg,
                                           std::chrono::milliseconds timeout) {
  auto fwd = system_.spawn_system<AskForwarder>(SpawnOptions{}, shared_, std::string(type), std::string(id));
  return fwd.ask(msg, timeout);
}

ShardingStats Sharding::stats() const {
  const auto& s = *shared_;
  return {s.routed.load(), s.activations.load(), s.passivations.load(), s.buffered.load(),
          s.unknown_type.load(), s.bad_id.load(), s.live.load()};
}

}  // namespace troupe::sharding
