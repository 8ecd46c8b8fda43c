// Sealed gossip datagrams: the documented wire format (checked against an independent encoder),
// authentication of every byte, wrong keys, truncated/random/oversized input, the anti-replay
// window, cluster mismatch and its clear refusal, key rotation, nonce exhaustion, concurrency.

#include <gtest/gtest.h>

#include <algorithm>
#include <mutex>
#include <numeric>
#include <random>
#include <set>
#include <stdexcept>
#include <thread>

#include <openssl/evp.h>

#include <troupe/membership/packet_seal.hpp>

namespace troupe::membership {
namespace {

using Bytes = std::vector<std::uint8_t>;

Bytes bytes(std::string_view s) { return Bytes(s.begin(), s.end()); }
std::string text(const Bytes& b) { return std::string(b.begin(), b.end()); }

Key fresh() { return *generate_key(); }

std::shared_ptr<Keyring> ring_of(const Key& k) { return std::make_shared<Keyring>(k); }

constexpr std::uint64_t kIncA = 0x0123456789abcdefULL;
constexpr std::uint64_t kIncB = 0x0fedcba987654321ULL;

void put_be(Bytes& out, std::uint64_t v, int n) {
  for (int i = n - 1; i >= 0; --i) out.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
}

// An encoder written from the format comment in packet_seal.hpp, independent of the sealer.
Bytes reference_seal(const Key& key, std::string_view cluster, std::uint64_t nonce_inc, std::uint32_t counter,
                     std::uint64_t inner_inc, std::uint64_t inner_seq, const Bytes& payload) {
  Bytes header{1, static_cast<std::uint8_t>(cluster.size())};
  header.insert(header.end(), cluster.begin(), cluster.end());
  put_be(header, key_id(key), 4);
  put_be(header, nonce_inc, 8);
  put_be(header, counter, 4);
  Bytes plain;
  put_be(plain, inner_inc, 8);
  put_be(plain, inner_seq, 8);
  plain.insert(plain.end(), payload.begin(), payload.end());

  Bytes out = header;
  out.resize(header.size() + plain.size() + 16);
  EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
  int n = 0;
  const std::uint8_t* nonce = header.data() + header.size() - 12;
  EXPECT_EQ(EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), nullptr, key.data(), nonce), 1);
  EXPECT_EQ(EVP_EncryptUpdate(ctx, nullptr, &n, header.data(), static_cast<int>(header.size())), 1);
  EXPECT_EQ(EVP_EncryptUpdate(ctx, out.data() + header.size(), &n, plain.data(), static_cast<int>(plain.size())), 1);
  EXPECT_EQ(EVP_EncryptFinal_ex(ctx, out.data() + header.size() + plain.size(), &n), 1);
  EXPECT_EQ(EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, 16, out.data() + header.size() + plain.size()), 1);
  EVP_CIPHER_CTX_free(ctx);
  return out;
}

struct SealPair : ::testing::Test {
  Key key = fresh();
  PacketSealer a{ring_of(key), "prod", kIncA};
  PacketSealer b{ring_of(key), "prod", kIncB};

  Bytes seal(PacketSealer& s, std::string_view msg) {
    auto r = s.seal(bytes(msg));
    EXPECT_TRUE(r.ok()) << r.error().message();
    return r.ok() ? *r : Bytes{};
  }
};

TEST_F(SealPair, SealedDatagramRoundTripsWithItsHeaderAsDocumented) {
  const auto p0 = seal(a, "hello");
  const auto p1 = seal(a, "world");
  ASSERT_EQ(p0.size(), PacketSealer::overhead_for(4) + 5);
  EXPECT_EQ(a.overhead(), 54u);
  EXPECT_EQ(p0[0], 1);
  EXPECT_EQ(p0[1], 4);
  EXPECT_EQ(text(Bytes(p0.begin() + 2, p0.begin() + 6)), "prod");
  Bytes expected_tail;
  put_be(expected_tail, key_id(key), 4);
  put_be(expected_tail, kIncA, 8);
  put_be(expected_tail, 0, 4);
  EXPECT_EQ(Bytes(p0.begin() + 6, p0.begin() + 22), expected_tail);
  EXPECT_EQ(p1[21], 1);  // the counter moved on
  EXPECT_EQ(text(Bytes(p0.end() - 21, p0.end() - 16)).find("hello"), std::string::npos);  // encrypted

  for (const auto& [p, msg, seq] : {std::tuple{p0, "hello", 0u}, std::tuple{p1, "world", 1u}}) {
    auto o = b.open(p);
    ASSERT_TRUE(o.ok()) << o.error().message();
    EXPECT_EQ(o->cluster, "prod");
    EXPECT_EQ(o->sender_incarnation, kIncA);
    EXPECT_EQ(o->seq, seq);
    EXPECT_EQ(text(o->plaintext), msg);
  }
  auto empty = b.open(seal(a, ""));
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty->plaintext.empty());
  EXPECT_EQ(a.stats().sealed, 3u);
  EXPECT_EQ(b.stats().opened, 3u);
}

