// Synthetic interactions with planted structure.
//
// Model. Users u and items i have latent factors x_u, y_i ~ N(0, I_d) (d =
// latent_dim). Items have a Zipf popularity p_i ∝ (rank_i + 1)^-popularity_skew
// over a random permutation of ranks. A user's preference for an item is
//   s_ui = <x_u, y_i> / sqrt(d)          (standard normal across pairs)
// and the user's n_u items (n_u ≈ interactions_per_user, log-normal spread,
// at least 1) are drawn without replacement with probability
//   ∝ p_i · exp(s_ui / temperature).
// Sampling: Gumbel-top-k on log p_i + s_ui / T + Gumbel noise. For catalogs of
// at most max(1024, 4 n_u) items every item is scored (exact). Larger catalogs
// use a candidate pool of max(256, 8 n_u) draws (an item drawn m times counts
// m times) from a
// user-dependent proposal q_u, scored with the importance weight log p_i -
// log q_u(i) added (sampling-importance-resampling): O(pool · d) per user.
// Items are bucketed by their dominant factor and its sign (2d buckets) and
//   q_u(i) = 0.05 / n + 0.25 p_i + 0.7 π_u(b_i) p_i / M(b_i),
// where M(b) is the popularity mass of bucket b and π_u(b) ∝ M(b) exp(±2.5
// x_uk / (sqrt(d) T)) leans toward the buckets the user likes, so the pool
// holds the user's likely items even when the catalog is large.
//
// Every random number is a counter-based function of (seed, stream, counter),
// so each user's rows depend only on the seed and its index: users are
// generated in parallel blocks and written in order, and the output is the same
// for any thread count. Nothing per interaction is kept in memory.
//
// Files (IDs are "u<index>" and "i<index>"):
//   interactions.csv  user,item,rating,timestamp   grouped by user; a user's
//                     timestamps increase; rating 1..5 = round(3 + 1.5 s + noise)
//   users.csv         user,age,segment,interests
//                     age       integer, 38 + 10 (x_0 + noise·ε), clamped to 16..80
//                     segment   s<k>, k = argmax over the first 4 factors (+ noise)
//                     interests '|'-separated tags t<k>p / t<k>n for factors whose
//                               noisy value is above 0.8 / below -0.8
//   items.csv         item,price,category,tags
//                     price     20 + 8 (y_0 + noise·ε), at least 1, two decimals
//                     category  c<k>, argmax over the first 4 factors (+ noise)
//                     tags      g<k>p / g<k>n as for interests
// items.csv lists only the items that occur in interactions.csv (a feature row
// for an item without interactions would be an input error), so the summary's
// item count can be below SynthOptions::items when the catalog is large
// relative to the number of interactions.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>

#include "host/data/text.h"
#include "towerrec/data.h"
#include "towerrec/error.h"
#include "towerrec/io.h"
#include "towerrec/rng.h"

