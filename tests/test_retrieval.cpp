// Filtered ranking (rank_topk): allow lists, deny lists, feature conditions,
// per-query exclusions and the query itself left out, against a brute force
// (score every item in float64, filter, sort) on every backend. Integer-valued
// embeddings make every score exact, so items and scores must match exactly,
// ties going to the lower item index. Both ways the candidates reach the
// top-K op (per-query exclusions, gathered sub-matrix) and several block
// sizes are exercised.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "tests/backend_fixture.h"
#include "tests/test_util.h"
#include "towerrec/error.h"
#include "towerrec/recommend.h"

namespace towerrec {
namespace {

using testing::OpsTest;

struct Problem {
  int32_t n_queries = 0, n_items = 0;
  int d = 0;
  std::vector<float> Q, V;
};

Problem make_problem(std::mt19937_64& g, int32_t n_queries, int32_t n_items, int d) {
  Problem p{n_queries, n_items, d, {}, {}};
  std::uniform_int_distribution<int> val(-3, 3);  // small integers: exact scores, many ties
  p.Q.resize(static_cast<size_t>(n_queries) * d);
  p.V.resize(static_cast<size_t>(n_items) * d);
  for (auto& x : p.Q) x = static_cast<float>(val(g));
  for (auto& x : p.V) x = static_cast<float>(val(g));
  return p;
}

// Score all, drop what the filter forbids, sort (score desc, item asc), take k.
void brute_force(const Problem& p, const RankFilter& f, int32_t q, int k, std::vector<int32_t>& items,
                 std::vector<float>& scores) {
  std::vector<std::pair<double, int32_t>> c;
  for (int32_t i = 0; i < p.n_items; ++i) {
    if (f.restrict && !std::binary_search(f.candidates.begin(), f.candidates.end(), i)) continue;
    if (f.exclude_self && i == q) continue;
    if (f.exclude && std::binary_search(f.exclude->items.begin() + f.exclude->offsets[q],
                                        f.exclude->items.begin() + f.exclude->offsets[q + 1], i))
      continue;
    double s = 0;
    for (int c2 = 0; c2 < p.d; ++c2)
      s += double{p.Q[static_cast<size_t>(q) * p.d + c2]} * p.V[static_cast<size_t>(i) * p.d + c2];
    c.emplace_back(-s, i);
  }
  std::sort(c.begin(), c.end());
  items.assign(static_cast<size_t>(k), -1);
  scores.assign(static_cast<size_t>(k), -std::numeric_limits<float>::infinity());
  for (int r = 0; r < k && r < static_cast<int>(c.size()); ++r) {
    items[r] = c[r].second;
    scores[r] = static_cast<float>(-c[r].first);
  }
}

class RankTopk : public OpsTest {
 protected:
  // rank_topk against the brute force for `queries`, each block size, and
  // both ways of handing the candidates over.
  void check(const Problem& p, RankFilter f, const std::vector<int32_t>& queries, int k) {
    const auto dQ = testing::upload(be(), p.Q);
    const auto dV = testing::upload(be(), p.V);
    for (int64_t at_most : {int64_t{0}, int64_t{1} << 40}) {
      f.exclude_at_most = at_most;
      for (int64_t block : {int64_t{1}, int64_t{7}, int64_t{0}}) {
        SCOPED_TRACE("exclude_at_most " + std::to_string(at_most) + ", block " + std::to_string(block));
        std::vector<int32_t> expect_q = queries;
        if (expect_q.empty()) {
          expect_q.resize(static_cast<size_t>(p.n_queries));
          std::iota(expect_q.begin(), expect_q.end(), 0);
        }
        size_t next = 0;
        std::vector<int32_t> wi;
        std::vector<float> ws;
        rank_topk(be(), dQ, p.n_queries, dV, p.n_items, p.d, queries, k, f,
                  [&](const TopKBlock& b) {
                    ASSERT_EQ(b.k, k);
                    ASSERT_EQ(b.items.size(), b.users.size() * k);
                    for (size_t r = 0; r < b.users.size(); ++r, ++next) {
                      ASSERT_LT(next, expect_q.size());
                      ASSERT_EQ(b.users[r], expect_q[next]);
                      brute_force(p, f, b.users[r], k, wi, ws);
                      for (int j = 0; j < k; ++j) {
                        EXPECT_EQ(b.items[r * k + j], wi[j]) << "query " << b.users[r] << " rank " << j;
                        EXPECT_EQ(b.scores[r * k + j], ws[j]) << "query " << b.users[r] << " rank " << j;
                      }
                    }
                  },
                  block);
        EXPECT_EQ(next, expect_q.size());
      }
    }
  }
  std::vector<int32_t> random_subset(int32_t n, double fraction) {
    std::vector<int32_t> out;
    std::bernoulli_distribution take(fraction);
    for (int32_t i = 0; i < n; ++i)
      if (take(rng_)) out.push_back(i);
    return out;
  }
};

TEST_P(RankTopk, AllowListsSmallAndLargeMatchBruteForce) {
  TRACE_SEED();
  const Problem p = make_problem(rng_, 29, 61, 5);
  for (double frac : {0.05, 0.5, 0.97}) {
    SCOPED_TRACE("allow fraction " + std::to_string(frac));
    RankFilter f;
    f.restrict = true;
    f.candidates = candidate_items(p.n_items, true, random_subset(p.n_items, frac), {}, {});
    check(p, f, {}, 6);
  }
}

TEST_P(RankTopk, DenyListsFeatureMasksAndSeenItemsTogether) {
  TRACE_SEED();
  const Problem p = make_problem(rng_, 23, 57, 4);
  Interactions seen;
  for (int32_t u = 0; u < p.n_queries; ++u)
    for (int32_t i = 0; i < p.n_items; ++i)
      if (u == 2 || rng_() % 5 == 0) {  // user 2 has seen everything
        seen.user.push_back(u);
        seen.item.push_back(i);
      }
  const UserItems excl = group_by_user(seen, p.n_queries);
  std::vector<char> mask(static_cast<size_t>(p.n_items));
  for (auto& m : mask) m = rng_() % 3 != 0;
  const std::vector<int32_t> queries = {5, 2, 0, 22, 5, 11, 3, 9, 17};
  for (double deny_frac : {0.02, 0.6}) {
    SCOPED_TRACE("deny fraction " + std::to_string(deny_frac));
    RankFilter f;
    f.restrict = true;
    f.candidates = candidate_items(p.n_items, false, {}, random_subset(p.n_items, deny_frac), mask);
    f.exclude = &excl;
    check(p, f, queries, 8);
    // k larger than what is left: the tail is padding.
    check(p, f, queries, 50);
  }
}

TEST_P(RankTopk, SimilarItemsLeaveTheQueryOutAndRespectTheAllowList) {
  TRACE_SEED();
  Problem p = make_problem(rng_, 41, 41, 6);
  p.Q = p.V;  // items against items
  RankFilter f;
  f.exclude_self = true;
  check(p, f, {}, 5);
  // Only some items may be returned; queries outside the allow list still rank.
  f.restrict = true;
  f.candidates = candidate_items(p.n_items, true, random_subset(p.n_items, 0.3), {}, {});
  check(p, f, {0, 1, 2, 40, 13}, 4);
}

TEST_P(RankTopk, NoCandidateLeftGivesPaddingOnly) {
  const Problem p = make_problem(rng_, 5, 9, 3);
  RankFilter f;
  f.restrict = true;
  const auto dQ = testing::upload(be(), p.Q);
  const auto dV = testing::upload(be(), p.V);
  int64_t rows = 0;
  rank_topk(be(), dQ, p.n_queries, dV, p.n_items, p.d, {}, 3, f, [&](const TopKBlock& b) {
    for (int32_t it : b.items) EXPECT_EQ(it, -1);
    rows += static_cast<int64_t>(b.users.size());
  });
  EXPECT_EQ(rows, 5);
}

TEST_P(RankTopk, NumericAndCategoricalConditionsMatchBruteForce) {
  TRACE_SEED();
  const Problem p = make_problem(rng_, 19, 73, 4);
  // Item feature "year" (raw 1950..2020) and "kind" (a or b).
  std::vector<double> year(static_cast<size_t>(p.n_items));
  for (auto& y : year) y = 1950 + static_cast<double>(rng_() % 71);
  double lo = 1e9, hi = -1e9;
  for (double y : year) lo = std::min(lo, y), hi = std::max(hi, y);
  EntityFeatures f;
  f.n_entities = p.n_items;
  f.dense_names = {"year"};
  f.dense_min = {static_cast<float>(lo)};
  f.dense_max = {static_cast<float>(hi)};
  for (double y : year) f.dense.push_back(static_cast<float>((y - lo) / (hi - lo)));
  CategoricalField kind;
  kind.name = "kind";
  const int32_t a = kind.vocab.add("a"), b = kind.vocab.add("b");
  kind.offsets.push_back(0);
  for (int32_t i = 0; i < p.n_items; ++i) {
    kind.values.push_back(i % 3 == 0 ? b : a);
    kind.offsets.push_back(static_cast<int32_t>(kind.values.size()));
  }
  f.categorical = {kind};
  using Op = FeatureCondition::Op;
  const std::vector<FeatureCondition> where = {{"year", "1980", Op::kGe}, {"year", "2000", Op::kLt}, {"kind", "b", Op::kNe}};
  const std::vector<char> mask = match_features(f, p.n_items, where, "item");
  for (int32_t i = 0; i < p.n_items; ++i) {
    const double y = year[static_cast<size_t>(i)];
    EXPECT_EQ(mask[static_cast<size_t>(i)] != 0, y >= 1980 && y < 2000 && i % 3 != 0) << "item " << i;
  }
  RankFilter rf;
  rf.restrict = true;
  rf.candidates = candidate_items(p.n_items, false, {}, {}, mask);
  check(p, rf, {}, 5);
}

// Item shards (recommend --shard items): each shard ranked alone through
// shard_filter, then merge_topk, gives exactly the lists of one rank_topk over
// every item, whatever the shard count (one shard with fewer items than k,
// empty shards when there are more shards than items).
TEST_P(RankTopk, ItemShardsMergeToTheFullRanking) {
  TRACE_SEED();
  const Problem p = make_problem(rng_, 19, 23, 3);  // small integers: many ties across shards
  Interactions seen;
  for (int32_t u = 0; u < p.n_queries; ++u)
    for (int32_t i = 0; i < p.n_items; ++i)
      if (u == 4 || rng_() % 4 == 0) {
        seen.user.push_back(u);
        seen.item.push_back(i);
      }
  const UserItems excl = group_by_user(seen, p.n_queries);
  const auto dQ = testing::upload(be(), p.Q);
  const auto dV = testing::upload(be(), p.V);
  auto run = [&](const DeviceArray<float>& V, int32_t n_items, const RankFilter& f,
                 const std::vector<int32_t>& queries, int k, std::vector<ScoredItem>& out, int32_t offset) {
    rank_topk(be(), dQ, p.n_queries, V, n_items, p.d, queries, k, f,
              [&](const TopKBlock& b) {
                for (size_t j = 0; j < b.items.size(); ++j)
                  out.push_back({b.scores[j], b.items[j] < 0 ? -1 : b.items[j] + offset});
              },
              4);
  };
  const std::vector<int32_t> queries = {3, 0, 4, 18, 3, 7};
  for (int variant = 0; variant < 4; ++variant) {
    RankFilter f;
    if (variant >= 1) f.exclude = &excl;
    if (variant >= 2) {
      f.restrict = true;
      f.candidates = candidate_items(p.n_items, false, {}, random_subset(p.n_items, 0.3), {});
    }
    if (variant == 3) f.exclude_self = true;
    for (int k : {1, 5, 30}) {
      std::vector<ScoredItem> full;
      run(dV, p.n_items, f, queries, k, full, 0);
      for (int ranks : {1, 2, 3, 5, 30}) {
        SCOPED_TRACE("variant " + std::to_string(variant) + ", k " + std::to_string(k) + ", " +
                     std::to_string(ranks) + " shards");
        std::vector<ScoredItem> lists;
        int32_t covered = 0;
        for (int r = 0; r < ranks; ++r) {
          const ItemShard sh = item_shard(p.n_items, r, ranks);
          ASSERT_EQ(sh.first, covered);
          covered = sh.last;
          if (sh.size() == 0) {
            lists.insert(lists.end(), queries.size() * static_cast<size_t>(k),
                         ScoredItem{-std::numeric_limits<float>::infinity(), -1});
            continue;
          }
          const std::vector<float> rows(p.V.begin() + static_cast<std::ptrdiff_t>(sh.first) * p.d,
                                        p.V.begin() + static_cast<std::ptrdiff_t>(sh.last) * p.d);
          const auto dVs = testing::upload(be(), rows);
          UserItems storage;
          const RankFilter local = shard_filter(f, sh, p.n_queries, queries, storage);
          run(dVs, sh.size(), local, queries, k, lists, sh.first);
        }
        ASSERT_EQ(covered, p.n_items);
        const auto n = static_cast<int64_t>(queries.size());
        std::vector<int32_t> items(queries.size() * static_cast<size_t>(k));
        std::vector<float> scores(items.size());
        merge_topk(lists.data(), ranks, n, k, items.data(), scores.data());
        ASSERT_EQ(full.size(), items.size());
        for (size_t j = 0; j < items.size(); ++j) {
          EXPECT_EQ(items[j], full[j].item) << "entry " << j;
          EXPECT_EQ(scores[j], full[j].score) << "entry " << j;
        }
      }
    }
  }
}

TOWERREC_INSTANTIATE_BACKENDS(RankTopk);

TEST(CandidateItems, AllowMinusDenyAndMask) {
  EXPECT_EQ(candidate_items(6, true, {4, 1, 1, 3}, {3}, {}), (std::vector<int32_t>{1, 4}));
  EXPECT_EQ(candidate_items(5, false, {}, {0, 4}, {1, 1, 0, 1, 1}), (std::vector<int32_t>{1, 3}));
  EXPECT_TRUE(candidate_items(3, true, {}, {}, {}).empty());
}

EntityFeatures genre_features() {
  // Items 0..3: genres (multi-hot) {Comedy}, {Drama, Comedy}, {}, {Drama};
  // country (one-hot) US, FR, US, US; one dense column.
  EntityFeatures f;
  f.n_entities = 4;
  f.dense_names = {"year"};
  f.dense = {0, 0.5f, 1, 0.2f};  // raw 1990, 2000, 2010, 1994
  f.dense_min = {1990};
  f.dense_max = {2010};
  CategoricalField g;
  g.name = "genres";
  const int32_t comedy = g.vocab.add("Comedy"), drama = g.vocab.add("Drama");
  g.offsets = {0, 1, 3, 3, 4};
  g.values = {comedy, drama, comedy, drama};
  CategoricalField c;
  c.name = "country";
  const int32_t us = c.vocab.add("US"), fr = c.vocab.add("FR");
  c.offsets = {0, 1, 2, 3, 4};
  c.values = {us, fr, us, us};
  f.categorical = {g, c};
  return f;
}

TEST(MatchFeatures, ConditionsAreAndedAndMultiHotNeedsOneValue) {
  const EntityFeatures f = genre_features();
  EXPECT_EQ(match_features(f, 4, {}, "item"), (std::vector<char>{1, 1, 1, 1}));
  EXPECT_EQ(match_features(f, 4, {{"genres", "Comedy"}}, "item"), (std::vector<char>{1, 1, 0, 0}));
  EXPECT_EQ(match_features(f, 4, {{"genres", "Drama"}, {"country", "US"}}, "item"),
            (std::vector<char>{0, 0, 0, 1}));
}

TEST(MatchFeatures, UnknownColumnsAndValuesAreNamed) {
  const EntityFeatures f = genre_features();
  auto message = [&](const FeatureCondition& c) {
    try {
      match_features(f, 4, {c}, "item");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  const std::string col = message({"genre", "Comedy"});
  EXPECT_NE(col.find("no item feature column 'genre'"), std::string::npos) << col;
  EXPECT_NE(col.find("genres, country"), std::string::npos) << col;
  EXPECT_NE(col.find("numeric: year"), std::string::npos) << col;
  using Op = FeatureCondition::Op;
  const std::string nan = message({"year", "recent", Op::kGe});
  EXPECT_NE(nan.find("--where year>=recent: 'recent' is not a number"), std::string::npos) << nan;
  EXPECT_NE(message({"year", "1e999", Op::kLt}).find("not a number"), std::string::npos);
  const std::string cat = message({"genres", "Comedy", Op::kLt});
  EXPECT_NE(cat.find("'genres' is a categorical item feature"), std::string::npos) << cat;
  const std::string val = message({"genres", "Horror"});
  EXPECT_NE(val.find("'Horror'"), std::string::npos) << val;
  EXPECT_NE(val.find("Comedy, Drama"), std::string::npos) << val;
}

TEST(MatchFeatures, NotEqualOnACategoricalColumn) {
  const EntityFeatures f = genre_features();
  using Op = FeatureCondition::Op;
  EXPECT_EQ(match_features(f, 4, {{"genres", "Comedy", Op::kNe}}, "item"), (std::vector<char>{0, 0, 1, 1}));
  EXPECT_EQ(match_features(f, 4, {{"genres", "Drama", Op::kNe}, {"country", "FR", Op::kNe}}, "item"),
            (std::vector<char>{1, 0, 1, 0}));
}

TEST(MatchFeatures, NumericComparisonsUseTheRawValues) {
  const EntityFeatures f = genre_features();  // year 1990, 2000, 2010, 1994
  using Op = FeatureCondition::Op;
  auto m = [&](Op op, const char* x) { return match_features(f, 4, {{"year", x, op}}, "item"); };
  EXPECT_EQ(m(Op::kGe, "2000"), (std::vector<char>{0, 1, 1, 0}));
  EXPECT_EQ(m(Op::kGt, "2000"), (std::vector<char>{0, 0, 1, 0}));
  EXPECT_EQ(m(Op::kLe, "1994"), (std::vector<char>{1, 0, 0, 1}));
  EXPECT_EQ(m(Op::kLt, "1994"), (std::vector<char>{1, 0, 0, 0}));
  EXPECT_EQ(m(Op::kEq, "2010"), (std::vector<char>{0, 0, 1, 0}));
  EXPECT_EQ(m(Op::kNe, "2010"), (std::vector<char>{1, 1, 0, 1}));
  EXPECT_EQ(m(Op::kEq, "2e3"), (std::vector<char>{0, 1, 0, 0}));
  EXPECT_EQ(m(Op::kGt, "1e9"), (std::vector<char>{0, 0, 0, 0}));
  // With a categorical condition: all must hold.
  EXPECT_EQ(match_features(f, 4, {{"year", "1992", Op::kGe}, {"genres", "Drama"}}, "item"),
            (std::vector<char>{0, 1, 0, 1}));
}

// Raw decimal values scaled as the feature reader scales them (double min-max
// to [0, 1], stored as float, min and max as float): every comparison with a
// threshold equal to one of the values, between two, or outside them all must
// give what the raw values give (from cents to large values with a large minimum).
TEST(MatchFeatures, NumericComparisonsMatchABruteForceOnRawValues) {
  std::mt19937_64 g(11);
  using Op = FeatureCondition::Op;
  for (const double scale : {0.01, 1.0, 1000.0}) {
    const int32_t n = 300;
    std::vector<double> raw(static_cast<size_t>(n));
    std::uniform_int_distribution<int> cents(-5000, 20000);
    for (auto& x : raw) x = cents(g) * scale + (scale == 1000.0 ? 1e7 : 0.0);  // offset: a large min
    double lo = raw[0], hi = raw[0];
    for (double x : raw) lo = std::min(lo, x), hi = std::max(hi, x);
    EntityFeatures f;
    f.n_entities = n;
    f.dense_names = {"other", "price"};
    f.dense_min = {0, static_cast<float>(lo)};
    f.dense_max = {1, static_cast<float>(hi)};
    f.dense.assign(static_cast<size_t>(n) * 2, 0.5f);
    for (int32_t e = 0; e < n; ++e)
      f.dense[static_cast<size_t>(e) * 2 + 1] = static_cast<float>((raw[static_cast<size_t>(e)] - lo) / (hi - lo));
    // Values are multiples of `scale` apart, far more than the recovery's
    // tolerance: thresholds below, above, between two values and at values.
    std::vector<double> thresholds = {lo - scale, hi + scale};
    for (int j = 0; j < 20; ++j) {
      thresholds.push_back(raw[static_cast<size_t>(g() % n)]);
      thresholds.push_back(raw[static_cast<size_t>(g() % n)] + scale / 2);
    }
    for (const double x : thresholds) {
      char text[64];
      std::snprintf(text, sizeof text, "%.17g", x);
      for (const Op op : {Op::kEq, Op::kNe, Op::kLt, Op::kLe, Op::kGt, Op::kGe}) {
        SCOPED_TRACE(std::string("price") + op_text(op) + text + ", scale " + std::to_string(scale));
        const std::vector<char> got = match_features(f, n, {{"price", text, op}}, "item");
        for (int32_t e = 0; e < n; ++e) {
          const double r = raw[static_cast<size_t>(e)];
          const bool want = op == Op::kEq ? r == x : op == Op::kNe ? r != x : op == Op::kLt ? r < x
                            : op == Op::kLe ? r <= x : op == Op::kGt ? r > x : r >= x;
          ASSERT_EQ(got[static_cast<size_t>(e)] != 0, want) << "raw " << r;
        }
      }
    }
  }
}

TEST(MatchFeatures, ParsesComparisons) {
  using Op = FeatureCondition::Op;
  const struct {
    const char* text;
    const char* column;
    Op op;
    const char* value;
  } cases[] = {{"year>=1990", "year", Op::kGe, "1990"}, {" year <= 2000 ", "year", Op::kLe, "2000"},
               {"year>1990", "year", Op::kGt, "1990"},  {"year<1990", "year", Op::kLt, "1990"},
               {"year!=1990", "year", Op::kNe, "1990"}, {"genres!=Drama", "genres", Op::kNe, "Drama"},
               {"price=-1.5", "price", Op::kEq, "-1.5"}, {"title=a<b", "title", Op::kEq, "a<b"}};
  for (const auto& c : cases) {
    const FeatureCondition f = parse_feature_condition(c.text, "--where");
    EXPECT_EQ(f.column, c.column) << c.text;
    EXPECT_EQ(f.op, c.op) << c.text;
    EXPECT_EQ(f.value, c.value) << c.text;
  }
  EXPECT_THROW(parse_feature_condition("year!1990", "--where"), Error);
  EXPECT_THROW(parse_feature_condition(">=1990", "--where"), Error);
}

TEST(MatchFeatures, ParsesColumnEqualsValue) {
  const FeatureCondition c = parse_feature_condition(" genres = Film-Noir", "--where");
  EXPECT_EQ(c.column, "genres");
  EXPECT_EQ(c.value, "Film-Noir");
  EXPECT_EQ(parse_feature_condition("a=b=c", "--where").value, "b=c");
  EXPECT_THROW(parse_feature_condition("genres", "--where"), Error);
  EXPECT_THROW(parse_feature_condition("=Comedy", "--where"), Error);
}

}  // namespace
}  // namespace towerrec

namespace towerrec {
namespace {

TEST(MergeTopk, TiesAcrossShardsGoToTheLowerItemAndShortListsPad) {
  const float inf = std::numeric_limits<float>::infinity();
  // Two queries, k 4, three shards (items 0-3, 4-7, 8-9).
  const std::vector<ScoredItem> lists = {
      // shard 0: query 0, query 1
      {5, 2}, {3, 0}, {3, 1}, {-inf, -1},
      {1, 3}, {-inf, -1}, {-inf, -1}, {-inf, -1},
      // shard 1
      {5, 6}, {3, 4}, {-2, 5}, {-inf, -1},
      {-inf, -1}, {-inf, -1}, {-inf, -1}, {-inf, -1},
      // shard 2
      {7, 9}, {5, 8}, {-inf, -1}, {-inf, -1},
      {-0.0f, 8}, {-inf, -1}, {-inf, -1}, {-inf, -1},
  };
  std::vector<int32_t> items(8);
  std::vector<float> scores(8);
  merge_topk(lists.data(), 3, 2, 4, items.data(), scores.data());
  // Query 0: 7 (item 9), then three 5s by item (2, 6, 8); the 3s miss the cut.
  EXPECT_EQ(items, (std::vector<int32_t>{9, 2, 6, 8, 3, 8, -1, -1}));
  EXPECT_EQ(scores[0], 7.0f);
  EXPECT_EQ(scores[3], 5.0f);
  // Query 1: fewer than k in all (2): the tail is padding; -0 reported as +0.
  EXPECT_EQ(scores[4], 1.0f);
  EXPECT_EQ(scores[5], 0.0f);
  EXPECT_FALSE(std::signbit(scores[5]));
  EXPECT_EQ(scores[6], -inf);
  EXPECT_EQ(scores[7], -inf);
  for (float s : scores) EXPECT_FALSE(std::isnan(s));
}

TEST(MergeTopk, OneShardPassesThroughAndNothingLeftIsAllPadding) {
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<ScoredItem> one = {{2, 1}, {2, 3}, {-inf, 7}};
  std::vector<int32_t> items(3);
  std::vector<float> scores(3);
  merge_topk(one.data(), 1, 1, 3, items.data(), scores.data());
  EXPECT_EQ(items, (std::vector<int32_t>{1, 3, 7}));  // a real item scored -inf still ranks
  EXPECT_EQ(scores[2], -inf);
  const std::vector<ScoredItem> none(6, ScoredItem{-inf, -1});
  merge_topk(none.data(), 2, 1, 3, items.data(), scores.data());
  EXPECT_EQ(items, (std::vector<int32_t>{-1, -1, -1}));
}

TEST(ItemShard, ContiguousRangesCoverTheCatalogue) {
  for (int ranks : {1, 2, 3, 7}) {
    int32_t at = 0;
    for (int r = 0; r < ranks; ++r) {
      const ItemShard s = item_shard(5, r, ranks);
      EXPECT_EQ(s.first, at);
      EXPECT_LE(s.size(), (5 + ranks - 1) / ranks);
      at = s.last;
    }
    EXPECT_EQ(at, 5);
  }
}

TEST(ShardFilter, MapsCandidatesAndExclusionsIntoTheShard) {
  Interactions x;
  x.user = {0, 0, 0, 1, 2};
  x.item = {1, 4, 6, 5, 2};
  const UserItems ex = group_by_user(x, 3);
  RankFilter f;
  f.restrict = true;
  f.candidates = {0, 3, 4, 5, 8};
  f.exclude = &ex;
  f.exclude_self = true;
  UserItems st;
  const RankFilter l = shard_filter(f, {3, 6}, 3, {0, 2}, st);  // items 3, 4, 5
  EXPECT_TRUE(l.restrict);
  EXPECT_EQ(l.candidates, (std::vector<int32_t>{0, 1, 2}));
  EXPECT_FALSE(l.exclude_self);
  ASSERT_EQ(l.exclude, &st);
  ASSERT_EQ(st.n_users(), 3);
  EXPECT_EQ(std::vector<int32_t>(st.items.begin() + st.offsets[0], st.items.begin() + st.offsets[1]),
            (std::vector<int32_t>{1}));  // item 4 (item 0 itself is outside the shard)
  EXPECT_EQ(st.count(1), 0);            // not queried
  EXPECT_EQ(st.count(2), 0);            // its item 2 and itself lie outside
  UserItems st2;
  const RankFilter none = shard_filter(f, {9, 9}, 3, {}, st2);
  EXPECT_TRUE(none.restrict);
  EXPECT_TRUE(none.candidates.empty());
}

}  // namespace
}  // namespace towerrec
