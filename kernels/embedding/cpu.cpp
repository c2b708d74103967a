// The CPU backend's embedding family (gather_rows, bag_forward, bag_backward): CpuBackend's
// definitions of these ops of the contract in include/towerrec/backend.h.
// Determinism and BLAS conventions: see kernels/cpu/cpu_backend.cpp.
#include "kernels/cpu/cpu_backend.h"

#include <cstring>

#include "kernels/cpu/cpu_util.h"
#include "towerrec/error.h"

namespace towerrec {

using cpu::for_column_ranges;
using cpu::worth_parallel;

// ---- embeddings and features ----------------------------------------------------

void CpuBackend::gather_rows_impl(const float* src, int dim, const int32_t* idx, int64_t n,
                                  float* out, int ld_out, int col_off) {
  if (n == 0) return;
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

void CpuBackend::bag_forward_impl(const float* table, int dim, const int32_t* offsets,
                                  const int32_t* values, const int32_t* idx, int64_t n, float* out,
                                  int ld_out, int col_off) {
  if (n == 0) return;
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

void CpuBackend::bag_backward_impl(const float* dout, int ld_dout, int col_off,
                                   const int32_t* offsets, const int32_t* values,
                                   const int32_t* idx, int64_t n, int dim, float* dtable) {
  if (n == 0) return;
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

}  // namespace towerrec
