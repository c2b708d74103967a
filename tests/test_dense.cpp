// The dense family (dense_forward, dense_backward) on every backend against the
// float64 reference kernels/dense/ref.h, on
// fresh random inputs (seed printed on failure; fix it with TOWERREC_TEST_SEED).
// Outputs are poisoned with NaN first, so an unwritten element fails. Every
// backward is also checked by central finite differences of a float64 forward.
//
// Tolerances (|got - want| <= abs + rel * |want|), float32 ops vs float64:
//  * matmul outputs: abs = 2e-6 * K + 1e-6 (K = reduction length, inputs in
//    [-1, 1]), rel = 1e-5;
//  * element-wise ops (gather, bag means, optimizers): abs 1e-6, rel 1e-5;
//  * finite differences (h = 1e-6 for piecewise-linear forwards, 1e-5 for the
//    smooth loss): abs 1e-4, rel 1e-4. The forwards are linear or smooth in the
//    perturbed entry, so the finite difference itself is accurate to ~1e-9; the
//    tolerance covers the float32 analytic side.
//
// CUDA against the CPU backend (cuda_vs_cpu below):
// Tolerances (fp32, both backends sum in different orders):
//   dense:  |got - want| <= 1e-6 * (reduction length + 1) + 1e-5 * |want|
//   masks, gathers, bag means, SGD, Adam: at most a few ulps (1e-6 abs, 1e-5 rel)
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
#include "kernels/dense/ref.h"
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

class DenseOps : public testing::OpsTest {};
TOWERREC_INSTANTIATE_BACKENDS(DenseOps);
class CpuOps : public testing::CpuOpsTest {};

