// libFuzzer target: PacketSealer::open on arbitrary bytes. Build with clang and -DTROUPE_FUZZ=ON;
// run as `packet_open_fuzz CORPUS_DIR` (LLVMFuzzerInitialize seeds CORPUS_DIR with valid sealed
// datagrams: random bytes almost never get past the key id and the tag).
//
// Oracles besides "no crash, no sanitizer report": an opened datagram's plaintext is exactly the
// datagram minus the sealing overhead, and the same datagram never opens twice.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include <troupe/membership/packet_seal.hpp>

#include "fuzz_seeds.hpp"

namespace {
using troupe::membership::Key;
using troupe::membership::Keyring;
using troupe::membership::PacketSealer;
using troupe::membership::SealerOptions;

// Fixed keys, so that the seeds written by one run open in the next.
Key fixed_key(std::uint8_t salt) {
  Key k{};
  for (std::size_t i = 0; i < k.size(); ++i) k[i] = static_cast<std::uint8_t>(i * 31 + salt);
  return k;
}

constexpr const char* kCluster = "fuzz";

std::shared_ptr<Keyring> keyring() {
  static const std::shared_ptr<Keyring> ring = [] {
    auto r = std::make_shared<Keyring>(fixed_key(1));
    (void)r->install(fixed_key(2));  // a second, decrypt-only key
    return r;
  }();
  return ring;
}

using troupe::fuzz::write_seed;

void write_seeds(const std::filesystem::path& dir) {
  PacketSealer ours(keyring(), kCluster, 0x1122334455667788ULL);
  for (std::size_t n : {0, 1, 16, 100, 1200}) {
    std::vector<std::uint8_t> payload(n);
    for (std::size_t i = 0; i < n; ++i) payload[i] = static_cast<std::uint8_t>(i);
    if (auto p = ours.seal(payload)) write_seed(dir, "seed-" + std::to_string(n), *p);
  }
  // Sealed for another cluster (cluster_mismatch), and under the decrypt-only key.
  const std::vector<std::uint8_t> hello{'h', 'e', 'l', 'l', 'o'};
  if (auto p = ours.seal(hello, "another-cluster")) write_seed(dir, "seed-other-cluster", *p);
  auto second = std::make_shared<Keyring>(fixed_key(2));
  PacketSealer old_key(second, kCluster, 0x99ULL, SealerOptions{.first_counter = 0xfffffff0u});
  if (auto p = old_key.seal(hello)) write_seed(dir, "seed-second-key", *p);
}
}  // namespace

extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
  if (auto dir = troupe::fuzz::corpus_dir(*argc, *argv); !dir.empty()) write_seeds(dir);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  // A fresh sealer per input: replay state must not make runs depend on earlier inputs.
  PacketSealer sealer(keyring(), kCluster, 0xfeedULL, SealerOptions{.max_senders = 4});
  std::string their_cluster;
  auto r = sealer.open({data, size}, &their_cluster);
  if (r) {
    if (r->plaintext.size() + PacketSealer::overhead_for(r->cluster.size()) != size) std::abort();
    if (r->cluster != kCluster) std::abort();
    if (sealer.open({data, size})) std::abort();  // a replay must never open
  }
  return 0;
}
