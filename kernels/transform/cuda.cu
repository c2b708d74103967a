// Embedding transforms: L2 normalisation (forward and backward) and dropout.
//
// l2_normalize:  Y[r] = X[r] * inv_norm[r],  inv_norm[r] = 1 / max(||X[r]||, 1e-12)
//   X, Y [n x d]; Y may alias X. One warp per row: lanes stride the columns,
//   a shuffle reduction gives the sum of squares (in double, like the CPU),
//   then each lane rescales the columns it read (no lane writes a column
//   another lane reads, so aliasing is safe).
// l2_normalize_backward:  dX[r] = inv_norm[r] * (dY[r] - <dY[r], Y[r]> Y[r])
//   Same shape of kernel, <dY, Y> in double; dX may alias dY.
// dropout:  x[j] = keep_j ? x[j] / (1 - p) : 0,
//   keep_j = rng::uniform(seed, rng::kDropout, offset + j) >= p.
//   Grid-stride over the elements; the counter-based generator is the same
//   function on host and device, so the mask is bit-identical to the CPU's.
#include "kernels/cuda/cuda_backend.h"
#include "kernels/math.h"
#include "towerrec/rng.h"

namespace towerrec::cuda {

namespace {

constexpr int kNormWarps = 8;  // rows per block

unsigned row_grid(int64_t n) {
  const int64_t b = (n + kNormWarps - 1) / kNormWarps;
  return static_cast<unsigned>(b < 1 ? 1 : (b > 65535 ? 65535 : b));
}

__device__ __forceinline__ double warp_sum(double s) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  return s;
}

// X and Y may alias: no __restrict__ on them. The sum of squares and the
// scaling run in double, as on the CPU, so both round the same exact value.
__global__ void __launch_bounds__(32 * kNormWarps)
    l2_normalize_kernel(const float* X, int64_t n, int d, float* Y,
                        float* __restrict__ inv_norm) {
  for (int64_t r = int64_t{blockIdx.x} * kNormWarps + threadIdx.x / 32; r < n;
       r += int64_t{gridDim.x} * kNormWarps) {
    const float* x = X + r * d;
    double ss = 0.0;
    for (int c = threadIdx.x % 32; c < d; c += 32) ss += static_cast<double>(x[c]) * x[c];
    const double inv = math::l2_inv_norm(warp_sum(ss));
    float* y = Y + r * d;
    for (int c = threadIdx.x % 32; c < d; c += 32) y[c] = static_cast<float>(x[c] * inv);
    if (threadIdx.x % 32 == 0) inv_norm[r] = static_cast<float>(inv);
  }
}

// dY and dX may alias: no __restrict__ on them. <dY, Y> in double, as on the CPU.
__global__ void __launch_bounds__(32 * kNormWarps)
    l2_normalize_backward_kernel(const float* __restrict__ Y, const float* __restrict__ inv_norm,
                                 const float* dY, int64_t n, int d, float* dX) {
  for (int64_t r = int64_t{blockIdx.x} * kNormWarps + threadIdx.x / 32; r < n;
       r += int64_t{gridDim.x} * kNormWarps) {
    const float* y = Y + r * d;
    const float* g = dY + r * d;
    double dp = 0.0;
    for (int c = threadIdx.x % 32; c < d; c += 32) dp += static_cast<double>(g[c]) * y[c];
    const float k = static_cast<float>(warp_sum(dp));
    const float inv = inv_norm[r];
    float* dx = dX + r * d;
    for (int c = threadIdx.x % 32; c < d; c += 32) dx[c] = inv * (g[c] - k * y[c]);
  }
}

__global__ void dropout_kernel(float* __restrict__ x, int64_t n, float p, uint64_t seed,
                               uint64_t offset) {
  for (int64_t j = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; j < n;
       j += int64_t{gridDim.x} * blockDim.x)
    x[j] = math::dropout(x[j], rng::uniform(seed, rng::kDropout, offset + static_cast<uint64_t>(j)),
                         p);
}

}  // namespace

void CudaBackend::l2_normalize_impl(const float* X, int64_t n, int d, float* Y, float* inv_norm) {
  if (n == 0) return;
  activate();
  l2_normalize_kernel<<<row_grid(n), 32 * kNormWarps, 0, stream_>>>(X, n, d, Y, inv_norm);
  CUDA_CHECK_LAUNCH(stream_, "l2_normalize_kernel");
}

void CudaBackend::l2_normalize_backward_impl(const float* Y, const float* inv_norm, const float* dY,
                                             int64_t n, int d, float* dX) {
  if (n == 0) return;
  activate();
  l2_normalize_backward_kernel<<<row_grid(n), 32 * kNormWarps, 0, stream_>>>(Y, inv_norm, dY, n,
                                                                             d, dX);
  CUDA_CHECK_LAUNCH(stream_, "l2_normalize_backward_kernel");
}

void CudaBackend::dropout_impl(float* x, int64_t n, float p, uint64_t seed, uint64_t offset) {
  if (n == 0 || p == 0.0f) return;
  activate();
  // p = 1 keeps nothing (uniform() < 1), so 1 - p = 0 never divides.
  dropout_kernel<<<grid_for(n), kThreads, 0, stream_>>>(x, n, p, seed, offset);
  CUDA_CHECK_LAUNCH(stream_, "dropout_kernel");
}

}  // namespace towerrec::cuda
