// bfloat16 tower products (MatmulPrecision::kBF16): the rounding itself, the
// dense layers on every backend against a float64 reference of the same
// formula on bfloat16-rounded operands, and the trainer's setting.
#include <gtest/gtest.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/cpu_gemm.h"
#include "tests/model_fixture.h"
#include "tests/test_util.h"
#include "towerrec/backend.h"
#include "towerrec/error.h"
#include "towerrec/trainer.h"

namespace towerrec::testing {
namespace {


// The bfloat16 nearest to x, ties to even, worked out in double: bfloat16 keeps
// 8 significant bits, so the spacing at x = m * 2^e (m in [0.5, 1)) is 2^(e-8),
// and 2^-133 for the subnormals (e below -125). nearbyint rounds half to even.
double bf16_ref(float x) {
  if (!std::isfinite(x) || x == 0.0f) return x;
  int e;
  std::frexp(static_cast<double>(x), &e);
  const double q = std::ldexp(1.0, std::max(e, -125) - 8);
  return std::nearbyint(static_cast<double>(x) / q) * q;
}

std::vector<double> rounded(const std::vector<float>& v) {
  std::vector<double> r(v.size());
  for (size_t i = 0; i < v.size(); ++i) r[i] = bf16_ref(v[i]);
  return r;
}

float bits_to_float(uint32_t u) {
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
}

TEST(Bf16, RoundsToNearestEven) {
  EXPECT_EQ(to_bf16(1.0f), 0x3F80);
  EXPECT_EQ(to_bf16(1.0f + 0x1p-8f), 0x3F80);              // tie: down to the even 1.0
  EXPECT_EQ(to_bf16(1.0f + 3 * 0x1p-8f), 0x3F82);          // tie: up to the even neighbour
  EXPECT_EQ(to_bf16(1.0f + 0x1p-8f + 0x1p-20f), 0x3F81);   // just past the tie
  EXPECT_EQ(to_bf16(-2.0f), 0xC000);
  EXPECT_EQ(to_bf16(0.0f), 0x0000);
  EXPECT_EQ(to_bf16(-0.0f), 0x8000);
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(to_bf16(inf), 0x7F80);
  EXPECT_EQ(to_bf16(-inf), 0xFF80);
  EXPECT_EQ(to_bf16(FLT_MAX), 0x7F80);  // past the largest bfloat16: rounds to infinity
  // NaNs stay NaN, also one whose payload sits only in the dropped low bits.
  EXPECT_TRUE(std::isnan(from_bf16(to_bf16(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_TRUE(std::isnan(from_bf16(to_bf16(bits_to_float(0x7F800001u)))));
  EXPECT_TRUE(std::isnan(from_bf16(to_bf16(bits_to_float(0xFF800001u)))));
  EXPECT_EQ(from_bf16(0x3F80), 1.0f);
}

TEST(Bf16, RandomFloatsMatchTheDoubleReference) {
  TRACE_SEED();
  std::mt19937_64 g(test_seed());
  int checked = 0;
  for (int t = 0; t < 1000000; ++t) {
    const float x = bits_to_float(static_cast<uint32_t>(g()));
    if (!std::isfinite(x)) continue;
    const float want = static_cast<float>(bf16_ref(x));
    const float got = from_bf16(to_bf16(x));
    ASSERT_EQ(std::memcmp(&got, &want, sizeof got), 0)
        << "x=" << x << " (bits " << std::hex << to_bf16(x) << ") got " << got << " want " << want;
    ++checked;
  }
  EXPECT_GT(checked, 990000);
}

// The bulk conversion (vectorised where the CPU allows) gives the scalar
// rounding's bits for every float, NaNs, infinities and subnormals included,
// over lengths that leave vector tails and cross its chunks.
TEST(Bf16, BulkConversionMatchesScalarBits) {
  TRACE_SEED();
  std::mt19937_64 g(test_seed());
  for (int threads : {1, 2})
    for (int64_t count : {0, 1, 15, 16, 17, 1000, 65536 + 33, 200003}) {
      std::vector<float> x(static_cast<size_t>(count));
      for (auto& v : x) v = bits_to_float(static_cast<uint32_t>(g()));
      if (count > 3) {
        x[0] = std::numeric_limits<float>::quiet_NaN();
        x[1] = bits_to_float(0x7F800001u);
        x[2] = std::numeric_limits<float>::infinity();
        x[3] = bits_to_float(0x00000001u);
      }
      std::vector<uint16_t> got(x.size() + 1, 0xABCD);
      CpuGemm(threads).convert(x.data(), count, got.data());
      for (int64_t i = 0; i < count; ++i)
        ASSERT_EQ(got[i], to_bf16(x[i])) << "threads=" << threads << " count=" << count << " i=" << i;
      EXPECT_EQ(got[count], 0xABCD) << "wrote past the end";
    }
}

// |got[i] - want[i]| <= bound[i] for all i.
::testing::AssertionResult within(const std::vector<float>& got, const std::vector<double>& want,
                                  const std::vector<double>& bound) {
  if (got.size() != want.size()) return ::testing::AssertionFailure() << "size mismatch";
  int bad = 0;
  std::string msg;
  for (size_t i = 0; i < got.size(); ++i)
    if (!(std::fabs(got[i] - want[i]) <= bound[i])) {
      if (bad++ < 5)
        msg += "\n  [" + std::to_string(i) + "] got " + std::to_string(got[i]) + " want " +
               std::to_string(want[i]) + " bound " + std::to_string(bound[i]);
    }
  if (bad) return ::testing::AssertionFailure() << bad << " of " << got.size() << msg;
  return ::testing::AssertionSuccess();
}

// C = A . B in double with A[m x k] (or its transpose stored [k x m]) and B[k x
// n] (or its transpose stored [n x k]); `mag` gets sum_k |a||b| per element.
void ref_product(const std::vector<double>& A, bool a_t, const std::vector<double>& B, bool b_t,
                 int64_t m, int64_t k, int64_t n, std::vector<double>& C,
                 std::vector<double>& mag) {
  C.assign(static_cast<size_t>(m * n), 0.0);
  mag.assign(C.size(), 0.0);
  for (int64_t r = 0; r < m; ++r)
    for (int64_t c = 0; c < n; ++c) {
      double s = 0, a_abs = 0;
      for (int64_t q = 0; q < k; ++q) {
        const double a = a_t ? A[q * m + r] : A[r * k + q];
        const double b = b_t ? B[c * k + q] : B[q * n + c];
        s += a * b;
        a_abs += std::fabs(a * b);
      }
      C[r * n + c] = s;
      mag[r * n + c] = a_abs;
    }
}

// The dense layers in bfloat16. On the CPU the operands are rounded exactly as
// bf16_ref does and the products summed in float32, so the result sits within
// float32 summation error of the double reference on rounded operands. cuBLAS
// converts the operands itself (its rounding is not documented), so on CUDA
// the bound is that of any bfloat16 conversion: each operand off by at most
// 2^-7 of itself, so each product by 2^-6 of |a b|, plus the summation error.
TEST(MatmulPrecision, Bf16DenseLayersMatchFloat64OnRoundedOperands) {
  TRACE_SEED();
  std::mt19937_64 g(test_seed());
  for (auto& bep : every_backend()) {
    Backend& be = *bep;
    SCOPED_TRACE(be.describe());
    const bool exact_rounding = be.kind() == DeviceKind::kCPU;
    // Forward results at the larger shapes, and those off the float32 product
    // by more than float32 error: most of them in bfloat16, none in float32.
    int64_t compared = 0, differing = 0;
    for (int64_t n : {1, 7, 64, 300})
      for (int in : {1, 17, 130})
        for (int out : {1, 5, 64, 300})
          for (Activation act : {Activation::kNone, Activation::kReLU}) {
            SCOPED_TRACE("n=" + std::to_string(n) + " in=" + std::to_string(in) +
                         " out=" + std::to_string(out) +
                         " relu=" + std::to_string(act == Activation::kReLU));
            const auto X = random_floats(g, static_cast<size_t>(n * in));
            const auto W = random_floats(g, static_cast<size_t>(in) * out);
            const auto b = random_floats(g, static_cast<size_t>(out));
            const auto G = random_floats(g, static_cast<size_t>(n * out));
            auto dX = upload(be, X), dW = upload(be, W), db = upload(be, b);
            auto dY = poisoned(be, n * out);
            be.dense_forward(dX.data(), n, in, dW.data(), db.data(), out, act, dY.data(),
                             MatmulPrecision::kBF16);
            const auto Y = download(be, dY);
            auto gY = upload(be, G);
            auto gW = poisoned(be, int64_t{in} * out), gb = poisoned(be, out),
                 gX = poisoned(be, n * in);
            be.dense_backward(dX.data(), n, in, dW.data(), out, act, dY.data(), gY.data(),
                              gW.data(), gb.data(), gX.data(), MatmulPrecision::kBF16);
            const auto dZ = download(be, gY), gWh = download(be, gW), gbh = download(be, gb),
                       gXh = download(be, gX);

            // float32 summation of k exact products: within (k + 2) 2^-23 of sum |a b|.
            auto bound = [&](const std::vector<double>& mag, int64_t k) {
              std::vector<double> r(mag.size());
              for (size_t i = 0; i < mag.size(); ++i)
                r[i] = (exact_rounding ? 0.0 : 0x1p-6 * mag[i]) +
                       double(k + 2) * 0x1p-23 * mag[i] + 1e-6;
              return r;
            };

            // Forward: act(bf16(X) . bf16(W) + b).
            const auto Xr = rounded(X), Wr = rounded(W);
            std::vector<double> Z, mag;
            ref_product(Xr, false, Wr, false, n, in, out, Z, mag);
            for (int64_t r = 0; r < n; ++r)
              for (int c = 0; c < out; ++c) Z[r * out + c] += b[c];
            std::vector<double> Yref(Z);
            if (act == Activation::kReLU)
              for (double& y : Yref) y = std::max(y, 0.0);
            // Near the ReLU kink the reference and the result may fall on
            // different sides; both are then within the bound of 0.
            ASSERT_TRUE(within(Y, Yref, bound(mag, in))) << "Y";
            if (act == Activation::kNone && in >= 17 && n * in * out >= 300 * 17) {
              std::vector<double> Zf, magf;
              ref_product(to_double(X), false, to_double(W), false, n, in, out, Zf, magf);
              for (size_t i = 0; i < Zf.size(); ++i) {
                const double err = Zf[i] + b[i % out] - Y[i];
                ++compared;
                // Y is within the bfloat16 bound (checked above), so not NaN;
                // the float32 error bound is bound()'s without the bfloat16 term.
                if (std::fabs(err) > double(in + 2) * 0x1p-23 * magf[i] + 1e-6) ++differing;
              }
            }

            // dZ: the float32 gradient, masked by the layer's own output.
            std::vector<float> wantZ(G);
            if (act == Activation::kReLU)
              for (size_t i = 0; i < wantZ.size(); ++i)
                if (!(Y[i] > 0.0f)) wantZ[i] = 0.0f;
            ASSERT_TRUE(bit_identical(dZ, wantZ)) << "dZ";
            // db from the unrounded dZ; dW = bf16(X)^T . bf16(dZ); dX = bf16(dZ) . bf16(W)^T.
            std::vector<double> dbr(out, 0.0), dbmag(out, 0.0);
            for (int64_t r = 0; r < n; ++r)
              for (int c = 0; c < out; ++c) {
                dbr[c] += wantZ[r * out + c];
                dbmag[c] += std::fabs(wantZ[r * out + c]);
              }
            std::vector<double> dbb(out);
            for (int c = 0; c < out; ++c) dbb[c] = 2e-6 * dbmag[c] + 1e-6;
            ASSERT_TRUE(within(gbh, dbr, dbb)) << "db";
            const auto Zr = rounded(wantZ);
            std::vector<double> dWr, dXr;
            ref_product(Xr, true, Zr, false, in, n, out, dWr, mag);
            ASSERT_TRUE(within(gWh, dWr, bound(mag, n))) << "dW";
            ref_product(Zr, false, Wr, true, n, out, in, dXr, mag);
            ASSERT_TRUE(within(gXh, dXr, bound(mag, out))) << "dX";
          }
    // The test can tell bfloat16 from a float32 fallback, on every backend:
    // most results of the larger shapes differ from the unrounded float32
    // product by more than float32 error (about 90% on random inputs).
    EXPECT_GT(compared, 0);
    EXPECT_GT(differing, compared / 2) << differing << " of " << compared;
  }
}

// CpuGemm's three products with and without the epilogue, in float32 and in
// bfloat16 by oneDNN's bf16 GEMM and by the widening fallback (CPUs without a
// fast bf16 GEMM), against double products of the same operands.
TEST(CpuGemm, ProductsMatchFloat64OnEveryPath) {
  TRACE_SEED();
  std::mt19937_64 g(test_seed());
  CpuGemm gemm(1);
  for (int path = 0; path < 3; ++path)  // 0: f32, 1: bf16 native, 2: bf16 fallback
    for (int op = 0; op < 3; ++op)
      for (int64_t n : {1, 37, 300})
        for (auto [in, out] : {std::pair{1, 1}, std::pair{19, 5}, std::pair{64, 130}}) {
          const auto o = static_cast<CpuGemm::Op>(op);
          SCOPED_TRACE("path=" + std::to_string(path) + " op=" + std::to_string(op) +
                       " n=" + std::to_string(n) + " in=" + std::to_string(in) +
                       " out=" + std::to_string(out));
          // A, B and C as the header lays them out for the product.
          const int64_t a_rows = n, a_cols = o == CpuGemm::Op::kBackwardData ? out : in;
          const int64_t b_rows = o == CpuGemm::Op::kBackwardWeights ? n : in, b_cols = out;
          const int64_t c_rows = o == CpuGemm::Op::kBackwardWeights ? in : n;
          const int64_t c_cols = o == CpuGemm::Op::kBackwardData ? in : out;
          auto A = random_floats(g, size_t(a_rows * a_cols));
          auto B = random_floats(g, size_t(b_rows * b_cols));
          const auto bias = random_floats(g, size_t(out));
          const bool epilogue = o == CpuGemm::Op::kForward && n % 2 == 1;
          std::vector<float> C(size_t(c_rows * c_cols), poison());
          if (path == 0) {
            gemm.f32(o, n, in, out, A.data(), B.data(), C.data(),
                     epilogue ? GemmEpilogue{bias.data(), true} : GemmEpilogue{});
          } else {
            std::vector<uint16_t> Ab(A.size()), Bb(B.size());
            gemm.convert(A.data(), int64_t(A.size()), Ab.data());
            gemm.convert(B.data(), int64_t(B.size()), Bb.data());
            for (size_t i = 0; i < A.size(); ++i) A[i] = from_bf16(Ab[i]);
            for (size_t i = 0; i < B.size(); ++i) B[i] = from_bf16(Bb[i]);
            gemm.force_bf16_fallback(path == 2);
            gemm.bf16(o, n, in, out, Ab.data(), Bb.data(), C.data(),
                      epilogue ? GemmEpilogue{bias.data(), true} : GemmEpilogue{});
            gemm.force_bf16_fallback(false);
          }
          std::vector<double> want, mag;
          switch (o) {
            case CpuGemm::Op::kForward:
              ref_product(to_double(A), false, to_double(B), false, n, in, out, want, mag);
              break;
            case CpuGemm::Op::kBackwardData:  // [n x out] . [in x out]^T
              ref_product(to_double(A), false, to_double(B), true, n, out, in, want, mag);
              break;
            case CpuGemm::Op::kBackwardWeights:  // [n x in]^T . [n x out]
              ref_product(to_double(A), true, to_double(B), false, in, n, out, want, mag);
              break;
          }
          const int64_t k = o == CpuGemm::Op::kForward ? in : o == CpuGemm::Op::kBackwardData ? out : n;
          if (epilogue)
            for (int64_t r = 0; r < n; ++r)
              for (int c = 0; c < out; ++c) {
                double& w = want[size_t(r * out + c)];
                w = std::max(w + bias[c], 0.0);
              }
          std::vector<double> bound(want.size());
          for (size_t i = 0; i < want.size(); ++i)
            bound[i] = double(k + 2) * 0x1p-23 * mag[i] + 1e-6;
          ASSERT_TRUE(within(C, want, bound));
        }
}

TEST(MatmulPrecision, NamesParse) {
  EXPECT_EQ(parse_matmul_precision("bf16"), MatmulPrecision::kBF16);
  EXPECT_EQ(parse_matmul_precision("fp32"), MatmulPrecision::kFP32);
  EXPECT_STREQ(matmul_precision_name(MatmulPrecision::kBF16), "bf16");
  EXPECT_THROW(parse_matmul_precision("fp16"), Error);
}

// The trainer runs its steps in its configured precision (passed to every
// dense op of the step; evaluation and scoring forwards run float32).
TEST(MatmulPrecision, TrainerTrainsInBf16) {
  auto run = [](const std::string& precision) {
    ModelFixture f(4, small_tower());
    TrainConfig tc;
    tc.epochs = 3;
    tc.batch_size = 16;
    tc.negatives = 2;
    tc.loss = Loss::kLogistic;
    tc.matmul_precision = parse_matmul_precision(precision);
    tc.optimizer.lr = 0.01f;
    Trainer tr(*f.model, f.ds.interactions, tc);
    std::vector<double> losses;
    while (tr.epochs_done() < tc.epochs) losses.push_back(tr.train_epoch().loss);
    for (double l : losses) EXPECT_TRUE(std::isfinite(l));
    EXPECT_LT(losses.back(), losses.front());
    return all_state(*f.model);
  };
  const auto fp32 = run("fp32"), bf16 = run("bf16");
  ASSERT_EQ(fp32.size(), bf16.size());
  EXPECT_NE(fp32, bf16);  // the setting reached the products
  double max_diff = 0;
  for (size_t i = 0; i < fp32.size(); ++i) max_diff = std::max(max_diff, std::fabs(double(fp32[i]) - bf16[i]));
  EXPECT_LT(max_diff, 0.05);  // and training followed the same course
  EXPECT_EQ(run("bf16"), bf16);  // deterministic

  ModelFixture f(4, small_tower());
  TrainConfig bad;
  bad.matmul_precision = static_cast<MatmulPrecision>(2);  // no such precision
  EXPECT_THROW(Trainer(*f.model, f.ds.interactions, bad), Error);
}

}  // namespace
}  // namespace towerrec::testing
