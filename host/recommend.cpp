#include "towerrec/recommend.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "towerrec/error.h"

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

void recommend_topk(Backend& be, const DeviceArray<float>& U_all, const DeviceArray<float>& V_all,
                    int32_t n_users, int32_t n_items, int d, const std::vector<int32_t>& users_in,
                    int k, const UserItems* exclude,
                    const std::function<void(const TopKBlock&)>& sink, int64_t block_users) {
  TOWERREC_CHECK(k > 0, "k must be positive");
  TOWERREC_CHECK(n_items > 0 && n_users > 0, "empty model");
  std::vector<int32_t> all;
  const std::vector<int32_t>* users = &users_in;
  if (users_in.empty()) {
    all.resize(static_cast<size_t>(n_users));
    std::iota(all.begin(), all.end(), 0);
    users = &all;
  }
  if (block_users <= 0) {
    // Bound the score scratch of a block to about 256 MiB.
    block_users = std::clamp<int64_t>((int64_t(64) << 20) / std::max<int32_t>(n_items, 1), 1, 4096);
  }
  const int64_t nb = std::min<int64_t>(block_users, static_cast<int64_t>(users->size()));
  DeviceArray<float> Ub(&be, nb * d);
  DeviceArray<int32_t> out_items(&be, nb * k);
  DeviceArray<float> out_scores(&be, nb * k);
  DeviceArray<int64_t> d_off(&be, nb + 1);
  DeviceArray<int32_t> d_excl;
  std::vector<int64_t> off(static_cast<size_t>(nb) + 1);
  std::vector<int32_t> excl;
  TopKBlock blk;
  blk.k = k;
  for (size_t s = 0; s < users->size(); s += static_cast<size_t>(nb)) {
    const int64_t m = std::min<int64_t>(nb, static_cast<int64_t>(users->size() - s));
    blk.users.assign(users->begin() + static_cast<std::ptrdiff_t>(s),
                     users->begin() + static_cast<std::ptrdiff_t>(s + static_cast<size_t>(m)));
    for (int64_t r = 0; r < m; ++r) {
      const int32_t u = blk.users[r];
      TOWERREC_CHECK(u >= 0 && u < n_users, "user index out of range");
      be.copy(Ub.data() + r * d, U_all.data() + static_cast<int64_t>(u) * d, sizeof(float) * d);
    }
    const int64_t* excl_off = nullptr;
    const int32_t* excl_items = nullptr;
    if (exclude) {
      excl.clear();
      off[0] = 0;
      for (int64_t r = 0; r < m; ++r) {
        const int32_t u = blk.users[r];
        excl.insert(excl.end(), exclude->items.begin() + exclude->offsets[u],
                    exclude->items.begin() + exclude->offsets[u + 1]);
        off[r + 1] = static_cast<int64_t>(excl.size());
      }
      be.to_device(d_off.data(), off.data(), sizeof(int64_t) * static_cast<size_t>(m + 1));
      if (!excl.empty()) {
        d_excl.ensure(&be, static_cast<int64_t>(excl.size()));
        be.to_device(d_excl.data(), excl.data(), sizeof(int32_t) * excl.size());
      } else {
        d_excl.ensure(&be, 1);
      }
      excl_off = d_off.data();
      excl_items = d_excl.data();
    }
    be.topk(Ub.data(), m, V_all.data(), n_items, d, k, excl_off, excl_items, out_items.data(),
            out_scores.data());
    blk.items.resize(static_cast<size_t>(m * k));
    blk.scores.resize(static_cast<size_t>(m * k));
    be.to_host(blk.items.data(), out_items.data(), sizeof(int32_t) * blk.items.size());
    be.to_host(blk.scores.data(), out_scores.data(), sizeof(float) * blk.scores.size());
    sink(blk);
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
                                std::vector<int> ks) {
  Accumulator acc(std::move(ks), n_items);
  std::vector<int32_t> users;
  for (int32_t u = 0; u < std::min(n_users, test.n_users()); ++u) {
    if (test.count(u) > 0) users.push_back(u);
    else ++acc.r.users_skipped;
  }
  if (users.empty()) return acc.finish();
  recommend_topk(be, U_all, V_all, n_users, n_items, d, users, acc.kmax, &train,
                 [&](const TopKBlock& b) {
                   for (size_t r = 0; r < b.users.size(); ++r)
                     acc.add(b.items.data() + r * static_cast<size_t>(b.k), test, b.users[r]);
                 });
  return acc.finish();
}

RankingMetrics evaluate_ranking(TwoTowerModel& model, const UserItems& train,
                                const UserItems& test, std::vector<int> ks) {
  DeviceArray<float> U, V;
  model.embed_all_users(U);
  model.embed_all_items(V);
  return evaluate_ranking(model.backend(), U, V, model.user_tower().spec().n_entities,
                          model.item_tower().spec().n_entities, model.out_dim(), train, test,
                          std::move(ks));
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

}  // namespace towerrec
