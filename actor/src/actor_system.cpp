#include <troupe/actor/actor_system.hpp>

#include <random>

#include <fmt/format.h>

#include "system_impl.hpp"

namespace troupe {

namespace {

class Guardian final : public Actor {
 public:
  explicit Guardian(SupervisorStrategy s) : strategy_(std::move(s)) {}
  void receive(const Message&) override {}
  SupervisorStrategy supervisor_strategy() const override { return strategy_; }

 private:
  SupervisorStrategy strategy_;
};

std::string random_node_id() {
  std::random_device rd;
  std::uint64_t v = (static_cast<std::uint64_t>(rd()) << 32) ^ rd();
  return fmt::format("{:016x}", v);
}

class ActorCategory final : public std::error_category {
 public:
  const char* name() const noexcept override { return "troupe.actor"; }
  std::string message(int c) const override {
    switch (static_cast<ActorErrc>(c)) {
      case ActorErrc::timeout: return "no reply within the timeout";
      case ActorErrc::dead_target: return "the target actor is gone";
      case ActorErrc::system_shutdown: return "the actor system shut down";
      case ActorErrc::duplicate_name: return "an actor with that name already exists";
      case ActorErrc::invalid_name: return "invalid actor name";
    }
    return "unknown actor error";
  }
};

/// The sender ref of an ask(): completes the caller's callback with the first reply, a timeout,
/// or dead_target, exactly once.
class AskRef final : public detail::RefTarget {
 public:
  AskRef(ActorSystem::Impl& sys, std::function<void(Result<Message>)> done, std::uint64_t id)
      : sys_(sys), done_(std::move(done)), id_(id) {}

  void send(Message&& msg, ActorRef&&) override { complete(std::move(msg)); }
  void undeliverable() noexcept override { complete(ActorErrc::dead_target); }
  std::string path() const override { return fmt::format("/temp/ask-{}", id_); }
  std::uint64_t id() const noexcept override { return id_; }
  ActorSystem& system() const noexcept override { return sys_.owner; }
  bool terminated() const noexcept override { return finished_.load(std::memory_order_acquire); }

  void complete(Result<Message> r) noexcept {
    if (finished_.exchange(true, std::memory_order_acq_rel)) return;
    if (auto t = timer_.load(std::memory_order_acquire)) sys_.timers->cancel(t);
    auto done = std::move(done_);
    call(done, std::move(r));
  }
  std::atomic<std::uint64_t> timer_{0};

 protected:
  ~AskRef() override {
    // The system is going away with the question unanswered. This ref may outlive the system
    // (a copy of the sender kept somewhere): what the callback throws here is swallowed, with
    // no system left to count it.
    if (!finished_.exchange(true)) {
      try {
        done_(ActorErrc::system_shutdown);
      } catch (...) {
      }
    }
  }

