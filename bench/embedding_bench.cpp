// Embedding ops: gather_rows (ID-embedding and dense-feature lookup) and the
// mean-pooled bags (categorical fields) forward and backward.
//   gather_rows  bytes 4 (2 n dim + n)                       FLOPs 0
//   bag_forward  bytes 4 (n + n bag dim [table rows] + n dim) FLOPs n bag dim + n dim
//   bag_backward bytes 4 (n + n dim + 2 n bag dim [rmw])      FLOPs 2 n bag dim
// Tables have `rows` rows drawn uniformly, so large tables miss the caches as a
// real catalogue does; bags hold `bag` values on average (1..2 bag-1 uniformly).
#include "bench/bench_common.h"

namespace towerrec::bench {
namespace {

struct GatherFixture {
  DeviceArray<float> table, out;
  DeviceArray<int32_t> idx;
};

struct BagFixture {
  DeviceArray<float> table, out, dtable;
  DeviceArray<int32_t> offsets, values, idx;
  int64_t total_values = 0;  // summed bag sizes over the n looked-up entities
};

}  // namespace

void register_embedding() {
  for (const auto& entry : backends()) {
    Backend* be = entry.be;
    // ---- gather_rows
    constexpr int32_t kTableRows = 1 << 18;
    for (int64_t n : {4096, 65536}) {
      for (int dim : {32, 64, 128}) {
        const double fn = static_cast<double>(n);
        add_case<GatherFixture>(
            case_name("gather_rows", entry.name, {{"rows", kTableRows}, {"n", n}, {"dim", dim}}),
            [be, n, dim] {
              auto f = std::make_shared<GatherFixture>();
              f->table = upload(*be, random_floats(int64_t{kTableRows} * dim, -1, 1, 5));
              f->idx = upload(*be, random_ints(n, kTableRows, 6));
              f->out.reset(be, n * dim);
              return f;
            },
            [be, n, dim, fn](benchmark::State& s, GatherFixture& f) {
              run_timed(
                  s, *be,
                  [&] { be->gather_rows(f.table.data(), dim, f.idx.data(), n, f.out.data(), dim, 0); },
                  4 * (2 * fn * dim + fn), 0);
            });
      }
    }
    // ---- bags
    constexpr int32_t kEntities = 1 << 16, kVocab = 1000;
    constexpr int kDim = 16;
    for (int64_t n : {4096, 65536}) {
      for (int bag : {1, 4}) {
        auto make = [be, n, bag] {
          auto f = std::make_shared<BagFixture>();
          std::vector<int32_t> offsets(kEntities + 1, 0);
          const auto sizes = random_ints(kEntities, 2 * bag - 1, 7);
          for (int32_t e = 0; e < kEntities; ++e) offsets[e + 1] = offsets[e] + 1 + sizes[e];
          const auto values = random_ints(offsets.back(), kVocab, 8);
          const auto idx = random_ints(n, kEntities, 9);
          for (int32_t e : idx) f->total_values += offsets[e + 1] - offsets[e];
          f->offsets = upload(*be, offsets);
          f->values = upload(*be, values);
          f->idx = upload(*be, idx);
          f->table = upload(*be, random_floats(int64_t{kVocab} * kDim, -1, 1, 10));
          f->dtable = upload(*be, std::vector<float>(size_t{kVocab} * kDim, 0.0f));
          f->out = upload(*be, random_floats(n * kDim, -1, 1, 11));
          return f;
        };
        const double fn = static_cast<double>(n);
        add_case<BagFixture>(
            case_name("bag_forward", entry.name, {{"n", n}, {"bag", bag}, {"dim", kDim}}), make,
            [be, n, fn](benchmark::State& s, BagFixture& f) {
              const double nv = static_cast<double>(f.total_values);
              run_timed(
                  s, *be,
                  [&] {
                    be->bag_forward(f.table.data(), kDim, f.offsets.data(), f.values.data(),
                                    f.idx.data(), n, f.out.data(), kDim, 0);
                  },
                  4 * (fn + nv + nv * kDim + fn * kDim), nv * kDim + fn * kDim);
            });
        add_case<BagFixture>(
            case_name("bag_backward", entry.name, {{"n", n}, {"bag", bag}, {"dim", kDim}}), make,
            [be, n, fn](benchmark::State& s, BagFixture& f) {
              const double nv = static_cast<double>(f.total_values);
              run_timed(
                  s, *be,
                  [&] {
                    be->bag_backward(f.out.data(), kDim, 0, f.offsets.data(), f.values.data(),
                                     f.idx.data(), n, kDim, f.dtable.data());
                  },
                  4 * (fn + nv + fn * kDim + 2 * nv * kDim), 2 * nv * kDim);
            });
      }
    }
  }
}

}  // namespace towerrec::bench
