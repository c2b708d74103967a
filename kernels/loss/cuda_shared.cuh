// What the loss family's CUDA files share (kernels/loss/cuda.cu defines the
// kernel and the launcher; kernels/loss/cuda_ccl.cu uses them).
#pragma once

#include <cstdint>

#include "kernels/cuda/cuda_backend.h"

namespace towerrec::cuda::loss_detail {

constexpr int kFinishThreads = 256;   // loss_finish_kernel's block
constexpr int kSoftmaxThreads = 256;  // the per-row kernels' block (one block per pair row)

// Block-wide reduction of one value per thread; every thread gets the result.
// `red` holds one slot per warp; the combination order is fixed.
template <typename T, typename Op>
__device__ __forceinline__ T block_reduce(T x, T* red, Op op) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x = op(x, __shfl_xor_sync(0xffffffffu, x, o));
  __syncthreads();  // red may still be read from a previous reduction
  if (lane == 0) red[warp] = x;
  __syncthreads();
  T t = red[0];
  for (int w = 1; w < kSoftmaxThreads / 32; ++w) t = op(t, red[w]);
  return t;
}

// One block: *loss_out = scale * sum(partial[0 .. n)).
__global__ void __launch_bounds__(kFinishThreads)
    loss_finish_kernel(const double* __restrict__ partial, int n, float scale,
                       float* __restrict__ loss_out);

// dU[u] = sum over the user's CSR pairs, in pair order, of rows[p] (queued on stream).
void launch_user_row_sum(const float* rows, int d, const PairBatch& pb, float* dU,
                         cudaStream_t stream);

}  // namespace towerrec::cuda::loss_detail