TEST_F(SealPair, MatchesAnIndependentEncoderOfTheDocumentedFormat) {
  // Bytes built from the format comment alone open as the sealer's own...
  auto o = b.open(reference_seal(key, "prod", kIncA, 7, kIncA, 7, bytes("spec")));
  ASSERT_TRUE(o.ok()) << o.error().message();
  EXPECT_EQ(text(o->plaintext), "spec");
  EXPECT_EQ(o->seq, 7u);
  // ...and the sealer's output is exactly what the reference encoder produces.
  PacketSealer c(ring_of(key), "prod", kIncA, SealerOptions{.first_counter = 9});
  EXPECT_EQ(*c.seal(bytes("same")), reference_seal(key, "prod", kIncA, 9, kIncA, 9, bytes("same")));
}

TEST_F(SealPair, AnInnerHeaderThatContradictsTheNonceIsMalformed) {
  EXPECT_EQ(b.open(reference_seal(key, "prod", kIncA, 1, kIncB, 1, bytes("x"))).error(), SealErrc::malformed);
  EXPECT_EQ(b.open(reference_seal(key, "prod", kIncA, 2, kIncA, 3, bytes("x"))).error(), SealErrc::malformed);
  EXPECT_EQ(b.stats().count(SealErrc::malformed), 2u);
}

TEST_F(SealPair, AWrongKeyIsUnknownKeyAndAForgedKeyIdFailsAuthentication) {
  PacketSealer stranger(ring_of(fresh()), "prod", kIncA);
  auto p = *stranger.seal(bytes("let me in"));
  EXPECT_EQ(b.open(p).error(), SealErrc::unknown_key);
  // Claim b's key id: only that key is tried, and the tag does not verify under it.
  Bytes id;
  put_be(id, key_id(key), 4);
  std::copy(id.begin(), id.end(), p.begin() + 6);
  EXPECT_EQ(b.open(p).error(), SealErrc::auth_failed);
  EXPECT_EQ(b.stats().count(SealErrc::unknown_key), 1u);
  EXPECT_EQ(b.stats().count(SealErrc::auth_failed), 1u);
  EXPECT_EQ(b.stats().opened, 0u);
}

TEST_F(SealPair, EveryTamperedByteIsRefused) {
  const auto p = seal(a, "a gossip payload of some length");
  const std::size_t name_end = 2 + 4, id_end = name_end + 4;
  for (std::size_t i = 0; i < p.size(); ++i) {
    for (std::uint8_t bit : {0x01, 0x80}) {
      auto t = p;
      t[i] ^= bit;
      const auto r = b.open(t);
      ASSERT_FALSE(r.ok()) << "byte " << i;
      if (i == 0) {
        EXPECT_EQ(r.error(), SealErrc::bad_version);
      } else if (i == 1) {
        // The name length moves every later field: any refusal will do.
      } else if (i >= name_end && i < id_end) {
        EXPECT_EQ(r.error(), SealErrc::unknown_key) << "byte " << i;
      } else {
        EXPECT_EQ(r.error(), SealErrc::auth_failed) << "byte " << i;  // name, nonce, ciphertext, tag
      }
    }
  }
  // Refusals leave no trace in the replay window: the genuine datagram still opens.
  EXPECT_TRUE(b.open(p).ok());
}

