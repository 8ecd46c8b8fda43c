#include <troupe/membership/packet_seal.hpp>

#include <algorithm>
#include <atomic>
#include <limits>
#include <list>
#include <mutex>
#include <stdexcept>
#include <unordered_map>

#include <openssl/crypto.h>
#include <openssl/evp.h>

namespace troupe::membership {

namespace {
class SealCategory final : public std::error_category {
 public:
  const char* name() const noexcept override { return "troupe.seal"; }
  std::string message(int c) const override {
    switch (static_cast<SealErrc>(c)) {
      case SealErrc::too_short: return "datagram too short to be sealed";
      case SealErrc::bad_version: return "unknown sealed datagram format version";
      case SealErrc::unknown_key: return "datagram sealed under a key that is not in the keyring";
      case SealErrc::auth_failed: return "datagram failed authentication (tampered with or wrong key)";
      case SealErrc::malformed: return "authentic datagram with an inconsistent inner header";
      case SealErrc::cluster_mismatch: return "datagram sealed for another cluster";
      case SealErrc::replayed: return "duplicate or replayed datagram";
      case SealErrc::too_old: return "datagram older than the sender's replay window";
      case SealErrc::oversized: return "datagram larger than the maximum datagram size";
      case SealErrc::nonce_exhausted: return "nonce counter exhausted: restart the sealer with a new incarnation";
    }
    return "unknown seal error";
  }
};

constexpr std::size_t kKeyIdSize = 4;
constexpr std::size_t kNonceSize = 12;
constexpr std::size_t kInnerSize = 16;  // sender incarnation + sequence
constexpr std::size_t kTagSize = 16;

void put_u32(std::uint8_t* p, std::uint32_t v) {
  for (int i = 3; i >= 0; --i, v >>= 8) p[i] = static_cast<std::uint8_t>(v);
}
void put_u64(std::uint8_t* p, std::uint64_t v) {
  for (int i = 7; i >= 0; --i, v >>= 8) p[i] = static_cast<std::uint8_t>(v);
}
std::uint32_t get_u32(const std::uint8_t* p) {
  std::uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v = (v << 8) | p[i];
  return v;
}
std::uint64_t get_u64(const std::uint8_t* p) {
  std::uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | p[i];
  return v;
}

[[noreturn]] void openssl_failure(const char* what) { throw std::runtime_error(std::string("OpenSSL: ") + what); }

// Wipes a key copy when it goes out of scope.
struct KeyCopy {
  Key key;
  ~KeyCopy() { OPENSSL_cleanse(key.data(), key.size()); }
};

int as_int(std::size_t n) { return static_cast<int>(n); }

// Sliding anti-replay window over one sender's sequence numbers: `top` is the highest seen; bit
// (s % kReplayWindow) says whether s in (top - kReplayWindow, top] was seen.
class ReplayWindow {
 public:
  static constexpr std::uint64_t kSize = PacketSealer::kReplayWindow;
  static_assert(kSize % 64 == 0);

  std::error_code accept(std::uint64_t seq) {
    if (!any_) {
      any_ = true;
      top_ = seq;
      set(seq);
      return {};
    }
    if (seq > top_) {
      const auto advance = seq - top_;
      if (advance >= kSize) {
        bits_.fill(0);
      } else {
        for (auto s = top_ + 1; s < seq; ++s) clear(s);
      }
      top_ = seq;
      set(seq);
      return {};
    }
    if (top_ - seq >= kSize) return SealErrc::too_old;
    if (test(seq)) return SealErrc::replayed;
    set(seq);
    return {};
  }

 private:
  void set(std::uint64_t s) { bits_[(s % kSize) / 64] |= std::uint64_t{1} << (s % 64); }
  void clear(std::uint64_t s) { bits_[(s % kSize) / 64] &= ~(std::uint64_t{1} << (s % 64)); }
  bool test(std::uint64_t s) const { return bits_[(s % kSize) / 64] & (std::uint64_t{1} << (s % 64)); }

  std::array<std::uint64_t, kSize / 64> bits_{};
  std::uint64_t top_ = 0;
  bool any_ = false;
};

struct CipherCtx {
  CipherCtx() : ctx(EVP_CIPHER_CTX_new()) {
    if (!ctx) openssl_failure("EVP_CIPHER_CTX_new");
  }
  ~CipherCtx() { EVP_CIPHER_CTX_free(ctx); }
  CipherCtx(const CipherCtx&) = delete;
  CipherCtx& operator=(const CipherCtx&) = delete;
  EVP_CIPHER_CTX* ctx;
};
}  // namespace

const std::error_category& seal_category() noexcept {
  static const SealCategory cat;
  return cat;
}

struct PacketSealer::Impl {
  std::mutex seal_mu;
  CipherCtx enc;
  std::uint64_t next_counter = 0;  // up to 2^32: exhausted

