// libFuzzer target: the gossip packet decoder and merge rules (SwimProtocol::on_packet) on
// arbitrary plaintext, as if it had passed the sealer. Build with `make fuzz`.
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>

#include <flatbuffers/flatbuffers.h>
#include <spdlog/sinks/null_sink.h>
#include <spdlog/spdlog.h>

#include <troupe/membership/swim.hpp>
#include <troupe/serialization/gossip_generated.h>

#include "fuzz_seeds.hpp"

namespace {
using namespace troupe::membership;

struct FixedClock final : Clock {
  std::chrono::nanoseconds t{std::chrono::seconds(5)};
  std::chrono::nanoseconds now() const override { return t; }
};
struct Sink final : PacketTransport {
  void send(const UdpEndpoint&, std::span<const std::uint8_t>) override {}
  std::size_t max_payload() const override { return 1300; }
};

void write_seeds(const std::filesystem::path& dir) {
  namespace fb = flatbuffers;
  for (int kind = 0; kind < 4; ++kind) {
    fb::FlatBufferBuilder b;
    auto m = troupe::gossip::CreateMemberDirect(b, "n2", 2, "127.0.0.1", 7002, "troupe://0000000000000002@127.0.0.1:7947",
                                                "", 3, troupe::gossip::MemberStatus::Up,
                                                static_cast<troupe::gossip::Liveness>(kind % 3), 9);
    std::vector<fb::Offset<troupe::gossip::Member>> ms{m};
    auto v = b.CreateVector(ms);
    fb::Offset<void> body;
    auto type = troupe::gossip::Body::NONE;
    if (kind == 1) {
      body = troupe::gossip::CreatePing(b, 1, 1).Union();
      type = troupe::gossip::Body::Ping;
    } else if (kind == 2) {
      body = troupe::gossip::CreatePushPull(b, true, false, b.CreateVector(ms)).Union();
      type = troupe::gossip::Body::PushPull;
    } else if (kind == 3) {
      body = troupe::gossip::CreatePingReq(b, 4, m).Union();
      type = troupe::gossip::Body::PingReq;
    }
    auto from = b.CreateString("n2");
    troupe::gossip::PacketBuilder pb(b);
    pb.add_protocol_version(1);
    pb.add_from_uid(2);
    pb.add_from_name(from);
    if (type != troupe::gossip::Body::NONE) {
      pb.add_body_type(type);
      pb.add_body(body);
    }
    pb.add_updates(v);
    b.Finish(pb.Finish());
    troupe::fuzz::write_seed(dir, "seed-" + std::to_string(kind), {b.GetBufferPointer(), b.GetSize()});
  }
}
}  // namespace

extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
  if (auto dir = troupe::fuzz::corpus_dir(*argc, *argv); !dir.empty()) write_seeds(dir);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static FixedClock clock;
  static Sink sink;
  static auto log = std::make_shared<spdlog::logger>("fuzz", std::make_shared<spdlog::sinks::null_sink_mt>());
  // A fresh node per input keeps runs independent; it has formed a cluster of one.
  SwimProtocol p(MembershipConfig::lan(), {"me", 1, UdpEndpoint{"127.0.0.1", 7000}, "", "", {}}, clock, sink, 1, log);
  p.join({});
  p.poll();
  p.on_packet(UdpEndpoint{"127.0.0.1", 7001}, {data, size});
  p.poll();
  (void)p.members();
  return 0;
}
