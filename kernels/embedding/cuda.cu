// Embedding lookups and their gradients.
//
// gather_rows:  out[r, col_off + c] = src[idx[r], c]            r < n, c < dim
//   Grid-stride over the n*dim elements; consecutive threads read consecutive
//   columns of one row (coalesced when dim >= 32).
// bag_forward:  out[r, col_off + c] = mean over v in bag(idx[r]) of table[v, c]
//   (0 for an empty bag). One warp per output row; lanes stride the columns
//   and each lane sums its column over the bag in bag order.
// bag_backward: dtable[v, c] += dout[r, col_off + c] / |bag(idx[r])|
//   One warp per row r, atomicAdd into dtable. Several rows may share a value
//   v, so the order of the additions, and thus the rounding of dtable, varies
//   from run to run: this op is NOT bitwise deterministic (the differences are
//   at the level of float rounding). A sort-by-value + segmented reduction
//   would make it deterministic if that is ever needed.
#include "kernels/cuda/cuda_backend.h"

namespace towerrec::cuda {

namespace {


__global__ void gather_rows_kernel(const float* __restrict__ src, int dim,
                                   const int32_t* __restrict__ idx, int64_t n,
                                   float* __restrict__ out, int ld_out, int col_off) {
  const int64_t total = n * dim;
  for (int64_t e = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; e < total;
       e += int64_t{gridDim.x} * blockDim.x) {
    const int64_t r = e / dim;
    const int c = static_cast<int>(e - r * dim);
    out[r * ld_out + col_off + c] = src[int64_t{idx[r]} * dim + c];
  }
}

// block = (32, 8): threadIdx.y picks the warp's row; grid-stride over rows.
__global__ void bag_forward_kernel(const float* __restrict__ table, int dim,
                                   const int32_t* __restrict__ offsets,
                                   const int32_t* __restrict__ values,
                                   const int32_t* __restrict__ idx, int64_t n,
                                   float* __restrict__ out, int ld_out, int col_off) {
  for (int64_t r = blockIdx.x * int64_t{kWarpsPerBlock} + threadIdx.y; r < n;
       r += int64_t{gridDim.x} * kWarpsPerBlock) {
    const int32_t e = idx[r];
    const int32_t beg = offsets[e], end = offsets[e + 1];
    const float inv = end > beg ? 1.0f / static_cast<float>(end - beg) : 0.0f;
    for (int c = threadIdx.x; c < dim; c += 32) {
      float s = 0.0f;
      for (int32_t j = beg; j < end; ++j) s += table[int64_t{values[j]} * dim + c];
      out[r * ld_out + col_off + c] = end > beg ? s * inv : 0.0f;
    }
  }
}

__global__ void bag_backward_kernel(const float* __restrict__ dout, int ld_dout, int col_off,
                                    const int32_t* __restrict__ offsets,
                                    const int32_t* __restrict__ values,
                                    const int32_t* __restrict__ idx, int64_t n, int dim,
                                    float* __restrict__ dtable) {
  for (int64_t r = blockIdx.x * int64_t{kWarpsPerBlock} + threadIdx.y; r < n;
       r += int64_t{gridDim.x} * kWarpsPerBlock) {
    const int32_t e = idx[r];
    const int32_t beg = offsets[e], end = offsets[e + 1];
    if (end <= beg) continue;
    const float count = static_cast<float>(end - beg);
    for (int c = threadIdx.x; c < dim; c += 32) {
      const float g = dout[r * ld_dout + col_off + c] / count;
      for (int32_t j = beg; j < end; ++j) atomicAdd(&dtable[int64_t{values[j]} * dim + c], g);
    }
  }
}

}  // namespace

void CudaBackend::gather_rows_impl(const float* src, int dim, const int32_t* idx, int64_t n,
                                   float* out, int ld_out, int col_off) {
  if (n == 0) return;
  activate();
  gather_rows_kernel<<<grid_for(n * dim), kThreads, 0, stream_>>>(src, dim, idx, n, out, ld_out,
                                                                   col_off);
  CUDA_CHECK_LAUNCH(stream_, "gather_rows_kernel");
}

void CudaBackend::bag_forward_impl(const float* table, int dim, const int32_t* offsets,
                                   const int32_t* values, const int32_t* idx, int64_t n, float* out,
                                   int ld_out, int col_off) {
  if (n == 0) return;
  activate();
  bag_forward_kernel<<<warp_grid(n), dim3(32, kWarpsPerBlock), 0, stream_>>>(
      table, dim, offsets, values, idx, n, out, ld_out, col_off);
  CUDA_CHECK_LAUNCH(stream_, "bag_forward_kernel");
}

void CudaBackend::bag_backward_impl(const float* dout, int ld_dout, int col_off,
                                    const int32_t* offsets, const int32_t* values,
                                    const int32_t* idx, int64_t n, int dim, float* dtable) {
  if (n == 0) return;
  activate();
  bag_backward_kernel<<<warp_grid(n), dim3(32, kWarpsPerBlock), 0, stream_>>>(
      dout, ld_dout, col_off, offsets, values, idx, n, dim, dtable);
  CUDA_CHECK_LAUNCH(stream_, "bag_backward_kernel");
}

}  // namespace towerrec::cuda
