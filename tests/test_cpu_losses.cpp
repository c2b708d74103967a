// The CPU backend's BPR and sampled-softmax losses, L2 normalisation and dropout
// against naive float64 references written here, on fresh random inputs (seed
// printed on failure; fix it with TOWERREC_TEST_SEED). Outputs, scratch included,
// are poisoned with NaN first, so an unwritten element fails. Every backward is
// also checked by central finite differences of a float64 forward.
//
// Tolerances (|got - want| <= abs + rel * |want|), float32 ops vs float64:
//  * bpr_loss: loss abs 1e-6 + rel 1e-5; pair_grad abs 1e-7 * scale * group +
//    rel 1e-5; dU/dV abs 1e-6 + rel 1e-4 (as logistic_loss: scores of order 1..4).
//  * softmax_loss: each gradient element is a sum of terms t whose float32 error
//    (accumulation, plus the logits' own rounding, which moves every softmax
//    probability) scales with the sum of |t|, not with the result (the terms
//    cancel: softmax - onehot sums to zero). So the bound is
//    abs = 1e-7 + 1e-5 * (1 + zmax / 16) * sum|t|, with zmax the largest |logit|,
//    where each |t| = |dlogit| |v| takes |dlogit| at least 0.1 scale / T: for a
//    positive whose probability is near 1, p - 1 cancels in float32 and carries
//    an absolute error of float32's resolution near 1 (seen: d = 1, T = 0.07,
//    a -9.8e-7 gradient computed as -8.7e-7).
//    Loss: abs 1e-6 * (1 + zmax) + rel 1e-5.
//  * l2_normalize: Y and inv_norm rel 2.4e-7 (2 float ulps; both are rounded from
//    double), no absolute slack; the backward abs 1e-6 + rel 1e-5.
//  * finite differences (h = 1e-5 for the losses, 1e-6 for the normalisation):
//    abs 1e-4 + rel 1e-4, as in test_cpu_ops.cpp.
//  * dropout: bit-exact (the mask is recomputed from rng::uniform here).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "kernels/math.h"
#include "tests/test_util.h"
#include "towerrec/backend.h"
#include "towerrec/error.h"
#include "towerrec/rng.h"

