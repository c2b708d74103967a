// Dense (fully connected) layers.
//
// dense_forward:  Y[n x out] = act(X[n x in] . W[in x out] + b[out])
//   Two versions, chosen by shape (kFusedMaxOut):
//   1. out <= 256 (the towers' usual widths): dense_fused_kernel, a tiled
//      shared-memory SGEMM (64x64 output tile per block, 16-deep k slices,
//      4x4 outputs per thread) whose epilogue adds the bias and applies ReLU
//      before the single store of Y.
//   2. wider layers: cuBLAS sgemm into Y, then bias_act_kernel in place
//      (one extra read+write of Y; cuBLAS wins on large GEMMs).
//   The threshold is a first guess, to be refined by measurement (the
//   cuBLASLt RELU_BIAS epilogue is the baseline a fused kernel must beat).
//
// dense_backward: on entry dY = dLoss/dY, on exit dY = dZ = dY * act'(Z).
//   1. relu_mask_bias_grad_kernel: applies the ReLU mask (Y > 0) in place and
//      sums dZ over rows into per-row-chunk partials; bias_grad_sum_kernel adds
//      the partials in a fixed order (deterministic, no atomics).
//   2. dW = X^T . dZ and dX = dZ . W^T by cuBLAS sgemm.
//
// MatmulPrecision::kBF16: every product goes through cuBLAS (the fused kernel
// is float32) as cublasGemmEx with CUBLAS_COMPUTE_32F_FAST_16BF: float32
// operands and results, operands converted to bfloat16 by cuBLAS, tensor-core
// products summed in float32.
//
// Row-major data through column-major cuBLAS, explained once for this backend:
//   a row-major matrix A[r x c] occupies memory exactly as the column-major
//   matrix A^T[c x r] with leading dimension c. So a row-major product
//   C = A . B is computed as the column-major product C^T = B^T . A^T: pass B
//   where cuBLAS expects its first operand and A as the second, swap m and n,
//   and use the row lengths as leading dimensions. No data is transposed.
#include <climits>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/math.h"

