#include <troupe/remoting/security.hpp>

#include <sys/stat.h>

#include <fstream>
#include <sstream>

#include <zmq.h>

namespace troupe::remoting {

namespace {
class SecurityCategory final : public std::error_category {
 public:
  const char* name() const noexcept override { return "troupe.security"; }
  std::string message(int c) const override {
    switch (static_cast<SecurityErrc>(c)) {
      case SecurityErrc::bad_key: return "not a 40-character Z85 CURVE key";
      case SecurityErrc::key_file_exposed: return "secret key file is accessible to group or others (chmod 600)";
      case SecurityErrc::key_file_unreadable: return "key file missing or unreadable";
      case SecurityErrc::curve_unavailable: return "libzmq has no CURVE support";
    }
    return "unknown security error";
  }
};

std::string trim(std::string_view s) {
  const auto b = s.find_first_not_of(" \t\r\n");
  if (b == std::string_view::npos) return {};
  const auto e = s.find_last_not_of(" \t\r\n");
  return std::string(s.substr(b, e - b + 1));
}
}  // namespace

const std::error_category& security_category() noexcept {
  static const SecurityCategory cat;
  return cat;
}

bool valid_z85_key(std::string_view key) noexcept {
  if (key.size() != 40) return false;
  char z[41];
  key.copy(z, 40);
  z[40] = '\0';
  std::uint8_t raw[32];
  return zmq_z85_decode(raw, z) != nullptr;
}

Result<CurveKeyPair> generate_keypair() {
  char pub[41], sec[41];
  if (zmq_curve_keypair(pub, sec) != 0) return SecurityErrc::curve_unavailable;
  return CurveKeyPair{pub, sec};
}

std::error_code save_keypair(const CurveKeyPair& kp, const std::filesystem::path& dir, const std::string& name) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return ec;
  const auto secret = dir / (name + ".key");
  {
    // Create with 0600 before writing anything into it.
    std::ofstream(secret, std::ios::trunc).close();
    std::filesystem::permissions(secret, std::filesystem::perms::owner_read | std::filesystem::perms::owner_write,
                                 std::filesystem::perm_options::replace, ec);
    if (ec) return ec;
    std::ofstream f(secret, std::ios::trunc);
    f << kp.secret_key << "\n";
    if (!f) return SecurityErrc::key_file_unreadable;
  }
  std::ofstream p(dir / (name + ".pub"), std::ios::trunc);
  p << kp.public_key << "\n";
  return p ? std::error_code{} : make_error_code(SecurityErrc::key_file_unreadable);
}

Result<CurveKeyPair> load_keypair(const std::filesystem::path& secret_file) {
  struct stat st {};
  if (::stat(secret_file.c_str(), &st) != 0) return SecurityErrc::key_file_unreadable;
  if (st.st_mode & (S_IRWXG | S_IRWXO)) return SecurityErrc::key_file_exposed;
  std::ifstream f(secret_file);
  std::string line;
  if (!f || !std::getline(f, line)) return SecurityErrc::key_file_unreadable;
  const auto secret = trim(line);
  if (!valid_z85_key(secret)) return SecurityErrc::bad_key;
  char pub[41];
  if (zmq_curve_public(pub, secret.c_str()) != 0) return SecurityErrc::curve_unavailable;
  return CurveKeyPair{pub, secret};
}

Result<std::vector<std::string>> parse_allow_list(std::string_view text, std::string* error_detail) {
  std::vector<std::string> keys;
  std::istringstream in{std::string(text)};
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    // '#' is a Z85 character: a comment starts a line or follows the key after whitespace.
    const auto t = trim(line);
    if (t.empty() || t.front() == '#') continue;
    const auto space = t.find_first_of(" \t");
    const auto key = t.substr(0, space);
    const auto rest = space == std::string::npos ? std::string{} : trim(std::string_view(t).substr(space));
    if (!valid_z85_key(key) || (!rest.empty() && rest.front() != '#')) {
      if (error_detail) *error_detail = "line " + std::to_string(n) + ": not a Z85 CURVE public key";
      return SecurityErrc::bad_key;
    }
    keys.push_back(key);
  }
  return keys;
}

}  // namespace troupe::remoting
