#pragma once
// Helpers for the libFuzzer targets: they write a few valid inputs into the corpus directory
// first (FlatBuffers and sealed packets are hard to discover from nothing).

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <span>
#include <string>

namespace troupe::fuzz {

/// The corpus directory libFuzzer was given: its last argument that is not a flag ("" if none).
inline std::string corpus_dir(int argc, char** argv) {
  for (int i = argc - 1; i > 0; --i) {
    std::string a = argv[i];
    if (!a.empty() && a[0] != '-') return a;
  }
  return {};
}

/// Writes `bytes` to `dir`/`name` (creating `dir`).
inline void write_seed(const std::filesystem::path& dir, const std::string& name, std::span<const std::uint8_t> bytes) {
  std::filesystem::create_directories(dir);
  std::ofstream(dir / name, std::ios::binary)
      .write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

}  // namespace troupe::fuzz
