// frame_bench: the remoting frame codec alone, with no sockets and no threads: what a sending
// I/O thread spends per envelope to lay a frame out (BatchBuilder::add, and finish() and
// release() once per frame), and what a receiving one spends to verify and decode it
// (decode_frame). Plain envelopes (a remote tell to an actor) and keyed ones (a sharded tell to
// an entity behind a region), with 64-byte and 1 KiB payloads, in frames of the sizes the
// transport sends under load (about 300 small or 56 large messages in 64 KiB).
//
// Google Benchmark; items_per_second counts envelopes. Under `valgrind --tool=callgrind` the
// instruction counts per envelope are repeatable, which the rates on a shared VM are not.

#include <benchmark/benchmark.h>

#include <string>
#include <vector>

#include <troupe/remoting/frame.hpp>

#include "remote_bench_generated.h"

namespace troupe::remoting {
namespace {

constexpr std::size_t kFrameBudget = 60u << 10;  // the transport's frames stay below 64 KiB

Message blob(std::uint64_t seq, std::size_t bytes) {
  const std::vector<std::uint8_t> data(bytes, 0x5a);
  return Message::build<bench::Blob>([&](auto& b) { return bench::CreateBlob(b, seq, b.CreateVector(data)); });
}

// The messages of one frame: as many `payload`-byte Blobs as fit the frame budget.
std::vector<Message> frame_messages(std::size_t payload) {
  std::vector<Message> out;
  for (std::size_t bytes = 0; bytes < kFrameBudget; bytes += payload + 80) out.push_back(blob(out.size(), payload));
  return out;
}

// Entity ids as the sharding benchmark's ("e0" .. "e299"), one per message.
std::vector<std::string> entity_ids(std::size_t n) {
  std::vector<std::string> ids;
  for (std::size_t i = 0; i < n; ++i) ids.push_back("e" + std::to_string(i % 300));
  return ids;
}

void add_all(BatchBuilder& b, const std::vector<Message>& msgs, const std::vector<std::string>& ids, bool keyed) {
  for (std::size_t i = 0; i < msgs.size(); ++i) {
    if (keyed) {
      const KeyedRoute route{ids[i], static_cast<std::uint32_t>(i % 100), 7, 1};
      b.add(msgs[i].type(), "/system/sharding/bench", "", 0, msgs[i].bytes(), &route);
    } else {
      b.add(msgs[i].type(), "/user/sink", "", 0, msgs[i].bytes());
    }
  }
}

void BM_Encode(benchmark::State& state) {
  const auto payload = static_cast<std::size_t>(state.range(0));
  const bool keyed = state.range(1) != 0;
  const auto msgs = frame_messages(payload);
  const auto ids = entity_ids(msgs.size());
  FrameBufferPool pool(64u << 10);
  BatchBuilder b(64u << 10, &pool);
  for (auto _ : state) {
    add_all(b, msgs, ids, keyed);
    benchmark::DoNotOptimize(b.finish("troupe://00000000000000ff@127.0.0.1:7947", 42).data());
    auto frame = b.release();  // back to the pool, as ZeroMQ gives it back once sent
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * msgs.size()));
}

void BM_Decode(benchmark::State& state) {
  const auto payload = static_cast<std::size_t>(state.range(0));
  const bool keyed = state.range(1) != 0;
  const auto msgs = frame_messages(payload);
  const auto ids = entity_ids(msgs.size());
  BatchBuilder b;
  add_all(b, msgs, ids, keyed);
  const auto f = b.finish("troupe://00000000000000ff@127.0.0.1:7947", 42);
  // 8-aligned, as a received ZeroMQ message is.
  std::vector<std::uint64_t> frame((f.size() + 7) / 8);
  std::memcpy(frame.data(), f.data(), f.size());
  const std::span<const std::uint8_t> bytes(reinterpret_cast<const std::uint8_t*>(frame.data()), f.size());
  MessageRegistry registry;
  registry.add<bench::Blob>();
  const FrameLimits limits;
  for (auto _ : state) {
    FrameReport report;
    auto r = decode_frame(bytes, registry, limits, report);
    if (!r || r->envelopes.size() != msgs.size()) {
      state.SkipWithError("the frame did not decode whole");
      break;
    }
    benchmark::DoNotOptimize(r->envelopes.data());
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * msgs.size()));
}

// Arguments: payload bytes, keyed (0 or 1).
BENCHMARK(BM_Encode)->ArgNames({"payload", "keyed"})->ArgsProduct({{64, 1024}, {0, 1}});
BENCHMARK(BM_Decode)->ArgNames({"payload", "keyed"})->ArgsProduct({{64, 1024}, {0, 1}});

}  // namespace
}  // namespace troupe::remoting

BENCHMARK_MAIN();