TEST_F(SealPair, TruncatedAndRandomDatagramsAreRefused) {
  const auto p = seal(a, "payload");
  for (std::size_t n = 0; n < p.size(); ++n) {
    const auto r = b.open(std::span(p.data(), n));
    ASSERT_FALSE(r.ok()) << n;
    if (n < PacketSealer::overhead_for(4)) {
      EXPECT_EQ(r.error(), SealErrc::too_short) << n;
    }
  }
  std::mt19937 rng(12345);
  std::size_t opened = 0;
  for (int i = 0; i < 3000; ++i) {
    Bytes junk(rng() % 300);
    for (auto& x : junk) x = static_cast<std::uint8_t>(rng());
    if (i % 2 && !junk.empty()) junk[0] = 1;  // get past the version check
    if (i % 4 == 1 && junk.size() > 1) junk[1] = static_cast<std::uint8_t>(rng() % 8);
    if (b.open(junk).ok()) ++opened;
  }
  EXPECT_EQ(opened, 0u);
  const auto s = b.stats();
  EXPECT_GT(s.count(SealErrc::too_short), 0u);
  EXPECT_GT(s.count(SealErrc::bad_version), 0u);
  EXPECT_GT(s.count(SealErrc::unknown_key), 0u);
}

TEST(Seal, OversizedDatagramsAreRefusedBothWays) {
  const auto key = fresh();
  const SealerOptions small{.max_datagram = 200};
  PacketSealer a(ring_of(key), "prod", kIncA, small), b(ring_of(key), "prod", kIncB, small);
  const std::size_t fits = 200 - a.overhead();
  auto full = a.seal(Bytes(fits, 'x'));
  ASSERT_TRUE(full.ok());
  EXPECT_EQ(full->size(), 200u);
  EXPECT_TRUE(b.open(*full).ok());
  EXPECT_EQ(a.seal(Bytes(fits + 1, 'x')).error(), SealErrc::oversized);
  EXPECT_EQ(b.open(Bytes(201, 1)).error(), SealErrc::oversized);
  EXPECT_EQ(a.stats().count(SealErrc::oversized), 1u);
  EXPECT_EQ(b.stats().count(SealErrc::oversized), 1u);
}

TEST_F(SealPair, ADuplicateOrReplayedDatagramIsRefused) {
  const auto p = seal(a, "once");
  ASSERT_TRUE(b.open(p).ok());
  EXPECT_EQ(b.open(p).error(), SealErrc::replayed);
  const auto q = seal(a, "next");
  ASSERT_TRUE(b.open(q).ok());
  EXPECT_EQ(b.open(p).error(), SealErrc::replayed);
  EXPECT_EQ(b.open(q).error(), SealErrc::replayed);
  EXPECT_EQ(b.stats().count(SealErrc::replayed), 3u);
}

TEST_F(SealPair, ReorderedDatagramsWithinTheWindowAreAccepted) {
  std::vector<Bytes> ps;
  for (int i = 0; i < 64; ++i) ps.push_back(seal(a, "m" + std::to_string(i)));
  std::vector<std::size_t> order(ps.size());
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), std::mt19937(7));
  for (auto i : order) {
    auto o = b.open(ps[i]);
    ASSERT_TRUE(o.ok()) << i << ": " << o.error().message();
    EXPECT_EQ(o->seq, i);
    EXPECT_EQ(text(o->plaintext), "m" + std::to_string(i));
  }
  for (auto i : order) EXPECT_EQ(b.open(ps[i]).error(), SealErrc::replayed) << i;
}

TEST_F(SealPair, ADatagramBehindTheWindowIsTooOld) {
  constexpr auto W = PacketSealer::kReplayWindow;
  std::vector<Bytes> ps;
  for (std::uint64_t i = 0; i < W + 100; ++i) ps.push_back(seal(a, "x"));
  const auto top = W + 99;
  ASSERT_TRUE(b.open(ps[top]).ok());
  EXPECT_EQ(b.open(ps[0]).error(), SealErrc::too_old);
  EXPECT_EQ(b.open(ps[top - W]).error(), SealErrc::too_old);  // just outside
  EXPECT_TRUE(b.open(ps[top - W + 1]).ok());                  // oldest inside
  EXPECT_EQ(b.open(ps[top - W + 1]).error(), SealErrc::replayed);
  EXPECT_TRUE(b.open(ps[top - 1]).ok());
  // A jump of more than a whole window forgets everything before it.
  std::vector<Bytes> more;
  for (std::uint64_t i = 0; i < 3 * W; ++i) more.push_back(seal(a, "y"));
  ASSERT_TRUE(b.open(more.back()).ok());
  EXPECT_EQ(b.open(more[2 * W - 1]).error(), SealErrc::too_old);
  EXPECT_TRUE(b.open(more[2 * W + 1]).ok());
  EXPECT_EQ(b.stats().count(SealErrc::too_old), 3u);
}