namespace towerrec {
namespace {

using data_detail::append_int;

// Sub-streams of rng::kSynth.
enum Sub : uint64_t {
  kUserFactor = 1,
  kItemFactor,
  kItemRank,
  kCount,
  kCandidate,
  kGumbel,
  kOrder,
  kRatingNoise,
  kTime,
  kUserFeature,
  kItemFeature,
};
constexpr uint64_t stream(Sub s) { return rng::kSynth | (static_cast<uint64_t>(s) << 32); }

// Vose alias table over the popularity distribution.
struct Alias {
  std::vector<float> prob;
  std::vector<int32_t> alias;
  Alias() = default;
  explicit Alias(const std::vector<double>& p) { build(p.data(), p.size()); }
  // Appends the table of weights p[0..n) (which sum to 1) to prob/alias, with
  // alias entries relative to the start of this table.
  void build(const double* p, size_t n) {
    const size_t base = prob.size();
    prob.resize(base + n);
    alias.resize(base + n);
    std::vector<double> scaled(n);
    std::vector<int32_t> small, large;
    for (size_t i = 0; i < n; ++i) {
      scaled[i] = p[i] * static_cast<double>(n);
      (scaled[i] < 1.0 ? small : large).push_back(static_cast<int32_t>(i));
    }
    while (!small.empty() && !large.empty()) {
      const int32_t s = small.back(), l = large.back();
      small.pop_back();
      prob[base + static_cast<size_t>(s)] = static_cast<float>(scaled[static_cast<size_t>(s)]);
      alias[base + static_cast<size_t>(s)] = l;
      scaled[static_cast<size_t>(l)] -= 1.0 - scaled[static_cast<size_t>(s)];
      if (scaled[static_cast<size_t>(l)] < 1.0) {
        large.pop_back();
        small.push_back(l);
      }
    }
    for (int32_t i : small) prob[base + static_cast<size_t>(i)] = 1.0f, alias[base + static_cast<size_t>(i)] = i;
    for (int32_t i : large) prob[base + static_cast<size_t>(i)] = 1.0f, alias[base + static_cast<size_t>(i)] = i;
  }
};

float gumbel(uint64_t seed, uint64_t counter) {
  const double u = (static_cast<double>(rng::bits(seed, stream(kGumbel), counter) >> 11) + 0.5) *
                   (1.0 / 9007199254740992.0);
  return static_cast<float>(-std::log(-std::log(u)));
}

// Features of one entity: a dense value around factor 0, a one-hot argmax of
// the first (up to) 4 factors, and sign tags of all factors.
struct Observed {
  double dense0;
  int segment;
  std::string tags;
};
Observed observe(const float* f, int d, double noise, uint64_t seed, Sub sub, uint64_t entity,
                 char tag_letter) {
  auto eps = [&](int k) {
    return noise * rng::normal(seed, stream(sub), entity * 64 + static_cast<uint64_t>(k));
  };
  Observed o;
  o.dense0 = f[0] + eps(0);
  const int m = std::min(d, 4);
  double best = -1e300;
  o.segment = 0;
  for (int k = 0; k < m; ++k) {
    const double v = f[k] + eps(8 + k);
    if (v > best) best = v, o.segment = k;
  }
  for (int k = 0; k < d && k < 24; ++k) {
    const double v = f[k] + eps(32 + k);
    if (v > 0.8 || v < -0.8) {
      if (!o.tags.empty()) o.tags += '|';
      o.tags += tag_letter;
      append_int(o.tags, k);
      o.tags += v > 0 ? 'p' : 'n';
    }
  }
  return o;
}

// The item side: factors, Zipf popularity, and the buckets and alias tables
// of the candidate proposal.
struct Catalog {
  int d = 0, n_buckets = 0;
  int64_t n_items = 0;
  std::vector<float> item_f;          // [n_items x d]
  std::vector<double> pop;            // popularity, sums to 1
  std::vector<float> log_pop;
  std::vector<int32_t> bucket_of;     // bucket of each item
  std::vector<double> mass;           // popularity mass of each bucket
  std::vector<int64_t> boff;          // bucket b's items: bitems[boff[b] .. boff[b + 1])
  std::vector<int32_t> bitems;
  Alias balias;                       // per-bucket tables over popularity, back to back
  Alias alias;                        // over all items' popularity
  const float* factors(int64_t i) const { return &item_f[static_cast<size_t>(i) * static_cast<size_t>(d)]; }
};

// Mixture weights of the proposal q_u (see the top of the file).
constexpr double kUniform = 0.05, kPop = 0.25, kBucket = 0.7;

void build_popularity(Catalog& c, const SynthOptions& opt) {
  const uint64_t seed = opt.seed;
  std::vector<int32_t> order(static_cast<size_t>(c.n_items));
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    return rng::bits(seed, stream(kItemRank), static_cast<uint64_t>(a)) <
           rng::bits(seed, stream(kItemRank), static_cast<uint64_t>(b));
  });
  c.pop.assign(static_cast<size_t>(c.n_items), 0.0);
  double z = 0;
  for (size_t r = 0; r < order.size(); ++r) {
    const double w = std::pow(static_cast<double>(r + 1), -opt.popularity_skew);
    c.pop[static_cast<size_t>(order[r])] = w;
    z += w;
  }
  c.log_pop.resize(c.pop.size());
  for (size_t i = 0; i < c.pop.size(); ++i) {
    c.pop[i] /= z;
    c.log_pop[i] = static_cast<float>(std::log(c.pop[i]));
  }
}

