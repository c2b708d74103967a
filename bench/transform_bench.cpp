// Embedding transforms: row-wise L2 normalisation of the towers' outputs (forward
// and backward) and inverted dropout in place.
//   l2_normalize           bytes 4 (2 n d + n) (X read; Y and inv_norm written)
//                          FLOPs 3 n d (square and add, scale)
//   l2_normalize_backward  bytes 4 (3 n d + n) (Y, inv_norm, dY read; dX written)
//                          FLOPs 5 n d (dot with Y, then dY - dot Y, scaled)
//   dropout                bytes 4 * 2 n (x read and written), FLOPs n (the scale);
//                          p = 0.1, a new offset each call as in training
#include "bench/bench_common.h"

namespace towerrec::bench {
namespace {

struct NormFixture {
  DeviceArray<float> x, y, inv_norm, dy, dx;
};
struct DropoutFixture {
  DeviceArray<float> x;
};

}  // namespace

void register_transform() {
  for (const auto& entry : backends()) {
    Backend* be = entry.be;
    for (int64_t n : {int64_t{4096}, int64_t{65536}}) {
      for (int d : {64, 128}) {
        const auto make = [be, n, d] {
          auto f = std::make_shared<NormFixture>();
          f->x = upload(*be, random_floats(n * d, -1, 1, 41));
          f->y = DeviceArray<float>(be, n * d);
          f->inv_norm = DeviceArray<float>(be, n);
          f->dy = upload(*be, random_floats(n * d, -1, 1, 42));
          f->dx = DeviceArray<float>(be, n * d);
          be->l2_normalize(f->x.data(), n, d, f->y.data(), f->inv_norm.data());
          return f;
        };
        const double cells = static_cast<double>(n) * d, rows = static_cast<double>(n);
        add_case<NormFixture>(
            case_name("l2_normalize", entry.name, {{"n", n}, {"d", d}}), make,
            [be, n, d, cells, rows](benchmark::State& s, NormFixture& f) {
              run_timed(
                  s, *be, [&] { be->l2_normalize(f.x.data(), n, d, f.y.data(), f.inv_norm.data()); },
                  4 * (2 * cells + rows), 3 * cells);
            });
        add_case<NormFixture>(
            case_name("l2_normalize_backward", entry.name, {{"n", n}, {"d", d}}), make,
            [be, n, d, cells, rows](benchmark::State& s, NormFixture& f) {
              run_timed(
                  s, *be,
                  [&] {
                    be->l2_normalize_backward(f.y.data(), f.inv_norm.data(), f.dy.data(), n, d,
                                              f.dx.data());
                  },
                  4 * (3 * cells + rows), 5 * cells);
            });
      }
    }
    for (int64_t n : {int64_t{1} << 18, int64_t{1} << 22}) {
      add_case<DropoutFixture>(
          case_name("dropout", entry.name, {{"n", n}}),
          [be, n] {
            auto f = std::make_shared<DropoutFixture>();
            f->x = upload(*be, random_floats(n, -1, 1, 43));
            return f;
          },
          [be, n](benchmark::State& s, DropoutFixture& f) {
            uint64_t offset = 0;
            const double fn = static_cast<double>(n);
            run_timed(
                s, *be,
                [&] {
                  be->dropout(f.x.data(), n, 0.1f, 44, offset);
                  offset += static_cast<uint64_t>(n);
                },
                4 * 2 * fn, fn);
          });
    }
  }
}

}  // namespace towerrec::bench