TEST(Seal, ReplayWindowsArePerSenderAndTheLeastRecentlyHeardIsEvicted) {
  const auto key = fresh();
  PacketSealer rx(ring_of(key), "prod", 99, SealerOptions{.max_senders = 2});
  PacketSealer x(ring_of(key), "prod", 1), y(ring_of(key), "prod", 2), z(ring_of(key), "prod", 3);
  const auto px = *x.seal(bytes("x")), py = *y.seal(bytes("y")), pz = *z.seal(bytes("z"));
  ASSERT_TRUE(rx.open(px).ok());
  ASSERT_TRUE(rx.open(py).ok());  // same sequence number, another sender: its own window
  EXPECT_EQ(rx.open(px).error(), SealErrc::replayed);  // x is now the most recent
  ASSERT_TRUE(rx.open(pz).ok());                       // evicts y
  EXPECT_EQ(rx.open(px).error(), SealErrc::replayed);  // x kept
  // The bound has a price, documented in the header: an evicted sender starts afresh.
  EXPECT_TRUE(rx.open(py).ok());
}

TEST(Seal, AnotherClusterSharingTheKeyIsAMismatchAndCanBeRefusedClearly) {
  const auto key = fresh();
  PacketSealer alpha(ring_of(key), "alpha", kIncA), bravo(ring_of(key), "bravo", kIncB);
  const auto p = *alpha.seal(bytes("join me"));
  std::string theirs;
  EXPECT_EQ(bravo.open(p, &theirs).error(), SealErrc::cluster_mismatch);
  EXPECT_EQ(theirs, "alpha");
  EXPECT_EQ(bravo.stats().count(SealErrc::cluster_mismatch), 1u);

  // Rewriting the (authenticated) name does not make it ours.
  auto forged = *alpha.seal(bytes("join me"));
  std::copy_n("bravo", 5, forged.begin() + 2);
  EXPECT_EQ(bravo.open(forged).error(), SealErrc::auth_failed);

  // bravo answers under alpha's name; alpha opens it and learns who refused.
  auto refusal = bravo.seal(bytes("wrong cluster: bravo"), theirs);
  ASSERT_TRUE(refusal.ok());
  auto o = alpha.open(*refusal);
  ASSERT_TRUE(o.ok()) << o.error().message();
  EXPECT_EQ(o->cluster, "alpha");
  EXPECT_EQ(o->sender_incarnation, kIncB);
  EXPECT_EQ(text(o->plaintext), "wrong cluster: bravo");
}

TEST(Seal, KeyRotationKeepsBothSidesReadingEachOther) {
  const auto k1 = fresh(), k2 = fresh();
  auto ring_a = ring_of(k1), ring_b = ring_of(k1);
  PacketSealer a(ring_a, "prod", kIncA), b(ring_b, "prod", kIncB);
  auto talk = [&] {
    auto ab = b.open(*a.seal(bytes("a->b")));
    auto ba = a.open(*b.seal(bytes("b->a")));
    return ab.ok() && ba.ok() && text(ab->plaintext) == "a->b" && text(ba->plaintext) == "b->a";
  };
  ASSERT_TRUE(talk());
  const auto old_packet = *a.seal(bytes("sealed under k1"));

  ASSERT_FALSE(ring_a->install(k2));
  ASSERT_FALSE(ring_b->install(k2));
  EXPECT_TRUE(talk());
  ASSERT_FALSE(ring_a->use(k2));  // a writes k2, b still writes k1
  EXPECT_TRUE(talk());
  Bytes id2;
  put_be(id2, key_id(k2), 4);
  const auto under_k2 = *a.seal(bytes("k2"));
  EXPECT_EQ(Bytes(under_k2.begin() + 6, under_k2.begin() + 10), id2);
  ASSERT_FALSE(ring_b->use(k2));
  EXPECT_TRUE(talk());
  EXPECT_EQ(ring_a->remove(k2), KeyringErrc::remove_primary);
  ASSERT_FALSE(ring_a->remove(k1));
  ASSERT_FALSE(ring_b->remove(k1));
  EXPECT_TRUE(talk());
  EXPECT_EQ(b.open(old_packet).error(), SealErrc::unknown_key);  // k1 is gone
}

