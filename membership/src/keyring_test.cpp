// The gossip keyring: key generation and text form, the primary/decrypt-only rules of rotation,
// key ids, and keyring files (permissions, comments, a bad line named by number).

#include <gtest/gtest.h>

#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <set>
#include <thread>

#include <troupe/membership/keyring.hpp>

namespace troupe::membership {
namespace {

namespace fs = std::filesystem;

struct TempDir {
  TempDir()
      : path(fs::temp_directory_path() / ("troupe-keyring-test-" + std::to_string(::getpid()) + "-" + std::to_string(n++))) {
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
  fs::path path;
  static inline int n = 0;
};

Key fresh() {
  auto k = generate_key();
  EXPECT_TRUE(k.ok());
  return *k;
}

void write_private(const fs::path& p, const std::string& text) {
  std::ofstream(p, std::ios::trunc) << text;
  fs::permissions(p, fs::perms::owner_read | fs::perms::owner_write, fs::perm_options::replace);
}

TEST(Keyring, GeneratedKeysAreDistinctAndRoundTripThroughBase64) {
  std::set<Key> seen;
  for (int i = 0; i < 16; ++i) {
    const auto k = fresh();
    EXPECT_TRUE(seen.insert(k).second);
    const auto text = encode_key(k);
    EXPECT_EQ(text.size(), 44u);
    auto back = decode_key("  " + text + "\n");
    ASSERT_TRUE(back.ok()) << text;
    EXPECT_EQ(*back, k);
  }
}

TEST(Keyring, DecodeRefusesAnythingButA32ByteKey) {
  const auto good = encode_key(fresh());
  EXPECT_EQ(decode_key("").error(), KeyringErrc::bad_key);
  EXPECT_EQ(decode_key(good.substr(0, 43)).error(), KeyringErrc::bad_key);  // padding missing
  EXPECT_EQ(decode_key(good + "AAAA").error(), KeyringErrc::bad_key);       // 35 bytes
  EXPECT_EQ(decode_key(std::string(44, 'A')).error(), KeyringErrc::bad_key);  // 33 bytes, no padding
  EXPECT_EQ(decode_key("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==").error(), KeyringErrc::bad_key);  // 31 bytes
  auto bad_char = good;
  bad_char[5] = '!';
  EXPECT_EQ(decode_key(bad_char).error(), KeyringErrc::bad_key);
  // Non-canonical: the last significant character carries bits beyond the 32nd byte.
  std::string all_zero(43, 'A');
  EXPECT_TRUE(decode_key(all_zero + "=").ok());
  EXPECT_EQ(decode_key(std::string(42, 'A') + "B=").error(), KeyringErrc::bad_key);
  EXPECT_EQ(decode_key(good).error(), std::error_code{});
  EXPECT_EQ(make_error_code(KeyringErrc::bad_key).message(), "not a base64-encoded 32-byte AES-256 key");
}

TEST(Keyring, KeyIdIsTheFirstFourBytesOfSha256) {
  // SHA-256 of 32 zero bytes = 66687aad f862bd77 ...
  EXPECT_EQ(key_id(Key{}), 0x66687aadu);
  const auto k = fresh();
  EXPECT_EQ(key_id(k), key_id(k));
  EXPECT_NE(key_id(k), key_id(fresh()));
}

TEST(Keyring, UseInstallRemoveFollowTheRotationRules) {
  const auto a = fresh(), b = fresh(), c = fresh();
  Keyring ring(a);
  EXPECT_EQ(ring.primary(), a);
  EXPECT_EQ(ring.size(), 1u);

  EXPECT_EQ(ring.use(b), KeyringErrc::not_installed);
  EXPECT_EQ(ring.remove(b), KeyringErrc::not_installed);
  EXPECT_FALSE(ring.install(b));
  EXPECT_FALSE(ring.install(b));  // idempotent
  EXPECT_EQ(ring.size(), 2u);
  EXPECT_EQ(ring.primary(), a);  // installing never changes the primary
  EXPECT_EQ(ring.find(key_id(b)), b);
  EXPECT_EQ(ring.find(key_id(c)), std::nullopt);

  EXPECT_FALSE(ring.install(c));
  EXPECT_FALSE(ring.use(c));
  EXPECT_EQ(ring.primary(), c);
  EXPECT_EQ(ring.keys(), (std::vector<Key>{c, a, b}));  // primary first, then installation order
  EXPECT_EQ(ring.primary_with_id(), std::make_pair(c, key_id(c)));

  const auto refused = ring.remove(c);
  EXPECT_EQ(refused, KeyringErrc::remove_primary);
  EXPECT_EQ(refused.message(), "the primary key cannot be removed (use() another key first)");
  EXPECT_FALSE(ring.remove(a));
  EXPECT_EQ(ring.keys(), (std::vector<Key>{c, b}));
  EXPECT_EQ(ring.find(key_id(a)), std::nullopt);
}

TEST(Keyring, CreateTakesTheFirstKeyAsPrimaryAndRefusesAnEmptyList) {
  const auto a = fresh(), b = fresh();
  auto ring = Keyring::create({b, a, b});
  ASSERT_TRUE(ring.ok());
  EXPECT_EQ((*ring)->primary(), b);
  EXPECT_EQ((*ring)->keys(), (std::vector<Key>{b, a}));
  EXPECT_EQ(Keyring::create({}).error(), KeyringErrc::empty_keyring);
}

TEST(Keyring, ParseSkipsCommentsAndNamesABadLine) {
  const auto a = fresh(), b = fresh();
  const auto text = "# gossip keys\n\n" + encode_key(a) + "   # current\r\n  " + encode_key(b) + "\n";
  auto keys = parse_keyring(text);
  ASSERT_TRUE(keys.ok());
  EXPECT_EQ(*keys, (std::vector<Key>{a, b}));

  std::string detail;
  auto bad = parse_keyring(encode_key(a) + "\n# fine\n" + encode_key(b).substr(1) + "\n", &detail);
  EXPECT_EQ(bad.error(), KeyringErrc::bad_key);
  EXPECT_EQ(detail, "line 3: not a base64-encoded 32-byte key");

  auto trailing = parse_keyring(encode_key(a) + " junk\n", &detail);
  EXPECT_EQ(trailing.error(), KeyringErrc::bad_key);
  EXPECT_EQ(detail, "line 1: not a base64-encoded 32-byte key");

  EXPECT_EQ(parse_keyring("# nothing here\n\n").error(), KeyringErrc::empty_keyring);
}

TEST(Keyring, SavedFileIsPrivateAndLoadsBackWithThePrimaryFirst) {
  TempDir dir;
  const auto a = fresh(), b = fresh();
  Keyring ring(a);
  ASSERT_FALSE(ring.install(b));
  ASSERT_FALSE(ring.use(b));
  const auto file = dir.path / "gossip.keyring";
  ASSERT_FALSE(save_keyring(ring, file));
  EXPECT_EQ(fs::status(file).permissions() & fs::perms::all, fs::perms::owner_read | fs::perms::owner_write);
  auto loaded = load_keyring(file);
  ASSERT_TRUE(loaded.ok()) << loaded.error().message();
  EXPECT_EQ((*loaded)->keys(), (std::vector<Key>{b, a}));

  // Saving again replaces the file (atomically, through a temporary that does not linger).
  ASSERT_FALSE(ring.remove(a));
  ASSERT_FALSE(save_keyring(ring, file));
  EXPECT_EQ((*load_keyring(file))->keys(), (std::vector<Key>{b}));
  EXPECT_EQ(std::distance(fs::directory_iterator(dir.path), fs::directory_iterator{}), 1);
}

TEST(Keyring, LoadRefusesExposedMissingAndBadFiles) {
  TempDir dir;
  const auto file = dir.path / "k";
  write_private(file, encode_key(fresh()) + "\n");
  ASSERT_TRUE(load_keyring(file).ok());
  for (auto p : {fs::perms::group_read, fs::perms::others_read, fs::perms::group_write, fs::perms::others_write}) {
    fs::permissions(file, fs::perms::owner_read | fs::perms::owner_write | p, fs::perm_options::replace);
    const auto r = load_keyring(file);
    EXPECT_EQ(r.error(), KeyringErrc::key_file_exposed);
  }
  EXPECT_EQ(load_keyring(dir.path / "missing").error(), KeyringErrc::key_file_unreadable);
  EXPECT_EQ(load_keyring(dir.path).error(), KeyringErrc::key_file_unreadable);  // a directory

  write_private(file, "# header\n" + encode_key(fresh()) + "\nnot a key\n");
  std::string detail;
  EXPECT_EQ(load_keyring(file, &detail).error(), KeyringErrc::bad_key);
  EXPECT_EQ(detail, "line 3: not a base64-encoded 32-byte key");
  write_private(file, "\n# empty\n");
  EXPECT_EQ(load_keyring(file).error(), KeyringErrc::empty_keyring);
}

TEST(Keyring, ConcurrentRotationAlwaysLeavesAnInstalledPrimary) {
  const auto a = fresh(), b = fresh();
  auto ring = std::make_shared<Keyring>(a);
  ASSERT_FALSE(ring->install(b));
  std::atomic<bool> done{false};
  std::atomic<int> use_failures{0};
  std::thread rotator([&] {
    for (int i = 0; i < 2000; ++i) {
      if (ring->use(i % 2 ? a : b)) ++use_failures;
    }
    done = true;
  });
  std::size_t reads = 0, inconsistent = 0;
  do {
    const auto [key, id] = ring->primary_with_id();
    if (!(key == a || key == b) || id != key_id(key) || ring->find(id) != key) ++inconsistent;
    ++reads;
  } while (!done);
  rotator.join();
  EXPECT_EQ(use_failures, 0);
  EXPECT_EQ(inconsistent, 0u);
  EXPECT_GT(reads, 0u);
  EXPECT_EQ(ring->size(), 2u);
}

}  // namespace
}  // namespace troupe::membership
