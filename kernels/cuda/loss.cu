// Fused logistic loss, forward and backward, over the pairs of a PairBatch.
//
//   s_p = <U[user_p], V[item_p]>          U[n_users x d], V[n_items x d]
//   g_p = scale * logistic_grad(s_p, y_p) -> pair_grad[n_pairs]
//   *loss_out = scale * sum_p logistic_loss(s_p, y_p)
//   dU[u] = sum_{p in CSR row u} g_p V[item_p],  dV[i] = sum_{p in CSR row i} g_p U[user_p]
//
// Three launches, no host synchronization, deterministic:
//   1. pair_loss_kernel: one warp per pair (lanes split the dot product, a
//      shuffle reduction joins it); lane 0 writes g_p and adds the loss (in
//      double) to its warp's sum; each block writes one partial. The grid
//      depends only on n_pairs, so the partition and the sums are fixed.
//   2. loss_finish_kernel: one block adds the block partials in a fixed tree
//      order and writes *loss_out on the device.
//   3. row_grad_kernel: one warp per row of dU then dV; lanes stride the d
//      columns; each walks its row's CSR pair list in increasing pair order
//      (the same order as the CPU reference), so no atomics are needed.
// Scalar math (softplus, sigmoid) comes from kernels/math.h, shared with the CPU.
#include "kernels/cuda/cuda_backend.h"
#include "kernels/math.h"

namespace towerrec::cuda {

namespace {

constexpr int kLossWarps = 8;            // warps per block in pair_loss_kernel
constexpr int kMaxLossBlocks = 1024;     // also the size of the partials buffer
constexpr int kFinishThreads = 256;

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
      const float y = label[p];
      pair_grad[p] = scale * math::logistic_grad(s, y);
      sum += static_cast<double>(math::logistic_loss(s, y));
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

}  // namespace

void CudaBackend::logistic_loss(const float* U, const float* V, int d, const PairBatch& pb,
                                float scale, float* dU, float* dV, float* pair_grad,
                                float* loss_out) {
  TOWERREC_CHECK(d > 0 && pb.n_pairs >= 0 && pb.n_users >= 0 && pb.n_items >= 0,
                 "logistic_loss: bad shape d=" + std::to_string(d) +
                     " n_pairs=" + std::to_string(pb.n_pairs));
  TOWERREC_CHECK(loss_out != nullptr, "logistic_loss: null loss_out");
  if (pb.n_users > 0) TOWERREC_CHECK(dU && pb.user_offsets, "logistic_loss: null dU/user CSR");
  if (pb.n_items > 0) TOWERREC_CHECK(dV && pb.item_offsets, "logistic_loss: null dV/item CSR");
  if (pb.n_pairs > 0)
    TOWERREC_CHECK(U && V && pair_grad && pb.user && pb.item && pb.label && pb.user_pairs &&
                       pb.item_pairs,
                   "logistic_loss: null pointer");
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

  const int64_t rows = int64_t{pb.n_users} + pb.n_items;
  if (rows == 0) return;
  constexpr int kRowWarps = 8;
  const int64_t row_blocks = (rows + kRowWarps - 1) / kRowWarps;
  row_grad_kernel<<<static_cast<unsigned>(row_blocks > 65535 ? 65535 : row_blocks),
                    32 * kRowWarps, 0, stream_>>>(U, V, d, pb.user, pb.item, pair_grad,
                                                  pb.n_users, pb.user_offsets, pb.user_pairs,
                                                  pb.n_items, pb.item_offsets, pb.item_pairs,
                                                  dU, dV);
  CUDA_CHECK_LAUNCH(stream_, "row_grad_kernel");
}

}  // namespace towerrec::cuda
