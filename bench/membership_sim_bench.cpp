// membership_sim_bench: gossip dissemination in the deterministic simulator (tests/sim), the
// real SwimProtocol with the lan() preset on virtual nodes, virtual time, per-datagram loss
// (delay 0.5 ms + up to 0.2 ms jitter). For each cluster size n:
//   1. form the cluster at once: every node starts with the same converged view, every member
//      up (SwimProtocol::assume_formed; joins would take hours of wall time at 10,000 nodes), and
//      runs 2 simulated seconds; formed = nobody unreachable anywhere by then;
//   2. for each loss rate (0 %, then 5 %), --reps times (--large-reps from 1000 nodes on) with a
//      different member and joiner each time, median reported, in simulated seconds measured
//      from the nodes' own event times:
//      sim_update_<n>_<loss>pct_s  one status change from one node (a member's graceful leave,
//                                  "leaving") until every other live node has it;
//      sim_join_<n>_<loss>pct_s    a new node joins through node 0, until every live node of the
//                                  cluster knows it (its "joined" event);
//      sim_join_up_<n>_<loss>pct_s (up to --up-max-n, in a fresh cluster) a joiner until every
//                                  live node sees it up, within --up-limit;
//   3. sim_speed_<n>: simulated seconds per wall second over everything after formation (the
//      measurements, the settling between them and the periodic push-pulls in that time).
//
// Usage: membership_sim_bench [--sizes 100,1000,10000] [--reps 3] [--large-reps R] [--seed N]
//                             [--max-gib G] [--up-limit S] [--up-max-n N]
// Prints one JSON line per figure on stdout ({"name","value","unit"}); progress, wall times,
// heap use, protocol counters and the spread of each measurement on stderr. A size whose member
// tables would not fit in --max-gib (every node keeps all members: n^2 entries, at the bytes per
// entry measured on the smaller sizes) or that has members unreachable after forming yields no
// figures, and says why.

#include <malloc.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "sim.hpp"

namespace {

using namespace std::chrono_literals;
using troupe::membership::EventKind;
using troupe::membership::MembershipConfig;
using troupe::membership::MembershipEvent;
using troupe::sim::LinkSpec;
using troupe::sim::Simulation;
using WallClock = std::chrono::steady_clock;
using std::chrono::nanoseconds;

struct Options {
  std::vector<int> sizes{100, 1000, 10000};
  int reps = 3;
  int large_reps = 3;  ///< repetitions for sizes of 1000 and more
  std::uint64_t seed = 20261125;
  double max_gib = 20;
  double up_limit_s = 120;
  int up_max_n = 200;  ///< "up everywhere" is waited for only up to this size
};

double seconds(nanoseconds d) { return double(d.count()) / 1e9; }
double wall_seconds(WallClock::duration d) { return std::chrono::duration<double>(d).count(); }

/// Heap bytes in use now (glibc).
double heap_bytes() {
  const auto mi = ::mallinfo2();
  return double(mi.uordblks) + double(mi.hblkhd);
}

void emit(const std::string& name, double value, const char* unit) {
  std::printf("{\"name\":\"%s\",\"value\":%.3f,\"unit\":\"%s\"}\n", name.c_str(), value, unit);
  std::fflush(stdout);
}

std::string node_name(int i) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "n%05d", i);
  return buf;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

/// Watches the cluster through the simulator's event hook: formation counters and, for one
/// member at a time, which nodes have seen it reach a given stage.
class Watcher {
 public:
  explicit Watcher(Simulation& sim) : sim_(sim) {
    sim.record_events(false);  // members x nodes events would not fit in memory
    sim.on_event([this](int i, const MembershipEvent& e) { on(i, e); });
  }

  void add_node() {
    stopped_.push_back(false);
  }
  long unreachable_now() const { return unreachable_; }

