// The cosine contrastive loss on the CUDA backend (ccl_loss_impl; the
// contract is in include/towerrec/backend.h, the float64 reference in
// kernels/loss/ref.h): per block of item columns (all of them untiled) the
// score GEMM, ccl_block_kernel (one block per pair row: loss terms added to
// the row's double, the scores overwritten by dz), dV_blk = dz^T . P and
// dP (+)= dz . V_blk; then the per-user row sum and loss_finish_kernel.
#include <algorithm>
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

// c (null: every weight 1) and c_sum: the item weights and their sum (see
// ccl_weights_kernel); a pair's negatives share neg_weight / (c_sum - c_pos).
__global__ void __launch_bounds__(kSoftmaxThreads)
    ccl_block_kernel(float* __restrict__ logits, int w, int64_t j0,
                     const int32_t* __restrict__ item, const float* __restrict__ c,
                     const double* __restrict__ c_sum, double n_items, float margin,
                     double neg_weight, float scale, double* __restrict__ row_loss) {
  __shared__ double redd[kSoftmaxThreads / 32];
  const int64_t p = blockIdx.x;
  float* row = logits + p * w;
  const int64_t pos = item[p] - j0;
  const double others = c != nullptr ? *c_sum - static_cast<double>(c[item[p]]) : n_items - 1.0;
  const double row_w = others > 0.0 ? neg_weight / others : 0.0;
  const float g_neg = static_cast<float>(scale * row_w);
  double hinge = 0.0, positive = 0.0;
  for (int j = threadIdx.x; j < w; j += kSoftmaxThreads) {
    const float s = row[j];
    const float cj = c != nullptr ? c[j0 + j] : 1.0f;
    if (j == pos) {
      positive = 1.0 - static_cast<double>(s);
      row[j] = -scale;
    } else {
      hinge += static_cast<double>(cj) * static_cast<double>(math::ccl_hinge(s, margin));
      row[j] = math::ccl_negative_grad(s, margin, g_neg * cj);
    }
  }
  const double t = block_reduce(positive + row_w * hinge, redd, [](double a, double b) { return a + b; });
  if (threadIdx.x == 0) row_loss[p] += t;
}

// One block: c_j = exp(-log_q_j - max_k(-log_q_k)) and their sum (double,
// fixed order: per-thread strided sums, then the block reduction).
__global__ void __launch_bounds__(kSoftmaxThreads)
    ccl_weights_kernel(const float* __restrict__ log_q, int64_t n, float* __restrict__ c,
                       double* __restrict__ c_sum) {
  __shared__ float redf[kSoftmaxThreads / 32];
  __shared__ double redd[kSoftmaxThreads / 32];
  float shift = -INFINITY;
  for (int64_t j = threadIdx.x; j < n; j += kSoftmaxThreads) shift = fmaxf(shift, -log_q[j]);
  shift = block_reduce(shift, redf, [](float a, float b) { return fmaxf(a, b); });
  double s = 0.0;
  for (int64_t j = threadIdx.x; j < n; j += kSoftmaxThreads) {
    const float cj = math::ccl_item_weight(log_q[j], shift);
    c[j] = cj;
    s += static_cast<double>(cj);
  }
  s = block_reduce(s, redd, [](double a, double b) { return a + b; });
  if (threadIdx.x == 0) *c_sum = s;
}

}  // namespace

void CudaBackend::ccl_loss_impl(const float* U, const float* V, int d, const PairBatch& pb,
                                const float* log_q, float margin, float neg_weight, float scale,
                                float* dU, float* dV, float* logits, float* pair_rows,
                                float* loss_out, int64_t item_tile) {
  const int64_t P = pb.n_pairs, I = pb.n_items;
  const int64_t tile = item_tile > 0 && item_tile < I ? item_tile : I;
  if (P > 0) {
    // This backend's limit on one call's logits (one block of them).
    TOWERREC_CHECK(P * tile <= int64_t{1} << 40,
                   "ccl_loss: logits too large (" + std::to_string(P) + " x " +
                       std::to_string(tile) + ")");
  }
  activate();
  if (zero_without_pairs(pb, d, dU, dV, loss_out)) return;
  const int p = static_cast<int>(P);
  const float one = 1.0f, zero = 0.0f;
  gather_rows(U, d, pb.user, P, pair_rows, d, 0);
  const float* rows = pair_rows;
  float* d_rows = tile < I ? pair_rows + P * d : pair_rows;
  Scratch<float> c(*this, log_q != nullptr ? I : 0);
  Scratch<double> c_sum(*this, 1);
  if (log_q != nullptr) {
    ccl_weights_kernel<<<1, kSoftmaxThreads, 0, stream_>>>(log_q, I, c.get(), c_sum.get());
    CUDA_CHECK_LAUNCH(stream_, "ccl_weights_kernel");
  }
  Scratch<double> row_loss(*this, P);
  CUDA_CHECK(cudaMemsetAsync(row_loss.get(), 0, sizeof(double) * size_t(P), stream_));
  for (int64_t j0 = 0; j0 < I; j0 += tile) {
    const int bw = static_cast<int>(std::min<int64_t>(tile, I - j0));
    CUBLAS_CHECK(cublasSgemm(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, bw, p, d, &one, V + j0 * d, d,
                             rows, d, &zero, logits, bw));
    ccl_block_kernel<<<static_cast<unsigned>(P), kSoftmaxThreads, 0, stream_>>>(
        logits, bw, j0, pb.item, log_q != nullptr ? c.get() : nullptr, c_sum.get(),
        static_cast<double>(I), margin, static_cast<double>(neg_weight), scale, row_loss.get());
    CUDA_CHECK_LAUNCH(stream_, "ccl_block_kernel");
    CUBLAS_CHECK(cublasSgemm(cublas_, CUBLAS_OP_N, CUBLAS_OP_T, d, bw, p, &one, rows, d, logits, bw,
                             &zero, dV + j0 * d, d));
    const float beta = j0 == 0 ? 0.0f : 1.0f;
    CUBLAS_CHECK(cublasSgemm(cublas_, CUBLAS_OP_N, CUBLAS_OP_N, d, p, bw, &one, V + j0 * d, d,
                             logits, bw, &beta, d_rows, d));
  }
  loss_finish_kernel<<<1, kFinishThreads, 0, stream_>>>(row_loss.get(), p, scale, loss_out);
  CUDA_CHECK_LAUNCH(stream_, "loss_finish_kernel");
  launch_user_row_sum(d_rows, d, pb, dU, stream_);
}

}  // namespace towerrec::cuda
