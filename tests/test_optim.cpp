// The optimizer family (adam, sparse_adam, sgd, sparse_sgd) on every backend
// against the float64 reference kernels/optim/ref.h, on fresh random inputs
// (seed printed on failure; fix it with TOWERREC_TEST_SEED). Element-wise:
// abs 1e-6, rel 1e-5 (Adam's moments 1e-7 / 1e-8 abs). The sparse versions must
// leave every unlisted row untouched.
//
// CUDA against the CPU backend (cuda_vs_cpu below): a few ulps.
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
#include "kernels/optim/ref.h"
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

class OptimOps : public testing::OpsTest {};
TOWERREC_INSTANTIATE_BACKENDS(OptimOps);
class CpuOps : public testing::CpuOpsTest {};

namespace reference {

// ---- optimizers ------------------------------------------------------------------


TEST_P(OptimOps, AdamMatchesFloat64OverSeveralSteps) {
  TRACE_SEED();
  for (int64_t n : {1, 7, 1000, 100003})
    for (float wd : {0.0f, 0.01f}) {
      SCOPED_TRACE("n=" + std::to_string(n) + " wd=" + std::to_string(wd));
      AdamParams ap;
      ap.lr = 1e-2f;
      ap.weight_decay = wd;
      const ref::Adam64 adam64{ap.lr, ap.beta1, ap.beta2, ap.eps, ap.weight_decay};
      const auto p0 = random_floats(rng_, n);
      auto dp = upload(be(), p0);
      auto dm = upload(be(), std::vector<float>(n, 0.0f)), dv = upload(be(), std::vector<float>(n, 0.0f));
      auto wp = to_double(p0);
      std::vector<double> wm(n, 0.0), wv(n, 0.0);
      for (int64_t t = 1; t <= 6; ++t) {
        const auto g = random_floats(rng_, n);
        auto dg = upload(be(), g);
        ap.step = t;
        be().adam(dp.data(), dg.data(), dm.data(), dv.data(), n, ap);
        for (int64_t i = 0; i < n; ++i) adam64.step(wp[i], g[i], wm[i], wv[i], t);
      }
      ASSERT_TRUE(all_close(download(be(), dp), wp, 1e-6, 1e-5)) << "param";
      ASSERT_TRUE(all_close(download(be(), dm), wm, 1e-7, 1e-5)) << "m";
      ASSERT_TRUE(all_close(download(be(), dv), wv, 1e-8, 1e-5)) << "v";
    }
}

TEST_P(OptimOps, SparseAdamTouchesOnlyListedRows) {
  TRACE_SEED();
  for (int dim : {1, 5, 17, 64})
    for (int64_t n : {1, 7, 33, 900}) {
      SCOPED_TRACE("dim=" + std::to_string(dim) + " n=" + std::to_string(n));
      const int n_rows = 1000, col_off = 2, ld = dim + 5;
      std::vector<int32_t> perm(n_rows);
      std::iota(perm.begin(), perm.end(), 0);
      std::shuffle(perm.begin(), perm.end(), rng_);
      const std::vector<int32_t> rows(perm.begin(), perm.begin() + n);
      const auto t0 = random_floats(rng_, size_t(n_rows) * dim);
      const auto m0 = random_floats(rng_, size_t(n_rows) * dim, -0.1f, 0.1f);
      const auto v0 = random_floats(rng_, size_t(n_rows) * dim, 0.0f, 0.01f);
      auto dt = upload(be(), t0), dm = upload(be(), m0), dv = upload(be(), v0);
      auto drows = upload(be(), rows);
      AdamParams ap;
      ap.lr = 1e-2f;
      ap.weight_decay = 0.05f;
      const ref::Adam64 adam64{ap.lr, ap.beta1, ap.beta2, ap.eps, ap.weight_decay};
      auto wt = to_double(t0), wm = to_double(m0), wv = to_double(v0);
      for (int64_t t = 3; t <= 5; ++t) {
        const auto g = random_floats(rng_, n * ld);
        auto dg = upload(be(), g);
        ap.step = t;
        be().sparse_adam(dt.data(), dm.data(), dv.data(), dim, drows.data(), n, dg.data(), ld,
                         col_off, ap);
        for (int64_t r = 0; r < n; ++r)
          for (int c = 0; c < dim; ++c) {
            const size_t i = size_t(rows[r]) * dim + c;
            adam64.step(wt[i], g[r * ld + col_off + c], wm[i], wv[i], t);
          }
      }
      const auto gt = download(be(), dt), gm = download(be(), dm), gv = download(be(), dv);
      ASSERT_TRUE(all_close(gt, wt, 1e-6, 1e-5)) << "table";
      ASSERT_TRUE(all_close(gm, wm, 1e-7, 1e-5)) << "m";
      ASSERT_TRUE(all_close(gv, wv, 1e-8, 1e-5)) << "v";
      std::set<int32_t> touched(rows.begin(), rows.end());
      for (int32_t r = 0; r < n_rows; ++r) {
        if (touched.count(r)) continue;
        const size_t o = size_t(r) * dim;
        ASSERT_EQ(std::memcmp(&gt[o], &t0[o], dim * sizeof(float)), 0) << "row " << r;
        ASSERT_EQ(std::memcmp(&gm[o], &m0[o], dim * sizeof(float)), 0) << "row " << r;
        ASSERT_EQ(std::memcmp(&gv[o], &v0[o], dim * sizeof(float)), 0) << "row " << r;
      }
    }
}

TEST_P(OptimOps, SgdMatchesFloat64) {
  TRACE_SEED();
  for (int64_t n : {1, 7, 100003})
    for (float wd : {0.0f, 0.1f}) {
      SCOPED_TRACE("n=" + std::to_string(n) + " wd=" + std::to_string(wd));
      const auto p0 = random_floats(rng_, n), g = random_floats(rng_, n);
      auto dp = upload(be(), p0), dg = upload(be(), g);
      const float lr = 0.05f;
      be().sgd(dp.data(), dg.data(), n, lr, wd);
      std::vector<double> want(n);
      for (int64_t i = 0; i < n; ++i) want[i] = p0[i] - double(lr) * (g[i] + double(wd) * p0[i]);
      ASSERT_TRUE(all_close(download(be(), dp), want, 1e-6, 1e-6));
    }
}

TEST_P(OptimOps, SparseSgdTouchesOnlyListedRows) {
  TRACE_SEED();
  for (int dim : {1, 5, 17, 64})
    for (int64_t n : {1, 7, 33, 900}) {
      SCOPED_TRACE("dim=" + std::to_string(dim) + " n=" + std::to_string(n));
      const int n_rows = 1000, col_off = 3, ld = dim + 4;
      std::vector<int32_t> perm(n_rows);
      std::iota(perm.begin(), perm.end(), 0);
      std::shuffle(perm.begin(), perm.end(), rng_);
      const std::vector<int32_t> rows(perm.begin(), perm.begin() + n);
      const auto t0 = random_floats(rng_, size_t(n_rows) * dim), g = random_floats(rng_, n * ld);
      auto dt = upload(be(), t0), dg = upload(be(), g);
      auto drows = upload(be(), rows);
      const float lr = 0.1f, wd = 0.02f;
      be().sparse_sgd(dt.data(), dim, drows.data(), n, dg.data(), ld, col_off, lr, wd);
      auto want = to_double(t0);
      for (int64_t r = 0; r < n; ++r)
        for (int c = 0; c < dim; ++c) {
          double& p = want[size_t(rows[r]) * dim + c];
          p -= double(lr) * (g[r * ld + col_off + c] + double(wd) * p);
        }
      const auto got = download(be(), dt);
      ASSERT_TRUE(all_close(got, want, 1e-6, 1e-6));
      std::set<int32_t> touched(rows.begin(), rows.end());
      for (int32_t r = 0; r < n_rows; ++r) {
        if (touched.count(r)) continue;
        ASSERT_EQ(std::memcmp(&got[size_t(r) * dim], &t0[size_t(r) * dim], dim * sizeof(float)), 0)
            << "row " << r;
      }
    }
}


}  // namespace reference

