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

}  // namespace towerrec
