// The CPU reference backend (see cpu_backend.h and the op contract in
// include/towerrec/backend.h).
//
// Determinism: every parallel loop writes disjoint outputs and every sum runs in
// an order fixed by the data (row order, CSR order, fixed-size chunks), never by
// the schedule. OpenBLAS sgemm is deterministic for a fixed thread count.
// sgemm is called outside OpenMP regions (the pthread OpenBLAS build
// must not be entered from many OpenMP threads at once), except in topk, which
// does so only with OpenBLAS's OpenMP build (single-threaded there).
//
// cblas row-major convention used throughout: C[M x N] = op(A) . op(B) with
// lda/ldb/ldc the row strides of A, B, C as stored.
#include "kernels/cpu/cpu_backend.h"

#include <cblas.h>
#include <omp.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <sstream>
#include <utility>

#include "kernels/math.h"
#include "towerrec/error.h"
#include "towerrec/rng.h"

namespace towerrec {
namespace {

// Parallelise a loop only when it has at least this many scalar operations.
constexpr int64_t kParallelWork = 1 << 15;

bool worth_parallel(int64_t work) { return work >= kParallelWork; }

void check_blas_dim(int64_t v, const char* what) {
  TOWERREC_CHECK(v >= 0 && v <= INT_MAX, std::string(what) + " out of BLAS int range: " +
                                             std::to_string(v));
}

std::string openblas_version() {
  // openblas_get_config(): "OpenBLAS 0.3.21 DYNAMIC_ARCH ..."; keep the first two words.
  std::istringstream in(openblas_get_config());
  std::string name, version;
  in >> name >> version;
  return version.empty() ? "OpenBLAS" : name + " " + version;
}

// Ranking key of a score: NaN ranks like -inf.
inline float rank_key(float s) {
  if (std::isnan(s)) return -std::numeric_limits<float>::infinity();
  return s == 0.0f ? 0.0f : s;  // -0 ties with +0
}

// Runs body(c0, c1) over a partition of [0, dim) into one contiguous column range
// per thread. Used where different rows may hit the same output row, so rows must
// be processed in order: each element still sees its updates in row order.
template <typename Body>
void for_column_ranges(int threads, int dim, int64_t work, Body body) {
  if (!worth_parallel(work) || threads <= 1 || dim < 2) {
    body(0, dim);
    return;
  }
  const int parts = std::min(threads, dim);
#pragma omp parallel for schedule(static) num_threads(parts)
  for (int t = 0; t < parts; ++t) {
    const int c0 = static_cast<int>(int64_t{dim} * t / parts);
    const int c1 = static_cast<int>(int64_t{dim} * (t + 1) / parts);
    body(c0, c1);
  }
}

// math::adam_update over n contiguous elements. sqrtf keeps the compiler from
// vectorising that loop (errno), so on x86 four lanes at a time with SSE: the
// same operations in the same order (IEEE sqrt and divide are exact, no FMA
// contraction), so every element gets the scalar update bit for bit.
inline void adam_span(float* p, const float* g, float* m, float* v, int64_t n,
                      const math::AdamStep& s) {
  int64_t i = 0;
#if defined(__SSE2__)
  const __m128 b1 = _mm_set1_ps(s.beta1), c1 = _mm_set1_ps(1.0f - s.beta1);
  const __m128 b2 = _mm_set1_ps(s.beta2), c2 = _mm_set1_ps(1.0f - s.beta2);
  const __m128 inv_bc1 = _mm_set1_ps(s.inv_bc1), inv_sqrt_bc2 = _mm_set1_ps(s.inv_sqrt_bc2);
  const __m128 eps = _mm_set1_ps(s.eps), lr = _mm_set1_ps(s.lr), wd = _mm_set1_ps(s.weight_decay);
  for (; i + 4 <= n; i += 4) {
    const __m128 gi = _mm_loadu_ps(g + i);
    __m128 mi = _mm_loadu_ps(m + i), vi = _mm_loadu_ps(v + i), pi = _mm_loadu_ps(p + i);
    mi = _mm_add_ps(_mm_mul_ps(b1, mi), _mm_mul_ps(c1, gi));
    vi = _mm_add_ps(_mm_mul_ps(b2, vi), _mm_mul_ps(_mm_mul_ps(c2, gi), gi));
    const __m128 mhat = _mm_mul_ps(mi, inv_bc1);
    const __m128 denom = _mm_add_ps(_mm_mul_ps(_mm_sqrt_ps(vi), inv_sqrt_bc2), eps);
    pi = _mm_sub_ps(pi, _mm_mul_ps(lr, _mm_add_ps(_mm_div_ps(mhat, denom), _mm_mul_ps(wd, pi))));
    _mm_storeu_ps(m + i, mi);
    _mm_storeu_ps(v + i, vi);
    _mm_storeu_ps(p + i, pi);
  }
#endif
  for (; i < n; ++i) math::adam_update(p[i], g[i], m[i], v[i], s);
}

// Rows ahead that the sparse optimizers prefetch.
constexpr int64_t kSparseAhead = 8;

// Prefetches the cache lines of n floats at p for writing.
inline void prefetch_row(const float* p, int64_t n) {
  for (int64_t c = 0; c < n; c += 16) __builtin_prefetch(p + c, 1, 3);
}

}  // namespace

CpuBackend::CpuBackend(int threads)
    : threads_(std::max(1, threads > 0 ? threads : omp_get_num_procs())), gemm_(threads_) {
  openblas_set_num_threads(threads_);
}

std::string CpuBackend::describe() const {
  return "cpu (" + openblas_version() + ", " + CpuGemm::version() + ", " + std::to_string(threads_) +
         (threads_ == 1 ? " thread)" : " threads)");
}

// ---- memory -------------------------------------------------------------------

void* CpuBackend::allocate(size_t bytes) {
  constexpr size_t kAlign = 64;
  const size_t rounded = std::max<size_t>(kAlign, (bytes + kAlign - 1) / kAlign * kAlign);
  TOWERREC_CHECK(rounded >= bytes, "allocation size overflow");
  void* p = std::aligned_alloc(kAlign, rounded);
  TOWERREC_CHECK(p != nullptr, "out of host memory allocating " + std::to_string(bytes) + " bytes");
  return p;
}

void CpuBackend::deallocate(void* p) noexcept { std::free(p); }

void CpuBackend::to_device(void* dst, const void* host_src, size_t bytes) {
  if (bytes == 0) return;
  TOWERREC_CHECK(dst && host_src, "to_device: null pointer");
  std::memcpy(dst, host_src, bytes);
}

void CpuBackend::to_host(void* host_dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  TOWERREC_CHECK(host_dst && src, "to_host: null pointer");
  std::memcpy(host_dst, src, bytes);
}

void CpuBackend::copy(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  TOWERREC_CHECK(dst && src, "copy: null pointer");
  std::memmove(dst, src, bytes);
}

void CpuBackend::fill(float* p, int64_t n, float value) {
  TOWERREC_CHECK(n >= 0, "fill: negative size");
  if (n == 0) return;
  TOWERREC_CHECK(p, "fill: null pointer");
#pragma omp parallel for schedule(static) num_threads(threads_) if (worth_parallel(n))
  for (int64_t i = 0; i < n; ++i) p[i] = value;
}

// ---- tower layers -------------------------------------------------------------

const uint16_t* CpuBackend::bf16_copy(const float* x, int64_t count, std::vector<uint16_t>& buf) {
  buf.resize(static_cast<size_t>(count));
  gemm_.convert(x, count, buf.data());
  return buf.data();
}

void CpuBackend::dense_forward(const float* X, int64_t n, int in, const float* W, const float* b,
                               int out, Activation act, float* Y) {
  TOWERREC_CHECK(n >= 0 && in > 0 && out > 0, "dense_forward: bad shape n=" + std::to_string(n) +
                                                   " in=" + std::to_string(in) +
                                                   " out=" + std::to_string(out));
  if (n == 0) return;
  TOWERREC_CHECK(X && W && b && Y, "dense_forward: null pointer");
  check_blas_dim(n, "dense_forward: n");
  // Y[n x out] = act(X[n x in] . W[in x out] + b), bias and ReLU in the GEMM's epilogue.
  const CpuGemm::Epilogue ep{b, act == Activation::kReLU};
  if (matmul_precision_ == MatmulPrecision::kBF16) {
    gemm_.bf16(CpuGemm::Op::kForward, n, in, out, bf16_copy(X, n * in, bf16_a_),
               bf16_copy(W, int64_t{in} * out, bf16_w_), Y, ep);
  } else {
    gemm_.f32(CpuGemm::Op::kForward, n, in, out, X, W, Y, ep);
  }
}

void CpuBackend::dense_backward(const float* X, int64_t n, int in, const float* W, int out,
                                Activation act, const float* Y, float* dY, float* dW, float* db,
                                float* dX) {
  TOWERREC_CHECK(n >= 0 && in > 0 && out > 0, "dense_backward: bad shape n=" +
                                                  std::to_string(n) + " in=" + std::to_string(in) +
                                                  " out=" + std::to_string(out));
  TOWERREC_CHECK(dW && db, "dense_backward: null dW or db");
  if (n == 0) {
    fill(dW, int64_t{in} * out, 0.0f);
    fill(db, out, 0.0f);
    return;
  }
  TOWERREC_CHECK(X && W && dY, "dense_backward: null pointer");
  TOWERREC_CHECK(act != Activation::kReLU || Y, "dense_backward: ReLU needs Y");
  check_blas_dim(n, "dense_backward: n");

  // One pass over dY: dZ = dY * relu'(Z) in place (Y > 0 exactly where Z > 0) and
  // the bias gradient db[c] = sum_r dZ[r, c]. Rows go in fixed blocks of
  // kBiasRows: each block sums its rows in float, in row order, into its own
  // partial row; the partials are then added in block order in double. The
  // result does not depend on the thread count.
  constexpr int64_t kBiasRows = 256;
  const bool relu = act == Activation::kReLU;
  const int64_t n_blocks = (n + kBiasRows - 1) / kBiasRows;
  bias_partial_.resize(static_cast<size_t>(n_blocks * out));
  float* partial = bias_partial_.data();
#pragma omp parallel for schedule(static) num_threads(threads_) if (worth_parallel(n * out))
  for (int64_t blk = 0; blk < n_blocks; ++blk) {
    float* acc = partial + blk * out;
    for (int c = 0; c < out; ++c) acc[c] = 0.0f;
    const int64_t r1 = std::min(n, (blk + 1) * kBiasRows);
    for (int64_t r = blk * kBiasRows; r < r1; ++r) {
      float* dz = dY + r * out;
      if (relu) {
        const float* y = Y + r * out;
#pragma omp simd
        for (int c = 0; c < out; ++c) {
          const float z = y[c] > 0.0f ? dz[c] : 0.0f;
          dz[c] = z;
          acc[c] += z;
        }
      } else {
#pragma omp simd
        for (int c = 0; c < out; ++c) acc[c] += dz[c];
      }
    }
  }
  for_column_ranges(threads_, out, n_blocks * out, [&](int c0, int c1) {
    for (int c = c0; c < c1; ++c) {
      double sum = 0.0;
      for (int64_t blk = 0; blk < n_blocks; ++blk) sum += partial[blk * out + c];
      db[c] = static_cast<float>(sum);
    }
  });

  // dW[in x out] = X^T[in x n] . dZ[n x out],  dX[n x in] = dZ[n x out] . W^T[out x in]
  if (matmul_precision_ == MatmulPrecision::kBF16) {
    const uint16_t* dz = bf16_copy(dY, n * out, bf16_b_);
    gemm_.bf16(CpuGemm::Op::kBackwardWeights, n, in, out, bf16_copy(X, n * in, bf16_a_), dz, dW);
    if (dX)
      gemm_.bf16(CpuGemm::Op::kBackwardData, n, in, out, dz,
                 bf16_copy(W, int64_t{in} * out, bf16_w_), dX);
  } else {
    gemm_.f32(CpuGemm::Op::kBackwardWeights, n, in, out, X, dY, dW);
    if (dX) gemm_.f32(CpuGemm::Op::kBackwardData, n, in, out, dY, W, dX);
  }
}

// ---- embeddings and features ----------------------------------------------------

void CpuBackend::gather_rows(const float* src, int dim, const int32_t* idx, int64_t n, float* out,
                             int ld_out, int col_off) {
  TOWERREC_CHECK(n >= 0 && dim > 0 && col_off >= 0 && int64_t{col_off} + dim <= ld_out,
                 "gather_rows: bad shape dim=" + std::to_string(dim) + " ld_out=" +
                     std::to_string(ld_out) + " col_off=" + std::to_string(col_off));
  if (n == 0) return;
  TOWERREC_CHECK(src && idx && out, "gather_rows: null pointer");
  // Rows are scattered over a large table: fetch the row 8 ahead while copying.
#pragma omp parallel for schedule(static) num_threads(threads_) if (worth_parallel(n * dim))
  for (int64_t r = 0; r < n; ++r) {
    if (r + 8 < n) {
      const float* ahead = src + int64_t{idx[r + 8]} * dim;
      for (int c = 0; c < dim; c += 16) __builtin_prefetch(ahead + c);
    }
    std::memcpy(out + r * ld_out + col_off, src + int64_t{idx[r]} * dim, sizeof(float) * dim);
  }
}

void CpuBackend::bag_forward(const float* table, int dim, const int32_t* offsets,
                             const int32_t* values, const int32_t* idx, int64_t n, float* out,
                             int ld_out, int col_off) {
  TOWERREC_CHECK(n >= 0 && dim > 0 && col_off >= 0 && int64_t{col_off} + dim <= ld_out,
                 "bag_forward: bad shape dim=" + std::to_string(dim) + " ld_out=" +
                     std::to_string(ld_out) + " col_off=" + std::to_string(col_off));
  if (n == 0) return;
  TOWERREC_CHECK(table && offsets && idx && out, "bag_forward: null pointer");
  // Entities are scattered: first their value ranges in a tight loop (many
  // cache misses in flight at once), then the sums, fetching values 8 rows ahead.
  bag_span_.resize(static_cast<size_t>(2 * n));
  int32_t* span = bag_span_.data();
#pragma omp parallel num_threads(threads_) if (worth_parallel(n * dim * 4))
  {
#pragma omp for schedule(static)
    for (int64_t r = 0; r < n; ++r) {
      span[2 * r] = offsets[idx[r]];
      span[2 * r + 1] = offsets[idx[r] + 1];
    }
#pragma omp for schedule(static)
  for (int64_t r = 0; r < n; ++r) {
    if (r + 8 < n) __builtin_prefetch(values + span[2 * (r + 8)]);
    float* o = out + r * ld_out + col_off;
    const int32_t begin = span[2 * r], end = span[2 * r + 1];
    for (int c = 0; c < dim; ++c) o[c] = 0.0f;
    if (end <= begin) continue;
    for (int32_t j = begin; j < end; ++j) {
      const float* t = table + int64_t{values[j]} * dim;
      for (int c = 0; c < dim; ++c) o[c] += t[c];
    }
    const float inv = 1.0f / static_cast<float>(end - begin);
    for (int c = 0; c < dim; ++c) o[c] *= inv;
  }
  }
}

void CpuBackend::bag_backward(const float* dout, int ld_dout, int col_off, const int32_t* offsets,
                              const int32_t* values, const int32_t* idx, int64_t n, int dim,
                              float* dtable) {
  TOWERREC_CHECK(n >= 0 && dim > 0 && col_off >= 0 && int64_t{col_off} + dim <= ld_dout,
                 "bag_backward: bad shape dim=" + std::to_string(dim) + " ld_dout=" +
                     std::to_string(ld_dout) + " col_off=" + std::to_string(col_off));
  if (n == 0) return;
  TOWERREC_CHECK(dout && offsets && idx && dtable, "bag_backward: null pointer");
  // The value ranges first, in a tight loop (as in bag_forward).
  bag_span_.resize(static_cast<size_t>(2 * n));
  int32_t* span = bag_span_.data();
  for (int64_t r = 0; r < n; ++r) {
    span[2 * r] = offsets[idx[r]];
    span[2 * r + 1] = offsets[idx[r] + 1];
  }
  // Bags of different rows share table rows: partition over columns, rows in order.
  for_column_ranges(threads_, dim, n * dim * 4, [&](int c0, int c1) {
    for (int64_t r = 0; r < n; ++r) {
      if (r + 8 < n) __builtin_prefetch(values + span[2 * (r + 8)]);
      const int32_t begin = span[2 * r], end = span[2 * r + 1];
      if (end <= begin) continue;
      const float inv = 1.0f / static_cast<float>(end - begin);
      const float* g = dout + r * ld_dout + col_off;
      for (int32_t j = begin; j < end; ++j) {
        float* t = dtable + int64_t{values[j]} * dim;
        for (int c = c0; c < c1; ++c) t[c] += g[c] * inv;
      }
    }
  });
}

// ---- loss ------------------------------------------------------------------------

namespace {

// Pairs are summed into the loss in fixed chunks (chunk partials added in chunk
// order), so the float64 loss does not depend on the thread count.
constexpr int64_t kLossChunk = 1024;

// Shape and pointer checks shared by the pair losses. `labels`: the loss reads
// pb.label; `item_csr`: it reduces dV through the item CSR.
void check_pair_batch(const char* op, const float* U, const float* V, int d, const PairBatch& pb,
                      const float* dU, const float* dV, const float* pair_grad,
                      const float* loss_out, bool labels, bool item_csr) {
  const std::string name(op);
  TOWERREC_CHECK(d > 0 && pb.n_pairs >= 0 && pb.n_users >= 0 && pb.n_items >= 0,
                 name + ": bad shape");
  TOWERREC_CHECK(loss_out, name + ": null loss_out");
  const int64_t np = pb.n_pairs;
  if (np > 0)
    TOWERREC_CHECK(U && V && pair_grad && pb.user && pb.item && (!labels || pb.label),
                   name + ": null pointer");
  if (pb.n_users > 0) TOWERREC_CHECK(dU && pb.user_offsets, name + ": null dU/user CSR");
  if (pb.n_items > 0)
    TOWERREC_CHECK(dV && (!item_csr || pb.item_offsets), name + ": null dV/item CSR");
  if (np > 0) {
    TOWERREC_CHECK(pb.user_pairs && (!item_csr || pb.item_pairs),
                   name + ": null CSR pair lists");
    TOWERREC_CHECK(pb.n_users > 0 && pb.user_offsets[pb.n_users] == np,
                   name + ": user CSR does not cover the pairs");
    if (item_csr)
      TOWERREC_CHECK(pb.n_items > 0 && pb.item_offsets[pb.n_items] == np,
                     name + ": item CSR does not cover the pairs");
  }
}

// dU[u] = sum_{p: user_p = u} g_p V[item_p] and dV[i] = sum_{p: item_p = i} g_p U[user_p],
// each row reduced in CSR (increasing pair) order; no atomics.
void reduce_pair_grads(int threads, const float* U, const float* V, int d, const PairBatch& pb,
                       const float* pair_grad, float* dU, float* dV) {
  const int64_t np = pb.n_pairs;
  const int32_t nu = pb.n_users, ni = pb.n_items;
#pragma omp parallel for schedule(static) num_threads(threads) if (worth_parallel(np * d))
  for (int32_t u = 0; u < nu; ++u) {
    float* g = dU + int64_t{u} * d;
    for (int c = 0; c < d; ++c) g[c] = 0.0f;
    for (int32_t q = pb.user_offsets[u]; q < pb.user_offsets[u + 1]; ++q) {
      const int32_t p = pb.user_pairs[q];
      const float w = pair_grad[p];
      const float* v = V + int64_t{pb.item[p]} * d;
      for (int c = 0; c < d; ++c) g[c] += w * v[c];
    }
  }
#pragma omp parallel for schedule(static) num_threads(threads) if (worth_parallel(np * d))
  for (int32_t i = 0; i < ni; ++i) {
    float* g = dV + int64_t{i} * d;
    for (int c = 0; c < d; ++c) g[c] = 0.0f;
    for (int32_t q = pb.item_offsets[i]; q < pb.item_offsets[i + 1]; ++q) {
      const int32_t p = pb.item_pairs[q];
      const float w = pair_grad[p];
      const float* u = U + int64_t{pb.user[p]} * d;
      for (int c = 0; c < d; ++c) g[c] += w * u[c];
    }
  }
}

// Sixteen independent partial sums (vectorised, and no chain of dependent
// adds), folded pairwise, then the tail. Fixed order: the result depends only
// on the inputs.
inline float dot(const float* a, const float* b, int d) {
  float acc[16] = {};
  int c = 0;
  for (; c + 16 <= d; c += 16)
    for (int j = 0; j < 16; ++j) acc[j] += a[c + j] * b[c + j];
  for (int w = 8; w >= 1; w /= 2)
    for (int j = 0; j < w; ++j) acc[j] += acc[j + w];
  float s = acc[0];
  for (; c < d; ++c) s += a[c] * b[c];
  return s;
}

}  // namespace

void CpuBackend::logistic_loss(const float* U, const float* V, int d, const PairBatch& pb,
                               float scale, float* dU, float* dV, float* pair_grad,
                               float* loss_out) {
  check_pair_batch("logistic_loss", U, V, d, pb, dU, dV, pair_grad, loss_out, true, true);
  const int64_t np = pb.n_pairs;

  // Pass 1: scores, pair gradients, and the loss summed in double over fixed
  // chunks of pairs.
  const int64_t n_chunks = (np + kLossChunk - 1) / kLossChunk;
  std::vector<double> partial(static_cast<size_t>(n_chunks), 0.0);
#pragma omp parallel for schedule(static) num_threads(threads_) if (worth_parallel(np * d))
  for (int64_t ch = 0; ch < n_chunks; ++ch) {
    const int64_t p1 = std::min(np, (ch + 1) * kLossChunk);
    // loss_p = max(x, 0) + log1p(e) with x = -y s and e = exp(-|x|) (as in
    // math::logistic_loss). The log1p terms are summed as the log of a product
    // of (1 + e) in double, one log per 256 pairs instead of one per pair; e
    // below 2^-30 adds e directly (log1p(e) = e to double precision there).
    double lin = 0.0, tiny = 0.0, logs = 0.0, prod = 1.0;
    int in_prod = 0;
    for (int64_t p = ch * kLossChunk; p < p1; ++p) {
      const float s = dot(U + int64_t{pb.user[p]} * d, V + int64_t{pb.item[p]} * d, d);
      const float y = pb.label[p];
      const math::LogisticTerms t = math::logistic_terms(s, y);
      pair_grad[p] = scale * math::logistic_grad(t, y);
      if (t.x > 0.0f) lin += static_cast<double>(t.x);
      if (t.e < 0x1p-30f) {
        tiny += static_cast<double>(t.e);
      } else {
        prod *= 1.0 + static_cast<double>(t.e);
        if (++in_prod == 256) {
          logs += std::log(prod);
          prod = 1.0;
          in_prod = 0;
        }
      }
    }
    partial[static_cast<size_t>(ch)] = lin + tiny + logs + std::log(prod);
  }
  double total = 0.0;
  for (double x : partial) total += x;
  *loss_out = static_cast<float>(static_cast<double>(scale) * total);

  // Pass 2: per-row reductions in CSR order.
  reduce_pair_grads(threads_, U, V, d, pb, pair_grad, dU, dV);
}

// BPR: groups of 1 + k pairs (positive first). Pass 1 runs over fixed chunks of
// groups: each group computes its k + 1 scores, the loss terms (summed in double
// in group order) and the pair gradients; pass 2 is the logistic loss's CSR
// reduction.
void CpuBackend::bpr_loss(const float* U, const float* V, int d, const PairBatch& pb, int group,
                          float scale, float* dU, float* dV, float* pair_grad,
                          float* loss_out) {
  check_pair_batch("bpr_loss", U, V, d, pb, dU, dV, pair_grad, loss_out, false, true);
  const int64_t np = pb.n_pairs;
  TOWERREC_CHECK(group >= 2 && np % group == 0,
                 "bpr_loss: n_pairs=" + std::to_string(np) + " is not a multiple of group=" +
                     std::to_string(group) + " (group must be >= 2)");
  const int64_t n_groups = np / group;
  for (int64_t g = 0; g < n_groups; ++g)
    for (int j = 1; j < group; ++j)
      TOWERREC_CHECK(pb.user[g * group + j] == pb.user[g * group],
                     "bpr_loss: group " + std::to_string(g) + " mixes users");

  constexpr int64_t kGroupChunk = 256;
  const int64_t n_chunks = (n_groups + kGroupChunk - 1) / kGroupChunk;
  std::vector<double> partial(static_cast<size_t>(n_chunks), 0.0);
#pragma omp parallel for schedule(static) num_threads(threads_) if (worth_parallel(np * d))
  for (int64_t ch = 0; ch < n_chunks; ++ch) {
    const int64_t g1 = std::min(n_groups, (ch + 1) * kGroupChunk);
    double sum = 0.0;
    for (int64_t g = ch * kGroupChunk; g < g1; ++g) {
      const int64_t base = g * group;
      const float* u = U + int64_t{pb.user[base]} * d;
      const float s_pos = dot(u, V + int64_t{pb.item[base]} * d, d);
      float w_pos = 0.0f;
      for (int j = 1; j < group; ++j) {
        const int64_t p = base + j;
        const float s_neg = dot(u, V + int64_t{pb.item[p]} * d, d);
        const float w = math::bpr_weight(s_pos, s_neg);
        sum += static_cast<double>(math::bpr_loss(s_pos, s_neg));
        w_pos += w;
        pair_grad[p] = scale * w;
      }
      pair_grad[base] = -scale * w_pos;
    }
    partial[static_cast<size_t>(ch)] = sum;
  }
  double total = 0.0;
  for (double x : partial) total += x;
  *loss_out = static_cast<float>(static_cast<double>(scale) * total);

  reduce_pair_grads(threads_, U, V, d, pb, pair_grad, dU, dV);
}

// Sampled softmax over the batch's items, in five steps:
//  1. pair_rows[p] = U[user_p]                                  (gather)
//  2. logits[np x ni] = pair_rows . V^T / T                      (sgemm), then - log_q[j]
//  3. per row p: m = max_j z, e_j = exp(z_j - m), S = sum e_j (double);
//     l_p = m + log S - z_p,item_p; dz_pj = scale (e_j / S - [j = item_p]) / T,
//     written over the logits
//  4. dV[ni x d] = dZ^T . pair_rows                              (sgemm)
//  5. pair_rows = dZ . V (sgemm), then dU[u] = sum of pair_rows[p] over the user's
//     pairs in CSR order.
// Losses are summed per fixed chunk of rows in double, chunk partials in order.
void CpuBackend::softmax_loss(const float* U, const float* V, int d, const PairBatch& pb,
                              const float* log_q, float temperature, float scale, float* dU,
                              float* dV, float* logits, float* pair_rows, float* loss_out) {
  TOWERREC_CHECK(d > 0 && pb.n_pairs >= 0 && pb.n_users >= 0 && pb.n_items >= 0,
                 "softmax_loss: bad shape");
  TOWERREC_CHECK(temperature > 0.0f && std::isfinite(temperature),
                 "softmax_loss: temperature must be positive, got " + std::to_string(temperature));
  TOWERREC_CHECK(loss_out, "softmax_loss: null loss_out");
  const int64_t np = pb.n_pairs;
  const int64_t ni = pb.n_items;
  const int32_t nu = pb.n_users;
  if (nu > 0) TOWERREC_CHECK(dU && pb.user_offsets, "softmax_loss: null dU/user CSR");
  if (ni > 0) TOWERREC_CHECK(dV, "softmax_loss: null dV");
  if (np == 0) {
    if (nu > 0) fill(dU, int64_t{nu} * d, 0.0f);
    if (ni > 0) fill(dV, ni * d, 0.0f);
    *loss_out = 0.0f;
    return;
  }
  TOWERREC_CHECK(U && V && logits && pair_rows && pb.user && pb.item && pb.user_pairs,
                 "softmax_loss: null pointer");
  TOWERREC_CHECK(ni > 0, "softmax_loss: pairs but no items");
  TOWERREC_CHECK(nu > 0 && pb.user_offsets[nu] == np,
                 "softmax_loss: user CSR does not cover the pairs");
  check_blas_dim(np, "softmax_loss: n_pairs");
  check_blas_dim(ni, "softmax_loss: n_items");
  const int inp = static_cast<int>(np), ini = static_cast<int>(ni);

  // 1. Gather the user row of every pair.
#pragma omp parallel for schedule(static) num_threads(threads_) if (worth_parallel(np * d))
  for (int64_t p = 0; p < np; ++p)
    std::memcpy(pair_rows + p * d, U + int64_t{pb.user[p]} * d, sizeof(float) * d);

  // 2. logits[np x ni] = pair_rows[np x d] . V^T[d x ni] / T
  const float inv_t = 1.0f / temperature;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, inp, ini, d, inv_t, pair_rows, d, V, d,
              0.0f, logits, ini);