// Buckets by dominant factor and sign; per-bucket alias tables over popularity.
void build_buckets(Catalog& c) {
  const int d = c.d;
  const int64_t n_items = c.n_items;
  c.n_buckets = 2 * d;
  c.bucket_of.assign(static_cast<size_t>(n_items), 0);
  c.mass.assign(static_cast<size_t>(c.n_buckets), 0.0);
  c.boff.assign(static_cast<size_t>(c.n_buckets) + 1, 0);
  for (int64_t i = 0; i < n_items; ++i) {
    const float* y = c.factors(i);
    int best = 0;
    for (int k = 1; k < d; ++k)
      if (std::fabs(y[k]) > std::fabs(y[best])) best = k;
    const int b = 2 * best + (y[best] < 0 ? 1 : 0);
    c.bucket_of[static_cast<size_t>(i)] = b;
    c.mass[static_cast<size_t>(b)] += c.pop[static_cast<size_t>(i)];
    ++c.boff[static_cast<size_t>(b) + 1];
  }
  for (int b = 0; b < c.n_buckets; ++b) c.boff[static_cast<size_t>(b) + 1] += c.boff[static_cast<size_t>(b)];
  c.bitems.assign(static_cast<size_t>(n_items), 0);
  std::vector<int64_t> fill(c.boff.begin(), c.boff.end() - 1);
  for (int64_t i = 0; i < n_items; ++i)
    c.bitems[static_cast<size_t>(fill[static_cast<size_t>(c.bucket_of[static_cast<size_t>(i)])]++)] =
        static_cast<int32_t>(i);
  std::vector<double> w;
  for (int b = 0; b < c.n_buckets; ++b) {
    w.clear();
    for (int64_t k = c.boff[static_cast<size_t>(b)]; k < c.boff[static_cast<size_t>(b) + 1]; ++k)
      w.push_back(c.pop[static_cast<size_t>(c.bitems[static_cast<size_t>(k)])] / c.mass[static_cast<size_t>(b)]);
    c.balias.build(w.data(), w.size());
  }
}

Catalog build_catalog(const SynthOptions& opt) {
  Catalog c;
  c.d = opt.latent_dim;
  c.n_items = opt.items;
  c.item_f.resize(static_cast<size_t>(c.n_items) * static_cast<size_t>(c.d));
  for (size_t k = 0; k < c.item_f.size(); ++k) c.item_f[k] = rng::normal(opt.seed, stream(kItemFactor), k);
  build_popularity(c, opt);
  build_buckets(c);
  c.alias = Alias(c.pop);
  return c;
}

// Per-thread buffers of the user loop.
struct UserScratch {
  std::vector<float> xf;              // the user's factors
  std::vector<double> pi;             // the user's bucket distribution π_u
  std::vector<float> mult;            // log multiplicity of each distinct candidate
  std::vector<int32_t> cand;
  std::vector<std::pair<float, int32_t>> keyed;
  std::vector<std::pair<uint64_t, int32_t>> picked;  // (time-order key, item)
};

