// All-users top-K by inner product, with per-user exclusions.
//
// For each user r < n_users: the k best items j < n_items by <U[r], V[j]>,
// ordered by (score desc, item asc); items excl_items[excl_offsets[r] ..
// excl_offsets[r+1]) skipped; the tail padded with item -1 / score -inf.
// U[n_users x d], V[n_items x d], out_items/out_scores[n_users x k], 1 <= k <= 1024.
//
// Keys. A candidate is one 64-bit key: the high word maps the score to an
// unsigned integer whose ascending order is the score's descending order
// (NaN ranks as -inf, -0 as +0, like the CPU reference), the low word is the
// item index. Ascending key order is therefore exactly (score desc, item asc),
// keys are unique within a row, and the empty key ~0 sorts after all of them.
// Because keys are unique, the result does not depend on the order in which
// candidates are collected: both versions are deterministic.
//
// Version 1, "gemm" (any d, k <= 1024): score tile + block-wide sort selection.
// Memory stays bounded by the tile whatever the catalogue size:
//   for each block of users (users_per_tile rows):
//     best[rows x k] := empty                     (cudaMemsetAsync 0xFF)
//     for each chunk of items (items_per_tile columns):
//       S[rows x chunk] = U_blk . V_chunk^T      (cuBLAS; precision below)
//       mark_excluded_kernel: excluded (user, item) cells of S get a NaN
//         payload that no arithmetic produces (kExcludedBits)
//       select_kernel (one block per user row): merges the row's running
//         best-k with the chunk's candidates
//     finish_kernel: keys -> out_items / out_scores
//   select_kernel keeps a shared buffer of 2048 keys: the running best k first,
//   then candidates appended (atomicAdd on a shared counter) only when they beat
//   the current k-th best key. When fewer than one round (256) of free slots
//   remain, cub::BlockRadixSort sorts the buffer and it is cut back to k.
//
//   Precision of the score GEMM (TopkPolicy::precision, options.h):
//     fp32  cublasSgemm, plain FP32 (default; agrees with the CPU reference)
//     tf32  cublasGemmEx with CUBLAS_COMPUTE_32F_FAST_TF32: FP32 in and out,
//           tensor-core products of inputs rounded to TF32 (10-bit mantissa)
//     bf16  U block and V chunk converted to BF16 (8-bit mantissa) by
//           to_bf16, cublasGemmEx with FP32 accumulation and output
//   tf32/bf16 return the scores of that GEMM: the ranking is approximate near
//   ties (relative error about 2^-10 for tf32 and 2^-8 for bf16 per product).
//
// Version 2, "fused" (d <= 64, k <= 128, fp32): topk_fused_kernel scores and
// selects in one kernel; the score matrix never reaches device memory.
//   One block = 8 warps = 8 users; one warp owns one user for the whole
//   catalogue. Items go by in segments of 4096: per segment each warp turns its
//   user's exclusion list into a 4096-bit mask in shared memory. Each segment
//   goes by in tiles of 64 items, staged in shared memory (rows padded to 65
//   floats: conflict-free); lane l scores items l and l + 32 of the tile
//   (sequential FMA over d with the user's row broadcast from shared memory),
//   and candidates that beat the warp's k-th best key are appended to the
//   warp's 256-key buffer at positions from a ballot (no atomics). When more
//   than 192 keys are buffered, a warp bitonic sort cuts the buffer back to k.
//   Shared memory: 2 + 16.3 + 16 + 4 KiB = 38.3 KiB per block.
//
// Which version runs (TopkPolicy::path, options.h):
//   auto  fused when precision is fp32, d <= 64 and k <= 128, else gemm. The
//         fused kernel saves writing and re-reading the users x items score
//         matrix but runs its FMAs on CUDA cores rather than through cuBLAS; the
//         rule is a first guess to be checked against the topk benchmarks.
//   fused throws for shapes it does not support (naming the gemm path).
#include <cuda_bf16.h>

#include <cub/block/block_radix_sort.cuh>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <cstring>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/topk/cuda_tile.cuh"

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

__device__ __forceinline__ void write_key(Key key, int32_t* item, float* score) {
  if (key == kEmptyKey) {
    *item = -1;
    *score = -INFINITY;
  } else {
    *item = static_cast<int32_t>(key & 0xffffffffu);
    *score = score_from_desc_bits(static_cast<uint32_t>(key >> 32));
  }
}

// ---- version 1: score tile, then selection ------------------------------------------

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
       i += int64_t{gridDim.x} * blockDim.x)
    write_key(best[i], out_items + i, out_scores + i);
}


// ---- version 2: fused scoring and selection --------------------------------------------

constexpr int kFusedWarps = 8;                         // users per block
constexpr int kFusedThreads = 32 * kFusedWarps;
constexpr int kFusedMaxD = 64;
constexpr int kFusedTile = 64;                         // items staged per tile
constexpr int kFusedSegment = 4096;                    // items per exclusion mask
constexpr int kFusedBuffer = 256;                      // keys per warp
constexpr int kFusedMaxK = kFusedBuffer - 2 * kFusedTile;  // 128
static_assert(kFusedTile == 64, "each lane scores two items of a tile");
static_assert(kFusedSegment % kFusedTile == 0, "tiles never straddle segments");

