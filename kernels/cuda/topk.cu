// All-users top-K by inner product, with per-user exclusions.
//
// For each user r < n_users: the k best items j < n_items by <U[r], V[j]>,
// ordered by (score desc, item asc); items excl_items[excl_offsets[r] ..
// excl_offsets[r+1]) skipped; the tail padded with item -1 / score -inf.
// U[n_users x d], V[n_items x d], out_items/out_scores[n_users x k], 1 <= k <= 1024.
//
// Version 1 (this file): score tile + block-wide sort selection. Memory stays
// bounded by the tile whatever the catalogue size:
//   for each block of users (users_per_tile rows):
//     best[rows x k] := empty                     (cudaMemsetAsync 0xFF)
//     for each chunk of items (items_per_tile columns):
//       S[rows x chunk] = U_blk . V_chunk^T      (cuBLAS sgemm)
//       mark_excluded_kernel: excluded (user, item) cells of S get a NaN
//         payload that no arithmetic produces (kExcludedBits)
//       select_kernel (one block per user row): merges the row's running
//         best-k with the chunk's candidates
//     finish_kernel: keys -> out_items / out_scores
//
// Keys. A candidate is one 64-bit key: the high word maps the score to an
// unsigned integer whose ascending order is the score's descending order
// (NaN ranks as -inf, -0 as +0, like the CPU reference), the low word is the
// item index. Ascending key order is therefore exactly (score desc, item asc),
// keys are unique within a row, and the empty key ~0 sorts after all of them.
// Because keys are unique, the result does not depend on the order in which
// threads append candidates: the selection is deterministic.
//
// select_kernel keeps a shared buffer of 2048 keys: the running best k first,
// then candidates appended (atomicAdd on a shared counter) only when they beat
// the current k-th best key. When fewer than one round (256) of free slots
// remain, cub::BlockRadixSort sorts the buffer and it is cut back to k.
//
// Later versions (measure first): WarpSelect/BlockSelect-style register queues
// for small k, and scoring fused into selection so S never reaches memory.
#include <cub/block/block_radix_sort.cuh>

#include <algorithm>
#include <climits>

#include "kernels/cuda/cuda_backend.h"

namespace towerrec::cuda {

namespace {

using Key = unsigned long long;
constexpr Key kEmptyKey = ~Key{0};
constexpr int kMaxK = 1024;
constexpr int kSelThreads = 256;
constexpr int kSelItemsPerThread = 8;
constexpr int kSelBuffer = kSelThreads * kSelItemsPerThread;  // 2048 keys
static_assert(kMaxK + kSelThreads <= kSelBuffer, "one round must fit after a cut to k");
constexpr uint32_t kExcludedBits = 0x7fbadbadu;  // a quiet NaN with a marker payload

__device__ __forceinline__ uint32_t desc_score_bits(float s) {
  if (isnan(s)) s = -INFINITY;
  if (s == 0.0f) s = 0.0f;  // -0 ties with +0
  uint32_t u = __float_as_uint(s);
  u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);  // ascending with the score
  return ~u;                                         // descending
}

__device__ __forceinline__ float score_from_desc_bits(uint32_t d) {
  const uint32_t u = ~d;
  return __uint_as_float((u & 0x80000000u) ? (u & 0x7fffffffu) : ~u);
}

__device__ __forceinline__ Key make_key(float s, int64_t item) {
  return (Key{desc_score_bits(s)} << 32) | static_cast<uint32_t>(item);
}

// grid = rows of the tile; block = 256. S is [rows x nc], chunk starts at item c0.
__global__ void mark_excluded_kernel(float* __restrict__ S, int64_t nc, int64_t c0, int64_t u0,
                                     const int64_t* __restrict__ excl_offsets,
                                     const int32_t* __restrict__ excl_items) {
  const int64_t b = blockIdx.x;
  const int64_t e0 = excl_offsets[u0 + b], e1 = excl_offsets[u0 + b + 1];
  uint32_t* row = reinterpret_cast<uint32_t*>(S + b * nc);
  for (int64_t j = e0 + threadIdx.x; j < e1; j += blockDim.x) {
    const int64_t it = excl_items[j] - c0;
    if (it >= 0 && it < nc) row[it] = kExcludedBits;
  }
}

using BlockSort = cub::BlockRadixSort<Key, kSelThreads, kSelItemsPerThread>;

// Sorts buf[0 .. count) and keeps the best k at buf[0 .. k). Every thread calls it.
__device__ void sort_and_cut(Key* buf, int count, BlockSort::TempStorage& temp) {
  Key keys[kSelItemsPerThread];
#pragma unroll
  for (int i = 0; i < kSelItemsPerThread; ++i) {
    const int idx = threadIdx.x * kSelItemsPerThread + i;
    keys[i] = idx < count ? buf[idx] : kEmptyKey;
  }
  __syncthreads();  // all reads of buf done before it is overwritten
  BlockSort(temp).Sort(keys);
#pragma unroll
  for (int i = 0; i < kSelItemsPerThread; ++i) buf[threadIdx.x * kSelItemsPerThread + i] = keys[i];
}

// grid = rows of the tile; block = 256. best[rows x k]: each row's running
// best keys, sorted, kEmptyKey where fewer than k were seen.
__global__ void __launch_bounds__(kSelThreads)
    select_kernel(const float* __restrict__ S, int64_t nc, int64_t c0, int k,
                  Key* __restrict__ best) {
  __shared__ Key buf[kSelBuffer];
  __shared__ typename BlockSort::TempStorage temp;
  __shared__ int count;

  const int64_t b = blockIdx.x;
  Key* my = best + b * k;
  const float* row = S + b * nc;
  for (int i = threadIdx.x; i < k; i += kSelThreads) buf[i] = my[i];
  if (threadIdx.x == 0) count = k;
  __syncthreads();
  Key threshold = buf[k - 1];  // a candidate must beat the k-th best so far

  for (int64_t base = 0; base < nc; base += kSelThreads) {
    const int64_t j = base + threadIdx.x;
    if (j < nc) {
      const float s = row[j];
      if (__float_as_uint(s) != kExcludedBits) {
        const Key key = make_key(s, c0 + j);
        if (key < threshold) buf[atomicAdd(&count, 1)] = key;
      }
    }
    __syncthreads();
    const int c = count;
    if (c > kSelBuffer - kSelThreads) {  // uniform: every thread read the same count
      sort_and_cut(buf, c, temp);
      __syncthreads();
      if (threadIdx.x == 0) count = k;
      threshold = buf[k - 1];
    }
    __syncthreads();  // count is read above before anyone resets or appends to it
  }

  sort_and_cut(buf, count, temp);
  __syncthreads();
  for (int i = threadIdx.x; i < k; i += kSelThreads) my[i] = buf[i];
}

// out_items/out_scores[rows x k] from the keys.
__global__ void finish_kernel(const Key* __restrict__ best, int64_t total,
                              int32_t* __restrict__ out_items, float* __restrict__ out_scores) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total;
       i += int64_t{gridDim.x} * blockDim.x) {
    const Key key = best[i];
    if (key == kEmptyKey) {
      out_items[i] = -1;
      out_scores[i] = -INFINITY;
    } else {
      out_items[i] = static_cast<int32_t>(key & 0xffffffffu);
      out_scores[i] = score_from_desc_bits(static_cast<uint32_t>(key >> 32));
    }
  }
}

}  // namespace