// One draw from the user's proposal q_u, or -1 for an empty bucket.
int32_t draw_candidate(const Catalog& c, const UserScratch& s, uint64_t seed, uint64_t counter) {
  const uint64_t x = rng::bits(seed, stream(kCandidate), counter);
  const uint64_t x2 = rng::bits(seed, stream(kCandidate), counter + 1);
  const double pick = static_cast<double>(x >> 11) * (1.0 / 9007199254740992.0);
  const float coin = static_cast<float>(x2 >> 40) * (1.0f / 16777216.0f);
  if (pick < kUniform)
    return static_cast<int32_t>(((x2 & 0xFFFFFFFFull) * static_cast<uint64_t>(c.n_items)) >> 32);
  if (pick < kUniform + kPop) {
    const uint64_t slot = ((x2 & 0xFFFFFFFFull) * static_cast<uint64_t>(c.n_items)) >> 32;
    return coin < c.alias.prob[slot] ? static_cast<int32_t>(slot) : c.alias.alias[slot];
  }
  const auto& boff = c.boff;
  double r = (pick - kUniform - kPop) / kBucket;
  int b = 0;
  while (b + 1 < c.n_buckets && (r >= s.pi[static_cast<size_t>(b)] || boff[static_cast<size_t>(b)] == boff[static_cast<size_t>(b) + 1])) {
    r -= s.pi[static_cast<size_t>(b)];
    ++b;
  }
  const int64_t size = boff[static_cast<size_t>(b) + 1] - boff[static_cast<size_t>(b)];
  if (size == 0) return -1;
  const uint64_t slot = static_cast<uint64_t>(boff[static_cast<size_t>(b)]) +
                        (((x2 & 0xFFFFFFFFull) * static_cast<uint64_t>(size)) >> 32);
  const int64_t local = coin < c.balias.prob[slot] ? static_cast<int64_t>(slot) - boff[static_cast<size_t>(b)]
                                                   : c.balias.alias[slot];
  return c.bitems[static_cast<size_t>(boff[static_cast<size_t>(b)] + local)];
}

// The candidate pool of a user with n items in a large catalog: distinct
// items of max(256, 8 n) proposal draws, with their multiplicities.
void candidate_pool(const Catalog& c, UserScratch& s, uint64_t seed, uint64_t uc, int64_t n,
                    float inv_sqrt_d, float inv_t) {
  double tot = 0;
  for (int b = 0; b < c.n_buckets; ++b) {
    const double sign = (b & 1) ? -1.0 : 1.0;
    const double w = c.mass[static_cast<size_t>(b)] > 0
                         ? c.mass[static_cast<size_t>(b)] *
                               std::exp(sign * 2.5 * s.xf[static_cast<size_t>(b / 2)] * inv_sqrt_d * inv_t)
                         : 0.0;
    s.pi[static_cast<size_t>(b)] = w;
    tot += w;
  }
  for (int b = 0; b < c.n_buckets; ++b) s.pi[static_cast<size_t>(b)] /= tot;
  const int64_t pool = std::max<int64_t>(256, 8 * n);
  for (int64_t j = 0; j < pool; ++j) {
    const int32_t item = draw_candidate(c, s, seed, (uc << 32) + 2 * static_cast<uint64_t>(j));
    if (item >= 0) s.cand.push_back(item);
  }
  // Distinct candidates with their multiplicities (an item drawn m times
  // carries m times the importance weight).
  std::sort(s.cand.begin(), s.cand.end());
  s.mult.clear();
  size_t w = 0;
  for (size_t j = 0; j < s.cand.size();) {
    size_t e = j;
    while (e < s.cand.size() && s.cand[e] == s.cand[j]) ++e;
    s.cand[w++] = s.cand[j];
    s.mult.push_back(static_cast<float>(std::log(static_cast<double>(e - j))));
    j = e;
  }
  s.cand.resize(w);
}

float dot(const float* x, const float* y, int d) {
  float r = 0;
  for (int k = 0; k < d; ++k) r += x[k] * y[k];
  return r;
}

// The user's n items by Gumbel-top-n on the (importance-weighted) log
// probability, into s.picked in a random time order.
void choose_items(const Catalog& c, UserScratch& s, uint64_t seed, uint64_t uc, int64_t n,
                  float inv_sqrt_d, float inv_t) {
  const bool exact = c.n_items <= std::max<int64_t>(1024, 4 * n);
  s.cand.clear();
  if (exact) {
    s.cand.resize(static_cast<size_t>(c.n_items));
    std::iota(s.cand.begin(), s.cand.end(), 0);
  } else {
    candidate_pool(c, s, seed, uc, n, inv_sqrt_d, inv_t);
  }
  s.keyed.clear();
  for (size_t j = 0; j < s.cand.size(); ++j) {
    const int32_t i = s.cand[j];
    float base = c.log_pop[static_cast<size_t>(i)];
    if (!exact) {
      const size_t b = static_cast<size_t>(c.bucket_of[static_cast<size_t>(i)]);
      const double p = c.pop[static_cast<size_t>(i)];
      const double q = kUniform / static_cast<double>(c.n_items) + kPop * p + kBucket * s.pi[b] * p / c.mass[b];
      base += s.mult[j] - static_cast<float>(std::log(q));
    }
    s.keyed.emplace_back(base + dot(s.xf.data(), c.factors(i), c.d) * inv_sqrt_d * inv_t +
                             gumbel(seed, (uc << 32) + static_cast<uint64_t>(i)),
                         i);
  }
  const size_t take = std::min(s.keyed.size(), static_cast<size_t>(n));
  std::partial_sort(s.keyed.begin(), s.keyed.begin() + static_cast<std::ptrdiff_t>(take), s.keyed.end(),
                    [](const auto& a, const auto& b) {
                      return a.first > b.first || (a.first == b.first && a.second < b.second);
                    });
  s.picked.clear();
  for (size_t j = 0; j < take; ++j) {
    const int32_t i = s.keyed[j].second;
    s.picked.emplace_back(rng::bits(seed, stream(kOrder), (uc << 32) + static_cast<uint64_t>(i)), i);
  }
  std::sort(s.picked.begin(), s.picked.end());
}

