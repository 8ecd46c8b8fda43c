#pragma once
// Test support for a cluster of troupe-node processes with this test process as a member: the
// key files, the allow-list and the gossip keyring they share, the common troupe-node arguments,
// and the options of the in-process member.

#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include <troupe/membership/keyring.hpp>
#include <troupe/node/node.hpp>
#include <troupe/remoting/security.hpp>

#include "node_process.hpp"

namespace troupe::testkit {

struct ProcessClusterFiles {
  /// CURVE key pairs for nodes n0 .. n<nodes-1> (saved in `dir`) and for this process, one
  /// allow-list of them all, one gossip keyring.
  explicit ProcessClusterFiles(int nodes) {
    std::ofstream allow(dir.path / "allow");
    for (int i = 0; i < nodes; ++i) {
      auto kp = remoting::generate_keypair().value();
      EXPECT_FALSE(remoting::save_keypair(kp, dir.path, name(i)));
      allow << kp.public_key << "\n";
      keys.push_back(kp.public_key);
    }
    client_keys = remoting::generate_keypair().value();
    allow << client_keys.public_key << "\n";
    keys.push_back(client_keys.public_key);
    ring = std::make_shared<membership::Keyring>(membership::generate_key().value());
    EXPECT_FALSE(membership::save_keyring(*ring, dir.path / "keyring"));
  }
  static std::string name(int i) { return "n" + std::to_string(i); }

  /// troupe-node arguments for node i (its keys, the allow-list, a copy of the keyring of its own,
  /// free ports, the `local` preset) joining through `seed` ("": it forms the cluster).
  std::vector<std::string> node_args(int i, int workers, const std::string& seed) const {
    const auto ring_file = dir.path / ("keyring-" + name(i));
    std::filesystem::copy_file(dir.path / "keyring", ring_file, std::filesystem::copy_options::overwrite_existing);
    std::vector<std::string> a{"--name", name(i), "--port", "0", "--workers", std::to_string(workers),
                               "--key-file", (dir.path / (name(i) + ".key")).string(),
                               "--allow-list", (dir.path / "allow").string(), "--keyring", ring_file.string(),
                               "--preset", "local", "--gossip-port", "0"};
    if (!seed.empty()) a.insert(a.end(), {"--seed", seed});
    return a;
  }

  /// This process as member "client" joining through `seed` (the `local` preset, free ports).
  node::NodeOptions member_options(const std::string& seed) const {
    node::NodeOptions o;
    o.name = "client";
    o.workers = 2;
    o.transport.port = 0;
    o.transport.keys = client_keys;
    o.transport.allow_list = std::make_shared<remoting::AllowList>();
    o.transport.allow_list->replace(keys);
    membership::MembershipServiceConfig mc;
    mc.membership = membership::MembershipConfig::local();
    mc.port = 0;
    mc.seeds = {seed};
    mc.keyring = std::make_shared<membership::Keyring>(ring->primary());
    o.membership = mc;
    return o;
  }

  TempDir dir;
  remoting::CurveKeyPair client_keys;
  std::vector<std::string> keys;  ///< every public key: the allow-list
  std::shared_ptr<membership::Keyring> ring;
};

}  // namespace troupe::testkit
