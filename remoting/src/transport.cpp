// The transport's I/O thread, remote refs and remote deathwatch. See transport.hpp.
//
// Threads: any thread may enqueue (RemoteRef::send) or post an operation; the I/O thread owns
// every ZeroMQ socket and all per-connection state. State that refs need from any thread (the
// peers, the interned refs, the keys, the lost incarnations) lives under `mu_`; nothing calls
// into the actor system while holding a lock, because the system may call straight back (a
// dead letter answers an ask, whose sender may be a remote ref).

#include <troupe/remoting/transport.hpp>

#include <pthread.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <cstring>
#include <deque>
#include <functional>
#include <mutex>
#include <random>
#include <thread>
#include <typeinfo>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include <fmt/format.h>
#include <spdlog/logger.h>
#include <zmq.hpp>

#include <troupe/serialization/envelope_generated.h>
#include <troupe/serialization/log.hpp>
#include <troupe/serialization/system_generated.h>

#include "spin_policy.hpp"
#include "zap.hpp"

namespace troupe::remoting {

namespace {

#define TROUPE_TRANSPORT_COUNTERS(X)                                                                       \
  X(frames_out) X(frames_in) X(bytes_out) X(bytes_in) X(messages_out) X(messages_in) X(dropped_queue_full) \
  X(dropped_node_lost) X(dropped_no_peer_key) X(dropped_key_revoked) X(dropped_stopped) X(dropped_send_failed) X(dropped_oversized) \
  X(frames_malformed) X(frames_oversized) X(frames_wrong_node) X(frames_from_lost_node)                      \
  X(frames_origin_mismatch)                                                                                \
  X(envelopes_unknown_type) X(envelopes_bad_payload) X(envelopes_bad_path) X(envelopes_no_recipient)        \
  X(envelopes_forged_sender)                                                                               \
  X(terminated_unsolicited) X(terminated_resent) X(frames_key_revoked) X(handshakes_failed) X(disconnects) \
  X(nodes_lost) X(wakeups) X(io_errors)

struct Counters {
#define TROUPE_DECLARE(name) std::atomic<std::uint64_t> name{0};
  TROUPE_TRANSPORT_COUNTERS(TROUPE_DECLARE)
#undef TROUPE_DECLARE
};

inline void bump(std::atomic<std::uint64_t>& c, std::uint64_t n = 1) { c.fetch_add(n, std::memory_order_relaxed); }

constexpr std::string_view kTempPrefix = "/temp/r";
constexpr std::string_view kControlPath = "/system/remoting";
constexpr TypeId kWatch = type_id_of<wire::Watch>();
constexpr TypeId kUnwatch = type_id_of<wire::Unwatch>();
constexpr TypeId kTerminated = type_id_of<sys::Terminated>();
constexpr TypeId kUndeliverable = type_id_of<sys::Undeliverable>();

std::uint64_t random_uid() {
  std::random_device rd;
  std::uint64_t v = 0;
  while (v == 0) v = (std::uint64_t{rd()} << 32) ^ rd();
  return v;
}

Message make_terminated(sys::TerminationReason reason, const std::string& path) {
  return Message::build<sys::Terminated>(
      [&](flatbuffers::FlatBufferBuilder& b) { return sys::CreateTerminatedDirect(b, reason, path.c_str()); });
}

template <class T>
Message make_watch(const std::string& watchee, const std::string& watcher) {
  return Message::build<T>([&](flatbuffers::FlatBufferBuilder& b) {
    auto e = b.CreateString(watchee);
    auto w = b.CreateString(watcher);
    typename T::Builder tb(b);
    tb.add_watchee(e);
    tb.add_watcher(w);
    return tb.Finish();
  });
}

enum class TransportErrc { bad_config = 1, bind_failed, zap_unavailable };

class TransportCategory final : public std::error_category {
 public:
  const char* name() const noexcept override { return "troupe.transport"; }
  std::string message(int c) const override {
    switch (static_cast<TransportErrc>(c)) {
      case TransportErrc::bad_config: return "bad transport configuration (see the log)";
      case TransportErrc::bind_failed: return "could not bind the remoting port (see the log)";
      case TransportErrc::zap_unavailable: return "the ZAP gate could not be installed: refusing to start";
    }
    return "transport error";
  }
};
std::error_code make_error(TransportErrc e) {
  static const TransportCategory cat;
  return {static_cast<int>(e), cat};
}

bool starts_with_temp(std::string_view p) { return p.starts_with(kTempPrefix); }

}  // namespace

class RemoteRef;
struct Peer;

/// An entity id an Outbound carries: inline when short (most ids), so that an Outbound moves by
/// copying a few words and calls nothing; longer ones on the heap.
class OutboundId {
 public:
  OutboundId() = default;
  explicit OutboundId(std::string_view s) : size_(static_cast<std::uint32_t>(s.size())) {
    char* to = inline_;
    if (s.size() > kInline) {
      heap_ = std::make_unique<char[]>(s.size());
      to = heap_.get();
    }
    if (!s.empty()) std::memcpy(to, s.data(), s.size());
  }
  std::string_view view() const noexcept { return {heap_ ? heap_.get() : inline_, size_}; }

 private:
  static constexpr std::size_t kInline = 44;
  std::uint32_t size_ = 0;
  char inline_[kInline];
  std::unique_ptr<char[]> heap_;
};

/// One message waiting to be sent. Moved twice (into the producers' vector, into its peer's
/// queue): nothing in it has a move that is not a few word copies.
struct Outbound {
  Outbound(std::shared_ptr<Peer> p, ActorRef r, Message m, ActorRef s)
      : peer(std::move(p)), recipient(std::move(r)), msg(std::move(m)), sender(std::move(s)) {}
  /// A control message: to the path `t` on the peer (with a null `r`), or from the path `f`.
  Outbound(std::shared_ptr<Peer> p, ActorRef r, Message m, ActorRef s, std::string t, std::string f)
      : Outbound(std::move(p), std::move(r), std::move(m), std::move(s)) {
    paths = std::make_unique<Paths>(Paths{std::move(t), std::move(f)});
  }
  std::shared_ptr<Peer> peer;
  ActorRef recipient;  // the RemoteRef (its path is the envelope's recipient) or null with to()
  Message msg;
  ActorRef sender;
  struct Paths {
    std::string to, from;
  };
  std::unique_ptr<Paths> paths;  // control messages only
  // The recipient's path when `recipient` is null; the sender's path when set (overrides `sender`).
  const std::string& to() const noexcept { return paths ? paths->to : kNone; }
  const std::string& from() const noexcept { return paths ? paths->from : kNone; }
  // The entity the message is for (tell_keyed): its id and its stamps.
  bool keyed = false;
  std::uint8_t hops = 0;
  std::uint32_t shard = 0;
  std::uint64_t epoch = 0;
  OutboundId entity_id;

 private:
  static inline const std::string kNone;
};

/// One incarnation of a remote node that this node sends to.
struct Peer {
  explicit Peer(NodeAddress a) : addr(std::move(a)) {}
  const NodeAddress addr;
  std::atomic<std::size_t> queued{0};  // messages accepted and not yet sent or dropped
  std::atomic<bool> lost{false};
  // I/O thread only:
  std::unique_ptr<zmq::socket_t> dealer, monitor;
  std::string server_key;  // the CURVE key the dealer was opened with
  bool connected_once = false;  // a handshake succeeded before (the next one is a reconnection)
  bool up = false;              // connected: seen writable (immediate) and no disconnection since
  std::deque<Outbound> pending;
  // After a failed handshake ZeroMQ gives up on the connection: Troupe reopens it with back-off
  // (the peer may be added to an allow-list later).
  std::chrono::steady_clock::time_point retry_at{};
  std::chrono::milliseconds backoff{0};
  bool in_active = false;  // listed in Core::active
};

struct Transport::Core : std::enable_shared_from_this<Transport::Core> {
  Core(ActorSystem& s, TransportConfig c) : system(s), cfg(std::move(c)), log(s.log()) {}
  struct Conn;

  // ---- any thread ------------------------------------------------------------------------------
  void enqueue(Outbound&& o);
  bool post(std::function<void()> fn);
  ActorRef remote_ref(const NodeAddress& node, std::string_view path, const std::string* node_str = nullptr);
  std::shared_ptr<Peer> peer_for(const NodeAddress& node);
  std::string export_ref(const ActorRef& r);
  ActorRef exported(std::string_view path);
  std::string address_of(const ActorRef& r);
  void drop(Outbound& o, const char* why, std::atomic<std::uint64_t>& counter);
  /// `successor_proved_key`: the caller is the handshake of the successor at the same address,
  /// which has just proved the key learned before; it stays.
  void lose(std::uint64_t uid, std::string reason, bool successor_proved_key = false);
  void wake();

  // ---- I/O thread ------------------------------------------------------------------------------
  void run();
  void run_once(std::vector<zmq_pollitem_t>& items, std::vector<Peer*>& owners);
  void take_work();
  void flush(Peer& p);
  /// Flushes every active peer, then lets go of the round's messages (release_in_order).
  void flush_active();
  bool connect(Peer& p);
  std::string connect_endpoint(const NodeAddress& to) const;
  void close_peer(Peer& p);
  std::string sender_string(const Outbound& o);
  void on_sent(const Outbound& o);
  void read_router();
  void read_dealer(Peer& p);
  void read_monitor(zmq::socket_t& mon, Peer* p);
  void handle_frame(const std::string& rid, std::string_view key, const zmq::message_t& body);
  void deliver(Conn& c, InEnvelope&& e);
  void flush_inbox();  // hands the run collected in inbox_run to its inbox
  void refresh_inboxes();
  ActorRef local_target(const std::string& path);
  ActorRef sender_ref(const Conn& c, std::string_view s);
  /// False when the CURVE key this node would use for `p` is no longer in the allow-list.
  bool peer_key_allowed(const Peer& p);
  /// True when `s` names an actor of the node the connection's key proved.
  static bool sent_by_origin(const Conn& c, std::string_view s);
  void send_ack(const std::string& rid);
  void watch_op(const ActorRef& remote, const ActorRef& watcher, bool add);
  void on_watch(const NodeAddress& origin, const InEnvelope& e, bool add);
  void on_terminated(const NodeAddress& origin, InEnvelope&& e);
  void lost_op(std::uint64_t uid, const std::shared_ptr<Peer>& peer, const std::string& reason);
  bool bind_origin(std::string_view key, const NodeAddress& a);
  void sweep();
  void resend_watches();
  void resend_terminated();
  void terminated_dropped(const std::shared_ptr<Peer>& peer, const ActorRef& watcher, const ActorRef& watchee,
                          const std::string& from, const Message& msg);
  /// The queued Watch `o` left: in a frame (`sent`) or dropped.
  void watch_left(const Outbound& o, bool sent);
  void rewatch(std::uint64_t uid);
  void socket_monitor(zmq::socket_t& s, std::unique_ptr<zmq::socket_t>& mon, int events);

