// The score GEMM of topk's GEMM path (kernels/topk/cuda.cu), shared with the
// top-K benchmark (bench/topk_grid/main.cu) so both time and run the same call.
//
// Row-major S[nb x nc] = U[u0 .. u0+nb) . V[c0 .. c0+nc)^T, as cuBLAS sees it:
// column-major S^T[nc x nb] = V_chunk (column-major V_chunk^T[d x nc], hence
// OP_T) . U_blk^T[d x nb]; S has leading dimension nc. U and V are float for
// fp32 and tf32 and __nv_bfloat16 for bf16 (converted by to_bf16 beforehand).
//   fp32  cublasSgemm, plain FP32 (agrees with the CPU reference)
//   tf32  cublasGemmEx, CUBLAS_COMPUTE_32F_FAST_TF32: FP32 in and out, tensor-core
//         products of inputs rounded to TF32
//   bf16  cublasGemmEx on BF16 inputs, FP32 accumulation and output
#pragma once

#include <cublas_v2.h>
#include <cuda_bf16.h>

#include <cstdint>

#include "kernels/cuda/cuda_check.h"
#include "towerrec/options.h"

namespace towerrec::cuda {

inline void topk_score_gemm(cublasHandle_t h, TopkPrecision p, const void* V, const void* U,
                            int64_t c0, int64_t u0, int64_t nc, int64_t nb, int d, float* S) {
  const float one = 1.0f, zero = 0.0f;
  const int m = static_cast<int>(nc), n = static_cast<int>(nb);
  switch (p) {
    case TopkPrecision::kFP32:
      CUBLAS_CHECK(cublasSgemm(h, CUBLAS_OP_T, CUBLAS_OP_N, m, n, d, &one,
                               static_cast<const float*>(V) + c0 * d, d,
                               static_cast<const float*>(U) + u0 * d, d, &zero, S, m));
      break;
    case TopkPrecision::kTF32:
      CUBLAS_CHECK(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, m, n, d, &one,
                                static_cast<const float*>(V) + c0 * d, CUDA_R_32F, d,
                                static_cast<const float*>(U) + u0 * d, CUDA_R_32F, d, &zero, S,
                                CUDA_R_32F, m, CUBLAS_COMPUTE_32F_FAST_TF32, CUBLAS_GEMM_DEFAULT));
      break;
    case TopkPrecision::kBF16:
      CUBLAS_CHECK(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, m, n, d, &one,
                                static_cast<const __nv_bfloat16*>(V) + c0 * d, CUDA_R_16BF, d,
                                static_cast<const __nv_bfloat16*>(U) + u0 * d, CUDA_R_16BF, d,
                                &zero, S, CUDA_R_32F, m, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
      break;
  }
}

}  // namespace towerrec::cuda
