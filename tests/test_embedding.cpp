// The embedding family (gather_rows, bag_forward, bag_backward) on every backend
// against the float64 reference kernels/embedding/ref.h, on fresh random inputs
// (seed printed on failure; fix it with TOWERREC_TEST_SEED). Outputs are framed:
// the op's column window is NaN-poisoned, the other columns must stay untouched.
// bag_backward is also checked by central finite differences of the reference.
// Tolerances: gathers bit-exact; bag means abs 1e-6 + rel 1e-5; bag_backward
// accumulations abs 2e-6 * n + 1e-6, rel 1e-5; finite differences 1e-4.
//
// CUDA against the CPU backend (cuda_vs_cpu below): gathers exact, bag means
// 1e-6 abs + 1e-5 rel, bag_backward 1e-5 (atomics: the order of additions varies).
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
#include "kernels/embedding/ref.h"
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

class EmbeddingOps : public testing::OpsTest {};
TOWERREC_INSTANTIATE_BACKENDS(EmbeddingOps);
class CpuOps : public testing::CpuOpsTest {};

namespace reference {

// ---- gather and bags ---------------------------------------------------------

// An output matrix whose columns [col_off, col_off + dim) are NaN and whose other
// columns hold random values that the op must leave alone.
std::vector<float> framed_output(std::mt19937_64& g, int64_t n, int ld, int col_off, int dim) {
  auto v = random_floats(g, n * ld, 10.0f, 20.0f);
  for (int64_t r = 0; r < n; ++r)
    for (int c = col_off; c < col_off + dim; ++c) v[r * ld + c] = kNaN;
  return v;
}

::testing::AssertionResult outside_untouched(const std::vector<float>& got,
                                             const std::vector<float>& before, int64_t n, int ld,
                                             int col_off, int dim) {
  for (int64_t r = 0; r < n; ++r)
    for (int c = 0; c < ld; ++c) {
      if (c >= col_off && c < col_off + dim) continue;
      const size_t i = r * ld + c;
      if (std::memcmp(&got[i], &before[i], sizeof(float)) != 0)
        return ::testing::AssertionFailure() << "column " << c << " of row " << r << " changed";
    }
  return ::testing::AssertionSuccess();
}

std::vector<float> window(const std::vector<float>& m, int64_t n, int ld, int col_off, int dim) {
  std::vector<float> w;
  for (int64_t r = 0; r < n; ++r)
    for (int c = 0; c < dim; ++c) w.push_back(m[r * ld + col_off + c]);
  return w;
}

TEST_P(EmbeddingOps, GatherRowsCopiesIntoColumnWindow) {
  TRACE_SEED();
  for (int64_t n : {1, 7, 33, 1029})
    for (int dim : {1, 5, 17, 64})
      for (int col_off : {0, 3})
        for (int extra : {0, 7}) {
          SCOPED_TRACE("n=" + std::to_string(n) + " dim=" + std::to_string(dim) +
                       " col_off=" + std::to_string(col_off) + " extra=" + std::to_string(extra));
          const int n_src = 50, ld = col_off + dim + extra;
          const auto src = random_floats(rng_, size_t(n_src) * dim);
          const auto idx = random_ints(rng_, n, 0, n_src - 1);
          const auto before = framed_output(rng_, n, ld, col_off, dim);
          auto dsrc = upload(be(), src);
          auto didx = upload(be(), idx);
          auto dout = upload(be(), before);
          be().gather_rows(dsrc.data(), dim, didx.data(), n, dout.data(), ld, col_off);
          const auto got = download(be(), dout);
          ASSERT_TRUE(outside_untouched(got, before, n, ld, col_off, dim));
          std::vector<float> want;
          for (int64_t r = 0; r < n; ++r)
            for (int c = 0; c < dim; ++c) want.push_back(src[int64_t{idx[r]} * dim + c]);
          ASSERT_TRUE(bit_identical(window(got, n, ld, col_off, dim), want));
        }
}

// Bags: entity e owns values[offsets[e] .. offsets[e+1]), sizes 0..5 (empty
// bags included), values drawn with repetition (so a bag may repeat a value).
struct Bags {
  std::vector<int32_t> offsets, values;
};
Bags random_bags(std::mt19937_64& g, int n_entities, int n_values) {
  Bags b;
  b.offsets.push_back(0);
  for (int e = 0; e < n_entities; ++e) {
    const int size = (e % 4 == 0) ? 0 : random_ints(g, 1, 0, 5)[0];
    for (int j = 0; j < size; ++j) b.values.push_back(random_ints(g, 1, 0, n_values - 1)[0]);
    if (size >= 2 && e % 3 == 0) b.values.back() = b.values[b.values.size() - 2];  // repeat
    b.offsets.push_back(static_cast<int32_t>(b.values.size()));
  }
  return b;
}


TEST_P(EmbeddingOps, BagForwardMeansBags) {
  TRACE_SEED();
  for (int64_t n : {1, 7, 33, 2049})
    for (int dim : {1, 5, 17, 64})
      for (int col_off : {0, 5}) {
        SCOPED_TRACE("n=" + std::to_string(n) + " dim=" + std::to_string(dim) +
                     " col_off=" + std::to_string(col_off));
        const int n_ent = 40, n_val = 12, ld = col_off + dim + 3;
        const Bags bags = random_bags(rng_, n_ent, n_val);
        const auto table = random_floats(rng_, size_t(n_val) * dim);
        const auto idx = random_ints(rng_, n, 0, n_ent - 1);
        const auto before = framed_output(rng_, n, ld, col_off, dim);
        auto dt = upload(be(), table);
        auto doff = upload(be(), bags.offsets), dval = upload(be(), bags.values);
        auto didx = upload(be(), idx);
        auto dout = upload(be(), before);
        be().bag_forward(dt.data(), dim, doff.data(), dval.data(), didx.data(), n, dout.data(), ld,
                         col_off);
        const auto got = download(be(), dout);
        ASSERT_TRUE(outside_untouched(got, before, n, ld, col_off, dim));
        ASSERT_TRUE(all_close(window(got, n, ld, col_off, dim),
                              ref::bag_forward(to_double(table), dim, bags.offsets, bags.values, idx), 1e-6, 1e-5));
      }
}

TEST_P(EmbeddingOps, BagBackwardAccumulatesAndMatchesFiniteDifferences) {
  TRACE_SEED();
  for (int64_t n : {1, 7, 33, 2049})
    for (int dim : {1, 5, 17, 64})
      for (int col_off : {0, 5}) {
        SCOPED_TRACE("n=" + std::to_string(n) + " dim=" + std::to_string(dim) +
                     " col_off=" + std::to_string(col_off));
        const int n_ent = 40, n_val = 12, ld = col_off + dim + 3;
        const Bags bags = random_bags(rng_, n_ent, n_val);
        const auto idx = random_ints(rng_, n, 0, n_ent - 1);
        const auto G = random_floats(rng_, n * ld);
        const auto init = random_floats(rng_, size_t(n_val) * dim);
        auto doff = upload(be(), bags.offsets), dval = upload(be(), bags.values);
        auto didx = upload(be(), idx);
        auto dG = upload(be(), G);

        // += onto a non-zero table.
        auto dtab = upload(be(), init);
        be().bag_backward(dG.data(), ld, col_off, doff.data(), dval.data(), didx.data(), n, dim,
                          dtab.data());
        std::vector<double> want = to_double(init);
        for (int64_t r = 0; r < n; ++r) {
          const int32_t b0 = bags.offsets[idx[r]], b1 = bags.offsets[idx[r] + 1];
          for (int32_t j = b0; j < b1; ++j)
            for (int c = 0; c < dim; ++c)
              want[size_t(bags.values[j]) * dim + c] +=
                  double(G[r * ld + col_off + c]) / (b1 - b0);
        }
        // Accumulating up to ~n/12 terms of size <= 1 in float32.
        ASSERT_TRUE(all_close(download(be(), dtab), want, matmul_abs_tol(n), 1e-5));

        // From zero, the result is the gradient of L = sum G[window] * bag_forward(table).
        std::vector<float> zeros(size_t(n_val) * dim, 0.0f);
        auto dgrad = upload(be(), zeros);
        be().bag_backward(dG.data(), ld, col_off, doff.data(), dval.data(), didx.data(), n, dim,
                          dgrad.data());
        const auto grad = download(be(), dgrad);
        if (n > 100) continue;
        auto Td = to_double(init);
        const auto Gw = to_double(window(G, n, ld, col_off, dim));
        auto L = [&] {
          const auto out = ref::bag_forward(Td, dim, bags.offsets, bags.values, idx);
          double s = 0.0;
          for (size_t i = 0; i < out.size(); ++i) s += Gw[i] * out[i];
          return s;
        };
        EXPECT_TRUE(check_fd(rng_, L, Td, grad, 1e-6, 60));
      }
}

// Learned pooling weights: the op against the float64 softmax-weighted mean,
// its backward against the reference gradients and against central
// differences of the reference forward (table and logits), with a compact
// dtable addressed through dvalues, and each output alone.
TEST_P(EmbeddingOps, BagWeightedForwardAndBackwardMatchTheReference) {
  TRACE_SEED();
  for (int64_t n : {1, 7, 33, 2049})
    for (int dim : {1, 5, 17, 64})
      for (int col_off : {0, 5}) {
        SCOPED_TRACE("n=" + std::to_string(n) + " dim=" + std::to_string(dim) +
                     " col_off=" + std::to_string(col_off));
        const int n_ent = 40, n_val = 12, ld = col_off + dim + 3;
        const Bags bags = random_bags(rng_, n_ent, n_val);
        const auto table = random_floats(rng_, size_t(n_val) * dim);
        const auto logit = random_floats(rng_, size_t(n_val), -3.0f, 3.0f);
        const auto idx = random_ints(rng_, n, 0, n_ent - 1);
        const auto before = framed_output(rng_, n, ld, col_off, dim);
        auto dt = upload(be(), table), dl = upload(be(), logit);
        auto doff = upload(be(), bags.offsets), dval = upload(be(), bags.values);
        auto didx = upload(be(), idx);
        auto dout = upload(be(), before);
        be().bag_weighted_forward(dt.data(), dl.data(), dim, doff.data(), dval.data(), didx.data(), n,
                                  dout.data(), ld, col_off);
        const auto pooled = download(be(), dout);
        ASSERT_TRUE(outside_untouched(pooled, before, n, ld, col_off, dim));
        const auto Td = to_double(table), Ld = to_double(logit);
        ASSERT_TRUE(all_close(window(pooled, n, ld, col_off, dim),
                              ref::bag_weighted_forward(Td, Ld, dim, bags.offsets, bags.values, idx), 1e-6, 1e-5));

        // Backward: dtable into a compact table through dvalues (row v at v's
        // place in a reversed order), accumulated onto non-zero values.
        const auto G = random_floats(rng_, n * ld);
        std::vector<int32_t> dvalues(bags.values.size());
        for (size_t j = 0; j < dvalues.size(); ++j) dvalues[j] = n_val - 1 - bags.values[j];
        const auto init_t = random_floats(rng_, size_t(n_val) * dim), init_l = random_floats(rng_, size_t(n_val));
        auto dG = upload(be(), G), dP = upload(be(), pooled);
        auto ddv = upload(be(), dvalues);
        auto gt = upload(be(), init_t), gl = upload(be(), init_l);
        be().bag_weighted_backward(dG.data(), dP.data(), ld, col_off, dt.data(), dl.data(), doff.data(),
                                   dval.data(), ddv.data(), didx.data(), n, dim, gt.data(), gl.data());
        std::vector<double> want_t(size_t(n_val) * dim, 0.0), want_l(size_t(n_val), 0.0);
        const auto Gw = to_double(window(G, n, ld, col_off, dim));
        ref::bag_weighted_backward(Gw, Td, Ld, dim, bags.offsets, bags.values, idx, want_t, want_l);
        std::vector<double> want_compact(size_t(n_val) * dim);
        for (int v = 0; v < n_val; ++v)
          for (int c = 0; c < dim; ++c)
            want_compact[size_t(n_val - 1 - v) * dim + c] = init_t[size_t(n_val - 1 - v) * dim + c] + want_t[size_t(v) * dim + c];
        std::vector<double> want_lacc(static_cast<size_t>(n_val), 0.0);
        for (int v = 0; v < n_val; ++v) want_lacc[size_t(v)] = init_l[size_t(v)] + want_l[size_t(v)];
        ASSERT_TRUE(all_close(download(be(), gt), want_compact, matmul_abs_tol(n), 1e-5)) << "dtable";
        ASSERT_TRUE(all_close(download(be(), gl), want_lacc, matmul_abs_tol(n * dim), 1e-4)) << "dlogit";

        // Each output alone, from zero, is the gradient of L = sum G * pooled.
        auto zt = upload(be(), std::vector<float>(size_t(n_val) * dim, 0.0f));
        auto zl = upload(be(), std::vector<float>(size_t(n_val), 0.0f));
        be().bag_weighted_backward(dG.data(), dP.data(), ld, col_off, dt.data(), dl.data(), doff.data(),
                                   dval.data(), nullptr, didx.data(), n, dim, zt.data(), nullptr);
        be().bag_weighted_backward(dG.data(), dP.data(), ld, col_off, dt.data(), dl.data(), doff.data(),
                                   dval.data(), nullptr, didx.data(), n, dim, nullptr, zl.data());
        const auto grad_t = download(be(), zt), grad_l = download(be(), zl);
        ASSERT_TRUE(all_close(grad_t, want_t, matmul_abs_tol(n), 1e-5)) << "dtable alone";
        ASSERT_TRUE(all_close(grad_l, want_l, matmul_abs_tol(n * dim), 1e-4)) << "dlogit alone";
        if (n > 100) continue;
        auto T2 = Td, L2 = Ld;
        auto loss = [&] {
          const auto out = ref::bag_weighted_forward(T2, L2, dim, bags.offsets, bags.values, idx);
          double s = 0.0;
          for (size_t i = 0; i < out.size(); ++i) s += Gw[i] * out[i];
          return s;
        };
        EXPECT_TRUE(check_fd(rng_, loss, T2, grad_t, 1e-6, 60)) << "dtable";
        EXPECT_TRUE(check_fd(rng_, loss, L2, grad_l, 1e-6, 12)) << "dlogit";
      }
}

TEST_F(CpuOps, BagRepeatedRunsAreBitIdentical) {
  TRACE_SEED();
  const Bags bags = random_bags(rng_, 100, 30);
  const auto idx = random_ints(rng_, 5000, 0, 99);
  const auto dout = random_floats(rng_, 5000 * 16);
  auto run_bag = [&] {
    auto doff = upload(be(), bags.offsets), dval = upload(be(), bags.values);
    auto didx = upload(be(), idx);
    auto dg = upload(be(), dout);
    auto tab = upload(be(), std::vector<float>(30 * 16, 0.0f));
    be().bag_backward(dg.data(), 16, 0, doff.data(), dval.data(), didx.data(), 5000, 16, tab.data());
    return download(be(), tab);
  };
  EXPECT_TRUE(bit_identical(run_bag(), run_bag())) << "bag_backward";
}

TEST_F(CpuOps, GatherBadArgumentsThrow) {
  auto a = poisoned(be(), 64);
  std::vector<int32_t> idx = {0};
  auto di = upload(be(), idx);
  EXPECT_THROW(be().gather_rows(a.data(), 4, di.data(), 1, a.data(), 4, 1), Error);
}


}  // namespace reference