void CudaBackend::topk(const float* U, int64_t n_users, const float* V, int64_t n_items, int d,
                       int k, const int64_t* excl_offsets, const int32_t* excl_items,
                       int32_t* out_items, float* out_scores) {
  TOWERREC_CHECK(n_users >= 0 && n_items >= 0 && n_items <= INT_MAX && d > 0 && k > 0,
                 "topk: bad shape n_users=" + std::to_string(n_users) +
                     " n_items=" + std::to_string(n_items) + " d=" + std::to_string(d) +
                     " k=" + std::to_string(k));
  TOWERREC_CHECK(k <= kMaxK, "topk: k=" + std::to_string(k) + " exceeds the CUDA backend's " +
                                 "maximum of " + std::to_string(kMaxK));
  if (n_users == 0) return;
  TOWERREC_CHECK(U && out_items && out_scores, "topk: null pointer");
  TOWERREC_CHECK(n_items == 0 || V, "topk: null V");
  activate();

  const int64_t ub = std::min<int64_t>(n_users, std::min<int64_t>(topk_users_per_tile_, 65535));
  const int64_t ic = std::max<int64_t>(1, std::min<int64_t>(n_items, topk_items_per_tile_));
  Scratch<float> S(*this, n_items > 0 ? ub * ic : 0);
  Scratch<Key> best(*this, ub * k);
  const float one = 1.0f, zero = 0.0f;

  for (int64_t u0 = 0; u0 < n_users; u0 += ub) {
    const int64_t nb = std::min(ub, n_users - u0);
    CUDA_CHECK(cudaMemsetAsync(best.get(), 0xFF, sizeof(Key) * size_t(nb) * k, stream_));
    for (int64_t c0 = 0; c0 < n_items; c0 += ic) {
      const int64_t nc = std::min(ic, n_items - c0);
      // Row-major S[nb x nc] = U_blk . V_chunk^T  <=>  column-major S^T[nc x nb] =
      // V_chunk (column-major V_chunk^T[d x nc], hence OP_T) . U_blk^T[d x nb].
      CUBLAS_CHECK(cublasSgemm(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(nc),
                               static_cast<int>(nb), d, &one, V + c0 * d, d, U + u0 * d, d,
                               &zero, S.get(), static_cast<int>(nc)));
      if (excl_offsets != nullptr) {
        mark_excluded_kernel<<<static_cast<unsigned>(nb), kThreads, 0, stream_>>>(
            S.get(), nc, c0, u0, excl_offsets, excl_items);
        CUDA_CHECK_LAUNCH(stream_, "mark_excluded_kernel");
      }
      select_kernel<<<static_cast<unsigned>(nb), kSelThreads, 0, stream_>>>(S.get(), nc, c0, k,
                                                                           best.get());
      CUDA_CHECK_LAUNCH(stream_, "select_kernel");
    }
    finish_kernel<<<grid_for(nb * k), kThreads, 0, stream_>>>(best.get(), nb * k,
                                                             out_items + u0 * k,
                                                             out_scores + u0 * k);
    CUDA_CHECK_LAUNCH(stream_, "finish_kernel");
  }
}

}  // namespace towerrec::cuda
