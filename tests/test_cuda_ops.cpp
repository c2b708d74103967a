// The CUDA backend against the CPU reference backend, op by op, on fresh random
// inputs (seed: TOWERREC_TEST_SEED, else random and printed on failure). Sizes
// are deliberately not multiples of the kernels' tiles (n = 1, 7, 33, 257;
// widths 1, 5, 17, 64, 130, 300 so both dense_forward paths run). Outputs are
// poisoned with NaN first, so an element an op fails to write fails the test.
//
// Tolerances (fp32, both backends sum in different orders):
//   dense:  |got - want| <= 1e-6 * (reduction length + 1) + 1e-5 * |want|
//   masks, gathers, bag means, SGD, Adam: at most a few ulps (1e-6 abs, 1e-5 rel)
//   logistic loss: loss 1e-5 rel; pair gradients 1e-5 abs + 1e-4 rel; dU/dV
//           1e-5 * (pairs in the row + 1) abs + 1e-4 rel
//   BPR: as logistic, scaled by the group size
//   softmax: loss and gradients allow d ulps of each logit (GEMMs in different
//           orders) plus one ulp per term of each gradient reduction
//   L2 normalisation: a few ulps; dropout: bit-identical (same generator, same division)
//   top-K:  scores within 2e-6 * d of the CPU's score at the same rank and of a
//           float64 recomputation; items may differ from the CPU's only where
//           the two scores tie within that tolerance; with integer-valued inputs
//           (exact scores, many exact ties) items must match exactly. Every
//           version runs: GEMM path (two tile sizes) and fused path. TF32/BF16
//           scores: within the precision's bound (see TopkReducedPrecision).
// Every test skips when no CUDA device is present.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "tests/compare.h"
#include "tests/test_util.h"
#include "tests/topk_special.h"
#include "towerrec/backend.h"
#include "towerrec/error.h"
#if TOWERREC_HAVE_CUDA
#include "kernels/cuda/cuda_testing.h"
#endif