  /// Starts watching `name` reaching one of `kinds` on every node in `who` (true = counts).
  void watch(const std::string& name, std::vector<EventKind> kinds, std::vector<bool> who, nanoseconds start) {
    watch_name_ = name;
    watch_kinds_ = std::move(kinds);
    watch_who_ = std::move(who);
    watch_seen_.assign(watch_who_.size(), false);
    watch_need_ = static_cast<int>(std::count(watch_who_.begin(), watch_who_.end(), true));
    watch_count_ = 0;
    watch_start_ = start;
    watch_times_.clear();
    watch_last_ = -1;
  }
  bool watch_done() const { return watch_count_ >= watch_need_; }
  /// The nodes that should have seen the watched member and have not (yet).
  std::vector<int> watch_missing() const {
    std::vector<int> out;
    for (std::size_t i = 0; i < watch_who_.size(); ++i) {
      if (watch_who_[i] && !watch_seen_[i]) out.push_back(static_cast<int>(i));
    }
    return out;
  }
  int watch_count() const { return watch_count_; }
  int watch_need() const { return watch_need_; }
  /// Seconds from the start until the k-th fraction of the watched nodes had it (1.0 = all).
  double watch_quantile(double q) const {
    if (watch_times_.empty()) return 0;
    auto v = watch_times_;
    std::sort(v.begin(), v.end());
    const auto idx = std::min(v.size() - 1, static_cast<std::size_t>(q * double(v.size() - 1) + 0.5));
    return v[idx];
  }
  bool is_stopped(int i) const { return stopped_[static_cast<std::size_t>(i)]; }
  /// The node that saw the watched member last (-1: none yet).
  int watch_last() const { return watch_last_; }

 private:
  void on(int i, const MembershipEvent& e) {
    const auto ui = static_cast<std::size_t>(i);
    switch (e.kind) {
      case EventKind::unreachable: ++unreachable_; break;
      case EventKind::reachable: --unreachable_; break;
      case EventKind::self_removed:
      case EventKind::self_downed:
        stopped_[ui] = true;
        // A node that stops (an earlier leaver removed at last) no longer has to see anything.
        if (ui < watch_who_.size() && watch_who_[ui] && !watch_seen_[ui]) {
          watch_who_[ui] = false;
          --watch_need_;
        }
        break;
      default: break;
    }
    if (!watch_name_.empty() && ui < watch_who_.size() && watch_who_[ui] && !watch_seen_[ui] &&
        e.member.name == watch_name_ &&
        std::find(watch_kinds_.begin(), watch_kinds_.end(), e.kind) != watch_kinds_.end()) {
      watch_seen_[ui] = true;
      ++watch_count_;
      watch_times_.push_back(seconds(e.at - watch_start_));
      watch_last_ = i;
    }
  }

  Simulation& sim_;
  std::vector<bool> stopped_;
  long unreachable_ = 0;
  std::string watch_name_;
  std::vector<EventKind> watch_kinds_;
  std::vector<bool> watch_who_, watch_seen_;
  int watch_need_ = 0, watch_count_ = 0;
  nanoseconds watch_start_{0};
  std::vector<double> watch_times_;
  int watch_last_ = -1;
};

/// When the last node to see the watched member came much later than the 90th percentile, says
/// who it was and what its history tells about the member (stderr).
void explain_straggler(Simulation& sim, const Watcher& w, const std::string& subject) {
  const auto missing = w.watch_missing();
  const int i = !missing.empty() ? missing.front() : w.watch_last();
  if (i < 0 || (missing.empty() && w.watch_quantile(1.0) < 2 * w.watch_quantile(0.9) + 0.1)) return;
  if (!missing.empty()) std::fprintf(stderr, "  %zu never saw it, the first: %s\n", missing.size(), node_name(i).c_str());
  const auto st = sim.node(i).stats();
  std::fprintf(stderr,
               "  %s: %s, %s, %s (%zu members; packets in %llu, updates received %llu, push-pulls %llu, repairs %llu)\n",
               missing.empty() ? "last" : "missing", node_name(i).c_str(),
               troupe::membership::to_string(sim.node(i).self().status), sim.node(i).stopped() ? "stopped" : "running",
               sim.node(i).members().size(), (unsigned long long)st.packets_in,
               (unsigned long long)st.updates_received, (unsigned long long)st.push_pulls, (unsigned long long)st.repairs);
  for (const auto& d : sim.node(i).history(subject)) {
    std::fprintf(stderr, "    %.3f s: %s\n", seconds(d.at), d.what.c_str());
  }
}

