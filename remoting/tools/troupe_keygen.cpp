// troupe-keygen: writes a fresh CURVE key pair for a node (later also `troupectl keygen`).
//   troupe-keygen DIR NAME   ->  DIR/NAME.key (secret, mode 0600) and DIR/NAME.pub
// Prints the public key, the line to add to the cluster's allow-list.
#include <cstdio>
#include <string>

#include <troupe/remoting/security.hpp>

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: troupe-keygen DIR NAME\n");
    return 2;
  }
  auto kp = troupe::remoting::generate_keypair();
  if (!kp) {
    std::fprintf(stderr, "troupe-keygen: %s\n", kp.error().message().c_str());
    return 1;
  }
  if (auto ec = troupe::remoting::save_keypair(*kp, argv[1], argv[2])) {
    std::fprintf(stderr, "troupe-keygen: cannot write %s/%s.key: %s\n", argv[1], argv[2], ec.message().c_str());
    return 1;
  }
  std::printf("%s  # %s\n", kp->public_key.c_str(), argv[2]);
  return 0;
}