namespace towerrec::cuda {

namespace {

constexpr int kFusedMaxOut = 256;

// ---- fused forward --------------------------------------------------------------
constexpr int kBM = 64;   // rows of Y per block
constexpr int kBN = 64;   // columns of Y per block
constexpr int kBK = 16;   // depth of one shared-memory slice
constexpr int kTM = 4;    // rows per thread
constexpr int kTN = 4;    // columns per thread
constexpr int kFusedThreads = (kBM / kTM) * (kBN / kTN);  // 256

// grid = (ceil(n / 64), ceil(out / 64)); block = 256 threads.
// Thread (ty, tx) of the 16x16 thread grid owns rows ty + 16 i and columns
// tx + 16 j of the tile (strided, so that a warp's shared-memory reads are
// broadcasts or consecutive words and its stores of Y are coalesced).
__global__ void __launch_bounds__(kFusedThreads)
    dense_fused_kernel(const float* __restrict__ X, const float* __restrict__ W,
                       const float* __restrict__ b, float* __restrict__ Y, int64_t n, int in,
                       int out, bool relu) {
  __shared__ float Xs[kBK][kBM + 1];  // X tile, transposed; +1 breaks store bank conflicts
  __shared__ float Ws[kBK][kBN];

  const int tid = threadIdx.x;
  const int tx = tid % (kBN / kTN);
  const int ty = tid / (kBN / kTN);
  const int64_t row0 = int64_t{blockIdx.x} * kBM;
  const int col0 = blockIdx.y * kBN;

  float acc[kTM][kTN];
#pragma unroll
  for (int i = 0; i < kTM; ++i)
#pragma unroll
    for (int j = 0; j < kTN; ++j) acc[i][j] = 0.0f;

  for (int k0 = 0; k0 < in; k0 += kBK) {
    // X tile: 64 rows x 16 columns, 4 elements per thread, zero outside.
#pragma unroll
    for (int l = 0; l < (kBM * kBK) / kFusedThreads; ++l) {
      const int e = tid + l * kFusedThreads;
      const int r = e / kBK, c = e % kBK;
      const int64_t gr = row0 + r;
      const int gc = k0 + c;
      Xs[c][r] = (gr < n && gc < in) ? X[gr * in + gc] : 0.0f;
    }
    // W tile: 16 rows x 64 columns.
#pragma unroll
    for (int l = 0; l < (kBK * kBN) / kFusedThreads; ++l) {
      const int e = tid + l * kFusedThreads;
      const int r = e / kBN, c = e % kBN;
      const int gr = k0 + r, gc = col0 + c;
      Ws[r][c] = (gr < in && gc < out) ? W[int64_t{gr} * out + gc] : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kBK; ++kk) {
      float xr[kTM], wr[kTN];
#pragma unroll
      for (int i = 0; i < kTM; ++i) xr[i] = Xs[kk][ty + i * (kBM / kTM)];
#pragma unroll
      for (int j = 0; j < kTN; ++j) wr[j] = Ws[kk][tx + j * (kBN / kTN)];
#pragma unroll
      for (int i = 0; i < kTM; ++i)
#pragma unroll
        for (int j = 0; j < kTN; ++j) acc[i][j] = fmaf(xr[i], wr[j], acc[i][j]);
    }
    __syncthreads();
  }

  // Epilogue: bias, activation, one store.
#pragma unroll
  for (int i = 0; i < kTM; ++i) {
    const int64_t r = row0 + ty + i * (kBM / kTM);
    if (r >= n) continue;
#pragma unroll
    for (int j = 0; j < kTN; ++j) {
      const int c = col0 + tx + j * (kBN / kTN);
      if (c >= out) continue;
      float v = acc[i][j] + (b != nullptr ? b[c] : 0.0f);
      if (relu) v = math::relu(v);
      Y[r * out + c] = v;
    }
  }
}

// Y[n x out] += b (broadcast over rows), then the activation. Grid-stride.
__global__ void bias_act_kernel(float* __restrict__ Y, const float* __restrict__ b, int64_t n,
                                int out, bool relu) {
  const int64_t total = n * out;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total;
       i += int64_t{gridDim.x} * blockDim.x) {
    float v = Y[i] + (b != nullptr ? b[i % out] : 0.0f);
    if (relu) v = math::relu(v);
    Y[i] = v;
  }
}

// ---- backward: ReLU mask + bias gradient ------------------------------------------
constexpr int kColTile = 32;  // columns per block (one warp wide)
constexpr int kRowLanes = 8;  // threads per column
constexpr int kMaxRowChunks = 1024;

// grid = (ceil(out / 32), n_chunks); block = (32, 8).
// Block (bx, by) handles columns [32 bx, 32 bx + 32) of rows
// [by * chunk_rows, (by + 1) * chunk_rows): masks dY in place when relu, and
// writes the column sums of dZ over those rows to partial[by * out + col]
// (to db directly when there is one chunk). Sums run in a fixed order.
__global__ void relu_mask_bias_grad_kernel(float* __restrict__ dY, const float* __restrict__ Y,
                                           int64_t n, int out, int64_t chunk_rows, bool relu,
                                           float* __restrict__ partial) {
  __shared__ float sums[kRowLanes][kColTile + 1];
  const int col = blockIdx.x * kColTile + threadIdx.x;
  const int64_t r0 = int64_t{blockIdx.y} * chunk_rows;
  const int64_t r1 = r0 + chunk_rows < n ? r0 + chunk_rows : n;
  float s = 0.0f;
  if (col < out) {
    for (int64_t r = r0 + threadIdx.y; r < r1; r += kRowLanes) {
      const int64_t i = r * out + col;
      float g = dY[i];
      if (relu) {
        if (!(Y[i] > 0.0f)) g = 0.0f;
        dY[i] = g;
      }
      s += g;
    }
  }
  sums[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && col < out) {
    float t = 0.0f;
#pragma unroll
    for (int l = 0; l < kRowLanes; ++l) t += sums[l][threadIdx.x];
    partial[int64_t{blockIdx.y} * out + col] = t;
  }
}

// db[c] = sum over chunks of partial[chunk * out + c], in chunk order.
__global__ void bias_grad_sum_kernel(const float* __restrict__ partial, int n_chunks, int out,
                                     float* __restrict__ db) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= out) return;
  float t = 0.0f;
  for (int k = 0; k < n_chunks; ++k) t += partial[int64_t{k} * out + c];
  db[c] = t;
}


}  // namespace

// Column-major C[m x n] = op(A) . op(B) (see the header comment for the
// row-major mapping) in `precision`.
void CudaBackend::tower_gemm(MatmulPrecision precision, cublasOperation_t op_a,
                             cublasOperation_t op_b, int m, int n, int k, const float* A, int lda,
                             const float* B, int ldb, float* C, int ldc) {
  const float one = 1.0f, zero = 0.0f;
  if (precision == MatmulPrecision::kBF16) {
    CUBLAS_CHECK(cublasGemmEx(cublas_, op_a, op_b, m, n, k, &one, A, CUDA_R_32F, lda, B,
                              CUDA_R_32F, ldb, &zero, C, CUDA_R_32F, ldc,
                              CUBLAS_COMPUTE_32F_FAST_16BF, CUBLAS_GEMM_DEFAULT));
  } else {
    CUBLAS_CHECK(cublasSgemm(cublas_, op_a, op_b, m, n, k, &one, A, lda, B, ldb, &zero, C, ldc));
  }
}

