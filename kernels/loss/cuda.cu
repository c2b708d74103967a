// Losses over the pairs of a PairBatch, forward and backward fused. Every op
// here is deterministic: fixed grids, fixed reduction orders, no atomics.
//
// logistic_loss (version 1, three launches):
//   s_p = <U[user_p], V[item_p]>          U[n_users x d], V[n_items x d]
//   g_p = scale * logistic_grad(s_p, y_p) -> pair_grad[n_pairs]
//   *loss_out = scale * sum_p logistic_loss(s_p, y_p)
//   (both from math::logistic_loss_grad: one exp, bit-identical to the two)
//   dU[u] = sum_{p in CSR row u} g_p V[item_p],  dV[i] = sum_{p in CSR row i} g_p U[user_p]
//   1. pair_loss_kernel: one warp per pair (lanes split the dot product, a
//      shuffle reduction joins it); lane 0 writes g_p and adds the loss (in
//      double) to its warp's sum; each block writes one partial. The grid
//      depends only on n_pairs, so the partition and the sums are fixed.
//   2. loss_finish_kernel: one block adds the block partials in a fixed tree
//      order and writes *loss_out on the device.
//   3. row_grad_kernel: one warp per row of dU then dV; lanes stride the d
//      columns; each walks its row's CSR pair list in increasing pair order
//      (the same order as the CPU reference), so no atomics are needed.
//
// bpr_loss: pairs come in groups of `group` (positive first, then its
//   negatives, one user). bpr_group_kernel: one warp per group computes the
//   group's scores (warp dot products), then lane 0 walks the negatives in
//   order: l_gj = softplus(-(s_+ - s_j)), g_j = scale * sigmoid(-(s_+ - s_j)),
//   g_+ = -sum_j g_j; block partials of the loss in double. Then steps 2 and 3
//   of logistic_loss unchanged.
//
// softmax_loss (in-batch sampled softmax with logQ correction):
//   1. pair_rows[P x d] = U[user_p]                       (gather_rows)
//   2. logits[P x I] = pair_rows . V^T / T                (cuBLAS sgemm, alpha = 1/T)
//   3. softmax_row_kernel, one block per pair row: z = logit - log_q, the row
//      max and the sum of exp(z - max) by block reductions (the sum in double),
//      l_p = logsumexp - z_item (double, one partial per row), and the row is
//      overwritten in place with G_pj = scale * (softmax_pj - [j = item_p]) / T.
//   4. dV[I x d] = G^T . pair_rows                        (cuBLAS sgemm)
//   5. pair_rows := dPairRows[P x d] = G . V              (cuBLAS sgemm, after 4 reads it)
//   6. csr_row_sum_kernel: dU[u] = sum over the user's CSR pairs, in pair
//      order, of dPairRows[p]; loss_finish_kernel adds the row losses.
//   Tiled (0 < item_tile < I; bounded scratch): steps 2-5 per block of item_tile
//   columns, in two passes: the block GEMM and softmax_tile_stats_kernel (online
//   max and sum per row), then the block GEMM again, softmax_tile_grad_kernel,
//   and the block's dV rows and its share of dPairRows (in pair_rows' second half).
//
// ccl_loss: kernels/loss/cuda_ccl.cu (shared pieces in kernels/loss/cuda_shared.cuh).
// Scalar math (softplus, sigmoid) comes from kernels/math.h, shared with the CPU.
#include <algorithm>
#include <climits>
#include <cmath>
#include <string>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/loss/cuda_shared.cuh"
#include "kernels/math.h"