  // 3. Row softmax, loss, and dLogits in place.
  const float scale_over_t = scale / temperature;
  const int64_t n_chunks = (np + kLossChunk - 1) / kLossChunk;
  std::vector<double> partial(static_cast<size_t>(n_chunks), 0.0);
#pragma omp parallel for schedule(static) num_threads(threads_) if (worth_parallel(np * ni))
  for (int64_t ch = 0; ch < n_chunks; ++ch) {
    const int64_t p1 = std::min(np, (ch + 1) * kLossChunk);
    double sum = 0.0;
    for (int64_t p = ch * kLossChunk; p < p1; ++p) {
      float* z = logits + p * ni;
      if (log_q)
        for (int64_t j = 0; j < ni; ++j) z[j] -= log_q[j];
      float m = z[0];
      for (int64_t j = 1; j < ni; ++j) m = std::max(m, z[j]);
      const int32_t pos = pb.item[p];
      const float z_pos = z[pos];
      double s = 0.0;
      for (int64_t j = 0; j < ni; ++j) {
        z[j] = std::exp(z[j] - m);
        s += static_cast<double>(z[j]);
      }
      // l_p = logsumexp - z_pos = (m - z_pos) + log S, S >= 1.
      sum += (static_cast<double>(m) - static_cast<double>(z_pos)) + std::log(s);
      const float inv_s = static_cast<float>(1.0 / s);
      for (int64_t j = 0; j < ni; ++j)
        z[j] = math::softmax_logit_grad(z[j], inv_s, j == pos, scale_over_t);
    }
    partial[static_cast<size_t>(ch)] = sum;
  }
  double total = 0.0;
  for (double x : partial) total += x;
  *loss_out = static_cast<float>(static_cast<double>(scale) * total);

