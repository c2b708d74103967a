// All-users top-K recommendation and full-ranking evaluation, on any backend.
// Users are processed in blocks so memory stays bounded by block x items
// whatever the user count; the backend's topk op does the selection.
// Tie order everywhere: higher score first, then lower item index.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "towerrec/backend.h"
#include "towerrec/data.h"
#include "towerrec/model.h"

namespace towerrec {

// Sorted, de-duplicated items of each user (CSR).
struct UserItems {
  std::vector<int64_t> offsets;  // [n_users + 1]
  std::vector<int32_t> items;
  int32_t n_users() const { return static_cast<int32_t>(offsets.size()) - 1; }
  int64_t count(int32_t u) const { return offsets[u + 1] - offsets[u]; }
};
UserItems group_by_user(const Interactions& x, int32_t n_users);

// Cold-start masks from training interactions: users with none, items no user has.
std::vector<char> cold_users(const UserItems& train);
std::vector<char> cold_items(const UserItems& train, int32_t n_items);
// The rows of `x` for users whose mask value equals `keep` (other users empty).
UserItems select_users(const UserItems& x, const std::vector<char>& mask, char keep);

// One block of results: users[b] got items[b*k .. b*k+k) (item -1 = none left).
struct TopKBlock {
  int k = 0;
  std::vector<int32_t> users;
  std::vector<int32_t> items;
  std::vector<float> scores;
};

// Top-k items for `users` (all users when empty) from precomputed embeddings
// U_all [n_users x d], V_all [n_items x d] in backend memory, excluding each
// user's `exclude` items when given. `sink` receives blocks in user order.
// The backend's topk runs under topk_policy_with_env(policy) (options.h).
void recommend_topk(Backend& be, const DeviceArray<float>& U_all, const DeviceArray<float>& V_all,
                    int32_t n_users, int32_t n_items, int d, const std::vector<int32_t>& users,
                    int k, const UserItems* exclude,
                    const std::function<void(const TopKBlock&)>& sink, int64_t block_users = 0,
                    const TopkPolicy& policy = {});

// ---- Filtered ranking: allow/deny lists, feature conditions, similar items ----

// What a ranking may return. Candidates are every item, or `candidates` when
// `restrict` is set (the items an allow list, a deny list and feature
// conditions leave; see candidate_items). On top of that, each query leaves
// out its own `exclude` items (indexed by the query's dense index, e.g. a
// user's seen items) and, with `exclude_self`, the item with its own index
// (similar items or users: the query itself).
struct RankFilter {
  bool restrict = false;
  std::vector<int32_t> candidates;     // sorted, distinct dense item indices
  const UserItems* exclude = nullptr;  // per query, or null
  bool exclude_self = false;
  // How the candidates reach the top-K op: when at most this many items are
  // left out, every query excludes them (a short list per query, nothing
  // copied); when more are, the candidates' rows are gathered into a
  // sub-matrix that the op ranks instead (a small allow list scores only its
  // items; a long deny list costs no per-query lists). Both give the same
  // ranking (the sub-matrix keeps item order, so ties still go to the lower
  // item index). Tests set it to exercise each way.
  int64_t exclude_at_most = 256;
};

// The top-k allowed items for each of `queries` (dense indices into Q_all
// [n_queries x d]; all of them when empty) among V_all [n_items x d], the
// k best candidates by score (filtered inside the selection, not after it),
// higher first, ties by the lower item index, -1 padded where fewer remain.
// Streams blocks to `sink` in query order, as recommend_topk does. For similar
// items pass V_all as Q_all and set exclude_self.
void rank_topk(Backend& be, const DeviceArray<float>& Q_all, int32_t n_queries,
               const DeviceArray<float>& V_all, int32_t n_items, int d,
               const std::vector<int32_t>& queries, int k, const RankFilter& filter,
               const std::function<void(const TopKBlock&)>& sink, int64_t block_users = 0,
               const TopkPolicy& policy = {});

// ---- Item-sharded ranking: each rank ranks its slice of the catalogue ----
//
// With the catalogue split over N ranks, rank r holds the contiguous items
// [first, last) = [n_items * r / N, n_items * (r + 1) / N) (sizes differ by at
// most one; a rank gets none when N > n_items). Local index j of a shard is
// item first + j, so local order is item order and the tie rule (lower item
// index first) is the same inside a shard as across the catalogue.
struct ItemShard {
  int32_t first = 0, last = 0;
  int32_t size() const { return last - first; }
};
ItemShard item_shard(int32_t n_items, int rank, int ranks);

// `f` for ranking the shard's items alone, in shard-local indices: the
// candidates inside the shard (restrict stays as in f: a filter that leaves
// none of the shard's items leaves the shard nothing), and each query's
// exclusions (f.exclude, plus the query's own index with f.exclude_self)
// that fall in the shard, for the `queries` given (all n_queries when empty;
// the others get none). The mapped exclusions are built in `storage`, which
// the returned filter points to: keep it alive while the filter is used.
RankFilter shard_filter(const RankFilter& f, const ItemShard& shard, int32_t n_queries,
                        const std::vector<int32_t>& queries, UserItems& storage);

// One entry of a top-k list (item -1: padding).
struct ScoredItem {
  float score;
  int32_t item;
};
// Exact merge of per-shard top-k lists into the top-k over the union of the
// shards. `lists` holds n_lists blocks back to back, each [n_queries x k]:
// lists[(s * n_queries + q) * k + j] is shard s's j-th best for query q, in
// the order rank_topk returns (score desc, then item asc; padding last), with
// global item indices and disjoint shards. Writes out_items/out_scores
// [n_queries x k] in that same order (score desc, item asc), -1 / -inf padded
// where the shards hold fewer than k in all: the list one rank_topk over every
// item returns, as the per-shard top-k hold every member of the global top-k.
// Scores compare as rank_topk's keys do (NaN as -inf, -0 as +0; the scores
// rank_topk reports are already such keys, so they pass through unchanged).
void merge_topk(const ScoredItem* lists, int n_lists, int64_t n_queries, int k, int32_t* out_items,
                float* out_scores);

// One condition on an entity's feature column. On a categorical column `op`
// is kEq (the entity's bag holds `value`; one value of a multi-hot bag is
// enough) or kNe (it does not). On a numeric (dense) column `value` is a
// number compared with the entity's raw value: the one in the feature file,
// recovered from the stored min-max scaling (raw = min + scaled x (max - min)),
// which is exact to about 1e-7 of the column's span, so values that close to
// `value` count as equal to it (an empty cell was stored as the column minimum).
struct FeatureCondition {
  enum class Op { kEq, kNe, kLt, kLe, kGt, kGe };
  std::string column, value;
  Op op = Op::kEq;
};
// "=", "!=", "<", "<=", ">", ">=".
const char* op_text(FeatureCondition::Op op);
// "column=value", "column!=value", "column<x", "column<=x", "column>x",
// "column>=x" -> a condition (the first operator in the text splits it);
// throws Error naming `flag` when malformed.
FeatureCondition parse_feature_condition(const std::string& text, const std::string& flag);
// Mask over n entities: 1 where every condition holds (all ones when none).
// Throws Error on a column the features do not have (naming the ones there
// are), a value a categorical column never takes (naming some it takes), a
// comparison (<, <=, >, >=) on a categorical column, or a numeric column's
// value that is not a finite number.
std::vector<char> match_features(const EntityFeatures& f, int32_t n,
                                 const std::vector<FeatureCondition>& where,
                                 const std::string& what);
// Sorted candidates: items of n_items in `allow` (when has_allow), not in
// `deny`, and with mask[i] (when mask is not empty).
std::vector<int32_t> candidate_items(int32_t n_items, bool has_allow, const std::vector<int32_t>& allow,
                                     const std::vector<int32_t>& deny, const std::vector<char>& mask);

// Full-ranking metrics over all items, excluding each user's training items.
// Users with no test items are skipped (and counted).
struct RankingMetrics {
  std::vector<int> ks;
  std::vector<double> precision, recall, ndcg, map, hit_rate;  // one per k
  double mrr = 0;          // reciprocal rank of the first hit within the largest k (0 if none)
  double coverage = 0;     // fraction of items recommended to anyone at the largest k
  int64_t users_evaluated = 0;
  int64_t users_skipped = 0;
};
// `progress` (optional) is called with (users ranked, users to rank) after each block.
using RankProgress = std::function<void(int64_t done, int64_t total)>;
RankingMetrics evaluate_ranking(Backend& be, const DeviceArray<float>& U_all,
                                const DeviceArray<float>& V_all, int32_t n_users, int32_t n_items,
                                int d, const UserItems& train, const UserItems& test,
                                std::vector<int> ks, const TopkPolicy& policy = {},
                                const RankProgress& progress = {});
// Convenience: embeds all entities with the model first.
RankingMetrics evaluate_ranking(TwoTowerModel& model, const UserItems& train,
                                const UserItems& test, std::vector<int> ks,
                                const TopkPolicy& policy = {}, const RankProgress& progress = {});

// The metrics of one user's ranked list against its relevant set (sorted).
// Exposed for tests; evaluate_ranking averages these.
struct UserMetrics {
  double precision, recall, ndcg, ap, hit;
};
UserMetrics user_metrics(const int32_t* ranked, int k, const int32_t* relevant, int64_t n_relevant);

// Popularity baseline: every user gets the most popular unseen items.
RankingMetrics evaluate_popularity(const UserItems& train, const UserItems& test, int32_t n_items,
                                   std::vector<int> ks);

// ---- Sampled protocol (NCF): each held-out positive against N negatives ----
//
// For every test interaction (u, i), `negatives` items are drawn uniformly
// without replacement from the items u has in neither `train` nor `test`
// (all of them when fewer remain), from counter-based random numbers keyed by
// (seed, user, case), so the draw is the same on every backend and run.

// One test positive ranked among its sampled negatives. rank is 0-based:
// negatives scored higher, plus negatives scored equal with a lower item index
// (the tie order of every ranking here). auc counts a tied negative as half;
// log_loss sums -log sigmoid(s) for the positive and -log sigmoid(-s) for each
// negative.
struct SampledCase {
  int64_t rank = 0;
  double auc = 0;
  double log_loss = 0;  // summed over the 1 + n terms
};
SampledCase sampled_case(float pos_score, int32_t pos_item, const float* neg_scores,
                         const int32_t* neg_items, int64_t n);

struct SampledMetrics {
  std::vector<int> ks;
  std::vector<double> hit_rate, ndcg;  // one per k: rank < k, 1 / log2(rank + 2) if rank < k
  double auc = 0;                      // mean over test positives
  double log_loss = 0;                 // mean over all positive and negative terms
  int negatives = 0;                   // requested per positive
  int64_t cases = 0;                   // test positives evaluated
  int64_t short_cases = 0;             // of which had fewer than `negatives` unseen items
  int64_t users_evaluated = 0;
};
SampledMetrics evaluate_sampled(Backend& be, const DeviceArray<float>& U_all,
                                const DeviceArray<float>& V_all, int32_t n_users, int32_t n_items,
                                int d, const UserItems& train, const UserItems& test,
                                std::vector<int> ks, int negatives, uint64_t seed,
                                const RankProgress& progress = {});  // (users done, users to do)

// The negatives of one case (sorted), as evaluate_sampled draws them. `seen`
// are the user's sorted train and test items. Exposed for tests.
std::vector<int32_t> sample_eval_negatives(int32_t user, int64_t case_index, int32_t n_items,
                                           const std::vector<int32_t>& seen, int negatives,
                                           uint64_t seed);

}  // namespace towerrec