/// Protocol counters summed over the nodes (where the packets went).
void print_stats(Simulation& sim, int n, const char* when) {
  troupe::membership::SwimStats t;
  for (int i = 0; i < sim.size(); ++i) {
    const auto s = sim.node(i).stats();
    t.packets_out += s.packets_out;
    t.probes += s.probes;
    t.probe_failures += s.probe_failures;
    t.suspicions += s.suspicions;
    t.unreachable_declared += s.unreachable_declared;
    t.push_pulls += s.push_pulls;
    t.repairs += s.repairs;
    t.updates_sent += s.updates_sent;
  }
  std::fprintf(stderr,
               "sim n=%d %s (t=%.1f s, heap %.0f MiB): packets out %llu, probes %llu (failed %llu), suspicions %llu, "
               "unreachable %llu, push-pulls %llu (repairs %llu), updates sent %llu\n",
               n, when, seconds(sim.now()), heap_bytes() / double(1 << 20), (unsigned long long)t.packets_out,
               (unsigned long long)t.probes, (unsigned long long)t.probe_failures, (unsigned long long)t.suspicions,
               (unsigned long long)t.unreachable_declared, (unsigned long long)t.push_pulls,
               (unsigned long long)t.repairs, (unsigned long long)t.updates_sent);
}

struct SizeResult {
  bool formed = false;
  double bytes_per_entry = 0;
};

/// Forms an n-node cluster at once (Simulation::assume_formed: every node starts with the same
/// converged view, every member up; forming 10,000 nodes by joins would take hours of wall time),
/// then runs it for 2 simulated seconds so that the probes' and gossip timers are under way.
/// True when nobody is unreachable anywhere by then.
bool form(Simulation& sim, Watcher& w, int n) {
  const auto cfg = MembershipConfig::lan();
  sim.set_link(LinkSpec{0.0, 500us, 200us, 0.0});
  for (int i = 0; i < n; ++i) {
    sim.add_node(node_name(i), cfg);
    w.add_node();
  }
  sim.assume_formed(0, n);
  sim.run_for(2s);
  return w.unreachable_now() == 0;
}

/// Nodes that take part (alive, not stopped), all but `except`.
std::vector<bool> live_nodes(Simulation& sim, const Watcher& w, int except) {
  std::vector<bool> who(static_cast<std::size_t>(sim.size()), false);
  for (int i = 0; i < sim.size(); ++i) who[static_cast<std::size_t>(i)] = i != except && !w.is_stopped(i) && sim.alive(i);
  return who;
}

/// A join into a quiet, converged cluster (fresh, every member up everywhere), at `loss`: seconds
/// until every node sees the joiner up, or nothing when that does not happen within the limit.
std::optional<double> join_up_once(const Options& o, int n, double loss, std::uint64_t seed) {
  Simulation sim(seed);
  Watcher w(sim);
  if (!form(sim, w, n)) return std::nullopt;
  sim.set_link(LinkSpec{loss, 500us, 200us, 0.0});
  sim.run_for(5s);
  const int j = sim.size();
  const auto who = live_nodes(sim, w, -1);
  sim.add_node(node_name(j), MembershipConfig::lan());
  w.add_node();
  const auto t0 = sim.now();
  w.watch(node_name(j), {EventKind::up}, who, t0);
  sim.join(j, {0});
  const bool ok = sim.run_until([&] { return w.watch_done(); }, nanoseconds(static_cast<std::int64_t>(o.up_limit_s * 1e9)));
  std::fprintf(stderr, "sim n=%d loss=%.0f%%: join of %s into a converged cluster up on %d/%d nodes: %s %.2f s\n", n,
               loss * 100, node_name(j).c_str(), w.watch_count(), w.watch_need(), ok ? "all" : "NOT all within the limit, last",
               w.watch_quantile(1.0));
  if (!ok) return std::nullopt;
  return w.watch_quantile(1.0);
}

