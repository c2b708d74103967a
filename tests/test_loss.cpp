// The loss family (logistic_loss, bpr_loss, softmax_loss) on every backend
// against the float64 reference kernels/loss/ref.h, on fresh random inputs (seed
// printed on failure; fix it with TOWERREC_TEST_SEED). Outputs, scratch
// included, are poisoned with NaN first, so an unwritten element fails. Every
// backward is also checked by central finite differences of the reference.
//
// Tolerances (|got - want| <= abs + rel * |want|), float32 ops vs float64:
//  * logistic_loss: loss abs 1e-6 + rel 1e-5; pair_grad abs 1e-7 + rel 1e-5;
//    dU/dV abs 1e-6 + rel 1e-4 (scores of order 1..4).
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
//  * finite differences (h = 1e-5): abs 1e-4 + rel 1e-4.
//
// CUDA against the CPU backend (cuda_vs_cpu below):
//   logistic loss: loss 1e-5 rel; pair gradients 1e-5 abs + 1e-4 rel; dU/dV
//           1e-5 * (pairs in the row + 1) abs + 1e-4 rel
//   BPR: as logistic, scaled by the group size
//   softmax: loss and gradients allow d ulps of each logit (GEMMs in different
//           orders) plus one ulp per term of each gradient reduction
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/math.h"
#include "kernels/loss/ref.h"
#include "tests/backend_fixture.h"
#include "tests/compare.h"
#include "tests/cuda_vs_cpu.h"
#include "tests/op_suite.h"
#include "tests/pair_batch.h"
#include "tests/test_util.h"
#include "tests/topk_special.h"
#include "towerrec/backend.h"
#include "towerrec/error.h"
#include "towerrec/rng.h"
#if TOWERREC_HAVE_CUDA
#include "kernels/cuda/cuda_testing.h"
#endif