namespace towerrec {
namespace {

using testing::all_close;
using testing::download;
using testing::near;
using testing::ranks_after;
using testing::poisoned;
using testing::random_floats;
using testing::random_ints;
using testing::test_seed;
using testing::upload;

std::vector<double> as_double(const std::vector<float>& v) { return {v.begin(), v.end()}; }

const int kWidths[] = {1, 5, 17, 64, 130, 300};
const int64_t kRows[] = {1, 7, 33, 257};

// A host buffer whose columns [col_off, col_off + dim) of every row are NaN and
// whose other columns hold random values: checks both "written" and "untouched".
std::vector<float> strided_poisoned(std::mt19937_64& g, int64_t n, int ld, int col_off, int dim) {
  std::vector<float> v = random_floats(g, static_cast<size_t>(n * ld));
  for (int64_t r = 0; r < n; ++r)
    for (int c = col_off; c < col_off + dim; ++c) v[r * ld + c] = testing::poison();
  return v;
}

// ---- context and memory ------------------------------------------------------------

TEST(CudaBackend, DescribeAndBadDevice) {
  TOWERREC_REQUIRE_CUDA();
  auto gpu = make_cuda_backend(0);
  EXPECT_EQ(gpu->kind(), DeviceKind::kCUDA);
  EXPECT_EQ(gpu->describe().rfind("cuda:0 ", 0), 0u) << gpu->describe();
  EXPECT_THROW(make_cuda_backend(1 << 20), Error);
  EXPECT_THROW(make_cuda_backend(-1), Error);
}

TEST(CudaBackend, MemoryRoundTrip) {
  TOWERREC_REQUIRE_CUDA();
  TRACE_SEED();
  std::mt19937_64 g(test_seed());
  auto gpu = make_cuda_backend(0);
  for (int64_t n : {int64_t{1}, int64_t{7}, int64_t{257}, int64_t{100003}}) {
    const std::vector<float> h = random_floats(g, static_cast<size_t>(n));
    auto a = upload(*gpu, h);
    auto b = poisoned(*gpu, n);
    gpu->copy(b.data(), a.data(), sizeof(float) * static_cast<size_t>(n));
    EXPECT_TRUE(all_close(download(*gpu, b), as_double(h), 0, 0));
    gpu->fill(b.data(), n, 2.5f);
    EXPECT_TRUE(all_close(download(*gpu, b), std::vector<double>(h.size(), 2.5), 0, 0));
  }
  gpu->synchronize();
}

#if TOWERREC_HAVE_CUDA
// fence() recycles passed fences with cudaEventQuery. A fence still pending
// answers cudaErrorNotReady, which is no failure and must not come back as the
// error of the next, unrelated launch check.
TEST(CudaBackend, PendingFenceIsNotTheNextLaunchsError) {
  TOWERREC_REQUIRE_CUDA();
  auto gpu = make_cuda_backend(0);
  // Tens of milliseconds of queued FP32 GEMMs (137 GFLOP each) ahead of the fences.
  const int64_t n = 4096;
  const int in = 4096, out = 4096;
  DeviceArray<float> X(gpu.get(), n * in), W(gpu.get(), int64_t{in} * out), b(gpu.get(), out),
      Y(gpu.get(), n * out);
  gpu->fill(X.data(), n * in, 1e-2f);
  gpu->fill(W.data(), int64_t{in} * out, 1e-2f);
  gpu->fill(b.data(), out, 0.0f);
  for (int i = 0; i < 20; ++i)
    gpu->dense_forward(X.data(), n, in, W.data(), b.data(), out, Activation::kNone, Y.data());
  uint64_t last = 0;
  for (int i = 0; i < 24; ++i) last = gpu->fence();
  // The recycle loop queried the oldest fence and found it pending (else it
  // would have cut the list back to 16 before each new fence).
  ASSERT_GT(cuda::pending_fences(*gpu), 17) << "the queued work finished before the fences";
  EXPECT_NO_THROW(gpu->fill(Y.data(), n * out, 3.0f));
  EXPECT_NO_THROW(gpu->wait_fence(last));
  EXPECT_EQ(cuda::pending_fences(*gpu), 0);
  const std::vector<float> y = download(*gpu, Y);
  EXPECT_TRUE(all_close(y, std::vector<double>(y.size(), 3.0), 0, 0));
}
#endif

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
            be.dense_forward(dX.data(), n, in, dW.data(), db.data(), out, act, Y.data());
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
                              grad.data(), dW.data(), db.data(), with_dx ? dX.data() : nullptr);
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

// ---- loss ---------------------------------------------------------------------------------

struct HostPairs {
  int32_t n_users = 0, n_items = 0;
  std::vector<int32_t> user, item, user_offsets, user_pairs, item_offsets, item_pairs;
  std::vector<float> label;
};

// CSR of `key` (values in [0, n)): offsets[n + 1] and pair indices in increasing order.
void build_csr(const std::vector<int32_t>& key, int32_t n, std::vector<int32_t>& offsets,
               std::vector<int32_t>& pairs) {
  offsets.assign(static_cast<size_t>(n) + 1, 0);
  for (int32_t k : key) ++offsets[static_cast<size_t>(k) + 1];
  for (int32_t i = 0; i < n; ++i) offsets[i + 1] += offsets[i];
  std::vector<int32_t> pos(offsets.begin(), offsets.end() - 1);
  pairs.assign(key.size(), 0);
  for (size_t p = 0; p < key.size(); ++p) pairs[static_cast<size_t>(pos[key[p]]++)] = int32_t(p);
}

HostPairs random_pairs(std::mt19937_64& g, int64_t n_pairs, int32_t n_users, int32_t n_items) {
  HostPairs h;
  h.n_users = n_users;
  h.n_items = n_items;
  // Leave the last user and item without pairs: their gradient rows must be zero.
  h.user = random_ints(g, static_cast<size_t>(n_pairs), 0, std::max(0, n_users - 2));
  h.item = random_ints(g, static_cast<size_t>(n_pairs), 0, std::max(0, n_items - 2));
  for (int64_t p = 0; p < n_pairs; ++p) h.label.push_back(random_ints(g, 1, 0, 1)[0] ? 1.0f : -1.0f);
  build_csr(h.user, n_users, h.user_offsets, h.user_pairs);
  build_csr(h.item, n_items, h.item_offsets, h.item_pairs);
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
        auto user = upload(be, hp.user);
        auto item = upload(be, hp.item);
        auto label = upload(be, hp.label);
        auto uo = upload(be, hp.user_offsets);
        auto up = upload(be, hp.user_pairs);
        auto io = upload(be, hp.item_offsets);
        auto ip = upload(be, hp.item_pairs);
        PairBatch pb;
        pb.n_pairs = c.pairs;
        pb.user = user.data();
        pb.item = item.data();
        pb.label = label.data();
        pb.n_users = c.users;
        pb.user_offsets = uo.data();
        pb.user_pairs = up.data();
        pb.n_items = c.items;
        pb.item_offsets = io.data();
        pb.item_pairs = ip.data();
        auto dU = poisoned(be, int64_t{c.users} * d);
        auto dV = poisoned(be, int64_t{c.items} * d);
        auto pg = poisoned(be, c.pairs);
        auto loss = poisoned(be, 1);
        be.logistic_loss(dUi.data(), dVi.data(), d, pb, scale, dU.data(), dV.data(), pg.data(),
                         loss.data());
        return Out{download(be, dU), download(be, dV), download(be, pg), download(be, loss)};
      };
      const Out want = run(*cpu), got = run(*gpu);
      int max_row = 1;
      for (size_t i = 0; i + 1 < hp.user_offsets.size(); ++i)
        max_row = std::max(max_row, hp.user_offsets[i + 1] - hp.user_offsets[i]);
      for (size_t i = 0; i + 1 < hp.item_offsets.size(); ++i)
        max_row = std::max(max_row, hp.item_offsets[i + 1] - hp.item_offsets[i]);
      EXPECT_TRUE(all_close(got.loss, as_double(want.loss), 1e-6, 1e-5)) << "loss";
      EXPECT_TRUE(all_close(got.pg, as_double(want.pg), 1e-5 * scale, 1e-4)) << "pair_grad";
      const double row_tol = 1e-5 * scale * (max_row + 1);
      EXPECT_TRUE(all_close(got.dU, as_double(want.dU), row_tol, 1e-4)) << "dU";
      EXPECT_TRUE(all_close(got.dV, as_double(want.dV), row_tol, 1e-4)) << "dV";
    }
}

