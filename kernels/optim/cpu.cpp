// The CPU backend's optimizer family (adam, sparse_adam, sgd, sparse_sgd): CpuBackend's
// definitions of these ops of the contract in include/towerrec/backend.h.
// Determinism and BLAS conventions: see kernels/cpu/cpu_backend.cpp.
#include "kernels/cpu/cpu_backend.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include <algorithm>
#include <cmath>

#include "kernels/cpu/cpu_util.h"
#include "kernels/math.h"
#include "towerrec/error.h"

namespace towerrec {

using cpu::for_column_ranges;
using cpu::worth_parallel;

namespace {

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

// ---- optimizers ----------------------------------------------------------------------

void CpuBackend::adam_impl(float* param, const float* grad, float* m, float* v, int64_t n,
                           const AdamParams& p) {
  if (n == 0) return;
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

void CpuBackend::sparse_adam_impl(float* table, float* m, float* v, int dim, const int32_t* rows,
                                  int64_t n, const float* grad, int ld_grad, int col_off,
                                  const AdamParams& p) {
  if (n == 0) return;
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

void CpuBackend::sgd_impl(float* param, const float* grad, int64_t n, float lr,
                          float weight_decay) {
  if (n == 0) return;
#pragma omp parallel for schedule(static) num_threads(threads_) if (worth_parallel(n))
  for (int64_t i = 0; i < n; ++i) param[i] -= lr * (grad[i] + weight_decay * param[i]);
}

void CpuBackend::sparse_sgd_impl(float* table, int dim, const int32_t* rows, int64_t n,
                                 const float* grad, int ld_grad, int col_off, float lr,
                                 float weight_decay) {
  if (n == 0) return;
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

}  // namespace towerrec