  // 4. dV[ni x d] = dZ^T[ni x np] . pair_rows[np x d]
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, ini, d, inp, 1.0f, logits, ini, pair_rows,
              d, 0.0f, dV, d);
  // 5. pair_rows[np x d] = dZ[np x ni] . V[ni x d], then reduce per user.
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, inp, d, ini, 1.0f, logits, ini, V, d,
              0.0f, pair_rows, d);
#pragma omp parallel for schedule(static) num_threads(threads_) if (worth_parallel(np * d))
  for (int32_t u = 0; u < nu; ++u) {
    float* g = dU + int64_t{u} * d;
    for (int c = 0; c < d; ++c) g[c] = 0.0f;
    for (int32_t q = pb.user_offsets[u]; q < pb.user_offsets[u + 1]; ++q) {
      const float* r = pair_rows + int64_t{pb.user_pairs[q]} * d;
      for (int c = 0; c < d; ++c) g[c] += r[c];
    }
  }
}

// ---- embedding transforms ----------------------------------------------------------

void CpuBackend::l2_normalize(const float* X, int64_t n, int d, float* Y, float* inv_norm) {
  TOWERREC_CHECK(n >= 0 && d > 0, "l2_normalize: bad shape n=" + std::to_string(n) +
                                      " d=" + std::to_string(d));
  if (n == 0) return;
  TOWERREC_CHECK(X && Y && inv_norm, "l2_normalize: null pointer");
#pragma omp parallel for schedule(static) num_threads(threads_) if (worth_parallel(n * d))
  for (int64_t r = 0; r < n; ++r) {
    const float* x = X + r * d;
    float* y = Y + r * d;
    double ss = 0.0;
    for (int c = 0; c < d; ++c) ss += static_cast<double>(x[c]) * x[c];
    const double inv = math::l2_inv_norm(ss);
    for (int c = 0; c < d; ++c) y[c] = static_cast<float>(x[c] * inv);
    inv_norm[r] = static_cast<float>(inv);
  }
}