namespace reference {

// ---- dense ------------------------------------------------------------------

const char* act_name(Activation a) { return a == Activation::kReLU ? "relu" : "none"; }

TEST_P(DenseOps, DenseForwardMatchesFloat64) {
  TRACE_SEED();
  for (int64_t n : {1, 7, 33, 129})
    for (int in : {1, 5, 17, 64, 130})
      for (int out : {1, 5, 17, 64, 130})
        for (Activation act : {Activation::kNone, Activation::kReLU}) {
          SCOPED_TRACE("n=" + std::to_string(n) + " in=" + std::to_string(in) + " out=" +
                       std::to_string(out) + " act=" + act_name(act));
          const auto X = random_floats(rng_, n * in), W = random_floats(rng_, size_t(in) * out),
                     b = random_floats(rng_, out);
          auto dX = upload(be(), X), dW = upload(be(), W), db = upload(be(), b);
          auto dY = poisoned(be(), n * out);
          be().dense_forward(dX.data(), n, in, dW.data(), db.data(), out, act, dY.data(),
                             MatmulPrecision::kFP32);
          const auto want = ref::dense_forward(to_double(X), n, in, to_double(W), to_double(b), out, act);
          const auto got = download(be(), dY);
          ASSERT_TRUE(all_close(got, want, matmul_abs_tol(in), 1e-5));
          if (act == Activation::kReLU) {
            for (float y : got) ASSERT_GE(y, 0.0f);
          }
        }
}

TEST_P(DenseOps, DenseBackwardMatchesFloat64AndFiniteDifferences) {
  TRACE_SEED();
  for (int64_t n : {1, 7, 33, 129})
    for (int in : {1, 5, 17, 64, 130})
      for (int out : {1, 5, 17, 64, 130})
        for (Activation act : {Activation::kNone, Activation::kReLU})
          for (bool with_dx : {false, true}) {
            SCOPED_TRACE("n=" + std::to_string(n) + " in=" + std::to_string(in) + " out=" +
                         std::to_string(out) + " act=" + act_name(act) +
                         " dX=" + (with_dx ? "yes" : "null"));
            // Shapes checked by finite differences: the forward is piecewise linear,
            // so redraw inputs until every pre-activation is at least 1e-5 away from
            // the ReLU kink (a step of h = 1e-6 on any entry, all of magnitude <= 1,
            // then never crosses it).
            const bool fd = with_dx && n * in * out <= 40000;
            std::vector<float> X, W, b, G;
            for (int attempt = 0;; ++attempt) {
              X = random_floats(rng_, n * in);
              W = random_floats(rng_, size_t(in) * out);
              b = random_floats(rng_, out);
              G = random_floats(rng_, n * out);
              if (!fd || act != Activation::kReLU || attempt == 100) break;
              const auto Z = ref::dense_forward(to_double(X), n, in, to_double(W), to_double(b), out,
                                       Activation::kNone);
              if (std::all_of(Z.begin(), Z.end(), [](double z) { return std::fabs(z) >= 1e-5; }))
                break;
            }
            auto dX = upload(be(), X), dW = upload(be(), W), db = upload(be(), b);
            auto dY = poisoned(be(), n * out);
            be().dense_forward(dX.data(), n, in, dW.data(), db.data(), out, act, dY.data(),
                               MatmulPrecision::kFP32);
            const auto Y = download(be(), dY);

            auto gY = upload(be(), G);
            auto gW = poisoned(be(), int64_t{in} * out), gb = poisoned(be(), out);
            auto gX = poisoned(be(), n * in);
            be().dense_backward(dX.data(), n, in, dW.data(), out, act, dY.data(), gY.data(),
                                gW.data(), gb.data(), with_dx ? gX.data() : nullptr,
                                    MatmulPrecision::kFP32);
            const auto gZ = download(be(), gY), gWh = download(be(), gW), gbh = download(be(), gb),
                       gXh = download(be(), gX);

            // dZ: exactly dY masked by Y > 0.
            std::vector<float> wantZ(G);
            if (act == Activation::kReLU)
              for (size_t i = 0; i < wantZ.size(); ++i)
                if (!(Y[i] > 0.0f)) wantZ[i] = 0.0f;
            ASSERT_TRUE(bit_identical(gZ, wantZ));

            std::vector<double> wW(size_t(in) * out, 0.0), wb(out, 0.0), wX(n * in, 0.0);
            for (int64_t r = 0; r < n; ++r)
              for (int c = 0; c < out; ++c) {
                const double z = wantZ[r * out + c];
                wb[c] += z;
                for (int i = 0; i < in; ++i) {
                  wW[int64_t{i} * out + c] += X[r * in + i] * z;
                  wX[r * in + i] += z * W[int64_t{i} * out + c];
                }
              }
            ASSERT_TRUE(all_close(gWh, wW, matmul_abs_tol(n), 1e-5));
            ASSERT_TRUE(all_close(gbh, wb, matmul_abs_tol(n), 1e-5));
            if (with_dx) {
              ASSERT_TRUE(all_close(gXh, wX, matmul_abs_tol(out), 1e-5));
            } else {
              for (float x : gXh) ASSERT_TRUE(std::isnan(x)) << "dX written although null";
            }

            // Finite differences of L = sum G * act(X W + b), on the smaller shapes.
            if (!fd) continue;
            auto Xd = to_double(X), Wd = to_double(W), bd = to_double(b);
            const auto Gd = to_double(G);
            auto L = [&] {
              const auto Yd = ref::dense_forward(Xd, n, in, Wd, bd, out, act);
              double s = 0.0;
              for (size_t i = 0; i < Yd.size(); ++i) s += Gd[i] * Yd[i];
              return s;
            };
            EXPECT_TRUE(check_fd(rng_, L, Wd, gWh, 1e-6)) << "dW";
            EXPECT_TRUE(check_fd(rng_, L, bd, gbh, 1e-6)) << "db";
            EXPECT_TRUE(check_fd(rng_, L, Xd, gXh, 1e-6)) << "dX";
          }
}

TEST_P(DenseOps, DenseEmptyBatchZeroesGradients) {
  auto W = upload(be(), random_floats(rng_, 15)), b = upload(be(), random_floats(rng_, 5));
  auto gW = poisoned(be(), 15), gb = poisoned(be(), 5);
  be().dense_forward(nullptr, 0, 3, W.data(), b.data(), 5, Activation::kReLU, nullptr,
                     MatmulPrecision::kFP32);
  be().dense_backward(nullptr, 0, 3, W.data(), 5, Activation::kReLU, nullptr, nullptr, gW.data(),
                      gb.data(), nullptr, MatmulPrecision::kFP32);
  for (float x : download(be(), gW)) EXPECT_EQ(x, 0.0f);
  for (float x : download(be(), gb)) EXPECT_EQ(x, 0.0f);
}

TEST_F(CpuOps, DenseRepeatedRunsAreBitIdentical) {
  TRACE_SEED();
  const int64_t n = 513;
  const int in = 130, out = 65;
  const auto X = random_floats(rng_, n * in), W = random_floats(rng_, size_t(in) * out),
             b = random_floats(rng_, out), G = random_floats(rng_, n * out);
  auto run_dense = [&] {
    auto dX = upload(be(), X), dW = upload(be(), W), db = upload(be(), b), gY = upload(be(), G);
    auto Y = poisoned(be(), n * out), gW = poisoned(be(), int64_t{in} * out),
         gb = poisoned(be(), out), gX = poisoned(be(), n * in);
    be().dense_forward(dX.data(), n, in, dW.data(), db.data(), out, Activation::kReLU, Y.data(),
                       MatmulPrecision::kFP32);
    be().dense_backward(dX.data(), n, in, dW.data(), out, Activation::kReLU, Y.data(), gY.data(),
                        gW.data(), gb.data(), gX.data(), MatmulPrecision::kFP32);
    std::vector<float> all = download(be(), Y);
    for (auto* a : {&gY, &gW, &gb, &gX}) {
      const auto v = download(be(), *a);
      all.insert(all.end(), v.begin(), v.end());
    }
    return all;
  };
  EXPECT_TRUE(bit_identical(run_dense(), run_dense())) << "dense";
}

TEST_F(CpuOps, DenseBadArgumentsThrow) {
  auto a = poisoned(be(), 64);
  EXPECT_THROW(be().dense_forward(a.data(), 2, 0, a.data(), a.data(), 3, Activation::kNone, a.data(),
                                  MatmulPrecision::kFP32),
               Error);
  EXPECT_THROW(be().dense_forward(nullptr, 2, 3, a.data(), a.data(), 3, Activation::kNone, a.data(),
                                  MatmulPrecision::kFP32),
               Error);
}


}  // namespace reference

