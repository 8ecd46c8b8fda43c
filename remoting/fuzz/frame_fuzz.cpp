// libFuzzer target: the remoting frame decoder (and through it the registry's payload
// verification) on arbitrary bytes. Build with `make fuzz` (clang, -DTROUPE_FUZZ=ON).
#include <cstddef>
#include <cstdint>

#include <troupe/remoting/frame.hpp>

#include "test_messages_generated.h"

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
    for (const auto& e : *r) {
      // Reading a decoded payload must be safe: touch every byte.
      volatile std::uint8_t sink = 0;
      for (auto b : e.payload.bytes()) sink = sink ^ b;
      (void)sink;
    }
  }
  return 0;
}
