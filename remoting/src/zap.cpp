#include "zap.hpp"

#include <pthread.h>

#include <cerrno>
#include <array>
#include <stdexcept>
#include <vector>

#include <zmq_addon.hpp>

namespace troupe::remoting::detail {

namespace {
std::atomic<unsigned> g_handler_seq{0};
constexpr int kZapEnforceDomain = 93;  // ZMQ_ZAP_ENFORCE_DOMAIN
}  // namespace

void require_zap(zmq::socket_t& server, const std::string& domain) {
  if (domain.empty()) throw std::runtime_error("CURVE needs a non-empty ZAP domain");
  server.set(zmq::sockopt::zap_domain, domain);
  const int one = 1;
  if (zmq_setsockopt(server.handle(), kZapEnforceDomain, &one, sizeof one) != 0) {
    throw std::runtime_error("libzmq refused ZMQ_ZAP_ENFORCE_DOMAIN: CURVE would admit any key");
  }
}

ZapHandler::ZapHandler(zmq::context_t& ctx, std::shared_ptr<const AllowList> allow, std::string domain,
                       bool allow_null, std::shared_ptr<spdlog::logger> log)
    : ctx_(ctx), allow_(std::move(allow)), domain_(std::move(domain)), allow_null_(allow_null), log_(std::move(log)) {}

ZapHandler::~ZapHandler() { stop(); }

void ZapHandler::start() {
  if (started_) return;
  rep_ = zmq::socket_t(ctx_, zmq::socket_type::rep);
  rep_.set(zmq::sockopt::linger, 0);
  rep_.bind("inproc://zeromq.zap.01");
  const auto stop_ep = "inproc://troupe-zap-stop-" + std::to_string(g_handler_seq.fetch_add(1));
  stop_rx_ = zmq::socket_t(ctx_, zmq::socket_type::pair);
  stop_rx_.bind(stop_ep);
  stop_tx_ = zmq::socket_t(ctx_, zmq::socket_type::pair);
  stop_tx_.connect(stop_ep);
  started_ = true;
  thread_ = std::thread([this] { loop(); });
  pthread_setname_np(thread_.native_handle(), "troupe-zap");  // for top -H, perf and gdb
}

void ZapHandler::stop() {
  if (!started_) return;
  started_ = false;
  stop_tx_.send(zmq::str_buffer("stop"), zmq::send_flags::none);
  thread_.join();
  rep_.close();
  stop_rx_.close();
  stop_tx_.close();
}

void ZapHandler::loop() {
  std::array<zmq::pollitem_t, 2> items{{{rep_.handle(), 0, ZMQ_POLLIN, 0}, {stop_rx_.handle(), 0, ZMQ_POLLIN, 0}}};
  for (;;) {
    try {
      zmq::poll(items.data(), items.size(), std::chrono::milliseconds(-1));
      if (items[1].revents & ZMQ_POLLIN) return;
      if (items[0].revents & ZMQ_POLLIN) handle(rep_);
    } catch (const zmq::error_t& e) {
      // A signal handled on this thread (a program that does not block signals on the threads
      // it did not make) interrupts the poll: not a failure. Anything else is logged, and the
      // handler goes on: without it no peer could connect.
      if (e.num() == ETERM) return;
      if (e.num() != EINTR) log_->error("ZAP: {}", e.what());
    }
  }
}

// Request: version, request id, domain, address, routing id, mechanism, credentials...
// Reply:   version, request id, status code, status text, user id, metadata.
void ZapHandler::handle(zmq::socket_t& rep) {
  std::vector<zmq::message_t> req;
  if (!zmq::recv_multipart(rep, std::back_inserter(req))) return;
  auto reply = [&](const char* code, const std::string& text, const std::string& user) {
    std::array<zmq::const_buffer, 6> out{zmq::str_buffer("1.0"),
                                         zmq::buffer(req.size() > 1 ? req[1].data() : nullptr, req.size() > 1 ? req[1].size() : 0),
                                         zmq::buffer(std::string_view(code)),
                                         zmq::buffer(text),
                                         zmq::buffer(user),
                                         zmq::const_buffer()};
    zmq::send_multipart(rep, out);
  };
  if (req.size() < 6 || req[0].to_string_view() != "1.0") {
    stats_.malformed.fetch_add(1, std::memory_order_relaxed);
    log_->warn("ZAP: malformed request refused");
    reply("500", "malformed ZAP request", "");
    return;
  }
  const auto domain = req[2].to_string();
  const auto address = req[3].to_string();
  const auto mechanism = req[5].to_string();
  if (domain != domain_) {
    stats_.refused_domain.fetch_add(1, std::memory_order_relaxed);
    log_->warn("ZAP: refused {} (domain '{}')", address, domain);
    reply("400", "wrong domain", "");
    return;
  }
  if (mechanism == "CURVE" && req.size() >= 7 && req[6].size() == 32) {
    char z85[41];
    zmq_z85_encode(z85, static_cast<const std::uint8_t*>(req[6].data()), 32);
    if (allow_->contains(z85)) {
      stats_.accepted.fetch_add(1, std::memory_order_relaxed);
      reply("200", "OK", z85);
    } else {
      stats_.refused_key.fetch_add(1, std::memory_order_relaxed);
      log_->warn("ZAP: refused {}: public key {} is not in the allow-list", address, z85);
      reply("400", "key not allowed", "");
    }
    return;
  }
  if (mechanism == "NULL" && allow_null_) {
    stats_.accepted.fetch_add(1, std::memory_order_relaxed);
    reply("200", "OK", "insecure:" + address);
    return;
  }
  stats_.refused_mechanism.fetch_add(1, std::memory_order_relaxed);
  log_->warn("ZAP: refused {}: mechanism {} is not allowed", address, mechanism);
  reply("400", "mechanism not allowed", "");
}

}  // namespace troupe::remoting::detail
