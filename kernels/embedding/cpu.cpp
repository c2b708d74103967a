// The CPU backend's embedding family (gather_rows, bag_forward, bag_backward): CpuBackend's
// definitions of these ops of the contract in include/towerrec/backend.h.
// Determinism and BLAS conventions: see kernels/cpu/cpu_backend.cpp.
#include "kernels/cpu/cpu_backend.h"

#include <algorithm>
#include <cmath>
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

namespace {
// The softmax weights of one bag's logits into w[0 .. end - begin).
inline void bag_weights(const float* logit, const int32_t* values, int32_t begin, int32_t end, float* w) {
  float top = logit[values[begin]];
  for (int32_t j = begin + 1; j < end; ++j) top = std::max(top, logit[values[j]]);
  double z = 0.0;
  for (int32_t j = begin; j < end; ++j) {
    w[j - begin] = std::exp(logit[values[j]] - top);
    z += w[j - begin];
  }
  const auto inv = static_cast<float>(1.0 / z);
  for (int32_t j = begin; j < end; ++j) w[j - begin] *= inv;
}
}  // namespace

void CpuBackend::bag_weighted_forward_impl(const float* table, const float* logit, int dim,
                                           const int32_t* offsets, const int32_t* values,
                                           const int32_t* idx, int64_t n, float* out, int ld_out,
                                           int col_off) {
  if (n == 0) return;
#pragma omp parallel num_threads(threads_) if (worth_parallel(n * dim * 4))
  {
    std::vector<float> w;
#pragma omp for schedule(static)
    for (int64_t r = 0; r < n; ++r) {
      float* o = out + r * ld_out + col_off;
      const int32_t begin = offsets[idx[r]], end = offsets[idx[r] + 1];
      for (int c = 0; c < dim; ++c) o[c] = 0.0f;
      if (end <= begin) continue;
      w.resize(static_cast<size_t>(end - begin));
      bag_weights(logit, values, begin, end, w.data());
      for (int32_t j = begin; j < end; ++j) {
        const float* t = table + int64_t{values[j]} * dim;
        const float wj = w[static_cast<size_t>(j - begin)];
        for (int c = 0; c < dim; ++c) o[c] += wj * t[c];
      }
    }
  }
}

void CpuBackend::bag_weighted_backward_impl(const float* dout, const float* pooled, int ld,
                                            int col_off, const float* table, const float* logit,
                                            const int32_t* offsets, const int32_t* values,
                                            const int32_t* dvalues, const int32_t* idx, int64_t n,
                                            int dim, float* dtable, float* dlogit) {
  // One slot per (row, bag entry): rows may share a bag, so slots, not
  // entries, hold each use's weight and logit gradient.
  bag_base_.resize(static_cast<size_t>(n) + 1);
  bag_base_[0] = 0;
  for (int64_t r = 0; r < n; ++r)
    bag_base_[r + 1] = bag_base_[r] + std::max<int32_t>(0, offsets[idx[r] + 1] - offsets[idx[r]]);
  const int64_t slots = bag_base_[n];
  if (slots == 0) return;
  bag_w_.resize(static_cast<size_t>(slots));
  bag_s_.resize(static_cast<size_t>(slots));
  float* W = bag_w_.data();
  float* S = bag_s_.data();
  const int64_t* base = bag_base_.data();
#pragma omp parallel for schedule(static) num_threads(threads_) if (worth_parallel(slots * dim * 2))
  for (int64_t r = 0; r < n; ++r) {
    const int32_t begin = offsets[idx[r]], end = offsets[idx[r] + 1];
    if (end <= begin) continue;
    float* w = W + base[r];
    bag_weights(logit, values, begin, end, w);
    if (!dlogit) continue;
    const float* g = dout + r * ld + col_off;
    const float* p = pooled + r * ld + col_off;
    double pg = 0.0;
    for (int c = 0; c < dim; ++c) pg += double(p[c]) * g[c];
    for (int32_t j = begin; j < end; ++j) {
      const float* t = table + int64_t{values[j]} * dim;
      double tg = 0.0;
      for (int c = 0; c < dim; ++c) tg += double(t[c]) * g[c];
      S[base[r] + (j - begin)] = static_cast<float>(w[j - begin] * (tg - pg));
    }
  }
  if (dlogit)  // in row order: deterministic
    for (int64_t r = 0; r < n; ++r)
      for (int32_t j = offsets[idx[r]]; j < offsets[idx[r] + 1]; ++j)
        dlogit[values[j]] += S[base[r] + (j - offsets[idx[r]])];
  if (!dtable) return;
  // Bags of different rows share table rows: partition over columns, rows in order.
  for_column_ranges(threads_, dim, slots * dim * 2, [&](int c0, int c1) {
    for (int64_t r = 0; r < n; ++r) {
      const int32_t begin = offsets[idx[r]], end = offsets[idx[r] + 1];
      const float* g = dout + r * ld + col_off;
      for (int32_t j = begin; j < end; ++j) {
        const float wj = W[base[r] + (j - begin)];
        float* t = dtable + int64_t{dvalues[j]} * dim;
        for (int c = c0; c < c1; ++c) t[c] += wj * g[c];
      }
    }
  });
}

}  // namespace towerrec
