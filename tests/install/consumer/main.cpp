// A program outside the Troupe tree, built against the installed package only.
#include <cstdio>

#include <troupe/troupe.hpp>

class Echo final : public troupe::Actor {
 public:
  void receive(const troupe::Message& m) override { sender().tell(m); }
};

int main() {
  troupe::ActorSystem system(troupe::ActorSystemConfig{.node_id = "consumer", .workers = 1});
  auto echo = system.spawn<Echo>();
  auto msg = troupe::Message::build<troupe::sys::Undeliverable>(
      [](auto& b) { return troupe::sys::CreateUndeliverableDirect(b, "ping"); });
  auto reply = echo.ask(msg, std::chrono::seconds(5)).get();
  if (!reply || reply->as<troupe::sys::Undeliverable>()->reason()->str() != "ping") {
    std::puts("consumer failed");
    return 1;
  }
  std::puts("consumer ok");
  return 0;
}
