// Determinism of the losses and top-K: each op runs twice on the same fresh
// random inputs, on one backend instance and then on a new one of the same kind
// (CPU with 1 and 2 threads; CUDA where a device is present), and every output,
// the backward ones included, must be bit-for-bit the same (memcmp), and
// written (finite: outputs are poisoned with NaN first, and a NaN left in the
// same place twice would compare equal).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "tests/pair_batch.h"
#include "tests/test_util.h"
#include "towerrec/backend.h"

namespace towerrec {
namespace {

using testing::download;
using testing::poisoned;
using testing::random_floats;
using testing::random_ints;
using testing::test_seed;
using testing::upload;

// Fresh backends of each kind under test, by name.
struct BackendKind {
  std::string name;
  std::function<std::unique_ptr<Backend>()> make;
};
std::vector<BackendKind> kinds() {
  std::vector<BackendKind> v = {{"cpu, 1 thread", [] { return make_cpu_backend(1); }},
                                {"cpu, 2 threads", [] { return make_cpu_backend(2); }}};
  if (cuda_available()) v.push_back({"cuda", [] { return make_cuda_backend(0); }});
  return v;
}

// Named outputs of one run.
using Outputs = std::vector<std::pair<std::string, std::vector<float>>>;

::testing::AssertionResult same_bits(const Outputs& a, const Outputs& b) {
  if (a.size() != b.size()) return ::testing::AssertionFailure() << "output count differs";
  for (size_t i = 0; i < a.size(); ++i) {
    const auto& [name, x] = a[i];
    const auto& y = b[i].second;
    for (size_t j = 0; j < x.size(); ++j)
      if (!std::isfinite(x[j]))
        return ::testing::AssertionFailure() << name << "[" << j << "] = " << x[j];
    if (x.size() != y.size() || std::memcmp(x.data(), y.data(), x.size() * sizeof(float)) != 0)
      return ::testing::AssertionFailure() << name << " differs between runs";
  }
  return ::testing::AssertionSuccess();
}

// A batch of n_groups groups of `group` pairs sharing a user, in local indices,
// with its CSR arrays; labels alternate +1 / -1.
using HostBatch = testing::HostPairs;
using DeviceBatch = testing::DevicePairs;

HostBatch make_batch(std::mt19937_64& g, int32_t n_users, int32_t n_items, int64_t n_groups,
                     int group) {
  HostBatch h{n_users, n_items, {}, {}, {}, {}, {}, {}, {}};
  for (int64_t q = 0; q < n_groups; ++q) {
    const int32_t u = random_ints(g, 1, 0, n_users - 1)[0];
    for (int j = 0; j < group; ++j) {
      h.user.push_back(u);
      h.item.push_back(random_ints(g, 1, 0, n_items - 1)[0]);
      h.label.push_back(h.label.size() % 2 ? -1.0f : 1.0f);
    }
  }
  build_pair_csr(h.user, n_users, h.uoff, h.upairs);
  build_pair_csr(h.item, n_items, h.ioff, h.ipairs);
  return h;
}


enum class Loss { kLogistic, kBpr, kSoftmax, kSoftmaxTiled, kCcl };

Outputs run_loss(Backend& be, Loss loss, const HostBatch& h, const std::vector<float>& U,
                 const std::vector<float>& V, const std::vector<float>& log_q, int d, int group) {
  DeviceBatch db(be, h);
  const int64_t np = static_cast<int64_t>(h.user.size());
  auto dU_in = upload(be, U), dV_in = upload(be, V), lq = upload(be, log_q);
  auto dU = poisoned(be, int64_t{h.n_users} * d), dV = poisoned(be, int64_t{h.n_items} * d);
  auto out = poisoned(be, 1);
  const float scale = 1.0f / static_cast<float>(np);
  Outputs o;
  switch (loss) {
    case Loss::kLogistic: {
      auto pg = poisoned(be, np);
      be.logistic_loss(dU_in.data(), dV_in.data(), d, db.pb, scale, dU.data(), dV.data(),
                       pg.data(), out.data());
      o.emplace_back("pair_grad", download(be, pg));
      break;
    }
    case Loss::kBpr: {
      auto pg = poisoned(be, np);
      be.bpr_loss(dU_in.data(), dV_in.data(), d, db.pb, group, scale, dU.data(), dV.data(),
                  pg.data(), out.data());
      o.emplace_back("pair_grad", download(be, pg));
      break;
    }
    case Loss::kSoftmax: {
      auto logits = poisoned(be, np * h.n_items), rows = poisoned(be, np * d);
      be.softmax_loss(dU_in.data(), dV_in.data(), d, db.pb, lq.data(), 0.3f, scale, dU.data(),
                      dV.data(), logits.data(), rows.data(), out.data(), 0);
      break;
    }
    case Loss::kSoftmaxTiled: {
      auto logits = poisoned(be, np * 64), rows = poisoned(be, 2 * np * d);
      be.softmax_loss(dU_in.data(), dV_in.data(), d, db.pb, lq.data(), 0.3f, scale, dU.data(),
                      dV.data(), logits.data(), rows.data(), out.data(), 64);
      break;
    }
    case Loss::kCcl: {
      auto logits = poisoned(be, np * 64), rows = poisoned(be, 2 * np * d);
      be.ccl_loss(dU_in.data(), dV_in.data(), d, db.pb, lq.data(), 0.1f, 30.0f, scale, dU.data(),
                  dV.data(), logits.data(), rows.data(), out.data(), 64);
      break;
    }
  }
  o.emplace_back("loss", download(be, out));
  o.emplace_back("dU", download(be, dU));
  o.emplace_back("dV", download(be, dV));
  return o;
}

TEST(Determinism, LossesAndTheirGradients) {
  TRACE_SEED();
  std::mt19937_64 g(test_seed());
  const int32_t n_users = 150, n_items = 400;
  const int d = 48, group = 4;
  for (const Loss loss : {Loss::kLogistic, Loss::kBpr, Loss::kSoftmax, Loss::kSoftmaxTiled, Loss::kCcl}) {
    const char* names[] = {"logistic", "bpr", "softmax", "softmax in item blocks", "ccl in item blocks"};
    const char* name = names[static_cast<int>(loss)];
    const bool in_batch = loss != Loss::kLogistic && loss != Loss::kBpr;
    // Many pairs per row, so the reductions into dU and dV are long.
    const HostBatch h = make_batch(g, n_users, n_items, in_batch ? 300 : 1500, group);
    const auto U = random_floats(g, static_cast<size_t>(n_users) * d);
    const auto V = random_floats(g, static_cast<size_t>(n_items) * d);
    const auto log_q = random_floats(g, static_cast<size_t>(n_items), -8.0f, -2.0f);
    for (const BackendKind& kind : kinds()) {
      SCOPED_TRACE(std::string(name) + " on " + kind.name);
      auto be = kind.make();
      const Outputs first = run_loss(*be, loss, h, U, V, log_q, d, group);
      EXPECT_TRUE(same_bits(first, run_loss(*be, loss, h, U, V, log_q, d, group))) << "same backend";
      EXPECT_TRUE(same_bits(first, run_loss(*kind.make(), loss, h, U, V, log_q, d, group)))
          << "fresh backend";
    }
  }
}

struct TopkRun {
  std::vector<int32_t> items;
  Outputs scores;
};

TopkRun run_topk(Backend& be, const std::vector<float>& U, int64_t nu, const std::vector<float>& V,
                 int64_t ni, int d, int k, const std::vector<int64_t>& eoff,
                 const std::vector<int32_t>& eitems) {
  auto u = upload(be, U), v = upload(be, V);
  auto eo = upload(be, eoff);
  auto ei = upload(be, eitems);
  auto oi = upload(be, std::vector<int32_t>(static_cast<size_t>(nu * k), -7));
  auto os = poisoned(be, nu * k);
  be.topk(u.data(), nu, v.data(), ni, d, k, eo.data(), ei.data(), oi.data(), os.data(),
          TopkPolicy{});
  return {download(be, oi), {{"scores", download(be, os)}}};
}

TEST(Determinism, Topk) {
  TRACE_SEED();
  std::mt19937_64 g(test_seed());
  const int64_t nu = 70, ni = 5000;
  for (const int d : {16, 100})  // CUDA: the fused path, then the GEMM path
    for (const int k : {10, 200}) {
      // Rows repeated: exact ties, whose order must not vary either.
      const auto U = random_floats(g, static_cast<size_t>(nu * d));
      auto V = random_floats(g, static_cast<size_t>(ni * d));
      for (int64_t j = 3; j < ni; j += 7) std::copy_n(V.begin() + (j - 3) * d, d, V.begin() + j * d);
      std::vector<int64_t> eoff{0};
      std::vector<int32_t> eitems;
      for (int64_t r = 0; r < nu; ++r) {
        for (int32_t j : random_ints(g, 20, 0, static_cast<int32_t>(ni - 1))) eitems.push_back(j);
        eoff.push_back(static_cast<int64_t>(eitems.size()));
      }
      for (const BackendKind& kind : kinds()) {
        SCOPED_TRACE(kind.name + ", d=" + std::to_string(d) + " k=" + std::to_string(k));
        auto be = kind.make();
        const TopkRun a = run_topk(*be, U, nu, V, ni, d, k, eoff, eitems);
        const TopkRun b = run_topk(*be, U, nu, V, ni, d, k, eoff, eitems);
        const TopkRun c = run_topk(*kind.make(), U, nu, V, ni, d, k, eoff, eitems);
        for (int32_t it : a.items) ASSERT_TRUE(it >= 0 && it < ni) << it;
        EXPECT_EQ(a.items, b.items) << "same backend";
        EXPECT_EQ(a.items, c.items) << "fresh backend";
        EXPECT_TRUE(same_bits(a.scores, b.scores)) << "same backend";
        EXPECT_TRUE(same_bits(a.scores, c.scores)) << "fresh backend";
      }
    }
}

}  // namespace
}  // namespace towerrec
