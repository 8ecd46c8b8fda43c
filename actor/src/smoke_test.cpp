#include <gtest/gtest.h>
#include <troupe/actor/actor_system.hpp>
#include "test_messages_generated.h"
using namespace troupe;
struct Echo : Actor { void receive(const Message& m) override { sender().tell(m, self()); } };
TEST(Smoke, AskEcho) {
  ActorSystem sys;
  auto e = sys.spawn<Echo>();
  auto m = Message::build<test::Ping>([](auto& b){ return test::CreatePing(b, 7, 1); });
  auto r = e.ask(m, std::chrono::seconds(5)).get();
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->as<test::Ping>()->seq(), 7u);
}