// ---- CUDA against the CPU backend ------------------------------------------------
// Agreement checks on top of the reference suite above: both backends on the
// same inputs (sizes off the kernels' tiles, several kernel versions).
namespace cuda_vs_cpu {


using namespace testing::cuda_vs_cpu;  // kWidths, kRows, strided_poisoned, as_double
// ---- embeddings -------------------------------------------------------------------------

TEST(CudaOps, GatherRows) {
  TOWERREC_REQUIRE_CUDA();
  TRACE_SEED();
  std::mt19937_64 g(test_seed());
  auto cpu = make_cpu_backend();
  auto gpu = make_cuda_backend(0);
  for (int64_t n : kRows)
    for (int dim : {1, 5, 17, 64, 130}) {
      const int col_off = static_cast<int>(n % 4), ld = col_off + dim + 3;
      const int32_t rows = 50;
      SCOPED_TRACE("n=" + std::to_string(n) + " dim=" + std::to_string(dim));
      const auto src = random_floats(g, static_cast<size_t>(rows) * dim);
      const auto idx = random_ints(g, static_cast<size_t>(n), 0, rows - 1);
      const auto init = strided_poisoned(g, n, ld, col_off, dim);
      auto run = [&](Backend& be) {
        auto s = upload(be, src);
        auto i = upload(be, idx);
        auto o = upload(be, init);
        be.gather_rows(s.data(), dim, i.data(), n, o.data(), ld, col_off);
        return download(be, o);
      };
      const auto want = run(*cpu);
      EXPECT_TRUE(all_close(run(*gpu), as_double(want), 0, 0));
    }
}

// Bags for n_entities entities over a vocabulary of `vocab` values; some empty.
struct Bags {
  std::vector<int32_t> offsets, values;
};
Bags random_bags(std::mt19937_64& g, int32_t n_entities, int32_t vocab) {
  Bags b;
  b.offsets.push_back(0);
  std::uniform_int_distribution<int> len(0, 5);
  for (int32_t e = 0; e < n_entities; ++e) {
    const int l = e % 7 == 3 ? 0 : len(g);
    for (int j = 0; j < l; ++j) b.values.push_back(random_ints(g, 1, 0, vocab - 1)[0]);
    b.offsets.push_back(static_cast<int32_t>(b.values.size()));
  }
  if (b.values.empty()) b.values.push_back(0);  // keep the upload non-empty
  return b;
}

TEST(CudaOps, BagForward) {
  TOWERREC_REQUIRE_CUDA();
  TRACE_SEED();
  std::mt19937_64 g(test_seed());
  auto cpu = make_cpu_backend();
  auto gpu = make_cuda_backend(0);
  for (int64_t n : kRows)
    for (int dim : {1, 5, 17, 64, 130}) {
      SCOPED_TRACE("n=" + std::to_string(n) + " dim=" + std::to_string(dim));
      const int32_t entities = 40, vocab = 30;
      const int col_off = 2, ld = col_off + dim + 1;
      const Bags bags = random_bags(g, entities, vocab);
      const auto table = random_floats(g, static_cast<size_t>(vocab) * dim);
      const auto idx = random_ints(g, static_cast<size_t>(n), 0, entities - 1);
      const auto init = strided_poisoned(g, n, ld, col_off, dim);
      auto run = [&](Backend& be) {
        auto t = upload(be, table);
        auto off = upload(be, bags.offsets);
        auto val = upload(be, bags.values);
        auto i = upload(be, idx);
        auto o = upload(be, init);
        be.bag_forward(t.data(), dim, off.data(), val.data(), i.data(), n, o.data(), ld, col_off);
        return download(be, o);
      };
      const auto want = run(*cpu);
      EXPECT_TRUE(all_close(run(*gpu), as_double(want), 1e-6, 1e-5));
    }
}

TEST(CudaOps, BagBackward) {
  TOWERREC_REQUIRE_CUDA();
  TRACE_SEED();
  std::mt19937_64 g(test_seed());
  auto cpu = make_cpu_backend();
  auto gpu = make_cuda_backend(0);
  for (int64_t n : kRows)
    for (int dim : {1, 5, 17, 64, 130}) {
      SCOPED_TRACE("n=" + std::to_string(n) + " dim=" + std::to_string(dim));
      const int32_t entities = 40, vocab = 30;
      const int col_off = 1, ld = col_off + dim + 2;
      const Bags bags = random_bags(g, entities, vocab);
      const auto dout = random_floats(g, static_cast<size_t>(n * ld));
      const auto idx = random_ints(g, static_cast<size_t>(n), 0, entities - 1);
      const auto dtable0 = random_floats(g, static_cast<size_t>(vocab) * dim);  // accumulated into
      auto run = [&](Backend& be) {
        auto d = upload(be, dout);
        auto off = upload(be, bags.offsets);
        auto val = upload(be, bags.values);
        auto i = upload(be, idx);
        auto t = upload(be, dtable0);
        be.bag_backward(d.data(), ld, col_off, off.data(), val.data(), i.data(), n, dim, t.data());
        return download(be, t);
      };
      const auto want = run(*cpu);
      // Atomic accumulation on the device: the order of additions varies.
      EXPECT_TRUE(all_close(run(*gpu), as_double(want), 1e-5, 1e-5));
    }
}

TEST(CudaOps, BagWeighted) {
  TOWERREC_REQUIRE_CUDA();
  TRACE_SEED();
  std::mt19937_64 g(test_seed());
  auto cpu = make_cpu_backend();
  auto gpu = make_cuda_backend(0);
  for (int64_t n : kRows)
    for (int dim : {1, 5, 17, 64, 130}) {
      SCOPED_TRACE("n=" + std::to_string(n) + " dim=" + std::to_string(dim));
      const int32_t entities = 40, vocab = 30;
      const int col_off = 1, ld = col_off + dim + 2;
      const Bags bags = random_bags(g, entities, vocab);
      const auto table = random_floats(g, static_cast<size_t>(vocab) * dim);
      const auto logit = random_floats(g, static_cast<size_t>(vocab), -3.0f, 3.0f);
      const auto dout = random_floats(g, static_cast<size_t>(n * ld));
      const auto idx = random_ints(g, static_cast<size_t>(n), 0, entities - 1);
      const auto out0 = strided_poisoned(g, n, ld, col_off, dim);
      auto run = [&](Backend& be) {
        auto t = upload(be, table), l = upload(be, logit), d = upload(be, dout);
        auto off = upload(be, bags.offsets), val = upload(be, bags.values), i = upload(be, idx);
        auto o = upload(be, out0);
        be.bag_weighted_forward(t.data(), l.data(), dim, off.data(), val.data(), i.data(), n, o.data(), ld, col_off);
        auto gt = upload(be, std::vector<float>(static_cast<size_t>(vocab) * dim, 0.0f));
        auto gl = upload(be, std::vector<float>(static_cast<size_t>(vocab), 0.0f));
        be.bag_weighted_backward(d.data(), o.data(), ld, col_off, t.data(), l.data(), off.data(), val.data(),
                                 nullptr, i.data(), n, dim, gt.data(), gl.data());
        std::vector<float> pooled;
        const auto all = download(be, o);
        for (int64_t r = 0; r < n; ++r)
          for (int c = 0; c < dim; ++c) pooled.push_back(all[static_cast<size_t>(r * ld + col_off + c)]);
        return std::make_tuple(pooled, download(be, gt), download(be, gl));
      };
      const auto [p_cpu, t_cpu, l_cpu] = run(*cpu);
      const auto [p_gpu, t_gpu, l_gpu] = run(*gpu);
      EXPECT_TRUE(all_close(p_gpu, as_double(p_cpu), 1e-6, 1e-5)) << "pooled";
      EXPECT_TRUE(all_close(t_gpu, as_double(t_cpu), 1e-5, 1e-5)) << "dtable";
      EXPECT_TRUE(all_close(l_gpu, as_double(l_cpu), 1e-4, 1e-4)) << "dlogit";
    }
}

}  // namespace cuda_vs_cpu
}  // namespace
}  // namespace towerrec
