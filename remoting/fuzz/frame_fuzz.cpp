// libFuzzer target: the remoting frame decoder (and through it the registry's payload
// verification) on arbitrary bytes. Build with `make fuzz` (clang, -DTROUPE_FUZZ=ON).
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>

#include <troupe/remoting/frame.hpp>

#include "test_messages_generated.h"

#include "fuzz_seeds.hpp"

namespace {
// Valid frames as a starting point: FlatBuffers' structure is hard to discover from nothing.
void write_seeds(const std::filesystem::path& dir) {
  using namespace troupe;
  auto ping = Message::build<test::Ping>([](auto& b) { return test::CreatePing(b, 42, 7); });
  auto text = Message::build<test::Text>([](auto& b) { return test::CreateTextDirect(b, "hello"); });
  for (int n : {0, 1, 2, 5}) {
    remoting::BatchBuilder b;
    // Keyed envelopes too, with stamps of both sizes: an EntityRoute, and an EntityStamp for
    // an epoch beyond 32 bits.
    const remoting::KeyedRoute narrow{"user-7", 12, 3, 1}, wide{"user-8", 12, std::uint64_t{1} << 40, 2};
    for (int i = 0; i < n; ++i) {
      const auto& m = (i % 2) ? text : ping;
      const auto* route = i == 3 ? &narrow : i == 4 ? &wide : nullptr;
      b.add(m.type(), route ? "/system/sharding-user" : "/user/echo", i % 3 ? "" : "troupe://00ff@127.0.0.1:7947/user/a",
            static_cast<std::uint64_t>(i), m.bytes(), route);
    }
    auto f = b.finish(n % 2 ? "troupe://00ff@127.0.0.1:7947" : "", static_cast<std::uint64_t>(n));
    troupe::fuzz::write_seed(dir, "seed-" + std::to_string(n), f);
  }
}
}  // namespace

extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
  if (auto dir = troupe::fuzz::corpus_dir(*argc, *argv); !dir.empty()) write_seeds(dir);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static troupe::MessageRegistry* registry = [] {
    auto* r = new troupe::MessageRegistry(troupe::DecodeLimits{}, troupe::make_node_logger("fuzz"));
    r->add<troupe::test::Ping>();
    r->add<troupe::test::Text>();
    r->add<troupe::test::Cmd>();
    return r;
  }();
  static const troupe::remoting::FrameLimits limits{};
  troupe::remoting::FrameReport report;
  auto r = troupe::remoting::decode_frame({data, size}, *registry, limits, report);
  if (r) {
    for (const auto& e : r->envelopes) {
      // Reading a decoded payload must be safe: touch every byte.
      volatile std::uint8_t sink = 0;
      for (auto b : e.payload.bytes()) sink = sink ^ b;
      (void)sink;
    }
  }
  return 0;
}