void CpuBackend::l2_normalize_backward(const float* Y, const float* inv_norm, const float* dY,
                                       int64_t n, int d, float* dX) {
  TOWERREC_CHECK(n >= 0 && d > 0, "l2_normalize_backward: bad shape n=" + std::to_string(n) +
                                      " d=" + std::to_string(d));
  if (n == 0) return;
  TOWERREC_CHECK(Y && inv_norm && dY && dX, "l2_normalize_backward: null pointer");
#pragma omp parallel for schedule(static) num_threads(threads_) if (worth_parallel(n * d))
  for (int64_t r = 0; r < n; ++r) {
    const float* y = Y + r * d;
    const float* g = dY + r * d;
    float* o = dX + r * d;  // may alias g: each element is read before it is written
    double dp = 0.0;
    for (int c = 0; c < d; ++c) dp += static_cast<double>(g[c]) * y[c];
    const float k = static_cast<float>(dp);
    const float inv = inv_norm[r];
    for (int c = 0; c < d; ++c) o[c] = inv * (g[c] - k * y[c]);
  }
}

void CpuBackend::dropout(float* x, int64_t n, float p, uint64_t seed, uint64_t offset) {
  TOWERREC_CHECK(n >= 0, "dropout: negative size");
  TOWERREC_CHECK(p >= 0.0f && p <= 1.0f, "dropout: p must be in [0, 1], got " + std::to_string(p));
  if (n == 0 || p == 0.0f) return;  // p = 0: every element kept and divided by 1
  TOWERREC_CHECK(x, "dropout: null pointer");
#pragma omp parallel for schedule(static) num_threads(threads_) if (worth_parallel(n * 8))
  for (int64_t j = 0; j < n; ++j)
    x[j] = math::dropout(x[j], rng::uniform(seed, rng::kDropout, offset + static_cast<uint64_t>(j)),
                         p);
}