namespace towerrec {
namespace {

using namespace testing::op_suite;  // all_close, upload, kNaN, same_bits, ...

class LossOps : public testing::OpsTest {};
TOWERREC_INSTANTIATE_BACKENDS(LossOps);
class CpuOps : public testing::CpuOpsTest {};

namespace logistic {

// ---- logistic loss -------------------------------------------------------------

using testing::DevicePairs;
using testing::HostPairs;

// Pairs over n_users x n_items; the last user and last item (when there are at
// least two) get no pairs, so their gradient rows must come out as zeros.
HostPairs random_pairs(std::mt19937_64& g, int32_t n_users, int32_t n_items, int64_t n_pairs) {
  HostPairs h;
  h.n_users = n_users;
  h.n_items = n_items;
  h.user = random_ints(g, n_pairs, 0, std::max(0, n_users - 2));
  h.item = random_ints(g, n_pairs, 0, std::max(0, n_items - 2));
  for (auto y : random_ints(g, n_pairs, 0, 1)) h.label.push_back(y ? 1.0f : -1.0f);
  build_pair_csr(h.user, n_users, h.uoff, h.upairs);
  build_pair_csr(h.item, n_items, h.ioff, h.ipairs);
  return h;
}


// softplus in float64, written independently of kernels/math.h.

struct LossOut {
  std::vector<float> dU, dV, g;
  float loss;
};

LossOut run_loss(Backend& be, const std::vector<float>& U, const std::vector<float>& V, int d,
                 const HostPairs& h, float scale) {
  DevicePairs dp(be, h);
  auto dUin = upload(be, U), dVin = upload(be, V);
  auto gU = poisoned(be, int64_t{h.n_users} * d), gV = poisoned(be, int64_t{h.n_items} * d);
  auto pg = poisoned(be, static_cast<int64_t>(h.user.size()));
  auto loss = poisoned(be, 1);
  be.logistic_loss(dUin.data(), dVin.data(), d, dp.pb, scale, gU.data(), gV.data(), pg.data(),
                   loss.data());
  return {download(be, gU), download(be, gV), download(be, pg), download(be, loss)[0]};
}

TEST_P(LossOps, LogisticLossMatchesFloat64AndFiniteDifferences) {
  TRACE_SEED();
  struct Shape { int32_t nu, ni; int64_t np; };
  for (Shape s : {Shape{1, 1, 1}, Shape{3, 5, 7}, Shape{17, 9, 33}, Shape{40, 70, 129},
                  Shape{300, 500, 5000}})
    for (int d : {1, 5, 17, 64}) {
      SCOPED_TRACE("users=" + std::to_string(s.nu) + " items=" + std::to_string(s.ni) +
                   " pairs=" + std::to_string(s.np) + " d=" + std::to_string(d));
      const HostPairs h = random_pairs(rng_, s.nu, s.ni, s.np);
      const float amp = 2.0f / std::sqrt(float(d));  // scores of order 1..4
      const auto U = random_floats(rng_, size_t(s.nu) * d, -amp, amp);
      const auto V = random_floats(rng_, size_t(s.ni) * d, -amp, amp);
      const float scale = 1.0f / float(s.np);
      const LossOut got = run_loss(be(), U, V, d, h, scale);

      auto Ud = to_double(U), Vd = to_double(V);
      auto L = [&] { return ref::logistic_loss(Ud, Vd, d, h, scale, false).loss; };
      const ref::PairLossRef want = ref::logistic_loss(Ud, Vd, d, h, scale);
      const std::vector<double>&wg = want.g, &wU = want.dU, &wV = want.dV;
      const double wl = want.loss;
      EXPECT_NEAR(got.loss, wl, 1e-6 + 1e-5 * std::fabs(wl));
      ASSERT_TRUE(all_close(got.g, wg, 1e-7, 1e-5)) << "pair_grad";
      ASSERT_TRUE(all_close(got.dU, wU, 1e-6, 1e-4)) << "dU";
      ASSERT_TRUE(all_close(got.dV, wV, 1e-6, 1e-4)) << "dV";
      // Rows without pairs are exactly zero.
      if (s.nu >= 2) {
        for (int c = 0; c < d; ++c) ASSERT_EQ(got.dU[size_t(s.nu - 1) * d + c], 0.0f);
      }
      if (s.ni >= 2) {
        for (int c = 0; c < d; ++c) ASSERT_EQ(got.dV[size_t(s.ni - 1) * d + c], 0.0f);
      }

      if (s.np > 200) continue;
      EXPECT_TRUE(check_fd(rng_, L, Ud, got.dU, 1e-5)) << "dU";
      EXPECT_TRUE(check_fd(rng_, L, Vd, got.dV, 1e-5)) << "dV";
    }
}

TEST_P(LossOps, LogisticLossStableForHugeScores) {
  const double scores[] = {-1e4, -3e3, -1e3, -200, -100, -89, -88, -30, -17, -1, -1e-3, 0,
                           1e-3, 1,    17,   30,   88,   89,  100,  200, 1e3, 3e3, 1e4};
  for (double s : scores)
    for (float y : {1.0f, -1.0f}) {
      SCOPED_TRACE("s=" + std::to_string(s) + " y=" + std::to_string(y));
      HostPairs h;
      h.n_users = h.n_items = 1;
      h.user = {0};
      h.item = {0};
      h.label = {y};
      build_pair_csr(h.user, 1, h.uoff, h.upairs);
      build_pair_csr(h.item, 1, h.ioff, h.ipairs);
      // d = 2 with U = (s/2, s/2), V = (1, 1): the float score is exactly s.
      const std::vector<float> U = {float(s / 2), float(s / 2)}, V = {1.0f, 1.0f};
      const LossOut got = run_loss(be(), U, V, 2, h, 1.0f);
      const double sf = double(float(s / 2)) * 2;
      const double want = ref::softplus64(-double(y) * sf);
      ASSERT_TRUE(std::isfinite(got.loss));
      EXPECT_NEAR(got.loss, want, 1e-7 + 1e-6 * want);
      const double wg = -double(y) / (1.0 + std::exp(double(y) * sf));
      ASSERT_TRUE(std::isfinite(got.g[0]));
      EXPECT_NEAR(got.g[0], wg, 1e-7 + 1e-5 * std::fabs(wg));
      for (float x : got.dU) ASSERT_TRUE(std::isfinite(x));
      for (float x : got.dV) ASSERT_TRUE(std::isfinite(x));
      EXPECT_NEAR(got.dU[0], wg, 1e-7 + 1e-5 * std::fabs(wg));
      EXPECT_NEAR(got.dV[0], wg * float(s / 2), 1e-7 + 1e-5 * std::fabs(wg * s / 2));
    }
}

TEST_F(CpuOps, LogisticLossIndependentOfThreadCount) {
  TRACE_SEED();
  const int d = 32;
  const HostPairs h = random_pairs(rng_, 500, 700, 20000);
  const auto U = random_floats(rng_, 500 * d), V = random_floats(rng_, 700 * d);
  auto one = make_cpu_backend(1), three = make_cpu_backend(3);
  const LossOut a = run_loss(*one, U, V, d, h, 1e-3f), b = run_loss(*three, U, V, d, h, 1e-3f);
  const LossOut c = run_loss(*three, U, V, d, h, 1e-3f);
  EXPECT_TRUE(bit_identical(a.dU, b.dU) && bit_identical(a.dV, b.dV) && bit_identical(a.g, b.g));
  EXPECT_EQ(std::memcmp(&a.loss, &b.loss, sizeof(float)), 0);
  EXPECT_TRUE(bit_identical(b.dU, c.dU) && bit_identical(b.dV, c.dV));
  EXPECT_EQ(std::memcmp(&b.loss, &c.loss, sizeof(float)), 0);
}

TEST_P(LossOps, LogisticRepeatedRunsAreBitIdentical) {
  TRACE_SEED();
  const HostPairs h = random_pairs(rng_, 300, 400, 9000);
  const auto U = random_floats(rng_, 300 * 24), V = random_floats(rng_, 400 * 24);
  const LossOut l1 = run_loss(be(), U, V, 24, h, 0.01f), l2 = run_loss(be(), U, V, 24, h, 0.01f);
  EXPECT_TRUE(bit_identical(l1.dU, l2.dU) && bit_identical(l1.dV, l2.dV) &&
              bit_identical(l1.g, l2.g) && l1.loss == l2.loss)
      << "logistic_loss";
}


}  // namespace logistic

namespace ranking {

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

// ---- pair batches -------------------------------------------------------------

using testing::DevicePairs;
using testing::HostPairs;

void finish(HostPairs& h) {
  h.label.assign(h.user.size(), 1.0f);
  build_pair_csr(h.user, h.n_users, h.uoff, h.upairs);
  build_pair_csr(h.item, h.n_items, h.ioff, h.ipairs);
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
                    float scale, int64_t tile = 0) {
  DevicePairs dp(be, h);
  const int64_t np = static_cast<int64_t>(h.user.size());
  auto dUin = upload(be, U), dVin = upload(be, V);
  DeviceArray<float> lq;
  if (log_q) lq = upload(be, *log_q);
  auto gU = poisoned(be, int64_t{h.n_users} * d), gV = poisoned(be, int64_t{h.n_items} * d);
  // Exactly the scratch the contract asks for, so an overrun shows under ASan.
  const bool tiled = tile > 0 && tile < h.n_items;
  auto logits = poisoned(be, np * (tiled ? tile : h.n_items)), rows = poisoned(be, np * d * (tiled ? 2 : 1));
  auto loss = poisoned(be, 1);
  be.softmax_loss(dUin.data(), dVin.data(), d, dp.pb, log_q ? lq.data() : nullptr, temperature,
                  scale, gU.data(), gV.data(), logits.data(), rows.data(), loss.data(), tile);
  return {download(be, gU), download(be, gV), download(be, logits), download(be, loss)[0]};
}

LossOut run_ccl(Backend& be, const std::vector<float>& U, const std::vector<float>& V, int d,
                const HostPairs& h, float margin, float weight, float scale, int64_t tile = 0,
                const std::vector<float>* log_q = nullptr) {
  DevicePairs dp(be, h);
  const int64_t np = static_cast<int64_t>(h.user.size());
  auto dUin = upload(be, U), dVin = upload(be, V);
  DeviceArray<float> lq;
  if (log_q) lq = upload(be, *log_q);
  auto gU = poisoned(be, int64_t{h.n_users} * d), gV = poisoned(be, int64_t{h.n_items} * d);
  const bool tiled = tile > 0 && tile < h.n_items;
  auto logits = poisoned(be, np * (tiled ? tile : h.n_items)), rows = poisoned(be, np * d * (tiled ? 2 : 1));
  auto loss = poisoned(be, 1);
  be.ccl_loss(dUin.data(), dVin.data(), d, dp.pb, log_q ? lq.data() : nullptr, margin, weight,
              scale, gU.data(), gV.data(), logits.data(), rows.data(), loss.data(), tile);
  return {download(be, gU), download(be, gV), download(be, logits), download(be, loss)[0]};
}

// ---- BPR ----------------------------------------------------------------------------


TEST_P(LossOps, BprLossMatchesFloat64AndFiniteDifferences) {
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
        const ref::PairLossRef want = ref::bpr_loss(Ud, Vd, d, h, group, scale);
        EXPECT_NEAR(got.loss, want.loss, 1e-6 + 1e-5 * std::fabs(want.loss));
        ASSERT_TRUE(all_close(got.g, want.g, 1e-7 * scale * group, 1e-5)) << "pair_grad";
        ASSERT_TRUE(all_close(got.dU, want.dU, 1e-6, 1e-4)) << "dU";
        ASSERT_TRUE(all_close(got.dV, want.dV, 1e-6, 1e-4)) << "dV";
        if (s.nu >= 2) {
          for (int c = 0; c < d; ++c) ASSERT_EQ(got.dU[size_t(s.nu - 1) * d + c], 0.0f);
        }
        for (int c = 0; c < d; ++c) ASSERT_EQ(got.dV[size_t(s.ni - 1) * d + c], 0.0f);

        if (np > 200) continue;
        auto L = [&] { return ref::bpr_loss(Ud, Vd, d, h, group, scale).loss; };
        EXPECT_TRUE(check_fd(rng_, L, Ud, got.dU, 1e-5)) << "dU";
        EXPECT_TRUE(check_fd(rng_, L, Vd, got.dV, 1e-5)) << "dV";
      }
}

TEST_P(LossOps, BprLossStableForHugeScores) {
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
      const double want = ref::softplus64(-x), w = ref::sigmoid64(-x);
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


TEST_P(LossOps, SoftmaxLossMatchesFloat64AndFiniteDifferences) {
  TRACE_SEED();
  struct Shape { int32_t nu, ni; int64_t np; };
  for (Shape s : {Shape{1, 1, 1}, Shape{3, 5, 7}, Shape{17, 9, 33}, Shape{40, 70, 129},
                  Shape{200, 301, 1000}})
    for (int d : {1, 5, 17, 64})
      for (float T : {1.0f, 0.07f})
        for (bool with_q : {false, true})
        for (int64_t tile : {0, 2, 64}) {
          SCOPED_TRACE("users=" + std::to_string(s.nu) + " items=" + std::to_string(s.ni) +
                       " pairs=" + std::to_string(s.np) + " d=" + std::to_string(d) +
                       " T=" + std::to_string(T) + " log_q=" + (with_q ? "yes" : "null") +
                       " item_tile=" + std::to_string(tile));
          const HostPairs h = softmax_pairs(rng_, s.nu, s.ni, s.np);
          const float amp = 1.5f / std::sqrt(float(d));  // scores of order 1..2
          const auto U = random_floats(rng_, size_t(s.nu) * d, -amp, amp);
          const auto V = random_floats(rng_, size_t(s.ni) * d, -amp, amp);
          const auto log_q = random_floats(rng_, s.ni, -9.0f, -1.0f);
          const std::vector<float>* lq = with_q ? &log_q : nullptr;
          const float scale = 1.0f / float(s.np);
          const LossOut got = run_softmax(be(), U, V, d, h, lq, T, scale, tile);

          auto Ud = to_double(U), Vd = to_double(V);
          const ref::SoftmaxRef want = ref::softmax_loss(Ud, Vd, d, h, lq, T, scale);
          const double rel_mag = 1e-5 * (1.0 + want.zmax / 16.0);
          EXPECT_NEAR(got.loss, want.loss, 1e-6 * (1.0 + want.zmax) + 1e-5 * std::fabs(want.loss));
          ASSERT_TRUE(close_by_magnitude(got.dU, want.dU, want.magU, 1e-7, rel_mag)) << "dU";
          ASSERT_TRUE(close_by_magnitude(got.dV, want.dV, want.magV, 1e-7, rel_mag)) << "dV";
          for (float x : got.g) ASSERT_TRUE(std::isfinite(x)) << "logits scratch";
          if (s.nu >= 2) {
            for (int c = 0; c < d; ++c) ASSERT_EQ(got.dU[size_t(s.nu - 1) * d + c], 0.0f);
          }

          if (s.np > 200) continue;
          auto L = [&] { return ref::softmax_loss(Ud, Vd, d, h, lq, T, scale, false).loss; };
          EXPECT_TRUE(check_fd(rng_, L, Ud, got.dU, 1e-5)) << "dU";
          EXPECT_TRUE(check_fd(rng_, L, Vd, got.dV, 1e-5)) << "dV";
        }
}

// The softmax's dLogits scratch holds scale * (softmax - onehot) / T: each row
// sums to zero and is negative only at the positive.
TEST_F(CpuOps, SoftmaxLossLeavesLogitGradientsInScratch) {
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

TEST_P(LossOps, SoftmaxLossStableForLargeLogits) {
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
      for (int64_t tile : {0, 1, 2}) {
      SCOPED_TRACE("item_tile=" + std::to_string(tile));
      const LossOut got = run_softmax(be(), U, V, 2, h, lq, c.T, 1.0f, tile);
      const ref::SoftmaxRef want = ref::softmax_loss(to_double(U), to_double(V), 2, h, lq, c.T, 1.0);
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
}

// Taking the items in blocks changes only the float rounding: tiled and
// untiled agree to float tolerance, and a tiled run repeats bit for bit.
TEST_P(LossOps, SoftmaxTiledMatchesUntiled) {
  TRACE_SEED();
  const int d = 24;
  const HostPairs h = softmax_pairs(rng_, 300, 1000, 2000);
  const auto U = random_floats(rng_, 300 * d, -0.5f, 0.5f), V = random_floats(rng_, 1000 * d, -0.5f, 0.5f);
  const auto q = random_floats(rng_, 1000, -8.0f, -1.0f);
  const LossOut full = run_softmax(be(), U, V, d, h, &q, 0.1f, 1.0f / 2000);
  // An entry of dU or dV is a sum of terms with cancellation (positive minus
  // probability), so the float error scales with the sum of |terms| from the
  // float64 reference, not with the entry itself.
  const ref::SoftmaxRef want = ref::softmax_loss(to_double(U), to_double(V), d, h, &q, 0.1f,
                                                 1.0 / 2000);
  ASSERT_TRUE(close_by_magnitude(full.dU, want.dU, want.magU, 1e-9, 1e-5)) << "untiled dU";
  ASSERT_TRUE(close_by_magnitude(full.dV, want.dV, want.magV, 1e-9, 1e-5)) << "untiled dV";
  for (int64_t tile : {1, 64, 333, 999}) {
    SCOPED_TRACE("item_tile=" + std::to_string(tile));
    const LossOut a = run_softmax(be(), U, V, d, h, &q, 0.1f, 1.0f / 2000, tile);
    const LossOut b = run_softmax(be(), U, V, d, h, &q, 0.1f, 1.0f / 2000, tile);
    EXPECT_TRUE(bit_identical(a.dU, b.dU) && bit_identical(a.dV, b.dV)) << "repeat";
    EXPECT_TRUE(same_bits(a.loss, b.loss)) << "repeat";
    EXPECT_NEAR(a.loss, full.loss, 1e-5 * std::fabs(full.loss));
    EXPECT_TRUE(close_by_magnitude(a.dU, to_double(full.dU), want.magU, 1e-9, 2e-5)) << "dU";
    EXPECT_TRUE(close_by_magnitude(a.dV, to_double(full.dV), want.magV, 1e-9, 2e-5)) << "dV";
  }
  // A tile of n_items or more is one block: the untiled result, bit for bit.
  const LossOut one = run_softmax(be(), U, V, d, h, &q, 0.1f, 1.0f / 2000, 1000);
  EXPECT_TRUE(bit_identical(one.dU, full.dU) && bit_identical(one.dV, full.dV));
}

// ---- cosine contrastive loss --------------------------------------------------------

TEST_P(LossOps, CclLossMatchesFloat64AndFiniteDifferences) {
  TRACE_SEED();
  struct Shape { int32_t nu, ni; int64_t np; };
  for (Shape s : {Shape{1, 1, 1}, Shape{3, 5, 7}, Shape{17, 9, 33}, Shape{40, 70, 129},
                  Shape{200, 301, 1000}})
    for (int d : {1, 5, 17, 64})
      for (float margin : {0.3f, -0.2f})
        for (float w : {0.0f, 7.0f})
          for (bool with_q : {false, true})
          for (int64_t tile : {0, 2, 64}) {
            SCOPED_TRACE("users=" + std::to_string(s.nu) + " items=" + std::to_string(s.ni) +
                         " pairs=" + std::to_string(s.np) + " d=" + std::to_string(d) +
                         " margin=" + std::to_string(margin) + " w=" + std::to_string(w) +
                         " log_q=" + (with_q ? "yes" : "null") +
                         " item_tile=" + std::to_string(tile));
            const HostPairs h = softmax_pairs(rng_, s.nu, s.ni, s.np);
            const float amp = 1.2f / std::sqrt(float(d));  // scores spread over about [-1, 1]
            const auto U = random_floats(rng_, size_t(s.nu) * d, -amp, amp);
            const auto V = random_floats(rng_, size_t(s.ni) * d, -amp, amp);
            const float scale = 1.0f / float(s.np);
            const auto log_q = random_floats(rng_, s.ni, -9.0f, -1.0f);
            const std::vector<float>* lq = with_q ? &log_q : nullptr;
            const LossOut got = run_ccl(be(), U, V, d, h, margin, w, scale, tile, lq);

            auto Ud = to_double(U), Vd = to_double(V);
            const ref::CclRef want = ref::ccl_loss(Ud, Vd, d, h, lq, margin, w, scale);
            EXPECT_NEAR(got.loss, want.loss, 1e-6 + 1e-5 * std::fabs(want.loss));
            // A negative scored within float rounding of the margin may have its
            // hinge term on in one and off in the other: the rows it touches
            // are left out of the comparison (few; checked), the rest must agree.
            LossOut cmp = got;
            int64_t near_rows = 0;
            for (int32_t u = 0; u < s.nu; ++u)
              if (want.nearU[size_t(u)]) {
                ++near_rows;
                for (int c = 0; c < d; ++c) cmp.dU[size_t(u) * d + c] = float(want.dU[size_t(u) * d + c]);
              }
            for (int32_t j = 0; j < s.ni; ++j)
              if (want.nearV[size_t(j)]) {
                ++near_rows;
                for (int c = 0; c < d; ++c) cmp.dV[size_t(j) * d + c] = float(want.dV[size_t(j) * d + c]);
              }
            ASSERT_LE(near_rows, (s.nu + s.ni) / 20 + 2) << "too many scores at the margin to check";
            ASSERT_TRUE(close_by_magnitude(cmp.dU, want.dU, want.magU, 1e-7, 1e-5)) << "dU";
            ASSERT_TRUE(close_by_magnitude(cmp.dV, want.dV, want.magV, 1e-7, 1e-5)) << "dV";
            if (s.nu >= 2) {
              for (int c = 0; c < d; ++c) ASSERT_EQ(got.dU[size_t(s.nu - 1) * d + c], 0.0f);
            }
            // Finite differences where no negative's score is near its kink.
            if (s.np > 200 || want.smin < 1e-3) continue;
            auto L = [&] { return ref::ccl_loss(Ud, Vd, d, h, lq, margin, w, scale).loss; };
            EXPECT_TRUE(check_fd(rng_, L, Ud, got.dU, 1e-5)) << "dU";
            EXPECT_TRUE(check_fd(rng_, L, Vd, got.dV, 1e-5)) << "dV";
          }
}

// The hinge counts a negative only above the margin: with every score below
// it the loss is the positives' 1 - s alone, and dV of a pure negative is 0.
TEST_P(LossOps, CclNegativesBelowTheMarginAddNothing) {
  HostPairs h;
  h.n_users = 1;
  h.n_items = 3;
  h.user = {0};
  h.item = {0};
  finish(h);
  const std::vector<float> U = {1.0f, 0.0f};
  const std::vector<float> V = {0.5f, 0.0f, 0.25f, 0.0f, -1.0f, 0.0f};  // scores 0.5, 0.25, -1
  const LossOut below = run_ccl(be(), U, V, 2, h, 0.3f, 10.0f, 1.0f);
  EXPECT_NEAR(below.loss, 0.5, 1e-7);
  EXPECT_EQ(below.dV[4], 0.0f);
  EXPECT_EQ(below.dV[2], 0.0f);
  EXPECT_NEAR(below.dV[0], -1.0, 1e-7);  // -scale * U
  // Margin 0.2: item 1 (score 0.25) adds w / 2 * 0.05 and pushes its dV by w / 2.
  const LossOut above = run_ccl(be(), U, V, 2, h, 0.2f, 10.0f, 1.0f);
  EXPECT_NEAR(above.loss, 0.5 + 5.0 * 0.05, 1e-6);
  EXPECT_NEAR(above.dV[2], 5.0, 1e-6);
  EXPECT_NEAR(above.dU[0], -0.5 + 5.0 * 0.25, 1e-6);
  // log q = (0, log 1/4, log 3/4): the negatives weigh 4 and 4/3, shares 3/4
  // and 1/4 of w: item 1 adds 10 * 3/4 * 0.05.
  const std::vector<float> lq = {0.0f, std::log(0.25f), std::log(0.75f)};
  const LossOut weighted = run_ccl(be(), U, V, 2, h, 0.2f, 10.0f, 1.0f, 0, &lq);
  EXPECT_NEAR(weighted.loss, 0.5 + 7.5 * 0.05, 1e-6);
  EXPECT_NEAR(weighted.dV[2], 7.5, 1e-5);
}

TEST_P(LossOps, CclTiledMatchesUntiled) {
  TRACE_SEED();
  const int d = 24;
  const HostPairs h = softmax_pairs(rng_, 300, 1000, 2000);
  const auto U = random_floats(rng_, 300 * d, -0.3f, 0.3f), V = random_floats(rng_, 1000 * d, -0.3f, 0.3f);
  const auto q = random_floats(rng_, 1000, -8.0f, -1.0f);
  // Rows touched by a score within rounding of the margin may differ by a
  // whole hinge term between two GEMM shapes: compare the others.
  const ref::CclRef want = ref::ccl_loss(to_double(U), to_double(V), d, h, &q, 0.1, 50.0, 1.0 / 2000);
  auto settled = [&](LossOut o) {
    for (int32_t u = 0; u < 300; ++u)
      if (want.nearU[size_t(u)])
        for (int c = 0; c < d; ++c) o.dU[size_t(u) * d + c] = 0.0f;
    for (int32_t j = 0; j < 1000; ++j)
      if (want.nearV[size_t(j)])
        for (int c = 0; c < d; ++c) o.dV[size_t(j) * d + c] = 0.0f;
    return o;
  };
  const LossOut full = settled(run_ccl(be(), U, V, d, h, 0.1f, 50.0f, 1.0f / 2000, 0, &q));
  for (int64_t tile : {1, 64, 333, 999}) {
    SCOPED_TRACE("item_tile=" + std::to_string(tile));
    const LossOut a = run_ccl(be(), U, V, d, h, 0.1f, 50.0f, 1.0f / 2000, tile, &q);
    const LossOut b = run_ccl(be(), U, V, d, h, 0.1f, 50.0f, 1.0f / 2000, tile, &q);
    EXPECT_TRUE(bit_identical(a.dU, b.dU) && bit_identical(a.dV, b.dV)) << "repeat";
    EXPECT_TRUE(same_bits(a.loss, b.loss)) << "repeat";
    EXPECT_NEAR(a.loss, full.loss, 1e-5 * std::fabs(full.loss));
    const LossOut s = settled(a);
    EXPECT_TRUE(all_close(s.dU, to_double(full.dU), 1e-8, 1e-4)) << "dU";
    EXPECT_TRUE(all_close(s.dV, to_double(full.dV), 1e-8, 1e-4)) << "dV";
  }
}

// log_q = null is no correction: bit-identical to an all-zero log_q. A constant
// log_q shifts every logit of a row equally, which the softmax ignores.
TEST_P(LossOps, SoftmaxLogQNullIsZeroCorrection) {
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

// softmax_loss runs three sgemm calls, deterministic for a fixed thread count
// (not across thread counts): repeated runs on one backend are bit-identical.
TEST_F(CpuOps, SoftmaxRepeatedRunsAreBitIdentical) {
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

TEST_P(LossOps, EmptyBatchesGiveZeroLossAndGradients) {
  HostPairs h;
  h.n_users = 3;
  h.n_items = 4;
  finish(h);
  const auto U = random_floats(rng_, 3 * 5), V = random_floats(rng_, 4 * 5);
  for (const LossOut& got : {run_bpr(be(), U, V, 5, h, 2, 1.0f),
                             run_softmax(be(), U, V, 5, h, nullptr, 1.0f, 1.0f),
                             run_ccl(be(), U, V, 5, h, 0.5f, 1.0f, 1.0f)}) {
    EXPECT_EQ(got.loss, 0.0f);
    for (float x : got.dU) EXPECT_EQ(x, 0.0f);
    for (float x : got.dV) EXPECT_EQ(x, 0.0f);
  }
}

TEST_P(LossOps, BprLossIndependentOfThreadCount) {
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
}

TEST_P(LossOps, LossBadArgumentsThrow) {
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
  EXPECT_THROW(run_ccl(be(), U, V, 3, mixed, 0.5f, -1.0f, 1.0f), Error);
  EXPECT_THROW(run_ccl(be(), U, V, 3, mixed, kNaN, 1.0f, 1.0f), Error);
}

}  // namespace ranking

// ---- CUDA against the CPU backend ------------------------------------------------
// Agreement checks on top of the reference suite above: both backends on the
// same inputs (sizes off the kernels' tiles, several kernel versions).
namespace cuda_vs_cpu {


using namespace testing::cuda_vs_cpu;  // kWidths, kRows, strided_poisoned, as_double
// ---- loss ---------------------------------------------------------------------------------

using testing::DevicePairs;
using testing::HostPairs;

// Longest CSR row of either side (the longest reduction of a gradient row).
int max_csr_row(const HostPairs& hp) {
  int m = 1;
  for (size_t i = 0; i + 1 < hp.uoff.size(); ++i) m = std::max(m, hp.uoff[i + 1] - hp.uoff[i]);
  for (size_t i = 0; i + 1 < hp.ioff.size(); ++i) m = std::max(m, hp.ioff[i + 1] - hp.ioff[i]);
  return m;
}

HostPairs random_pairs(std::mt19937_64& g, int64_t n_pairs, int32_t n_users, int32_t n_items) {
  HostPairs h;
  h.n_users = n_users;
  h.n_items = n_items;
  // Leave the last user and item without pairs: their gradient rows must be zero.
  h.user = random_ints(g, static_cast<size_t>(n_pairs), 0, std::max(0, n_users - 2));
  h.item = random_ints(g, static_cast<size_t>(n_pairs), 0, std::max(0, n_items - 2));
  for (int64_t p = 0; p < n_pairs; ++p) h.label.push_back(random_ints(g, 1, 0, 1)[0] ? 1.0f : -1.0f);
  build_pair_csr(h.user, n_users, h.uoff, h.upairs);
  build_pair_csr(h.item, n_items, h.ioff, h.ipairs);
  return h;
}

TEST(CudaOps, LogisticLoss) {
  TOWERREC_REQUIRE_CUDA();
  TRACE_SEED();
  std::mt19937_64 g(test_seed());
  auto cpu = make_cpu_backend();
  auto gpu = make_cuda_backend(0);
  struct Case {
    int64_t pairs;
    int32_t users, items;
  };
  for (const Case c : {Case{0, 3, 2}, Case{1, 2, 2}, Case{7, 3, 5}, Case{33, 9, 20},
                       Case{257, 40, 130}, Case{5000, 300, 1200}})
    for (int d : {1, 17, 64, 130}) {
      SCOPED_TRACE("pairs=" + std::to_string(c.pairs) + " d=" + std::to_string(d));
      const HostPairs hp = random_pairs(g, c.pairs, c.users, c.items);
      const auto U = random_floats(g, static_cast<size_t>(c.users) * d);
      const auto V = random_floats(g, static_cast<size_t>(c.items) * d);
      const float scale = c.pairs > 0 ? 1.0f / static_cast<float>(c.pairs) : 1.0f;
      struct Out {
        std::vector<float> dU, dV, pg, loss;
      };
      auto run = [&](Backend& be) {
        auto dUi = upload(be, U);
        auto dVi = upload(be, V);
        DevicePairs dp(be, hp);
        auto dU = poisoned(be, int64_t{c.users} * d);
        auto dV = poisoned(be, int64_t{c.items} * d);
        auto pg = poisoned(be, c.pairs);
        auto loss = poisoned(be, 1);
        be.logistic_loss(dUi.data(), dVi.data(), d, dp.pb, scale, dU.data(), dV.data(), pg.data(),
                         loss.data());
        return Out{download(be, dU), download(be, dV), download(be, pg), download(be, loss)};
      };
      const Out want = run(*cpu), got = run(*gpu);
      const int max_row = max_csr_row(hp);
      EXPECT_TRUE(all_close(got.loss, as_double(want.loss), 1e-6, 1e-5)) << "loss";
      EXPECT_TRUE(all_close(got.pg, as_double(want.pg), 1e-5 * scale, 1e-4)) << "pair_grad";
      const double row_tol = 1e-5 * scale * (max_row + 1);
      EXPECT_TRUE(all_close(got.dU, as_double(want.dU), row_tol, 1e-4)) << "dU";
      EXPECT_TRUE(all_close(got.dV, as_double(want.dV), row_tol, 1e-4)) << "dV";
    }
}


// n_groups groups of `group` pairs: one user per group, the positive first.
HostPairs random_groups(std::mt19937_64& g, int64_t n_groups, int group, int32_t n_users,
                        int32_t n_items) {
  HostPairs h;
  h.n_users = n_users;
  h.n_items = n_items;
  for (int64_t gi = 0; gi < n_groups; ++gi) {
    const int32_t u = random_ints(g, 1, 0, std::max(0, n_users - 2))[0];
    for (int j = 0; j < group; ++j) {
      h.user.push_back(u);
      h.item.push_back(random_ints(g, 1, 0, std::max(0, n_items - 2))[0]);
      h.label.push_back(j == 0 ? 1.0f : -1.0f);
    }
  }
  build_pair_csr(h.user, n_users, h.uoff, h.upairs);
  build_pair_csr(h.item, n_items, h.ioff, h.ipairs);
  return h;
}

TEST(CudaOps, BprLoss) {
  TOWERREC_REQUIRE_CUDA();
  TRACE_SEED();
  std::mt19937_64 g(test_seed());
  auto cpu = make_cpu_backend();
  auto gpu = make_cuda_backend(0);
  struct Case {
    int64_t groups;
    int group;
    int32_t users, items;
  };
  for (const Case c : {Case{0, 2, 3, 2}, Case{1, 2, 2, 3}, Case{7, 5, 3, 9}, Case{33, 2, 9, 20},
                       Case{257, 9, 40, 300}, Case{1000, 5, 300, 1200}})
    for (int d : {1, 17, 64, 130}) {
      SCOPED_TRACE("groups=" + std::to_string(c.groups) + " group=" + std::to_string(c.group) +
                   " d=" + std::to_string(d));
      const HostPairs hp = random_groups(g, c.groups, c.group, c.users, c.items);
      const int64_t n_pairs = c.groups * c.group;
      const auto U = random_floats(g, static_cast<size_t>(c.users) * d);
      const auto V = random_floats(g, static_cast<size_t>(c.items) * d);
      const float scale = c.groups > 0 ? 1.0f / static_cast<float>(c.groups) : 1.0f;
      struct Out {
        std::vector<float> dU, dV, pg, loss;
      };
      auto run = [&](Backend& be) {
        auto dUi = upload(be, U);
        auto dVi = upload(be, V);
        DevicePairs dp(be, hp);
        auto dU = poisoned(be, int64_t{c.users} * d);
        auto dV = poisoned(be, int64_t{c.items} * d);
        auto pg = poisoned(be, n_pairs);
        auto loss = poisoned(be, 1);
        be.bpr_loss(dUi.data(), dVi.data(), d, dp.pb, c.group, scale, dU.data(), dV.data(),
                    pg.data(), loss.data());
        return Out{download(be, dU), download(be, dV), download(be, pg), download(be, loss)};
      };
      const Out want = run(*cpu), got = run(*gpu);
      EXPECT_TRUE(all_close(got.loss, as_double(want.loss), 1e-6, 1e-5)) << "loss";
      EXPECT_TRUE(all_close(got.pg, as_double(want.pg), 1e-5 * scale * c.group, 1e-4))
          << "pair_grad";
      const double row_tol = 1e-5 * scale * c.group * (max_csr_row(hp) + 1);
      EXPECT_TRUE(all_close(got.dU, as_double(want.dU), row_tol, 1e-4)) << "dU";
      EXPECT_TRUE(all_close(got.dV, as_double(want.dV), row_tol, 1e-4)) << "dV";
    }
  // Contract violations are refused.
  const HostPairs hp = random_groups(g, 3, 3, 4, 6);
  auto U = upload(*gpu, random_floats(g, 4 * 8));
  auto V = upload(*gpu, random_floats(g, 6 * 8));
  DevicePairs dp(*gpu, hp);
  DeviceArray<float> dU(gpu.get(), 4 * 8), dV(gpu.get(), 6 * 8), pg(gpu.get(), 9),
      loss(gpu.get(), 1);
  EXPECT_THROW(gpu->bpr_loss(U.data(), V.data(), 8, dp.pb, 2, 1.0f, dU.data(), dV.data(),
                             pg.data(), loss.data()),
               Error);
  EXPECT_THROW(gpu->bpr_loss(U.data(), V.data(), 8, dp.pb, 1, 1.0f, dU.data(), dV.data(),
                             pg.data(), loss.data()),
               Error);
}

TEST(CudaOps, SoftmaxLoss) {
  TOWERREC_REQUIRE_CUDA();
  TRACE_SEED();
  std::mt19937_64 g(test_seed());
  auto cpu = make_cpu_backend();
  auto gpu = make_cuda_backend(0);
  struct Case {
    int64_t pairs;
    int32_t users, items;
  };
  for (const Case c : {Case{0, 3, 2}, Case{1, 2, 2}, Case{7, 3, 5}, Case{33, 9, 20},
                       Case{257, 40, 300}, Case{1000, 300, 2000}})
    for (int d : {1, 17, 64, 130})
      for (const bool with_q : {false, true})
        for (const float temp : {1.0f, 0.2f})
        for (const int64_t tile : {int64_t{0}, int64_t{7}, int64_t{256}}) {
          SCOPED_TRACE("pairs=" + std::to_string(c.pairs) + " items=" + std::to_string(c.items) +
                       " d=" + std::to_string(d) + " logq=" + std::to_string(with_q) +
                       " T=" + std::to_string(temp) + " item_tile=" + std::to_string(tile));
          HostPairs hp = random_pairs(g, c.pairs, c.users, c.items);
          const auto U = random_floats(g, static_cast<size_t>(c.users) * d);
          const auto V = random_floats(g, static_cast<size_t>(c.items) * d);
          // log q of a popularity-like sampling distribution: log of values in (0, 1].
          std::vector<float> log_q = random_floats(g, static_cast<size_t>(c.items), 1e-3f, 1.0f);
          for (float& q : log_q) q = std::log(q);
          const float scale = c.pairs > 0 ? 1.0f / static_cast<float>(c.pairs) : 1.0f;
          struct Out {
            std::vector<float> dU, dV, loss;
          };
          auto run = [&](Backend& be) {
            auto dUi = upload(be, U);
            auto dVi = upload(be, V);
            auto lq = upload(be, log_q);
            DevicePairs dp(be, hp);
            auto dU = poisoned(be, int64_t{c.users} * d);
            auto dV = poisoned(be, int64_t{c.items} * d);
            const bool tiled = tile > 0 && tile < c.items;
            auto logits = poisoned(be, c.pairs * (tiled ? tile : c.items));
            auto rows = poisoned(be, c.pairs * d * (tiled ? 2 : 1));
            auto loss = poisoned(be, 1);
            be.softmax_loss(dUi.data(), dVi.data(), d, dp.pb, with_q ? lq.data() : nullptr, temp,
                            scale, dU.data(), dV.data(), logits.data(), rows.data(),
                            loss.data(), tile);
            return Out{download(be, dU), download(be, dV), download(be, loss)};
          };
          const Out want = run(*cpu), got = run(*gpu);
          // Logits are dot products of length d (GEMMs in different orders), so
          // the loss and every gradient element carry about d ulps of |logit|.
          const double logit_tol = 1e-6 * (d + 1) / temp;
          EXPECT_TRUE(all_close(got.loss, as_double(want.loss), 4 * logit_tol, 1e-5)) << "loss";
          // dU sums over the user's pairs and all items, dV over all pairs.
          const double g_unit = scale / temp;
          const int64_t u_len = int64_t{max_csr_row(hp)} * c.items, v_len = c.pairs;
          EXPECT_TRUE(all_close(got.dU, as_double(want.dU),
                                g_unit * (1e-6 * double(u_len + 1) + 4 * logit_tol * max_csr_row(hp)),
                                1e-4))
              << "dU";
          EXPECT_TRUE(all_close(got.dV, as_double(want.dV),
                                g_unit * (1e-6 * double(v_len + 1) + 4 * logit_tol), 1e-4))
              << "dV";
        }
}

TEST(CudaOps, CclLoss) {
  TOWERREC_REQUIRE_CUDA();
  TRACE_SEED();
  std::mt19937_64 g(test_seed());
  auto cpu = make_cpu_backend();
  auto gpu = make_cuda_backend(0);
  struct Case {
    int64_t pairs;
    int32_t users, items;
  };
  for (const Case c : {Case{0, 3, 2}, Case{1, 2, 2}, Case{33, 9, 20}, Case{1000, 300, 2000}})
    for (int d : {1, 64, 130})
      for (const bool with_q : {false, true})
      for (const int64_t tile : {int64_t{0}, int64_t{7}, int64_t{256}}) {
        SCOPED_TRACE("pairs=" + std::to_string(c.pairs) + " items=" + std::to_string(c.items) +
                     " d=" + std::to_string(d) + " logq=" + std::to_string(with_q) +
                     " item_tile=" + std::to_string(tile));
        std::vector<float> log_q = random_floats(g, static_cast<size_t>(c.items), 1e-3f, 1.0f);
        for (float& q : log_q) q = std::log(q);
        HostPairs hp = random_pairs(g, c.pairs, c.users, c.items);
        const float amp = 1.0f / std::sqrt(float(d));
        const auto U = random_floats(g, static_cast<size_t>(c.users) * d, -amp, amp);
        const auto V = random_floats(g, static_cast<size_t>(c.items) * d, -amp, amp);
        const float scale = c.pairs > 0 ? 1.0f / static_cast<float>(c.pairs) : 1.0f;
        struct Out {
          std::vector<float> dU, dV, loss;
        };
        auto run = [&](Backend& be) {
          auto dUi = upload(be, U);
          auto dVi = upload(be, V);
          DevicePairs dp(be, hp);
          auto dU = poisoned(be, int64_t{c.users} * d);
          auto dV = poisoned(be, int64_t{c.items} * d);
          const bool tiled = tile > 0 && tile < c.items;
          auto logits = poisoned(be, c.pairs * (tiled ? tile : c.items));
          auto rows = poisoned(be, c.pairs * d * (tiled ? 2 : 1));
          auto loss = poisoned(be, 1);
          auto lq = upload(be, log_q);
          be.ccl_loss(dUi.data(), dVi.data(), d, dp.pb, with_q ? lq.data() : nullptr, 0.2f, 20.0f,
                      scale, dU.data(), dV.data(), logits.data(), rows.data(), loss.data(), tile);
          return Out{download(be, dU), download(be, dV), download(be, loss)};
        };
        const Out want = run(*cpu), got = run(*gpu);
        // A score within a few ulps of the margin may switch its hinge on one
        // backend only: each such term moves a gradient by scale * w / (n - 1) * |v|.
        // With log q in [log 1e-3, 0] one weight is at most 1000 times another.
        const double term = scale * 20.0 / std::max(1, c.items - 1) * amp * (with_q ? 1000.0 : 1.0);
        EXPECT_TRUE(all_close(got.loss, as_double(want.loss), 1e-6 * (d + 1), 1e-5)) << "loss";
        EXPECT_TRUE(all_close(got.dU, as_double(want.dU), 4 * term + 1e-6, 1e-4)) << "dU";
        EXPECT_TRUE(all_close(got.dV, as_double(want.dV), 4 * term + 1e-6, 1e-4)) << "dV";
      }
}
}  // namespace cuda_vs_cpu
}  // namespace
}  // namespace towerrec