  ActorSystem& system;
  TransportConfig cfg;
  spdlog::logger& log;
  NodeAddress self;
  std::string self_origin;
  // The largest message (payload and entity id) a frame can hold beside two paths and the
  // frame's own fields; set with self_origin.
  std::size_t max_message_bytes = 0;
  Counters n;

  // Frames are built in buffers with room for a full batch plus its last message (a frame
  // that outgrows its buffer is copied into one twice the size); ZeroMQ frees them into the
  // pool once sent. Declared before the context: frames in flight die with it.
  FrameBufferPool frame_pool{cfg.max_batch_bytes + std::max<std::size_t>(16u << 10, cfg.max_batch_bytes / 4)};
  zmq::context_t ctx;
  std::unique_ptr<detail::ZapHandler> zap;
  zmq::socket_t router;
  std::unique_ptr<zmq::socket_t> router_monitor;
  int efd = -1;
  std::thread io;
  std::atomic<bool> stopping{false};

  // Hand-over queue (q_mu).
  std::mutex q_mu;
  std::vector<Outbound> out;
  std::vector<Outbound> spare;  // I/O thread: the other half of the double buffer
  // I/O thread: a handle on each message of the round's batch, released in the producers' order
  // once the round's frames are out. Released peer by peer instead, a producer's allocator found
  // the blocks handed back scattered and paid a cache miss for each (sending thread of a sharded
  // tell to three nodes: 146-177 ns a message, 119-125 with this, as to one node).
  std::vector<Message> release_in_order;
  std::vector<std::function<void()>> ops;
  bool stopped = false;
  std::atomic<std::size_t> queued_work{0};
  std::atomic<bool> idle{false};

  // Shared lookup state (mu_).
  struct KeyEntry {
    std::string key;
    bool configured = false;
    // Incarnations this key was learned or proved for (a restart with the same key file adds
    // one): losing one of them keeps the key while another needs it. None known: the loss of
    // whatever listened there takes it.
    std::vector<std::uint64_t> uids;
  };
  std::mutex mu;
  std::unordered_map<std::uint64_t, std::shared_ptr<Peer>> peers;
  std::unordered_map<std::string, RemoteRef*> refs;  // weak: a ref removes itself when destroyed
  std::unordered_map<std::string, KeyEntry> keys;    // endpoint -> CURVE public key
  std::unordered_map<std::uint64_t, std::string> uid_keys;
  std::unordered_set<std::uint64_t> dead;
  std::atomic<std::uint64_t> next_ref_id{1};

  // Exported local refs that are not addressable by path (asks, internal watchers) (export_mu).
  std::mutex export_mu;
  std::unordered_map<std::uint64_t, ActorRef> exports;
  std::unordered_map<troupe::detail::RefTarget*, std::uint64_t> export_ids;
  std::mt19937_64 export_rng{std::random_device{}()};

  // I/O thread only.
  struct Conn {
    NodeAddress origin;
    std::string origin_str;
    std::string key;
    // The last sender and recipient seen on this connection (runs of messages share them).
    std::string last_sender;
    ActorRef last_sender_ref;
    std::string last_recipient;
    ActorRef last_recipient_ref;
    Transport::Inbox* last_inbox = nullptr;  // the recipient's inbox, when it has one
    std::uint64_t inbox_gen = 0;             // io_inbox_gen when last_* were resolved
  };
  // Inboxes by local path (inbox_mu; inbox_gen counts changes); the I/O thread reads its own
  // copy, taken again when the generation moved.
  std::mutex inbox_mu;
  std::unordered_map<std::string, std::shared_ptr<Transport::Inbox>> inboxes;
  std::atomic<std::uint64_t> inbox_gen{1};
  std::unordered_map<std::string, std::shared_ptr<Transport::Inbox>> io_inboxes;
  std::uint64_t io_inbox_gen = 0;
  // I/O thread: consecutive messages of the frame being delivered for one inbox (their routes
  // point into the frame's envelopes, which outlive the run).
  Transport::Inbox* run_inbox = nullptr;
  std::vector<Transport::Inbound> inbox_run;
  std::unordered_map<std::string, Conn> conns;  // by ROUTER routing id
  std::unordered_set<std::uint64_t> origins_seen;  // nodes that have connected here (until lost)
  std::vector<std::shared_ptr<Peer>> active;     // peers with a DEALER or pending messages
  std::unordered_map<std::string, ActorRef> local_cache;
  struct WatchEntry {
    ActorRef watchee;  // remote
    ActorRef watcher;  // local
    std::string watcher_path;
    bool sent = false;  // the Watch left in a frame; until then it is sent again (sweep)
    bool in_flight = true;  // a copy is queued (not yet sent or dropped): no other is queued
    std::chrono::steady_clock::time_point tried{std::chrono::steady_clock::now()};
  };
  /// One node's actors watched from here, found in O(1) by the two refs, or by the paths a Watch
  /// or a Terminated carries (a node may watch very many actors of another).
  struct WatchSet {
    struct Key {
      const void* watchee;
      const void* watcher;
      bool operator==(const Key&) const = default;
    };
    struct KeyHash {
      std::size_t operator()(const Key& k) const noexcept {
        return std::hash<const void*>{}(k.watchee) * 31 + std::hash<const void*>{}(k.watcher);
      }
    };
    std::unordered_map<Key, WatchEntry, KeyHash> all;
    std::unordered_multimap<std::string, Key> by_paths;  // watchee's path, NUL, watcher's path
    static std::string paths(std::string_view watchee, std::string_view watcher) {
      std::string k;
      k.reserve(watchee.size() + 1 + watcher.size());
      k.append(watchee).push_back('\0');
      k.append(watcher);
      return k;
    }
    static Key key_of(const ActorRef& watchee, const ActorRef& watcher) { return {watchee.target(), watcher.target()}; }
    WatchEntry* find(const ActorRef& watchee, const ActorRef& watcher) {
      auto it = all.find(key_of(watchee, watcher));
      return it == all.end() ? nullptr : &it->second;
    }
    void add(WatchEntry e, std::string_view watchee_path) {
      const Key k = key_of(e.watchee, e.watcher);
      by_paths.emplace(paths(watchee_path, e.watcher_path), k);
      all.emplace(k, std::move(e));
    }
    /// Removes the entry of `k` (which must be there), given the watchee's path.
    void erase(const Key& k, std::string_view watchee_path) {
      auto it = all.find(k);
      auto [b, e] = by_paths.equal_range(paths(watchee_path, it->second.watcher_path));
      for (; b != e; ++b) {
        if (b->second == k) {
          by_paths.erase(b);
          break;
        }
      }
      all.erase(it);
    }
  };
  std::unordered_map<std::uint64_t, WatchSet> watches;  // by watchee's node
  struct ServedWatch {
    ActorRef watchee;  // local; null for an AlreadyDead answer that is owed
    ActorRef watcher;  // remote
    // A Terminated for this watch dropped before it left (queue full, no connection): the
    // sweep sends it again, one copy at a time, until one leaves or the watcher's node is lost.
    Message owed{};
    bool owed_in_flight = false;
    std::string owed_from{};  // an AlreadyDead answer's from-path (the path watched)
  };
  /// One node's watches of actors here, found in O(1): by watcher and watchee, or for an owed
  /// AlreadyDead answer (no actor behind it) by watcher and the path that was watched.
  struct ServedSet {
    struct Key {
      const void* watcher;
      const void* watchee;   // null: an owed AlreadyDead answer
      std::string owed_from;  // that answer's path
      bool operator==(const Key&) const = default;
    };
    struct KeyHash {
      std::size_t operator()(const Key& k) const noexcept {
        return (std::hash<const void*>{}(k.watcher) * 31 + std::hash<const void*>{}(k.watchee)) ^
               std::hash<std::string>{}(k.owed_from);
      }
    };
    std::unordered_map<Key, ServedWatch, KeyHash> all;
    /// The key of the watch a Terminated from `from` (or, without an actor, from the path
    /// `from_path`) to `watcher` belongs to.
    static Key key_of(const ActorRef& watcher, const ActorRef& from, const std::string& from_path) {
      return from ? Key{watcher.target(), from.target(), {}} : Key{watcher.target(), nullptr, from_path};
    }
  };
  std::unordered_map<std::uint64_t, ServedSet> served;  // by watcher's node
  std::atomic<std::uint64_t> watch_count{0};
  BatchBuilder builder{frame_pool.buffer_bytes(), &frame_pool};
  BatchBuilder ack_builder{1024};
  ThrottledLog in_log, out_log, conn_log;
  std::chrono::steady_clock::time_point next_sweep{};
  std::chrono::steady_clock::time_point spin_until{};  // busy-poll until then (idle_spin)
  // This round of run_once (for the spin policy): envelopes sent and received, and whether a
  // peer's messages waited for room in ZeroMQ's queue.
  std::size_t moved = 0;
  bool held_back = false;
  unsigned monitor_seq = 0;
};

// ---- RemoteRef ----------------------------------------------------------------------------------

class RemoteRef final : public troupe::detail::RefTarget {
 public:
  RemoteRef(std::shared_ptr<Transport::Core> core, std::shared_ptr<Peer> peer, std::string path, std::string address)
      : core_(std::move(core)), peer_(std::move(peer)), path_(std::move(path)), address_(std::move(address)),
        id_((1ull << 63) | core_->next_ref_id.fetch_add(1, std::memory_order_relaxed)) {}