// Ascending bitonic sort of buf[0 .. kFusedBuffer) by one warp.
__device__ void warp_bitonic_sort(Key* buf) {
  const int lane = threadIdx.x % 32;
  for (int size = 2; size <= kFusedBuffer; size <<= 1) {
    for (int stride = size / 2; stride > 0; stride >>= 1) {
      for (int i = lane; i < kFusedBuffer / 2; i += 32) {
        const int lo = 2 * i - (i & (stride - 1));  // (i / stride) * 2 stride + i % stride
        const int hi = lo + stride;
        const bool ascending = (lo & size) == 0;
        const Key a = buf[lo], b = buf[hi];
        if ((a > b) == ascending) {
          buf[lo] = b;
          buf[hi] = a;
        }
      }
      __syncwarp();
    }
  }
}

// Sorts the warp's first `count` keys, keeps the best min(count, k), and
// returns the new count. The remaining slots hold kEmptyKey afterwards.
__device__ int warp_sort_and_cut(Key* buf, int count, int k) {
  for (int i = count + static_cast<int>(threadIdx.x % 32); i < kFusedBuffer; i += 32)
    buf[i] = kEmptyKey;
  __syncwarp();
  warp_bitonic_sort(buf);
  return count < k ? count : k;
}

// grid = ceil(n_users / 8); block = 256. See the file header.
__global__ void __launch_bounds__(kFusedThreads)
    topk_fused_kernel(const float* __restrict__ U, int64_t n_users, const float* __restrict__ V,
                      int64_t n_items, int d, int k, const int64_t* __restrict__ excl_offsets,
                      const int32_t* __restrict__ excl_items, int32_t* __restrict__ out_items,
                      float* __restrict__ out_scores) {
  __shared__ float Us[kFusedWarps][kFusedMaxD];
  __shared__ float Vs[kFusedTile][kFusedMaxD + 1];
  __shared__ Key buf_all[kFusedWarps][kFusedBuffer];
  __shared__ uint32_t mask_all[kFusedWarps][kFusedSegment / 32];

  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t r = int64_t{blockIdx.x} * kFusedWarps + warp;
  const bool active = r < n_users;  // uniform within the warp
  Key* buf = buf_all[warp];
  uint32_t* mask = mask_all[warp];
  for (int t = lane; t < d; t += 32) Us[warp][t] = active ? U[r * d + t] : 0.0f;
  int count = 0;                 // keys in buf; uniform within the warp
  Key threshold = kEmptyKey;     // a candidate must beat the k-th best so far
  const unsigned lanes_below = (1u << lane) - 1u;

  for (int64_t seg = 0; seg < n_items; seg += kFusedSegment) {
    // The user's exclusions that fall in this segment, as a bit mask.
    __syncwarp();  // every lane is done reading the previous segment's mask
    for (int w = lane; w < kFusedSegment / 32; w += 32) mask[w] = 0u;
    __syncwarp();
    if (active && excl_offsets != nullptr) {
      for (int64_t e = excl_offsets[r] + lane; e < excl_offsets[r + 1]; e += 32) {
        const int64_t it = excl_items[e] - seg;
        if (it >= 0 && it < kFusedSegment) atomicOr(&mask[it / 32], 1u << (it % 32));
      }
    }
    __syncwarp();

    const int64_t seg_end = min(n_items, seg + kFusedSegment);
    for (int64_t c0 = seg; c0 < seg_end; c0 += kFusedTile) {
      __syncthreads();  // every warp is done with the previous tile
      for (int e = threadIdx.x; e < kFusedTile * d; e += kFusedThreads) {
        const int i = e / d, t = e - i * d;
        Vs[i][t] = c0 + i < n_items ? V[(c0 + i) * d + t] : 0.0f;
      }
      __syncthreads();
      if (!active) continue;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int i = lane + 32 * h;
        const int64_t j = c0 + i;
        float s = 0.0f;
        for (int t = 0; t < d; ++t) s = fmaf(Us[warp][t], Vs[i][t], s);
        const int64_t local = j - seg;
        const bool excluded = (mask[local / 32] >> (local % 32)) & 1u;
        const Key key = make_key(s, j);
        const bool take = j < n_items && !excluded && key < threshold;
        const unsigned ballot = __ballot_sync(0xffffffffu, take);
        if (take) buf[count + __popc(ballot & lanes_below)] = key;
        count += __popc(ballot);
      }
      if (count > kFusedBuffer - kFusedTile) {
        __syncwarp();
        count = warp_sort_and_cut(buf, count, k);
        if (count == k) threshold = buf[k - 1];
      }
    }
  }
  if (!active) return;
  __syncwarp();
  count = warp_sort_and_cut(buf, count, k);
  for (int i = lane; i < k; i += 32)
    write_key(i < count ? buf[i] : kEmptyKey, out_items + r * k + i, out_scores + r * k + i);
}

}  // namespace

