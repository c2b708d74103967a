// towerrec_topk_bench: the all-users top-K on one GPU over a grid of users,
// items, dimension d and K, read against the cuBLAS GEMM that produces the same
// scores.
//
// usage: towerrec_topk_bench [--users LIST] [--items LIST] [--dims LIST] [--ks LIST]
//          [--paths two-kernel,fused] [--precisions fp32,tf32,bf16] [--budget-s S]
//          [--seed N] [--min-time-s S] [--max-reps N] [--recall-users N]
//          [--ceiling-n N] [--device N] [--json FILE] [--csv FILE]
// LIST is comma-separated; counts take a k or M suffix (100k, 10M).
//
// Per (users, items, d), U[users x d] and V[items x d] are drawn uniform in
// [-1, 1) on the device from --seed; nothing is excluded (no seen-item lists).
// Per cell (k, path, precision):
//   topk       CudaBackend::topk with the cell's TopkPolicy
//              (path two-kernel = TopkPath::kGemm, fused = TopkPath::kFused)
//   GEMM       the score GEMMs the two-kernel path issues, alone: the same tiles
//              (kTileUsers x kTileItems, set on the backend), the same cuBLAS
//              call on the backend's handle and stream, the same precision; for
//              bf16 on inputs converted beforehand
//   conv       bf16 only: the fp32 -> bf16 conversions of each U block and V
//              chunk that the two-kernel path runs, alone
//   select     derived: topk - GEMM - conv (selection kernels, their memset
//              and the final key decoding)
//   bare GEMM  the same users x items scores, same precision, from the fewest
//              cuBLAS calls whose output fits (the whole matrix, else tiles of
//              at most 4 GiB)
//   recall@k   overlap of the item lists with the fp32 two-kernel result on the
//              same inputs, over the first --recall-users users
// Ceilings: one square GEMM (--ceiling-n, default 8192) per precision, in the
// configuration topk uses (fp32: cublasSgemm; tf32: cublasGemmEx, FP32 in and
// out, CUBLAS_COMPUTE_32F_FAST_TF32; bf16: BF16 in, FP32 out and compute).
// Timing: CUDA events on the backend's stream; one warm-up call, then repeats
// until about --min-time-s (the median is reported; ceilings take the best).
//
// Cells run in increasing order of work. A cell is skipped when its buffers do
// not fit the free device memory, when the fused path does not support it
// (CudaBackend::topk_fused_supported), when k exceeds the backend's maximum, or
// when its estimated time exceeds what is left of --budget-s; once the budget
// is spent no cell starts. The table rows are printed as cells finish, and
// --json / --csv are rewritten (atomically) after every cell, so a run cut
// short still leaves its results. Without a CUDA device the program prints
// "no CUDA device: skipped" and exits 0.
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "bench/topk_grid/device.cuh"
#include "bench/topk_grid/options.h"
#include "bench/topk_grid/report.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/cuda_testing.h"
#include "towerrec/backend.h"
#include "towerrec/error.h"
#include "towerrec/io.h"

namespace {

// ---- the run ------------------------------------------------------------------------------

double measure_ceiling(CudaBackend& cb, Events& ev, const Options& o, TopkPrecision p) {
  const int64_t n = o.ceiling_n;
  const size_t nn = static_cast<size_t>(n * n);
  const cudaStream_t s = cb.stream();
  DevBuf A(nn * 4, "ceiling A"), B(nn * 4, "ceiling B"), C(nn * 4, "ceiling C");
  DevBuf Ah, Bh;
  fill_uniform(s, A.as<float>(), n * n, mix64(o.seed + 101));
  fill_uniform(s, B.as<float>(), n * n, mix64(o.seed + 102));
  if (p == TopkPrecision::kBF16) {
    Ah = DevBuf(nn * 2, "ceiling A bf16");
    Bh = DevBuf(nn * 2, "ceiling B bf16");
    to_bf16(s, A.as<float>(), n * n, Ah.as<__nv_bfloat16>());
    to_bf16(s, B.as<float>(), n * n, Bh.as<__nv_bfloat16>());
  }
  const bool bf16 = p == TopkPrecision::kBF16;
  const void* a = bf16 ? static_cast<const void*>(Ah.as<__nv_bfloat16>()) : A.as<float>();
  const void* b = bf16 ? static_cast<const void*>(Bh.as<__nv_bfloat16>()) : B.as<float>();
  const Timing t = measure(ev, o, [&] {
    towerrec::cuda::topk_score_gemm(cb.cublas(), p, a, b, 0, 0, n, n, static_cast<int>(n),
                                    C.as<float>());
  });
  CUDA_CHECK(cudaStreamSynchronize(s));  // before the buffers are freed
  return 2.0 * double(n) * double(n) * double(n) / t.best_ms * 1e-9;
}

class Runner {
 public:
  Runner(const Options& o, CudaBackend& cb, Report& r, double t0)
      : o_(o), cb_(cb), r_(r), ev_(cb.stream()), t0_(t0) {}

