// Splits: leave-one-out and temporal on hand-made logs (ties, single-interaction
// users, missing timestamps), and the per-user ratio split's invariants.
#include <gtest/gtest.h>

#include "towerrec/error.h"
#include "towerrec/split.h"

namespace towerrec {
namespace {

Interactions log_of(std::vector<int32_t> user, std::vector<int32_t> item, std::vector<int64_t> ts) {
  Interactions x;
  x.user = std::move(user);
  x.item = std::move(item);
  x.timestamp = std::move(ts);
  x.rating.assign(x.user.size(), 4.0f);
  return x;
}

TEST(SplitLeaveOneOut, LatestPerUserTiesByRowOrderSingletonsStay) {
  // user 0: rows 0 (t5), 2 (t9), 4 (t9) -> row 4 (tie at t9, later row)
  // user 1: rows 1 (t7), 3 (t3)        -> row 1
  // user 2: row 5 only                 -> stays in train
  const Interactions x = log_of({0, 1, 0, 1, 0, 2}, {10, 11, 12, 13, 14, 15}, {5, 7, 9, 3, 9, 1});
  const Split s = split_leave_one_out(x, 3);
  EXPECT_EQ(s.test.user, (std::vector<int32_t>{1, 0}));
  EXPECT_EQ(s.test.item, (std::vector<int32_t>{11, 14}));
  EXPECT_EQ(s.test.timestamp, (std::vector<int64_t>{7, 9}));
  EXPECT_EQ(s.train.item, (std::vector<int32_t>{10, 12, 13, 15}));
  EXPECT_EQ(s.train.rating.size(), 4u);
  EXPECT_EQ(s.train.timestamp, (std::vector<int64_t>{5, 9, 3, 1}));
}

TEST(SplitLeaveOneOut, NeedsTimestamps) {
  Interactions x;
  x.user = {0, 0};
  x.item = {1, 2};
  try {
    split_leave_one_out(x, 1);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("timestamps"), std::string::npos) << e.what();
  }
  EXPECT_THROW(split_temporal(x, 0.5), Error);
  EXPECT_THROW(split_by_method("temporal", x, 1, 0.5, 1), Error);
  EXPECT_THROW(split_by_method("random", x, 1, 0.5, 1), Error);
  EXPECT_NO_THROW(split_by_method("ratio", x, 1, 0.5, 1));
}

TEST(SplitTemporal, LatestFractionWithTiesByRowOrder) {
  // Timestamps by row: 4 1 4 2 9 4; sorted (ties by row): r1 r3 r0 r2 r5 r4.
  // 50% of 6 -> the last three (r2, r5, r4) go to test, kept in row order.
  const Interactions x = log_of({0, 1, 2, 0, 1, 2}, {0, 1, 2, 3, 4, 5}, {4, 1, 4, 2, 9, 4});
  const Split s = split_temporal(x, 0.5);
  EXPECT_EQ(s.test.item, (std::vector<int32_t>{2, 4, 5}));
  EXPECT_EQ(s.train.item, (std::vector<int32_t>{0, 1, 3}));
  // Every test interaction is at least as recent as every training one.
  int64_t latest_train = INT64_MIN, earliest_test = INT64_MAX;
  for (int64_t t : s.train.timestamp) latest_train = std::max(latest_train, t);
  for (int64_t t : s.test.timestamp) earliest_test = std::min(earliest_test, t);
  EXPECT_LE(latest_train, earliest_test);
  EXPECT_EQ(split_temporal(x, 0.0).test.size(), 0);
  EXPECT_EQ(split_temporal(x, 0.25).test.item, (std::vector<int32_t>{4, 5}));  // round(1.5) = 2
}

TEST(SplitRatio, ByMethodMatchesDirectCallAndKeepsColumns) {
  Interactions x;
  for (int u = 0; u < 20; ++u)
    for (int j = 0; j < 6; ++j) {
      x.user.push_back(u);
      x.item.push_back(j);
      x.timestamp.push_back(u * 10 + j);
    }
  const Split a = split_by_method("ratio", x, 20, 0.25, 7);
  const Split b = split_per_user_ratio(x, 20, 0.25, 7);
  EXPECT_EQ(a.test.user, b.test.user);
  EXPECT_EQ(a.test.item, b.test.item);
  EXPECT_EQ(a.test.timestamp.size(), a.test.user.size());
  EXPECT_TRUE(a.test.rating.empty());
  EXPECT_EQ(a.train.size() + a.test.size(), x.size());
}

}  // namespace
}  // namespace towerrec
