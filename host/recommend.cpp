#include "towerrec/recommend.h"

#include <algorithm>
#include <cmath>
#include <iterator>
#include <limits>
#include <numeric>

#include "towerrec/error.h"
#include "towerrec/rng.h"

namespace towerrec {

UserItems group_by_user(const Interactions& x, int32_t n_users) {
  UserItems g;
  g.offsets.assign(static_cast<size_t>(n_users) + 1, 0);
  for (int32_t u : x.user) {
    TOWERREC_CHECK(u >= 0 && u < n_users, "user index out of range");
    ++g.offsets[static_cast<size_t>(u) + 1];
  }
  for (int32_t u = 0; u < n_users; ++u) g.offsets[u + 1] += g.offsets[u];
  g.items.resize(x.item.size());
  std::vector<int64_t> fill(g.offsets.begin(), g.offsets.end() - 1);
  for (size_t j = 0; j < x.user.size(); ++j) g.items[fill[x.user[j]]++] = x.item[j];
  // Sort and de-duplicate each user's list, compacting in place (iteration u
  // reads offsets[u + 1] before iteration u + 1 overwrites it).
  int64_t w = 0;
  for (int32_t u = 0; u < n_users; ++u) {
    auto b = g.items.begin() + g.offsets[u], e = g.items.begin() + g.offsets[u + 1];
    std::sort(b, e);
    const auto end = std::unique(b, e);
    const int64_t n = end - b;
    std::move(b, end, g.items.begin() + w);
    g.offsets[u] = w;
    w += n;
  }
  g.offsets[n_users] = w;
  g.items.resize(static_cast<size_t>(w));
  return g;
}

std::vector<char> cold_users(const UserItems& train) {
  std::vector<char> cold(static_cast<size_t>(train.n_users()), 0);
  for (int32_t u = 0; u < train.n_users(); ++u) cold[u] = train.count(u) == 0;
  return cold;
}

std::vector<char> cold_items(const UserItems& train, int32_t n_items) {
  std::vector<char> cold(static_cast<size_t>(n_items), 1);
  for (int32_t i : train.items) cold[i] = 0;
  return cold;
}

UserItems select_users(const UserItems& x, const std::vector<char>& mask, char keep) {
  UserItems out;
  out.offsets.assign(x.offsets.size(), 0);
  for (int32_t u = 0; u < x.n_users(); ++u) {
    const bool take = u < static_cast<int32_t>(mask.size()) && mask[u] == keep;
    if (take)
      out.items.insert(out.items.end(), x.items.begin() + x.offsets[u], x.items.begin() + x.offsets[u + 1]);
    out.offsets[u + 1] = static_cast<int64_t>(out.items.size());
  }
  return out;
}

namespace {

// Appends query q's exclusions (item rows of the ranked matrix, sorted and
// distinct) to out.
using ExcludeFill = std::function<void(int32_t q, std::vector<int32_t>& out)>;

// The blocked top-K loop behind recommend_topk and rank_topk: queries are rows
// of U_all, candidates the n_items rows of V.
void topk_blocks(Backend& be, const DeviceArray<float>& U_all, const float* V, int32_t n_users,
                 int32_t n_items, int d, const std::vector<int32_t>& users_in, int k,
                 const ExcludeFill* exclude, const std::function<void(const TopKBlock&)>& sink,
                 int64_t block_users, const TopkPolicy& requested) {
  TOWERREC_CHECK(k > 0, "k must be positive");
  const TopkPolicy policy = topk_policy_with_env(requested);
  TOWERREC_CHECK(n_items > 0 && n_users > 0, "empty model");
  std::vector<int32_t> all;
  const std::vector<int32_t>* users = &users_in;
  if (users_in.empty()) {
    all.resize(static_cast<size_t>(n_users));
    std::iota(all.begin(), all.end(), 0);
    users = &all;
  }
  if (block_users <= 0) block_users = std::max<int64_t>(1, be.preferred_topk_users(n_items, d, k));
  const int64_t nb = std::min<int64_t>(block_users, static_cast<int64_t>(users->size()));
  // Two slots: while the device selects block b (queued), the host hands block
  // b - 1's results to the sink. Each slot stages its inputs (user rows,
  // exclusions) and receives its results in page-locked memory, so every copy is
  // queued and only the fence of the block being handed over is waited on.
  struct Slot {
    HostArray<int32_t> users, excl, items;
    HostArray<int64_t> off;
    HostArray<float> scores;
    DeviceArray<int32_t> d_users, d_excl, d_items;
    DeviceArray<int64_t> d_off;
    DeviceArray<float> d_scores, Ub;
    int64_t first = 0, m = 0;  // users[first .. first + m) of the request
    uint64_t fence = 0;
  };
  Slot slots[2];
  for (Slot& sl : slots) {
    sl.users.ensure(&be, nb);
    sl.items.ensure(&be, nb * k);
    sl.scores.ensure(&be, nb * k);
    sl.d_users.reset(&be, nb);
    sl.d_items.reset(&be, nb * k);
    sl.d_scores.reset(&be, nb * k);
    sl.Ub.reset(&be, nb * d);
    if (exclude) {
      sl.off.ensure(&be, nb + 1);
      sl.d_off.reset(&be, nb + 1);
    }
  }
  // On an early exit (a throwing sink) queued copies must finish before the
  // slots' buffers go.
  struct Drain {
    Backend& be;
    Slot* slots;
    ~Drain() {
      try {
        be.wait_fence(slots[0].fence);
        be.wait_fence(slots[1].fence);
      } catch (...) {
      }
    }
  } drain{be, slots};
  TopKBlock blk;
  blk.k = k;
  auto hand_over = [&](Slot& sl) {
    be.wait_fence(sl.fence);
    const size_t mk = static_cast<size_t>(sl.m * k);
    blk.users.assign(users->begin() + static_cast<std::ptrdiff_t>(sl.first),
                     users->begin() + static_cast<std::ptrdiff_t>(sl.first + sl.m));
    blk.items.assign(sl.items.data(), sl.items.data() + mk);
    blk.scores.assign(sl.scores.data(), sl.scores.data() + mk);
    sink(blk);
  };
  const int64_t total = static_cast<int64_t>(users->size());
  std::vector<int32_t> ex;  // one block's exclusions, before staging
  int64_t b = 0;
  for (int64_t s = 0; s < total; s += nb, ++b) {
    Slot& sl = slots[b & 1];
    // This slot's last block was handed over (and its fence passed) already.
    sl.first = s;
    sl.m = std::min<int64_t>(nb, total - s);
    const int64_t m = sl.m;
    for (int64_t r = 0; r < m; ++r) {
      const int32_t u = (*users)[static_cast<size_t>(s + r)];
      TOWERREC_CHECK(u >= 0 && u < n_users, "user index out of range");
      sl.users.data()[r] = u;
    }
    be.to_device_async(sl.d_users.data(), sl.users.data(), sizeof(int32_t) * static_cast<size_t>(m));
    be.gather_rows(U_all.data(), d, sl.d_users.data(), m, sl.Ub.data(), d, 0);
    const int64_t* excl_off = nullptr;
    const int32_t* excl_items = nullptr;
    if (exclude) {
      ex.clear();
      sl.off.data()[0] = 0;
      for (int64_t r = 0; r < m; ++r) {
        (*exclude)(sl.users.data()[r], ex);
        sl.off.data()[r + 1] = static_cast<int64_t>(ex.size());
      }
      const int64_t n_excl = static_cast<int64_t>(ex.size());
      sl.excl.ensure(&be, std::max<int64_t>(n_excl, 1));
      sl.d_excl.ensure(&be, std::max<int64_t>(n_excl, 1));
      std::copy(ex.begin(), ex.end(), sl.excl.data());
      be.to_device_async(sl.d_off.data(), sl.off.data(), sizeof(int64_t) * static_cast<size_t>(m + 1));
      be.to_device_async(sl.d_excl.data(), sl.excl.data(), sizeof(int32_t) * static_cast<size_t>(n_excl));
      excl_off = sl.d_off.data();
      excl_items = sl.d_excl.data();
    }
    be.topk(sl.Ub.data(), m, V, n_items, d, k, excl_off, excl_items, sl.d_items.data(),
            sl.d_scores.data(), policy);
    be.to_host_async(sl.items.data(), sl.d_items.data(), sizeof(int32_t) * static_cast<size_t>(m * k));
    be.to_host_async(sl.scores.data(), sl.d_scores.data(), sizeof(float) * static_cast<size_t>(m * k));
    sl.fence = be.fence();
    if (b > 0) hand_over(slots[(b - 1) & 1]);
  }
  if (b > 0) hand_over(slots[(b - 1) & 1]);
}

}  // namespace

void recommend_topk(Backend& be, const DeviceArray<float>& U_all, const DeviceArray<float>& V_all,
                    int32_t n_users, int32_t n_items, int d, const std::vector<int32_t>& users,
                    int k, const UserItems* exclude,
                    const std::function<void(const TopKBlock&)>& sink, int64_t block_users,
                    const TopkPolicy& policy) {
  ExcludeFill fill;
  if (exclude)
    fill = [exclude](int32_t u, std::vector<int32_t>& out) {
      out.insert(out.end(), exclude->items.begin() + exclude->offsets[u],
                 exclude->items.begin() + exclude->offsets[u + 1]);
    };
  topk_blocks(be, U_all, V_all.data(), n_users, n_items, d, users, k, exclude ? &fill : nullptr, sink,
              block_users, policy);
}

void rank_topk(Backend& be, const DeviceArray<float>& Q_all, int32_t n_queries,
               const DeviceArray<float>& V_all, int32_t n_items, int d,
               const std::vector<int32_t>& queries, int k, const RankFilter& f,
               const std::function<void(const TopKBlock&)>& sink, int64_t block_users,
               const TopkPolicy& policy) {
  TOWERREC_CHECK(k > 0, "k must be positive");
  TOWERREC_CHECK(n_items > 0 && n_queries > 0, "empty model");
  const std::vector<int32_t>& cand = f.candidates;
  const bool restrict = f.restrict && static_cast<int32_t>(cand.size()) < n_items;
  for (size_t j = 0; j < cand.size(); ++j)
    TOWERREC_CHECK(cand[j] >= 0 && cand[j] < n_items && (j == 0 || cand[j - 1] < cand[j]),
                   "candidates must be sorted, distinct item indices");
  if (f.exclude) TOWERREC_CHECK(f.exclude->n_users() >= n_queries, "exclusions cover too few queries");
  if (f.restrict && cand.empty()) {
    // Nothing may be returned: every row is padding.
    std::vector<int32_t> all;
    const std::vector<int32_t>* q = &queries;
    if (queries.empty()) {
      all.resize(static_cast<size_t>(n_queries));
      std::iota(all.begin(), all.end(), 0);
      q = &all;
    }
    if (block_users <= 0) block_users = 4096;
    TopKBlock blk;
    blk.k = k;
    for (size_t s = 0; s < q->size(); s += static_cast<size_t>(block_users)) {
      const size_t e = std::min(q->size(), s + static_cast<size_t>(block_users));
      blk.users.assign(q->begin() + static_cast<std::ptrdiff_t>(s), q->begin() + static_cast<std::ptrdiff_t>(e));
      blk.items.assign((e - s) * static_cast<size_t>(k), -1);
      blk.scores.assign((e - s) * static_cast<size_t>(k), -std::numeric_limits<float>::infinity());
      sink(blk);
    }
    return;
  }
  // The items left out of every ranking (the complement of the candidates).
  std::vector<int32_t> removed;
  if (restrict) {
    removed.reserve(static_cast<size_t>(n_items) - cand.size());
    size_t j = 0;
    for (int32_t i = 0; i < n_items; ++i) {
      if (j < cand.size() && cand[j] == i) ++j;
      else removed.push_back(i);
    }
  }
  const bool gather = restrict && static_cast<int64_t>(removed.size()) > f.exclude_at_most;
  // Gathered: the candidates' rows, in item order, and item -> row (or -1).
  DeviceArray<float> Vsub;
  std::vector<int32_t> local;
  if (gather) {
    removed.clear();
    local.assign(static_cast<size_t>(n_items), -1);
    for (size_t j = 0; j < cand.size(); ++j) local[static_cast<size_t>(cand[j])] = static_cast<int32_t>(j);
    DeviceArray<int32_t> d_idx(&be, static_cast<int64_t>(cand.size()));
    be.to_device(d_idx.data(), cand.data(), sizeof(int32_t) * cand.size());
    Vsub.reset(&be, static_cast<int64_t>(cand.size()) * d);
    be.gather_rows(V_all.data(), d, d_idx.data(), static_cast<int64_t>(cand.size()), Vsub.data(), d, 0);
    be.synchronize();  // d_idx goes at the end of this scope
  }
  const int32_t n_rank = gather ? static_cast<int32_t>(cand.size()) : n_items;
  ExcludeFill fill;
  const bool any = f.exclude || f.exclude_self || !removed.empty();
  if (any) {
    fill = [&f, &removed, &local, gather, scratch = std::vector<int32_t>()](
               int32_t q, std::vector<int32_t>& out) mutable {
      scratch.clear();
      auto add = [&](int32_t item) {
        if (!gather) scratch.push_back(item);
        else if (local[static_cast<size_t>(item)] >= 0) scratch.push_back(local[static_cast<size_t>(item)]);
      };
      if (f.exclude)
        for (int64_t p = f.exclude->offsets[q]; p < f.exclude->offsets[q + 1]; ++p) add(f.exclude->items[p]);
      if (f.exclude_self) add(q);
      std::sort(scratch.begin(), scratch.end());
      std::vector<int32_t>::iterator end;
      if (removed.empty()) {
        end = std::unique(scratch.begin(), scratch.end());
        out.insert(out.end(), scratch.begin(), end);
        return;
      }
      const size_t at = out.size();
      std::set_union(scratch.begin(), scratch.end(), removed.begin(), removed.end(), std::back_inserter(out));
      out.erase(std::unique(out.begin() + static_cast<std::ptrdiff_t>(at), out.end()), out.end());
    };
  }
  if (!gather) {
    topk_blocks(be, Q_all, V_all.data(), n_queries, n_items, d, queries, k, any ? &fill : nullptr, sink,
                block_users, policy);
    return;
  }
  TopKBlock mapped;
  topk_blocks(be, Q_all, Vsub.data(), n_queries, n_rank, d, queries, k, any ? &fill : nullptr,
              [&](const TopKBlock& b) {
                mapped.k = b.k;
                mapped.users = b.users;
                mapped.scores = b.scores;
                mapped.items.resize(b.items.size());
                for (size_t j = 0; j < b.items.size(); ++j)
                  mapped.items[j] = b.items[j] < 0 ? -1 : cand[static_cast<size_t>(b.items[j])];
                sink(mapped);
              },
              block_users, policy);
}

ItemShard item_shard(int32_t n_items, int rank, int ranks) {
  TOWERREC_CHECK(ranks > 0 && rank >= 0 && rank < ranks && n_items >= 0, "bad item shard");
  const auto n = static_cast<int64_t>(n_items);
  return {static_cast<int32_t>(n * rank / ranks), static_cast<int32_t>(n * (rank + 1) / ranks)};
}

RankFilter shard_filter(const RankFilter& f, const ItemShard& shard, int32_t n_queries,
                        const std::vector<int32_t>& queries, UserItems& storage) {
  TOWERREC_CHECK(shard.first >= 0 && shard.first <= shard.last, "bad item shard");
  RankFilter out;
  out.exclude_at_most = f.exclude_at_most;
  out.restrict = f.restrict;
  if (f.restrict) {
    const auto b = std::lower_bound(f.candidates.begin(), f.candidates.end(), shard.first);
    const auto e = std::lower_bound(b, f.candidates.end(), shard.last);
    out.candidates.reserve(static_cast<size_t>(e - b));
    for (auto it = b; it != e; ++it) out.candidates.push_back(*it - shard.first);
  }
  if (!f.exclude && !f.exclude_self) return out;
  if (f.exclude) TOWERREC_CHECK(f.exclude->n_users() >= n_queries, "exclusions cover too few queries");
  std::vector<char> want(static_cast<size_t>(n_queries), queries.empty() ? 1 : 0);
  for (int32_t q : queries) {
    TOWERREC_CHECK(q >= 0 && q < n_queries, "query index out of range");
    want[static_cast<size_t>(q)] = 1;
  }
  storage.offsets.assign(static_cast<size_t>(n_queries) + 1, 0);
  storage.items.clear();
  for (int32_t q = 0; q < n_queries; ++q) {
    if (want[static_cast<size_t>(q)]) {
      const size_t at = storage.items.size();
      if (f.exclude) {
        const auto b = f.exclude->items.begin() + f.exclude->offsets[q];
        const auto e = f.exclude->items.begin() + f.exclude->offsets[q + 1];
        for (auto it = b; it != e; ++it)
          if (*it >= shard.first && *it < shard.last) storage.items.push_back(*it - shard.first);
      }
      if (f.exclude_self && q >= shard.first && q < shard.last) storage.items.push_back(q - shard.first);
      const auto b = storage.items.begin() + static_cast<std::ptrdiff_t>(at);
      std::sort(b, storage.items.end());
      storage.items.erase(std::unique(b, storage.items.end()), storage.items.end());
    }
    storage.offsets[static_cast<size_t>(q) + 1] = static_cast<int64_t>(storage.items.size());
  }
  out.exclude = &storage;
  return out;
}

void merge_topk(const ScoredItem* lists, int n_lists, int64_t n_queries, int k, int32_t* out_items,
                float* out_scores) {
  TOWERREC_CHECK(k > 0 && n_lists > 0 && n_queries >= 0, "bad merge shape");
  // The ranking key of rank_topk: NaN as -inf, -0 as +0.
  auto key = [](float s) {
    if (std::isnan(s)) return -std::numeric_limits<float>::infinity();
    return s == 0.0f ? 0.0f : s;
  };
  std::vector<int> head(static_cast<size_t>(n_lists));
  const auto stride = static_cast<size_t>(n_queries) * static_cast<size_t>(k);
  for (int64_t q = 0; q < n_queries; ++q) {
    std::fill(head.begin(), head.end(), 0);
    const size_t row = static_cast<size_t>(q) * static_cast<size_t>(k);
    for (int j = 0; j < k; ++j) {
      int best = -1;
      float best_key = 0;
      int32_t best_item = -1;
      for (int s = 0; s < n_lists; ++s) {
        if (head[s] >= k) continue;
        const ScoredItem& c = lists[static_cast<size_t>(s) * stride + row + static_cast<size_t>(head[s])];
        if (c.item < 0) continue;  // this shard has no more
        const float ck = key(c.score);
        if (best < 0 || ck > best_key || (ck == best_key && c.item < best_item)) {
          best = s;
          best_key = ck;
          best_item = c.item;
        }
      }
      if (best < 0) {
        for (; j < k; ++j) {
          out_items[row + static_cast<size_t>(j)] = -1;
          out_scores[row + static_cast<size_t>(j)] = -std::numeric_limits<float>::infinity();
        }
        break;
      }
      ++head[static_cast<size_t>(best)];
      out_items[row + static_cast<size_t>(j)] = best_item;
      out_scores[row + static_cast<size_t>(j)] = best_key;
    }
  }
}

UserMetrics user_metrics(const int32_t* ranked, int k, const int32_t* relevant, int64_t n_rel) {
  UserMetrics m{0, 0, 0, 0, 0};
  if (n_rel <= 0) return m;
  double dcg = 0, idcg = 0, ap = 0;
  int hits = 0;
  for (int r = 0; r < k; ++r) {
    const int32_t it = ranked[r];
    if (it < 0) break;
    if (std::binary_search(relevant, relevant + n_rel, it)) {
      ++hits;
      dcg += 1.0 / std::log2(r + 2.0);
      ap += static_cast<double>(hits) / (r + 1);
    }
  }
  for (int r = 0; r < std::min<int64_t>(k, n_rel); ++r) idcg += 1.0 / std::log2(r + 2.0);
  m.precision = static_cast<double>(hits) / k;
  m.recall = static_cast<double>(hits) / static_cast<double>(n_rel);
  m.ndcg = dcg / idcg;
  m.ap = ap / static_cast<double>(std::min<int64_t>(k, n_rel));
  m.hit = hits > 0 ? 1.0 : 0.0;
  return m;
}

namespace {

struct Accumulator {
  RankingMetrics r;
  std::vector<char> recommended;
  int kmax;
  Accumulator(std::vector<int> ks, int32_t n_items) {
    TOWERREC_CHECK(!ks.empty(), "no cutoffs given");
    std::sort(ks.begin(), ks.end());
    ks.erase(std::unique(ks.begin(), ks.end()), ks.end());
    TOWERREC_CHECK(ks.front() > 0, "cutoffs must be positive");
    r.ks = ks;
    kmax = ks.back();
    for (auto* v : {&r.precision, &r.recall, &r.ndcg, &r.map, &r.hit_rate}) v->assign(ks.size(), 0.0);
    recommended.assign(static_cast<size_t>(n_items), 0);
  }
  void add(const int32_t* ranked, const UserItems& test, int32_t u) {
    const int64_t n_rel = test.count(u);
    const int32_t* rel = test.items.data() + test.offsets[u];
    for (size_t j = 0; j < r.ks.size(); ++j) {
      const UserMetrics m = user_metrics(ranked, r.ks[j], rel, n_rel);
      r.precision[j] += m.precision;
      r.recall[j] += m.recall;
      r.ndcg[j] += m.ndcg;
      r.map[j] += m.ap;
      r.hit_rate[j] += m.hit;
    }
    for (int q = 0; q < kmax; ++q) {
      if (ranked[q] < 0) break;
      if (std::binary_search(rel, rel + n_rel, ranked[q])) {
        r.mrr += 1.0 / (q + 1);
        break;
      }
    }
    for (int q = 0; q < kmax && ranked[q] >= 0; ++q) recommended[ranked[q]] = 1;
    ++r.users_evaluated;
  }
  RankingMetrics finish() {
    const double n = std::max<int64_t>(r.users_evaluated, 1);
    for (auto* v : {&r.precision, &r.recall, &r.ndcg, &r.map, &r.hit_rate})
      for (auto& x : *v) x /= n;
    r.mrr /= n;
    int64_t c = 0;
    for (char x : recommended) c += x;
    r.coverage = recommended.empty() ? 0 : static_cast<double>(c) / static_cast<double>(recommended.size());
    return r;
  }
};

}  // namespace

RankingMetrics evaluate_ranking(Backend& be, const DeviceArray<float>& U_all,
                                const DeviceArray<float>& V_all, int32_t n_users, int32_t n_items,
                                int d, const UserItems& train, const UserItems& test,
                                std::vector<int> ks, const TopkPolicy& policy,
                                const RankProgress& progress) {
  Accumulator acc(std::move(ks), n_items);
  std::vector<int32_t> users;
  for (int32_t u = 0; u < std::min(n_users, test.n_users()); ++u) {
    if (test.count(u) > 0) users.push_back(u);
    else ++acc.r.users_skipped;
  }
  if (users.empty()) return acc.finish();
  const int64_t total = static_cast<int64_t>(users.size());
  int64_t done = 0;
  recommend_topk(be, U_all, V_all, n_users, n_items, d, users, acc.kmax, &train,
                 [&](const TopKBlock& b) {
                   for (size_t r = 0; r < b.users.size(); ++r)
                     acc.add(b.items.data() + r * static_cast<size_t>(b.k), test, b.users[r]);
                   done += static_cast<int64_t>(b.users.size());
                   if (progress) progress(done, total);
                 },
                 0, policy);
  return acc.finish();
}

RankingMetrics evaluate_ranking(TwoTowerModel& model, const UserItems& train,
                                const UserItems& test, std::vector<int> ks,
                                const TopkPolicy& policy, const RankProgress& progress) {
  DeviceArray<float> U, V;
  model.embed_all_users(U);
  model.embed_all_items(V);
  return evaluate_ranking(model.backend(), U, V, model.user_tower().spec().n_entities,
                          model.item_tower().spec().n_entities, model.out_dim(), train, test,
                          std::move(ks), policy, progress);
}

RankingMetrics evaluate_popularity(const UserItems& train, const UserItems& test, int32_t n_items,
                                   std::vector<int> ks) {
  Accumulator acc(std::move(ks), n_items);
  std::vector<int64_t> count(static_cast<size_t>(n_items), 0);
  for (int32_t i : train.items) ++count[i];
  std::vector<int32_t> order(static_cast<size_t>(n_items));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return count[a] > count[b]; });
  std::vector<int32_t> ranked(static_cast<size_t>(acc.kmax));
  for (int32_t u = 0; u < test.n_users(); ++u) {
    if (test.count(u) == 0) {
      ++acc.r.users_skipped;
      continue;
    }
    const int32_t* seen = u < train.n_users() ? train.items.data() + train.offsets[u] : nullptr;
    const int64_t n_seen = u < train.n_users() ? train.count(u) : 0;
    int q = 0;
    for (int32_t it : order) {
      if (q == acc.kmax) break;
      if (seen && std::binary_search(seen, seen + n_seen, it)) continue;
      ranked[q++] = it;
    }
    for (; q < acc.kmax; ++q) ranked[q] = -1;
    acc.add(ranked.data(), test, u);
  }
  return acc.finish();
}

