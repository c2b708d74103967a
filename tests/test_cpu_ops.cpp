// Every op of the CPU backend against a naive float64 reference written here, on
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
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <set>
#include <string>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/math.h"
#include "tests/test_util.h"
#include "tests/topk_special.h"
#include "towerrec/backend.h"
#include "towerrec/error.h"

namespace towerrec {
namespace {

using testing::all_close;
using testing::download;
using testing::poisoned;
using testing::random_floats;
using testing::random_ints;
using testing::upload;

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

using testing::bit_identical;
using testing::check_fd;
using testing::central_diff;
using testing::sample_indices;
using testing::to_double;

class CpuOps : public ::testing::Test {
 protected:
  CpuOps() : rng_(testing::test_seed() ^ salt()) {}

  static uint64_t salt() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    return std::hash<std::string>{}(std::string(info->test_suite_name()) + "." + info->name());
  }

  std::unique_ptr<Backend> be_ = make_cpu_backend(0);
  Backend& be() { return *be_; }
  std::mt19937_64 rng_;
};


// ---- dense ------------------------------------------------------------------

// Z = X W + b, Y = act(Z), in float64.
std::vector<double> dense_ref(const std::vector<double>& X, int64_t n, int in,
                              const std::vector<double>& W, const std::vector<double>& b, int out,
                              Activation act) {
  std::vector<double> Y(static_cast<size_t>(n * out));
  for (int64_t r = 0; r < n; ++r)
    for (int c = 0; c < out; ++c) {
      double z = b[c];
      for (int i = 0; i < in; ++i) z += X[r * in + i] * W[int64_t{i} * out + c];
      Y[r * out + c] = act == Activation::kReLU ? std::max(z, 0.0) : z;
    }
  return Y;
}

double matmul_abs_tol(int64_t k) { return 2e-6 * static_cast<double>(k) + 1e-6; }

const char* act_name(Activation a) { return a == Activation::kReLU ? "relu" : "none"; }

TEST_F(CpuOps, DenseForwardMatchesFloat64) {
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
          be().dense_forward(dX.data(), n, in, dW.data(), db.data(), out, act, dY.data());
          const auto want = dense_ref(to_double(X), n, in, to_double(W), to_double(b), out, act);
          const auto got = download(be(), dY);
          ASSERT_TRUE(all_close(got, want, matmul_abs_tol(in), 1e-5));
          if (act == Activation::kReLU) {
            for (float y : got) ASSERT_GE(y, 0.0f);
          }
        }
}

TEST_F(CpuOps, DenseBackwardMatchesFloat64AndFiniteDifferences) {
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
              const auto Z = dense_ref(to_double(X), n, in, to_double(W), to_double(b), out,
                                       Activation::kNone);
              if (std::all_of(Z.begin(), Z.end(), [](double z) { return std::fabs(z) >= 1e-5; }))
                break;
            }
            auto dX = upload(be(), X), dW = upload(be(), W), db = upload(be(), b);
            auto dY = poisoned(be(), n * out);
            be().dense_forward(dX.data(), n, in, dW.data(), db.data(), out, act, dY.data());
            const auto Y = download(be(), dY);

            auto gY = upload(be(), G);
            auto gW = poisoned(be(), int64_t{in} * out), gb = poisoned(be(), out);
            auto gX = poisoned(be(), n * in);
            be().dense_backward(dX.data(), n, in, dW.data(), out, act, dY.data(), gY.data(),
                                gW.data(), gb.data(), with_dx ? gX.data() : nullptr);
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
              const auto Yd = dense_ref(Xd, n, in, Wd, bd, out, act);
              double s = 0.0;
              for (size_t i = 0; i < Yd.size(); ++i) s += Gd[i] * Yd[i];
              return s;
            };
            EXPECT_TRUE(check_fd(rng_, L, Wd, gWh, 1e-6)) << "dW";
            EXPECT_TRUE(check_fd(rng_, L, bd, gbh, 1e-6)) << "db";
            EXPECT_TRUE(check_fd(rng_, L, Xd, gXh, 1e-6)) << "dX";
          }
}

TEST_F(CpuOps, DenseEmptyBatchZeroesGradients) {
  auto W = upload(be(), random_floats(rng_, 15)), b = upload(be(), random_floats(rng_, 5));
  auto gW = poisoned(be(), 15), gb = poisoned(be(), 5);
  be().dense_forward(nullptr, 0, 3, W.data(), b.data(), 5, Activation::kReLU, nullptr);
  be().dense_backward(nullptr, 0, 3, W.data(), 5, Activation::kReLU, nullptr, nullptr, gW.data(),
                      gb.data(), nullptr);
  for (float x : download(be(), gW)) EXPECT_EQ(x, 0.0f);
  for (float x : download(be(), gb)) EXPECT_EQ(x, 0.0f);
}

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

