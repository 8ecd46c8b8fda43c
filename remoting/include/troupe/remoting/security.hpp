#pragma once
/// \file
/// CURVE keys and the allow-list of peers. Keys come only from libsodium's CSPRNG (through
/// zmq_curve_keypair); a secret key file that group or others may read is refused. The
/// allow-list can be replaced at runtime (the ZAP handler consults it on every handshake).

#include <cstdint>
#include <filesystem>
#include <memory>
#include <mutex>
#include <set>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include <troupe/serialization/result.hpp>

namespace troupe::remoting {

enum class SecurityErrc {
  bad_key = 1,          ///< not a 40-character Z85 CURVE key
  key_file_exposed,     ///< a secret key file readable or writable by group or others
  key_file_unreadable,  ///< missing or unreadable file
  curve_unavailable,    ///< libzmq was built without CURVE
};
const std::error_category& security_category() noexcept;
inline std::error_code make_error_code(SecurityErrc e) noexcept { return {static_cast<int>(e), security_category()}; }

/// A CURVE key pair, both keys Z85-encoded (40 characters).
struct CurveKeyPair {
  std::string public_key;
  std::string secret_key;
};

/// A fresh key pair from the CSPRNG.
Result<CurveKeyPair> generate_keypair();
/// True for a well-formed Z85 CURVE key.
bool valid_z85_key(std::string_view key) noexcept;
/// Writes `<dir>/<name>.key` (the secret key, mode 0600) and `<dir>/<name>.pub` (mode 0644).
std::error_code save_keypair(const CurveKeyPair& kp, const std::filesystem::path& dir, const std::string& name);
/// Reads a secret key file written by save_keypair (the public key is derived from it).
Result<CurveKeyPair> load_keypair(const std::filesystem::path& secret_file);

/// Parses an allow-list: one Z85 public key per line; blank lines, lines starting with `#` and
/// `#` comments after the key (separated by whitespace) are ignored.
/// A bad line is an error naming its line number.
Result<std::vector<std::string>> parse_allow_list(std::string_view text, std::string* error_detail = nullptr);

/// The public keys allowed to connect. Thread-safe; replace() takes effect for the next handshake.
class AllowList {
 public:
  AllowList() = default;
  explicit AllowList(const std::vector<std::string>& keys) { replace(keys); }
  void replace(const std::vector<std::string>& keys) {
    std::set<std::string> next(keys.begin(), keys.end());
    std::unique_lock lk(mu_);
    keys_.swap(next);
  }
  bool contains(std::string_view key) const {
    std::shared_lock lk(mu_);
    return keys_.count(std::string(key)) != 0;
  }
  std::size_t size() const {
    std::shared_lock lk(mu_);
    return keys_.size();
  }

 private:
  mutable std::shared_mutex mu_;
  std::set<std::string> keys_;
};

}  // namespace troupe::remoting

template <>
struct std::is_error_code_enum<troupe::remoting::SecurityErrc> : std::true_type {};