// One user: its interaction rows to `ib`, its feature row to `ub`, its items
// marked in `used`. Returns the number of interactions.
int64_t generate_user(const Catalog& c, const SynthOptions& opt, int64_t u, UserScratch& s,
                      std::string& ib, std::string& ub, std::vector<uint8_t>& used) {
  const int d = c.d;
  const uint64_t seed = opt.seed, uc = static_cast<uint64_t>(u);
  const float inv_sqrt_d = 1.0f / std::sqrt(static_cast<float>(d));
  const float inv_t = static_cast<float>(1.0 / opt.temperature);
  for (int k = 0; k < d; ++k)
    s.xf[static_cast<size_t>(k)] =
        rng::normal(seed, stream(kUserFactor), uc * static_cast<uint64_t>(d) + static_cast<uint64_t>(k));
  // How many items.
  const double spread = std::exp(0.5 * rng::normal(seed, stream(kCount), uc) - 0.125);
  const int64_t n = std::clamp<int64_t>(std::llround(opt.interactions_per_user * spread), 1, c.n_items);
  choose_items(c, s, seed, uc, n, inv_sqrt_d, inv_t);
  int64_t ts = 1000000000 + static_cast<int64_t>(rng::below(seed, stream(kTime), uc << 32, 31536000));
  for (size_t j = 0; j < s.picked.size(); ++j) {
    const int32_t i = s.picked[j].second;
    used[static_cast<size_t>(i)] = 1;
    const double r = 3.0 + 1.5 * dot(s.xf.data(), c.factors(i), d) * inv_sqrt_d +
                     0.5 * rng::normal(seed, stream(kRatingNoise), (uc << 32) + static_cast<uint64_t>(i));
    const int rating = static_cast<int>(std::clamp<double>(std::round(r), 1.0, 5.0));
    ts += 60 + static_cast<int64_t>(rng::below(seed, stream(kTime), (uc << 32) + 1 + j, 259200));
    ib += 'u';
    append_int(ib, u);
    ib += ",i";
    append_int(ib, i);
    ib += ',';
    ib += static_cast<char>('0' + rating);
    ib += ',';
    append_int(ib, ts);
    ib += '\n';
  }
  // User features.
  const Observed o = observe(s.xf.data(), d, opt.noise, seed, kUserFeature, uc, 't');
  ub += 'u';
  append_int(ub, u);
  ub += ',';
  append_int(ub, std::llround(std::clamp(38.0 + 10.0 * o.dense0, 16.0, 80.0)));
  ub += ",s";
  append_int(ub, o.segment);
  ub += ',';
  ub += o.tags;
  ub += '\n';
  return static_cast<int64_t>(s.picked.size());
}