namespace towerrec::cuda {

using loss_detail::block_reduce;
using loss_detail::kFinishThreads;
using loss_detail::kSoftmaxThreads;
using loss_detail::launch_user_row_sum;
using loss_detail::loss_finish_kernel;

namespace {

constexpr int kLossWarps = 8;            // warps per block in pair_loss_kernel
constexpr int kMaxLossBlocks = 1024;     // also the size of the partials buffer

__global__ void __launch_bounds__(32 * kLossWarps)
    pair_loss_kernel(const float* __restrict__ U, const float* __restrict__ V, int d,
                     int64_t n_pairs, const int32_t* __restrict__ user,
                     const int32_t* __restrict__ item, const float* __restrict__ label,
                     float scale, float* __restrict__ pair_grad, double* __restrict__ partial) {
  __shared__ double warp_sum[kLossWarps];
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  double sum = 0.0;
  for (int64_t p = int64_t{blockIdx.x} * kLossWarps + warp; p < n_pairs;
       p += int64_t{gridDim.x} * kLossWarps) {
    const float* u = U + int64_t{user[p]} * d;
    const float* v = V + int64_t{item[p]} * d;
    float s = 0.0f;
    for (int c = lane; c < d; c += 32) s = fmaf(u[c], v[c], s);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (lane == 0) {
      float g;
      sum += static_cast<double>(math::logistic_loss_grad(s, label[p], &g));
      pair_grad[p] = scale * g;
    }
  }
  if (lane == 0) warp_sum[warp] = sum;
  __syncthreads();
  if (threadIdx.x == 0) {
    double t = 0.0;
#pragma unroll
    for (int w = 0; w < kLossWarps; ++w) t += warp_sum[w];
    partial[blockIdx.x] = t;
  }
}


// Warps [0, n_users) fill dU, warps [n_users, n_users + n_items) fill dV.
__global__ void row_grad_kernel(const float* __restrict__ U, const float* __restrict__ V, int d,
                                const int32_t* __restrict__ user,
                                const int32_t* __restrict__ item,
                                const float* __restrict__ pair_grad, int32_t n_users,
                                const int32_t* __restrict__ user_offsets,
                                const int32_t* __restrict__ user_pairs, int32_t n_items,
                                const int32_t* __restrict__ item_offsets,
                                const int32_t* __restrict__ item_pairs, float* __restrict__ dU,
                                float* __restrict__ dV) {
  const int64_t rows = int64_t{n_users} + n_items;
  const int warps_per_block = blockDim.x / 32;
  for (int64_t w = int64_t{blockIdx.x} * warps_per_block + threadIdx.x / 32; w < rows;
       w += int64_t{gridDim.x} * warps_per_block) {
    const bool is_user = w < n_users;
    const int32_t row = static_cast<int32_t>(is_user ? w : w - n_users);
    const int32_t* offsets = is_user ? user_offsets : item_offsets;
    const int32_t* pairs = is_user ? user_pairs : item_pairs;
    const int32_t* other = is_user ? item : user;   // the row index on the other side
    const float* src = is_user ? V : U;
    float* dst = (is_user ? dU : dV) + int64_t{row} * d;
    const int32_t q0 = offsets[row], q1 = offsets[row + 1];
    for (int c = threadIdx.x % 32; c < d; c += 32) {
      float g = 0.0f;
      for (int32_t q = q0; q < q1; ++q) {
        const int32_t p = pairs[q];
        g += pair_grad[p] * src[int64_t{other[p]} * d + c];
      }
      dst[c] = g;
    }
  }
}

// ---- BPR ---------------------------------------------------------------------------

__device__ __forceinline__ float warp_dot(const float* __restrict__ u, const float* __restrict__ v,
                                          int d) {
  float s = 0.0f;
  for (int c = threadIdx.x % 32; c < d; c += 32) s = fmaf(u[c], v[c], s);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  return s;  // every lane holds the sum
}

// One warp per group of `group` consecutive pairs; block partials as in
// pair_loss_kernel. pair_grad first receives the scores, then the gradients.
__global__ void __launch_bounds__(32 * kLossWarps)
    bpr_group_kernel(const float* __restrict__ U, const float* __restrict__ V, int d,
                     int64_t n_groups, int group, const int32_t* __restrict__ user,
                     const int32_t* __restrict__ item, float scale,
                     float* __restrict__ pair_grad, double* __restrict__ partial) {
  __shared__ double warp_sum[kLossWarps];
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  double sum = 0.0;
  for (int64_t gi = int64_t{blockIdx.x} * kLossWarps + warp; gi < n_groups;
       gi += int64_t{gridDim.x} * kLossWarps) {
    const int64_t p0 = gi * group;
    for (int j = 0; j < group; ++j) {
      const int64_t p = p0 + j;
      const float s = warp_dot(U + int64_t{user[p]} * d, V + int64_t{item[p]} * d, d);
      if (lane == 0) pair_grad[p] = s;
    }
    __syncwarp();
    if (lane == 0) {
      const float s_pos = pair_grad[p0];
      float w_pos = 0.0f;
      for (int j = 1; j < group; ++j) {
        const float s_neg = pair_grad[p0 + j];
        const float w = math::bpr_weight(s_pos, s_neg);
        sum += static_cast<double>(math::bpr_loss(s_pos, s_neg));
        w_pos += w;
        pair_grad[p0 + j] = scale * w;
      }
      const float g_pos = -scale * w_pos;
      pair_grad[p0] = g_pos;
    }
  }
  if (lane == 0) warp_sum[warp] = sum;
  __syncthreads();
  if (threadIdx.x == 0) {
    double t = 0.0;
#pragma unroll
    for (int w = 0; w < kLossWarps; ++w) t += warp_sum[w];
    partial[blockIdx.x] = t;
  }
}

// ---- sampled softmax ---------------------------------------------------------------


// grid = n_pairs (one block per row of logits[P x I]); block = 256.
// On entry the row holds <U[user_p], V[j]> / T; on exit G_pj (see the file
// header). The arithmetic follows the CPU reference: max in float, the sum of
// exp(z - max) in double, l_p = (max - z_pos) + log(sum) in double, and
// G = softmax_logit_grad(exp(z - max), float(1 / sum), j = item_p, scale / T).
__global__ void __launch_bounds__(kSoftmaxThreads)
    softmax_row_kernel(float* __restrict__ logits, int64_t n_items,
                       const float* __restrict__ log_q, const int32_t* __restrict__ item,
                       float scale_over_t, double* __restrict__ row_loss) {
  __shared__ float redf[kSoftmaxThreads / 32];
  __shared__ double redd[kSoftmaxThreads / 32];
  const int64_t p = blockIdx.x;
  float* row = logits + p * n_items;
  // Pass 1: apply the logQ correction, find the max.
  float mx = -INFINITY;
  for (int64_t j = threadIdx.x; j < n_items; j += kSoftmaxThreads) {
    float z = row[j];
    if (log_q != nullptr) {
      z -= log_q[j];
      row[j] = z;
    }
    mx = fmaxf(mx, z);
  }
  mx = block_reduce(mx, redf, [](float a, float b) { return fmaxf(a, b); });
  // Pass 2: e_j = exp(z_j - max) kept in the row, their sum in double.
  const int32_t pos = item[p];
  const float z_pos = row[pos];  // read by every thread before any overwrites it
  __syncthreads();
  double se = 0.0;
  for (int64_t j = threadIdx.x; j < n_items; j += kSoftmaxThreads) {
    const float e = expf(row[j] - mx);
    row[j] = e;
    se += static_cast<double>(e);
  }
  se = block_reduce(se, redd, [](double a, double b) { return a + b; });
  // Pass 3: the gradient of the logits (each thread rewrites its own elements).
  const float inv_s = static_cast<float>(1.0 / se);
  for (int64_t j = threadIdx.x; j < n_items; j += kSoftmaxThreads)
    row[j] = math::softmax_logit_grad(row[j], inv_s, j == pos, scale_over_t);
  if (threadIdx.x == 0)
    row_loss[p] = (static_cast<double>(mx) - static_cast<double>(z_pos)) + log(se);
}

// Tiled softmax, pass 1 over one block of w item columns starting at j0
// (grid = n_pairs, block = 256): z = logit - log_q, then the row's running max
// m and sum s of exp(z - m) (double, rescaled by exp(m_old - m)), and z at the
// positive when it falls in the block. Same arithmetic as the CPU's tiled pass.
__global__ void __launch_bounds__(kSoftmaxThreads)
    softmax_tile_stats_kernel(const float* __restrict__ logits, int w, int64_t j0,
                              const float* __restrict__ log_q, const int32_t* __restrict__ item,
                              float* __restrict__ row_max, double* __restrict__ row_sum,
                              float* __restrict__ z_pos) {
  __shared__ float redf[kSoftmaxThreads / 32];
  __shared__ double redd[kSoftmaxThreads / 32];
  const int64_t p = blockIdx.x;
  const float* row = logits + p * w;
  const float* lq = log_q != nullptr ? log_q + j0 : nullptr;
  float mx = row_max[p];
  for (int j = threadIdx.x; j < w; j += kSoftmaxThreads)
    mx = fmaxf(mx, lq != nullptr ? row[j] - lq[j] : row[j]);
  mx = block_reduce(mx, redf, [](float a, float b) { return fmaxf(a, b); });
  double se = 0.0;
  for (int j = threadIdx.x; j < w; j += kSoftmaxThreads)
    se += static_cast<double>(expf((lq != nullptr ? row[j] - lq[j] : row[j]) - mx));
  se = block_reduce(se, redd, [](double a, double b) { return a + b; });
  if (threadIdx.x == 0) {
    const float m_old = row_max[p];
    row_sum[p] = row_sum[p] * exp(static_cast<double>(m_old) - static_cast<double>(mx)) + se;
    row_max[p] = mx;
    const int64_t pos = item[p] - j0;
    if (pos >= 0 && pos < w) z_pos[p] = lq != nullptr ? row[pos] - lq[pos] : row[pos];
  }
}

// Tiled softmax, pass 2: the block's logits become dLoss/dz with the row's
// final max and sum. grid = n_pairs, block = 256.
__global__ void __launch_bounds__(kSoftmaxThreads)
    softmax_tile_grad_kernel(float* __restrict__ logits, int w, int64_t j0,
                             const float* __restrict__ log_q, const int32_t* __restrict__ item,
                             const float* __restrict__ row_max, const double* __restrict__ row_sum,
                             float scale_over_t) {
  const int64_t p = blockIdx.x;
  float* row = logits + p * w;
  const float m = row_max[p];
  const float inv_s = static_cast<float>(1.0 / row_sum[p]);
  const int64_t pos = item[p] - j0;
  for (int j = threadIdx.x; j < w; j += kSoftmaxThreads) {
    const float z = log_q != nullptr ? row[j] - log_q[j0 + j] : row[j];
    row[j] = math::softmax_logit_grad(expf(z - m), inv_s, j == pos, scale_over_t);
  }
}

// Cosine contrastive loss over one block of w item columns starting at j0
// (grid = n_pairs, block = 256): scores become dz (-scale at the positive,
// g_neg above the margin, else 0); row_loss[p] += (1 - s_pos) + w_neg * sum of
// hinges (double).

// row_loss[p] = (m_p - z_pos_p) + log s_p; row_max starts at -inf, row_sum at 0.
__global__ void softmax_tile_init_kernel(int64_t n, float* __restrict__ row_max,
                                         double* __restrict__ row_sum) {
  for (int64_t p = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; p < n;
       p += int64_t{gridDim.x} * blockDim.x) {
    row_max[p] = -INFINITY;
    row_sum[p] = 0.0;
  }
}
__global__ void softmax_tile_loss_kernel(int64_t n, const float* __restrict__ row_max,
                                         const double* __restrict__ row_sum,
                                         const float* __restrict__ z_pos,
                                         double* __restrict__ row_loss) {
  for (int64_t p = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; p < n;
       p += int64_t{gridDim.x} * blockDim.x)
    row_loss[p] = (static_cast<double>(row_max[p]) - static_cast<double>(z_pos[p])) + log(row_sum[p]);
}

unsigned flat_grid(int64_t n, int threads) {
  const int64_t b = (n + threads - 1) / threads;
  return static_cast<unsigned>(b < 1 ? 1 : (b > 65535 ? 65535 : b));
}

// One warp per row u of dst[n_rows x d]: dst[u] = sum over the CSR pairs of u,
// in increasing pair order, of src[p] (src[n_pairs x d]); 0 for a row without pairs.
__global__ void csr_row_sum_kernel(const float* __restrict__ src, int d, int32_t n_rows,
                                   const int32_t* __restrict__ offsets,
                                   const int32_t* __restrict__ pairs, float* __restrict__ dst) {
  const int warps_per_block = blockDim.x / 32;
  for (int64_t r = int64_t{blockIdx.x} * warps_per_block + threadIdx.x / 32; r < n_rows;
       r += int64_t{gridDim.x} * warps_per_block) {
    const int32_t q0 = offsets[r], q1 = offsets[r + 1];
    for (int c = threadIdx.x % 32; c < d; c += 32) {
      float g = 0.0f;
      for (int32_t q = q0; q < q1; ++q) g += src[int64_t{pairs[q]} * d + c];
      dst[r * d + c] = g;
    }
  }
}

unsigned warp_rows_grid(int64_t rows, int warps_per_block) {
  const int64_t b = (rows + warps_per_block - 1) / warps_per_block;
  return static_cast<unsigned>(b < 1 ? 1 : (b > 65535 ? 65535 : b));
}


// Launches row_grad_kernel over the n_users + n_items rows of dU and dV.
void launch_row_grad(const float* U, const float* V, int d, const PairBatch& pb,
                     const float* pair_grad, float* dU, float* dV, cudaStream_t stream) {
  const int64_t rows = int64_t{pb.n_users} + pb.n_items;
  if (rows == 0) return;
  constexpr int kRowWarps = 8;
  row_grad_kernel<<<warp_rows_grid(rows, kRowWarps), 32 * kRowWarps, 0, stream>>>(
      U, V, d, pb.user, pb.item, pair_grad, pb.n_users, pb.user_offsets, pb.user_pairs,
      pb.n_items, pb.item_offsets, pb.item_pairs, dU, dV);
  CUDA_CHECK_LAUNCH(stream, "row_grad_kernel");
}

int loss_blocks(int64_t n_warps) {
  const int64_t b = (n_warps + kLossWarps - 1) / kLossWarps;
  return static_cast<int>(b < 1 ? 1 : (b > kMaxLossBlocks ? kMaxLossBlocks : b));
}

}  // namespace

namespace loss_detail {

// One block: *loss_out = scale * sum(partial[0 .. n)).
__global__ void __launch_bounds__(kFinishThreads)
    loss_finish_kernel(const double* __restrict__ partial, int n, float scale,
                       float* __restrict__ loss_out) {
  __shared__ double s[kFinishThreads];
  double t = 0.0;
  for (int i = threadIdx.x; i < n; i += kFinishThreads) t += partial[i];
  s[threadIdx.x] = t;
  __syncthreads();
  for (int w = kFinishThreads / 2; w > 0; w >>= 1) {
    if (threadIdx.x < w) s[threadIdx.x] += s[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) *loss_out = static_cast<float>(static_cast<double>(scale) * s[0]);
}

// dU[u] = sum over the user's CSR pairs, in pair order, of rows[p].
void launch_user_row_sum(const float* rows, int d, const PairBatch& pb, float* dU,
                         cudaStream_t stream) {
  if (pb.n_users == 0) return;
  constexpr int kRowWarps = 8;
  csr_row_sum_kernel<<<warp_rows_grid(pb.n_users, kRowWarps), 32 * kRowWarps, 0, stream>>>(
      rows, d, pb.n_users, pb.user_offsets, pb.user_pairs, dU);
  CUDA_CHECK_LAUNCH(stream, "csr_row_sum_kernel");
}

}  // namespace loss_detail

void CudaBackend::logistic_loss_impl(const float* U, const float* V, int d, const PairBatch& pb,
                                     float scale, float* dU, float* dV, float* pair_grad,
                                     float* loss_out) {
  activate();

  const int64_t blocks64 = (pb.n_pairs + kLossWarps - 1) / kLossWarps;
  const int blocks = static_cast<int>(
      blocks64 < 1 ? 1 : (blocks64 > kMaxLossBlocks ? kMaxLossBlocks : blocks64));
  Scratch<double> partial(*this, blocks);
  pair_loss_kernel<<<blocks, 32 * kLossWarps, 0, stream_>>>(
      U, V, d, pb.n_pairs, pb.user, pb.item, pb.label, scale, pair_grad, partial.get());
  CUDA_CHECK_LAUNCH(stream_, "pair_loss_kernel");
  loss_finish_kernel<<<1, kFinishThreads, 0, stream_>>>(partial.get(), blocks, scale, loss_out);
  CUDA_CHECK_LAUNCH(stream_, "loss_finish_kernel");

  launch_row_grad(U, V, d, pb, pair_grad, dU, dV, stream_);
}


void CudaBackend::bpr_loss_impl(const float* U, const float* V, int d, const PairBatch& pb,
                                int group, float scale, float* dU, float* dV, float* pair_grad,
                                float* loss_out) {
  activate();

  const int64_t n_groups = pb.n_pairs / group;
  const int blocks = loss_blocks(n_groups);
  Scratch<double> partial(*this, blocks);
  bpr_group_kernel<<<blocks, 32 * kLossWarps, 0, stream_>>>(
      U, V, d, n_groups, group, pb.user, pb.item, scale, pair_grad, partial.get());
  CUDA_CHECK_LAUNCH(stream_, "bpr_group_kernel");
  loss_finish_kernel<<<1, kFinishThreads, 0, stream_>>>(partial.get(), blocks, scale, loss_out);
  CUDA_CHECK_LAUNCH(stream_, "loss_finish_kernel");
  launch_row_grad(U, V, d, pb, pair_grad, dU, dV, stream_);
}

// A batch without pairs: zero loss and gradients (queued); true when it had none.
bool CudaBackend::zero_without_pairs(const PairBatch& pb, int d, float* dU, float* dV,
                                     float* loss_out) {
  if (pb.n_pairs != 0) return false;
  if (pb.n_users > 0)
    CUDA_CHECK(cudaMemsetAsync(dU, 0, sizeof(float) * size_t(pb.n_users) * d, stream_));
  if (pb.n_items > 0)
    CUDA_CHECK(cudaMemsetAsync(dV, 0, sizeof(float) * size_t(pb.n_items) * d, stream_));
  fill(loss_out, 1, 0.0f);
  return true;
}

void CudaBackend::softmax_loss_impl(const float* U, const float* V, int d, const PairBatch& pb,
                                    const float* log_q, float temperature, float scale, float* dU,
                                    float* dV, float* logits, float* pair_rows, float* loss_out,
                                    int64_t item_tile) {
  const int64_t P = pb.n_pairs, I = pb.n_items;
  if (P > 0) {
    // This backend's limit on one call's logits (one block of them when tiled).
    const int64_t cols = item_tile > 0 && item_tile < I ? item_tile : I;
    TOWERREC_CHECK(P * cols <= int64_t{1} << 40,
                   "softmax_loss: logits too large (" + std::to_string(P) + " x " +
                       std::to_string(I) + ")");
  }
  activate();

  if (zero_without_pairs(pb, d, dU, dV, loss_out)) return;

  const int p = static_cast<int>(P), ni = static_cast<int>(I);
  const float inv_temp = 1.0f / temperature, one = 1.0f, zero = 0.0f;  // as on the CPU
  // 1. pair_rows[P x d] = U[user_p].
  gather_rows(U, d, pb.user, P, pair_rows, d, 0);
  if (item_tile > 0 && item_tile < I) {
    softmax_tiled(V, d, pb, log_q, temperature, scale, dU, dV, logits, pair_rows, loss_out,
                  item_tile);
    return;
  }
  // 2. logits[P x I] = pair_rows . V^T / T  <=>  column-major logits^T[I x P] =
  //    (V, column-major [d x I], OP_T) . (pair_rows, column-major [d x P]).
  CUBLAS_CHECK(cublasSgemm(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, ni, p, d, &inv_temp, V, d,
                           pair_rows, d, &zero, logits, ni));
  // 3. Row softmax, loss per row, G in place.
  Scratch<double> row_loss(*this, P);
  softmax_row_kernel<<<static_cast<unsigned>(P), kSoftmaxThreads, 0, stream_>>>(
      logits, I, log_q, pb.item, scale / temperature, row_loss.get());
  CUDA_CHECK_LAUNCH(stream_, "softmax_row_kernel");
  loss_finish_kernel<<<1, kFinishThreads, 0, stream_>>>(row_loss.get(), p, scale, loss_out);
  CUDA_CHECK_LAUNCH(stream_, "loss_finish_kernel");
  // 4. dV[I x d] = G^T . pair_rows  <=>  column-major dV^T[d x I] =
  //    (pair_rows, column-major [d x P]) . (G, column-major [I x P], OP_T).
  CUBLAS_CHECK(cublasSgemm(cublas_, CUBLAS_OP_N, CUBLAS_OP_T, d, ni, p, &one, pair_rows, d,
                           logits, ni, &zero, dV, d));
  // 5. pair_rows := G . V  <=>  column-major [d x P] = (V, column-major [d x I]) .
  //    (G, column-major [I x P]). Queued after step 4, which reads pair_rows.
  CUBLAS_CHECK(cublasSgemm(cublas_, CUBLAS_OP_N, CUBLAS_OP_N, d, p, ni, &one, V, d, logits, ni,
                           &zero, pair_rows, d));
  // 6. dU[u] = sum of the user's pair rows, in pair order.
  launch_user_row_sum(pair_rows, d, pb, dU, stream_);
}

// softmax_loss over item blocks of `tile` columns, pair_rows[0 .. P x d)
// holding the gathered user rows: pass 1 (GEMM + softmax_tile_stats_kernel per
// block) finds each row's max and sum, pass 2 recomputes each block's logits,
// turns them into dLoss/dz, writes dV's block rows and accumulates
// dPairRows = dz . V_blk into pair_rows[P x d .. 2 P x d); then dU as untiled.
void CudaBackend::softmax_tiled(const float* V, int d, const PairBatch& pb, const float* log_q,
                                float temperature, float scale, float* dU, float* dV,
                                float* logits, float* pair_rows, float* loss_out, int64_t tile) {
  const int64_t P = pb.n_pairs, I = pb.n_items;
  const int p = static_cast<int>(P);
  const float inv_temp = 1.0f / temperature, one = 1.0f, zero = 0.0f;
  const float* rows = pair_rows;
  float* d_rows = pair_rows + P * d;
  Scratch<float> row_max(*this, P), z_pos(*this, P);
  Scratch<double> row_sum(*this, P), row_loss(*this, P);
  softmax_tile_init_kernel<<<flat_grid(P, 256), 256, 0, stream_>>>(P, row_max.get(), row_sum.get());
  CUDA_CHECK_LAUNCH(stream_, "softmax_tile_init_kernel");
  auto block_logits = [&](int64_t j0, int w) {
    // logits[P x w] = rows . V_blk^T / T (column-major logits^T[w x P]).
    CUBLAS_CHECK(cublasSgemm(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, w, p, d, &inv_temp, V + j0 * d, d,
                             rows, d, &zero, logits, w));
  };
  for (int64_t j0 = 0; j0 < I; j0 += tile) {
    const int w = static_cast<int>(std::min<int64_t>(tile, I - j0));
    block_logits(j0, w);
    softmax_tile_stats_kernel<<<static_cast<unsigned>(P), kSoftmaxThreads, 0, stream_>>>(
        logits, w, j0, log_q, pb.item, row_max.get(), row_sum.get(), z_pos.get());
    CUDA_CHECK_LAUNCH(stream_, "softmax_tile_stats_kernel");
  }
  softmax_tile_loss_kernel<<<flat_grid(P, 256), 256, 0, stream_>>>(P, row_max.get(), row_sum.get(),
                                                                   z_pos.get(), row_loss.get());
  CUDA_CHECK_LAUNCH(stream_, "softmax_tile_loss_kernel");
  loss_finish_kernel<<<1, kFinishThreads, 0, stream_>>>(row_loss.get(), p, scale, loss_out);
  CUDA_CHECK_LAUNCH(stream_, "loss_finish_kernel");
  for (int64_t j0 = 0; j0 < I; j0 += tile) {
    const int w = static_cast<int>(std::min<int64_t>(tile, I - j0));
    block_logits(j0, w);
    softmax_tile_grad_kernel<<<static_cast<unsigned>(P), kSoftmaxThreads, 0, stream_>>>(
        logits, w, j0, log_q, pb.item, row_max.get(), row_sum.get(), scale / temperature);
    CUDA_CHECK_LAUNCH(stream_, "softmax_tile_grad_kernel");
    // dV_blk[w x d] = G^T . rows  (column-major dV_blk^T[d x w]).
    CUBLAS_CHECK(cublasSgemm(cublas_, CUBLAS_OP_N, CUBLAS_OP_T, d, w, p, &one, rows, d, logits, w,
                             &zero, dV + j0 * d, d));
    // d_rows (+)= G . V_blk  (column-major [d x P]).
    const float beta = j0 == 0 ? 0.0f : 1.0f;
    CUBLAS_CHECK(cublasSgemm(cublas_, CUBLAS_OP_N, CUBLAS_OP_N, d, p, w, &one, V + j0 * d, d,
                             logits, w, &beta, d_rows, d));
  }
  launch_user_row_sum(d_rows, d, pb, dU, stream_);
}


}  // namespace towerrec::cuda