TEST(Seal, NonceExhaustionIsAHardStop) {
  const auto key = fresh();
  PacketSealer a(ring_of(key), "prod", kIncA, SealerOptions{.first_counter = 0xfffffffe});
  PacketSealer b(ring_of(key), "prod", kIncB);
  auto p1 = a.seal(bytes("1")), p2 = a.seal(bytes("2"));
  ASSERT_TRUE(p1.ok() && p2.ok());
  EXPECT_EQ(a.seal(bytes("3")).error(), SealErrc::nonce_exhausted);
  EXPECT_EQ(a.seal(bytes("4"), "other").error(), SealErrc::nonce_exhausted);
  EXPECT_EQ(b.open(*p1)->seq, 0xfffffffeu);
  EXPECT_EQ(b.open(*p2)->seq, 0xffffffffu);
  EXPECT_EQ(a.stats().count(SealErrc::nonce_exhausted), 2u);
  EXPECT_EQ(a.stats().sealed, 2u);
  EXPECT_EQ(make_error_code(SealErrc::nonce_exhausted).message(),
            "nonce counter exhausted: restart the sealer with a new incarnation");
}

TEST(Seal, ConstructorRefusesABadClusterNameOrIncarnation) {
  auto ring = ring_of(fresh());
  EXPECT_THROW(PacketSealer(ring, "", kIncA), std::invalid_argument);
  EXPECT_THROW(PacketSealer(ring, std::string(256, 'c'), kIncA), std::invalid_argument);
  EXPECT_THROW(PacketSealer(ring, "prod", 0), std::invalid_argument);
  EXPECT_THROW(PacketSealer(nullptr, "prod", kIncA), std::invalid_argument);
  PacketSealer longest(ring, std::string(255, 'c'), kIncA);
  PacketSealer peer(ring, std::string(255, 'c'), kIncB);
  EXPECT_TRUE(peer.open(*longest.seal(bytes("ok"))).ok());
}

TEST(Seal, ConcurrentSealAndOpenNeverRepeatANonceOrLoseADatagram) {
  const auto key = fresh();
  PacketSealer a(ring_of(key), "prod", kIncA), b(ring_of(key), "prod", kIncB);
  constexpr int kThreads = 4, kEach = 500;
  std::mutex mu;
  std::vector<Bytes> sealed;
  std::vector<std::thread> ts;
  for (int t = 0; t < kThreads; ++t) {
    ts.emplace_back([&, t] {
      for (int i = 0; i < kEach; ++i) {
        auto p = a.seal(bytes(std::to_string(t) + ":" + std::to_string(i)));
        std::lock_guard lk(mu);
        if (p.ok()) sealed.push_back(std::move(*p));
      }
    });
  }
  for (auto& t : ts) t.join();
  ASSERT_EQ(sealed.size(), std::size_t{kThreads * kEach});
  std::set<Bytes> nonces;
  for (const auto& p : sealed) nonces.insert(Bytes(p.begin() + 10, p.begin() + 22));
  EXPECT_EQ(nonces.size(), sealed.size());

  std::atomic<int> ok{0};
  ts.clear();
  for (int t = 0; t < kThreads; ++t) {
    ts.emplace_back([&, t] {
      for (std::size_t i = static_cast<std::size_t>(t); i < sealed.size(); i += kThreads) {
        if (b.open(sealed[i]).ok()) ++ok;
      }
    });
  }
  for (auto& t : ts) t.join();
  // Out of order across threads, but 2000 datagrams from one sender are all within reach of
  // the window only if they arrive roughly in order; count what the window allows.
  const auto s = b.stats();
  EXPECT_EQ(static_cast<std::uint64_t>(ok), s.opened);
  EXPECT_EQ(s.opened + s.count(SealErrc::too_old), sealed.size());
  EXPECT_EQ(s.count(SealErrc::replayed), 0u);
}

}  // namespace
}  // namespace troupe::membership
