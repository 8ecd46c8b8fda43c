#pragma once
// ZAP (ZeroMQ RFC 27) handler: the gatekeeper of CURVE handshakes. libzmq's CURVE server admits
// ANY client key when no ZAP handler answers or when the socket's ZAP domain is empty, so the
// transport starts this handler before it binds anything, sets a non-empty ZMQ_ZAP_DOMAIN and
// ZMQ_ZAP_ENFORCE_DOMAIN=1, and refuses to start without it. The user id of an admitted
// connection is the client's Z85 public key: claims about who sent a frame are bound to it.

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include <spdlog/logger.h>
#include <zmq.hpp>

#include <troupe/remoting/security.hpp>

namespace troupe::remoting::detail {

/// Puts a CURVE server socket under ZAP: a non-empty domain and ZMQ_ZAP_ENFORCE_DOMAIN=1
/// (declared only under ZMQ_BUILD_DRAFT_API in zmq.h, implemented by libzmq >= 4.3.4).
/// Throws std::runtime_error when libzmq refuses either: the transport then does not start.
void require_zap(zmq::socket_t& server, const std::string& domain);

class ZapHandler {
 public:
  struct Stats {
    std::atomic<std::uint64_t> accepted{0};
    std::atomic<std::uint64_t> refused_key{0};        // CURVE key not in the allow-list
    std::atomic<std::uint64_t> refused_mechanism{0};  // NULL/PLAIN where CURVE is required
    std::atomic<std::uint64_t> refused_domain{0};     // another ZAP domain
    std::atomic<std::uint64_t> malformed{0};          // a request that is not ZAP 1.0
  };

  /// `allow_null`: admit NULL-mechanism peers (the explicit insecure mode only).
  ZapHandler(zmq::context_t& ctx, std::shared_ptr<const AllowList> allow, std::string domain, bool allow_null,
             std::shared_ptr<spdlog::logger> log);
  ~ZapHandler();
  ZapHandler(const ZapHandler&) = delete;
  ZapHandler& operator=(const ZapHandler&) = delete;

  /// Binds the ZAP endpoint (synchronously: on return, handshakes are answered) and starts the
  /// thread. Throws zmq::error_t if another handler is bound in this context.
  void start();
  void stop();
  const Stats& stats() const noexcept { return stats_; }

 private:
  void loop();
  void handle(zmq::socket_t& rep);

  zmq::context_t& ctx_;
  std::shared_ptr<const AllowList> allow_;
  std::string domain_;
  bool allow_null_;
  std::shared_ptr<spdlog::logger> log_;
  zmq::socket_t rep_;
  zmq::socket_t stop_tx_;
  zmq::socket_t stop_rx_;
  std::thread thread_;
  Stats stats_;
  bool started_ = false;
};

}  // namespace troupe::remoting::detail
