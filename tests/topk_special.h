// Top-K over special scores, shared by the CPU and CUDA suites: NaN, -0, +0,
// -inf, +inf and exact ties. d = 1, so each score is u * v exactly. The rule on
// every backend: NaN ranks as -inf and is reported as -inf, -0 ranks as +0 (a
// tie, broken by the item index) and is reported as +0; padding is -1 / -inf.
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace towerrec::testing {

struct TopkSpecialCase {
  std::vector<float> U, V;  // [users x 1], [items x 1]
  int k;
  std::vector<int32_t> items;  // [users x k]
  std::vector<float> scores;   // [users x k], compared bit for bit
};

inline std::vector<TopkSpecialCase> topk_special_cases() {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<float> V = {nan, -0.0f, 0.0f, -inf, inf, 2.0f, 2.0f, -0.0f, nan, -inf};
  std::vector<TopkSpecialCase> cases;
  // u = 1: scores as V; u = -1: NaN stays NaN, the zeros and infinities flip.
  // k = 12 pads two slots.
  cases.push_back({{1.0f, -1.0f}, V, 12,
                   {4, 5, 6, 1, 2, 7, 0, 3, 8, 9, -1, -1,  //
                    3, 9, 1, 2, 7, 5, 6, 0, 4, 8, -1, -1},
                   {inf, 2, 2, 0, 0, 0, -inf, -inf, -inf, -inf, -inf, -inf,  //
                    inf, inf, 0, 0, 0, -2, -2, -inf, -inf, -inf, -inf, -inf}});
  // A short list: the ties at 0 and at -inf are cut by the item index.
  cases.push_back({{1.0f, -1.0f}, V, 4, {4, 5, 6, 1, 3, 9, 1, 2}, {inf, 2, 2, 0, inf, inf, 0, 0}});
  // k = 2 over scores that enter once the list is full: -0 and +0 replace -1
  // and -2, NaN does not enter, and the later -0 loses the tie.
  cases.push_back({{1.0f}, {-1.0f, -2.0f, -0.0f, nan, 0.0f, -0.0f}, 2, {2, 4}, {0, 0}});
  return cases;
}

// got equals the case's expectation: items exactly, scores bit for bit.
inline ::testing::AssertionResult topk_special_matches(const TopkSpecialCase& c,
                                                       const std::vector<int32_t>& items,
                                                       const std::vector<float>& scores) {
  if (items != c.items) return ::testing::AssertionFailure() << "items differ";
  if (scores.size() != c.scores.size()) return ::testing::AssertionFailure() << "size differs";
  for (size_t i = 0; i < scores.size(); ++i) {
    uint32_t a, b;
    std::memcpy(&a, &scores[i], sizeof a);
    std::memcpy(&b, &c.scores[i], sizeof b);
    if (a != b)
      return ::testing::AssertionFailure()
             << "slot " << i << ": score " << scores[i] << " (bits " << a << ") want "
             << c.scores[i] << " (bits " << b << ")";
  }
  return ::testing::AssertionSuccess();
}

}  // namespace towerrec::testing