/// Runs everything for one cluster size. Returns what the next size's memory estimate needs.
SizeResult run_size(const Options& o, int n, double bytes_per_entry_estimate) {
  SizeResult res;
  const double entries = double(n) * double(n);
  if (bytes_per_entry_estimate > 0) {
    const double need_gib = entries * bytes_per_entry_estimate / double(1ull << 30);
    if (need_gib > o.max_gib) {
      std::fprintf(stderr,
                   "sim n=%d: skipped: every node keeps the full member table, n^2 = %.0f entries x %.0f bytes "
                   "(measured on the smaller size) = %.1f GiB > --max-gib %.1f\n",
                   n, entries, bytes_per_entry_estimate, need_gib, o.max_gib);
      return res;
    }
  }
  const double heap0 = heap_bytes();
  const auto wall0 = WallClock::now();
  Simulation sim(o.seed + static_cast<std::uint64_t>(n));
  Watcher w(sim);
  const bool formed = form(sim, w, n);
  const double form_wall = wall_seconds(WallClock::now() - wall0);
  const double heap1 = heap_bytes();
  res.bytes_per_entry = std::max(1.0, (heap1 - heap0) / entries);
  print_stats(sim, n, "formed");
  std::fprintf(stderr, "sim n=%d: formation %s after %.1f simulated s, %.1f wall s; heap %.0f MiB (%.0f bytes per member entry)\n",
               n, formed ? "complete" : "NOT complete", seconds(sim.now()), form_wall, (heap1 - heap0) / double(1 << 20),
               res.bytes_per_entry);
  if (!formed) {
    std::fprintf(stderr, "sim n=%d: %ld unreachable views 2 s after forming: no figures\n", n, w.unreachable_now());
    return res;
  }
  res.formed = true;

  // Speed: everything after formation (the measurements, the settling between them, the
  // periodic push-pulls that fall in that time).
  const auto speed_sim0 = sim.now();
  const auto speed_wall0 = WallClock::now();
  const int reps = n >= 1000 ? o.large_reps : o.reps;
  int next_leaver = 1;
  for (const double loss : {0.0, 0.05}) {
    const std::string tag = std::to_string(n) + "_" + std::to_string(int(loss * 100 + 0.5)) + "pct";
    sim.set_link(LinkSpec{loss, 500us, 200us, 0.0});
    sim.run_for(3s);
    std::vector<double> upd, join;
    for (int r = 0; r < reps; ++r) {
      // One status change from one node: member `k` leaves gracefully.
      const int k = next_leaver;
      next_leaver += std::max(1, n / 7);
      const auto t0 = sim.now();
      const auto wall_a = WallClock::now();
      w.watch(node_name(k), {EventKind::leaving, EventKind::exiting, EventKind::removed, EventKind::downed},
              live_nodes(sim, w, k), t0);
      sim.node(k).leave();
      sim.wake(k);
      const bool ok = sim.run_until([&] { return w.watch_done(); }, 60s);
      std::fprintf(stderr,
                   "sim n=%d loss=%.0f%%: leave of %s reached %d/%d nodes: 50%% %.2f s, 90%% %.2f s, all %s%.2f s "
                   "(%.1f wall s)\n",
                   n, loss * 100, node_name(k).c_str(), w.watch_count(), w.watch_need(), w.watch_quantile(0.5),
                   w.watch_quantile(0.9), ok ? "" : "NOT within 60 s, last ", w.watch_quantile(1.0),
                   wall_seconds(WallClock::now() - wall_a));
      explain_straggler(sim, w, node_name(k));
      if (ok) upd.push_back(w.watch_quantile(1.0));
      sim.run_for(2s);

      // A join: a new node through node 0, until every live node knows it.
      const int j = sim.size();
      const auto who = live_nodes(sim, w, -1);
      sim.add_node(node_name(j), MembershipConfig::lan());
      w.add_node();
      const auto t1 = sim.now();
      const auto wall_b = WallClock::now();
      w.watch(node_name(j), {EventKind::joined}, who, t1);
      sim.join(j, {0});
      const bool ok_join = sim.run_until([&] { return w.watch_done(); }, 60s);
      std::fprintf(stderr,
                   "sim n=%d loss=%.0f%%: join of %s known by %d/%d nodes: 50%% %.2f s, 90%% %.2f s, all %s%.2f s "
                   "(%.1f wall s)\n",
                   n, loss * 100, node_name(j).c_str(), w.watch_count(), w.watch_need(), w.watch_quantile(0.5),
                   w.watch_quantile(0.9), ok_join ? "" : "NOT within 60 s, last ", w.watch_quantile(1.0),
                   wall_seconds(WallClock::now() - wall_b));
      explain_straggler(sim, w, node_name(j));
      if (ok_join) join.push_back(w.watch_quantile(1.0));
      sim.run_for(2s);
    }
    if (static_cast<int>(upd.size()) == reps) emit("sim_update_" + tag + "_s", median(upd), "s");
    if (static_cast<int>(join.size()) == reps) emit("sim_join_" + tag + "_s", median(join), "s");
  }
  {
    const double sim_s = seconds(sim.now() - speed_sim0);
    const double wall = wall_seconds(WallClock::now() - speed_wall0);
    std::fprintf(stderr, "sim n=%d: after formation %.1f simulated s in %.1f wall s\n", n, sim_s, wall);
    emit("sim_speed_" + std::to_string(n), sim_s / wall, "sim s/wall s");
  }
  print_stats(sim, n, "at the end");
  std::fprintf(stderr, "sim n=%d: done in %.1f wall s, %.1f simulated s, %llu packets delivered, %llu dropped\n", n,
               wall_seconds(WallClock::now() - wall0), seconds(sim.now()),
               static_cast<unsigned long long>(sim.packets_delivered()),
               static_cast<unsigned long long>(sim.packets_dropped()));

  // Up everywhere (the leader moves a joiner up once it sees the cluster converged): fresh,
  // quiet clusters, small sizes only (it takes about n x probe_interval, see README).
  if (n <= o.up_max_n) {
    for (const double loss : {0.0, 0.05}) {
      std::vector<double> ups;
      for (int r = 0; r < reps; ++r) {
        if (auto t = join_up_once(o, n, loss, o.seed + 1000003ull * static_cast<std::uint64_t>(r + 1) + static_cast<std::uint64_t>(n))) {
          ups.push_back(*t);
        }
      }
      const std::string tag = std::to_string(n) + "_" + std::to_string(int(loss * 100 + 0.5)) + "pct";
      if (static_cast<int>(ups.size()) == reps) {
        emit("sim_join_up_" + tag + "_s", median(ups), "s");
      } else {
        std::fprintf(stderr, "sim n=%d loss=%.0f%%: sim_join_up not reported (%zu of %d joins up everywhere within %.0f s)\n",
                     n, loss * 100, ups.size(), reps, o.up_limit_s);
      }
    }
  }
  return res;
}

