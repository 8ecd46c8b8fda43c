// Runs a libFuzzer target without libFuzzer (any compiler, part of `make test`): the target
// writes its seeds into a fresh directory, then every seed and a fixed set of mutations of each
// (byte flips, truncations, insertions; seeded, so every run feeds the same inputs) go through
// LLVMFuzzerTestOneInput. It keeps the harness working between fuzzing runs; `make fuzz` is
// where inputs are searched for.
//
// Usage: <target>_replay [mutations per seed, default 50]
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include <unistd.h>

extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv);
extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

int main(int argc, char** argv) {
  const int mutations = argc > 1 ? std::atoi(argv[1]) : 50;
  namespace fs = std::filesystem;
  const auto dir = fs::temp_directory_path() / ("troupe-fuzz-replay-" + std::to_string(::getpid()));
  std::string self = argv[0], corpus = dir.string();
  char* args[] = {self.data(), corpus.data(), nullptr};
  char** pargs = args;
  int nargs = 2;
  LLVMFuzzerInitialize(&nargs, &pargs);
  std::vector<std::vector<std::uint8_t>> seeds;
  if (fs::exists(dir)) {
    for (const auto& e : fs::directory_iterator(dir)) {
      std::ifstream in(e.path(), std::ios::binary);
      seeds.emplace_back(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    }
  }
  fs::remove_all(dir);
  if (seeds.empty()) {
    std::fprintf(stderr, "fuzz replay: the target wrote no seeds\n");
    return 1;
  }
  std::mt19937 rng(12345);
  std::size_t inputs = 0;
  for (const auto& seed : seeds) {
    LLVMFuzzerTestOneInput(seed.data(), seed.size());
    ++inputs;
    for (int k = 0; k < mutations; ++k) {
      auto m = seed;
      switch (rng() % 3) {
        case 0:  // flip a few bytes
          for (int i = 0, n = 1 + static_cast<int>(rng() % 4); i < n && !m.empty(); ++i) m[rng() % m.size()] ^= static_cast<std::uint8_t>(1 + rng() % 255);
          break;
        case 1:  // cut the tail
          m.resize(m.empty() ? 0 : rng() % m.size());
          break;
        default:  // insert bytes
          m.insert(m.begin() + static_cast<std::ptrdiff_t>(m.empty() ? 0 : rng() % m.size()), 1 + rng() % 8,
                   static_cast<std::uint8_t>(rng()));
      }
      LLVMFuzzerTestOneInput(m.data(), m.size());
      ++inputs;
    }
  }
  std::printf("fuzz replay: %zu inputs from %zu seeds, no crash\n", inputs, seeds.size());
  return 0;
}
