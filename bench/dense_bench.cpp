// Dense layer ops: dense_forward (GEMM + bias + ReLU) and dense_backward (ReLU
// mask, bias-gradient reduction, dW and dX GEMMs) over tower-shaped sizes:
// n rows (unique entities of a batch, or an all-entity embedding chunk) and
// in -> out widths of the default towers (128 -> 128, 128 -> 64) and the wide
// variant (1024 -> 512).
//   forward  FLOPs 2 n in out + n out;    bytes 4 (n in + in out + out + n out)
// Each in float32 and in bfloat16 matmul precision (precision=0/1; the bytes
// counted are the float32 arrays the op reads and writes either way).
//   backward FLOPs 4 n in out + 2 n out;  bytes 4 (n in + in out + 2 n out [Y, dY]
//                                                 + n out [dZ] + in out + out + n in)
#include "bench/bench_common.h"

namespace towerrec::bench {
namespace {

struct DenseFixture {
  DeviceArray<float> X, W, b, Y, dY, dW, db, dX;
  std::vector<float> dY_host;
};

}  // namespace

void register_dense() {
  const std::vector<int64_t> rows = {1024, 8192};
  const std::vector<std::pair<int, int>> widths = {{128, 128}, {128, 64}, {1024, 512}};
  for (const auto& entry : backends()) {
    Backend* be = entry.be;
    for (MatmulPrecision prec : {MatmulPrecision::kFP32, MatmulPrecision::kBF16})
    for (int64_t n : rows) {
      for (auto [in, out] : widths) {
        auto make = [be, n, in = in, out = out, prec] {
          auto f = std::make_shared<DenseFixture>();
          f->X = upload(*be, random_floats(n * in, -1, 1, 1));
          f->W = upload(*be, random_floats(int64_t{in} * out, -0.1f, 0.1f, 2));
          f->b = upload(*be, random_floats(out, -0.1f, 0.1f, 3));
          f->Y.reset(be, n * out);
          f->dY_host = random_floats(n * out, -1, 1, 4);
          f->dY = upload(*be, f->dY_host);
          f->dW.reset(be, int64_t{in} * out);
          f->db.reset(be, out);
          f->dX.reset(be, n * in);
          be->dense_forward(f->X.data(), n, in, f->W.data(), f->b.data(), out, Activation::kReLU,
                            f->Y.data(), prec);
          return f;
        };
        const double fn = static_cast<double>(n), fi = in, fo = out;
        add_case<DenseFixture>(
            case_name("dense_forward", entry.name,
                      {{"n", n}, {"in", in}, {"out", out}, {"bf16", prec == MatmulPrecision::kBF16}}),
            make,
            [be, n, in = in, out = out, fn, fi, fo, prec](benchmark::State& s, DenseFixture& f) {
              run_timed(
                  s, *be,
                  [&] {
                    be->dense_forward(f.X.data(), n, in, f.W.data(), f.b.data(), out,
                                      Activation::kReLU, f.Y.data(), prec);
                  },
                  4 * (fn * fi + fi * fo + fo + fn * fo), 2 * fn * fi * fo + fn * fo);
            });
        // The backward masks dY in place; the mask is idempotent, so repeated
        // calls on the same buffers time the same work.
        add_case<DenseFixture>(
            case_name("dense_backward", entry.name,
                      {{"n", n}, {"in", in}, {"out", out}, {"bf16", prec == MatmulPrecision::kBF16}}),
            make,
            [be, n, in = in, out = out, fn, fi, fo, prec](benchmark::State& s, DenseFixture& f) {
              run_timed(
                  s, *be,
                  [&] {
                    be->dense_backward(f.X.data(), n, in, f.W.data(), out, Activation::kReLU,
                                       f.Y.data(), f.dY.data(), f.dW.data(), f.db.data(),
                                       f.dX.data(), prec);
                  },
                  4 * (fn * fi + fi * fo + 3 * fn * fo + fi * fo + fo + fn * fi),
                  4 * fn * fi * fo + 2 * fn * fo);
            });
      }
    }
  }
}

}  // namespace towerrec::bench