std::vector<int> parse_sizes(const std::string& s) {
  std::vector<int> out;
  std::size_t pos = 0;
  while (pos < s.size()) {
    const auto comma = s.find(',', pos);
    out.push_back(std::atoi(s.substr(pos, comma - pos).c_str()));
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  std::string sizes;
  std::optional<int> large_reps;
  CLI::App app{"membership_sim_bench: dissemination at scale in the simulator"};
  app.add_option("--sizes", sizes, "cluster sizes, comma-separated (default 100,1000,10000)");
  app.add_option("--reps", o.reps, "repetitions per size")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--large-reps", large_reps, "repetitions for 1,000 nodes and more (default: --reps)")
      ->check(CLI::PositiveNumber);
  app.add_option("--seed", o.seed, "simulation seed")->capture_default_str();
  app.add_option("--max-gib", o.max_gib, "skip a size whose estimated memory exceeds this")->capture_default_str();
  app.add_option("--up-limit", o.up_limit_s, "simulated seconds allowed for a join to be up everywhere")
      ->capture_default_str();
  app.add_option("--up-max-n", o.up_max_n, "largest size for the join-up figure")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  if (!sizes.empty()) o.sizes = parse_sizes(sizes);
  o.large_reps = large_reps.value_or(o.reps);
  std::sort(o.sizes.begin(), o.sizes.end());
  double per_entry = 0;
  for (int n : o.sizes) {
    if (n < 2) continue;
    const auto r = run_size(o, n, per_entry);
    if (r.bytes_per_entry > per_entry) per_entry = r.bytes_per_entry;
  }
  return 0;
}
