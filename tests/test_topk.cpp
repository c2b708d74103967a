// The top-K family on every backend against the float64 reference
// kernels/topk/ref.h: integer-valued inputs (exact scores, exact ties: items must
// match), random floats (scores within 2e-6 * d + 1e-6 abs, 1e-5 rel; an item
// may differ only where the reference scores tie within that tolerance), NaN
// scores, the special cases of tests/topk_special.h, an empty catalog.
//
// CUDA against the CPU backend (cuda_vs_cpu below):
//   L2 normalisation: a few ulps; dropout: bit-identical (same generator, same division)
//   top-K:  scores within 2e-6 * d of the CPU's score at the same rank and of a
//           float64 recomputation; items may differ from the CPU's only where
//           the two scores tie within that tolerance; with integer-valued inputs
//           (exact scores, many exact ties) items must match exactly. Every
//           version runs: GEMM path (two tile sizes) and fused path. TF32/BF16
#include <algorithm>
#include <cmath>
#include <cstdlib>
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
#include "kernels/topk/ref.h"
#include "tests/backend_fixture.h"
#include "tests/compare.h"
#include "tests/cuda_vs_cpu.h"
#include "tests/op_suite.h"
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

class TopkOps : public testing::OpsTest {};
TOWERREC_INSTANTIATE_BACKENDS(TopkOps);
class CpuOps : public testing::CpuOpsTest {};

