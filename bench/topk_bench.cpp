// All-items top-K for a block of users: scores U[users x d] . V^T over every
// item, optional exclusion of each user's seen items, selection of the k best.
//   FLOPs 2 users items d (the scoring GEMM; selection is counted as bytes only)
//   bytes 4 (users d + items d + 2 users k + excluded) -- inputs and outputs;
//         the score matrix (users x items) is scratch and not counted, so GB/s
//         is low by design: read GFLOP/s against the GEMM ceiling instead.
#include <algorithm>

#include "bench/bench_common.h"

namespace towerrec::bench {
namespace {

struct TopkFixture {
  DeviceArray<float> U, V, scores;
  DeviceArray<int32_t> items, excl;
  DeviceArray<int64_t> excl_off;
  int64_t n_excl = 0;
};

}  // namespace

void register_topk() {
  constexpr int kDim = 64;
  struct Shape {
    int64_t users, items;
    int k;
    int excl;  // excluded items per user
  };
  const std::vector<Shape> shapes = {
      {256, 10000, 10, 0},  {256, 10000, 100, 0},  {256, 100000, 10, 0},
      {256, 100000, 100, 0}, {256, 100000, 10, 50}, {1024, 100000, 10, 0},
  };
  for (const auto& entry : backends()) {
    Backend* be = entry.be;
    for (const Shape& sh : shapes) {
      add_case<TopkFixture>(
          case_name("topk", entry.name,
                    {{"users", sh.users}, {"items", sh.items}, {"d", kDim}, {"k", sh.k}, {"excl", sh.excl}}),
          [be, sh] {
            auto f = std::make_shared<TopkFixture>();
            f->U = upload(*be, random_floats(sh.users * kDim, -1, 1, 20));
            f->V = upload(*be, random_floats(sh.items * kDim, -1, 1, 21));
            f->items.reset(be, sh.users * sh.k);
            f->scores.reset(be, sh.users * sh.k);
            if (sh.excl > 0) {
              std::vector<int64_t> off(static_cast<size_t>(sh.users) + 1);
              std::vector<int32_t> ex;
              for (int64_t u = 0; u < sh.users; ++u) {
                off[u] = static_cast<int64_t>(ex.size());
                // Sorted, distinct items per user, as group_by_user produces.
                for (int j = 0; j < sh.excl; ++j)
                  ex.push_back(static_cast<int32_t>((u * 7919 + j * (sh.items / sh.excl)) % sh.items));
                std::sort(ex.begin() + off[u], ex.end());
              }
              off.back() = static_cast<int64_t>(ex.size());
              f->n_excl = static_cast<int64_t>(ex.size());
              f->excl_off = upload(*be, off);
              f->excl = upload(*be, ex);
            }
            return f;
          },
          [be, sh](benchmark::State& s, TopkFixture& f) {
            // The default policy, or $TOWERREC_TOPK_PATH / _PRECISION (options.h).
            const TopkPolicy policy = topk_policy_with_env({});
            const double u = static_cast<double>(sh.users), it = static_cast<double>(sh.items);
            run_timed(
                s, *be,
                [&] {
                  be->topk(f.U.data(), sh.users, f.V.data(), sh.items, kDim, sh.k,
                           sh.excl ? f.excl_off.data() : nullptr, sh.excl ? f.excl.data() : nullptr,
                           f.items.data(), f.scores.data(), policy);
                },
                4 * (u * kDim + it * kDim + 2 * u * sh.k + 1.5 * static_cast<double>(f.n_excl)),
                2 * u * it * kDim);
            s.counters["users_per_s"] =
                benchmark::Counter(u * static_cast<double>(s.iterations()), benchmark::Counter::kIsRate);
          });
    }
  }
}

}  // namespace towerrec::bench