TEST_F(CpuOps, GatherRowsCopiesIntoColumnWindow) {
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

std::vector<double> bag_ref(const std::vector<double>& table, int dim, const Bags& bags,
                            const std::vector<int32_t>& idx) {
  std::vector<double> out(idx.size() * dim, 0.0);
  for (size_t r = 0; r < idx.size(); ++r) {
    const int32_t b0 = bags.offsets[idx[r]], b1 = bags.offsets[idx[r] + 1];
    for (int32_t j = b0; j < b1; ++j)
      for (int c = 0; c < dim; ++c) out[r * dim + c] += table[size_t(bags.values[j]) * dim + c];
    if (b1 > b0)
      for (int c = 0; c < dim; ++c) out[r * dim + c] /= (b1 - b0);
  }
  return out;
}

TEST_F(CpuOps, BagForwardMeansBags) {
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
                              bag_ref(to_double(table), dim, bags, idx), 1e-6, 1e-5));
      }
}

TEST_F(CpuOps, BagBackwardAccumulatesAndMatchesFiniteDifferences) {
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
          const auto out = bag_ref(Td, dim, bags, idx);
          double s = 0.0;
          for (size_t i = 0; i < out.size(); ++i) s += Gw[i] * out[i];
          return s;
        };
        EXPECT_TRUE(check_fd(rng_, L, Td, grad, 1e-6, 60));
      }
}

// ---- logistic loss -------------------------------------------------------------

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