  void send(Message&& msg, ActorRef&& sender) override {
    core_->enqueue(Outbound{peer_, ActorRef(this, true), std::move(msg), std::move(sender)});
  }
  void undeliverable() noexcept override {
    // Only an ask waits for an answer: tell it there will be none.
    if (!starts_with_temp(path_)) return;
    auto m = Message::build<sys::Undeliverable>(
        [](flatbuffers::FlatBufferBuilder& b) { return sys::CreateUndeliverableDirect(b, "no actor at the path"); });
    core_->enqueue(Outbound{peer_, ActorRef(this, true), std::move(m), {}});
  }
  std::string path() const override { return address_; }
  std::uint64_t id() const noexcept override { return id_; }
  ActorSystem& system() const noexcept override { return core_->system; }
  void add_watcher(const ActorRef& watcher) override {
    auto core = core_;
    if (!core->post([core, me = ActorRef(this, true), watcher] { core->watch_op(me, watcher, true); })) {
      // The transport stopped: nothing will ever be heard from this actor again.
      ActorSystem::deliver_terminated(
          watcher, make_terminated(sys::TerminationReason::NodeDown, address_), ActorRef(this, true));
    }
  }
  void remove_watcher(const ActorRef& watcher) override {
    auto core = core_;
    core->post([core, me = ActorRef(this, true), watcher] { core->watch_op(me, watcher, false); });
  }
  bool terminated() const noexcept override { return peer_->lost.load(std::memory_order_acquire); }

  const std::string& local_path() const noexcept { return path_; }
  const Transport::Core* core() const noexcept { return core_.get(); }
  const std::string& address() const noexcept { return address_; }
  const std::shared_ptr<Peer>& peer() const noexcept { return peer_; }

 protected:
  void destroy() noexcept override {
    {
      std::lock_guard lk(core_->mu);
      auto it = core_->refs.find(address_);
      if (it != core_->refs.end() && it->second == this) core_->refs.erase(it);
    }
    delete this;
  }

