#include <troupe/membership/keyring.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <mutex>
#include <sstream>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

namespace troupe::membership {

namespace {
class KeyringCategory final : public std::error_category {
 public:
  const char* name() const noexcept override { return "troupe.keyring"; }
  std::string message(int c) const override {
    switch (static_cast<KeyringErrc>(c)) {
      case KeyringErrc::bad_key: return "not a base64-encoded 32-byte AES-256 key";
      case KeyringErrc::not_installed: return "key is not installed in the keyring";
      case KeyringErrc::remove_primary: return "the primary key cannot be removed (use() another key first)";
      case KeyringErrc::key_id_collision: return "another installed key has the same key id";
      case KeyringErrc::empty_keyring: return "keyring has no key";
      case KeyringErrc::key_file_exposed: return "keyring file is accessible to group or others (chmod 600)";
      case KeyringErrc::key_file_unreadable: return "keyring file missing or unreadable";
      case KeyringErrc::rng_failed: return "the random number generator failed";
    }
    return "unknown keyring error";
  }
};

constexpr std::size_t kEncodedKeySize = 44;          // 4 * ceil(32 / 3)
constexpr std::uintmax_t kMaxKeyringFileSize = 1 << 20;  // far more than any sane keyring

std::string_view trim(std::string_view s) {
  const auto b = s.find_first_not_of(" \t\r\n");
  if (b == std::string_view::npos) return {};
  const auto e = s.find_last_not_of(" \t\r\n");
  return s.substr(b, e - b + 1);
}

std::error_code errno_code() { return {errno, std::system_category()}; }
}  // namespace

const std::error_category& keyring_category() noexcept {
  static const KeyringCategory cat;
  return cat;
}

Result<Key> generate_key() {
  Key k{};
  if (RAND_bytes(k.data(), static_cast<int>(k.size())) != 1) return KeyringErrc::rng_failed;
  return k;
}

std::string encode_key(const Key& key) {
  unsigned char out[kEncodedKeySize + 1];
  const int n = EVP_EncodeBlock(out, key.data(), static_cast<int>(key.size()));
  return std::string(reinterpret_cast<const char*>(out), static_cast<std::size_t>(n));
}

Result<Key> decode_key(std::string_view text) {
  const auto t = trim(text);
  // 32 bytes encode to 43 significant characters and exactly one '=' of padding.
  if (t.size() != kEncodedKeySize || t[43] != '=' || t[42] == '=') return KeyringErrc::bad_key;
  unsigned char out[33];
  if (EVP_DecodeBlock(out, reinterpret_cast<const unsigned char*>(t.data()), static_cast<int>(t.size())) != 33) {
    return KeyringErrc::bad_key;
  }
  Key k{};
  std::copy_n(out, k.size(), k.begin());
  OPENSSL_cleanse(out, sizeof out);
  // Canonical form only: the unused low bits of the last character must be zero.
  if (encode_key(k) != t) return KeyringErrc::bad_key;
  return k;
}

KeyId key_id(const Key& key) noexcept {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_Digest(key.data(), key.size(), md, &len, EVP_sha256(), nullptr) != 1 || len < 4) return 0;
  return (KeyId{md[0]} << 24) | (KeyId{md[1]} << 16) | (KeyId{md[2]} << 8) | KeyId{md[3]};
}

Keyring::Keyring(const Key& primary) { entries_.push_back({primary, key_id(primary)}); }

Result<std::shared_ptr<Keyring>> Keyring::create(const std::vector<Key>& keys) {
  if (keys.empty()) return KeyringErrc::empty_keyring;
  auto ring = std::make_shared<Keyring>(keys.front());
  for (std::size_t i = 1; i < keys.size(); ++i) {
    if (auto ec = ring->install(keys[i])) return ec;
  }
  return ring;
}

Keyring::~Keyring() {
  for (auto& e : entries_) OPENSSL_cleanse(e.key.data(), e.key.size());
}

std::error_code Keyring::install(const Key& key) {
  const auto id = key_id(key);
  std::unique_lock lk(mu_);
  for (const auto& e : entries_) {
    if (e.id != id) continue;
    if (e.key == key) return {};
    return KeyringErrc::key_id_collision;
  }
  entries_.push_back({key, id});
  return {};
}

std::error_code Keyring::use(const Key& key) {
  std::unique_lock lk(mu_);
  auto it = std::find_if(entries_.begin(), entries_.end(), [&](const Entry& e) { return e.key == key; });
  if (it == entries_.end()) return KeyringErrc::not_installed;
  // Move it to the front, keeping the others in their order.
  std::rotate(entries_.begin(), it, it + 1);
  return {};
}