bool CudaBackend::topk_fused_supported(TopkPrecision precision, int d, int k) {
  return precision == TopkPrecision::kFP32 && d <= kFusedMaxD && k <= kFusedMaxK;
}

// Users per call for recommend_topk; topk's own scratch is bounded by the tile
// whatever the call's size. The fused kernel runs one warp per user, 8 users per
// block, and about 4 of its blocks (38.3 KiB of shared memory each) fit on an
// SM: four waves of them keep every SM busy through the tail of a call, and
// are whole GEMM-path user tiles. The caller's buffers bound it from above: per
// user a row of d floats and k items and scores, on the device and in
// page-locked host memory, for two calls in flight, within 256 MiB in all.
int64_t CudaBackend::preferred_topk_users(int32_t /*n_items*/, int d, int k) const {
  constexpr int64_t kBlocksPerSm = 4, kWaves = 4, kBudget = int64_t{256} << 20;
  const int64_t tile = std::max<int64_t>(1, topk_users_per_tile_);
  int64_t users = int64_t{sm_count_} * kBlocksPerSm * kFusedWarps * kWaves;
  users = (users + tile - 1) / tile * tile;
  const int64_t per_user =
      2 * (16 * int64_t{std::max(k, 1)} + 4 * int64_t{std::max(d, 1)} + 24);
  const int64_t cap = kBudget / per_user;
  if (users > cap) users = cap >= tile ? cap / tile * tile : std::max<int64_t>(1, cap);
  return users;
}

// ---- the op ------------------------------------------------------------------------------

void CudaBackend::topk_impl(const float* U, int64_t n_users, const float* V, int64_t n_items,
                            int d, int k, const int64_t* excl_offsets, const int32_t* excl_items,
                            int32_t* out_items, float* out_scores, const TopkPolicy& policy) {
  TOWERREC_CHECK(k <= kMaxK, "topk: k=" + std::to_string(k) + " exceeds the CUDA backend's " +
                                 "maximum of " + std::to_string(kMaxK));
  const bool fused_ok = topk_fused_supported(policy.precision, d, k);
  if (policy.path == TopkPath::kFused)
    TOWERREC_CHECK(fused_ok, "topk: the fused path needs fp32 precision, d <= " +
                                 std::to_string(kFusedMaxD) + " and k <= " +
                                 std::to_string(kFusedMaxK) + " (got " +
                                 to_string(policy.precision) + ", d=" + std::to_string(d) +
                                 ", k=" + std::to_string(k) + "); use the gemm path");
  if (n_users == 0) return;
  activate();

  if (policy.path != TopkPath::kGemm && fused_ok) {
    const int64_t blocks = (n_users + kFusedWarps - 1) / kFusedWarps;
    TOWERREC_CHECK(blocks <= INT_MAX, "topk: too many users for one call");
    topk_fused_kernel<<<static_cast<unsigned>(blocks), kFusedThreads, 0, stream_>>>(
        U, n_users, V, n_items, d, k, excl_offsets, excl_items, out_items, out_scores);
    CUDA_CHECK_LAUNCH(stream_, "topk_fused_kernel");
    return;
  }

  const int64_t ub = std::min<int64_t>(n_users, std::min<int64_t>(topk_users_per_tile_, 65535));
  const int64_t ic = std::max<int64_t>(1, std::min<int64_t>(n_items, topk_items_per_tile_));
  Scratch<float> S(*this, n_items > 0 ? ub * ic : 0);
  Scratch<Key> best(*this, ub * k);
  const bool bf16 = policy.precision == TopkPrecision::kBF16;
  Scratch<__nv_bfloat16> Ub(*this, bf16 ? ub * d : 0), Vb(*this, bf16 && n_items > 0 ? ic * d : 0);

  for (int64_t u0 = 0; u0 < n_users; u0 += ub) {
    const int64_t nb = std::min(ub, n_users - u0);
    CUDA_CHECK(cudaMemsetAsync(best.get(), 0xFF, sizeof(Key) * size_t(nb) * k, stream_));
    if (bf16 && n_items > 0) {
      to_bf16(stream_, U + u0 * d, nb * d, Ub.get());
    }
    for (int64_t c0 = 0; c0 < n_items; c0 += ic) {
      const int64_t nc = std::min(ic, n_items - c0);
      // S[nb x nc] = U_blk . V_chunk^T (kernels/topk/cuda_tile.cuh); in bf16 from the
      // converted block and chunk.
      if (bf16) {
        to_bf16(stream_, V + c0 * d, nc * d, Vb.get());
        topk_score_gemm(cublas_, policy.precision, Vb.get(), Ub.get(), 0, 0, nc, nb, d, S.get());
      } else {
        topk_score_gemm(cublas_, policy.precision, V, U, c0, u0, nc, nb, d, S.get());
      }
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