void CudaBackend::dense_forward_impl(const float* X, int64_t n, int in, const float* W,
                                     const float* b, int out, Activation act, float* Y,
                                     MatmulPrecision precision) {
  if (n == 0) return;
  activate();
  const bool relu = act == Activation::kReLU;
  if ((out <= kFusedMaxOut && precision == MatmulPrecision::kFP32) || in == 0) {
    const dim3 grid(static_cast<unsigned>((n + kBM - 1) / kBM),
                    static_cast<unsigned>((out + kBN - 1) / kBN));
    dense_fused_kernel<<<grid, kFusedThreads, 0, stream_>>>(X, W, b, Y, n, in, out, relu);
    CUDA_CHECK_LAUNCH(stream_, "dense_fused_kernel");
    return;
  }
  // Row-major Y = X . W  <=>  column-major Y^T[out x n] = W^T[out x in] . X^T[in x n].
  tower_gemm(precision, CUBLAS_OP_N, CUBLAS_OP_N, out, static_cast<int>(n), in, W, out, X, in,
             Y, out);
  if (b != nullptr || relu) {
    bias_act_kernel<<<grid_for(n * out), kThreads, 0, stream_>>>(Y, b, n, out, relu);
    CUDA_CHECK_LAUNCH(stream_, "bias_act_kernel");
  }
}

void CudaBackend::dense_backward_impl(const float* X, int64_t n, int in, const float* W, int out,
                                      Activation act, const float* Y, float* dY, float* dW,
                                      float* db, float* dX, MatmulPrecision precision) {
  activate();
  if (n == 0) {
    if (in > 0) CUDA_CHECK(cudaMemsetAsync(dW, 0, sizeof(float) * size_t(in) * out, stream_));
    CUDA_CHECK(cudaMemsetAsync(db, 0, sizeof(float) * size_t(out), stream_));
    return;
  }
  const bool relu = act == Activation::kReLU;

  // 1. Mask dY in place and reduce the bias gradient.
  const int64_t row_chunk_min = 256;
  int64_t n_chunks = (n + row_chunk_min - 1) / row_chunk_min;
  if (n_chunks > kMaxRowChunks) n_chunks = kMaxRowChunks;
  const int64_t chunk_rows = (n + n_chunks - 1) / n_chunks;
  n_chunks = (n + chunk_rows - 1) / chunk_rows;
  Scratch<float> partial(*this, n_chunks > 1 ? n_chunks * out : 0);
  const dim3 grid(static_cast<unsigned>((out + kColTile - 1) / kColTile),
                  static_cast<unsigned>(n_chunks));
  relu_mask_bias_grad_kernel<<<grid, dim3(kColTile, kRowLanes), 0, stream_>>>(
      dY, Y, n, out, chunk_rows, relu, n_chunks > 1 ? partial.get() : db);
  CUDA_CHECK_LAUNCH(stream_, "relu_mask_bias_grad_kernel");
  if (n_chunks > 1) {
    bias_grad_sum_kernel<<<(out + kThreads - 1) / kThreads, kThreads, 0, stream_>>>(
        partial.get(), static_cast<int>(n_chunks), out, db);
    CUDA_CHECK_LAUNCH(stream_, "bias_grad_sum_kernel");
  }
  if (in == 0) return;

  const int ni = static_cast<int>(n);
  // 2. dW[in x out] = X^T . dZ  <=>  column-major dW^T[out x in] = dZ^T[out x n] . X[n x in],
  //    where X (row-major [n x in]) is column-major X^T[in x n], hence OP_T.
  tower_gemm(precision, CUBLAS_OP_N, CUBLAS_OP_T, out, in, ni, dY, out, X, in, dW, out);
  // 3. dX[n x in] = dZ . W^T  <=>  column-major dX^T[in x n] = W[in x out] . dZ^T[out x n],
  //    where W (row-major [in x out]) is column-major W^T[out x in], hence OP_T.
  if (dX != nullptr)
    tower_gemm(precision, CUBLAS_OP_T, CUBLAS_OP_N, in, ni, out, W, out, dY, out, dX, in);
}

}  // namespace towerrec::cuda