// ---- optimizers ----------------------------------------------------------------------

void CpuBackend::adam(float* param, const float* grad, float* m, float* v, int64_t n,
                      const AdamParams& p) {
  TOWERREC_CHECK(n >= 0 && p.step >= 1, "adam: bad size or step");
  if (n == 0) return;
  TOWERREC_CHECK(param && grad && m && v, "adam: null pointer");
  const math::AdamStep s =
      math::make_adam_step(p.lr, p.beta1, p.beta2, p.eps, p.weight_decay, p.step);
  constexpr int64_t kSpan = 4096;
  const int64_t spans = (n + kSpan - 1) / kSpan;
#pragma omp parallel for schedule(static) num_threads(threads_) if (worth_parallel(n * 4))
  for (int64_t q = 0; q < spans; ++q) {
    const int64_t i0 = q * kSpan, len = std::min(kSpan, n - i0);
    adam_span(param + i0, grad + i0, m + i0, v + i0, len, s);
  }
}

void CpuBackend::sparse_adam(float* table, float* m, float* v, int dim, const int32_t* rows,
                             int64_t n, const float* grad, int ld_grad, int col_off,
                             const AdamParams& p) {
  TOWERREC_CHECK(n >= 0 && dim > 0 && col_off >= 0 && int64_t{col_off} + dim <= ld_grad &&
                     p.step >= 1,
                 "sparse_adam: bad shape or step");
  if (n == 0) return;
  TOWERREC_CHECK(table && m && v && rows && grad, "sparse_adam: null pointer");
  const math::AdamStep s =
      math::make_adam_step(p.lr, p.beta1, p.beta2, p.eps, p.weight_decay, p.step);
  // Rows are distinct (contract), so rows can be updated in parallel. The rows are
  // random in a large table: the three arrays of the row kSparseAhead rows ahead
  // are prefetched while this one is updated.
#pragma omp parallel for schedule(static) num_threads(threads_) if (worth_parallel(n * dim * 4))
  for (int64_t r = 0; r < n; ++r) {
    if (r + kSparseAhead < n) {
      const int64_t ahead = int64_t{rows[r + kSparseAhead]} * dim;
      prefetch_row(table + ahead, dim);
      prefetch_row(m + ahead, dim);
      prefetch_row(v + ahead, dim);
    }
    const int64_t base = int64_t{rows[r]} * dim;
    adam_span(table + base, grad + r * ld_grad + col_off, m + base, v + base, dim, s);
  }
}

