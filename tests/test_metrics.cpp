// Ranking metrics on hand-computed examples, the popularity baseline, and
// group_by_user / split invariants.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <numeric>
#include <random>
#include <stdexcept>
#include <utility>
#include <vector>

#include "tests/test_util.h"
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

// -log sigmoid(x) and -log sigmoid(-x) written out for the hand computations.
double nls(double x) { return std::log(1 + std::exp(-x)); }
double nls_neg(double x) { return std::log(1 + std::exp(x)); }

TEST(SampledCase, RankAucAndLogLossWithTies) {
  // Positive item 2 scores 0.5. Negatives: item 1 ties at 0.5 (lower index:
  // ranked above), item 3 scores 0.7 (above), item 4 ties at 0.5 (higher index:
  // below), item 0 scores 0.1 (below).
  const float neg_scores[] = {0.5f, 0.7f, 0.5f, 0.1f};
  const int32_t neg_items[] = {1, 3, 4, 0};
  const SampledCase c = sampled_case(0.5f, 2, neg_scores, neg_items, 4);
  EXPECT_EQ(c.rank, 2);
  // AUC: a tie counts one half whatever the indices: (0.5 + 0 + 0.5 + 1) / 4.
  EXPECT_DOUBLE_EQ(c.auc, 2.0 / 4);
  EXPECT_NEAR(c.log_loss, nls(0.5) + nls_neg(0.5) + nls_neg(0.7) + nls_neg(0.5) + nls_neg(0.1), 1e-6);
  // Stable for large scores.
  const float big[] = {-200.0f};
  const int32_t one[] = {0};
  const SampledCase d = sampled_case(200.0f, 1, big, one, 1);
  EXPECT_EQ(d.rank, 0);
  EXPECT_DOUBLE_EQ(d.auc, 1.0);
  EXPECT_LT(d.log_loss, 1e-60);
  EXPECT_TRUE(std::isfinite(sampled_case(-200.0f, 1, big, one, 1).log_loss));
}

TEST(SampledNegatives, UnseenDistinctSortedAndSeeded) {
  std::vector<int32_t> seen;
  for (int32_t i = 0; i < 1000; i += 97) seen.push_back(i);
  for (const int32_t n_items : {1000, 60}) {  // rejection sampling, then the pool path
    std::vector<int32_t> s = seen;
    s.erase(std::remove_if(s.begin(), s.end(), [&](int32_t i) { return i >= n_items; }), s.end());
    const auto a = sample_eval_negatives(5, 0, n_items, s, 50, 42);
    ASSERT_EQ(a.size(), 50u) << n_items;
    EXPECT_TRUE(std::is_sorted(a.begin(), a.end()));
    EXPECT_EQ(std::adjacent_find(a.begin(), a.end()), a.end()) << "duplicate negative";
    for (int32_t i : a) {
      EXPECT_TRUE(i >= 0 && i < n_items);
      EXPECT_FALSE(std::binary_search(s.begin(), s.end(), i)) << "seen item " << i;
    }
    EXPECT_EQ(a, sample_eval_negatives(5, 0, n_items, s, 50, 42));
    EXPECT_NE(a, sample_eval_negatives(5, 0, n_items, s, 50, 43));
    EXPECT_NE(a, sample_eval_negatives(5, 1, n_items, s, 50, 42));
    EXPECT_NE(a, sample_eval_negatives(6, 0, n_items, s, 50, 42));
  }
  // Fewer unseen items than asked: all of them.
  EXPECT_EQ(sample_eval_negatives(0, 0, 5, {0, 2}, 10, 1), (std::vector<int32_t>{1, 3, 4}));
  EXPECT_TRUE(sample_eval_negatives(0, 0, 2, {0, 1}, 10, 1).empty());
}

TEST(SampledProtocol, HandComputedWithTies) {
  // d = 1: score(u, i) = U[u] * V[i]. Five items; the negatives are all unseen
  // items because fewer than 10 remain, so the draw does not matter.
  auto be = make_cpu_backend(1);
  const std::vector<float> U = {1.0f, -1.0f};
  const std::vector<float> V = {0.9f, 0.5f, 0.5f, 0.7f, 0.1f};
  const auto dU = testing::upload(*be, U), dV = testing::upload(*be, V);
  Interactions tr, te;
  tr.user = {0};
  tr.item = {0};
  te.user = {0, 1, 1};
  te.item = {2, 0, 4};
  const UserItems train = group_by_user(tr, 2), test = group_by_user(te, 2);
  const SampledMetrics m = evaluate_sampled(*be, dU, dV, 2, 5, 1, train, test, {1, 3}, 10, 7);
  // user 0, item 2 (0.5) vs 1 (0.5, tie, lower index), 3 (0.7), 4 (0.1): rank 2
  // user 1, item 0 (-0.9) vs 1 (-0.5), 2 (-0.5), 3 (-0.7): rank 3
  // user 1, item 4 (-0.1) vs the same: rank 0
  EXPECT_EQ(m.cases, 3);
  EXPECT_EQ(m.users_evaluated, 2);
  EXPECT_EQ(m.short_cases, 3);
  EXPECT_DOUBLE_EQ(m.hit_rate[0], 1.0 / 3);
  EXPECT_DOUBLE_EQ(m.hit_rate[1], 2.0 / 3);
  EXPECT_NEAR(m.ndcg[0], 1.0 / 3, 1e-12);
  EXPECT_NEAR(m.ndcg[1], (1 / std::log2(4.0) + 1) / 3, 1e-12);
  // AUC per case: (0 + 0.5 + 1) / 3, 0, 1.
  EXPECT_NEAR(m.auc, (0.5 + 0 + 1) / 3, 1e-12);
  const double loss = nls(0.5) + nls_neg(0.5) + nls_neg(0.7) + nls_neg(0.1) +  // user 0
                      nls(-0.9) + nls(-0.1) +                                 // user 1 positives
                      2 * (nls_neg(-0.5) + nls_neg(-0.5) + nls_neg(-0.7));    // its negatives twice
  EXPECT_NEAR(m.log_loss, loss / 12, 1e-6);
}

