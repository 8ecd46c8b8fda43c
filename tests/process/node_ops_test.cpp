// troupe-node as an operator meets it: JSON log lines, the stop signals (SIGINT leaves
// gracefully, a second SIGINT stops at once), and the admin dashboard page loaded in headless
// Chromium with its screenshot checked for the members.

#include <png.h>
#include <signal.h>
#include <sys/wait.h>

#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <fstream>
#include <sstream>

#include <troupe/membership/keyring.hpp>
#include <troupe/remoting/security.hpp>

#include "node_process.hpp"

namespace troupe {
namespace {

using namespace std::chrono_literals;
using testkit::NodeProcess;
using testkit::TempDir;

/// Runs a shell command; its exit status and stdout.
std::pair<int, std::string> shell(const std::string& cmd) {
  std::string out;
  FILE* f = ::popen(cmd.c_str(), "r");
  char buf[4096];
  while (f && std::fgets(buf, sizeof buf, f)) out += buf;
  const int status = f ? ::pclose(f) : -1;
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

/// Keys, allow-list and keyring for a few nodes that gossip and host a sharded type.
struct Cluster {
  TempDir dir;
  std::string seed;
  std::vector<std::unique_ptr<NodeProcess>> nodes;
  Cluster() {
    std::ofstream allow(dir.path / "allow");
    for (int i = 0; i < 3; ++i) {
      auto kp = remoting::generate_keypair().value();
      EXPECT_FALSE(remoting::save_keypair(kp, dir.path, "n" + std::to_string(i)));
      allow << kp.public_key << "\n";
    }
    auto ring = std::make_shared<membership::Keyring>(membership::generate_key().value());
    EXPECT_FALSE(membership::save_keyring(*ring, dir.path / "keyring"));
  }
  NodeProcess& start(int i, std::vector<std::string> extra = {}) {
    const auto n = "n" + std::to_string(i);
    const auto ring = dir.path / ("keyring-" + n);
    std::filesystem::copy_file(dir.path / "keyring", ring, std::filesystem::copy_options::overwrite_existing);
    std::vector<std::string> a{"--name", n, "--port", "0", "--workers", "1", "--key-file", (dir.path / (n + ".key")).string(),
                               "--allow-list", (dir.path / "allow").string(), "--keyring", ring.string(),
                               "--preset", "local", "--gossip-port", "0", "--entity", "kv:32"};
    if (!seed.empty()) a.insert(a.end(), {"--seed", seed});
    a.insert(a.end(), extra.begin(), extra.end());
    nodes.push_back(std::make_unique<NodeProcess>(a));
    if (seed.empty()) seed = nodes.back()->gossip;
    return *nodes.back();
  }
};

TEST(NodeOps, JsonLogLinesAreObjectsWithTheNodeName) {
  // SIGINT after one second ends the node (gracefully: exit 0); every stderr line must be one
  // JSON object carrying the node name, the debug lines of the start among them.
  const auto [code, out] = shell(std::string("timeout --preserve-status -s INT 1 ") + TROUPE_NODE_BIN +
                                 " --name 'json\"node' --insecure --port 0 --no-admin --log-format json --log-level debug"
                                 " 2>&1 >/dev/null");
  EXPECT_EQ(code, 0) << out;
  std::istringstream lines(out);
  int n = 0;
  for (std::string l; std::getline(lines, l);) {
    ++n;
    EXPECT_TRUE(l.starts_with("{\"ts\":\"") && l.ends_with("\"}")) << l;
    EXPECT_NE(l.find(R"("node":"json\"node")"), std::string::npos) << l;
    EXPECT_NE(l.find(R"("level":")"), std::string::npos) << l;
    EXPECT_NE(l.find(R"("msg":")"), std::string::npos) << l;
  }
  EXPECT_GE(n, 2) << "the start and the stop log at debug level";
  EXPECT_NE(out.find(R"("level":"debug")"), std::string::npos) << out;
}

TEST(NodeOps, BadLogSettingsStopTheStart) {
  auto [c1, o1] = testkit::run_node({"--insecure", "--log-format", "xml"});
  EXPECT_EQ(c1, 2);
  EXPECT_NE(o1.find("--log-format"), std::string::npos) << o1;
  auto [c2, o2] = testkit::run_node({"--insecure", "--log-level", "loud"});
  EXPECT_EQ(c2, 2);
  EXPECT_NE(o2.find("--log-level"), std::string::npos) << o2;
}

TEST(NodeOps, SigintLeavesGracefullyAndASecondOneStopsAtOnce) {
  Cluster c;
  auto& a = c.start(0);
  auto& b = c.start(1);
  ASSERT_TRUE(a.saw_event("up", "n1", 20s));
  // One SIGINT: a graceful leave (exit 0) that the other member sees as a leave, not a loss.
  auto& d = c.start(2);
  ASSERT_TRUE(a.saw_event("up", "n2", 20s));
  d.signal(SIGINT);
  ASSERT_TRUE(d.wait_line([](const std::string& l) { return l == "troupe-node leaving"; }, 10s));
  const int graceful = d.stop(0);
  EXPECT_TRUE(WIFEXITED(graceful) && WEXITSTATUS(graceful) == 0) << graceful;
  EXPECT_TRUE(a.saw_event("removed", "n2", 20s));
  // Two SIGINTs: with the other member stopped the handoff cannot finish, so the second one
  // finds the leave still running and ends the process at once (exit 130).
  a.signal(SIGSTOP);
  b.signal(SIGINT);
  ASSERT_TRUE(b.wait_line([](const std::string& l) { return l == "troupe-node leaving"; }, 10s));
  const auto t0 = std::chrono::steady_clock::now();
  b.signal(SIGINT);
  const int immediate = b.stop(0);
  EXPECT_TRUE(WIFEXITED(immediate) && WEXITSTATUS(immediate) == 130) << immediate;
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 5s) << "the handoff would wait 7.5 s";
  a.signal(SIGCONT);
}

/// The RGBA pixels of a PNG file (empty if it cannot be read).
struct Image {
  std::uint32_t width = 0, height = 0;
  std::vector<std::uint8_t> rgba;
  std::size_t count(std::uint32_t rgb) const {
    std::size_t n = 0;
    for (std::size_t i = 0; i + 3 < rgba.size(); i += 4) {
      n += rgba[i] == (rgb >> 16 & 0xff) && rgba[i + 1] == (rgb >> 8 & 0xff) && rgba[i + 2] == (rgb & 0xff);
    }
    return n;
  }
};
Image read_png(const std::string& path) {
  Image img;
  png_image p{};
  p.version = PNG_IMAGE_VERSION;
  if (!png_image_begin_read_from_file(&p, path.c_str())) return img;
  p.format = PNG_FORMAT_RGBA;
  img.rgba.resize(PNG_IMAGE_SIZE(p));
  if (!png_image_finish_read(&p, nullptr, img.rgba.data(), 0, nullptr)) return {};
  img.width = p.width;
  img.height = p.height;
  return img;
}

TEST(NodeOps, DashboardShowsTheMembersInHeadlessChromium) {
  const auto [found, path] = shell("command -v chromium");
  ASSERT_EQ(found, 0) << "chromium is missing: scripts/install-deps.sh installs it";
  Cluster c;
  auto& a = c.start(0);
  c.start(1);
  c.start(2);
  ASSERT_TRUE(a.saw_event("up", "n1", 20s));
  ASSERT_TRUE(a.saw_event("up", "n2", 20s));
  const auto url = "http://" + a.admin + "/";
  const auto profile = (c.dir.path / "chromium").string();
  const std::string chromium = "chromium --headless --no-sandbox --disable-gpu --disable-dev-shm-usage --hide-scrollbars "
                               "--no-first-run --user-data-dir=" + profile + " --window-size=1280,720 "
                               "--virtual-time-budget=5000 ";
  // The page after its scripts ran: one row per member.
  const auto [dom_code, dom] = shell(chromium + "--dump-dom " + url + " 2>/dev/null");
  ASSERT_EQ(dom_code, 0);
  for (const auto* name : {"n0", "n1", "n2"}) {
    EXPECT_NE(dom.find(std::string("<span>") + name + "</span>"), std::string::npos) << name << "\n" << dom;
  }
  EXPECT_NE(dom.find("3 members, 3 up"), std::string::npos) << dom;
  // The picture: each member gets its colour (in age order) for its dot in the table and for its
  // arcs of the shard ring, so each of the first three colours must cover some area.
  const auto shot = (c.dir.path / "dashboard.png").string();
  const auto [shot_code, shot_out] = shell(chromium + "--screenshot=" + shot + " " + url + " 2>&1");
  ASSERT_EQ(shot_code, 0) << shot_out;
  const auto img = read_png(shot);
  ASSERT_EQ(img.width, 1280u);
  ASSERT_EQ(img.height, 720u);
  for (std::uint32_t colour : {0x1c7ed6u, 0xf08c00u}) {  // n0's and n2's (n1's green is also the "up" pill's)
    EXPECT_GT(img.count(colour), 400u) << std::hex << colour;
  }
  EXPECT_GT(img.count(0x2f9e44u), 400u) << "n1";
  if (const char* keep = std::getenv("TROUPE_KEEP_SCREENSHOT")) std::filesystem::copy_file(shot, keep, std::filesystem::copy_options::overwrite_existing);
}

}  // namespace
}  // namespace troupe