  std::mutex open_mu;
  CipherCtx dec;
  using Senders = std::list<std::pair<std::uint64_t, ReplayWindow>>;  // most recent first
  Senders senders;
  std::unordered_map<std::uint64_t, Senders::iterator> by_incarnation;

  std::atomic<std::uint64_t> sealed{0}, opened{0};
  std::array<std::atomic<std::uint64_t>, kSealErrcCount> errors{};

  std::error_code fail(SealErrc e) {
    errors[static_cast<std::size_t>(e)].fetch_add(1, std::memory_order_relaxed);
    return e;
  }

  // Called with open_mu held.
  std::error_code check_replay(std::uint64_t incarnation, std::uint64_t seq, std::size_t max_senders) {
    auto it = by_incarnation.find(incarnation);
    if (it != by_incarnation.end()) {
      senders.splice(senders.begin(), senders, it->second);
    } else {
      if (senders.size() >= max_senders) {
        by_incarnation.erase(senders.back().first);
        senders.pop_back();
      }
      senders.emplace_front(incarnation, ReplayWindow{});
      by_incarnation.emplace(incarnation, senders.begin());
    }
    return senders.front().second.accept(seq);
  }
};

PacketSealer::PacketSealer(std::shared_ptr<Keyring> keyring, std::string cluster_name, std::uint64_t incarnation,
                           SealerOptions options)
    : keyring_(std::move(keyring)),
      cluster_(std::move(cluster_name)),
      incarnation_(incarnation),
      options_(options),
      impl_(std::make_unique<Impl>()) {
  if (!keyring_) throw std::invalid_argument("PacketSealer: keyring is null");
  if (cluster_.empty() || cluster_.size() > kMaxClusterName) {
    throw std::invalid_argument("PacketSealer: cluster_name must be 1..255 bytes");
  }
  if (incarnation_ == 0) throw std::invalid_argument("PacketSealer: incarnation must not be 0");
  if (options_.max_senders == 0) throw std::invalid_argument("PacketSealer: max_senders must be at least 1");
  impl_->next_counter = options_.first_counter;
}

PacketSealer::~PacketSealer() = default;

Result<std::vector<std::uint8_t>> PacketSealer::seal(std::span<const std::uint8_t> plaintext,
                                                     std::string_view cluster_override) {
  const std::string_view cluster = cluster_override.empty() ? std::string_view(cluster_) : cluster_override;
  if (cluster.size() > kMaxClusterName) throw std::invalid_argument("PacketSealer::seal: cluster name over 255 bytes");
  const auto total = overhead_for(cluster.size()) + plaintext.size();
  if (total > options_.max_datagram) return impl_->fail(SealErrc::oversized);

  std::vector<std::uint8_t> out(total);
  const std::size_t header_size = 2 + cluster.size() + kKeyIdSize + kNonceSize;
  std::uint8_t* p = out.data();
  p[0] = kFormatVersion;
  p[1] = static_cast<std::uint8_t>(cluster.size());
  std::copy(cluster.begin(), cluster.end(), p + 2);
  std::uint8_t* key_id_at = p + 2 + cluster.size();
  std::uint8_t* nonce = key_id_at + kKeyIdSize;
  std::uint8_t* inner = p + header_size;
  std::uint8_t* payload = inner + kInnerSize;
  std::uint8_t* tag = payload + plaintext.size();

  std::lock_guard lk(impl_->seal_mu);
  if (impl_->next_counter > std::numeric_limits<std::uint32_t>::max()) return impl_->fail(SealErrc::nonce_exhausted);
  const auto counter = static_cast<std::uint32_t>(impl_->next_counter++);
  auto primary = keyring_->primary_with_id();
  const KeyCopy k{primary.first};
  OPENSSL_cleanse(primary.first.data(), primary.first.size());

  put_u32(key_id_at, primary.second);
  put_u64(nonce, incarnation_);
  put_u32(nonce + 8, counter);
  put_u64(inner, incarnation_);
  put_u64(inner + 8, counter);
  // The inner header and the payload are encrypted in place (GCM is a stream mode).
  std::copy(plaintext.begin(), plaintext.end(), payload);

  auto* ctx = impl_->enc.ctx;
  int n = 0;
  if (EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), nullptr, nullptr, nullptr) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, as_int(kNonceSize), nullptr) != 1 ||
      EVP_EncryptInit_ex(ctx, nullptr, nullptr, k.key.data(), nonce) != 1 ||
      EVP_EncryptUpdate(ctx, nullptr, &n, p, as_int(header_size)) != 1 ||
      EVP_EncryptUpdate(ctx, inner, &n, inner, as_int(kInnerSize + plaintext.size())) != 1 ||
      EVP_EncryptFinal_ex(ctx, tag, &n) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, as_int(kTagSize), tag) != 1) {
    openssl_failure("AES-256-GCM encryption");
  }
  impl_->sealed.fetch_add(1, std::memory_order_relaxed);
  return out;
}