std::error_code Keyring::remove(const Key& key) {
  std::unique_lock lk(mu_);
  auto it = std::find_if(entries_.begin(), entries_.end(), [&](const Entry& e) { return e.key == key; });
  if (it == entries_.end()) return KeyringErrc::not_installed;
  if (it == entries_.begin()) return KeyringErrc::remove_primary;
  OPENSSL_cleanse(it->key.data(), it->key.size());
  entries_.erase(it);
  return {};
}

std::vector<Key> Keyring::keys() const {
  std::shared_lock lk(mu_);
  std::vector<Key> out;
  out.reserve(entries_.size());
  for (const auto& e : entries_) out.push_back(e.key);
  return out;
}

Key Keyring::primary() const {
  std::shared_lock lk(mu_);
  return entries_.front().key;
}

std::pair<Key, KeyId> Keyring::primary_with_id() const {
  std::shared_lock lk(mu_);
  return {entries_.front().key, entries_.front().id};
}

std::optional<Key> Keyring::find(KeyId id) const {
  std::shared_lock lk(mu_);
  for (const auto& e : entries_) {
    if (e.id == id) return e.key;
  }
  return std::nullopt;
}

std::size_t Keyring::size() const {
  std::shared_lock lk(mu_);
  return entries_.size();
}

Result<std::vector<Key>> parse_keyring(std::string_view text, std::string* error_detail) {
  std::vector<Key> keys;
  std::size_t line_no = 0;
  while (!text.empty()) {
    ++line_no;
    const auto nl = text.find('\n');
    const auto line = trim(text.substr(0, nl));
    text = nl == std::string_view::npos ? std::string_view{} : text.substr(nl + 1);
    if (line.empty() || line.front() == '#') continue;
    const auto space = line.find_first_of(" \t");
    const auto rest = space == std::string_view::npos ? std::string_view{} : trim(line.substr(space));
    auto key = decode_key(line.substr(0, space));
    if (!key || (!rest.empty() && rest.front() != '#')) {
      if (error_detail) *error_detail = "line " + std::to_string(line_no) + ": not a base64-encoded 32-byte key";
      return KeyringErrc::bad_key;
    }
    if (std::find(keys.begin(), keys.end(), *key) == keys.end()) keys.push_back(*key);
  }
  if (keys.empty()) {
    if (error_detail) *error_detail = "no key in the keyring";
    return KeyringErrc::empty_keyring;
  }
  return keys;
}

Result<std::shared_ptr<Keyring>> load_keyring(const std::filesystem::path& path, std::string* error_detail) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) return KeyringErrc::key_file_unreadable;
  if (st.st_mode & (S_IRWXG | S_IRWXO)) return KeyringErrc::key_file_exposed;
  if (static_cast<std::uintmax_t>(st.st_size) > kMaxKeyringFileSize) return KeyringErrc::key_file_unreadable;
  std::ifstream f(path, std::ios::binary);
  if (!f) return KeyringErrc::key_file_unreadable;
  std::ostringstream text;
  text << f.rdbuf();
  if (f.bad()) return KeyringErrc::key_file_unreadable;
  auto s = std::move(text).str();
  auto keys = parse_keyring(s, error_detail);
  OPENSSL_cleanse(s.data(), s.size());
  if (!keys) return keys.error();
  auto ring = Keyring::create(*keys);
  for (auto& k : *keys) OPENSSL_cleanse(k.data(), k.size());
  return ring;
}

std::error_code save_keyring(const Keyring& keyring, const std::filesystem::path& path) {
  std::string text = "# troupe gossip keyring: one base64 AES-256 key per line, the first is the primary\n";
  for (const auto& k : keyring.keys()) text += encode_key(k) + "\n";

  auto tmp = path;
  tmp += ".tmp-" + std::to_string(::getpid());
  ::unlink(tmp.c_str());
  // Created 0600 (and O_EXCL, so never an existing file someone else may have opened) before a
  // single key byte is written.
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, S_IRUSR | S_IWUSR);
  if (fd < 0) return errno_code();
  std::error_code ec;
  std::size_t done = 0;
  while (done < text.size()) {
    const auto n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      ec = errno_code();
      break;
    }
    done += static_cast<std::size_t>(n);
  }
  OPENSSL_cleanse(text.data(), text.size());
  if (!ec && ::fsync(fd) != 0) ec = errno_code();
  if (::close(fd) != 0 && !ec) ec = errno_code();
  if (!ec && ::rename(tmp.c_str(), path.c_str()) != 0) ec = errno_code();
  if (ec) ::unlink(tmp.c_str());
  return ec;
}

}  // namespace troupe::membership