namespace towerrec {
namespace {

using testing::all_close;
using testing::download;
using testing::poisoned;
using testing::random_floats;
using testing::random_ints;
using testing::upload;

using testing::bit_identical;
using testing::check_fd;
using testing::central_diff;
using testing::sample_indices;
using testing::to_double;
bool same_bits(float a, float b) { return std::memcmp(&a, &b, sizeof(float)) == 0; }

// |got[i] - want[i]| <= abs + rel_mag * mag[i], mag[i] = sum of |terms| of want[i].
std::string g9(double x) {
  char b[32];
  std::snprintf(b, sizeof b, "%.9g", x);
  return b;
}

::testing::AssertionResult close_by_magnitude(const std::vector<float>& got,
                                              const std::vector<double>& want,
                                              const std::vector<double>& mag, double abs_tol,
                                              double rel_mag) {
  if (got.size() != want.size())
    return ::testing::AssertionFailure() << "size " << got.size() << " != " << want.size();
  int bad = 0;
  std::string msg;
  for (size_t i = 0; i < got.size(); ++i) {
    const double tol = abs_tol + rel_mag * mag[i];
    if (!(std::fabs(got[i] - want[i]) <= tol)) {
      if (bad < 5)
        msg += "\n  [" + std::to_string(i) + "] got " + g9(got[i]) + " want " + g9(want[i]) +
               " tol " + g9(tol) + " (sum |t| " + g9(mag[i]) + ")";
      ++bad;
    }
  }
  if (bad)
    return ::testing::AssertionFailure() << bad << " of " << got.size() << " mismatched" << msg;
  return ::testing::AssertionSuccess();
}

double softplus64(double x) { return x > 0 ? x + std::log1p(std::exp(-x)) : std::log1p(std::exp(x)); }
double sigmoid64(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// ---- pair batches -------------------------------------------------------------

struct HostPairs {
  int32_t n_users = 0, n_items = 0;
  std::vector<int32_t> user, item, uoff, upairs, ioff, ipairs;
  std::vector<float> label;
};

void build_csr(const std::vector<int32_t>& key, int32_t n_keys, std::vector<int32_t>& off,
               std::vector<int32_t>& pairs) {
  off.assign(n_keys + 1, 0);
  for (int32_t k : key) ++off[k + 1];
  for (int32_t i = 0; i < n_keys; ++i) off[i + 1] += off[i];
  pairs.assign(key.size(), -1);
  std::vector<int32_t> pos(off.begin(), off.end() - 1);
  for (size_t p = 0; p < key.size(); ++p) pairs[pos[key[p]]++] = static_cast<int32_t>(p);
}

void finish(HostPairs& h) {
  h.label.assign(h.user.size(), 1.0f);
  build_csr(h.user, h.n_users, h.uoff, h.upairs);
  build_csr(h.item, h.n_items, h.ioff, h.ipairs);
}

// n_groups groups of `group` pairs sharing a user. The last user and item (when
// there are at least two) get no pairs, so their gradient rows must be zeros.
HostPairs bpr_pairs(std::mt19937_64& g, int32_t n_users, int32_t n_items, int64_t n_groups,
                    int group) {
  HostPairs h;
  h.n_users = n_users;
  h.n_items = n_items;
  for (int64_t k = 0; k < n_groups; ++k) {
    const int32_t u = random_ints(g, 1, 0, std::max(0, n_users - 2))[0];
    for (int j = 0; j < group; ++j) {
      h.user.push_back(u);
      h.item.push_back(random_ints(g, 1, 0, std::max(0, n_items - 2))[0]);
    }
  }
  finish(h);
  return h;
}

// Positive pairs for the softmax: the last user gets none (zero dU row); items
// cover the whole range.
HostPairs softmax_pairs(std::mt19937_64& g, int32_t n_users, int32_t n_items, int64_t n_pairs) {
  HostPairs h;
  h.n_users = n_users;
  h.n_items = n_items;
  h.user = random_ints(g, n_pairs, 0, std::max(0, n_users - 2));
  h.item = random_ints(g, n_pairs, 0, n_items - 1);
  finish(h);
  return h;
}

struct DevicePairs {
  DeviceArray<int32_t> user, item, uoff, upairs, ioff, ipairs;
  DeviceArray<float> label;
  PairBatch pb;
  DevicePairs(Backend& be, const HostPairs& h)
      : user(upload(be, h.user)), item(upload(be, h.item)), uoff(upload(be, h.uoff)),
        upairs(upload(be, h.upairs)), ioff(upload(be, h.ioff)), ipairs(upload(be, h.ipairs)),
        label(upload(be, h.label)) {
    pb.n_pairs = static_cast<int64_t>(h.user.size());
    pb.user = user.data();
    pb.item = item.data();
    pb.label = label.data();
    pb.n_users = h.n_users;
    pb.user_offsets = uoff.data();
    pb.user_pairs = upairs.data();
    pb.n_items = h.n_items;
    pb.item_offsets = ioff.data();
    pb.item_pairs = ipairs.data();
  }
};

struct LossOut {
  std::vector<float> dU, dV, g;  // g: pair_grad (bpr) or dLogits (softmax)
  float loss;
};

LossOut run_bpr(Backend& be, const std::vector<float>& U, const std::vector<float>& V, int d,
                const HostPairs& h, int group, float scale) {
  DevicePairs dp(be, h);
  auto dUin = upload(be, U), dVin = upload(be, V);
  auto gU = poisoned(be, int64_t{h.n_users} * d), gV = poisoned(be, int64_t{h.n_items} * d);
  auto pg = poisoned(be, static_cast<int64_t>(h.user.size()));
  auto loss = poisoned(be, 1);
  be.bpr_loss(dUin.data(), dVin.data(), d, dp.pb, group, scale, gU.data(), gV.data(), pg.data(),
              loss.data());
  return {download(be, gU), download(be, gV), download(be, pg), download(be, loss)[0]};
}

LossOut run_softmax(Backend& be, const std::vector<float>& U, const std::vector<float>& V, int d,
                    const HostPairs& h, const std::vector<float>* log_q, float temperature,
                    float scale) {
  DevicePairs dp(be, h);
  const int64_t np = static_cast<int64_t>(h.user.size());
  auto dUin = upload(be, U), dVin = upload(be, V);
  DeviceArray<float> lq;
  if (log_q) lq = upload(be, *log_q);
  auto gU = poisoned(be, int64_t{h.n_users} * d), gV = poisoned(be, int64_t{h.n_items} * d);
  auto logits = poisoned(be, np * h.n_items), rows = poisoned(be, np * d);
  auto loss = poisoned(be, 1);
  be.softmax_loss(dUin.data(), dVin.data(), d, dp.pb, log_q ? lq.data() : nullptr, temperature,
                  scale, gU.data(), gV.data(), logits.data(), rows.data(), loss.data());
  return {download(be, gU), download(be, gV), download(be, logits), download(be, loss)[0]};
}

class CpuLosses : public ::testing::Test {
 protected:
  CpuLosses() : rng_(testing::test_seed() ^ salt()) {}

  static uint64_t salt() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    return std::hash<std::string>{}(std::string(info->test_suite_name()) + "." + info->name());
  }

  std::unique_ptr<Backend> be_ = make_cpu_backend(0);
  Backend& be() { return *be_; }
  std::mt19937_64 rng_;
};


// ---- BPR ----------------------------------------------------------------------------

struct BprRef {
  std::vector<double> g, dU, dV;
  double loss = 0.0;
};

BprRef bpr_ref(const std::vector<double>& U, const std::vector<double>& V, int d,
               const HostPairs& h, int group, double scale) {
  const int64_t np = static_cast<int64_t>(h.user.size());
  BprRef r;
  r.g.assign(np, 0.0);
  r.dU.assign(size_t(h.n_users) * d, 0.0);
  r.dV.assign(size_t(h.n_items) * d, 0.0);
  auto score = [&](int64_t p) {
    double s = 0.0;
    for (int c = 0; c < d; ++c) s += U[h.user[p] * d + c] * V[h.item[p] * d + c];
    return s;
  };
  double sum = 0.0;
  for (int64_t base = 0; base < np; base += group) {
    const double sp = score(base);
    for (int j = 1; j < group; ++j) {
      const double x = sp - score(base + j);
      sum += softplus64(-x);
      const double w = scale * sigmoid64(-x);
      r.g[base + j] = w;
      r.g[base] -= w;
    }
  }
  r.loss = scale * sum;
  for (int64_t p = 0; p < np; ++p)
    for (int c = 0; c < d; ++c) {
      r.dU[h.user[p] * d + c] += r.g[p] * V[h.item[p] * d + c];
      r.dV[h.item[p] * d + c] += r.g[p] * U[h.user[p] * d + c];
    }
  return r;
}

TEST_F(CpuLosses, BprLossMatchesFloat64AndFiniteDifferences) {
  TRACE_SEED();
  struct Shape { int32_t nu, ni; int64_t groups; };
  for (Shape s : {Shape{1, 2, 1}, Shape{3, 5, 7}, Shape{17, 9, 33}, Shape{40, 70, 65},
                  Shape{300, 500, 1500}})
    for (int group : {2, 3, 6})
      for (int d : {1, 5, 17, 64}) {
        SCOPED_TRACE("users=" + std::to_string(s.nu) + " items=" + std::to_string(s.ni) +
                     " groups=" + std::to_string(s.groups) + " group=" + std::to_string(group) +
                     " d=" + std::to_string(d));
        const HostPairs h = bpr_pairs(rng_, s.nu, s.ni, s.groups, group);
        const int64_t np = s.groups * group;
        const float amp = 2.0f / std::sqrt(float(d));  // scores of order 1..4
        const auto U = random_floats(rng_, size_t(s.nu) * d, -amp, amp);
        const auto V = random_floats(rng_, size_t(s.ni) * d, -amp, amp);
        const float scale = 1.0f / float(s.groups);
        const LossOut got = run_bpr(be(), U, V, d, h, group, scale);

        auto Ud = to_double(U), Vd = to_double(V);
        const BprRef want = bpr_ref(Ud, Vd, d, h, group, scale);
        EXPECT_NEAR(got.loss, want.loss, 1e-6 + 1e-5 * std::fabs(want.loss));
        ASSERT_TRUE(all_close(got.g, want.g, 1e-7 * scale * group, 1e-5)) << "pair_grad";
        ASSERT_TRUE(all_close(got.dU, want.dU, 1e-6, 1e-4)) << "dU";
        ASSERT_TRUE(all_close(got.dV, want.dV, 1e-6, 1e-4)) << "dV";
        if (s.nu >= 2) {
          for (int c = 0; c < d; ++c) ASSERT_EQ(got.dU[size_t(s.nu - 1) * d + c], 0.0f);
        }
        for (int c = 0; c < d; ++c) ASSERT_EQ(got.dV[size_t(s.ni - 1) * d + c], 0.0f);

        if (np > 200) continue;
        auto L = [&] { return bpr_ref(Ud, Vd, d, h, group, scale).loss; };
        EXPECT_TRUE(check_fd(rng_, L, Ud, got.dU, 1e-5)) << "dU";
        EXPECT_TRUE(check_fd(rng_, L, Vd, got.dV, 1e-5)) << "dV";
      }
}

TEST_F(CpuLosses, BprLossStableForHugeScores) {
  const double scores[] = {-1e4, -3e3, -1e3, -100, -89, -30, -1, 0, 1, 30, 89, 100, 1e3, 3e3, 1e4};
  for (double sp : scores)
    for (double sn : scores) {
      SCOPED_TRACE("s+=" + std::to_string(sp) + " s-=" + std::to_string(sn));
      // One group (positive, negative) of user 0; d = 2 with U = (1, 1) and
      // V_i = (s_i/2, s_i/2): the float scores are exactly s_+ and s_-.
      HostPairs h;
      h.n_users = 1;
      h.n_items = 2;
      h.user = {0, 0};
      h.item = {0, 1};
      finish(h);
      const std::vector<float> U = {1.0f, 1.0f};
      const std::vector<float> V = {float(sp / 2), float(sp / 2), float(sn / 2), float(sn / 2)};
      const LossOut got = run_bpr(be(), U, V, 2, h, 2, 1.0f);
      const double x = sp - sn;
      const double want = softplus64(-x), w = sigmoid64(-x);
      ASSERT_TRUE(std::isfinite(got.loss));
      EXPECT_NEAR(got.loss, want, 1e-7 + 1e-6 * want);
      for (float v : got.g) ASSERT_TRUE(std::isfinite(v));
      for (float v : got.dU) ASSERT_TRUE(std::isfinite(v));
      for (float v : got.dV) ASSERT_TRUE(std::isfinite(v));
      EXPECT_NEAR(got.g[1], w, 1e-37 + 1e-6 * w);
      EXPECT_NEAR(got.g[0], -w, 1e-37 + 1e-6 * w);
      // dU = g_+ V_+ + g_- V_-, dV_+ = g_+ U, dV_- = g_- U.
      const double wu = w * (sn - sp) / 2;
      EXPECT_NEAR(got.dU[0], wu, 1e-30 + 1e-5 * std::fabs(wu) + 1e-6 * w * std::fabs(sp));
      EXPECT_NEAR(got.dV[0], -w, 1e-37 + 1e-6 * w);
      EXPECT_NEAR(got.dV[2], w, 1e-37 + 1e-6 * w);
    }
}

// ---- sampled softmax -------------------------------------------------------------

struct SoftmaxRef {
  std::vector<double> dU, dV, magU, magV;
  double loss = 0.0, zmax = 0.0;
};

SoftmaxRef softmax_ref(const std::vector<double>& U, const std::vector<double>& V, int d,
                       const HostPairs& h, const std::vector<float>* log_q, double T,
                       double scale, bool grads = true) {
  const int64_t np = static_cast<int64_t>(h.user.size());
  const int32_t ni = h.n_items;
  SoftmaxRef r;
  r.dU.assign(size_t(h.n_users) * d, 0.0);
  r.dV.assign(size_t(ni) * d, 0.0);
  r.magU = r.dU;
  r.magV = r.dV;
  std::vector<double> z(ni);
  double sum = 0.0;
  for (int64_t p = 0; p < np; ++p) {
    const double* u = &U[size_t(h.user[p]) * d];
    for (int32_t j = 0; j < ni; ++j) {
      double s = 0.0;
      for (int c = 0; c < d; ++c) s += u[c] * V[size_t(j) * d + c];
      z[j] = s / T - (log_q ? double((*log_q)[j]) : 0.0);
      r.zmax = std::max(r.zmax, std::fabs(z[j]));
    }
    const double m = *std::max_element(z.begin(), z.end());
    double se = 0.0;
    for (double v : z) se += std::exp(v - m);
    const double lse = m + std::log(se);
    sum += lse - z[h.item[p]];
    if (!grads) continue;
    for (int32_t j = 0; j < ni; ++j) {
      const double gz = scale * (std::exp(z[j] - lse) - (j == h.item[p] ? 1.0 : 0.0)) / T;
      for (int c = 0; c < d; ++c) {
        const double tu = gz * V[size_t(j) * d + c], tv = gz * u[c];
        r.dU[size_t(h.user[p]) * d + c] += tu;
        r.dV[size_t(j) * d + c] += tv;
        // Term magnitudes, with |gz| floored at 0.1 scale / T: a probability
        // near 1 minus the one-hot cancels in float32, so gz carries an
        // absolute error of float32's resolution near 1, not a relative one.
        const double gm = std::fabs(gz) + 0.1 * scale / T;
        r.magU[size_t(h.user[p]) * d + c] += gm * std::fabs(V[size_t(j) * d + c]);
        r.magV[size_t(j) * d + c] += gm * std::fabs(u[c]);
      }
    }
  }
  r.loss = scale * sum;
  return r;
}

TEST_F(CpuLosses, SoftmaxLossMatchesFloat64AndFiniteDifferences) {
  TRACE_SEED();
  struct Shape { int32_t nu, ni; int64_t np; };
  for (Shape s : {Shape{1, 1, 1}, Shape{3, 5, 7}, Shape{17, 9, 33}, Shape{40, 70, 129},
                  Shape{200, 301, 1000}})
    for (int d : {1, 5, 17, 64})
      for (float T : {1.0f, 0.07f})
        for (bool with_q : {false, true}) {
          SCOPED_TRACE("users=" + std::to_string(s.nu) + " items=" + std::to_string(s.ni) +
                       " pairs=" + std::to_string(s.np) + " d=" + std::to_string(d) +
                       " T=" + std::to_string(T) + " log_q=" + (with_q ? "yes" : "null"));
          const HostPairs h = softmax_pairs(rng_, s.nu, s.ni, s.np);
          const float amp = 1.5f / std::sqrt(float(d));  // scores of order 1..2
          const auto U = random_floats(rng_, size_t(s.nu) * d, -amp, amp);
          const auto V = random_floats(rng_, size_t(s.ni) * d, -amp, amp);
          const auto log_q = random_floats(rng_, s.ni, -9.0f, -1.0f);
          const std::vector<float>* lq = with_q ? &log_q : nullptr;
          const float scale = 1.0f / float(s.np);
          const LossOut got = run_softmax(be(), U, V, d, h, lq, T, scale);

          auto Ud = to_double(U), Vd = to_double(V);
          const SoftmaxRef want = softmax_ref(Ud, Vd, d, h, lq, T, scale);
          const double rel_mag = 1e-5 * (1.0 + want.zmax / 16.0);
          EXPECT_NEAR(got.loss, want.loss, 1e-6 * (1.0 + want.zmax) + 1e-5 * std::fabs(want.loss));
          ASSERT_TRUE(close_by_magnitude(got.dU, want.dU, want.magU, 1e-7, rel_mag)) << "dU";
          ASSERT_TRUE(close_by_magnitude(got.dV, want.dV, want.magV, 1e-7, rel_mag)) << "dV";
          for (float x : got.g) ASSERT_TRUE(std::isfinite(x)) << "logits scratch";
          if (s.nu >= 2) {
            for (int c = 0; c < d; ++c) ASSERT_EQ(got.dU[size_t(s.nu - 1) * d + c], 0.0f);
          }

          if (s.np > 200) continue;
          auto L = [&] { return softmax_ref(Ud, Vd, d, h, lq, T, scale, false).loss; };
          EXPECT_TRUE(check_fd(rng_, L, Ud, got.dU, 1e-5)) << "dU";
          EXPECT_TRUE(check_fd(rng_, L, Vd, got.dV, 1e-5)) << "dV";
        }
}

// The softmax's dLogits scratch holds scale * (softmax - onehot) / T: each row
// sums to zero and is negative only at the positive.
TEST_F(CpuLosses, SoftmaxLossLeavesLogitGradientsInScratch) {
  TRACE_SEED();
  const int d = 8;
  const HostPairs h = softmax_pairs(rng_, 10, 13, 21);
  const auto U = random_floats(rng_, 10 * d), V = random_floats(rng_, 13 * d);
  const float T = 0.5f, scale = 0.25f;
  const LossOut got = run_softmax(be(), U, V, d, h, nullptr, T, scale);
  for (size_t p = 0; p < h.user.size(); ++p) {
    double s = 0.0;
    for (int j = 0; j < 13; ++j) {
      const float g = got.g[p * 13 + j];
      s += g;
      if (j == h.item[p]) {
        EXPECT_LT(g, 0.0f);
        EXPECT_GT(g, -scale / T);
      } else {
        EXPECT_GT(g, 0.0f);
      }
    }
    EXPECT_NEAR(s, 0.0, 1e-6);
  }
}

TEST_F(CpuLosses, SoftmaxLossStableForLargeLogits) {
  // One user with U = (1, 1) and items V_j = (s_j/2, s_j/2): the float logits are
  // exactly s_j / T (T a power of two) minus the given log_q.
  struct Case { std::vector<double> s; int pos; float T; };
  const Case cases[] = {
      {{1000, -1000, 999, 0}, 0, 1.0f},     // positive dominates: loss ~ e^-1
      {{1000, -1000, 999, 0}, 1, 1.0f},     // positive far below: loss ~ 2000
      {{-1000, -1000, -1000}, 2, 1.0f},     // all equal and very negative: log 3
      {{500, -500, 250, 499.5}, 3, 0.5f},   // logits up to 1e3 through the temperature
      {{1e3, 1e3 - 1e-3 * 1024, -1e3}, 1, 1.0f}};
  for (const Case& c : cases)
    for (bool with_q : {false, true}) {
      SCOPED_TRACE("pos=" + std::to_string(c.pos) + " T=" + std::to_string(c.T) +
                   " log_q=" + (with_q ? "yes" : "null"));
      HostPairs h;
      h.n_users = 1;
      h.n_items = static_cast<int32_t>(c.s.size());
      h.user = {0};
      h.item = {c.pos};
      finish(h);
      const std::vector<float> U = {1.0f, 1.0f};
      std::vector<float> V, log_q;
      for (size_t j = 0; j < c.s.size(); ++j) {
        V.push_back(float(c.s[j] / 2));
        V.push_back(float(c.s[j] / 2));
        log_q.push_back(-0.5f * float(j + 1));
      }
      const std::vector<float>* lq = with_q ? &log_q : nullptr;
      const LossOut got = run_softmax(be(), U, V, 2, h, lq, c.T, 1.0f);
      const SoftmaxRef want = softmax_ref(to_double(U), to_double(V), 2, h, lq, c.T, 1.0);
      ASSERT_TRUE(std::isfinite(got.loss));
      for (float x : got.dU) ASSERT_TRUE(std::isfinite(x));
      for (float x : got.dV) ASSERT_TRUE(std::isfinite(x));
      EXPECT_NEAR(got.loss, want.loss, 1e-6 + 2e-6 * std::fabs(want.loss));
      // Gradient terms are at most |V| / T ~ 1e3: float32 rounding of the
      // probabilities (rel 1e-7) times that.
      ASSERT_TRUE(close_by_magnitude(got.dU, want.dU, want.magU, 1e-6, 1e-5)) << "dU";
      ASSERT_TRUE(close_by_magnitude(got.dV, want.dV, want.magV, 1e-6, 1e-5)) << "dV";
    }
}

// log_q = null is no correction: bit-identical to an all-zero log_q. A constant
// log_q shifts every logit of a row equally, which the softmax ignores.
TEST_F(CpuLosses, SoftmaxLogQNullIsZeroCorrection) {
  TRACE_SEED();
  const int d = 16;
  const HostPairs h = softmax_pairs(rng_, 30, 50, 90);
  const auto U = random_floats(rng_, 30 * d), V = random_floats(rng_, 50 * d);
  const std::vector<float> zeros(50, 0.0f), constant(50, -3.25f);
  const LossOut a = run_softmax(be(), U, V, d, h, nullptr, 0.2f, 1.0f / 90);
  const LossOut b = run_softmax(be(), U, V, d, h, &zeros, 0.2f, 1.0f / 90);
  const LossOut c = run_softmax(be(), U, V, d, h, &constant, 0.2f, 1.0f / 90);
  EXPECT_TRUE(bit_identical(a.dU, b.dU) && bit_identical(a.dV, b.dV) && bit_identical(a.g, b.g));
  EXPECT_TRUE(same_bits(a.loss, b.loss));
  EXPECT_NEAR(c.loss, a.loss, 1e-5 * std::fabs(a.loss));
  EXPECT_TRUE(all_close(c.dU, to_double(a.dU), 1e-6, 1e-4));
  EXPECT_TRUE(all_close(c.dV, to_double(a.dV), 1e-6, 1e-4));
  // A non-constant log_q changes the result.
  const auto q = random_floats(rng_, 50, -8.0f, -1.0f);
  const LossOut e = run_softmax(be(), U, V, d, h, &q, 0.2f, 1.0f / 90);
  EXPECT_NE(e.loss, a.loss);
}

// ---- L2 normalisation -----------------------------------------------------------

// Rows of random values at different scales, including a zero row, a row of
// tiny values (whose squares underflow in float32) and one of huge values.
std::vector<float> normalize_inputs(std::mt19937_64& g, int64_t n, int d) {
  auto X = random_floats(g, n * d);
  for (int64_t r = 0; r < n; ++r) {
    const float f = r % 5 == 1 ? 1e-25f : r % 5 == 2 ? 1e25f : r % 5 == 3 ? 1e-3f : 1.0f;
    for (int c = 0; c < d; ++c) X[r * d + c] *= f;
  }
  if (n > 4)
    for (int c = 0; c < d; ++c) X[4 * d + c] = 0.0f;
  return X;
}

TEST_F(CpuLosses, L2NormalizeMatchesFloat64) {
  TRACE_SEED();
  for (int64_t n : {1, 7, 33, 1029})
    for (int d : {1, 5, 17, 64, 130})
      for (bool in_place : {false, true}) {
        SCOPED_TRACE("n=" + std::to_string(n) + " d=" + std::to_string(d) +
                     (in_place ? " in place" : ""));
        const auto X = normalize_inputs(rng_, n, d);
        auto dX = upload(be(), X);
        auto dY = poisoned(be(), n * d), inv = poisoned(be(), n);
        float* y = in_place ? dX.data() : dY.data();
        be().l2_normalize(dX.data(), n, d, y, inv.data());
        const auto Y = in_place ? download(be(), dX) : download(be(), dY);
        const auto I = download(be(), inv);
        std::vector<double> wY(n * d), wI(n);
        for (int64_t r = 0; r < n; ++r) {
          double ss = 0.0;
          for (int c = 0; c < d; ++c) ss += double(X[r * d + c]) * X[r * d + c];
          const double norm = std::max(std::sqrt(ss), 1e-12);
          wI[r] = 1.0 / norm;
          for (int c = 0; c < d; ++c) wY[r * d + c] = X[r * d + c] / norm;
        }
        ASSERT_TRUE(all_close(Y, wY, 0.0, 2.4e-7)) << "Y";
        ASSERT_TRUE(all_close(I, wI, 0.0, 2.4e-7)) << "inv_norm";
        if (n > 4) {
          EXPECT_EQ(I[4], 1e12f);
          for (int c = 0; c < d; ++c) EXPECT_EQ(Y[4 * d + c], 0.0f);
        }
      }
}

TEST_F(CpuLosses, L2NormalizeBackwardMatchesFloat64AndFiniteDifferences) {
  TRACE_SEED();
  for (int64_t n : {1, 7, 33, 1029})
    for (int d : {1, 5, 17, 64, 130}) {
      SCOPED_TRACE("n=" + std::to_string(n) + " d=" + std::to_string(d));
      const auto X = random_floats(rng_, n * d, -1.0f, 1.0f);
      const auto G = random_floats(rng_, n * d);
      auto dX = upload(be(), X);
      auto dY = poisoned(be(), n * d), inv = poisoned(be(), n);
      be().l2_normalize(dX.data(), n, d, dY.data(), inv.data());
      auto dG = upload(be(), G);
      auto out = poisoned(be(), n * d);
      be().l2_normalize_backward(dY.data(), inv.data(), dG.data(), n, d, out.data());
      const auto got = download(be(), out);
      // In place (dX aliasing dY) gives the same bits.
      be().l2_normalize_backward(dY.data(), inv.data(), dG.data(), n, d, dG.data());
      ASSERT_TRUE(bit_identical(download(be(), dG), got)) << "in place";

      // Exact Jacobian-vector product from X in float64.
      std::vector<double> want(n * d);
      for (int64_t r = 0; r < n; ++r) {
        double ss = 0.0, dp = 0.0;
        for (int c = 0; c < d; ++c) ss += double(X[r * d + c]) * X[r * d + c];
        const double norm = std::max(std::sqrt(ss), 1e-12);
        for (int c = 0; c < d; ++c) dp += double(G[r * d + c]) * X[r * d + c] / norm;
        for (int c = 0; c < d; ++c)
          want[r * d + c] = (G[r * d + c] - dp * X[r * d + c] / norm) / norm;
      }
      // Rows with small norms amplify float32 rounding by 1 / ||x||.
      std::vector<double> mag(n * d);
      for (int64_t r = 0; r < n; ++r) {
        double ss = 0.0;
        for (int c = 0; c < d; ++c) ss += double(X[r * d + c]) * X[r * d + c];
        for (int c = 0; c < d; ++c) mag[r * d + c] = (1.0 + std::sqrt(double(d))) / std::sqrt(ss);
      }
      ASSERT_TRUE(close_by_magnitude(got, want, mag, 1e-6, 1e-6));

      if (n * d > 2000) continue;
      auto Xd = to_double(X);
      const auto Gd = to_double(G);
      auto L = [&] {
        double s = 0.0;
        for (int64_t r = 0; r < n; ++r) {
          double ss = 0.0;
          for (int c = 0; c < d; ++c) ss += Xd[r * d + c] * Xd[r * d + c];
          const double norm = std::max(std::sqrt(ss), 1e-12);
          for (int c = 0; c < d; ++c) s += Gd[r * d + c] * Xd[r * d + c] / norm;
        }
        return s;
      };
      // d = 1: y = sign(x) is flat, the gradient is exactly zero.
      EXPECT_TRUE(check_fd(rng_, L, Xd, got, 1e-6, 60));
    }
}

// ---- dropout ----------------------------------------------------------------------

TEST_F(CpuLosses, DropoutReproducesDocumentedMask) {
  TRACE_SEED();
  for (int64_t n : {1, 7, 1000, 100003})
    for (float p : {0.1f, 0.5f, 0.9f}) {
      SCOPED_TRACE("n=" + std::to_string(n) + " p=" + std::to_string(p));
      const uint64_t seed = rng_(), offset = rng_() >> 8;
      // Values in +-[0.5, 1]: never zero, so a zero marks a dropped element.
      auto X = random_floats(rng_, n, 0.5f, 1.0f);
      for (int64_t j = 0; j < n; j += 2) X[j] = -X[j];
      auto G = random_floats(rng_, n, 0.5f, 1.0f);
      auto dx = upload(be(), X), dg = upload(be(), G);
      be().dropout(dx.data(), n, p, seed, offset);
      be().dropout(dg.data(), n, p, seed, offset);  // backward: the same mask
      const auto x = download(be(), dx), g = download(be(), dg);
      for (int64_t j = 0; j < n; ++j) {
        const bool keep = rng::uniform(seed, rng::kDropout, offset + uint64_t(j)) >= p;
        ASSERT_TRUE(same_bits(x[j], keep ? X[j] / (1.0f - p) : 0.0f)) << "j=" << j;
        ASSERT_TRUE(same_bits(g[j], keep ? G[j] / (1.0f - p) : 0.0f)) << "j=" << j;
        ASSERT_EQ(x[j] == 0.0f, g[j] == 0.0f) << "j=" << j;
      }
      // Splitting the range and advancing the offset gives the same result.
      if (n >= 7) {
        const int64_t half = n / 3;
        auto dy = upload(be(), X);
        be().dropout(dy.data(), half, p, seed, offset);
        be().dropout(dy.data() + half, n - half, p, seed, offset + uint64_t(half));
        ASSERT_TRUE(bit_identical(download(be(), dy), x)) << "split";
      }
    }
}

TEST_F(CpuLosses, DropoutKeepRateAndIdentity) {
  TRACE_SEED();
  const int64_t n = 1000000;
  const std::vector<float> ones(n, 1.0f);
  for (float p : {0.05f, 0.3f, 0.5f, 0.8f}) {
    SCOPED_TRACE("p=" + std::to_string(p));
    auto x = upload(be(), ones);
    be().dropout(x.data(), n, p, rng_(), rng_());
    const auto y = download(be(), x);
    int64_t kept = 0;
    double mean = 0.0;
    for (float v : y) {
      kept += v != 0.0f;
      mean += v;
    }
    const double rate = double(kept) / n, sigma = std::sqrt(p * (1.0 - p) / n);
    EXPECT_NEAR(rate, 1.0 - p, 6 * sigma);
    // Inverted dropout keeps the expectation: mean = rate / (1 - p).
    EXPECT_NEAR(mean / n, 1.0, 6 * sigma / (1.0 - p) + 1e-6);
    // A different offset gives a different mask.
    auto z = upload(be(), ones);
    be().dropout(z.data(), n, p, 7, 0);
    auto w = upload(be(), ones);
    be().dropout(w.data(), n, p, 7, uint64_t(n));
    EXPECT_FALSE(bit_identical(download(be(), z), download(be(), w)));
  }
  // p = 0: the identity, bit for bit.
  const auto X = random_floats(rng_, 4097);
  auto x = upload(be(), X);
  be().dropout(x.data(), 4097, 0.0f, 11, 12);
  EXPECT_TRUE(bit_identical(download(be(), x), X));
  // p = 1: everything dropped.
  be().dropout(x.data(), 4097, 1.0f, 11, 12);
  for (float v : download(be(), x)) ASSERT_EQ(v, 0.0f);
}

// ---- determinism, edge cases, bad arguments ---------------------------------------

TEST_F(CpuLosses, IndependentOfThreadCount) {
  TRACE_SEED();
  auto one = make_cpu_backend(1), three = make_cpu_backend(3);
  {
    const int d = 32;
    const HostPairs h = bpr_pairs(rng_, 500, 700, 5000, 4);
    const auto U = random_floats(rng_, 500 * d), V = random_floats(rng_, 700 * d);
    const LossOut a = run_bpr(*one, U, V, d, h, 4, 1e-3f), b = run_bpr(*three, U, V, d, h, 4, 1e-3f);
    EXPECT_TRUE(bit_identical(a.dU, b.dU) && bit_identical(a.dV, b.dV) && bit_identical(a.g, b.g))
        << "bpr_loss";
    EXPECT_TRUE(same_bits(a.loss, b.loss)) << "bpr_loss";
  }
  {
    const int64_t n = 3001;
    const int d = 64;
    const auto X = random_floats(rng_, n * d), G = random_floats(rng_, n * d);
    auto run = [&](Backend& be) {
      auto x = upload(be, X), g = upload(be, G);
      auto y = poisoned(be, n * d), inv = poisoned(be, n), dx = poisoned(be, n * d);
      be.l2_normalize(x.data(), n, d, y.data(), inv.data());
      be.l2_normalize_backward(y.data(), inv.data(), g.data(), n, d, dx.data());
      be.dropout(g.data(), n * d, 0.3f, 99, 5);
      std::vector<float> all = download(be, y);
      for (auto* a : {&inv, &dx, &g}) {
        const auto v = download(be, *a);
        all.insert(all.end(), v.begin(), v.end());
      }
      return all;
    };
    EXPECT_TRUE(bit_identical(run(*one), run(*three))) << "l2_normalize / dropout";
  }
}

// softmax_loss runs three sgemm calls, deterministic for a fixed thread count
// (not across thread counts): repeated runs on one backend are bit-identical.
TEST_F(CpuLosses, SoftmaxRepeatedRunsAreBitIdentical) {
  TRACE_SEED();
  const int d = 24;
  const HostPairs h = softmax_pairs(rng_, 300, 400, 1500);
  const auto U = random_floats(rng_, 300 * d), V = random_floats(rng_, 400 * d);
  const auto q = random_floats(rng_, 400, -8.0f, -1.0f);
  const LossOut a = run_softmax(be(), U, V, d, h, &q, 0.1f, 1e-3f);
  const LossOut b = run_softmax(be(), U, V, d, h, &q, 0.1f, 1e-3f);
  EXPECT_TRUE(bit_identical(a.dU, b.dU) && bit_identical(a.dV, b.dV) && bit_identical(a.g, b.g));
  EXPECT_TRUE(same_bits(a.loss, b.loss));
}

TEST_F(CpuLosses, EmptyBatchesGiveZeroLossAndGradients) {
  HostPairs h;
  h.n_users = 3;
  h.n_items = 4;
  finish(h);
  const auto U = random_floats(rng_, 3 * 5), V = random_floats(rng_, 4 * 5);
  for (const LossOut& got : {run_bpr(be(), U, V, 5, h, 2, 1.0f),
                             run_softmax(be(), U, V, 5, h, nullptr, 1.0f, 1.0f)}) {
    EXPECT_EQ(got.loss, 0.0f);
    for (float x : got.dU) EXPECT_EQ(x, 0.0f);
    for (float x : got.dV) EXPECT_EQ(x, 0.0f);
  }
}

TEST_F(CpuLosses, BadArgumentsThrow) {
  const auto U = random_floats(rng_, 2 * 3), V = random_floats(rng_, 4 * 3);
  HostPairs odd;  // 3 pairs: not a multiple of group 2
  odd.n_users = 2;
  odd.n_items = 4;
  odd.user = {0, 0, 0};
  odd.item = {0, 1, 2};
  finish(odd);
  EXPECT_THROW(run_bpr(be(), U, V, 3, odd, 2, 1.0f), Error);
  EXPECT_THROW(run_bpr(be(), U, V, 3, odd, 1, 1.0f), Error);
  HostPairs mixed;  // one group of two users
  mixed.n_users = 2;
  mixed.n_items = 4;
  mixed.user = {0, 1};
  mixed.item = {0, 1};
  finish(mixed);
  EXPECT_THROW(run_bpr(be(), U, V, 3, mixed, 2, 1.0f), Error);
  EXPECT_THROW(run_softmax(be(), U, V, 3, mixed, nullptr, 0.0f, 1.0f), Error);
  EXPECT_THROW(run_softmax(be(), U, V, 3, mixed, nullptr, -1.0f, 1.0f), Error);
  auto x = poisoned(be(), 8);
  EXPECT_THROW(be().dropout(x.data(), 8, -0.1f, 1, 0), Error);
  EXPECT_THROW(be().dropout(x.data(), 8, 1.5f, 1, 0), Error);
  EXPECT_THROW(be().dropout(x.data(), 8, std::numeric_limits<float>::quiet_NaN(), 1, 0), Error);
  EXPECT_THROW(be().l2_normalize(x.data(), 2, 0, x.data(), x.data()), Error);
}

}  // namespace
}  // namespace towerrec
