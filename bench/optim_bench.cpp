// Optimizers: fused dense Adam over the parameter arena, and lazy (sparse) Adam
// over the touched rows of an ID-embedding table.
//   adam         bytes 4 * 7 n (param, grad, m, v read; param, m, v written)
//                FLOPs 12 n (counted: 2 moment updates, bias corrections folded,
//                sqrt, divide, update)
//   sparse_adam  bytes 4 (n + 7 n dim), FLOPs 12 n dim; rows distinct, uniform
//                over a table of `table` rows
#include <algorithm>
#include <numeric>

#include "bench/bench_common.h"

namespace towerrec::bench {
namespace {

struct AdamFixture {
  DeviceArray<float> p, g, m, v;
};
struct SparseAdamFixture {
  DeviceArray<float> table, m, v, grad;
  DeviceArray<int32_t> rows;
};

}  // namespace

void register_optim() {
  for (const auto& entry : backends()) {
    Backend* be = entry.be;
    for (int64_t n : {int64_t{1} << 18, int64_t{1} << 22, int64_t{1} << 24}) {
      add_case<AdamFixture>(
          case_name("adam", entry.name, {{"n", n}}),
          [be, n] {
            auto f = std::make_shared<AdamFixture>();
            f->p = upload(*be, random_floats(n, -1, 1, 15));
            f->g = upload(*be, random_floats(n, -1, 1, 16));
            f->m = upload(*be, std::vector<float>(static_cast<size_t>(n), 0.0f));
            f->v = upload(*be, std::vector<float>(static_cast<size_t>(n), 0.0f));
            return f;
          },
          [be, n](benchmark::State& s, AdamFixture& f) {
            AdamParams ap;
            const double fn = static_cast<double>(n);
            run_timed(
                s, *be,
                [&] {
                  be->adam(f.p.data(), f.g.data(), f.m.data(), f.v.data(), n, ap);
                  ++ap.step;
                },
                4 * 7 * fn, 12 * fn);
          });
    }
    constexpr int32_t kTable = 1 << 18;
    for (int64_t n : {4096, 65536}) {
      for (int dim : {32, 64}) {
        add_case<SparseAdamFixture>(
            case_name("sparse_adam", entry.name, {{"table", kTable}, {"n", n}, {"dim", dim}}),
            [be, n, dim] {
              auto f = std::make_shared<SparseAdamFixture>();
              const int64_t cells = int64_t{kTable} * dim;
              f->table = upload(*be, random_floats(cells, -1, 1, 17));
              f->m = upload(*be, std::vector<float>(static_cast<size_t>(cells), 0.0f));
              f->v = upload(*be, std::vector<float>(static_cast<size_t>(cells), 0.0f));
              f->grad = upload(*be, random_floats(n * dim, -1, 1, 18));
              std::vector<int32_t> all(kTable);
              std::iota(all.begin(), all.end(), 0);
              std::shuffle(all.begin(), all.end(), std::mt19937_64(19));
              all.resize(static_cast<size_t>(n));
              f->rows = upload(*be, all);
              return f;
            },
            [be, n, dim](benchmark::State& s, SparseAdamFixture& f) {
              AdamParams ap;
              const double fn = static_cast<double>(n);
              run_timed(
                  s, *be,
                  [&] {
                    be->sparse_adam(f.table.data(), f.m.data(), f.v.data(), dim, f.rows.data(), n,
                                    f.grad.data(), dim, 0, ap);
                    ++ap.step;
                  },
                  4 * (fn + 7 * fn * dim), 12 * fn * dim);
            });
      }
    }
  }
}

}  // namespace towerrec::bench