  void run();

 private:
  struct Triple {
    int64_t users, items, d;
    double work() const { return double(users) * double(items) * double(d); }
  };
  struct GemmRefs {  // per precision, within one (users, items, d)
    bool tiled = false, bare = false;
    double gemm_ms = NAN, conv_ms = NAN, bare_ms = NAN;
    std::string bare_tiles;
  };

  double elapsed() const { return now_s() - t0_; }
  void add(Cell c) {
    r_.cells.push_back(std::move(c));
    r_.elapsed_s = elapsed();
    write_outputs(r_);
  }
  void skip(Cell c, const std::string& why) {
    c.ok = false;
    c.reason = why;
    add(std::move(c));
  }
  // What the cells of one triple share: its inputs, buffers and references.
  struct TripleRun {
    const Triple& t;
    int d;
    const Inputs& in;
    Tiles tt, bt;  // the two-kernel path's tiles, the bare GEMM's
    DevBuf *S, *out_items, *out_scores, *Ut, *Vt;
    std::map<TopkPrecision, GemmRefs> refs;
    std::map<int64_t, std::vector<int32_t>> fp32_items;  // per k: the reference item lists
    int64_t rows;  // users whose recall is measured
  };
  std::vector<Cell> cells_of(const Triple& t) const;
  void run_triple(const Triple& t);
  void run_cell(Cell& c, TripleRun& x);
  double estimate_run_s(const Cell& c) const;
  double estimate_cell_s(const Cell& c, const GemmRefs& g, bool need_ref) const;