// ---- CUDA against the CPU backend ------------------------------------------------
// Agreement checks on top of the reference suite above: both backends on the
// same inputs (sizes off the kernels' tiles, several kernel versions).
namespace cuda_vs_cpu {


using namespace testing::cuda_vs_cpu;  // kWidths, kRows, strided_poisoned, as_double
// ---- dense --------------------------------------------------------------------------

TEST(CudaOps, DenseForward) {
  TOWERREC_REQUIRE_CUDA();
  TRACE_SEED();
  std::mt19937_64 g(test_seed());
  auto cpu = make_cpu_backend();
  auto gpu = make_cuda_backend(0);
  for (int64_t n : kRows)
    for (int in : kWidths)
      for (int out : kWidths)
        for (Activation act : {Activation::kNone, Activation::kReLU}) {
          SCOPED_TRACE("n=" + std::to_string(n) + " in=" + std::to_string(in) + " out=" +
                       std::to_string(out) + " relu=" + std::to_string(act == Activation::kReLU));
          const auto X = random_floats(g, static_cast<size_t>(n * in));
          const auto W = random_floats(g, static_cast<size_t>(in) * out);
          const auto b = random_floats(g, static_cast<size_t>(out));
          auto run = [&](Backend& be) {
            auto dX = upload(be, X);
            auto dW = upload(be, W);
            auto db = upload(be, b);
            auto Y = poisoned(be, n * out);
            be.dense_forward(dX.data(), n, in, dW.data(), db.data(), out, act, Y.data(),
                             MatmulPrecision::kFP32);
            return download(be, Y);
          };
          const auto want = run(*cpu);
          EXPECT_TRUE(all_close(run(*gpu), as_double(want), 1e-6 * (in + 1), 1e-5));
        }
}

TEST(CudaOps, DenseBackward) {
  TOWERREC_REQUIRE_CUDA();
  TRACE_SEED();
  std::mt19937_64 g(test_seed());
  auto cpu = make_cpu_backend();
  auto gpu = make_cuda_backend(0);
  for (int64_t n : kRows)
    for (int in : kWidths)
      for (int out : kWidths)
        for (Activation act : {Activation::kNone, Activation::kReLU}) {
          const bool with_dx = (n + in + out) % 3 != 0;  // also cover dX == nullptr
          SCOPED_TRACE("n=" + std::to_string(n) + " in=" + std::to_string(in) + " out=" +
                       std::to_string(out) + " relu=" + std::to_string(act == Activation::kReLU) +
                       " dX=" + std::to_string(with_dx));
          const auto X = random_floats(g, static_cast<size_t>(n * in));
          const auto W = random_floats(g, static_cast<size_t>(in) * out);
          auto Y = random_floats(g, static_cast<size_t>(n * out));
          for (float& y : Y) y = std::max(y, 0.0f);  // a ReLU output: about half zeros
          const auto dY = random_floats(g, static_cast<size_t>(n * out));
          struct Out {
            std::vector<float> dz, dw, db, dx;
          };
          auto run = [&](Backend& be) {
            auto dX_in = upload(be, X);
            auto dW_in = upload(be, W);
            auto dY_in = upload(be, Y);
            auto grad = upload(be, dY);
            auto dW = poisoned(be, int64_t{in} * out);
            auto db = poisoned(be, out);
            auto dX = poisoned(be, with_dx ? n * in : 0);
            be.dense_backward(dX_in.data(), n, in, dW_in.data(), out, act, dY_in.data(),
                              grad.data(), dW.data(), db.data(), with_dx ? dX.data() : nullptr,
                                  MatmulPrecision::kFP32);
            return Out{download(be, grad), download(be, dW), download(be, db),
                       download(be, dX)};
          };
          const Out want = run(*cpu), got = run(*gpu);
          EXPECT_TRUE(all_close(got.dz, as_double(want.dz), 0, 0)) << "dZ";
          EXPECT_TRUE(all_close(got.dw, as_double(want.dw), 1e-6 * (n + 1), 1e-5)) << "dW";
          EXPECT_TRUE(all_close(got.db, as_double(want.db), 1e-6 * (n + 1), 1e-5)) << "db";
          EXPECT_TRUE(all_close(got.dx, as_double(want.dx), 1e-6 * (out + 1), 1e-5)) << "dX";
        }
}

}  // namespace cuda_vs_cpu
}  // namespace
}  // namespace towerrec
