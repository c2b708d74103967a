// GPU ceilings for towerrec_ceilings (built only with the CUDA backend):
// copy bandwidth (pinned H2D/D2H, D2D) and cuBLAS GEMM rates at FP32, TF32 and
// BF16 on n x n x n problems. Timed with CUDA events, best of several runs
// after a warm-up.
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <string>

#include "bench/ceilings.h"
#include "kernels/cuda/cuda_backend.h"

namespace towerrec::bench {
namespace {

struct Fail {
  std::string what;
};

void ck(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw Fail{std::string(what) + ": " + cudaGetErrorString(e)};
}
void ck(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS) throw Fail{std::string(what) + ": cuBLAS status " + std::to_string(int(s))};
}

// Best milliseconds of fn() over reps runs (each `inner` calls), after one warm-up.
template <typename F>
float best_ms(int reps, int inner, F fn) {
  cudaEvent_t a, b;
  ck(cudaEventCreate(&a), "event");
  ck(cudaEventCreate(&b), "event");
  fn();
  ck(cudaDeviceSynchronize(), "warm-up");
  float best = 1e30f;
  for (int r = 0; r < reps; ++r) {
    ck(cudaEventRecord(a), "record");
    for (int i = 0; i < inner; ++i) fn();
    ck(cudaEventRecord(b), "record");
    ck(cudaEventSynchronize(b), "sync");
    float ms = 0;
    ck(cudaEventElapsedTime(&ms, a, b), "elapsed");
    best = std::min(best, ms / inner);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return best;
}

__global__ void fill_kernel(float* p, size_t n, float v) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    p[i] = v * float(i % 1000) * 1e-3f;
}

}  // namespace

CudaCeilings measure_cuda_ceilings(int n, bool quick) {
  CudaCeilings c;
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    cudaGetLastError();
    c.note = "no CUDA device";
    return c;
  }
  void *h = nullptr, *d0 = nullptr, *d1 = nullptr;
  float *A = nullptr, *B = nullptr, *C = nullptr;
  __nv_bfloat16 *Ah = nullptr, *Bh = nullptr, *Ch = nullptr;
  cublasHandle_t handle = nullptr;
  try {
    cudaDeviceProp prop{};
    ck(cudaGetDeviceProperties(&prop, 0), "device properties");
    c.device = prop.name;
    const int reps = quick ? 3 : 10;
    const size_t bytes = size_t(quick ? 256 : 1024) << 20;
    ck(cudaMallocHost(&h, bytes), "pinned host buffer");
    ck(cudaMalloc(&d0, bytes), "device buffer");
    ck(cudaMalloc(&d1, bytes), "device buffer");
    std::fill_n(static_cast<char*>(h), bytes, 1);
    const float ms_h2d = best_ms(reps, 1, [&] { ck(cudaMemcpyAsync(d0, h, bytes, cudaMemcpyHostToDevice), "h2d"); });
    const float ms_d2h = best_ms(reps, 1, [&] { ck(cudaMemcpyAsync(h, d0, bytes, cudaMemcpyDeviceToHost), "d2h"); });
    const float ms_d2d = best_ms(reps, 1, [&] { ck(cudaMemcpyAsync(d1, d0, bytes, cudaMemcpyDeviceToDevice), "d2d"); });
    c.h2d_gbs = double(bytes) / (ms_h2d * 1e-3) * 1e-9;
    c.d2h_gbs = double(bytes) / (ms_d2h * 1e-3) * 1e-9;
    c.d2d_gbs = 2.0 * double(bytes) / (ms_d2d * 1e-3) * 1e-9;

    const size_t nn = size_t(n) * n;
    ck(cudaMalloc(&A, nn * 4), "A");
    ck(cudaMalloc(&B, nn * 4), "B");
    ck(cudaMalloc(&C, nn * 4), "C");
    ck(cudaMalloc(&Ah, nn * 2), "A bf16");
    ck(cudaMalloc(&Bh, nn * 2), "B bf16");
    ck(cudaMalloc(&Ch, nn * 2), "C bf16");
    fill_kernel<<<1024, 256>>>(A, nn, 1.0f);
    fill_kernel<<<1024, 256>>>(B, nn, -1.0f);
    towerrec::cuda::to_bf16(0, A, static_cast<int64_t>(nn), Ah);
    towerrec::cuda::to_bf16(0, B, static_cast<int64_t>(nn), Bh);
    ck(cudaGetLastError(), "fill");
    ck(cublasCreate(&handle), "cublasCreate");
    const float one = 1.0f, zero = 0.0f;
    const double flop = 2.0 * double(n) * n * n;
    auto gemm = [&](const void* a, const void* b, void* cc, cudaDataType t_in, cudaDataType t_out,
                    cublasComputeType_t compute) {
      return best_ms(reps, 3, [&] {
        ck(cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &one, a, t_in, n, b, t_in, n,
                        &zero, cc, t_out, n, compute, CUBLAS_GEMM_DEFAULT),
           "cublasGemmEx");
      });
    };
    c.fp32_tflops = flop / (gemm(A, B, C, CUDA_R_32F, CUDA_R_32F, CUBLAS_COMPUTE_32F) * 1e-3) * 1e-12;
    c.tf32_tflops =
        flop / (gemm(A, B, C, CUDA_R_32F, CUDA_R_32F, CUBLAS_COMPUTE_32F_FAST_TF32) * 1e-3) * 1e-12;
    c.bf16_tflops = flop / (gemm(Ah, Bh, Ch, CUDA_R_16BF, CUDA_R_16BF, CUBLAS_COMPUTE_32F) * 1e-3) * 1e-12;
    c.measured = true;
  } catch (const Fail& f) {
    c.note = f.what;
  }
  if (handle) cublasDestroy(handle);
  for (void* p : {static_cast<void*>(A), static_cast<void*>(B), static_cast<void*>(C),
                  static_cast<void*>(Ah), static_cast<void*>(Bh), static_cast<void*>(Ch), d0, d1})
    if (p) cudaFree(p);
  if (h) cudaFreeHost(h);
  return c;
}

}  // namespace towerrec::bench
