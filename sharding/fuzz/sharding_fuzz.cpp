// libFuzzer target: the sharding protocol as another node could send it. One cluster node (real
// UDP gossip, real ZeroMQ transport) hosts an entity type; each input is one sharding message of
// a registered type (the first byte picks which) in arbitrary bytes. What the registry's verifier
// accepts (what the transport would deliver) goes to the region or to the coordinator, and an
// ask through the region to a fixed entity follows, so that the region has handled the input
// before the next one. Build with `make fuzz` (clang, -DTROUPE_FUZZ=ON).
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>

#include <troupe/node/node.hpp>
#include <troupe/serialization/sharding_generated.h>
#include <troupe/sharding/region.hpp>

#include "cluster_nodes.hpp"
#include "fuzz_seeds.hpp"

namespace {

using namespace troupe;
using namespace std::chrono_literals;

const std::string kType = "fuzz";
constexpr std::uint32_t kShards = 16;

/// Echoes what it gets to its sender.
class Echo final : public sharding::Entity {
 public:
  explicit Echo(std::string) {}
  void receive(const Message& m) override {
    if (sender()) sender().tell(m, self());
  }
};

// The message types another node may send (those the sharding layer registers).
constexpr TypeId kTypes[] = {
    type_id_v<sharding::EntityEnvelope>, type_id_v<sharding::EntityError>,      type_id_v<sharding::Passivate>,
    type_id_v<sharding::ShardUnavailable>, type_id_v<sharding::NodeReport>,     type_id_v<sharding::ReportRequest>,
    type_id_v<sharding::ReportAck>,      type_id_v<sharding::ShardTableUpdate>, type_id_v<sharding::TableAck>,
    type_id_v<sharding::HandOff>,        type_id_v<sharding::EntityState>,      type_id_v<sharding::ShardStopped>,
    type_id_v<sharding::ShardState>,     type_id_v<sharding::SideHeartbeat>,
};
constexpr std::size_t kTypeCount = sizeof(kTypes) / sizeof(kTypes[0]);

struct Harness {
  testkit::ClusterKeys keys{1};
  std::unique_ptr<node::Node> node;
  std::unique_ptr<sharding::Sharding> sh;
  ActorRef region, coordinator;
  Message ping = Message::build<test::Ping>([](auto& b) { return test::CreatePing(b, 1, 2); });

  Harness() {
    spdlog::set_level(spdlog::level::off);
    node = testkit::start_cluster_node(keys, 0, "");
    sharding::ClusterShardingConfig cfg;
    cfg.resend_interval = 200ms;
    sh = std::make_unique<sharding::Sharding>(node->system(), node->transport(), *node->membership(), cfg);
    sharding::EntitySettings s;
    s.type = kType;
    s.num_shards = kShards;
    region = sh->start<Echo>(s);
    coordinator = node->system().lookup("/system/sharding-coordinator");
    // Settled: the entity answers through its region.
    (void)testkit::eventually([&] { return static_cast<bool>(sh->ask(kType, "sync", ping, 1s).get()); }, 30s);
  }
};

Harness& harness() {
  static Harness* h = new Harness;  // never destroyed: libFuzzer exits without unwinding
  return *h;
}

std::vector<std::uint8_t> with_selector(std::size_t type_index, bool to_coordinator, const Message& m) {
  std::vector<std::uint8_t> out(1 + m.size());
  out[0] = static_cast<std::uint8_t>(type_index * 2 + (to_coordinator ? 1 : 0));
  if (m.size() != 0) std::memcpy(out.data() + 1, m.bytes().data(), m.size());
  return out;
}

// Valid messages as a starting point: FlatBuffers' structure is hard to discover from nothing.
void write_seeds(const std::filesystem::path& dir) {
  using namespace sharding;
  auto& h = harness();
  const auto region_addr = h.node->transport().address().to_string() + "/system/sharding-" + kType;
  const auto ping = h.ping;
  auto env = Message::build<EntityEnvelope>([&](flatbuffers::FlatBufferBuilder& b) {
    return CreateEntityEnvelope(b, b.CreateString("e1"), ping.type(), b.CreateVector(ping.bytes().data(), ping.size()),
                                b.CreateString(kType), 3, 1, 1, b.CreateString("key"));
  });
  auto table = Message::build<ShardTableUpdate>([&](flatbuffers::FlatBufferBuilder& b) {
    std::vector<std::uint16_t> owner(kShards, 1);
    std::vector<std::uint64_t> epoch(kShards, 7);
    std::vector<std::uint8_t> moving(kShards, 0);
    return CreateShardTableUpdate(b, b.CreateString(kType), 1, 99, kShards, b.CreateVectorOfStrings({region_addr}),
                                  b.CreateVector(owner), b.CreateVector(epoch), b.CreateVector(moving));
  });
  auto report = Message::build<NodeReport>([&](flatbuffers::FlatBufferBuilder& b) {
    std::vector<std::uint32_t> shards{1, 2};
    std::vector<std::uint64_t> epochs{3, 4};
    std::vector<flatbuffers::Offset<TypeReport>> types{
        CreateTypeReport(b, b.CreateString(kType), kShards, false, b.CreateVector(shards), b.CreateVector(epochs))};
    return CreateNodeReport(b, 1, 2, b.CreateVector(types), 5, false, b.CreateString("key"));
  });
  auto handoff = Message::build<HandOff>([&](flatbuffers::FlatBufferBuilder& b) {
    return CreateHandOff(b, b.CreateString(kType), 1, 3, 2);
  });
  auto state = Message::build<ShardState>([&](flatbuffers::FlatBufferBuilder& b) {
    std::vector<flatbuffers::Offset<EntityState>> v{
        CreateEntityState(b, b.CreateString("e1"), ping.type(), b.CreateVector(ping.bytes().data(), ping.size()))};
    return CreateShardState(b, b.CreateString(kType), 1, 3, 2, b.CreateVector(v));
  });
  auto index = [](TypeId t) {
    std::size_t i = 0;
    while (kTypes[i] != t) ++i;
    return i;
  };
  int n = 0;
  for (const auto* m : {&env, &table, &report, &handoff, &state}) {
    for (bool to_coordinator : {false, true}) {
      troupe::fuzz::write_seed(dir, "seed-" + std::to_string(n++), with_selector(index(m->type()), to_coordinator, *m));
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
  if (auto dir = troupe::fuzz::corpus_dir(*argc, *argv); !dir.empty()) write_seeds(dir);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  auto& h = harness();
  const auto type = kTypes[(data[0] / 2) % kTypeCount];
  const bool to_coordinator = data[0] % 2;
  // What the transport does with an envelope's payload before any actor sees it.
  auto m = h.node->system().registry().decode(type, {data + 1, size - 1});
  if (!m) return 0;
  (to_coordinator ? h.coordinator : h.region).tell(*m);
  // The region handles messages in order: once this is answered (or refused), the input was
  // handled. A forged input may have taken the shard away: then this answer is a refusal.
  (void)h.sh->ask(kType, "sync", h.ping, 200ms).get();
  return 0;
}