// ---- Sampled protocol ----------------------------------------------------------

namespace {

// Random stream of evaluation negatives (distinct from the named training streams).
constexpr uint64_t kEvalNegativeStream = 0x4556414C4E454731ull;

// -log sigmoid(x), stable for any x.
double softplus_neg(double x) { return std::max(-x, 0.0) + std::log1p(std::exp(-std::fabs(x))); }

}  // namespace

std::vector<int32_t> sample_eval_negatives(int32_t user, int64_t case_index, int32_t n_items,
                                           const std::vector<int32_t>& seen, int negatives,
                                           uint64_t seed) {
  TOWERREC_CHECK(negatives >= 0, "negatives must be >= 0");
  const int64_t available = static_cast<int64_t>(n_items) - static_cast<int64_t>(seen.size());
  std::vector<int32_t> out;
  if (available <= 0 || negatives == 0) return out;
  const uint64_t case_seed =
      rng::mix64(seed ^ rng::mix64((static_cast<uint64_t>(static_cast<uint32_t>(user)) << 32) ^
                                   static_cast<uint64_t>(case_index)));
  auto is_seen = [&](int32_t it) { return std::binary_search(seen.begin(), seen.end(), it); };
  if (available <= 4 * static_cast<int64_t>(negatives) || 2 * available < n_items) {
    // Few unseen items: list them and take a partial Fisher-Yates prefix.
    std::vector<int32_t> pool;
    pool.reserve(static_cast<size_t>(available));
    for (int32_t it = 0; it < n_items; ++it)
      if (!is_seen(it)) pool.push_back(it);
    const int64_t take = std::min<int64_t>(negatives, available);
    for (int64_t j = 0; j < take; ++j) {
      const auto r = static_cast<int64_t>(rng::below(case_seed, kEvalNegativeStream, static_cast<uint64_t>(j),
                                                      static_cast<uint64_t>(available - j)));
      std::swap(pool[static_cast<size_t>(j)], pool[static_cast<size_t>(j + r)]);
    }
    out.assign(pool.begin(), pool.begin() + take);
  } else {
    // Mostly unseen items: rejection sampling; more than a quarter of the draws
    // are accepted (at least half the items are unseen, at most a quarter of
    // the unseen ones are already taken).
    out.reserve(static_cast<size_t>(negatives));
    for (uint64_t attempt = 0; static_cast<int>(out.size()) < negatives; ++attempt) {
      const auto it = static_cast<int32_t>(
          rng::below(case_seed, kEvalNegativeStream, attempt, static_cast<uint64_t>(n_items)));
      if (is_seen(it) || std::find(out.begin(), out.end(), it) != out.end()) continue;
      out.push_back(it);
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

SampledCase sampled_case(float pos_score, int32_t pos_item, const float* neg_scores,
                         const int32_t* neg_items, int64_t n) {
  SampledCase c;
  double wins = 0;
  c.log_loss = softplus_neg(pos_score);
  for (int64_t j = 0; j < n; ++j) {
    const float s = neg_scores[j];
    if (s > pos_score || (s == pos_score && neg_items[j] < pos_item)) ++c.rank;
    if (s < pos_score) wins += 1.0;
    else if (s == pos_score) wins += 0.5;
    c.log_loss += softplus_neg(-static_cast<double>(s));
  }
  c.auc = n > 0 ? wins / static_cast<double>(n) : 1.0;
  return c;
}

SampledMetrics evaluate_sampled(Backend& be, const DeviceArray<float>& U_all,
                                const DeviceArray<float>& V_all, int32_t n_users, int32_t n_items,
                                int d, const UserItems& train, const UserItems& test,
                                std::vector<int> ks, int negatives, uint64_t seed,
                                const RankProgress& progress) {
  TOWERREC_CHECK(!ks.empty(), "no cutoffs given");
  TOWERREC_CHECK(negatives >= 1, "the sampled protocol needs at least one negative");
  std::sort(ks.begin(), ks.end());
  ks.erase(std::unique(ks.begin(), ks.end()), ks.end());
  TOWERREC_CHECK(ks.front() > 0, "cutoffs must be positive");
  SampledMetrics m;
  m.ks = ks;
  m.negatives = negatives;
  m.hit_rate.assign(ks.size(), 0.0);
  m.ndcg.assign(ks.size(), 0.0);
  // The embeddings come to the host once; each case scores 1 + N items.
  std::vector<float> U(static_cast<size_t>(n_users) * d), V(static_cast<size_t>(n_items) * d);
  be.to_host(U.data(), U_all.data(), sizeof(float) * U.size());
  be.to_host(V.data(), V_all.data(), sizeof(float) * V.size());
  auto score = [&](int32_t u, int32_t i) {
    const float* a = U.data() + static_cast<size_t>(u) * d;
    const float* b = V.data() + static_cast<size_t>(i) * d;
    float s = 0;
    for (int c = 0; c < d; ++c) s += a[c] * b[c];
    return s;
  };
  double loss_sum = 0, auc_sum = 0;
  int64_t loss_terms = 0;
  std::vector<int32_t> seen;
  std::vector<float> neg_scores;
  int64_t to_do = 0;
  for (int32_t u = 0; u < std::min(n_users, test.n_users()); ++u) to_do += test.count(u) > 0;
  for (int32_t u = 0; u < std::min(n_users, test.n_users()); ++u) {
    if (test.count(u) == 0) continue;
    ++m.users_evaluated;
    const int32_t* tb = test.items.data() + test.offsets[u];
    const int32_t* te = tb + test.count(u);
    seen.assign(tb, te);
    if (u < train.n_users())
      seen.insert(seen.end(), train.items.begin() + train.offsets[u], train.items.begin() + train.offsets[u + 1]);
    std::sort(seen.begin(), seen.end());
    seen.erase(std::unique(seen.begin(), seen.end()), seen.end());
    for (const int32_t* p = tb; p != te; ++p) {
      TOWERREC_CHECK(*p >= 0 && *p < n_items, "test item index out of range");
      const std::vector<int32_t> neg = sample_eval_negatives(u, p - tb, n_items, seen, negatives, seed);
      neg_scores.resize(neg.size());
      for (size_t j = 0; j < neg.size(); ++j) neg_scores[j] = score(u, neg[j]);
      const SampledCase c = sampled_case(score(u, *p), *p, neg_scores.data(), neg.data(),
                                         static_cast<int64_t>(neg.size()));
      for (size_t j = 0; j < ks.size(); ++j) {
        if (c.rank < ks[j]) {
          m.hit_rate[j] += 1.0;
          m.ndcg[j] += 1.0 / std::log2(static_cast<double>(c.rank) + 2.0);
        }
      }
      auc_sum += c.auc;
      loss_sum += c.log_loss;
      loss_terms += 1 + static_cast<int64_t>(neg.size());
      if (static_cast<int>(neg.size()) < negatives) ++m.short_cases;
      ++m.cases;
    }
    if (progress && (m.users_evaluated % 1024 == 0 || m.users_evaluated == to_do)) progress(m.users_evaluated, to_do);
  }
  if (m.cases > 0) {
    const double n = static_cast<double>(m.cases);
    for (auto& x : m.hit_rate) x /= n;
    for (auto& x : m.ndcg) x /= n;
    m.auc = auc_sum / n;
    m.log_loss = loss_sum / static_cast<double>(loss_terms);
  }
  return m;
}

}  // namespace towerrec
