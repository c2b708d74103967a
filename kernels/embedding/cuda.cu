// Embedding lookups and their gradients.
//
// gather_rows:  out[r, col_off + c] = src[idx[r], c]            r < n, c < dim
//   Grid-stride over the n*dim elements; consecutive threads read consecutive
//   columns of one row (coalesced when dim >= 32).
// bag_forward:  out[r, col_off + c] = mean over v in bag(idx[r]) of table[v, c]
//   (0 for an empty bag). One warp per output row; lanes stride the columns
//   and each lane sums its column over the bag in bag order.
// bag_weighted_forward / _backward: as the bags, with softmax weights of the
//   bag's learned logits in place of 1 / |bag|; one warp per row.
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

__device__ __forceinline__ float warp_sum(float x) {
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// The bag's largest logit and the sum of exp(logit - largest), on every lane.
__device__ __forceinline__ void bag_softmax_terms(const float* __restrict__ logit,
                                                  const int32_t* __restrict__ values, int32_t beg,
                                                  int32_t end, float& top, float& z) {
  top = -INFINITY;
  for (int32_t j = beg + threadIdx.x; j < end; j += 32) top = fmaxf(top, logit[values[j]]);
  for (int o = 16; o > 0; o >>= 1) top = fmaxf(top, __shfl_xor_sync(0xffffffffu, top, o));
  float s = 0.0f;
  for (int32_t j = beg + threadIdx.x; j < end; j += 32) s += expf(logit[values[j]] - top);
  z = warp_sum(s);
}

// bag_weighted_forward: one warp per row; w_j = exp(logit_j - top) / z.
__global__ void bag_weighted_forward_kernel(const float* __restrict__ table,
                                            const float* __restrict__ logit, int dim,
                                            const int32_t* __restrict__ offsets,
                                            const int32_t* __restrict__ values,
                                            const int32_t* __restrict__ idx, int64_t n,
                                            float* __restrict__ out, int ld_out, int col_off) {
  for (int64_t r = blockIdx.x * int64_t{kWarpsPerBlock} + threadIdx.y; r < n;
       r += int64_t{gridDim.x} * kWarpsPerBlock) {
    const int32_t e = idx[r];
    const int32_t beg = offsets[e], end = offsets[e + 1];
    float top = 0.0f, z = 1.0f;
    if (end > beg) bag_softmax_terms(logit, values, beg, end, top, z);
    for (int c = threadIdx.x; c < dim; c += 32) {
      float s = 0.0f;
      for (int32_t j = beg; j < end; ++j)
        s += expf(logit[values[j]] - top) / z * table[int64_t{values[j]} * dim + c];
      out[r * ld_out + col_off + c] = s;
    }
  }
}

// bag_weighted_backward: one warp per row; atomics into dtable and dlogit
// (rows share values), so the rounding of the sums varies from run to run.
__global__ void bag_weighted_backward_kernel(const float* __restrict__ dout,
                                             const float* __restrict__ pooled, int ld, int col_off,
                                             const float* __restrict__ table,
                                             const float* __restrict__ logit,
                                             const int32_t* __restrict__ offsets,
                                             const int32_t* __restrict__ values,
                                             const int32_t* __restrict__ dvalues,
                                             const int32_t* __restrict__ idx, int64_t n, int dim,
                                             float* __restrict__ dtable, float* __restrict__ dlogit) {
  for (int64_t r = blockIdx.x * int64_t{kWarpsPerBlock} + threadIdx.y; r < n;
       r += int64_t{gridDim.x} * kWarpsPerBlock) {
    const int32_t e = idx[r];
    const int32_t beg = offsets[e], end = offsets[e + 1];
    if (end <= beg) continue;
    float top, z;
    bag_softmax_terms(logit, values, beg, end, top, z);
    const float* g = dout + r * ld + col_off;
    float pg = 0.0f;
    if (dlogit) {
      for (int c = threadIdx.x; c < dim; c += 32) pg += pooled[r * ld + col_off + c] * g[c];
      pg = warp_sum(pg);
    }
    for (int32_t j = beg; j < end; ++j) {
      const int64_t v = values[j];
      const float w = expf(logit[v] - top) / z;
      if (dlogit) {
        float tg = 0.0f;
        for (int c = threadIdx.x; c < dim; c += 32) tg += table[v * dim + c] * g[c];
        tg = warp_sum(tg);
        if (threadIdx.x == 0) atomicAdd(&dlogit[v], w * (tg - pg));
      }
      if (dtable)
        for (int c = threadIdx.x; c < dim; c += 32) atomicAdd(&dtable[int64_t{dvalues[j]} * dim + c], w * g[c]);
    }
  }
}

}  // namespace

void CudaBackend::bag_weighted_forward_impl(const float* table, const float* logit, int dim,
                                            const int32_t* offsets, const int32_t* values,
                                            const int32_t* idx, int64_t n, float* out, int ld_out,
                                            int col_off) {
  if (n == 0) return;
  activate();
  bag_weighted_forward_kernel<<<warp_grid(n), dim3(32, kWarpsPerBlock), 0, stream_>>>(
      table, logit, dim, offsets, values, idx, n, out, ld_out, col_off);
  CUDA_CHECK_LAUNCH(stream_, "bag_weighted_forward_kernel");
}

void CudaBackend::bag_weighted_backward_impl(const float* dout, const float* pooled, int ld,
                                             int col_off, const float* table, const float* logit,
                                             const int32_t* offsets, const int32_t* values,
                                             const int32_t* dvalues, const int32_t* idx, int64_t n,
                                             int dim, float* dtable, float* dlogit) {
  if (n == 0) return;
  activate();
  bag_weighted_backward_kernel<<<warp_grid(n), dim3(32, kWarpsPerBlock), 0, stream_>>>(
      dout, pooled, ld, col_off, table, logit, offsets, values, dvalues, idx, n, dim, dtable, dlogit);
  CUDA_CHECK_LAUNCH(stream_, "bag_weighted_backward_kernel");
}

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
