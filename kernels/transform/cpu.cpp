// The CPU backend's transform family (l2_normalize, l2_normalize_backward, dropout): CpuBackend's
// definitions of these ops of the contract in include/towerrec/backend.h.
// Determinism and BLAS conventions: see kernels/cpu/cpu_backend.cpp.
#include "kernels/cpu/cpu_backend.h"

#include "kernels/cpu/cpu_util.h"
#include "kernels/math.h"
#include "towerrec/error.h"
#include "towerrec/rng.h"

namespace towerrec {

using cpu::worth_parallel;

// ---- embedding transforms ----------------------------------------------------------

void CpuBackend::l2_normalize_impl(const float* X, int64_t n, int d, float* Y, float* inv_norm) {
  if (n == 0) return;
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

void CpuBackend::l2_normalize_backward_impl(const float* Y, const float* inv_norm, const float* dY,
                                            int64_t n, int d, float* dX) {
  if (n == 0) return;
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

void CpuBackend::dropout_impl(float* x, int64_t n, float p, uint64_t seed, uint64_t offset) {
  if (n == 0 || p == 0.0f) return;  // p = 0: every element kept and divided by 1
#pragma omp parallel for schedule(static) num_threads(threads_) if (worth_parallel(n * 8))
  for (int64_t j = 0; j < n; ++j)
    x[j] = math::dropout(x[j], rng::uniform(seed, rng::kDropout, offset + static_cast<uint64_t>(j)),
                         p);
}

}  // namespace towerrec