// The arrays of a HostPairs in a backend's memory, and the PairBatch over them.
struct DevicePairs {
  DeviceArray<int32_t> user, item, uo, up, io, ip;
  DeviceArray<float> label;
  PairBatch pb;
  DevicePairs(Backend& be, const HostPairs& hp)
      : user(upload(be, hp.user)), item(upload(be, hp.item)), uo(upload(be, hp.user_offsets)),
        up(upload(be, hp.user_pairs)), io(upload(be, hp.item_offsets)),
        ip(upload(be, hp.item_pairs)), label(upload(be, hp.label)) {
    pb.n_pairs = static_cast<int64_t>(hp.user.size());
    pb.user = user.data();
    pb.item = item.data();
    pb.label = label.data();
    pb.n_users = hp.n_users;
    pb.user_offsets = uo.data();
    pb.user_pairs = up.data();
    pb.n_items = hp.n_items;
    pb.item_offsets = io.data();
    pb.item_pairs = ip.data();
  }
};

// Longest CSR row of either side (the longest reduction of a gradient row).
int max_csr_row(const HostPairs& hp) {
  int m = 1;
  for (size_t i = 0; i + 1 < hp.user_offsets.size(); ++i)
    m = std::max(m, hp.user_offsets[i + 1] - hp.user_offsets[i]);
  for (size_t i = 0; i + 1 < hp.item_offsets.size(); ++i)
    m = std::max(m, hp.item_offsets[i + 1] - hp.item_offsets[i]);
  return m;
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
  build_csr(h.user, n_users, h.user_offsets, h.user_pairs);
  build_csr(h.item, n_items, h.item_offsets, h.item_pairs);
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
        for (const float temp : {1.0f, 0.2f}) {
          SCOPED_TRACE("pairs=" + std::to_string(c.pairs) + " items=" + std::to_string(c.items) +
                       " d=" + std::to_string(d) + " logq=" + std::to_string(with_q) +
                       " T=" + std::to_string(temp));
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
            auto logits = poisoned(be, c.pairs * c.items);
            auto rows = poisoned(be, c.pairs * d);
            auto loss = poisoned(be, 1);
            be.softmax_loss(dUi.data(), dVi.data(), d, dp.pb, with_q ? lq.data() : nullptr, temp,
                            scale, dU.data(), dV.data(), logits.data(), rows.data(),
                            loss.data());
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
                 const std::vector<int32_t>& eitems) {
  auto u = upload(be, U);
  auto v = upload(be, V);
  auto eo = upload(be, eoff);
  auto ei = upload(be, eitems);
  auto oi = upload(be, std::vector<int32_t>(static_cast<size_t>(c.users * c.k), -7));
  auto os = poisoned(be, c.users * c.k);
  be.topk(u.data(), c.users, c.items > 0 ? v.data() : nullptr, c.items, c.d, c.k,
          c.exclude ? eo.data() : nullptr, c.exclude && !eitems.empty() ? ei.data() : nullptr,
          oi.data(), os.data());
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
  cuda::set_topk_path(gpu, cuda::TopkPath::kGemm);
  EXPECT_TRUE(topk_agrees(run_topk(gpu, U, V, c, eoff, eitems), want, U, V, c, eoff, eitems))
      << "gemm path, default tiles";
  cuda::set_topk_tiles(gpu, 5, 37);
  EXPECT_TRUE(topk_agrees(run_topk(gpu, U, V, c, eoff, eitems), want, U, V, c, eoff, eitems))
      << "gemm path, tiles 5 x 37";
  cuda::set_topk_tiles(gpu, 512, 16384);
  cuda::set_topk_path(gpu, cuda::TopkPath::kFused);
  if (c.d <= 64 && c.k <= 128) {
    EXPECT_TRUE(topk_agrees(run_topk(gpu, U, V, c, eoff, eitems), want, U, V, c, eoff, eitems))
        << "fused path";
  } else {
    EXPECT_THROW(run_topk(gpu, U, V, c, eoff, eitems), Error) << "fused path out of range";
  }
  cuda::set_topk_path(gpu, cuda::TopkPath::kAuto);
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
    auto check = [&](Backend& be, const char* what) {
      const TopkOut got = run_topk(be, sc.U, sc.V, c, {}, {});
      EXPECT_TRUE(testing::topk_special_matches(sc, got.items, got.scores)) << what;
    };
    check(*cpu, "cpu");
    check(*gpu, "default path");
    cuda::set_topk_path(*gpu, cuda::TopkPath::kGemm);
    check(*gpu, "gemm path");
    cuda::set_topk_tiles(*gpu, 1, 3);
    check(*gpu, "gemm path, tiles 1 x 3");
    cuda::set_topk_tiles(*gpu, 512, 16384);
    cuda::set_topk_path(*gpu, cuda::TopkPath::kFused);
    check(*gpu, "fused path");
    cuda::set_topk_path(*gpu, cuda::TopkPath::kAuto);
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
       {std::tuple{cuda::TopkPrecision::kTF32, "tf32", 10},
        std::tuple{cuda::TopkPrecision::kBF16, "bf16", 8}})  // e = 2^-mant
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
      cuda::set_topk_precision(*gpu, precision);
      EXPECT_NE(gpu->describe().find(name), std::string::npos) << gpu->describe();
      cuda::set_topk_tiles(*gpu, 256, 1000);  // several chunks and user blocks
      const TopkOut got = run_topk(*gpu, U, V, tc, eoff, eitems);
      cuda::set_topk_tiles(*gpu, 512, 16384);
      // The fused path is FP32 only.
      cuda::set_topk_path(*gpu, cuda::TopkPath::kFused);
      EXPECT_THROW(run_topk(*gpu, U, V, tc, eoff, eitems), Error);
      cuda::set_topk_path(*gpu, cuda::TopkPath::kAuto);
      cuda::set_topk_precision(*gpu, cuda::TopkPrecision::kFP32);

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

TEST(CudaBackend, TopkSettings) {
  EXPECT_EQ(cuda::parse_topk_precision("bf16"), cuda::TopkPrecision::kBF16);
  EXPECT_EQ(cuda::parse_topk_path("fused"), cuda::TopkPath::kFused);
  EXPECT_THROW(cuda::parse_topk_precision("fp16"), Error);
  EXPECT_THROW(cuda::parse_topk_path("fast"), Error);
  auto cpu = make_cpu_backend();
  EXPECT_THROW(cuda::set_topk_path(*cpu, cuda::TopkPath::kGemm), Error);
}
#endif

// ---- allocator ---------------------------------------------------------------------------

#if TOWERREC_HAVE_CUDA
TEST(CudaBackend, SteadyStateDoesNotMalloc) {
  TOWERREC_REQUIRE_CUDA();
  std::mt19937_64 g(test_seed());
  auto gpu = make_cuda_backend(0);
  const int64_t n = 257;
  const int in = 130, out = 300;
  auto step = [&] {
    auto X = upload(*gpu, random_floats(g, static_cast<size_t>(n * in)));
    auto W = upload(*gpu, random_floats(g, static_cast<size_t>(in) * out));
    auto b = upload(*gpu, random_floats(g, static_cast<size_t>(out)));
    DeviceArray<float> Y(gpu.get(), n * out), dW(gpu.get(), int64_t{in} * out),
        db(gpu.get(), out), dX(gpu.get(), n * in);
    gpu->dense_forward(X.data(), n, in, W.data(), b.data(), out, Activation::kReLU, Y.data());
    gpu->dense_backward(X.data(), n, in, W.data(), out, Activation::kReLU, Y.data(), Y.data(),
                        dW.data(), db.data(), dX.data());
    DeviceArray<int32_t> items(gpu.get(), n * 10);
    DeviceArray<float> scores(gpu.get(), n * 10);
    gpu->topk(X.data(), n, X.data(), n, in, 10, nullptr, nullptr, items.data(), scores.data());
    gpu->synchronize();
  };
  step();
  const int64_t mallocs = cuda::allocator_mallocs(*gpu);
  for (int i = 0; i < 5; ++i) step();
  EXPECT_EQ(cuda::allocator_mallocs(*gpu), mallocs);
}
#endif

}  // namespace
}  // namespace towerrec