TEST(FullRanking, TiesGoToLowerItemIndex) {
  // Items 0..2 tie at 0.5, item 3 scores 0.2; item 0 is a training item.
  // Ranking: 1, 2, 3. The test item 2 is at rank 2.
  auto be = make_cpu_backend(1);
  const auto dU = testing::upload(*be, std::vector<float>{1.0f});
  const auto dV = testing::upload(*be, std::vector<float>{0.5f, 0.5f, 0.5f, 0.2f});
  Interactions tr, te;
  tr.user = {0};
  tr.item = {0};
  te.user = {0};
  te.item = {2};
  const RankingMetrics m =
      evaluate_ranking(*be, dU, dV, 1, 4, 1, group_by_user(tr, 1), group_by_user(te, 1), {1, 2});
  EXPECT_DOUBLE_EQ(m.hit_rate[0], 0.0);
  EXPECT_DOUBLE_EQ(m.hit_rate[1], 1.0);
  EXPECT_DOUBLE_EQ(m.precision[1], 0.5);
  EXPECT_NEAR(m.ndcg[1], 1 / std::log2(3.0), 1e-12);
  EXPECT_DOUBLE_EQ(m.map[1], 0.5);  // AP@2 = (1/2) / min(2, 1)
  EXPECT_DOUBLE_EQ(m.mrr, 0.5);
  EXPECT_DOUBLE_EQ(m.coverage, 2.0 / 4);  // items 1 and 2 recommended
}

// recommend_topk in blocks of several sizes (the host hands block b - 1 to the
// sink while block b is queued) against a float64 brute force. Integer-valued
// embeddings make every score exact, so items and scores must match exactly,
// ties going to the lower item index. User 3 has every item excluded.
TEST(RecommendTopk, BlocksMatchBruteForceOnEveryBackend) {
  std::mt19937_64 g(testing::test_seed());
  const int32_t n_users = 37, n_items = 53;
  const int d = 5, k = 7;
  std::uniform_int_distribution<int> val(-3, 3);
  std::vector<float> U(static_cast<size_t>(n_users) * d), V(static_cast<size_t>(n_items) * d);
  for (auto& x : U) x = static_cast<float>(val(g));
  for (auto& x : V) x = static_cast<float>(val(g));
  Interactions seen;
  for (int32_t u = 0; u < n_users; ++u)
    for (int32_t i = 0; i < n_items; ++i)
      if (u == 3 || g() % 4 == 0) {
        seen.user.push_back(u);
        seen.item.push_back(i);
      }
  const UserItems excl = group_by_user(seen, n_users);
  std::vector<int32_t> users(60);
  for (auto& u : users) u = static_cast<int32_t>(g() % n_users);
  users[7] = 3;
  // Brute force.
  auto want = [&](int32_t u, std::vector<int32_t>& items, std::vector<float>& scores) {
    std::vector<std::pair<double, int32_t>> c;
    for (int32_t i = 0; i < n_items; ++i) {
      if (std::binary_search(excl.items.begin() + excl.offsets[u],
                             excl.items.begin() + excl.offsets[u + 1], i))
        continue;
      double sc = 0;
      for (int c2 = 0; c2 < d; ++c2) sc += double{U[u * d + c2]} * V[i * d + c2];
      c.emplace_back(-sc, i);
    }
    std::sort(c.begin(), c.end());
    items.assign(k, -1);
    scores.assign(k, -std::numeric_limits<float>::infinity());
    for (int r = 0; r < k && r < static_cast<int>(c.size()); ++r) {
      items[r] = c[r].second;
      scores[r] = static_cast<float>(-c[r].first);
    }
  };
  for (auto& be : testing::every_backend()) {
    const auto dU = testing::upload(*be, U);
    const auto dV = testing::upload(*be, V);
    for (int64_t block : {int64_t{1}, int64_t{4}, int64_t{25}, int64_t{0}}) {
      SCOPED_TRACE(be->describe() + ", block " + std::to_string(block));
      size_t next = 0;
      recommend_topk(
          *be, dU, dV, n_users, n_items, d, users, k, &excl,
          [&](const TopKBlock& b) {
            ASSERT_EQ(b.k, k);
            ASSERT_EQ(b.items.size(), b.users.size() * k);
            ASSERT_EQ(b.scores.size(), b.users.size() * k);
            std::vector<int32_t> wi;
            std::vector<float> ws;
            for (size_t r = 0; r < b.users.size(); ++r, ++next) {
              ASSERT_LT(next, users.size());
              ASSERT_EQ(b.users[r], users[next]);
              want(b.users[r], wi, ws);
              for (int j = 0; j < k; ++j) {
                EXPECT_EQ(b.items[r * k + j], wi[j]) << "user " << b.users[r] << " rank " << j;
                EXPECT_EQ(b.scores[r * k + j], ws[j]) << "user " << b.users[r] << " rank " << j;
              }
            }
          },
          block);
      EXPECT_EQ(next, users.size());
    }
    // A sink that throws stops the run cleanly (queued copies are waited for).
    int calls = 0;
    EXPECT_THROW(recommend_topk(
                     *be, dU, dV, n_users, n_items, d, users, k, &excl,
                     [&](const TopKBlock&) {
                       if (++calls == 2) throw std::runtime_error("sink failed");
                     },
                     5),
                 std::runtime_error);
    EXPECT_EQ(calls, 2);
  }
}