// Pairs over n_users x n_items; the last user and last item (when there are at
// least two) get no pairs, so their gradient rows must come out as zeros.
HostPairs random_pairs(std::mt19937_64& g, int32_t n_users, int32_t n_items, int64_t n_pairs) {
  HostPairs h;
  h.n_users = n_users;
  h.n_items = n_items;
  h.user = random_ints(g, n_pairs, 0, std::max(0, n_users - 2));
  h.item = random_ints(g, n_pairs, 0, std::max(0, n_items - 2));
  for (auto y : random_ints(g, n_pairs, 0, 1)) h.label.push_back(y ? 1.0f : -1.0f);
  build_csr(h.user, n_users, h.uoff, h.upairs);
  build_csr(h.item, n_items, h.ioff, h.ipairs);
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

// softplus in float64, written independently of kernels/math.h.
double softplus64(double x) { return x > 0 ? x + std::log1p(std::exp(-x)) : std::log1p(std::exp(x)); }

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

TEST_F(CpuOps, LogisticLossMatchesFloat64AndFiniteDifferences) {
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
      auto score = [&](int64_t p) {
        double v = 0.0;
        for (int c = 0; c < d; ++c) v += Ud[h.user[p] * d + c] * Vd[h.item[p] * d + c];
        return v;
      };
      auto L = [&] {
        double sum = 0.0;
        for (int64_t p = 0; p < s.np; ++p) sum += softplus64(-h.label[p] * score(p));
        return scale * sum;
      };
      std::vector<double> wg(s.np), wU(size_t(s.nu) * d, 0.0), wV(size_t(s.ni) * d, 0.0);
      for (int64_t p = 0; p < s.np; ++p) {
        const double y = h.label[p], sp = score(p);
        wg[p] = -double(scale) * y / (1.0 + std::exp(y * sp));
        for (int c = 0; c < d; ++c) {
          wU[h.user[p] * d + c] += wg[p] * Vd[h.item[p] * d + c];
          wV[h.item[p] * d + c] += wg[p] * Ud[h.user[p] * d + c];
        }
      }
      const double wl = L();
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

TEST_F(CpuOps, LogisticLossStableForHugeScores) {
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
      build_csr(h.user, 1, h.uoff, h.upairs);
      build_csr(h.item, 1, h.ioff, h.ipairs);
      // d = 2 with U = (s/2, s/2), V = (1, 1): the float score is exactly s.
      const std::vector<float> U = {float(s / 2), float(s / 2)}, V = {1.0f, 1.0f};
      const LossOut got = run_loss(be(), U, V, 2, h, 1.0f);
      const double sf = double(float(s / 2)) * 2;
      const double want = softplus64(-double(y) * sf);
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

// ---- optimizers ------------------------------------------------------------------

struct Adam64 {
  double lr, b1, b2, eps, wd;
  void step(double& p, double g, double& m, double& v, int64_t t) const {
    m = b1 * m + (1 - b1) * g;
    v = b2 * v + (1 - b2) * g * g;
    const double mhat = m / (1 - std::pow(b1, double(t)));
    const double vhat = v / (1 - std::pow(b2, double(t)));
    p -= lr * (mhat / (std::sqrt(vhat) + eps) + wd * p);
  }
};

TEST_F(CpuOps, AdamMatchesFloat64OverSeveralSteps) {
  TRACE_SEED();
  for (int64_t n : {1, 7, 1000, 100003})
    for (float wd : {0.0f, 0.01f}) {
      SCOPED_TRACE("n=" + std::to_string(n) + " wd=" + std::to_string(wd));
      AdamParams ap;
      ap.lr = 1e-2f;
      ap.weight_decay = wd;
      const Adam64 ref{ap.lr, ap.beta1, ap.beta2, ap.eps, ap.weight_decay};
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
        for (int64_t i = 0; i < n; ++i) ref.step(wp[i], g[i], wm[i], wv[i], t);
      }
      ASSERT_TRUE(all_close(download(be(), dp), wp, 1e-6, 1e-5)) << "param";
      ASSERT_TRUE(all_close(download(be(), dm), wm, 1e-7, 1e-5)) << "m";
      ASSERT_TRUE(all_close(download(be(), dv), wv, 1e-8, 1e-5)) << "v";
    }
}

TEST_F(CpuOps, SparseAdamTouchesOnlyListedRows) {
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
      const Adam64 ref{ap.lr, ap.beta1, ap.beta2, ap.eps, ap.weight_decay};
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
            ref.step(wt[i], g[r * ld + col_off + c], wm[i], wv[i], t);
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

TEST_F(CpuOps, SgdMatchesFloat64) {
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

TEST_F(CpuOps, SparseSgdTouchesOnlyListedRows) {
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

// ---- top-k ------------------------------------------------------------------------

struct TopkOut {
  std::vector<int32_t> items;
  std::vector<float> scores;
};

TopkOut run_topk(Backend& be, const std::vector<float>& U, int64_t nu, const std::vector<float>& V,
                 int64_t ni, int d, int k, const std::vector<int64_t>* excl_off,
                 const std::vector<int32_t>* excl) {
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
          excl_off ? dex.data() : nullptr, oi.data(), os.data());
  return {download(be, oi), download(be, os)};
}

// Full-sort reference in float64: (score desc, item asc), excluded items skipped,
// padded with (-1, -inf).
void topk_ref(const std::vector<float>& U, int64_t nu, const std::vector<float>& V, int64_t ni,
              int d, int k, const std::vector<int64_t>* excl_off, const std::vector<int32_t>* excl,
              std::vector<int32_t>& items, std::vector<double>& scores,
              std::vector<std::vector<double>>& all_scores) {
  items.assign(size_t(nu * k), -1);
  scores.assign(size_t(nu * k), -kInf);
  all_scores.assign(size_t(nu), std::vector<double>(size_t(ni)));
  for (int64_t r = 0; r < nu; ++r) {
    std::set<int32_t> ex;
    if (excl_off)
      for (int64_t j = (*excl_off)[r]; j < (*excl_off)[r + 1]; ++j) ex.insert((*excl)[j]);
    std::vector<std::pair<double, int32_t>> c;
    for (int64_t j = 0; j < ni; ++j) {
      double s = 0.0;
      for (int t = 0; t < d; ++t) s += double(U[r * d + t]) * V[j * d + t];
      all_scores[r][j] = s;
      if (!ex.count(int32_t(j))) c.emplace_back(s, int32_t(j));
    }
    std::sort(c.begin(), c.end(), [](const auto& a, const auto& b) {
      return a.first > b.first || (a.first == b.first && a.second < b.second);
    });
    for (size_t j = 0; j < c.size() && j < size_t(k); ++j) {
      items[r * k + j] = c[j].second;
      scores[r * k + j] = c[j].first;
    }
  }
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
TEST_F(CpuOps, TopkExactWithTiesExclusionsAndPadding) {
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
        topk_ref(U, s.nu, V, s.ni, s.d, k, po, pe, wi, ws, all);
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
TEST_F(CpuOps, TopkRandomFloatsMatchReferenceByValue) {
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
      topk_ref(U, nu, V, ni, d, k, &off, &ex, wi, ws, all);
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

TEST_F(CpuOps, TopkNaNScoresRankLastWithoutCrashing) {
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

TEST_F(CpuOps, TopkEmptyCatalogPadsEverything) {
  const std::vector<float> U = {1.0f, 2.0f};
  const TopkOut got = run_topk(be(), U, 1, {}, 0, 2, 3, nullptr, nullptr);
  EXPECT_EQ(got.items, (std::vector<int32_t>{-1, -1, -1}));
  for (float s : got.scores) EXPECT_EQ(s, -INFINITY);
}

// ---- determinism and errors ------------------------------------------------------------

TEST_F(CpuOps, RepeatedRunsAreBitIdentical) {
  TRACE_SEED();
  const int64_t n = 513;
  const int in = 130, out = 65;
  const auto X = random_floats(rng_, n * in), W = random_floats(rng_, size_t(in) * out),
             b = random_floats(rng_, out), G = random_floats(rng_, n * out);
  auto run_dense = [&] {
    auto dX = upload(be(), X), dW = upload(be(), W), db = upload(be(), b), gY = upload(be(), G);
    auto Y = poisoned(be(), n * out), gW = poisoned(be(), int64_t{in} * out),
         gb = poisoned(be(), out), gX = poisoned(be(), n * in);
    be().dense_forward(dX.data(), n, in, dW.data(), db.data(), out, Activation::kReLU, Y.data());
    be().dense_backward(dX.data(), n, in, dW.data(), out, Activation::kReLU, Y.data(), gY.data(),
                        gW.data(), gb.data(), gX.data());
    std::vector<float> all = download(be(), Y);
    for (auto* a : {&gY, &gW, &gb, &gX}) {
      const auto v = download(be(), *a);
      all.insert(all.end(), v.begin(), v.end());
    }
    return all;
  };
  EXPECT_TRUE(bit_identical(run_dense(), run_dense())) << "dense";

  const HostPairs h = random_pairs(rng_, 300, 400, 9000);
  const auto U = random_floats(rng_, 300 * 24), V = random_floats(rng_, 400 * 24);
  const LossOut l1 = run_loss(be(), U, V, 24, h, 0.01f), l2 = run_loss(be(), U, V, 24, h, 0.01f);
  EXPECT_TRUE(bit_identical(l1.dU, l2.dU) && bit_identical(l1.dV, l2.dV) &&
              bit_identical(l1.g, l2.g) && l1.loss == l2.loss)
      << "logistic_loss";

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

  const auto TU = random_floats(rng_, 150 * 16), TV = random_floats(rng_, 2000 * 16);
  const TopkOut t1 = run_topk(be(), TU, 150, TV, 2000, 16, 20, nullptr, nullptr);
  const TopkOut t2 = run_topk(be(), TU, 150, TV, 2000, 16, 20, nullptr, nullptr);
  EXPECT_EQ(t1.items, t2.items);
  EXPECT_TRUE(bit_identical(t1.scores, t2.scores)) << "topk";
}

TEST_F(CpuOps, BadArgumentsThrow) {
  auto a = poisoned(be(), 64);
  EXPECT_THROW(be().dense_forward(a.data(), 2, 0, a.data(), a.data(), 3, Activation::kNone, a.data()),
               Error);
  EXPECT_THROW(be().dense_forward(nullptr, 2, 3, a.data(), a.data(), 3, Activation::kNone, a.data()),
               Error);
  std::vector<int32_t> idx = {0};
  auto di = upload(be(), idx);
  EXPECT_THROW(be().gather_rows(a.data(), 4, di.data(), 1, a.data(), 4, 1), Error);
  EXPECT_THROW(be().topk(a.data(), 1, a.data(), 4, 2, 0, nullptr, nullptr, di.data(), a.data()),
               Error);
  const std::vector<int64_t> off = {0, 1};
  const std::vector<int32_t> bad = {7};
  auto doff = upload(be(), off);
  auto dbad = upload(be(), bad);
  DeviceArray<int32_t> oi(&be(), 2);
  EXPECT_THROW(be().topk(a.data(), 1, a.data(), 4, 2, 2, doff.data(), dbad.data(), oi.data(),
                         a.data()),
               Error);
}

TEST_F(CpuOps, DescribeNamesBlasAndThreads) {
  auto two = make_cpu_backend(2);
  EXPECT_EQ(two->kind(), DeviceKind::kCPU);
  const std::string s = two->describe();
  EXPECT_NE(s.find("cpu ("), std::string::npos) << s;
  EXPECT_NE(s.find("OpenBLAS"), std::string::npos) << s;
  EXPECT_NE(s.find("2 threads"), std::string::npos) << s;
}

}  // namespace
}  // namespace towerrec
