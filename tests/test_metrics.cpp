// Ranking metrics on hand-computed examples, the popularity baseline, and
// group_by_user / split invariants.
#include <gtest/gtest.h>

#include <cmath>

#include "towerrec/recommend.h"
#include "towerrec/split.h"

namespace towerrec {
namespace {

TEST(UserMetrics, HandComputedExample) {
  // Ranked list 5, 3, 9, 1; relevant {1, 3, 7}.
  const int32_t ranked[] = {5, 3, 9, 1};
  const int32_t rel[] = {1, 3, 7};
  const UserMetrics m = user_metrics(ranked, 4, rel, 3);
  EXPECT_DOUBLE_EQ(m.precision, 2.0 / 4);
  EXPECT_DOUBLE_EQ(m.recall, 2.0 / 3);
  const double dcg = 1 / std::log2(3.0) + 1 / std::log2(5.0);
  const double idcg = 1 + 1 / std::log2(3.0) + 1 / std::log2(4.0);
  EXPECT_NEAR(m.ndcg, dcg / idcg, 1e-12);
  // AP@4: hits at ranks 2 and 4 -> (1/2 + 2/4) / min(4, 3)
  EXPECT_NEAR(m.ap, (0.5 + 0.5) / 3, 1e-12);
  EXPECT_EQ(m.hit, 1.0);
}

TEST(UserMetrics, NoHitsAndPadding) {
  const int32_t ranked[] = {4, -1, -1};
  const int32_t rel[] = {2};
  const UserMetrics m = user_metrics(ranked, 3, rel, 1);
  EXPECT_EQ(m.precision, 0);
  EXPECT_EQ(m.recall, 0);
  EXPECT_EQ(m.ndcg, 0);
  EXPECT_EQ(m.hit, 0);
}

TEST(UserMetrics, PerfectList) {
  const int32_t ranked[] = {2, 8};
  const int32_t rel[] = {2, 8};
  const UserMetrics m = user_metrics(ranked, 2, rel, 2);
  EXPECT_DOUBLE_EQ(m.ndcg, 1.0);
  EXPECT_DOUBLE_EQ(m.ap, 1.0);
  EXPECT_DOUBLE_EQ(m.recall, 1.0);
}

TEST(GroupByUser, SortsAndDeduplicates) {
  Interactions x;
  x.user = {1, 0, 1, 1, 2};
  x.item = {5, 3, 2, 5, 0};
  const UserItems g = group_by_user(x, 4);
  ASSERT_EQ(g.offsets, (std::vector<int64_t>{0, 1, 3, 4, 4}));
  EXPECT_EQ(g.items, (std::vector<int32_t>{3, 2, 5, 0}));
}

TEST(Popularity, TiesGoToLowerItemIndex) {
  // Items 0 and 1 equally popular (2 each), item 2 once. User 3 has seen nothing;
  // its test item is 1.
  Interactions tr;
  tr.user = {0, 1, 0, 1, 2};
  tr.item = {0, 0, 1, 1, 2};
  Interactions te;
  te.user = {3};
  te.item = {1};
  const UserItems g = group_by_user(tr, 4), t = group_by_user(te, 4);
  const RankingMetrics m = evaluate_popularity(g, t, 3, {1, 2});
  EXPECT_EQ(m.users_evaluated, 1);
  EXPECT_EQ(m.users_skipped, 3);
  EXPECT_DOUBLE_EQ(m.hit_rate[0], 0.0);  // rank 1 is item 0
  EXPECT_DOUBLE_EQ(m.hit_rate[1], 1.0);  // rank 2 is item 1
  EXPECT_DOUBLE_EQ(m.mrr, 0.5);
  EXPECT_NEAR(m.ndcg[1], 1 / std::log2(3.0), 1e-12);
}

TEST(Split, PerUserRatioKeepsEveryRowOnceAndIsSeeded) {
  Interactions x;
  for (int u = 0; u < 50; ++u)
    for (int j = 0; j <= u % 9; ++j) {
      x.user.push_back(u);
      x.item.push_back(j * 7 + u);
    }
  const Split a = split_per_user_ratio(x, 50, 0.25, 42);
  const Split b = split_per_user_ratio(x, 50, 0.25, 42);
  const Split c = split_per_user_ratio(x, 50, 0.25, 43);
  EXPECT_EQ(a.train.size() + a.test.size(), x.size());
  EXPECT_EQ(a.test.item, b.test.item);
  EXPECT_NE(a.test.item, c.test.item);
  const UserItems tr = group_by_user(a.train, 50), te = group_by_user(a.test, 50);
  for (int u = 0; u < 50; ++u) {
    const int64_t n = tr.count(u) + te.count(u);
    EXPECT_EQ(te.count(u), n >= 2 ? std::min<int64_t>(std::llround(0.25 * n), n - 1) : 0) << u;
    EXPECT_GE(tr.count(u), 1);
  }
}

}  // namespace
}  // namespace towerrec
