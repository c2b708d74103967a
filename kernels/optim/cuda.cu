// Optimizer updates, elementwise, in place.
//
// adam:        param/m/v[n] updated by math::adam_update (AdamW, decoupled decay);
//              the bias corrections are computed once on the host by
//              math::make_adam_step and passed by value. One grid-stride kernel.
// sparse_adam: the same update on rows[0..n) of table/m/v[* x dim], with the
//              gradient of rows[r] at grad[r * ld_grad + col_off ..]. One warp
//              per row (rows are distinct, so warps never collide).
// sgd:         p -= lr * (g + weight_decay * p). Grid-stride.
// sparse_sgd:  the same on rows of a table, one warp per row.
#include "kernels/cuda/cuda_backend.h"
#include "kernels/math.h"

namespace towerrec::cuda {

namespace {


__global__ void adam_kernel(float* __restrict__ param, const float* __restrict__ grad,
                            float* __restrict__ m, float* __restrict__ v, int64_t n,
                            math::AdamStep s) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    float p = param[i], mi = m[i], vi = v[i];
    math::adam_update(p, grad[i], mi, vi, s);
    param[i] = p;
    m[i] = mi;
    v[i] = vi;
  }
}

// block = (32, 8): one warp per row, lanes stride the columns.
__global__ void sparse_adam_kernel(float* __restrict__ table, float* __restrict__ m,
                                   float* __restrict__ v, int dim,
                                   const int32_t* __restrict__ rows, int64_t n,
                                   const float* __restrict__ grad, int ld_grad, int col_off,
                                   math::AdamStep s) {
  for (int64_t r = blockIdx.x * int64_t{kWarpsPerBlock} + threadIdx.y; r < n;
       r += int64_t{gridDim.x} * kWarpsPerBlock) {
    const int64_t base = int64_t{rows[r]} * dim;
    const float* g = grad + r * ld_grad + col_off;
    for (int c = threadIdx.x; c < dim; c += 32) {
      float p = table[base + c], mi = m[base + c], vi = v[base + c];
      math::adam_update(p, g[c], mi, vi, s);
      table[base + c] = p;
      m[base + c] = mi;
      v[base + c] = vi;
    }
  }
}

__global__ void sgd_kernel(float* __restrict__ param, const float* __restrict__ grad, int64_t n,
                           float lr, float weight_decay) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const float p = param[i];
    param[i] = p - lr * (grad[i] + weight_decay * p);
  }
}

__global__ void sparse_sgd_kernel(float* __restrict__ table, int dim,
                                  const int32_t* __restrict__ rows, int64_t n,
                                  const float* __restrict__ grad, int ld_grad, int col_off,
                                  float lr, float weight_decay) {
  for (int64_t r = blockIdx.x * int64_t{kWarpsPerBlock} + threadIdx.y; r < n;
       r += int64_t{gridDim.x} * kWarpsPerBlock) {
    float* t = table + int64_t{rows[r]} * dim;
    const float* g = grad + r * ld_grad + col_off;
    for (int c = threadIdx.x; c < dim; c += 32) {
      const float p = t[c];
      t[c] = p - lr * (g[c] + weight_decay * p);
    }
  }
}


}  // namespace

void CudaBackend::adam_impl(float* param, const float* grad, float* m, float* v, int64_t n,
                            const AdamParams& p) {
  if (n == 0) return;
  activate();
  const math::AdamStep s =
      math::make_adam_step(p.lr, p.beta1, p.beta2, p.eps, p.weight_decay, p.step);
  adam_kernel<<<grid_for(n), kThreads, 0, stream_>>>(param, grad, m, v, n, s);
  CUDA_CHECK_LAUNCH(stream_, "adam_kernel");
}

void CudaBackend::sparse_adam_impl(float* table, float* m, float* v, int dim, const int32_t* rows,
                                   int64_t n, const float* grad, int ld_grad, int col_off,
                                   const AdamParams& p) {
  if (n == 0) return;
  activate();
  const math::AdamStep s =
      math::make_adam_step(p.lr, p.beta1, p.beta2, p.eps, p.weight_decay, p.step);
  sparse_adam_kernel<<<warp_grid(n), dim3(32, kWarpsPerBlock), 0, stream_>>>(
      table, m, v, dim, rows, n, grad, ld_grad, col_off, s);
  CUDA_CHECK_LAUNCH(stream_, "sparse_adam_kernel");
}

void CudaBackend::sgd_impl(float* param, const float* grad, int64_t n, float lr,
                           float weight_decay) {
  if (n == 0) return;
  activate();
  sgd_kernel<<<grid_for(n), kThreads, 0, stream_>>>(param, grad, n, lr, weight_decay);
  CUDA_CHECK_LAUNCH(stream_, "sgd_kernel");
}

void CudaBackend::sparse_sgd_impl(float* table, int dim, const int32_t* rows, int64_t n,
                                  const float* grad, int ld_grad, int col_off, float lr,
                                  float weight_decay) {
  if (n == 0) return;
  activate();
  sparse_sgd_kernel<<<warp_grid(n), dim3(32, kWarpsPerBlock), 0, stream_>>>(
      table, dim, rows, n, grad, ld_grad, col_off, lr, weight_decay);
  CUDA_CHECK_LAUNCH(stream_, "sparse_sgd_kernel");
}

}  // namespace towerrec::cuda