 private:
  std::shared_ptr<Transport::Core> core_;
  std::shared_ptr<Peer> peer_;
  std::string path_;
  std::string address_;
  std::uint64_t id_;
};

// The RemoteRef behind a ref target, or null. RemoteRef is final: comparing the dynamic type
// is exact, and cheaper than a dynamic_cast on the send path.
static RemoteRef* as_remote(troupe::detail::RefTarget* t) noexcept {
  return t && typeid(*t) == typeid(RemoteRef) ? static_cast<RemoteRef*>(t) : nullptr;
}

// ---- any thread ---------------------------------------------------------------------------------

void Transport::Core::wake() {
  // Read first: a busy I/O thread is the common case, and a read leaves its line shared where an
  // exchange per message would pull it away from the I/O thread every time.
  if (idle.load(std::memory_order_seq_cst) && idle.exchange(false, std::memory_order_seq_cst)) {
    bump(n.wakeups);
    const std::uint64_t one = 1;
    [[maybe_unused]] auto r = ::write(efd, &one, sizeof one);
  }
}

void Transport::Core::drop(Outbound& o, const char* why, std::atomic<std::uint64_t>& counter) {
  bump(counter);
  // A Watch is only queued on the I/O thread (or dropped after it ended): the sweep may try again.
  if (o.msg.type() == kWatch) watch_left(o, false);
  // A Terminated for a remote watcher is owed until one copy leaves (the sweep resends it).
  if (o.msg.type() == kTerminated && o.recipient && as_remote(o.recipient.target()) && !o.peer->lost.load()) {
    post([this, peer = o.peer, watcher = o.recipient, watchee = o.sender, from = o.from(), msg = o.msg] {
      terminated_dropped(peer, watcher, watchee, from, msg);
    });
  }
  const std::string to = o.recipient ? o.recipient.path() : o.peer->addr.to_string() + o.to();
  system.dead_letter(o.msg, o.sender, to, why);
}

void Transport::Core::enqueue(Outbound&& o) {
  Peer& p = *o.peer;
  if (p.lost.load(std::memory_order_acquire)) return drop(o, "its node is lost", n.dropped_node_lost);
  // A frame holds at least one whole message: one that cannot fit the frame limit (with its
  // paths and the frame's own fields) would be refused by the receiver, or cut its connection.
  if (o.msg.size() + o.entity_id.view().size() > max_message_bytes) {
    out_log.warn(log, "dropped a {}-byte message for {}: larger than a frame may be (max_frame_bytes {})",
                 o.msg.size(), p.addr.to_string(), cfg.limits.max_frame_bytes);
    return drop(o, "larger than a frame may be (max_frame_bytes)", n.dropped_oversized);
  }
  if (p.queued.fetch_add(1, std::memory_order_relaxed) >= cfg.max_queue_per_peer) {
    p.queued.fetch_sub(1, std::memory_order_relaxed);
    return drop(o, "outbound queue to its node is full", n.dropped_queue_full);
  }
  {
    std::unique_lock lk(q_mu);
    if (stopped) {
      lk.unlock();
      p.queued.fetch_sub(1, std::memory_order_relaxed);
      return drop(o, "transport stopped", n.dropped_stopped);
    }
    out.push_back(std::move(o));
  }
  queued_work.fetch_add(1, std::memory_order_seq_cst);
  wake();
}

bool Transport::Core::post(std::function<void()> fn) {
  {
    std::lock_guard lk(q_mu);
    if (stopped) return false;
    ops.push_back(std::move(fn));
  }
  queued_work.fetch_add(1, std::memory_order_seq_cst);
  wake();
  return true;
}

std::shared_ptr<Peer> Transport::Core::peer_for(const NodeAddress& node) {
  // mu held by the caller
  if (auto it = peers.find(node.uid); it != peers.end()) return it->second;
  auto p = std::make_shared<Peer>(node);
  // An incarnation known to be gone, or an older incarnation of this very node's address.
  if (dead.count(node.uid) || (node.uid != self.uid && node.endpoint() == self.endpoint())) {
    p->lost.store(true);
    return p;  // not remembered: every message to it is dropped at once
  }
  peers.emplace(node.uid, p);
  return p;
}

ActorRef Transport::Core::remote_ref(const NodeAddress& node, std::string_view path, const std::string* node_str) {
  std::string address = node_str ? *node_str : node.to_string();
  address.append(path);
  std::lock_guard lk(mu);
  auto it = refs.find(address);
  if (it != refs.end() && it->second->try_add_ref()) return ActorRef(it->second, false);
  auto* r = new RemoteRef(shared_from_this(), peer_for(node), std::string(path), address);
  refs[std::move(address)] = r;
  return ActorRef(r, false);
}

std::string Transport::Core::export_ref(const ActorRef& r) {
  std::lock_guard lk(export_mu);
  auto [it, inserted] = export_ids.try_emplace(r.target(), 0);
  if (inserted) {
    // Random, not sequential: another peer cannot guess the reply address of someone's ask.
    std::uint64_t id = 0;
    while (id == 0 || exports.count(id)) id = export_rng();
    it->second = id;
    exports.emplace(id, r);
  }
  return fmt::format("{}{}", kTempPrefix, it->second);
}

ActorRef Transport::Core::exported(std::string_view path) {
  path.remove_prefix(kTempPrefix.size());
  std::uint64_t id = 0;
  auto [end, ec] = std::from_chars(path.data(), path.data() + path.size(), id);
  if (ec != std::errc() || end != path.data() + path.size()) return {};
  std::lock_guard lk(export_mu);
  auto it = exports.find(id);
  if (it == exports.end() || it->second.target()->terminated()) return {};
  return it->second;
}

std::string Transport::Core::address_of(const ActorRef& r) {
  if (!r) return {};
  if (auto* rr = as_remote(r.target())) return rr->address();
  if (r.target()->addressable()) return self_origin + r.path();
  return self_origin + export_ref(r);
}

void Transport::Core::lose(std::uint64_t uid, std::string reason, bool successor_proved_key) {
  if (uid == 0 || uid == self.uid) return;
  std::shared_ptr<Peer> peer;
  {
    std::lock_guard lk(mu);
    if (!dead.insert(uid).second) return;
    if (auto it = peers.find(uid); it != peers.end()) {
      peer = std::move(it->second);
      peers.erase(it);
      peer->lost.store(true, std::memory_order_release);
    }
    // A key learned for the lost incarnation may change with its successor: it goes with the
    // last live incarnation it was learned or proved for (not when the successor's own
    // handshake has just proved it), whether or not this node ever sent to this one.
    for (auto k = keys.begin(); k != keys.end();) {
      auto& e = k->second;
      const bool held = std::erase(e.uids, uid) > 0;
      std::erase_if(e.uids, [&](std::uint64_t u) { return dead.count(u) != 0; });
      const bool at_peer = peer && k->first == peer->addr.endpoint();
      if (!e.configured && !successor_proved_key && e.uids.empty() && (held || at_peer)) {
        k = keys.erase(k);
      } else {
        ++k;
      }
    }
    uid_keys.erase(uid);
  }
  bump(n.nodes_lost);
  post([this, uid, peer, reason = std::move(reason)] { lost_op(uid, peer, reason); });
}

// ---- I/O thread ---------------------------------------------------------------------------------

void Transport::Core::socket_monitor(zmq::socket_t& s, std::unique_ptr<zmq::socket_t>& mon, int events) {
  const auto ep = fmt::format("inproc://troupe-monitor-{}-{}", static_cast<const void*>(this), monitor_seq++);
  if (zmq_socket_monitor(s.handle(), ep.c_str(), events) != 0) return;
  mon = std::make_unique<zmq::socket_t>(ctx, zmq::socket_type::pair);
  mon->set(zmq::sockopt::linger, 0);
  mon->connect(ep);
}

constexpr int kMonitorEvents = ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL |
                               ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL | ZMQ_EVENT_HANDSHAKE_FAILED_AUTH |
                               ZMQ_EVENT_DISCONNECTED;

/// Where a DEALER connects: from this node's own interface when it is bound to one (a
/// multi-homed host, or several nodes on loopback addresses: what a peer sees as the source is
/// then this node's address), else wherever the kernel routes from.
std::string Transport::Core::connect_endpoint(const NodeAddress& to) const {
  const auto& h = cfg.bind_host;
  if (h.empty() || h == "0.0.0.0" || h == "::" || h == "*" || h.find(':') != std::string::npos) return to.zmq_endpoint();
  const auto loopback = [](std::string_view x) { return x.starts_with("127.") || x == "localhost"; };
  if (loopback(h) && !loopback(to.host)) return to.zmq_endpoint();  // no route from loopback to elsewhere
  return "tcp://" + h + ":0;" + to.endpoint();
}

bool Transport::Core::peer_key_allowed(const Peer& p) {
  if (p.dealer) return cfg.allow_list->contains(p.server_key);
  std::lock_guard lk(mu);
  auto it = keys.find(p.addr.endpoint());
  return it == keys.end() || cfg.allow_list->contains(it->second.key);  // no key: flush() says so
}

bool Transport::Core::connect(Peer& p) {
  std::string server_key;
  if (!cfg.insecure) {
    std::lock_guard lk(mu);
    auto it = keys.find(p.addr.endpoint());
    if (it == keys.end()) return false;
    server_key = it->second.key;
  }
  try {
    auto d = std::make_unique<zmq::socket_t>(ctx, zmq::socket_type::dealer);
    d->set(zmq::sockopt::linger, 0);
    d->set(zmq::sockopt::immediate, 1);  // queue in Troupe (bounded, counted), not in ZeroMQ
    d->set(zmq::sockopt::sndhwm, 64);    // frames: keeps what ZeroMQ buffers per peer small and bounded
    d->set(zmq::sockopt::reconnect_ivl, static_cast<int>(cfg.reconnect_min.count()));
    d->set(zmq::sockopt::reconnect_ivl_max, static_cast<int>(cfg.reconnect_max.count()));
    d->set(zmq::sockopt::maxmsgsize, static_cast<std::int64_t>(cfg.limits.max_frame_bytes + (64u << 10)));
    if (!cfg.insecure) {
      d->set(zmq::sockopt::curve_serverkey, server_key);
      d->set(zmq::sockopt::curve_publickey, cfg.keys.public_key);
      d->set(zmq::sockopt::curve_secretkey, cfg.keys.secret_key);
    }
    // The monitor before the connection: on loopback the handshake can be done before connect()
    // returns, and a monitor attached after it never hears of it (no hello sent, and the first
    // reconnection not known as one: its remote watches not sent again). A failed connect
    // closes it (close_peer).
    socket_monitor(*d, p.monitor, kMonitorEvents);
    d->connect(connect_endpoint(p.addr));
    p.dealer = std::move(d);
    p.server_key = std::move(server_key);
    return true;
  } catch (const zmq::error_t& e) {
    // A bad address, or out of sockets or descriptors: this peer's messages are dropped (counted).
    out_log.warn(log, "cannot connect to {}: {}", p.addr.to_string(), e.what());
    close_peer(p);
    return false;
  }
}

void Transport::Core::close_peer(Peer& p) {
  p.up = false;
  if (p.dealer) {
    zmq_socket_monitor(p.dealer->handle(), nullptr, 0);
    p.dealer->close();
    p.dealer.reset();
  }
  if (p.monitor) {
    p.monitor->close();
    p.monitor.reset();
  }
}

std::string Transport::Core::sender_string(const Outbound& o) {
  if (!o.from().empty()) return o.from();
  if (!o.sender) return {};
  auto* t = o.sender.target();
  if (auto* rr = as_remote(t)) return rr->address();
  if (t->addressable()) return t->path();
  return export_ref(o.sender);
}

void Transport::Core::take_work() {
  // Double-buffered: the producers' vector keeps its capacity from one round to the next.
  auto& batch = spare;
  batch.clear();
  std::vector<std::function<void()>> todo;
  {
    std::lock_guard lk(q_mu);
    batch.swap(out);
    if (!ops.empty()) todo.swap(ops);
  }
  if (batch.empty() && todo.empty()) return;
  queued_work.fetch_sub(batch.size() + todo.size(), std::memory_order_relaxed);
  // Messages first: an operation (a node loss) then sees everything queued before it.
  // The messages' blocks were written by their producers' cores: each is loaded a few messages
  // ahead of its first use here, so that their cache misses overlap.
  constexpr std::size_t kAhead = 16;
  // A long batch goes out in chunks (each flushed before the next is taken): what a chunk's
  // frames read stays in this core's caches.
  constexpr std::size_t kChunk = 1024;
  for (std::size_t i = 0; i < std::min(kAhead, batch.size()); ++i) batch[i].msg.prefetch();
  for (std::size_t i = 0; i < batch.size(); ++i) {
    if (i + kAhead < batch.size()) batch[i + kAhead].msg.prefetch();
    if (i > 0 && i % kChunk == 0) flush_active();
    auto& o = batch[i];
    release_in_order.push_back(o.msg);
    auto& p = *o.peer;
    if (p.lost.load(std::memory_order_acquire)) {
      p.queued.fetch_sub(1, std::memory_order_relaxed);
      drop(o, "its node is lost", n.dropped_node_lost);
      continue;
    }
    if (!p.in_active) {
      p.in_active = true;
      active.push_back(o.peer);
    }
    p.pending.push_back(std::move(o));
  }
  batch.clear();
  for (auto& fn : todo) fn();
}

// A connection with node `uid` was (re)made. Whatever the broken one lost is not known: a Watch
// handed to ZeroMQ, or that node's Terminated for a watch here. Every watch still waiting for
// its Terminated is sent again (at the next sweep): the other side keeps one served watch per
// watcher and actor, and answers AlreadyDead for an actor that stopped meanwhile.
void Transport::Core::rewatch(std::uint64_t uid) {
  auto it = watches.find(uid);
  if (it == watches.end()) return;
  for (auto& [k, e] : it->second.all) {
    if (!e.sent || e.in_flight) continue;
    e.sent = false;
    e.tried = {};  // at the next sweep
  }
}

void Transport::Core::watch_left(const Outbound& o, bool sent) {
  const auto* w = o.msg.as<wire::Watch>();
  auto it = watches.find(o.peer->addr.uid);
  if (!w || it == watches.end()) return;
  auto& set = it->second;
  auto [b, end] = set.by_paths.equal_range(WatchSet::paths(w->watchee()->string_view(), w->watcher()->string_view()));
  for (; b != end; ++b) {
    auto& e = set.all.at(b->second);
    e.in_flight = false;
    e.sent = e.sent || sent;
  }
}

void Transport::Core::on_sent(const Outbound& o) {
  if (o.msg.type() == kWatch) return watch_left(o, true);
  if (o.msg.type() != kTerminated) return;
  // A Terminated for a remote watcher ends that served watch.
  auto it = served.find(o.peer->addr.uid);
  if (it == served.end()) return;
  // Which watch by the watchee: the sender, or (an AlreadyDead answer, no actor behind it) the
  // owed answer of the path it is from, if it was owed; any watch of the same watcher is not it.
  it->second.all.erase(ServedSet::key_of(o.recipient, o.sender, o.from()));
}

void Transport::Core::terminated_dropped(const std::shared_ptr<Peer>& peer, const ActorRef& watcher, const ActorRef& watchee,
                                         const std::string& from, const Message& msg) {
  if (peer->lost.load(std::memory_order_acquire)) return;  // nobody left to tell
  auto& set = served[peer->addr.uid];
  auto key = ServedSet::key_of(watcher, watchee, from);
  if (auto it = set.all.find(key); it != set.all.end()) {
    it->second.owed_in_flight = false;
    it->second.owed = msg;
    return;
  }
  // An AlreadyDead answer: no watch was served, so it is kept as one that owes its Terminated.
  // (One with a sender matches no served watch when that watch was cancelled meanwhile: nothing
  // is owed then.)
  if (!watchee) set.all.emplace(std::move(key), ServedWatch{watchee, watcher, msg, false, from});
}

void Transport::Core::resend_terminated() {
  for (auto& [uid, set] : served) {
    for (auto& [k, s] : set.all) {
      if (!s.owed || s.owed_in_flight) continue;
      const auto& peer = static_cast<RemoteRef*>(s.watcher.target())->peer();
      if (peer->lost.load(std::memory_order_acquire)) continue;  // its loss clears the entry
      s.owed_in_flight = true;
      bump(n.terminated_resent);
      if (s.owed_from.empty()) {
        enqueue(Outbound{peer, s.watcher, s.owed, s.watchee});
      } else {
        enqueue(Outbound{peer, s.watcher, s.owed, {}, {}, s.owed_from});
      }
    }
  }
}

void Transport::Core::flush(Peer& p) {
  while (!p.pending.empty()) {
    if (!cfg.insecure && !peer_key_allowed(p)) {
      // Its key was removed from the allow-list (a node taken out of the cluster): nothing more
      // goes to it, over an open connection or a new one, until the key is allowed again.
      out_log.warn(log, "dropped {} messages for {}: its key is no longer in the allow-list", p.pending.size(),
                   p.addr.to_string());
      if (p.dealer) close_peer(p);
      for (auto& o : p.pending) drop(o, "its node's key is no longer in the allow-list", n.dropped_key_revoked);
      p.queued.fetch_sub(p.pending.size(), std::memory_order_relaxed);
      p.pending.clear();
      return;
    }
    if (!p.dealer && std::chrono::steady_clock::now() < p.retry_at) return;  // backing off
    if (!p.dealer && !connect(p)) {
      out_log.warn(log, "cannot reach {} ({} messages dropped): no CURVE key known for it (add_peer_key, "
                   "--peer-key, or let it connect first) or no socket could be made", p.addr.to_string(), p.pending.size());
      for (auto& o : p.pending) drop(o, "no connection to its node (no CURVE key known, or no socket)", n.dropped_no_peer_key);
      p.queued.fetch_sub(p.pending.size(), std::memory_order_relaxed);
      p.pending.clear();
      return;  // the key may be learned later
    }
    if (!(p.dealer->get(zmq::sockopt::events) & ZMQ_POLLOUT)) {
      // Connected: ZeroMQ's queue is full, and the poll wakes this thread when it drains. Not
      // yet connected (immediate: no queue until the handshake): the messages wait for it, and
      // the spin for other peers' replies stays.
      if (p.up) held_back = true;
      return;
    }
    p.up = true;  // writable: connected (immediate)
    builder.reset();
    std::size_t k = 0;
    // Consecutive messages usually share a sender: its address is computed once per run.
    const troupe::detail::RefTarget* last_sender = nullptr;
    std::string from;
    while (k < p.pending.size() && k < cfg.limits.max_envelopes && builder.approx_bytes() < cfg.max_batch_bytes) {
      const auto& o = p.pending[k];
      const std::string& to = o.recipient ? static_cast<RemoteRef*>(o.recipient.target())->local_path() : o.to();
      // A message that would make the frame outgrow its buffer starts the next frame (a bound:
      // envelope fields, its sender's address, the offsets and the batch's own fields).
      if (k > 0 && builder.approx_bytes() + o.msg.size() + to.size() + o.entity_id.view().size() +
                           cfg.limits.max_path_bytes + 4 * k + self_origin.size() + 256 > frame_pool.buffer_bytes()) {
        break;
      }
      if (!o.from().empty() || !o.sender) {
        last_sender = nullptr;
        from = o.from();
      } else if (o.sender.target() != last_sender) {
        last_sender = o.sender.target();
        from = sender_string(o);
      }
      const KeyedRoute route{o.entity_id.view(), o.shard, o.epoch, o.hops};
      builder.add(o.msg.type(), to, from, 0, o.msg.bytes(), o.keyed ? &route : nullptr);
      ++k;
    }
    const auto frame_bytes = builder.finish(self_origin, p.addr.uid).size();
    // ZeroMQ takes the builder's buffer as it is (a frame is up to max_batch_bytes: a copy of
    // each was the largest memmove of a 1 KiB tell) and frees it once sent.
    auto* frame = new flatbuffers::DetachedBuffer(builder.release());
    zmq::message_t m(frame->data(), frame->size(),
                     [](void*, void* hint) { delete static_cast<flatbuffers::DetachedBuffer*>(hint); }, frame);
    zmq::send_result_t r;
    try {
      r = p.dealer->send(m, zmq::send_flags::dontwait);
    } catch (const zmq::error_t& e) {
      out_log.warn(log, "sending to {} failed: {}", p.addr.to_string(), e.what());
      for (std::size_t i = 0; i < k; ++i) drop(p.pending[i], "send failed", n.dropped_send_failed);
      p.pending.erase(p.pending.begin(), p.pending.begin() + static_cast<std::ptrdiff_t>(k));
      p.queued.fetch_sub(k, std::memory_order_relaxed);
      continue;
    }
    if (!r) {
      if (p.up) held_back = true;  // not writable after all: retry when it is
      return;
    }
    bump(n.frames_out);
    bump(n.bytes_out, frame_bytes);
    bump(n.messages_out, k);
    moved += k;
    for (std::size_t i = 0; i < k; ++i) on_sent(p.pending[i]);
    p.pending.erase(p.pending.begin(), p.pending.begin() + static_cast<std::ptrdiff_t>(k));
    p.queued.fetch_sub(k, std::memory_order_relaxed);
  }
}

void Transport::Core::flush_active() {
  for (auto& p : active) flush(*p);
  release_in_order.clear();
}

void Transport::Core::send_ack(const std::string& rid) {
  ack_builder.reset();
  auto f = ack_builder.finish(self_origin, 0);
  try {
    router.send(zmq::buffer(rid), zmq::send_flags::sndmore | zmq::send_flags::dontwait);
    router.send(zmq::buffer(f.data(), f.size()), zmq::send_flags::dontwait);
  } catch (const zmq::error_t&) {
    // The peer went away; it will get an ack on its next connection.
  }
}

bool Transport::Core::bind_origin(std::string_view key, const NodeAddress& a) {
  std::uint64_t replaced = 0;
  {
    std::lock_guard lk(mu);
    if (a.uid == self.uid) return false;  // nobody else may claim this node's incarnation
    if (dead.count(a.uid)) return true;   // bound, and its frames are dropped as from a lost node
    if (!cfg.insecure) {
      auto it = keys.find(a.endpoint());
      if (it != keys.end() && it->second.key != key) return false;
      if (it == keys.end()) it = keys.emplace(a.endpoint(), KeyEntry{std::string(key), false, {}}).first;
      if (std::find(it->second.uids.begin(), it->second.uids.end(), a.uid) == it->second.uids.end()) {
        it->second.uids.push_back(a.uid);
      }
      auto u = uid_keys.find(a.uid);
      if (u != uid_keys.end() && u->second != key) return false;
      uid_keys[a.uid] = std::string(key);
    }
    // A new incarnation at a known address: the old one is gone.
    for (const auto& [uid, p] : peers) {
      if (uid != a.uid && p->addr.endpoint() == a.endpoint()) replaced = uid;
    }
  }
  if (replaced) lose(replaced, "restarted as " + a.to_string(), !cfg.insecure);
  return true;
}

void Transport::Core::handle_frame(const std::string& rid, std::string_view key, const zmq::message_t& body) {
  bump(n.frames_in);
  bump(n.bytes_in, body.size());
  if (!cfg.insecure && !cfg.allow_list->contains(key)) {
    // Admitted at its handshake, but the key has since been removed from the allow-list: not
    // even decoded.
    bump(n.frames_key_revoked);
    in_log.warn(log, "dropped a frame from key {}: no longer in the allow-list", key);
    return;
  }
  FrameReport rep;
  auto f = decode_frame({static_cast<const std::uint8_t*>(body.data()), body.size()}, system.registry(), cfg.limits,
                        rep);
  bump(n.envelopes_unknown_type, rep.unknown_type);
  bump(n.envelopes_bad_payload, rep.bad_payload);
  bump(n.envelopes_bad_path, rep.bad_path);
  if (rep.unknown_type + rep.bad_payload + rep.bad_path) {
    in_log.warn(log, "dropped envelopes from {}: {} of unknown type, {} failing their verifier, {} with bad paths",
                key.empty() ? "(insecure peer)" : key, rep.unknown_type, rep.bad_payload, rep.bad_path);
  }
  if (!f) {
    bump(f.error() == FrameErrc::oversized ? n.frames_oversized : n.frames_malformed);
    in_log.warn(log, "refused a {}-byte frame from {}: {}", body.size(), key.empty() ? "(insecure peer)" : key,
                f.error().message());
    return;
  }
  moved += f->envelopes.size();
  if (conns.size() > 4096) conns.clear();  // stale connections; live ones re-bind on their next frame
  auto [it, fresh] = conns.try_emplace(rid);
  Conn& c = it->second;
  if (fresh || c.origin_str.empty()) {
    auto a = parse_node_address(f->origin);
    if (!a) {
      conns.erase(it);
      bump(n.frames_malformed);
      in_log.warn(log, "refused a frame without a valid origin from {}", key.empty() ? "(insecure peer)" : key);
      return;
    }
    if (!bind_origin(key, *a)) {
      conns.erase(it);
      bump(n.frames_origin_mismatch);
      in_log.warn(log, "refused a frame from key {} claiming to be {}: that address or node belongs to another key",
                  key, f->origin);
      return;
    }
    c.origin = *a;
    c.origin_str = f->origin;
    c.key = std::string(key);
    send_ack(rid);
    // A connection from that node again: the last one may have lost something.
    if (!origins_seen.insert(a->uid).second) rewatch(a->uid);
  } else if (f->origin != c.origin_str || key != c.key) {
    bump(n.frames_origin_mismatch);
    in_log.warn(log, "refused a frame claiming origin {} on a connection bound to {}", f->origin, c.origin_str);
    return;
  }
  bool lost = false;
  {
    std::lock_guard lk(mu);
    lost = dead.count(c.origin.uid) > 0;
  }
  if (lost) {
    bump(n.frames_from_lost_node);
    in_log.warn(log, "dropped a frame from {}: that incarnation was declared lost", c.origin_str);
    return;
  }
  if (f->target_node == 0 && f->envelopes.empty()) return;  // a handshake
  if (f->target_node != self.uid) {
    bump(n.frames_wrong_node);
    in_log.warn(log, "dropped a frame from {} meant for incarnation {} (this is {})", c.origin_str,
                format_uid(f->target_node), format_uid(self.uid));
    return;
  }
  bump(n.messages_in, f->envelopes.size());
  refresh_inboxes();  // once a frame: set_inbox takes effect from the next frame on
  // The actors this frame wakes are handed to the workers together, at its end.
  ActorSystem::WakeBatch batch(system);
  for (auto& e : f->envelopes) deliver(c, std::move(e));
  flush_inbox();
}

void Transport::Core::flush_inbox() {
  if (inbox_run.empty()) return;
  struct Clear {  // also when the inbox throws: the run is over either way
    std::vector<Transport::Inbound>& v;
    ~Clear() { v.clear(); }
  } clear{inbox_run};
  (*run_inbox)(std::span<Transport::Inbound>(inbox_run));
}

ActorRef Transport::Core::local_target(const std::string& path) {
  if (starts_with_temp(path)) return exported(path);
  if (auto it = local_cache.find(path); it != local_cache.end()) {
    if (!it->second.target()->terminated()) return it->second;
    local_cache.erase(it);
  }
  auto r = system.lookup(path);
  if (!r) return {};
  if (local_cache.size() >= 4096) local_cache.clear();
  local_cache.emplace(path, r);
  return r;
}

ActorRef Transport::Core::sender_ref(const Conn& c, std::string_view s) {
  if (s.empty()) return {};
  if (s.front() == '/') return remote_ref(c.origin, s, &c.origin_str);
  auto a = parse_actor_address(s);
  if (!a) return {};
  if (a->node.uid == self.uid) return local_target(a->path);
  return remote_ref(a->node, a->path);
}

bool Transport::Core::sent_by_origin(const Conn& c, std::string_view s) {
  if (s.empty()) return false;
  if (s.front() == '/') return true;  // a path on the sending node
  auto a = parse_actor_address(s);
  return a && a->node.uid == c.origin.uid;
}

void Transport::Core::deliver(Conn& c, InEnvelope&& e) {
  if (e.type == kWatch || e.type == kUnwatch || e.type == kTerminated) {
    flush_inbox();  // what came before it in the frame goes first
    if (e.type == kTerminated) return on_terminated(c.origin, std::move(e));
    return on_watch(c.origin, e, e.type == kWatch);
  }
  if (system.registry().origin_bound(e.type) && !sent_by_origin(c, e.sender)) {
    // A protocol message whose receiver acts on who sent it: the sender must be an actor of the
    // node this connection's key proved, not a claim in the envelope.
    bump(n.envelopes_forged_sender);
    in_log.warn(log, "dropped a {} from {} whose sender {} is not an actor of that node",
                system.registry().name_of(e.type), c.origin_str, e.sender.empty() ? "(none)" : e.sender);
    system.dead_letter(e.payload, {}, std::string(e.recipient), "its sender is not an actor of the node that sent it");
    return;
  }
  if (e.sender != c.last_sender || (c.last_sender_ref && c.last_sender_ref.target()->terminated())) {
    c.last_sender_ref = sender_ref(c, e.sender);
    c.last_sender = e.sender;
  }
  ActorRef sender = c.last_sender_ref;
  if (e.recipient != c.last_recipient || c.inbox_gen != io_inbox_gen ||
      (!c.last_inbox && (!c.last_recipient_ref || c.last_recipient_ref.target()->terminated()))) {
    c.last_recipient = e.recipient;
    auto it = io_inboxes.find(c.last_recipient);
    c.last_inbox = it == io_inboxes.end() ? nullptr : it->second.get();
    c.last_recipient_ref = c.last_inbox ? ActorRef{} : local_target(c.last_recipient);
    c.inbox_gen = io_inbox_gen;
  }
  if (c.last_inbox) {
    if (c.last_inbox != run_inbox) {
      flush_inbox();
      run_inbox = c.last_inbox;
    }
    inbox_run.push_back(Inbound{std::move(e.payload), std::move(sender), e.route ? &*e.route : nullptr});
    return;
  }
  flush_inbox();  // what the inbox got before this message goes first
  const ActorRef& target = c.last_recipient_ref;
  if (e.route) {
    // Only an inbox knows what to do with the entity's stamps: an actor would get the bare
    // payload without them.
    bump(n.envelopes_no_recipient);
    system.dead_letter(e.payload, sender, c.last_recipient, "a message keyed to an entity for a path without an inbox");
    return;
  }
  if (!target) {
    bump(n.envelopes_no_recipient);
    system.dead_letter(e.payload, sender, c.last_recipient, "no actor at this path");
    return;
  }
  if (e.type == kUndeliverable && starts_with_temp(e.recipient)) {
    target.target()->undeliverable();
    return;
  }
  target.tell(std::move(e.payload), std::move(sender));
}

void Transport::Core::refresh_inboxes() {
  const auto gen = inbox_gen.load(std::memory_order_acquire);
  if (gen == io_inbox_gen) return;
  std::lock_guard lk(inbox_mu);
  io_inboxes = inboxes;
  io_inbox_gen = inbox_gen.load(std::memory_order_relaxed);
}

void Transport::Core::on_watch(const NodeAddress& origin, const InEnvelope& e, bool add) {
  // Watch and Unwatch share their layout; the registry verified the payload as its own type.
  const auto* t = flatbuffers::GetRoot<wire::Watch>(e.payload.bytes().data());
  // Paths as long as a recipient's may be at most: each served watch keeps its watcher's.
  if (!t->watchee() || !t->watcher() || !t->watchee()->string_view().starts_with('/') ||
      !t->watcher()->string_view().starts_with('/') || t->watchee()->size() > cfg.limits.max_path_bytes ||
      t->watcher()->size() > cfg.limits.max_path_bytes) {
    bump(n.envelopes_bad_payload);
    in_log.warn(log, "dropped a {} without valid paths from {}", add ? "Watch" : "Unwatch", origin.to_string());
    return;
  }
  const std::string watchee_path = t->watchee()->str();
  const std::string watcher_path = t->watcher()->str();
  ActorRef watcher = remote_ref(origin, watcher_path);
  auto& set = served[origin.uid];
  ActorRef watchee = local_target(watchee_path);
  if (!add) {
    // The actor now at the path: a watch of an earlier one there ended with its Terminated.
    if (!watchee) return;
    if (auto it = set.all.find(ServedSet::key_of(watcher, watchee, {})); it != set.all.end()) {
      watchee.target()->remove_watcher(it->second.watcher);
      set.all.erase(it);
    }
    return;
  }
  if (!watchee || !watchee.target()->addressable()) {
    auto* rr = static_cast<RemoteRef*>(watcher.target());
    enqueue(Outbound{rr->peer(), watcher, make_terminated(sys::TerminationReason::AlreadyDead, watchee_path), {}, {},
                     watchee_path});
    return;
  }
  auto [it, fresh] = set.all.try_emplace(ServedSet::key_of(watcher, watchee, {}), ServedWatch{.watchee = watchee, .watcher = watcher});
  if (!fresh) return;
  watchee.target()->add_watcher(watcher);  // already dead: the Terminated is sent at once
}

void Transport::Core::on_terminated(const NodeAddress& origin, InEnvelope&& e) {
  const auto* t = e.payload.as<sys::Terminated>();
  auto it = watches.find(origin.uid);
  if (t && it != watches.end() && e.sender.starts_with('/')) {
    auto& set = it->second;
    if (auto p = set.by_paths.find(WatchSet::paths(e.sender, e.recipient)); p != set.by_paths.end()) {
      const auto key = p->second;
      set.by_paths.erase(p);
      WatchEntry w = std::move(set.all.extract(key).mapped());
      watch_count.fetch_sub(1, std::memory_order_relaxed);
      auto* rr = static_cast<RemoteRef*>(w.watchee.target());
      ActorSystem::deliver_terminated(w.watcher, make_terminated(t->reason(), rr->address()), w.watchee);
      return;
    }
  }
  bump(n.terminated_unsolicited);
}

void Transport::Core::watch_op(const ActorRef& remote, const ActorRef& watcher, bool add) {
  auto* rr = static_cast<RemoteRef*>(remote.target());
  const auto& peer = rr->peer();
  auto& set = watches[peer->addr.uid];
  if (auto* e = set.find(remote, watcher)) {
    if (add) return;
    enqueue(Outbound{peer, {}, make_watch<wire::Unwatch>(rr->local_path(), e->watcher_path), {},
                     std::string(kControlPath), {}});
    set.erase(WatchSet::key_of(remote, watcher), rr->local_path());
    watch_count.fetch_sub(1, std::memory_order_relaxed);
    return;
  }
  if (!add) return;
  if (peer->lost.load(std::memory_order_acquire)) {
    ActorSystem::deliver_terminated(watcher, make_terminated(sys::TerminationReason::NodeDown, rr->address()), remote);
    return;
  }
  auto* t = watcher.target();
  std::string watcher_path = t->addressable() ? t->path() : export_ref(watcher);
  set.add(WatchEntry{remote, watcher, watcher_path}, rr->local_path());
  watch_count.fetch_add(1, std::memory_order_relaxed);
  enqueue(Outbound{peer, {}, make_watch<wire::Watch>(rr->local_path(), watcher_path), {}, std::string(kControlPath), {}});
}

void Transport::Core::lost_op(std::uint64_t uid, const std::shared_ptr<Peer>& peer, const std::string& reason) {
  log.info("node {} is lost: {}", format_uid(uid), reason);
  if (peer) {
    for (auto& o : peer->pending) drop(o, "its node is lost", n.dropped_node_lost);
    peer->queued.fetch_sub(peer->pending.size(), std::memory_order_relaxed);
    peer->pending.clear();
    close_peer(*peer);
    std::erase(active, peer);
    peer->in_active = false;
  }
  if (auto it = watches.find(uid); it != watches.end()) {
    auto set = std::move(it->second);
    watches.erase(it);
    for (auto& [k, w] : set.all) {
      watch_count.fetch_sub(1, std::memory_order_relaxed);
      auto* rr = static_cast<RemoteRef*>(w.watchee.target());
      ActorSystem::deliver_terminated(w.watcher, make_terminated(sys::TerminationReason::NodeDown, rr->address()),
                                      w.watchee);
    }
  }
  if (auto it = served.find(uid); it != served.end()) {
    auto set = std::move(it->second);
    served.erase(it);
    for (auto& [k, s] : set.all) {
      if (s.watchee) s.watchee.target()->remove_watcher(s.watcher);
    }
  }
  std::erase_if(conns, [uid](const auto& kv) { return kv.second.origin.uid == uid; });
  origins_seen.erase(uid);
}

void Transport::Core::read_monitor(zmq::socket_t& mon, Peer* p) {
  for (;;) {
    zmq::message_t ev;
    if (!mon.recv(ev, zmq::recv_flags::dontwait)) return;
    zmq::message_t addr;
    if (ev.more()) (void)mon.recv(addr, zmq::recv_flags::dontwait);
    if (ev.size() < 6) continue;
    std::uint16_t id = 0;
    std::memcpy(&id, ev.data(), sizeof id);
    const auto where = addr.to_string();
    switch (id) {
      case ZMQ_EVENT_HANDSHAKE_SUCCEEDED:
        if (p) p->backoff = std::chrono::milliseconds(0);
        if (p && std::exchange(p->connected_once, true)) rewatch(p->addr.uid);  // reconnected: see rewatch()
        if (p && p->dealer) {
          // Say hello so the peer answers with its incarnation even before there is traffic.
          ack_builder.reset();
          auto f = ack_builder.finish(self_origin, 0);
          (void)p->dealer->send(zmq::buffer(f.data(), f.size()), zmq::send_flags::dontwait);
        }
        break;
      case ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL:
      case ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL:
      case ZMQ_EVENT_HANDSHAKE_FAILED_AUTH:
        bump(n.handshakes_failed);
        conn_log.warn(log, "handshake {} {} failed (event {:#x}): wrong key, key not allowed, or security mismatch",
                      p ? "to" : "from", p ? p->addr.to_string() : where, id);
        if (p && p->dealer) {
          p->backoff = std::clamp(p->backoff * 2, cfg.reconnect_min, cfg.reconnect_max);
          p->retry_at = std::chrono::steady_clock::now() + p->backoff;
          close_peer(*p);
          return;  // the monitor is closed too
        }
        break;
      case ZMQ_EVENT_DISCONNECTED:
        bump(n.disconnects);
        if (p) p->up = false;
        break;
      default: break;
    }
  }
}

void Transport::Core::read_router() {
  for (int i = 0; i < 1024; ++i) {
    zmq::message_t rid;
    if (!router.recv(rid, zmq::recv_flags::dontwait)) return;
    if (!rid.more()) continue;
    zmq::message_t body;
    (void)router.recv(body, zmq::recv_flags::dontwait);
    bool extra = body.more();
    while (extra) {  // a frame is exactly one part
      zmq::message_t rest;
      (void)router.recv(rest, zmq::recv_flags::dontwait);
      extra = rest.more();
      if (!extra) {
        bump(n.frames_malformed);
        in_log.warn(log, "refused a multi-part message");
      }
    }
    if (body.more() || extra) continue;
    const char* uid = zmq_msg_gets(body.handle(), "User-Id");
    handle_frame(rid.to_string(), uid ? std::string_view(uid) : std::string_view(), body);
  }
}

void Transport::Core::read_dealer(Peer& p) {
  for (int i = 0; i < 64 && p.dealer; ++i) {
    zmq::message_t m;
    if (!p.dealer->recv(m, zmq::recv_flags::dontwait)) return;
    if (!cfg.insecure && !cfg.allow_list->contains(p.server_key)) {
      bump(n.frames_key_revoked);  // its answer counts for nothing now (it could make a loss)
      continue;
    }
    FrameReport rep;
    auto f = decode_frame({static_cast<const std::uint8_t*>(m.data()), m.size()}, system.registry(), cfg.limits, rep);
    if (!f) {
      bump(n.frames_malformed);
      continue;
    }
    moved += f->envelopes.size();
    auto a = parse_node_address(f->origin);
    if (!a) {
      bump(n.frames_malformed);
      continue;
    }
    if (a->uid != p.addr.uid) {
      // Whoever listens at the address now is another incarnation: the one we meant is gone.
      // It answered over a CURVE session with the key this node holds: the key is proved, for it.
      if (!cfg.insecure) {
        std::lock_guard lk(mu);
        if (auto k = keys.find(p.addr.endpoint()); k != keys.end() && k->second.key == p.server_key &&
            std::find(k->second.uids.begin(), k->second.uids.end(), a->uid) == k->second.uids.end()) {
          k->second.uids.push_back(a->uid);
        }
      }
      lose(p.addr.uid, "its address now answers as " + a->to_string(), !cfg.insecure);
      return;
    }
  }
}

void Transport::Core::resend_watches() {
  // A Watch dropped before it left (queue full, no key yet, send failure) is sent again: the
  // watcher must get its Terminated when the actor stops, not only when its node is lost.
  for (auto& [uid, set] : watches) {
    const auto now = std::chrono::steady_clock::now();
    for (auto& [k, e] : set.all) {
      // One copy at a time: a Watch waiting for its peer's connection stays where it is
      // (copies sent every second would fill the peer's queue and refuse every other message).
      if (e.sent || e.in_flight || now - e.tried < std::chrono::seconds(1)) continue;
      e.tried = now;
      auto* rr = static_cast<RemoteRef*>(e.watchee.target());
      if (rr->peer()->lost.load(std::memory_order_acquire)) continue;  // the loss terminates it
      e.in_flight = true;
      enqueue(Outbound{rr->peer(), {}, make_watch<wire::Watch>(rr->local_path(), e.watcher_path), {},
                       std::string(kControlPath), {}});
    }
  }
}

void Transport::Core::sweep() {
  std::vector<ActorRef> done;  // released outside the lock
  std::lock_guard lk(export_mu);
  for (auto it = exports.begin(); it != exports.end();) {
    if (it->second.target()->terminated()) {
      export_ids.erase(it->second.target());
      done.push_back(std::move(it->second));
      it = exports.erase(it);
    } else {
      ++it;
    }
  }
}

void Transport::Core::run() {
  std::vector<zmq_pollitem_t> items;
  std::vector<Peer*> owners;  // the peer of each item (null for the router side)
  while (!stopping.load(std::memory_order_acquire)) {
    try {
      run_once(items, owners);
    } catch (const std::exception& e) {
      // Never let one bad event end remoting: log it (throttled) and go on.
      bump(n.io_errors);
      conn_log.warn(log, "remoting I/O thread: {}", e.what());
    }
  }
}

void Transport::Core::run_once(std::vector<zmq_pollitem_t>& items, std::vector<Peer*>& owners) {
  {
    moved = 0;
    held_back = false;
    take_work();
    flush_active();
    std::erase_if(active, [](const std::shared_ptr<Peer>& p) {
      if (p->dealer || !p->pending.empty()) return false;
      p->in_active = false;
      return true;
    });
    const auto now = std::chrono::steady_clock::now();
    if (now >= next_sweep) {
      sweep();
      resend_watches();
      resend_terminated();
      next_sweep = now + std::chrono::seconds(1);
    }

    items.clear();
    owners.clear();
    items.push_back({nullptr, efd, ZMQ_POLLIN, 0});
    items.push_back({router.handle(), 0, ZMQ_POLLIN, 0});
    owners.push_back(nullptr);
    owners.push_back(nullptr);
    if (router_monitor) {
      items.push_back({router_monitor->handle(), 0, ZMQ_POLLIN, 0});
      owners.push_back(nullptr);
    }
    for (auto& p : active) {
      if (p->dealer) {
        short ev = ZMQ_POLLIN;
        if (!p->pending.empty()) ev |= ZMQ_POLLOUT;
        items.push_back({p->dealer->handle(), 0, ev, 0});
        owners.push_back(p.get());
      }
      if (p->monitor) {
        items.push_back({p->monitor->handle(), 0, ZMQ_POLLIN, 0});
        owners.push_back(p.get());
      }
    }
    const bool work = queued_work.load(std::memory_order_seq_cst) != 0;
    const bool spinning = !work && now < spin_until;
    if (spinning) {
      // Busy-polling (idle_spin): no wake-up is needed to reach this thread; let others run.
      sched_yield();
    } else if (!work) {
      // About to block (unless work arrives before the check below): from here a sender must
      // wake this thread. With work queued it only polls and comes round again.
      idle.store(true, std::memory_order_seq_cst);
    }
    // 100 ms at most: exports are swept and peers backing off after a failed handshake retried.
    const bool blocking = !work && !spinning && queued_work.load(std::memory_order_seq_cst) == 0;
    const int ready = zmq_poll(items.data(), static_cast<int>(items.size()), blocking ? 100 : 0);
    if (ready < 0 && zmq_errno() == ETERM) return;
    if (!work && !spinning) idle.store(false, std::memory_order_relaxed);  // only set on that path
    if (items[0].revents & ZMQ_POLLIN) {
      std::uint64_t v;
      [[maybe_unused]] auto r = ::read(efd, &v, sizeof v);
    }
    if (items[1].revents & ZMQ_POLLIN) read_router();
    std::size_t i = 2;
    if (router_monitor) {
      if (items[i].revents & ZMQ_POLLIN) read_monitor(*router_monitor, nullptr);
      ++i;
    }
    for (; i < items.size(); ++i) {
      Peer* p = owners[i];
      if (!(items[i].revents & ZMQ_POLLIN) || !p) continue;
      if (p->dealer && items[i].socket == p->dealer->handle()) {
        read_dealer(*p);
      } else if (p->monitor && items[i].socket == p->monitor->handle()) {
        read_monitor(*p->monitor, p);
      }
    }
    // After a round of work: something was ready, came in meanwhile, was sent or received, or
    // waited for room. (Work taken at the round's start counts through what it moved: a round
    // that only took messages while spinning used to leave the spin running, so a stream, or a
    // full queue, kept the thread polling for the whole spin.)
    if (ready > 0 || work || moved > 0 || held_back) {
      spin_until = detail::SpinPolicy{cfg.idle_spin}.after_round(std::chrono::steady_clock::now(), moved, held_back);
    }
  }
}

// ---- Transport ----------------------------------------------------------------------------------

Transport::Transport(std::shared_ptr<Core> core) : core_(std::move(core)) {}

Result<std::unique_ptr<Transport>> Transport::start(ActorSystem& system, TransportConfig cfg) {
  auto& log = system.log();
  if (!cfg.insecure) {
    if (!valid_z85_key(cfg.keys.public_key) || !valid_z85_key(cfg.keys.secret_key)) {
      log.error("remoting: the CURVE key pair is missing or malformed (set keys, or insecure for local development)");
      return make_error(TransportErrc::bad_config);
    }
    if (!cfg.allow_list) {
      log.error("remoting: no allow-list (set allow_list, or insecure for local development)");
      return make_error(TransportErrc::bad_config);
    }
    if (cfg.zap_domain.empty()) {
      log.error("remoting: zap_domain must not be empty");
      return make_error(TransportErrc::bad_config);
    }
  }
  if (cfg.max_queue_per_peer == 0 || cfg.max_batch_bytes == 0 || cfg.max_batch_bytes > cfg.limits.max_frame_bytes) {
    log.error("remoting: max_queue_per_peer and max_batch_bytes must be positive, max_batch_bytes <= max_frame_bytes");
    return make_error(TransportErrc::bad_config);
  }
  std::string advertise = cfg.advertise_host.empty() ? cfg.bind_host : cfg.advertise_host;
  if (advertise == "0.0.0.0" || advertise == "*" || advertise == "::" || advertise.empty()) {
    log.error("remoting: binding {} needs advertise_host (the address other nodes use)", cfg.bind_host);
    return make_error(TransportErrc::bad_config);
  }

  auto core = std::make_shared<Core>(system, std::move(cfg));
  auto& c = *core;
  c.self.uid = c.cfg.node_uid ? c.cfg.node_uid : random_uid();
  c.self.host = advertise;
  c.ctx = zmq::context_t(1);
  c.router = zmq::socket_t(c.ctx, zmq::socket_type::router);
  c.router.set(zmq::sockopt::linger, 0);
  c.router.set(zmq::sockopt::maxmsgsize, static_cast<std::int64_t>(c.cfg.limits.max_frame_bytes + (64u << 10)));
  c.router.set(zmq::sockopt::rcvhwm, 10000);
  if (c.cfg.insecure) {
    log.warn("remoting: INSECURE mode: no encryption, no authentication; any process that can reach the port can "
             "send to this node's actors. Local development only.");
  } else {
    try {
      // The gate first: a CURVE server without an answering ZAP handler admits any key.
      c.zap = std::make_unique<detail::ZapHandler>(c.ctx, c.cfg.allow_list, c.cfg.zap_domain, false,
                                                   std::shared_ptr<spdlog::logger>(std::shared_ptr<void>(), &log));
      c.zap->start();
      c.router.set(zmq::sockopt::curve_server, 1);
      c.router.set(zmq::sockopt::curve_secretkey, c.cfg.keys.secret_key);
      detail::require_zap(c.router, c.cfg.zap_domain);
    } catch (const std::exception& e) {
      log.error("remoting: {}", e.what());
      return make_error(TransportErrc::zap_unavailable);
    }
  }
  c.socket_monitor(c.router, c.router_monitor, kMonitorEvents);
  const std::string ep = fmt::format("tcp://{}:{}", c.cfg.bind_host.find(':') != std::string::npos
                                                        ? "[" + c.cfg.bind_host + "]" : c.cfg.bind_host,
                                     c.cfg.port ? std::to_string(c.cfg.port) : std::string("*"));
  try {
    c.router.bind(ep);
  } catch (const zmq::error_t& e) {
    log.error("remoting: cannot bind {}: {}", ep, e.what());
    return make_error(TransportErrc::bind_failed);
  }
  const auto last = c.router.get(zmq::sockopt::last_endpoint);
  const auto colon = last.rfind(':');
  c.self.port = static_cast<std::uint16_t>(std::stoi(last.substr(colon + 1)));
  c.self_origin = c.self.to_string();
  const auto overhead = 2 * c.cfg.limits.max_path_bytes + c.self_origin.size() + 256;
  c.max_message_bytes = c.cfg.limits.max_frame_bytes > overhead ? c.cfg.limits.max_frame_bytes - overhead : 0;
  system.registry().add<wire::Watch>();
  system.registry().add<wire::Unwatch>();
  system.registry().add<sys::Terminated>();
  system.registry().add<sys::Undeliverable>();
  c.efd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (c.efd < 0) {
    log.error("remoting: eventfd failed: {}", std::strerror(errno));
    return make_error(TransportErrc::bind_failed);
  }
  c.io = std::thread([&c] {
    try {
      c.run();
    } catch (const std::exception& e) {
      c.log.critical("remoting: the I/O thread failed: {}", e.what());
    }
  });
  pthread_setname_np(c.io.native_handle(), "troupe-remoting");  // for top -H, perf and gdb
  log.info("remoting: listening at {} ({})", c.self_origin, c.cfg.insecure ? "insecure" : "CURVE");
  return std::unique_ptr<Transport>(new Transport(std::move(core)));
}

Transport::~Transport() { stop(); }

void Transport::stop() {
  auto& c = *core_;
  if (c.stopping.exchange(true)) return;
  {
    // From here on new messages are dropped at once and new operations refused (their callers
    // handle that: a watch terminates at once).
    std::lock_guard lk(c.q_mu);
    c.stopped = true;
  }
  {
    const std::uint64_t one = 1;
    [[maybe_unused]] auto r = ::write(c.efd, &one, sizeof one);
  }
  if (c.io.joinable()) c.io.join();
  std::vector<Outbound> left;
  std::vector<std::function<void()>> ops;
  {
    std::lock_guard lk(c.q_mu);
    left.swap(c.out);
    ops.swap(c.ops);
  }
  // Operations accepted before the stop still run (single-threaded now): a watch registered
  // just before is terminated below like every other.
  for (auto& fn : ops) fn();
  for (auto& p : c.active) {
    for (auto& o : p->pending) left.push_back(std::move(o));
    p->pending.clear();
    c.close_peer(*p);
  }
  c.active.clear();
  {
    std::lock_guard lk(c.mu);
    for (auto& [uid, p] : c.peers) c.close_peer(*p);  // sockets of peers that were not active
  }
  for (auto& o : left) {
    o.peer->queued.fetch_sub(1, std::memory_order_relaxed);
    c.drop(o, "transport stopped", c.n.dropped_stopped);
  }
  // Watches of remote actors can no longer be served: every watcher gets its Terminated.
  for (auto& [uid, set] : c.watches) {
    for (auto& [k, w] : set.all) {
      auto* rr = static_cast<RemoteRef*>(w.watchee.target());
      ActorSystem::deliver_terminated(w.watcher, make_terminated(sys::TerminationReason::NodeDown, rr->address()),
                                      w.watchee);
    }
  }
  c.watches.clear();
  c.watch_count = 0;
  for (auto& [uid, set] : c.served) {
    for (auto& [k, s] : set.all) {
      if (s.watchee) s.watchee.target()->remove_watcher(s.watcher);
    }
  }
  c.served.clear();
  c.local_cache.clear();
  c.conns.clear();
  {
    std::lock_guard lk(c.export_mu);
    c.exports.clear();
    c.export_ids.clear();
  }
  if (c.router_monitor) {
    zmq_socket_monitor(c.router.handle(), nullptr, 0);
    c.router_monitor->close();
  }
  c.router.close();
  if (c.zap) c.zap->stop();
  c.ctx.close();
  ::close(c.efd);
  c.efd = -1;
  c.log.info("remoting: stopped");
}

const NodeAddress& Transport::address() const noexcept { return core_->self; }
std::string Transport::public_key() const { return core_->cfg.insecure ? std::string() : core_->cfg.keys.public_key; }

bool Transport::tell_keyed(const ActorRef& to, Message&& msg, const ActorRef& sender, const KeyedRoute& route) {
  auto* rr = as_remote(to.target());
  if (!rr || rr->core() != core_.get()) return false;
  Outbound o{rr->peer(), to, std::move(msg), sender};
  o.keyed = true;
  o.hops = route.hops;
  o.shard = route.shard;
  o.epoch = route.epoch;
  o.entity_id = OutboundId(route.entity_id);
  core_->enqueue(std::move(o));
  return true;
}

void Transport::set_inbox(std::string path, Inbox inbox) {
  std::lock_guard lk(core_->inbox_mu);
  if (inbox) {
    core_->inboxes[std::move(path)] = std::make_shared<Inbox>(std::move(inbox));
  } else {
    core_->inboxes.erase(path);
  }
  core_->inbox_gen.fetch_add(1, std::memory_order_release);
}

Result<ActorRef> Transport::resolve(std::string_view address) {
  auto a = parse_actor_address(address);
  if (!a) return a.error();
  if (a->node.uid == core_->self.uid) {
    if (starts_with_temp(a->path)) return core_->exported(a->path);
    return core_->system.lookup(a->path);
  }
  return core_->remote_ref(a->node, a->path);
}

std::string Transport::address_of(const ActorRef& ref) { return core_->address_of(ref); }

Result<NodeAddress> Transport::discover(std::string_view endpoint, std::chrono::milliseconds timeout) {
  auto ep = parse_endpoint(endpoint);
  if (!ep) return ep.error();
  auto& c = *core_;
  std::string server_key;
  if (!c.cfg.insecure) {
    std::lock_guard lk(c.mu);
    auto it = c.keys.find(ep->endpoint());
    if (it == c.keys.end()) return make_error_code(std::errc::permission_denied);
    server_key = it->second.key;
  }
  try {
    // A socket of its own on the caller's thread: hello, and the node's answer names it.
    zmq::socket_t d(c.ctx, zmq::socket_type::dealer);
    d.set(zmq::sockopt::linger, 0);
    d.set(zmq::sockopt::maxmsgsize, static_cast<std::int64_t>(64u << 10));
    if (!c.cfg.insecure) {
      d.set(zmq::sockopt::curve_serverkey, server_key);
      d.set(zmq::sockopt::curve_publickey, c.cfg.keys.public_key);
      d.set(zmq::sockopt::curve_secretkey, c.cfg.keys.secret_key);
    }
    d.connect(c.connect_endpoint(*ep));
    BatchBuilder hello(1024);
    auto f = hello.finish(c.self_origin, 0);
    if (!d.send(zmq::buffer(f.data(), f.size()), zmq::send_flags::dontwait)) {
      return make_error_code(std::errc::resource_unavailable_try_again);
    }
    zmq::pollitem_t item{d.handle(), 0, ZMQ_POLLIN, 0};
    const auto end = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - std::chrono::steady_clock::now());
      if (left.count() <= 0) return make_error_code(std::errc::timed_out);
      zmq::poll(&item, 1, left);
      zmq::message_t m;
      if (!d.recv(m, zmq::recv_flags::dontwait)) continue;
      FrameReport rep;
      auto in = decode_frame({static_cast<const std::uint8_t*>(m.data()), m.size()}, c.system.registry(), c.cfg.limits, rep);
      if (!in) continue;
      auto a = parse_node_address(in->origin);
      if (a) return *a;
    }
  } catch (const zmq::error_t& e) {
    c.log.warn("discover {}: {}", endpoint, e.what());
    return make_error_code(std::errc::host_unreachable);
  }
}

