#pragma once
// Test support: a probe actor whose messages the test thread awaits (no sleeping).

#include <chrono>
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>

#include <troupe/actor/actor_system.hpp>
#include <troupe/serialization/system_generated.h>

#include "test_messages_generated.h"

namespace troupe::testkit {

/// A generic test command: `op` names what to do, `n` is its argument.
inline Message cmd(const std::string& op, std::uint64_t n = 0) {
  return Message::build<test::Cmd>([&](auto& b) { return test::CreateCmdDirect(b, op.c_str(), n); });
}
/// The op of a Cmd message, or "" for anything else.
inline std::string op_of(const Message& m) { return m.as<test::Cmd>() ? m.as<test::Cmd>()->op()->str() : ""; }
inline Message ping(std::uint64_t seq, std::uint32_t from = 0) {
  return Message::build<test::Ping>([&](auto& b) { return test::CreatePing(b, seq, from); });
}
/// An actor that ignores everything.
class Silent final : public Actor {
 public:
  void receive(const Message&) override {}
};

/// Two workers and a recognisable node id.
inline ActorSystemConfig test_config(std::string node_id) {
  ActorSystemConfig c;
  c.workers = 2;
  c.node_id = std::move(node_id);
  return c;
}

/// The names of this process's threads now (Linux: /proc/self/task/*/comm).
inline std::multiset<std::string> thread_names() {
  std::multiset<std::string> out;
  for (const auto& t : std::filesystem::directory_iterator("/proc/self/task")) {
    std::ifstream f(t.path() / "comm");
    std::string name;
    if (std::getline(f, name)) out.insert(name);
  }
  return out;
}

/// A gate a test closes to hold an actor's turn (wait()) and opens to let it go on.
struct Gate {
  std::mutex mu;
  std::condition_variable cv;
  bool open = true;
  void wait() {
    std::unique_lock lk(mu);
    cv.wait(lk, [&] { return open; });
  }
  void set(bool o) {
    {
      std::lock_guard lk(mu);
      open = o;
    }
    cv.notify_all();
  }
  /// Opens the gate when it goes (a failed assertion returns early: what waits must not hang the
  /// teardown). Declare it after what must stop after the gate opens.
  struct Closed {
    explicit Closed(Gate* g) : gate(g) {}
    Gate* gate;
    ~Closed() { gate->set(true); }
    Closed(const Closed&) = delete;
    Closed& operator=(const Closed&) = delete;
  };
  [[nodiscard]] Closed closed() {
    set(false);
    return Closed{this};
  }
};

struct Received {
  Message msg;
  ActorRef sender;
};

class Probe {
 public:
  explicit Probe(ActorSystem& sys) : state_(std::make_shared<State>()) {
    ref_ = sys.spawn<ProbeActor>(SpawnOptions{}, state_);
  }
  const ActorRef& ref() const { return ref_; }

  /// The next message, waiting up to `timeout` for it; nullopt on timeout.
  std::optional<Received> next(std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
    std::unique_lock lk(state_->mu);
    if (!state_->cv.wait_for(lk, timeout, [&] { return !state_->q.empty(); })) return std::nullopt;
    auto r = std::move(state_->q.front());
    state_->q.pop_front();
    return r;
  }
  /// Watches `target` from the probe and returns once the watch is registered (a Terminated
  /// for it can only come afterwards, or already sits in the queue if it was dead).
  void watch(ActorSystem& sys, const ActorRef& target) {
    sys.watch(target, ref_);
    // The watch request is processed on the probe's turn before this marker.
    static const Message marker = Message::build<sys::Undeliverable>(
        [](flatbuffers::FlatBufferBuilder& b) { return sys::CreateUndeliverableDirect(b, "probe-sync"); });
    ref_.tell(marker);
    std::unique_lock lk(state_->mu);
    state_->cv.wait(lk, [&] {
      for (const auto& r : state_->q) {
        if (r.msg.bytes().data() == marker.bytes().data()) return true;
      }
      return false;
    });
    std::erase_if(state_->q, [&](const Received& r) { return r.msg.bytes().data() == marker.bytes().data(); });
  }
  std::size_t queued() const {
    std::lock_guard lk(state_->mu);
    return state_->q.size();
  }

 private:
  struct State {
    mutable std::mutex mu;
    std::condition_variable cv;
    std::deque<Received> q;
  };
  class ProbeActor final : public Actor {
   public:
    explicit ProbeActor(std::shared_ptr<State> s) : s_(std::move(s)) {}
    void receive(const Message& m) override {
      {
        std::lock_guard lk(s_->mu);
        s_->q.push_back({m, sender()});
      }
      s_->cv.notify_all();
    }

   private:
    std::shared_ptr<State> s_;
  };
  std::shared_ptr<State> state_;
  ActorRef ref_;
};

/// Polls `pred` every `every` until it holds or `limit` passes; true when it held. For states
/// that no event announces (a view seen through public getters, a CLI's output).
template <class P>
bool eventually(P pred, std::chrono::milliseconds limit = std::chrono::seconds(30),
                std::chrono::milliseconds every = std::chrono::milliseconds(10)) {
  const auto end = std::chrono::steady_clock::now() + limit;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > end) return false;
    std::this_thread::sleep_for(every);
  }
  return true;
}

}  // namespace troupe::testkit