void CpuBackend::sgd(float* param, const float* grad, int64_t n, float lr, float weight_decay) {
  TOWERREC_CHECK(n >= 0, "sgd: negative size");
  if (n == 0) return;
  TOWERREC_CHECK(param && grad, "sgd: null pointer");
#pragma omp parallel for schedule(static) num_threads(threads_) if (worth_parallel(n))
  for (int64_t i = 0; i < n; ++i) param[i] -= lr * (grad[i] + weight_decay * param[i]);
}

void CpuBackend::sparse_sgd(float* table, int dim, const int32_t* rows, int64_t n,
                            const float* grad, int ld_grad, int col_off, float lr,
                            float weight_decay) {
  TOWERREC_CHECK(n >= 0 && dim > 0 && col_off >= 0 && int64_t{col_off} + dim <= ld_grad,
                 "sparse_sgd: bad shape");
  if (n == 0) return;
  TOWERREC_CHECK(table && rows && grad, "sparse_sgd: null pointer");
  // The contract does not require distinct rows here: apply updates in row order,
  // parallel only over columns. The table row kSparseAhead rows ahead is prefetched.
  for_column_ranges(threads_, dim, n * dim, [&](int c0, int c1) {
    for (int64_t r = 0; r < n; ++r) {
      if (r + kSparseAhead < n)
        prefetch_row(table + int64_t{rows[r + kSparseAhead]} * dim + c0, c1 - c0);
      float* t = table + int64_t{rows[r]} * dim;
      const float* g = grad + r * ld_grad + col_off;
#pragma omp simd
      for (int c = c0; c < c1; ++c) t[c] -= lr * (g[c] + weight_decay * t[c]);
    }
  });
}

