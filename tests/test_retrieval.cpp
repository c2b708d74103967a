// Filtered ranking (rank_topk): allow lists, deny lists, feature conditions,
// per-query exclusions and the query itself left out, against a brute force
// (score every item in float64, filter, sort) on every backend. Integer-valued
// embeddings make every score exact, so items and scores must match exactly,
// ties going to the lower item index. Both ways the candidates reach the
// top-K op (per-query exclusions, gathered sub-matrix) and several block
// sizes are exercised.
#include <gtest/gtest.h>

#include <algorithm>
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
