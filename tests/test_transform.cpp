// The transform family (l2_normalize, l2_normalize_backward, dropout) on every
// backend against the float64 reference kernels/transform/ref.h, on fresh random
// inputs (seed printed on failure; fix it with TOWERREC_TEST_SEED). Outputs are
// poisoned with NaN first.
//
// Tolerances:
//  * l2_normalize: Y and inv_norm rel 2.4e-7 (2 float ulps; both are rounded from
//    double), no absolute slack; the backward abs 1e-6 + rel 1e-5.
//  * finite differences (h = 1e-5 for the losses, 1e-6 for the normalisation):
//    abs 1e-4 + rel 1e-4, as in test_cpu_ops.cpp.
//  * dropout: bit-exact (the mask is recomputed from rng::uniform here).
//
// CUDA against the CPU backend (cuda_vs_cpu below): L2 normalisation a few ulps;
// dropout bit-identical (same generator, same division).
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
#include "kernels/transform/ref.h"
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

class TransformOps : public testing::OpsTest {};
TOWERREC_INSTANTIATE_BACKENDS(TransformOps);
class CpuOps : public testing::CpuOpsTest {};

namespace reference {

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

TEST_P(TransformOps, L2NormalizeMatchesFloat64) {
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

TEST_P(TransformOps, L2NormalizeBackwardMatchesFloat64AndFiniteDifferences) {
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

TEST_P(TransformOps, DropoutReproducesDocumentedMask) {
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

TEST_P(TransformOps, DropoutKeepRateAndIdentity) {
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

TEST_F(CpuOps, L2NormalizeDropoutIndependentOfThreadCount) {
  TRACE_SEED();
  auto one = make_cpu_backend(1), three = make_cpu_backend(3);
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

TEST_F(CpuOps, TransformBadArgumentsThrow) {
  auto x = poisoned(be(), 8);
  EXPECT_THROW(be().dropout(x.data(), 8, -0.1f, 1, 0), Error);
  EXPECT_THROW(be().dropout(x.data(), 8, 1.5f, 1, 0), Error);
  EXPECT_THROW(be().dropout(x.data(), 8, std::numeric_limits<float>::quiet_NaN(), 1, 0), Error);
  EXPECT_THROW(be().l2_normalize(x.data(), 2, 0, x.data(), x.data()), Error);
}

}  // namespace reference

// ---- CUDA against the CPU backend ------------------------------------------------
// Agreement checks on top of the reference suite above: both backends on the
// same inputs (sizes off the kernels' tiles, several kernel versions).
namespace cuda_vs_cpu {


using namespace testing::cuda_vs_cpu;  // kWidths, kRows, strided_poisoned, as_double

TEST(CudaOps, L2Normalize) {
  TOWERREC_REQUIRE_CUDA();
  TRACE_SEED();
  std::mt19937_64 g(test_seed());
  auto cpu = make_cpu_backend();
  auto gpu = make_cuda_backend(0);
  for (int64_t n : kRows)
    for (int d : kWidths)
      for (const bool in_place : {false, true}) {
        SCOPED_TRACE("n=" + std::to_string(n) + " d=" + std::to_string(d) +
                     " in_place=" + std::to_string(in_place));
        auto X = random_floats(g, static_cast<size_t>(n * d));
        for (int c = 0; c < d; ++c) X[static_cast<size_t>((n - 1) * d + c)] = 0.0f;  // a zero row
        struct Out {
          std::vector<float> y, inv;
        };
        auto run = [&](Backend& be) {
          auto x = upload(be, X);
          auto y = poisoned(be, n * d);
          auto inv = poisoned(be, n);
          float* dst = in_place ? x.data() : y.data();
          be.l2_normalize(x.data(), n, d, dst, inv.data());
          return Out{download(be, in_place ? x : y), download(be, inv)};
        };
        const Out want = run(*cpu), got = run(*gpu);
        EXPECT_TRUE(all_close(got.y, as_double(want.y), 1e-6, 1e-5)) << "Y";
        EXPECT_TRUE(all_close(got.inv, as_double(want.inv), 0, 1e-5)) << "inv_norm";
        for (int c = 0; c < d; ++c)
          EXPECT_EQ(got.y[static_cast<size_t>((n - 1) * d + c)], 0.0f) << "zero row";
      }
}

TEST(CudaOps, L2NormalizeBackward) {
  TOWERREC_REQUIRE_CUDA();
  TRACE_SEED();
  std::mt19937_64 g(test_seed());
  auto cpu = make_cpu_backend();
  auto gpu = make_cuda_backend(0);
  for (int64_t n : kRows)
    for (int d : kWidths)
      for (const bool in_place : {false, true}) {
        SCOPED_TRACE("n=" + std::to_string(n) + " d=" + std::to_string(d) +
                     " in_place=" + std::to_string(in_place));
        // Y: unit rows (the forward's output); inv_norm: positive.
        auto Y = random_floats(g, static_cast<size_t>(n * d));
        for (int64_t r = 0; r < n; ++r) {
          double ss = 0;
          for (int c = 0; c < d; ++c) ss += double(Y[r * d + c]) * Y[r * d + c];
          for (int c = 0; c < d; ++c) Y[r * d + c] = float(Y[r * d + c] / std::sqrt(ss + 1e-30));
        }
        const auto inv = random_floats(g, static_cast<size_t>(n), 0.1f, 3.0f);
        const auto dY = random_floats(g, static_cast<size_t>(n * d));
        auto run = [&](Backend& be) {
          auto y = upload(be, Y);
          auto iv = upload(be, inv);
          auto gy = upload(be, dY);
          auto dx = poisoned(be, n * d);
          be.l2_normalize_backward(y.data(), iv.data(), gy.data(), n, d,
                                   in_place ? gy.data() : dx.data());
          return download(be, in_place ? gy : dx);
        };
        const auto want = run(*cpu);
        EXPECT_TRUE(all_close(run(*gpu), as_double(want), 3e-6 * (d + 1) * 3.0, 1e-5));
      }
}

TEST(CudaOps, Dropout) {
  TOWERREC_REQUIRE_CUDA();
  TRACE_SEED();
  std::mt19937_64 g(test_seed());
  auto cpu = make_cpu_backend();
  auto gpu = make_cuda_backend(0);
  for (int64_t n : {int64_t{1}, int64_t{7}, int64_t{257}, int64_t{100003}})
    for (const float p : {0.0f, 0.1f, 0.5f, 0.9f})
      for (const uint64_t offset : {uint64_t{0}, uint64_t{123456789012345}}) {
        SCOPED_TRACE("n=" + std::to_string(n) + " p=" + std::to_string(p) +
                     " offset=" + std::to_string(offset));
        auto x0 = random_floats(g, static_cast<size_t>(n));
        for (float& v : x0)
          if (v == 0.0f) v = 0.5f;  // a zero output then always means "dropped"
        const uint64_t seed = g();
        auto run = [&](Backend& be) {
          auto x = upload(be, x0);
          be.dropout(x.data(), n, p, seed, offset);
          return download(be, x);
        };
        const auto want = run(*cpu), got = run(*gpu);
        // The mask comes from the same counter-based generator and the kept
        // values from the same division: bit-identical.
        EXPECT_TRUE(all_close(got, as_double(want), 0, 0));
        int64_t dropped = 0;
        for (float v : got) dropped += v == 0.0f;
        if (n >= 100000) {
          EXPECT_NEAR(double(dropped) / double(n), p, 0.01) << "dropped fraction";
        }
      }
}

}  // namespace cuda_vs_cpu
}  // namespace
}  // namespace towerrec