// ---- ranking ----------------------------------------------------------------------------
//
// Users are processed in blocks of up to kTopkUserBlock, items in chunks of
// topk_item_chunk_ (a block's chunk of scores, 512 x 256 floats = 512 KiB, stays
// in L2; 512 users per block amortise sgemm's packing of each V chunk, which cost
// 20% of the time at 64 users). Per chunk: one sgemm scores the block against the
// chunk's items, then each user of the block (in parallel, rows are independent)
// folds the hot scores into its bounded candidate set: a binary heap of its k best so far under
// (key desc, item asc), worst on top. Items arrive in increasing index order, so
// once the heap is full a new item enters only if its score beats the worst key
// strictly (a tie loses on the index): almost every score is rejected by one
// compare, done a block of 64 at a time (topk_skip, AVX2 where the CPU has it). The key is the score with
// NaN mapped to -inf and -0 to +0, and out_scores reports the key, exactly as the
// CUDA backend's key mapping (kernels/cuda/topk.cu) does. Excluded items are checked
// only for candidates that pass the threshold, against the user's sorted exclusion
// list with a cursor that moves forward with the item index.
//
// The result is exact and does not depend on the chunking or the thread count
// (selection is a total order; every score is the same sgemm dot product).

namespace {

struct TopkCand {
  float key;  // rank_key(score), also the score reported
  int32_t item;
};

// Heap order: a "less than" b when a ranks better, so the heap top is the worst.
inline bool topk_better(const TopkCand& a, const TopkCand& b) {
  return a.key > b.key || (a.key == b.key && a.item < b.item);
}

// One user's selection state across the item chunks.
struct TopkRow {
  TopkCand* heap;        // [k]
  int32_t size;          // candidates held
  const int32_t* excl;   // sorted exclusion list
  int64_t n_excl;
  int64_t cursor;        // first exclusion entry >= every item seen so far
};

inline bool topk_excluded(TopkRow& st, int32_t item) {
  while (st.cursor < st.n_excl && st.excl[st.cursor] < item) ++st.cursor;
  return st.cursor < st.n_excl && st.excl[st.cursor] == item;
}

// Scores tested at once by topk_skip.
constexpr int64_t kTopkScanBlock = 64;

// From j, skips whole blocks of kTopkScanBlock scores that are all <= thr (or NaN);
// returns the start of the first block with a score above thr, or of the tail
// shorter than a block. Compiled also for AVX2 (chosen at run time): the test is
// a plain compare, so both versions return the same index.
__attribute__((target_clones("avx2", "default")))
int64_t topk_skip(const float* s, int64_t j, int64_t w, float thr) {
  for (; j + kTopkScanBlock <= w; j += kTopkScanBlock) {
    int hit = 0;
#pragma omp simd reduction(| : hit)
    for (int64_t t = 0; t < kTopkScanBlock; ++t) hit |= s[j + t] > thr ? 1 : 0;
    if (hit) return j;
  }
  return j;
}

// Folds scores s[0 .. w) of items item0 .. item0 + w into the row's heap of size k.
void topk_fold(TopkRow& st, int k, const float* s, int64_t w, int32_t item0) {
  int64_t j = 0;
  // Fill phase: every non-excluded item enters until k are held.
  for (; j < w && st.size < k; ++j) {
    const int32_t it = item0 + static_cast<int32_t>(j);
    if (st.n_excl && topk_excluded(st, it)) continue;
    st.heap[st.size++] = TopkCand{rank_key(s[j]), it};
    std::push_heap(st.heap, st.heap + st.size, topk_better);
  }
  if (j >= w) return;
  float thr = st.heap[0].key;
  // Replaces the worst candidate by item j (its score beats the threshold).
  auto take = [&](int64_t jj) {
    const int32_t it = item0 + static_cast<int32_t>(jj);
    if (st.n_excl && topk_excluded(st, it)) return;
    std::pop_heap(st.heap, st.heap + k, topk_better);
    st.heap[k - 1] = TopkCand{rank_key(s[jj]), it};  // s > thr: not NaN, but maybe -0
    std::push_heap(st.heap, st.heap + k, topk_better);
    thr = st.heap[0].key;
  };
  while (j < w) {
    j = topk_skip(s, j, w, thr);  // the first block with a score above thr, or the tail
    const int64_t e = std::min(w, j + kTopkScanBlock);
    for (; j < e; ++j)
      if (s[j] > thr) take(j);
  }
}

}  // namespace

void CpuBackend::set_topk_item_chunk(int64_t items) {
  TOWERREC_CHECK(items > 0, "topk item chunk must be positive");
  topk_item_chunk_ = items;
}