bool Transport::learn_peer_key(std::string_view endpoint, std::string_view public_key, std::uint64_t uid) {
  auto& c = *core_;
  if (!c.cfg.insecure && !c.cfg.allow_list->contains(public_key)) return false;
  std::lock_guard lk(c.mu);
  auto [it, fresh] = c.keys.try_emplace(std::string(endpoint), Core::KeyEntry{std::string(public_key), false, {}});
  // The same key for another incarnation at the endpoint (a restart with the same key file):
  // kept for it when the earlier one is lost.
  auto& uids = it->second.uids;
  if (uid != 0 && it->second.key == public_key && !c.dead.count(uid) &&
      std::find(uids.begin(), uids.end(), uid) == uids.end()) {
    uids.push_back(uid);
  }
  return fresh;
}

void Transport::add_peer_key(std::string_view endpoint, std::string_view public_key) {
  std::lock_guard lk(core_->mu);
  core_->keys[std::string(endpoint)] = Core::KeyEntry{std::string(public_key), true, {}};
}

void Transport::node_lost(std::uint64_t node, std::string_view reason) { core_->lose(node, std::string(reason)); }

TransportStats Transport::stats() const {
  TransportStats s;
  const auto& n = core_->n;
#define TROUPE_COPY(name) s.name = n.name.load(std::memory_order_relaxed);
  TROUPE_TRANSPORT_COUNTERS(TROUPE_COPY)
#undef TROUPE_COPY
  if (core_->zap) {
    const auto& z = core_->zap->stats();
    s.zap_refused = z.refused_key + z.refused_mechanism + z.refused_domain + z.malformed;
  }
  {
    std::lock_guard lk(core_->mu);
    s.peers = core_->peers.size();
    for (const auto& [uid, p] : core_->peers) s.queued += p->queued.load(std::memory_order_relaxed);
  }
  s.remote_watches = core_->watch_count.load(std::memory_order_relaxed);
  return s;
}

}  // namespace troupe::remoting