// Users per topk call by default: the CPU backend keeps 64 Mi / n_items
// within [1, 4096]; a CUDA device asks for thousands whatever the catalogue.
TEST(RecommendTopk, PreferredUsersPerCall) {
  auto cpu = make_cpu_backend(1);
  const std::pair<int32_t, int64_t> cases[] = {{1, 4096},    {1000, 4096},     {16384, 4096},
                                               {16385, 4095}, {1 << 20, 64},   {10000000, 6},
                                               {std::numeric_limits<int32_t>::max(), 1}};
  for (const auto& [n_items, users] : cases)
    for (int k : {1, 100, 1000})
      EXPECT_EQ(cpu->preferred_topk_users(n_items, 64, k), users) << n_items << " items, k=" << k;
  if (!cuda_available()) return;
  auto gpu = make_cuda_backend(0);
  for (int32_t n_items : {1000, 1 << 20, 10000000}) {
    const int64_t users = gpu->preferred_topk_users(n_items, 64, 100);
    EXPECT_GE(users, 4096) << n_items << " items";
    EXPECT_EQ(users % 512, 0) << "whole GEMM-path user tiles";
  }
  // The call's buffers stay within 256 MiB at the largest k.
  const int64_t big_k = gpu->preferred_topk_users(1 << 20, 64, 1024);
  EXPECT_GE(big_k, 1);
  EXPECT_LE(big_k * 2 * (16 * 1024 + 4 * 64 + 24), int64_t{256} << 20);
}

// Blocks of 3 users, the backend's preferred block and one block of all users
// give bit-identical results on random float embeddings.
TEST(RecommendTopk, SmallBlocksEqualOneBigBlock) {
  std::mt19937_64 g(testing::test_seed());
  const int32_t n_users = 300, n_items = 700;
  const int d = 9, k = 12;
  const auto U = testing::random_floats(g, static_cast<size_t>(n_users) * d);
  const auto V = testing::random_floats(g, static_cast<size_t>(n_items) * d);
  Interactions seen;
  for (int32_t u = 0; u < n_users; ++u)
    for (int j = 0; j < 5; ++j) {
      seen.user.push_back(u);
      seen.item.push_back(static_cast<int32_t>(g() % n_items));
    }
  const UserItems excl = group_by_user(seen, n_users);
  for (auto& be : testing::every_backend()) {
    const auto dU = testing::upload(*be, U);
    const auto dV = testing::upload(*be, V);
    auto run = [&](int64_t block) {
      TopKBlock all;
      int64_t calls = 0;
      recommend_topk(
          *be, dU, dV, n_users, n_items, d, {}, k, &excl,
          [&](const TopKBlock& b) {
            ++calls;
            all.users.insert(all.users.end(), b.users.begin(), b.users.end());
            all.items.insert(all.items.end(), b.items.begin(), b.items.end());
            all.scores.insert(all.scores.end(), b.scores.begin(), b.scores.end());
          },
          block);
      EXPECT_EQ(calls, block > 0 ? (n_users + block - 1) / block : calls);
      return all;
    };
    SCOPED_TRACE(be->describe());
    const TopKBlock one = run(n_users), small = run(3), preferred = run(0);
    ASSERT_EQ(one.users.size(), static_cast<size_t>(n_users));
    for (int32_t u = 0; u < n_users; ++u) ASSERT_EQ(one.users[u], u);
    for (float s : one.scores) ASSERT_TRUE(std::isfinite(s));
    for (const TopKBlock* b : {&small, &preferred}) {
      EXPECT_EQ(b->users, one.users);
      EXPECT_EQ(b->items, one.items);
      EXPECT_TRUE(testing::bit_identical(b->scores, one.scores));
    }
  }
}

}  // namespace
}  // namespace towerrec