 private:
  /// The caller's callback runs on a worker or the timer thread: what it throws is counted and
  /// logged, never let out there (it would end the process).
  void call(std::function<void(Result<Message>)>& done, Result<Message> r) noexcept {
    std::string what;
    try {
      done(std::move(r));
      return;
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
      what = "a non-standard exception";
    }
    sys_.callback_failures.fetch_add(1, std::memory_order_relaxed);
    try {
      sys_.log->error("ask {}: the reply callback threw: {}", path(), what);
    } catch (...) {
    }
  }
  ActorSystem::Impl& sys_;
  std::function<void(Result<Message>)> done_;
  std::uint64_t id_;
  std::atomic<bool> finished_{false};
};

std::atomic<std::uint64_t> g_orphan_dead_letters{0};

}  // namespace

const std::error_category& actor_category() noexcept {
  static const ActorCategory cat;
  return cat;
}

void detail::RefTarget::add_watcher(const ActorRef& watcher) {
  detail::notify_terminated(watcher, detail::make_terminated(sys::TerminationReason::AlreadyDead, path()), ActorRef(this, true));
}

// ---- ActorRef -----------------------------------------------------------------------------------

void ActorRef::tell(Message msg, ActorRef sender) const {
  if (t_) {
    t_->send(std::move(msg), std::move(sender));
  } else if (sender) {
    sender.target()->system().impl().dead_letter(msg, sender, "(null ref)", "null recipient");
  } else {
    g_orphan_dead_letters.fetch_add(1, std::memory_order_relaxed);
  }
}

void ActorRef::ask(Message msg, std::chrono::milliseconds timeout, std::function<void(Result<Message>)> done) const {
  if (!t_) {
    done(ActorErrc::dead_target);
    return;
  }
  auto& sys = t_->system().impl();
  auto* a = new AskRef(sys, std::move(done), sys.next_id.fetch_add(1, std::memory_order_relaxed));
  ActorRef asker(a, false);
  a->timer_.store(sys.timers->schedule(timeout, [asker] {
    static_cast<AskRef*>(asker.target())->complete(ActorErrc::timeout);
  }), std::memory_order_release);
  tell(std::move(msg), std::move(asker));
}

std::future<Result<Message>> ActorRef::ask(Message msg, std::chrono::milliseconds timeout) const {
  auto p = std::make_shared<std::promise<Result<Message>>>();
  auto f = p->get_future();
  ask(std::move(msg), timeout, [p](Result<Message> r) { p->set_value(std::move(r)); });
  return f;
}

// ---- ActorSystem::Impl --------------------------------------------------------------------------

ActorSystem::Impl::Impl(ActorSystem& o, ActorSystemConfig cfg)
    : owner(o),
      config(std::move(cfg)),
      log(config.logger ? config.logger : make_node_logger(config.node_id)),
      registry(config.decode_limits, log),
      timers(config.timers ? config.timers : make_real_timer_service()),
      dispatcher(config.workers),
      throughput(std::max(1u, config.throughput)) {}

void ActorSystem::Impl::dead_letter(const Message& msg, const ActorRef& sender, const std::string& recipient,
                                    const char* why) {
  dead_letters.fetch_add(1, std::memory_order_relaxed);
  dead_letter_log.warn(*log, "dead letter: message type {:#018x} ({} bytes) to {} from {}: {}", msg.type(),
                       msg.size(), recipient, sender ? sender.path() : std::string("(no sender)"), why);
  if (sender) sender.target()->undeliverable();
}

void ActorSystem::Impl::on_stopped(detail::Cell* c) {
  stopped.fetch_add(1, std::memory_order_relaxed);
  if (c == user.get() || c == system.get() || c == root.get()) {
    std::lock_guard lk(term_mu);
    term_cv.notify_all();
  }
}

void ActorSystem::Impl::await_dead(detail::Cell* c) {
  std::unique_lock lk(term_mu);
  term_cv.wait(lk, [c] { return c->dead(); });
}

// ---- ActorSystem --------------------------------------------------------------------------------

ActorSystem::ActorSystem(ActorSystemConfig config) {
  if (config.node_id.empty()) config.node_id = random_node_id();
  impl_ = std::make_unique<Impl>(*this, std::move(config));
  auto& i = *impl_;
  i.dispatcher.start();
  // The root is never scheduled until shutdown; /user and /system are its named children.
  i.root = detail::Ref<detail::Cell>(
      detail::Cell::make_root(i, detail::make_factory<Guardian>(SupervisorStrategy{}), i.next_id.fetch_add(1)), true);
  i.root->spawn(detail::make_factory<Guardian>(i.config.user_guardian_strategy), SpawnOptions{.name = "user"});
  i.root->spawn(detail::make_factory<Guardian>(SupervisorStrategy{}), SpawnOptions{.name = "system"});
  i.user = detail::Ref<detail::Cell>(static_cast<detail::Cell*>(i.root->child("user").target()), true);
  i.system = detail::Ref<detail::Cell>(static_cast<detail::Cell*>(i.root->child("system").target()), true);
  i.log->debug("actor system started with {} workers", i.dispatcher.workers());
}

ActorSystem::~ActorSystem() { shutdown(); }

void ActorSystem::shutdown() {
  auto& i = *impl_;
  if (i.shut_down.exchange(true)) return;
  i.user->request_stop(sys::TerminationReason::SystemShutdown);
  i.await_dead(i.user.get());
  i.system->request_stop(sys::TerminationReason::SystemShutdown);
  i.await_dead(i.system.get());
  i.root->request_stop(sys::TerminationReason::SystemShutdown);
  i.await_dead(i.root.get());
  i.timers->shutdown();
  i.dispatcher.stop();
  i.log->debug("actor system stopped: {} actors spawned, {} dead letters", i.spawned.load(), i.dead_letters.load());
}

ActorRef ActorSystem::spawn_top(detail::FactoryPtr f, SpawnOptions opts) {
  return impl_->user->spawn(std::move(f), std::move(opts));
}

ActorRef ActorSystem::spawn_under_system(detail::FactoryPtr f, SpawnOptions opts) {
  return impl_->system->spawn(std::move(f), std::move(opts));
}

void ActorSystem::stop(const ActorRef& ref) {
  if (ref) ref.target()->stop();
}

void ActorSystem::stop_after_queued(const ActorRef& ref) {
  if (auto* cell = dynamic_cast<detail::Cell*>(ref.target())) {
    // A control in the mailbox: it runs on the actor's turn after everything queued before it.
    cell->run_on_turn([](detail::Cell& c) { c.request_stop(sys::TerminationReason::Stopped); });
  } else if (ref) {
    ref.target()->stop();
  }
}

bool ActorSystem::stop_keeping_queued(const ActorRef& ref, KeepQueued keep) {
  auto* cell = dynamic_cast<detail::Cell*>(ref.target());
  return cell && cell->stop_keeping_queued(std::move(keep));
}

bool ActorSystem::run_with_actor(const ActorRef& ref, std::function<void(Actor&)> fn) {
  auto* cell = dynamic_cast<detail::Cell*>(ref.target());
  if (!cell) return false;
  cell->run_on_turn([fn = std::move(fn)](detail::Cell& c) {
    if (auto* a = c.instance()) fn(*a);
  });
  return true;
}

void ActorSystem::watch(const ActorRef& target, const ActorRef& watcher) {
  if (!watcher) return;
  if (!target) {
    watcher.tell(detail::make_terminated(sys::TerminationReason::AlreadyDead, ""));
    return;
  }
  if (auto* cell = dynamic_cast<detail::Cell*>(watcher.target())) {
    cell->run_on_turn([target](detail::Cell& c) { c.watch(target); });
  } else {
    target.target()->add_watcher(watcher);
  }
}

void ActorSystem::unwatch(const ActorRef& target, const ActorRef& watcher) {
  if (!target || !watcher) return;
  if (auto* cell = dynamic_cast<detail::Cell*>(watcher.target())) {
    cell->run_on_turn([target](detail::Cell& c) { c.unwatch(target); });
  } else {
    target.target()->remove_watcher(watcher);
  }
}

ActorRef ActorSystem::lookup(std::string_view path) const {
  if (path.empty() || path.front() != '/') return {};
  ActorRef cur(impl_->root.get(), true);
  path.remove_prefix(1);
  while (!path.empty()) {
    auto slash = path.find('/');
    auto seg = path.substr(0, slash);
    cur = static_cast<detail::Cell*>(cur.target())->child(seg);
    if (!cur) return {};
    if (slash == std::string_view::npos) break;
    path.remove_prefix(slash + 1);
  }
  return cur;
}

std::uint64_t ActorSystem::schedule_once(std::chrono::nanoseconds delay, ActorRef target, Message msg) {
  return impl_->timers->schedule(delay, [target = std::move(target), msg = std::move(msg)] { target.tell(msg); });
}

void ActorSystem::dead_letter(const Message& msg, const ActorRef& sender, const std::string& recipient,
                              const char* why) {
  impl_->dead_letter(msg, sender, recipient, why);
}

void ActorSystem::deliver_terminated(const ActorRef& watcher, const Message& terminated, const ActorRef& dead) {
  detail::notify_terminated(watcher, terminated, dead);
}

const std::string& ActorSystem::node_id() const noexcept { return impl_->config.node_id; }
ActorSystem::WakeBatch::WakeBatch(ActorSystem& system) {
  if (system.impl_->dispatcher.begin_batch()) dispatcher_ = &system.impl_->dispatcher;
}

ActorSystem::WakeBatch::~WakeBatch() {
  if (dispatcher_) static_cast<detail::Dispatcher*>(dispatcher_)->end_batch();
}

MessageRegistry& ActorSystem::registry() noexcept { return impl_->registry; }
TimerService& ActorSystem::timers() noexcept { return *impl_->timers; }
spdlog::logger& ActorSystem::log() const noexcept { return *impl_->log; }
std::shared_ptr<spdlog::logger> ActorSystem::log_ptr() const noexcept { return impl_->log; }

ActorSystemStats ActorSystem::stats() const noexcept {
  auto& i = *impl_;
  ActorSystemStats s;
  s.actors_spawned = i.spawned.load(std::memory_order_relaxed);
  s.actors_stopped = i.stopped.load(std::memory_order_relaxed);
  s.actors_live = s.actors_spawned + 1 - s.actors_stopped;  // +1: the root is not spawned
  s.dead_letters = i.dead_letters.load(std::memory_order_relaxed) + g_orphan_dead_letters.load(std::memory_order_relaxed);
  s.failures = i.failures.load(std::memory_order_relaxed);
  s.restarts = i.restarts.load(std::memory_order_relaxed);
  s.failed_messages_dropped = i.failed_dropped.load(std::memory_order_relaxed);
  s.escalations_past_user = i.escalations.load(std::memory_order_relaxed);
  s.callback_failures = i.callback_failures.load(std::memory_order_relaxed);
  s.lifo_rescues = i.dispatcher.lifo_rescues();
  return s;
}

}  // namespace troupe