namespace reference {

// ---- top-k ------------------------------------------------------------------------

struct TopkOut {
  std::vector<int32_t> items;
  std::vector<float> scores;
};

TopkOut run_topk(Backend& be, const std::vector<float>& U, int64_t nu, const std::vector<float>& V,
                 int64_t ni, int d, int k, const std::vector<int64_t>* excl_off,
                 const std::vector<int32_t>* excl, const TopkPolicy& policy = {}) {
  auto dU = upload(be, U), dV = upload(be, V);
  DeviceArray<int64_t> doff;
  DeviceArray<int32_t> dex;
  if (excl_off) {
    doff = upload(be, *excl_off);
    dex = upload(be, *excl);
  }
  DeviceArray<int32_t> oi(&be, nu * k);
  std::vector<int32_t> junk(size_t(nu * k), 123456);
  be.to_device(oi.data(), junk.data(), junk.size() * sizeof(int32_t));
  auto os = poisoned(be, nu * k);
  be.topk(dU.data(), nu, dV.data(), ni, d, k, excl_off ? doff.data() : nullptr,
          excl_off ? dex.data() : nullptr, oi.data(), os.data(), policy);
  return {download(be, oi), download(be, os)};
}

// Random exclusion lists: user r excludes up to max_excl items (with repeats);
// the last user, when asked, excludes every item.
void random_exclusions(std::mt19937_64& g, int64_t nu, int64_t ni, int max_excl, bool last_all,
                       std::vector<int64_t>& off, std::vector<int32_t>& items) {
  off.assign(1, 0);
  items.clear();
  for (int64_t r = 0; r < nu; ++r) {
    if (last_all && r == nu - 1) {
      for (int32_t j = 0; j < ni; ++j) items.push_back(j);
    } else {
      const int cnt = random_ints(g, 1, 0, max_excl)[0];
      for (int j = 0; j < cnt; ++j) items.push_back(random_ints(g, 1, 0, int32_t(ni - 1))[0]);
    }
    off.push_back(int64_t(items.size()));
  }
}

// Integer-valued inputs: every score is an exact small integer in float32, so
// ties are exact and the output must match the reference item for item.
TEST_P(TopkOps, TopkExactWithTiesExclusionsAndPadding) {
  TRACE_SEED();
  struct Shape { int64_t nu, ni; int d; };
  for (Shape s : {Shape{1, 1, 1}, Shape{7, 5, 3}, Shape{33, 40, 4}, Shape{65, 129, 5},
                  Shape{130, 1000, 8}})
    for (int k : {1, 3, 10, 50, 1200})
      for (bool with_excl : {false, true}) {
        SCOPED_TRACE("users=" + std::to_string(s.nu) + " items=" + std::to_string(s.ni) +
                     " d=" + std::to_string(s.d) + " k=" + std::to_string(k) +
                     " excl=" + std::to_string(with_excl));
        std::vector<float> U, V;
        for (int32_t x : random_ints(rng_, size_t(s.nu * s.d), -2, 2)) U.push_back(float(x));
        for (int32_t x : random_ints(rng_, size_t(s.ni * s.d), -2, 2)) V.push_back(float(x));
        // Duplicate some item rows: exact ties between distinct items.
        for (int64_t j = 1; j < s.ni; j += 3)
          std::copy_n(V.begin() + (j - 1) * s.d, s.d, V.begin() + j * s.d);
        std::vector<int64_t> off;
        std::vector<int32_t> ex;
        if (with_excl) random_exclusions(rng_, s.nu, s.ni, int(s.ni / 2 + 1), s.nu > 1, off, ex);
        const auto* po = with_excl ? &off : nullptr;
        const auto* pe = with_excl ? &ex : nullptr;
        const TopkOut got = run_topk(be(), U, s.nu, V, s.ni, s.d, k, po, pe);
        std::vector<int32_t> wi;
        std::vector<double> ws;
        std::vector<std::vector<double>> all;
        ref::topk(U, s.nu, V, s.ni, s.d, k, po, pe, wi, ws, all);
        ASSERT_EQ(got.items, wi);
        for (size_t j = 0; j < ws.size(); ++j)
          ASSERT_EQ(got.scores[j], static_cast<float>(ws[j])) << "slot " << j;  // -inf == -inf
        if (with_excl && s.nu > 1) {
          for (int j = 0; j < k; ++j) ASSERT_EQ(got.items[(s.nu - 1) * k + j], -1);
        }
      }
}

// Random float inputs (with duplicated rows): scores match the float64 reference
// within tolerance, the list is sorted, has no duplicates, and an item may differ
// from the reference only where the reference scores are tied within tolerance.
TEST_P(TopkOps, TopkRandomFloatsMatchReferenceByValue) {
  TRACE_SEED();
  for (int64_t nu : {1, 64, 65, 200})
    for (int k : {1, 7, 100}) {
      const int64_t ni = 777;
      const int d = 17;
      SCOPED_TRACE("users=" + std::to_string(nu) + " k=" + std::to_string(k));
      const auto U = random_floats(rng_, nu * d);
      auto V = random_floats(rng_, ni * d);
      for (int64_t j = 5; j < ni; j += 11) std::copy_n(V.begin() + (j - 5) * d, d, V.begin() + j * d);
      std::vector<int64_t> off;
      std::vector<int32_t> ex;
      random_exclusions(rng_, nu, ni, 20, false, off, ex);
      const TopkOut got = run_topk(be(), U, nu, V, ni, d, k, &off, &ex);
      std::vector<int32_t> wi;
      std::vector<double> ws;
      std::vector<std::vector<double>> all;
      ref::topk(U, nu, V, ni, d, k, &off, &ex, wi, ws, all);
      const double tol = matmul_abs_tol(d);
      ASSERT_TRUE(all_close(got.scores, ws, tol, 1e-5));
      for (int64_t r = 0; r < nu; ++r) {
        std::set<int32_t> seen, excluded(ex.begin() + off[r], ex.begin() + off[r + 1]);
        for (int j = 0; j < k; ++j) {
          const int32_t it = got.items[r * k + j];
          ASSERT_TRUE(it >= 0 && it < ni) << "user " << r << " slot " << j;
          ASSERT_TRUE(seen.insert(it).second) << "duplicate item " << it;
          ASSERT_FALSE(excluded.count(it)) << "excluded item " << it << " returned";
          if (j > 0) {
            ASSERT_GE(got.scores[r * k + j - 1], got.scores[r * k + j]);
          }
          if (it != wi[r * k + j]) {
            ASSERT_NEAR(all[r][it], ws[r * k + j], 2 * tol) << "item differs without a tie";
          }
        }
      }
    }
}

TEST_P(TopkOps, TopkNaNScoresRankLastWithoutCrashing) {
  // Item 1 has a NaN embedding: its score is NaN for every user.
  const std::vector<float> U = {1.0f, 2.0f, -1.0f, 0.5f};
  const std::vector<float> V = {1.0f, 0.0f, kNaN, 1.0f, 0.0f, 1.0f, -3.0f, -3.0f};
  const TopkOut got = run_topk(be(), U, 2, V, 4, 2, 6, nullptr, nullptr);
  // user 0 scores: 1, NaN, 2, -9; user 1: -1, NaN, 0.5, 1.5
  EXPECT_EQ(got.items, (std::vector<int32_t>{2, 0, 3, 1, -1, -1, 3, 2, 0, 1, -1, -1}));
  EXPECT_EQ(got.scores[3], -INFINITY);  // reported as it ranks
  EXPECT_EQ(got.scores[4], -INFINITY);
  EXPECT_EQ(got.scores[5], -INFINITY);
}

TEST_F(CpuOps, TopkSpecialScores) {
  for (const auto& c : testing::topk_special_cases()) {
    const int64_t nu = static_cast<int64_t>(c.U.size()), ni = static_cast<int64_t>(c.V.size());
    SCOPED_TRACE("users=" + std::to_string(nu) + " items=" + std::to_string(ni) +
                 " k=" + std::to_string(c.k));
    for (int64_t chunk : {1, 3, 256}) {  // the fold across chunk edges too
      CpuBackend cpu(1);
      cpu.set_topk_item_chunk(chunk);
      const TopkOut got = run_topk(cpu, c.U, nu, c.V, ni, 1, c.k, nullptr, nullptr);
      EXPECT_TRUE(testing::topk_special_matches(c, got.items, got.scores)) << "chunk " << chunk;
    }
  }
}

TEST_P(TopkOps, TopkEmptyCatalogPadsEverything) {
  const std::vector<float> U = {1.0f, 2.0f};
  const TopkOut got = run_topk(be(), U, 1, {}, 0, 2, 3, nullptr, nullptr);
  EXPECT_EQ(got.items, (std::vector<int32_t>{-1, -1, -1}));
  for (float s : got.scores) EXPECT_EQ(s, -INFINITY);
}

TEST_F(CpuOps, TopkRepeatedRunsAreBitIdentical) {
  TRACE_SEED();
  const auto TU = random_floats(rng_, 150 * 16), TV = random_floats(rng_, 2000 * 16);
  const TopkOut t1 = run_topk(be(), TU, 150, TV, 2000, 16, 20, nullptr, nullptr);
  const TopkOut t2 = run_topk(be(), TU, 150, TV, 2000, 16, 20, nullptr, nullptr);
  EXPECT_EQ(t1.items, t2.items);
  EXPECT_TRUE(bit_identical(t1.scores, t2.scores)) << "topk";
}

TEST_F(CpuOps, TopkBadArgumentsThrow) {
  auto a = poisoned(be(), 64);
  std::vector<int32_t> idx = {0};
  auto di = upload(be(), idx);
  EXPECT_THROW(be().topk(a.data(), 1, a.data(), 4, 2, 0, nullptr, nullptr, di.data(), a.data(),
                         TopkPolicy{}),
               Error);
  const std::vector<int64_t> off = {0, 1};
  const std::vector<int32_t> bad = {7};
  auto doff = upload(be(), off);
  auto dbad = upload(be(), bad);
  DeviceArray<int32_t> oi(&be(), 2);
  EXPECT_THROW(be().topk(a.data(), 1, a.data(), 4, 2, 2, doff.data(), dbad.data(), oi.data(),
                         a.data(), TopkPolicy{}),
               Error);
}

}  // namespace reference

