// The CPU backend's dense family (dense_forward, dense_backward): CpuBackend's
// definitions of these ops of the contract in include/towerrec/backend.h.
// Determinism and BLAS conventions: see kernels/cpu/cpu_backend.cpp.
#include "kernels/cpu/cpu_backend.h"

#include <algorithm>
#include <vector>

#include "kernels/cpu/cpu_util.h"
#include "towerrec/error.h"

namespace towerrec {

using cpu::for_column_ranges;
using cpu::worth_parallel;

// ---- tower layers -------------------------------------------------------------

const uint16_t* CpuBackend::bf16_copy(const float* x, int64_t count, std::vector<uint16_t>& buf) {
  buf.resize(static_cast<size_t>(count));
  gemm_.convert(x, count, buf.data());
  return buf.data();
}

void CpuBackend::dense_forward_impl(const float* X, int64_t n, int in, const float* W,
                                    const float* b, int out, Activation act, float* Y,
                                    MatmulPrecision precision) {
  if (n == 0) return;
  // Y[n x out] = act(X[n x in] . W[in x out] + b), bias and ReLU in the GEMM's epilogue.
  const CpuGemm::Epilogue ep{b, act == Activation::kReLU};
  if (precision == MatmulPrecision::kBF16) {
    gemm_.bf16(CpuGemm::Op::kForward, n, in, out, bf16_copy(X, n * in, bf16_a_),
               bf16_copy(W, int64_t{in} * out, bf16_w_), Y, ep);
  } else {
    gemm_.f32(CpuGemm::Op::kForward, n, in, out, X, W, Y, ep);
  }
}

void CpuBackend::dense_backward_impl(const float* X, int64_t n, int in, const float* W, int out,
                                     Activation act, const float* Y, float* dY, float* dW,
                                     float* db, float* dX, MatmulPrecision precision) {
  if (n == 0) {
    fill(dW, int64_t{in} * out, 0.0f);
    fill(db, out, 0.0f);
    return;
  }

  // One pass over dY: dZ = dY * relu'(Z) in place (Y > 0 exactly where Z > 0) and
  // the bias gradient db[c] = sum_r dZ[r, c]. Rows go in fixed blocks of
  // kBiasRows: each block sums its rows in float, in row order, into its own
  // partial row; the partials are then added in block order in double. The
  // result does not depend on the thread count.
  constexpr int64_t kBiasRows = 256;
  const bool relu = act == Activation::kReLU;
  const int64_t n_blocks = (n + kBiasRows - 1) / kBiasRows;
  bias_partial_.resize(static_cast<size_t>(n_blocks * out));
  float* partial = bias_partial_.data();
#pragma omp parallel for schedule(static) num_threads(threads_) if (worth_parallel(n * out))
  for (int64_t blk = 0; blk < n_blocks; ++blk) {
    float* acc = partial + blk * out;
    for (int c = 0; c < out; ++c) acc[c] = 0.0f;
    const int64_t r1 = std::min(n, (blk + 1) * kBiasRows);
    for (int64_t r = blk * kBiasRows; r < r1; ++r) {
      float* dz = dY + r * out;
      if (relu) {
        const float* y = Y + r * out;
#pragma omp simd
        for (int c = 0; c < out; ++c) {
          const float z = y[c] > 0.0f ? dz[c] : 0.0f;
          dz[c] = z;
          acc[c] += z;
        }
      } else {
#pragma omp simd
        for (int c = 0; c < out; ++c) acc[c] += dz[c];
      }
    }
  }
  for_column_ranges(threads_, out, n_blocks * out, [&](int c0, int c1) {
    for (int c = c0; c < c1; ++c) {
      double sum = 0.0;
      for (int64_t blk = 0; blk < n_blocks; ++blk) sum += partial[blk * out + c];
      db[c] = static_cast<float>(sum);
    }
  });

  // dW[in x out] = X^T[in x n] . dZ[n x out],  dX[n x in] = dZ[n x out] . W^T[out x in]
  if (precision == MatmulPrecision::kBF16) {
    const uint16_t* dz = bf16_copy(dY, n * out, bf16_b_);
    gemm_.bf16(CpuGemm::Op::kBackwardWeights, n, in, out, bf16_copy(X, n * in, bf16_a_), dz, dW);
    if (dX)
      gemm_.bf16(CpuGemm::Op::kBackwardData, n, in, out, dz,
                 bf16_copy(W, int64_t{in} * out, bf16_w_), dX);
  } else {
    gemm_.f32(CpuGemm::Op::kBackwardWeights, n, in, out, X, dY, dW);
    if (dX) gemm_.f32(CpuGemm::Op::kBackwardData, n, in, out, dY, W, dX);
  }
}

}  // namespace towerrec