// ---- CUDA against the CPU backend ------------------------------------------------
// Agreement checks on top of the reference suite above: both backends on the
// same inputs (sizes off the kernels' tiles, several kernel versions).
namespace cuda_vs_cpu {


using namespace testing::cuda_vs_cpu;  // kWidths, kRows, strided_poisoned, as_double
// ---- optimizers ------------------------------------------------------------------------

TEST(CudaOps, Adam) {
  TOWERREC_REQUIRE_CUDA();
  TRACE_SEED();
  std::mt19937_64 g(test_seed());
  auto cpu = make_cpu_backend();
  auto gpu = make_cuda_backend(0);
  for (int64_t n : {int64_t{1}, int64_t{7}, int64_t{33}, int64_t{257}, int64_t{100003}})
    for (int64_t step : {int64_t{1}, int64_t{10}})
      for (float wd : {0.0f, 0.01f}) {
        SCOPED_TRACE("n=" + std::to_string(n) + " step=" + std::to_string(step));
        const auto p0 = random_floats(g, static_cast<size_t>(n));
        const auto gr = random_floats(g, static_cast<size_t>(n));
        const auto m0 = random_floats(g, static_cast<size_t>(n), -0.1f, 0.1f);
        const auto v0 = random_floats(g, static_cast<size_t>(n), 0.0f, 0.1f);
        AdamParams ap;
        ap.lr = 0.01f;
        ap.weight_decay = wd;
        ap.step = step;
        struct Out {
          std::vector<float> p, m, v;
        };
        auto run = [&](Backend& be) {
          auto p = upload(be, p0);
          auto gg = upload(be, gr);
          auto m = upload(be, m0);
          auto v = upload(be, v0);
          be.adam(p.data(), gg.data(), m.data(), v.data(), n, ap);
          return Out{download(be, p), download(be, m), download(be, v)};
        };
        const Out want = run(*cpu), got = run(*gpu);
        EXPECT_TRUE(all_close(got.p, as_double(want.p), 1e-6, 1e-5)) << "param";
        EXPECT_TRUE(all_close(got.m, as_double(want.m), 1e-7, 1e-5)) << "m";
        EXPECT_TRUE(all_close(got.v, as_double(want.v), 1e-8, 1e-5)) << "v";
      }
}

TEST(CudaOps, SparseAdam) {
  TOWERREC_REQUIRE_CUDA();
  TRACE_SEED();
  std::mt19937_64 g(test_seed());
  auto cpu = make_cpu_backend();
  auto gpu = make_cuda_backend(0);
  const int32_t table_rows = 300;
  for (int64_t n : kRows)
    for (int dim : {1, 5, 17, 64, 130}) {
      SCOPED_TRACE("n=" + std::to_string(n) + " dim=" + std::to_string(dim));
      std::vector<int32_t> rows(table_rows);
      std::iota(rows.begin(), rows.end(), 0);
      std::shuffle(rows.begin(), rows.end(), g);
      rows.resize(static_cast<size_t>(n));  // distinct rows
      const int col_off = 3, ld = col_off + dim + 1;
      const size_t tn = static_cast<size_t>(table_rows) * dim;
      const auto t0 = random_floats(g, tn), m0 = random_floats(g, tn, -0.1f, 0.1f);
      const auto v0 = random_floats(g, tn, 0.0f, 0.1f);
      const auto gr = random_floats(g, static_cast<size_t>(n * ld));
      AdamParams ap;
      ap.lr = 0.02f;
      ap.weight_decay = 0.01f;
      ap.step = 3;
      struct Out {
        std::vector<float> t, m, v;
      };
      auto run = [&](Backend& be) {
        auto t = upload(be, t0);
        auto m = upload(be, m0);
        auto v = upload(be, v0);
        auto r = upload(be, rows);
        auto gg = upload(be, gr);
        be.sparse_adam(t.data(), m.data(), v.data(), dim, r.data(), n, gg.data(), ld, col_off, ap);
        return Out{download(be, t), download(be, m), download(be, v)};
      };
      const Out want = run(*cpu), got = run(*gpu);
      EXPECT_TRUE(all_close(got.t, as_double(want.t), 1e-6, 1e-5)) << "table";
      EXPECT_TRUE(all_close(got.m, as_double(want.m), 1e-7, 1e-5)) << "m";
      EXPECT_TRUE(all_close(got.v, as_double(want.v), 1e-8, 1e-5)) << "v";
    }
}

TEST(CudaOps, Sgd) {
  TOWERREC_REQUIRE_CUDA();
  TRACE_SEED();
  std::mt19937_64 g(test_seed());
  auto cpu = make_cpu_backend();
  auto gpu = make_cuda_backend(0);
  for (int64_t n : {int64_t{1}, int64_t{7}, int64_t{33}, int64_t{257}, int64_t{100003}})
    for (float wd : {0.0f, 0.01f}) {
      SCOPED_TRACE("n=" + std::to_string(n));
      const auto p0 = random_floats(g, static_cast<size_t>(n));
      const auto gr = random_floats(g, static_cast<size_t>(n));
      auto run = [&](Backend& be) {
        auto p = upload(be, p0);
        auto gg = upload(be, gr);
        be.sgd(p.data(), gg.data(), n, 0.05f, wd);
        return download(be, p);
      };
      const auto want = run(*cpu);
      EXPECT_TRUE(all_close(run(*gpu), as_double(want), 1e-7, 1e-6));
    }
}

TEST(CudaOps, SparseSgd) {
  TOWERREC_REQUIRE_CUDA();
  TRACE_SEED();
  std::mt19937_64 g(test_seed());
  auto cpu = make_cpu_backend();
  auto gpu = make_cuda_backend(0);
  const int32_t table_rows = 300;
  for (int64_t n : kRows)
    for (int dim : {1, 5, 17, 64, 130}) {
      SCOPED_TRACE("n=" + std::to_string(n) + " dim=" + std::to_string(dim));
      std::vector<int32_t> rows(table_rows);
      std::iota(rows.begin(), rows.end(), 0);
      std::shuffle(rows.begin(), rows.end(), g);
      rows.resize(static_cast<size_t>(n));
      const int col_off = 2, ld = col_off + dim;
      const auto t0 = random_floats(g, static_cast<size_t>(table_rows) * dim);
      const auto gr = random_floats(g, static_cast<size_t>(n * ld));
      auto run = [&](Backend& be) {
        auto t = upload(be, t0);
        auto r = upload(be, rows);
        auto gg = upload(be, gr);
        be.sparse_sgd(t.data(), dim, r.data(), n, gg.data(), ld, col_off, 0.05f, 0.01f);
        return download(be, t);
      };
      const auto want = run(*cpu);
      EXPECT_TRUE(all_close(run(*gpu), as_double(want), 1e-7, 1e-6));
    }
}

}  // namespace cuda_vs_cpu
}  // namespace
}  // namespace towerrec