// ---- CUDA against the CPU backend ------------------------------------------------
// Agreement checks on top of the reference suite above: both backends on the
// same inputs (sizes off the kernels' tiles, several kernel versions).
namespace cuda_vs_cpu {


using namespace testing::cuda_vs_cpu;  // kWidths, kRows, strided_poisoned, as_double
// ---- top-K ---------------------------------------------------------------------------------

struct TopkCase {
  int64_t users, items;
  int d, k;
  bool exclude;      // random exclusions; user 0 excludes every item, user 1 none
  bool integer;      // integer-valued inputs: exact scores, many exact ties
};

struct TopkOut {
  std::vector<int32_t> items;
  std::vector<float> scores;
};

TopkOut run_topk(Backend& be, const std::vector<float>& U, const std::vector<float>& V,
                 const TopkCase& c, const std::vector<int64_t>& eoff,
                 const std::vector<int32_t>& eitems, const TopkPolicy& policy = {}) {
  auto u = upload(be, U);
  auto v = upload(be, V);
  auto eo = upload(be, eoff);
  auto ei = upload(be, eitems);
  auto oi = upload(be, std::vector<int32_t>(static_cast<size_t>(c.users * c.k), -7));
  auto os = poisoned(be, c.users * c.k);
  be.topk(u.data(), c.users, c.items > 0 ? v.data() : nullptr, c.items, c.d, c.k,
          c.exclude ? eo.data() : nullptr, c.exclude && !eitems.empty() ? ei.data() : nullptr,
          oi.data(), os.data(), policy);
  return TopkOut{download(be, oi), download(be, os)};
}

// Checks `got` against the CPU result `want` and a float64 recomputation.
::testing::AssertionResult topk_agrees(const TopkOut& got, const TopkOut& want,
                                       const std::vector<float>& U, const std::vector<float>& V,
                                       const TopkCase& c, const std::vector<int64_t>& eoff,
                                       const std::vector<int32_t>& eitems) {
  const double tol = c.integer ? 0.0 : 2e-6 * c.d;
  auto ref = [&](int64_t r, int32_t j) {
    double s = 0;
    for (int t = 0; t < c.d; ++t) s += double(U[r * c.d + t]) * double(V[int64_t{j} * c.d + t]);
    return s;
  };
  std::string msg;
  int bad = 0;
  auto fail = [&](int64_t r, int j, const std::string& what) {
    if (bad++ < 8) msg += "\n  user " + std::to_string(r) + " rank " + std::to_string(j) + ": " + what;
  };
  for (int64_t r = 0; r < c.users; ++r) {
    std::set<int32_t> excl;
    if (c.exclude) excl.insert(eitems.begin() + eoff[r], eitems.begin() + eoff[r + 1]);
    const int64_t valid = std::min<int64_t>(c.k, c.items - int64_t(excl.size()));
    std::set<int32_t> seen;
    for (int j = 0; j < c.k; ++j) {
      const size_t at = static_cast<size_t>(r * c.k + j);
      const int32_t item = got.items[at], want_item = want.items[at];
      const float s = got.scores[at];
      if (j >= valid) {
        if (item != -1 || !(std::isinf(s) && s < 0)) fail(r, j, "expected padding -1/-inf");
        continue;
      }
      if (item < 0 || item >= c.items) {
        fail(r, j, "item " + std::to_string(item) + " out of range");
        continue;
      }
      if (excl.count(item)) fail(r, j, "excluded item " + std::to_string(item));
      if (!seen.insert(item).second) fail(r, j, "duplicate item " + std::to_string(item));
      if (!near(s, ref(r, item), tol)) fail(r, j, "score differs from float64 recompute");
      if (!near(s, want.scores[at], tol))
        fail(r, j, "score " + std::to_string(s) + " vs CPU " + std::to_string(want.scores[at]));
      if (item != want_item) {
        if (c.integer)
          fail(r, j, "item " + std::to_string(item) + " vs CPU " + std::to_string(want_item) +
                         " with exact scores");
        else if (want_item < 0 || !near(ref(r, item), ref(r, want_item), tol))
          fail(r, j, "item " + std::to_string(item) + " vs CPU " + std::to_string(want_item) +
                         " and the scores do not tie");
      }
      if (j > 0) {
        if (!ranks_after(s, item, got.scores[at - 1], got.items[at - 1]))
          fail(r, j, "out of order");
      }
    }
  }
  if (bad) return ::testing::AssertionFailure() << bad << " problems" << msg;
  return ::testing::AssertionSuccess();
}

// The checker itself, on the CPU: a result whose items are right but whose
// scores were never written (still the NaN poison) must be rejected, as must
// one NaN score among correct ones.
TEST(CudaOps, TopkCheckerRejectsUnwrittenScores) {
  TRACE_SEED();
  std::mt19937_64 g(test_seed());
  auto cpu = make_cpu_backend(1);
  const TopkCase c{6, 50, 4, 5, true, false};
  const auto U = random_floats(g, static_cast<size_t>(c.users * c.d));
  const auto V = random_floats(g, static_cast<size_t>(c.items * c.d));
  const std::vector<int64_t> eoff{0, 0, 1, 2, 2, 3, 3};
  const std::vector<int32_t> eitems{7, 49, 0};
  const TopkOut want = run_topk(*cpu, U, V, c, eoff, eitems);
  ASSERT_TRUE(topk_agrees(want, want, U, V, c, eoff, eitems));
  TopkOut unwritten = want;
  std::fill(unwritten.scores.begin(), unwritten.scores.end(), testing::poison());
  EXPECT_FALSE(topk_agrees(unwritten, want, U, V, c, eoff, eitems));
  for (size_t at : {size_t{0}, size_t{3}, unwritten.scores.size() - 1}) {
    TopkOut one = want;
    one.scores[at] = testing::poison();
    EXPECT_FALSE(topk_agrees(one, want, U, V, c, eoff, eitems)) << "NaN at " << at;
  }
}

#if TOWERREC_HAVE_CUDA
// Runs top-K on every version of the CUDA kernels that applies to the case: the
// GEMM path with the default tile and with a 5 x 37 tile that divides nothing
// evenly (crossing user-block and item-chunk edges), and the fused path where
// d <= 64 and k <= 128. Leaves the backend at its defaults.
void check_topk_versions(Backend& gpu, const std::vector<float>& U, const std::vector<float>& V,
                         const TopkCase& c, const std::vector<int64_t>& eoff,
                         const std::vector<int32_t>& eitems, const TopkOut& want) {
  const TopkPolicy gemm{TopkPath::kGemm}, fused{TopkPath::kFused};
  EXPECT_TRUE(topk_agrees(run_topk(gpu, U, V, c, eoff, eitems, gemm), want, U, V, c, eoff, eitems))
      << "gemm path, default tiles";
  cuda::set_topk_tiles(gpu, 5, 37);
  EXPECT_TRUE(topk_agrees(run_topk(gpu, U, V, c, eoff, eitems, gemm), want, U, V, c, eoff, eitems))
      << "gemm path, tiles 5 x 37";
  cuda::set_topk_tiles(gpu, 512, 16384);
  if (c.d <= 64 && c.k <= 128) {
    EXPECT_TRUE(
        topk_agrees(run_topk(gpu, U, V, c, eoff, eitems, fused), want, U, V, c, eoff, eitems))
        << "fused path";
  } else {
    EXPECT_THROW(run_topk(gpu, U, V, c, eoff, eitems, fused), Error) << "fused path out of range";
  }
}
#endif

TEST(CudaOps, Topk) {
  TOWERREC_REQUIRE_CUDA();
  TRACE_SEED();
  std::mt19937_64 g(test_seed());
  auto cpu = make_cpu_backend();
  auto gpu = make_cuda_backend(0);
  const TopkCase cases[] = {
      {1, 1, 1, 1, false, false},      {7, 33, 5, 1, false, false},
      {33, 257, 17, 10, true, false},  {257, 1000, 64, 100, true, false},
      {5, 20, 8, 30, true, false},     // k > remaining items
      {3, 0, 4, 5, false, false},      // no items at all
      {9, 3000, 16, 1024, true, false},  // largest k
      {40, 5000, 33, 1, true, false},
      {33, 257, 3, 20, true, true},    // exact ties
      {20, 2000, 2, 300, true, true},
      // Fused-path shapes (d <= 64, k <= 128): users not a multiple of 8, items
      // crossing the 64-item tiles and the 4096-item exclusion segments.
      {13, 9000, 64, 128, true, false},  // largest fused k, every item of user 0 excluded
      {17, 5000, 3, 100, true, true},    // exact ties across segments
      {9, 4097, 64, 129, true, false},   // k just past the fused limit: GEMM path
  };
  for (const TopkCase& c : cases) {
    SCOPED_TRACE("users=" + std::to_string(c.users) + " items=" + std::to_string(c.items) +
                 " d=" + std::to_string(c.d) + " k=" + std::to_string(c.k));
    auto values = [&](size_t n) {
      if (!c.integer) return random_floats(g, n);
      std::vector<float> v(n);
      for (auto& x : v) x = static_cast<float>(random_ints(g, 1, -2, 2)[0]);
      return v;
    };
    const auto U = values(static_cast<size_t>(c.users * c.d));
    const auto V = values(static_cast<size_t>(c.items * c.d));
    std::vector<int64_t> eoff{0};
    std::vector<int32_t> eitems;
    for (int64_t r = 0; r < c.users; ++r) {
      if (c.exclude && c.items > 0) {
        if (r == 0 && c.items <= 10000) {
          for (int32_t j = 0; j < c.items; ++j) eitems.push_back(j);
        } else if (r != 1) {
          std::set<int32_t> s;
          const int cnt = random_ints(g, 1, 0, static_cast<int32_t>(std::min<int64_t>(c.items, 12)))[0];
          while (int(s.size()) < cnt) s.insert(random_ints(g, 1, 0, int32_t(c.items - 1))[0]);
          std::vector<int32_t> e(s.begin(), s.end());
          std::shuffle(e.begin(), e.end(), g);  // not required to be sorted
          eitems.insert(eitems.end(), e.begin(), e.end());
        }
      }
      eoff.push_back(static_cast<int64_t>(eitems.size()));
    }
    const TopkOut want = run_topk(*cpu, U, V, c, eoff, eitems);
    EXPECT_TRUE(topk_agrees(run_topk(*gpu, U, V, c, eoff, eitems), want, U, V, c, eoff, eitems))
        << "default path";
#if TOWERREC_HAVE_CUDA
    check_topk_versions(*gpu, U, V, c, eoff, eitems, want);
#endif
  }
}

// Small edge cases on every version, with integer-valued inputs (exact scores,
// many ties): items must match the CPU exactly. Users: 0 has every item seen,
// 1 nothing, 2 all but three (k > unmasked count), 3 a list with duplicates;
// the rest random. 11 users and 150 items are multiples of no tile size. Quick
// enough for compute-sanitizer racecheck.
TEST(CudaOps, TopkSmallEdgeCases) {
  TOWERREC_REQUIRE_CUDA();
  TRACE_SEED();
  std::mt19937_64 g(test_seed());
  auto cpu = make_cpu_backend();
  auto gpu = make_cuda_backend(0);
  const int64_t users = 11, items = 150;
  const int d = 8;
  std::vector<int64_t> eoff{0};
  std::vector<int32_t> eitems;
  for (int64_t r = 0; r < users; ++r) {
    if (r == 0) {
      for (int32_t j = 0; j < items; ++j) eitems.push_back(j);
    } else if (r == 2) {
      for (int32_t j = 0; j < items; ++j)
        if (j != 5 && j != 77 && j != 149) eitems.push_back(j);
    } else if (r == 3) {
      for (int32_t j : {64, 3, 64, 149, 3, 0}) eitems.push_back(j);
    } else if (r != 1) {
      for (int32_t j : random_ints(g, 10, 0, int32_t(items - 1))) eitems.push_back(j);
    }
    eoff.push_back(static_cast<int64_t>(eitems.size()));
  }
  std::vector<float> U(static_cast<size_t>(users * d)), V(static_cast<size_t>(items * d));
  for (auto& x : U) x = static_cast<float>(random_ints(g, 1, -2, 2)[0]);
  for (auto& x : V) x = static_cast<float>(random_ints(g, 1, -2, 2)[0]);
  for (const int k : {1, 5, 128, 200}) {
    const TopkCase c{users, items, d, k, true, true};
    SCOPED_TRACE("k=" + std::to_string(k));
    const TopkOut want = run_topk(*cpu, U, V, c, eoff, eitems);
    EXPECT_TRUE(topk_agrees(run_topk(*gpu, U, V, c, eoff, eitems), want, U, V, c, eoff, eitems))
        << "default path";
#if TOWERREC_HAVE_CUDA
    check_topk_versions(*gpu, U, V, c, eoff, eitems, want);
#endif
  }
}

#if TOWERREC_HAVE_CUDA
// NaN, -0, +0, -inf, +inf and ties (tests/topk_special.h) give the same items
// and score bits on the CPU and on every CUDA version, 1 x 3 tiles included.
TEST(CudaOps, TopkSpecialScores) {
  TOWERREC_REQUIRE_CUDA();
  auto cpu = make_cpu_backend(1);
  auto gpu = make_cuda_backend(0);
  for (const auto& sc : testing::topk_special_cases()) {
    const TopkCase c{static_cast<int64_t>(sc.U.size()), static_cast<int64_t>(sc.V.size()), 1,
                     sc.k, false, false};
    SCOPED_TRACE("users=" + std::to_string(c.users) + " items=" + std::to_string(c.items) +
                 " k=" + std::to_string(c.k));
    auto check = [&](Backend& be, const char* what, TopkPath path = TopkPath::kAuto) {
      const TopkOut got = run_topk(be, sc.U, sc.V, c, {}, {}, TopkPolicy{path});
      EXPECT_TRUE(testing::topk_special_matches(sc, got.items, got.scores)) << what;
    };
    check(*cpu, "cpu");
    check(*gpu, "default path");
    check(*gpu, "gemm path", TopkPath::kGemm);
    cuda::set_topk_tiles(*gpu, 1, 3);
    check(*gpu, "gemm path, tiles 1 x 3", TopkPath::kGemm);
    cuda::set_topk_tiles(*gpu, 512, 16384);
    check(*gpu, "fused path", TopkPath::kFused);
  }
}

// TF32 and BF16 score GEMMs rank approximately. Each returned score must be
// within the precision's error bound of the item's float64 score, and the
// float64 score of the item at rank j must be within twice that bound of the
// exact j-th best; exclusions, padding, order and uniqueness hold exactly.
// Each operand is rounded with relative error at most e: tf32 keeps 10 mantissa
// bits and the tensor cores may truncate rather than round, so e = 2^-10; bf16
// keeps 7 and to_bf16_kernel rounds to nearest, so e = 2^-8. A product is then
// off by at most 2e + e^2 relative, and the bound per item is
//   (2e + e^2) * sum_t |u_t v_t| + 1e-6 d   (the last term: FP32 accumulation).
TEST(CudaOps, TopkReducedPrecision) {
  TOWERREC_REQUIRE_CUDA();
  TRACE_SEED();
  std::mt19937_64 g(test_seed());
  auto gpu = make_cuda_backend(0);
  struct Case {
    int64_t users, items;
    int d, k;
  };
  for (const auto& [precision, name, mant] :
       {std::tuple{TopkPrecision::kTF32, "tf32", 10},
        std::tuple{TopkPrecision::kBF16, "bf16", 8}})  // e = 2^-mant
    for (const Case c : {Case{7, 300, 64, 10}, Case{33, 5000, 17, 100}, Case{600, 2000, 128, 50},
                         Case{5, 40, 8, 60}}) {
      SCOPED_TRACE(std::string(name) + " users=" + std::to_string(c.users) +
                   " items=" + std::to_string(c.items) + " d=" + std::to_string(c.d) +
                   " k=" + std::to_string(c.k));
      const auto U = random_floats(g, static_cast<size_t>(c.users * c.d));
      const auto V = random_floats(g, static_cast<size_t>(c.items * c.d));
      std::vector<int64_t> eoff{0};
      std::vector<int32_t> eitems;
      for (int64_t r = 0; r < c.users; ++r) {
        if (r % 3 == 1)
          for (int32_t j : random_ints(g, 12, 0, int32_t(c.items - 1))) eitems.push_back(j);
        eoff.push_back(static_cast<int64_t>(eitems.size()));
      }
      const TopkCase tc{c.users, c.items, c.d, c.k, true, false};
      cuda::set_topk_tiles(*gpu, 256, 1000);  // several chunks and user blocks
      const TopkOut got = run_topk(*gpu, U, V, tc, eoff, eitems, {TopkPath::kAuto, precision});
      cuda::set_topk_tiles(*gpu, 512, 16384);
      // The fused path is FP32 only.
      EXPECT_THROW(run_topk(*gpu, U, V, tc, eoff, eitems, {TopkPath::kFused, precision}), Error);

      const double e = std::ldexp(1.0, -mant);
      const double unit = 2 * e + e * e;
      int bad = 0;
      std::string msg;
      auto fail = [&](int64_t r, int j, const std::string& what) {
        if (bad++ < 8) msg += "\n  user " + std::to_string(r) + " rank " + std::to_string(j) + ": " + what;
      };
      for (int64_t r = 0; r < c.users; ++r) {
        const std::set<int32_t> excl(eitems.begin() + eoff[r], eitems.begin() + eoff[r + 1]);
        std::vector<double> exact, bound(static_cast<size_t>(c.items));
        std::vector<double> ref(static_cast<size_t>(c.items));
        double max_bound = 0;
        for (int32_t j = 0; j < c.items; ++j) {
          double s = 0, a = 0;
          for (int t = 0; t < c.d; ++t) {
            const double p = double(U[r * c.d + t]) * double(V[int64_t{j} * c.d + t]);
            s += p;
            a += std::fabs(p);
          }
          ref[j] = s;
          bound[j] = unit * a + 1e-6 * c.d;
          max_bound = std::max(max_bound, bound[j]);
          if (!excl.count(j)) exact.push_back(s);
        }
        std::sort(exact.rbegin(), exact.rend());
        const int64_t valid = std::min<int64_t>(c.k, static_cast<int64_t>(exact.size()));
        std::set<int32_t> seen;
        for (int j = 0; j < c.k; ++j) {
          const size_t at = static_cast<size_t>(r * c.k + j);
          const int32_t item = got.items[at];
          const float s = got.scores[at];
          if (j >= valid) {
            if (item != -1 || !(std::isinf(s) && s < 0)) fail(r, j, "expected padding");
            continue;
          }
          if (item < 0 || item >= c.items) {
            fail(r, j, "item out of range");
            continue;
          }
          if (excl.count(item)) fail(r, j, "excluded item");
          if (!seen.insert(item).second) fail(r, j, "duplicate item");
          if (!near(s, ref[item], bound[item]))
            fail(r, j, "score " + std::to_string(s) + " vs float64 " + std::to_string(ref[item]));
          if (!(ref[item] >= exact[j] - 2 * max_bound))
            fail(r, j, "item scores " + std::to_string(ref[item]) + ", the exact rank-" +
                           std::to_string(j) + " score is " + std::to_string(exact[j]));
          if (j > 0) {
            if (!ranks_after(s, item, got.scores[at - 1], got.items[at - 1]))
              fail(r, j, "out of order");
          }
        }
      }
      EXPECT_EQ(bad, 0) << msg;
    }
}
#endif

// The policy's names, the environment's override (the one place it is read),
// and the CPU backend's one version whatever the policy.
TEST(TopkPolicy, NamesEnvironmentAndCpu) {
  EXPECT_EQ(parse_enum<TopkPrecision>("bf16"), TopkPrecision::kBF16);
  EXPECT_EQ(parse_enum<TopkPath>("fused"), TopkPath::kFused);
  EXPECT_STREQ(to_string(TopkPrecision::kTF32), "tf32");
  EXPECT_THROW(parse_enum<TopkPrecision>("fp16"), Error);
  EXPECT_THROW(parse_enum<TopkPath>("fast"), Error);

  ASSERT_EQ(setenv("TOWERREC_TOPK_PATH", "gemm", 1), 0);
  ASSERT_EQ(setenv("TOWERREC_TOPK_PRECISION", "", 1), 0);  // empty: not set
  TopkPolicy p = topk_policy_with_env({TopkPath::kFused, TopkPrecision::kBF16});
  EXPECT_EQ(p.path, TopkPath::kGemm);
  EXPECT_EQ(p.precision, TopkPrecision::kBF16);
  ASSERT_EQ(setenv("TOWERREC_TOPK_PRECISION", "fp16", 1), 0);
  EXPECT_THROW(topk_policy_with_env({}), Error);
  unsetenv("TOWERREC_TOPK_PATH");
  unsetenv("TOWERREC_TOPK_PRECISION");
  p = topk_policy_with_env({TopkPath::kFused, TopkPrecision::kTF32});
  EXPECT_EQ(p.path, TopkPath::kFused);
  EXPECT_EQ(p.precision, TopkPrecision::kTF32);

  auto cpu = make_cpu_backend(1);
  const std::vector<float> U = {1, 0, 0.5f, 2}, V = {0, 1, 1, 1, 2, 0, -1, 3};
  const TopkCase c{2, 4, 2, 3, false, false};
  const TopkOut a = run_topk(*cpu, U, V, c, {}, {});
  const TopkOut b = run_topk(*cpu, U, V, c, {}, {}, {TopkPath::kFused, TopkPrecision::kBF16});
  EXPECT_EQ(a.items, b.items);
  EXPECT_TRUE(testing::bit_identical(a.scores, b.scores));
}

}  // namespace cuda_vs_cpu
}  // namespace
}  // namespace towerrec
