#pragma once
// The single-activation invariant: from entity starts and stops in time order (any number of
// nodes), fail the test at any moment with two live activations of one entity.

#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

namespace troupe::testkit {

struct ActivationRecord {
  std::string node, id;
  bool started = false;
};

/// `in_order`: every start and stop, earliest first. Returns the number of activations per id.
inline std::map<std::string, int> check_single_activation(const std::vector<ActivationRecord>& in_order) {
  std::map<std::string, int> live, total;
  for (const auto& e : in_order) {
    int& l = live[e.id];
    l += e.started ? 1 : -1;
    if (e.started) ++total[e.id];
    EXPECT_LE(l, 1) << "two live activations of " << e.id << " (" << e.node << " started one)";
  }
  return total;
}

}  // namespace troupe::testkit