Result<Opened> PacketSealer::open(std::span<const std::uint8_t> datagram, std::string* their_cluster) {
  if (datagram.size() > options_.max_datagram) return impl_->fail(SealErrc::oversized);
  if (datagram.size() < 2) return impl_->fail(SealErrc::too_short);
  const std::uint8_t* p = datagram.data();
  if (p[0] != kFormatVersion) return impl_->fail(SealErrc::bad_version);
  const std::size_t name_size = p[1];
  const std::size_t header_size = 2 + name_size + kKeyIdSize + kNonceSize;
  if (datagram.size() < header_size + kInnerSize + kTagSize) return impl_->fail(SealErrc::too_short);

  const std::uint8_t* key_id_at = p + 2 + name_size;
  const std::uint8_t* nonce = key_id_at + kKeyIdSize;
  const std::uint8_t* cipher = p + header_size;
  const std::size_t cipher_size = datagram.size() - header_size - kTagSize;
  const std::uint8_t* tag = cipher + cipher_size;

  auto found = keyring_->find(get_u32(key_id_at));
  if (!found) return impl_->fail(SealErrc::unknown_key);
  const KeyCopy k{*found};
  OPENSSL_cleanse(found->data(), found->size());

  Opened o;
  std::uint8_t inner[kInnerSize];
  o.plaintext.resize(cipher_size - kInnerSize);

  std::lock_guard lk(impl_->open_mu);
  auto* ctx = impl_->dec.ctx;
  int n = 0;
  if (EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), nullptr, nullptr, nullptr) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, as_int(kNonceSize), nullptr) != 1 ||
      EVP_DecryptInit_ex(ctx, nullptr, nullptr, k.key.data(), nonce) != 1 ||
      EVP_DecryptUpdate(ctx, nullptr, &n, p, as_int(header_size)) != 1 ||
      EVP_DecryptUpdate(ctx, inner, &n, cipher, as_int(kInnerSize)) != 1 ||
      // (An empty update with a null output would be taken for more additional data.)
      (!o.plaintext.empty() &&
       EVP_DecryptUpdate(ctx, o.plaintext.data(), &n, cipher + kInnerSize, as_int(o.plaintext.size())) != 1) ||
      EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, as_int(kTagSize), const_cast<std::uint8_t*>(tag)) != 1) {
    openssl_failure("AES-256-GCM decryption");
  }
  std::uint8_t no_output[16];
  if (EVP_DecryptFinal_ex(ctx, no_output, &n) != 1) {
    // Never let unauthenticated plaintext out.
    OPENSSL_cleanse(o.plaintext.data(), o.plaintext.size());
    return impl_->fail(SealErrc::auth_failed);
  }

  const auto nonce_incarnation = get_u64(nonce);
  const auto nonce_counter = get_u32(nonce + 8);
  o.sender_incarnation = get_u64(inner);
  o.seq = get_u64(inner + 8);
  if (o.sender_incarnation != nonce_incarnation || o.seq != nonce_counter) return impl_->fail(SealErrc::malformed);
  if (auto ec = impl_->check_replay(o.sender_incarnation, o.seq, options_.max_senders)) {
    return impl_->fail(static_cast<SealErrc>(ec.value()));
  }
  o.cluster.assign(reinterpret_cast<const char*>(p + 2), name_size);
  if (o.cluster != cluster_) {
    if (their_cluster) *their_cluster = o.cluster;
    return impl_->fail(SealErrc::cluster_mismatch);
  }
  impl_->opened.fetch_add(1, std::memory_order_relaxed);
  return o;
}

SealStats PacketSealer::stats() const {
  SealStats s;
  s.sealed = impl_->sealed.load(std::memory_order_relaxed);
  s.opened = impl_->opened.load(std::memory_order_relaxed);
  for (std::size_t i = 0; i < kSealErrcCount; ++i) s.errors[i] = impl_->errors[i].load(std::memory_order_relaxed);
  return s;
}

}  // namespace troupe::membership
