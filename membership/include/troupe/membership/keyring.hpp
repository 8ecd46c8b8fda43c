#pragma once
/// \file
/// The gossip keyring: the AES-256 keys that seal membership datagrams (packet_seal.hpp). One key
/// is the primary (it encrypts); every installed key decrypts, so a cluster rotates keys without
/// downtime:
///   1. install(new) on every node        (everyone can read the new key)
///   2. use(new) on every node            (everyone writes with it; old packets still open)
///   3. remove(old) on every node         (once no node writes with it any more)
/// Keys come only from OpenSSL's CSPRNG. A keyring file that group or others may read or write
/// is refused.
///
/// Keyring file format: one base64 key (44 characters) per line, the first key is the primary;
/// blank lines and lines starting with `#` are ignored, as is a `#` comment after the key.

#include <array>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

#include <troupe/serialization/result.hpp>

namespace troupe::membership {

enum class KeyringErrc {
  bad_key = 1,          ///< not a base64-encoded 32-byte key
  not_installed,        ///< use() or remove() of a key that is not in the keyring
  remove_primary,       ///< remove() of the primary key: use() another key first
  key_id_collision,     ///< another installed key has the same key id (astronomically unlikely)
  empty_keyring,        ///< a keyring file or key list without any key
  key_file_exposed,     ///< a keyring file readable or writable by group or others
  key_file_unreadable,  ///< missing or unreadable keyring file, or one that could not be written
  rng_failed,           ///< the CSPRNG could not produce a key
};
const std::error_category& keyring_category() noexcept;
inline std::error_code make_error_code(KeyringErrc e) noexcept { return {static_cast<int>(e), keyring_category()}; }

/// An AES-256 key.
using Key = std::array<std::uint8_t, 32>;
/// A short, stable key identifier: the first 4 bytes of SHA-256(key), big-endian. Sent in clear
/// in every sealed packet so the receiver picks the decryption key without trying them all; it
/// reveals nothing useful about the key.
using KeyId = std::uint32_t;

/// A fresh key from OpenSSL's CSPRNG (RAND_bytes); rng_failed if it is not seeded.
Result<Key> generate_key();
/// The key's text form: standard base64 with padding (44 characters).
std::string encode_key(const Key& key);
/// Parses the text form (surrounding whitespace allowed); bad_key unless it is canonical base64
/// of exactly 32 bytes.
Result<Key> decode_key(std::string_view text);
/// The key's id (see KeyId).
KeyId key_id(const Key& key) noexcept;

/// The installed keys, one of them primary. Never empty. Thread-safe: every member may be called
/// from any thread; readers (the sealer, on every packet) take a shared lock only.
class Keyring {
 public:
  /// A keyring holding `primary` only.
  explicit Keyring(const Key& primary);
  /// A keyring holding `keys`, the first one primary; duplicates are ignored.
  /// empty_keyring for an empty list, key_id_collision if two distinct keys share an id.
  static Result<std::shared_ptr<Keyring>> create(const std::vector<Key>& keys);
  /// Wipes the key material.
  ~Keyring();
  Keyring(const Keyring&) = delete;
  Keyring& operator=(const Keyring&) = delete;

  /// Adds a decryption key (no-op if installed). key_id_collision if a different installed key
  /// has the same id.
  std::error_code install(const Key& key);
  /// Makes an installed key the primary (encryption) key; not_installed otherwise.
  std::error_code use(const Key& key);
  /// Removes a key; not_installed if absent, remove_primary for the primary key.
  std::error_code remove(const Key& key);
  /// Every installed key, the primary first, the others in installation order.
  std::vector<Key> keys() const;
  /// The primary key.
  Key primary() const;
  /// The primary key and its id, read together (consistent under a concurrent use()).
  std::pair<Key, KeyId> primary_with_id() const;
  /// The installed key with this id, if any.
  std::optional<Key> find(KeyId id) const;
  /// Number of installed keys (at least 1).
  std::size_t size() const;

 private:
  struct Entry {
    Key key;
    KeyId id;
  };
  mutable std::shared_mutex mu_;
  std::vector<Entry> entries_;  // entries_[0] is the primary
};

/// Parses keyring text (format in the file comment). On a bad line, bad_key and, when given,
/// `*error_detail` = "line N: not a base64-encoded 32-byte key". empty_keyring if no key.
Result<std::vector<Key>> parse_keyring(std::string_view text, std::string* error_detail = nullptr);
/// Reads a keyring file. key_file_unreadable if missing, key_file_exposed if group or others
/// have any permission on it, otherwise as parse_keyring (with the same `error_detail`).
Result<std::shared_ptr<Keyring>> load_keyring(const std::filesystem::path& path, std::string* error_detail = nullptr);
/// Writes the keyring (primary first) to `path`, mode 0600, atomically (a temporary file in the
/// same directory renamed over `path`). A system error_code (errno) if it cannot be written.
std::error_code save_keyring(const Keyring& keyring, const std::filesystem::path& path);

}  // namespace troupe::membership

template <>
struct std::is_error_code_enum<troupe::membership::KeyringErrc> : std::true_type {};
