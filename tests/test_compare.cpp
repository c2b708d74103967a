// The NaN-safe comparison helpers of tests/compare.h: each must be false when
// an operand is NaN, so a poisoned, unwritten output fails the check using it.
#include <gtest/gtest.h>

#include <limits>

#include "tests/compare.h"

namespace towerrec {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

TEST(Compare, NearFailsOnNaN) {
  EXPECT_TRUE(testing::near(1.0, 1.0 + 1e-7, 1e-6));
  EXPECT_FALSE(testing::near(1.0, 1.0 + 1e-5, 1e-6));
  EXPECT_TRUE(testing::near(-kInf, -kInf, 0));
  EXPECT_FALSE(testing::near(kInf, -kInf, 1e30));
  EXPECT_FALSE(testing::near(kNaN, 0.0, 1e30));
  EXPECT_FALSE(testing::near(0.0, kNaN, 1e30));
  EXPECT_FALSE(testing::near(kNaN, kNaN, 1e30));
  EXPECT_FALSE(testing::near(kNaN, kNaN, kInf));
}

TEST(Compare, RanksAfterFailsOnNaN) {
  EXPECT_TRUE(testing::ranks_after(1.0f, 3, 2.0f, 7));
  EXPECT_TRUE(testing::ranks_after(2.0f, 8, 2.0f, 7));
  EXPECT_FALSE(testing::ranks_after(2.0f, 6, 2.0f, 7));
  EXPECT_FALSE(testing::ranks_after(3.0f, 8, 2.0f, 7));
  EXPECT_TRUE(testing::ranks_after(-kInf, 8, 0.0f, 7));
  EXPECT_FALSE(testing::ranks_after(kNaN, 8, 2.0f, 7));
  EXPECT_FALSE(testing::ranks_after(1.0f, 8, kNaN, 7));
  EXPECT_FALSE(testing::ranks_after(kNaN, 8, kNaN, 7));
}

}  // namespace
}  // namespace towerrec