  const Options& o_;
  CudaBackend& cb_;
  Report& r_;
  Events ev_;
  double t0_;  // the budget counts from here
  double calib_ = 1.0;  // measured / estimated run time, largest seen on long runs
  bool header_printed_ = false;
};

std::vector<Cell> Runner::cells_of(const Triple& t) const {
  std::vector<Cell> out;
  for (int64_t k : o_.ks)
    for (TopkPrecision p : o_.precisions)
      for (TopkPath path : o_.paths) {
        Cell c;
        c.users = t.users;
        c.items = t.items;
        c.d = t.d;
        c.k = k;
        c.path = path;
        c.precision = p;
        out.push_back(c);
      }
  return out;  // k ascending; fp32 first; two-kernel before fused
}

// One topk call: arithmetic at half the ceiling (a quarter on CUDA cores for
// the fused kernel), plus for the two-kernel path the score tiles written and
// read back at 1.5 TB/s and about 10 us per tile for the small kernels.
double Runner::estimate_run_s(const Cell& c) const {
  if (c.path == TopkPath::kFused) return c.flops() / (0.25 * r_.ceiling(TopkPrecision::kFP32) * 1e12);
  const double tiles = double(topk_tiles(c.users, c.items).count(c.users, c.items));
  return c.flops() / (0.5 * r_.ceiling(c.precision) * 1e12) +
         8.0 * double(c.users) * double(c.items) / 1.5e12 + tiles * 10e-6;
}

// Warm-up and at least one timed call, padded to min_time; the GEMM references
// of this precision if not yet measured; the fp32 reference if missing.
double Runner::estimate_cell_s(const Cell& c, const GemmRefs& g, bool need_ref) const {
  const double run = calib_ * estimate_run_s(c);
  double s = 2 * run + o_.min_time_s;
  const double gemm = c.flops() / (0.5 * r_.ceiling(c.precision) * 1e12);
  if (c.path == TopkPath::kGemm && !g.tiled) {
    const double tiles = double(topk_tiles(c.users, c.items).count(c.users, c.items));
    s += 2 * (gemm + tiles * 10e-6) + o_.min_time_s;
    if (c.precision == TopkPrecision::kBF16) s += 2 * (tiles * 10e-6) + o_.min_time_s;
  }
  if (!g.bare) s += 2 * gemm + o_.min_time_s;
  if (need_ref) {
    Cell ref = c;
    ref.path = TopkPath::kGemm;
    ref.precision = TopkPrecision::kFP32;
    s += calib_ * estimate_run_s(ref);
  }
  return s;
}

void Runner::run() {
  // Ceilings first: the estimates and the % columns need them.
  for (TopkPrecision p : {TopkPrecision::kFP32, TopkPrecision::kTF32, TopkPrecision::kBF16})
    if (p == TopkPrecision::kFP32 ||
        std::find(o_.precisions.begin(), o_.precisions.end(), p) != o_.precisions.end())
      r_.ceiling_tflops[p] = measure_ceiling(cb_, ev_, o_, p);
  std::printf("cuBLAS ceilings (%lld^3, the GEMM configuration topk uses):",
              static_cast<long long>(o_.ceiling_n));
  for (const auto& [p, t] : r_.ceiling_tflops) std::printf("  %s %.1f", precision_name(p), t);
  std::printf(" TFLOP/s\n\n");
  std::fflush(stdout);
  write_outputs(r_);

  std::vector<Triple> triples;
  for (int64_t u : o_.users)
    for (int64_t i : o_.items)
      for (int64_t d : o_.dims) triples.push_back({u, i, d});
  std::stable_sort(triples.begin(), triples.end(),
                   [](const Triple& a, const Triple& b) { return a.work() < b.work(); });
  for (const Triple& t : triples) run_triple(t);
  if (!header_printed_) std::printf("(no cell was measured)\n");
}

// One cell of a triple: the budget and support checks, the GEMM references of
// its precision where not yet measured, the timed op and its recall.
void Runner::run_cell(Cell& c, TripleRun& x) {
  const cudaStream_t s = cb_.stream();
  cublasHandle_t h = cb_.cublas();
  const int d = x.d;
  if (r_.budget_spent || elapsed() >= o_.budget_s) {
    r_.budget_spent = true;
    skip(c, "not started: the time budget was spent");
    return;
  }
  if (c.k > kMaxK) {
    skip(c, "k > " + std::to_string(kMaxK) + ", the CUDA backend's maximum");
    return;
  }
  const towerrec::TopkPolicy policy{c.path, c.precision};
  if (c.path == TopkPath::kFused &&
      !CudaBackend::topk_fused_supported(c.precision, d, static_cast<int>(c.k))) {
    skip(c, "the fused path supports fp32, d <= 64 and k <= 128 only");
    return;
  }
  const TopkPrecision gp = c.path == TopkPath::kFused ? TopkPrecision::kFP32 : c.precision;
  GemmRefs& g = x.refs[gp];
  const bool is_ref = c.path == TopkPath::kGemm && c.precision == TopkPrecision::kFP32;
  const bool need_ref = !is_ref && x.fp32_items.count(c.k) == 0;
  Cell probe = c;
  probe.precision = gp;
  c.est_s = estimate_cell_s(probe, g, need_ref);
  const double left = o_.budget_s - elapsed();
  if (c.est_s > left) {
    char buf[160];
    std::snprintf(buf, sizeof buf,
                  "estimated %.1f s, more than the %.1f s left of the time budget", c.est_s,
                  left);
    skip(c, buf);
    return;
  }

  // GEMM references of this precision (independent of k and path).
  if (c.path == TopkPath::kGemm && !g.tiled) {
    g.gemm_ms = measure(ev_, o_, [&] {
                  tiled_pass(s, h, gp, x.in, x.tt, true, false, x.S->as<float>(), nullptr,
                             nullptr);
                }).median_ms;
    if (gp == TopkPrecision::kBF16)
      g.conv_ms = measure(ev_, o_, [&] {
                    tiled_pass(s, h, gp, x.in, x.tt, false, true, nullptr,
                               x.Ut->as<__nv_bfloat16>(), x.Vt->as<__nv_bfloat16>());
                  }).median_ms;
    g.tiled = true;
  }
  if (!g.bare) {
    g.bare_ms = measure(ev_, o_, [&] {
                  tiled_pass(s, h, gp, x.in, x.bt, true, false, x.S->as<float>(), nullptr,
                             nullptr);
                }).median_ms;
    g.bare_tiles = tiles_str(x.bt, x.t.users, x.t.items);
    g.bare = true;
  }

  // The op.
  int32_t* items_out = x.out_items->as<int32_t>();
  float* scores_out = x.out_scores->as<float>();
  const Timing tk = measure(ev_, o_, [&] {
    cb_.topk(x.in.U, x.t.users, x.in.V, x.t.items, d, static_cast<int>(c.k), nullptr, nullptr,
             items_out, scores_out, policy);
  });
  c.topk_ms = tk.median_ms;
  c.topk_reps = tk.reps;
  c.topk_inner = tk.inner;
  if (c.path == TopkPath::kGemm) {
    c.gemm_ms = g.gemm_ms;
    c.conv_ms = gp == TopkPrecision::kBF16 ? g.conv_ms : NAN;
    c.select_ms = c.topk_ms - c.gemm_ms - (gp == TopkPrecision::kBF16 ? c.conv_ms : 0.0);
  }
  c.bare_ms = g.bare_ms;
  c.bare_tiles = g.bare_tiles;
  const double est_run = estimate_run_s(probe);
  if (c.topk_ms >= 50 && est_run > 0)
    calib_ = std::max(calib_, c.topk_ms * 1e-3 / est_run);

  // Recall against the fp32 two-kernel item lists of the same inputs.
  std::vector<int32_t> got = copy_rows(s, items_out, x.rows, c.k);
  if (is_ref) {
    c.reference = true;
    x.fp32_items[c.k] = std::move(got);
  } else {
    if (need_ref) {  // not measured in this grid: one untimed fp32 two-kernel call
      cb_.topk(x.in.U, x.t.users, x.in.V, x.t.items, d, static_cast<int>(c.k), nullptr, nullptr,
               items_out, scores_out, {TopkPath::kGemm, TopkPrecision::kFP32});
      x.fp32_items[c.k] = copy_rows(s, items_out, x.rows, c.k);
    }
    c.recall = recall_at_k(x.fp32_items[c.k], got, x.rows, c.k);
  }
  c.recall_users = x.rows;
  c.ok = true;
  if (!header_printed_) {
    print_header();
    header_printed_ = true;
  }
  print_row(c, r_);
  add(c);
}

void Runner::run_triple(const Triple& t) {
  std::vector<Cell> cells = cells_of(t);
  auto skip_all = [&](const std::string& why) {
    for (Cell& c : cells) skip(c, why);
  };
  if (r_.budget_spent || elapsed() >= o_.budget_s) {
    r_.budget_spent = true;
    skip_all("not started: the time budget was spent");
    return;
  }
  const cudaStream_t s = cb_.stream();
  cublasHandle_t h = cb_.cublas();
  const int d = static_cast<int>(t.d);
  int64_t kmax = 0;
  for (const Cell& c : cells)
    if (c.k <= kMaxK) kmax = std::max(kmax, c.k);
  const bool want_bf16 = std::find(o_.precisions.begin(), o_.precisions.end(),
                                   TopkPrecision::kBF16) != o_.precisions.end();

  // Device memory: inputs (and their bf16 copies), outputs, the backend's topk
  // scratch (score tile, keys, bf16 tiles; its allocator rounds up by <= 25%),
  // our score buffer (at least one tile) and a margin.
  const Tiles tt = topk_tiles(t.users, t.items);
  const double gib = 1024.0 * 1024.0 * 1024.0;
  const size_t bU = size_t(t.users) * size_t(d) * 4, bV = size_t(t.items) * size_t(d) * 4;
  const size_t bbf = want_bf16 ? (bU + bV) / 2 : 0;  // our bf16 copies of U and V
  const size_t bbf_tiles = want_bf16 ? size_t(tt.users + tt.items) * size_t(d) * 2 : 0;
  const size_t bOut = size_t(t.users) * size_t(kmax) * 8;
  const size_t bTile = size_t(tt.users) * size_t(tt.items) * 4;
  const size_t bTopk = (bTile + size_t(tt.users) * size_t(kmax) * 8 +
                        bbf_tiles) * 5 / 4;
  const size_t need = bU + bV + bbf + bbf_tiles + bOut + bTopk + bTile + kMarginBytes;
  size_t free_b = 0, total_b = 0;
  CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  if (kmax == 0) {
    for (Cell& c : cells) skip(c, "k > " + std::to_string(kMaxK) + ", the CUDA backend's maximum");
    return;
  }
  if (need > free_b) {
    char buf[160];
    std::snprintf(buf, sizeof buf, "does not fit: needs %.1f GiB of device memory, %.1f GiB free",
                  double(need) / gib, double(free_b) / gib);
    skip_all(buf);
    return;
  }
  const size_t cap = std::min(kBareCapBytes, bTile + (free_b - need) / 2);
  const Tiles bt = bare_tiles(t.users, t.items, cap);
  const size_t bS = std::max(bTile, size_t(bt.users) * size_t(bt.items) * 4);

  try {
    DevBuf U(bU, "U"), V(bV, "V"), S(bS, "score buffer");
    DevBuf out_items(size_t(t.users) * size_t(kmax) * 4, "output items");
    DevBuf out_scores(size_t(t.users) * size_t(kmax) * 4, "output scores");
    DevBuf Ub, Vb, Ut, Vt;
    // Element i of U depends on (seed, i) only: the first n users are the same
    // whatever --users says; likewise the items.
    fill_uniform(s, U.as<float>(), int64_t(bU / 4), mix64(o_.seed * 2 + 0));
    fill_uniform(s, V.as<float>(), int64_t(bV / 4), mix64(o_.seed * 2 + 1));
    if (want_bf16) {
      Ub = DevBuf(bU / 2, "U bf16");
      Vb = DevBuf(bV / 2, "V bf16");
      Ut = DevBuf(size_t(tt.users) * size_t(d) * 2, "U tile bf16");
      Vt = DevBuf(size_t(tt.items) * size_t(d) * 2, "V tile bf16");
      to_bf16(s, U.as<float>(), int64_t(bU / 4), Ub.as<__nv_bfloat16>());
      to_bf16(s, V.as<float>(), int64_t(bV / 4), Vb.as<__nv_bfloat16>());
    }
    CUDA_CHECK(cudaStreamSynchronize(s));
    Inputs in;
    in.users = t.users;
    in.items = t.items;
    in.d = d;
    in.U = U.as<float>();
    in.V = V.as<float>();
    in.Ub = Ub.as<__nv_bfloat16>();
    in.Vb = Vb.as<__nv_bfloat16>();

    TripleRun x{t, d, in, tt, bt, &S, &out_items, &out_scores, &Ut, &Vt, {}, {},
                std::min(t.users, o_.recall_users)};
    for (Cell& c : cells) run_cell(c, x);
    CUDA_CHECK(cudaStreamSynchronize(s));  // before the buffers are freed
  } catch (const OutOfMemory& e) {
    CUDA_CHECK(cudaStreamSynchronize(s));
    // Cells of this triple not yet decided are skipped with the reason.
    for (const Cell& c : cells) {
      bool decided = false;
      for (const Cell& d2 : r_.cells)
        decided = decided || (d2.users == c.users && d2.items == c.items && d2.d == c.d &&
                              d2.k == c.k && d2.path == c.path && d2.precision == c.precision);
      if (!decided) skip(c, e.what());
    }
  }
}

int run(const Options& o) {
  const double t_start = now_s();
  std::unique_ptr<towerrec::Backend> be = towerrec::make_cuda_backend(o.device);
  auto* cb = dynamic_cast<CudaBackend*>(be.get());
  if (cb == nullptr) throw Error("make_cuda_backend did not return the CUDA backend");
  cb->set_topk_tiles(kTileUsers, kTileItems);

  Report r;
  r.opt = &o;
  r.device = cb->describe();
  std::printf("towerrec_topk_bench: all-users top-K on %s\n", r.device.c_str());
  std::printf("U, V uniform in [-1, 1) (seed %llu), no excluded items; two-kernel tiles %lld users x "
              "%lld items; time budget %.0f s\n",
              static_cast<unsigned long long>(o.seed), static_cast<long long>(kTileUsers),
              static_cast<long long>(kTileItems), o.budget_s);
  std::fflush(stdout);

  Runner runner(o, *cb, r, t_start);
  try {
    runner.run();
  } catch (const std::exception& e) {
    r.error = e.what();
    r.elapsed_s = now_s() - t_start;
    try {
      write_outputs(r);
    } catch (const std::exception&) {
    }
    throw;
  }
  r.elapsed_s = now_s() - t_start;
  r.complete = true;
  std::printf(kLegend, static_cast<long long>(o.recall_users));
  print_summary(r);
  int measured = 0;
  for (const Cell& c : r.cells) measured += c.ok;
  std::printf("\n%d of %zu cells measured in %.1f s", measured, r.cells.size(), r.elapsed_s);
  if (r.budget_spent) std::printf("; the time budget of %.0f s was spent: the cells after it were not started", o.budget_s);
  std::printf("\n");
  write_outputs(r);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  try {
    if (!parse_args(argc, argv, o)) return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "towerrec_topk_bench: %s\n%s", e.what(), kUsage);
    return 2;
  }
  try {
    if (!towerrec::cuda_available()) {
      std::printf("towerrec_topk_bench: no CUDA device: skipped\n");
      if (!o.json_path.empty())
        towerrec::write_file_atomic(
            o.json_path, "{\n  \"tool\": \"towerrec_topk_bench\",\n  \"skipped\": \"no CUDA device\",\n"
                         "  \"cells\": []\n}\n");
      return 0;
    }
    return run(o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "towerrec_topk_bench: error: %s\n", e.what());
    return 1;
  }
}