// items.csv: the items marked in `any`. Returns their number.
int64_t write_items(AtomicFile& ifile, const Catalog& c, const SynthOptions& opt,
                    const std::vector<uint8_t>& any) {
  int64_t items = 0;
  std::string buf = "item,price,category,tags\n";
  char num[32];
  for (int64_t i = 0; i < c.n_items; ++i) {
    if (!any[static_cast<size_t>(i)]) continue;
    ++items;
    const Observed o = observe(c.factors(i), c.d, opt.noise, opt.seed, kItemFeature, static_cast<uint64_t>(i), 'g');
    buf += 'i';
    append_int(buf, i);
    std::snprintf(num, sizeof num, ",%.2f,c", std::max(1.0, 20.0 + 8.0 * o.dense0));
    buf += num;
    append_int(buf, o.segment);
    buf += ',';
    buf += o.tags;
    buf += '\n';
    if (buf.size() >= (1u << 20)) {
      ifile.write(buf);
      buf.clear();
    }
  }
  ifile.write(buf);
  return items;
}

}  // namespace

SynthSummary write_synthetic(const std::string& dir, const SynthOptions& opt) {
  TOWERREC_CHECK(opt.users >= 1 && opt.users < (int64_t{1} << 31), "synth: users must be in [1, 2^31)");
  TOWERREC_CHECK(opt.items >= 1 && opt.items < (int64_t{1} << 31), "synth: items must be in [1, 2^31)");
  TOWERREC_CHECK(opt.latent_dim >= 1 && opt.latent_dim <= 64, "synth: latent_dim must be in [1, 64]");
  TOWERREC_CHECK(opt.interactions_per_user > 0, "synth: interactions_per_user must be > 0");
  TOWERREC_CHECK(opt.temperature > 0, "synth: temperature must be > 0");
  TOWERREC_CHECK(opt.popularity_skew >= 0, "synth: popularity_skew must be >= 0");
  TOWERREC_CHECK(opt.noise >= 0, "synth: noise must be >= 0");
  make_directories(dir);
  const Catalog cat = build_catalog(opt);
  const int64_t n_users = opt.users;

  AtomicFile inter(dir + "/interactions.csv"), ufile(dir + "/users.csv");
  inter.write(std::string("user,item,rating,timestamp\n"));
  ufile.write(std::string("user,age,segment,interests\n"));

  const int max_threads = std::max(1, omp_get_max_threads());
  std::vector<std::string> ibuf(static_cast<size_t>(max_threads)), ubuf(ibuf.size());
  std::vector<std::vector<uint8_t>> used(ibuf.size());
  std::vector<int64_t> counts(ibuf.size(), 0);
  const int64_t block = 16384;
  for (int64_t b0 = 0; b0 < n_users; b0 += block) {
    const int64_t b1 = std::min(n_users, b0 + block);
    for (auto& s : ibuf) s.clear();
    for (auto& s : ubuf) s.clear();
#pragma omp parallel num_threads(max_threads)
    {
      const int t = omp_get_thread_num(), nt = omp_get_num_threads();
      const int64_t per = (b1 - b0 + nt - 1) / nt;
      const int64_t u0 = b0 + per * t, u1 = std::min(b1, u0 + per);
      std::vector<uint8_t>& us = used[static_cast<size_t>(t)];
      if (us.empty()) us.assign(static_cast<size_t>(cat.n_items), 0);
      UserScratch scratch;
      scratch.xf.resize(static_cast<size_t>(cat.d));
      scratch.pi.resize(static_cast<size_t>(cat.n_buckets));
      for (int64_t u = u0; u < u1; ++u)
        counts[static_cast<size_t>(t)] += generate_user(cat, opt, u, scratch, ibuf[static_cast<size_t>(t)],
                                                        ubuf[static_cast<size_t>(t)], us);
    }
    for (size_t t = 0; t < ibuf.size(); ++t) {
      inter.write(ibuf[t]);
      ufile.write(ubuf[t]);
    }
  }

  SynthSummary sum;
  sum.users = n_users;
  for (int64_t c : counts) sum.interactions += c;
  std::vector<uint8_t> any(static_cast<size_t>(cat.n_items), 0);
  for (const auto& us : used)
    for (size_t i = 0; i < us.size(); ++i) any[i] |= us[i];
  AtomicFile ifile(dir + "/items.csv");
  sum.items = write_items(ifile, cat, opt, any);
  inter.commit();
  ufile.commit();
  ifile.commit();
  return sum;
}

}  // namespace towerrec