void CpuBackend::topk(const float* U, int64_t n_users, const float* V, int64_t n_items, int d,
                      int k, const int64_t* excl_offsets, const int32_t* excl_items,
                      int32_t* out_items, float* out_scores) {
  TOWERREC_CHECK(n_users >= 0 && n_items >= 0 && d > 0 && k > 0,
                 "topk: bad shape n_users=" + std::to_string(n_users) + " n_items=" +
                     std::to_string(n_items) + " d=" + std::to_string(d) +
                     " k=" + std::to_string(k));
  if (n_users == 0) return;
  TOWERREC_CHECK(U && out_items && out_scores, "topk: null pointer");
  TOWERREC_CHECK(n_items == 0 || V, "topk: null V");
  check_blas_dim(n_items, "topk: n_items");
  if (excl_offsets) {
    TOWERREC_CHECK(excl_offsets[n_users] == 0 || excl_items, "topk: null excl_items");
    for (int64_t r = 0; r < n_users; ++r)
      TOWERREC_CHECK(excl_offsets[r] <= excl_offsets[r + 1], "topk: excl_offsets not monotone");
    for (int64_t j = excl_offsets[0]; j < excl_offsets[n_users]; ++j)
      TOWERREC_CHECK(excl_items[j] >= 0 && excl_items[j] < n_items,
                     "topk: excluded item " + std::to_string(excl_items[j]) + " out of range");
  }

  const float neg_inf = -std::numeric_limits<float>::infinity();
  const int64_t block = std::min(kTopkUserBlock, n_users);
  const int64_t chunk = std::max<int64_t>(1, std::min(topk_item_chunk_, n_items));
  // With several threads and an OpenMP (or sequential) OpenBLAS, threads split the
  // users of a block, each with its own sgemm and tile: one barrier per block
  // instead of two per chunk, which on a loaded machine cost 30% at 2 threads.
  // Otherwise (pthread OpenBLAS) sgemm threads itself and the fold is parallel.
  const bool user_parallel = threads_ > 1 && openblas_get_parallel() != 1 &&
                             worth_parallel(std::min(block, n_users) * n_items);
  const int64_t tile_floats = block * chunk;
  if (n_items > 0)
    topk_scores_.resize(static_cast<size_t>(tile_floats * (user_parallel ? threads_ : 1)));
  const int64_t kk = std::min<int64_t>(k, n_items);  // heap capacity
  std::vector<TopkCand> heaps(static_cast<size_t>(block * std::max<int64_t>(kk, 1)));
  std::vector<TopkRow> rows(static_cast<size_t>(block));
  std::vector<int32_t> excl_sorted;

  for (int64_t u0 = 0; u0 < n_users; u0 += block) {
    const int64_t nb = std::min(block, n_users - u0);
    // Per-row state; exclusion lists are used in place when already sorted.
    int64_t unsorted_total = 0;
    for (int64_t b = 0; b < nb; ++b) {
      TopkRow& st = rows[static_cast<size_t>(b)];
      st.heap = heaps.data() + b * kk;
      st.size = 0;
      st.cursor = 0;
      st.excl = nullptr;
      st.n_excl = 0;
      if (excl_offsets) {
        const int64_t e0 = excl_offsets[u0 + b], e1 = excl_offsets[u0 + b + 1];
        st.excl = excl_items + e0;
        st.n_excl = e1 - e0;
        if (!std::is_sorted(st.excl, st.excl + st.n_excl)) unsorted_total += st.n_excl;
      }
    }
    if (unsorted_total > 0) {
      excl_sorted.resize(static_cast<size_t>(unsorted_total));
      int64_t at = 0;
      for (int64_t b = 0; b < nb; ++b) {
        TopkRow& st = rows[static_cast<size_t>(b)];
        if (std::is_sorted(st.excl, st.excl + st.n_excl)) continue;
        int32_t* dst = excl_sorted.data() + at;
        std::copy(st.excl, st.excl + st.n_excl, dst);
        std::sort(dst, dst + st.n_excl);
        st.excl = dst;
        at += st.n_excl;
      }
    }

    // Scores and folds users [b0, b1) of the block over every item chunk, with
    // the score tile at tile ([b1 - b0] x chunk floats); the fold runs in
    // parallel over the users when fold_parallel.
    auto score_rows = [&](int64_t b0, int64_t b1, float* tile, bool fold_parallel) {
      for (int64_t i0 = 0; i0 < n_items && b1 > b0; i0 += chunk) {
        const int64_t w = std::min(chunk, n_items - i0);
        // tile[(b1-b0) x w] = U[u0+b0 .. u0+b1) . V[i0 .. i0+w)^T
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(b1 - b0),
                    static_cast<int>(w), d, 1.0f, U + (u0 + b0) * d, d, V + i0 * d, d, 0.0f,
                    tile, static_cast<int>(w));
        if (kk == 0) continue;
#pragma omp parallel for schedule(static) num_threads(threads_) if (fold_parallel)
        for (int64_t b = b0; b < b1; ++b)
          topk_fold(rows[static_cast<size_t>(b)], static_cast<int>(kk), tile + (b - b0) * w, w,
                    static_cast<int32_t>(i0));
      }
    };
    if (user_parallel) {
      // One OpenMP region per block: each thread scores its own users with a
      // single-threaded sgemm (OpenBLAS's OpenMP build runs one thread inside a
      // parallel region) into its own tile, so there is no barrier per chunk.
      const int parts = static_cast<int>(std::min<int64_t>(threads_, nb));
#pragma omp parallel for schedule(static) num_threads(parts)
      for (int t = 0; t < parts; ++t)
        score_rows(nb * t / parts, nb * (t + 1) / parts,
                   topk_scores_.data() + static_cast<int64_t>(t) * tile_floats, false);
    } else {
      score_rows(0, nb, topk_scores_.data(), worth_parallel(nb * chunk));
    }

    for (int64_t b = 0; b < nb; ++b) {
      TopkRow& st = rows[static_cast<size_t>(b)];
      std::sort(st.heap, st.heap + st.size, topk_better);
      int32_t* oi = out_items + (u0 + b) * k;
      float* os = out_scores + (u0 + b) * k;
      for (int32_t j = 0; j < st.size; ++j) {
        oi[j] = st.heap[j].item;
        os[j] = st.heap[j].key;
      }
      for (int j = st.size; j < k; ++j) {
        oi[j] = -1;
        os[j] = neg_inf;
      }
    }
  }
}

int64_t CpuBackend::preferred_topk_users(int32_t n_items, int, int) const {
  // 64 Mi scores' worth of users (the figure from when recommend_topk scored a
  // whole block at once). topk's own scratch no longer depends on it, and on
  // the CPU larger calls gain nothing: the threads share each block of users.
  return std::clamp<int64_t>((int64_t{64} << 20) / std::max<int32_t>(n_items, 1), 1, 4096);
}

std::unique_ptr<Backend> make_cpu_backend(int threads) {
  return std::make_unique<CpuBackend>(threads);
}

}  // namespace towerrec
