// Error checking for the CUDA backend. Every runtime call, cuBLAS call and kernel
// launch goes through one of these macros; a failure throws towerrec::Error with
// the source location, the failing expression and the library's error string.
//
// Kernel launches are asynchronous, so a fault inside a kernel normally surfaces
// at a later call. Setting TOWERREC_CUDA_SYNC=1 in the environment makes the
// post-launch check synchronize the stream, so the error is reported at the
// launch that caused it (slow; for debugging only).
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdlib>
#include <string>

#include "towerrec/error.h"

namespace towerrec::cuda {

// Clears the thread's last error first: a caller that catches the exception and
// goes on must not see the same failure again at its next launch check.
[[noreturn]] inline void throw_cuda_error(cudaError_t e, const char* expr, const char* file,
                                          int line) {
  cudaGetLastError();
  throw_error(file, line,
              std::string("CUDA error ") + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) +
                  ") in " + expr);
}

[[noreturn]] inline void throw_cublas_error(cublasStatus_t s, const char* expr, const char* file,
                                            int line) {
  throw_error(file, line,
              std::string("cuBLAS error ") + cublasGetStatusName(s) + " (" +
                  cublasGetStatusString(s) + ") in " + expr);
}

// True when TOWERREC_CUDA_SYNC=1: every launch check synchronizes the stream.
inline bool sync_after_launch() {
  static const bool on = [] {
    const char* e = std::getenv("TOWERREC_CUDA_SYNC");
    return e != nullptr && e[0] == '1';
  }();
  return on;
}

inline void check_launch(cudaStream_t stream, const char* what, const char* file, int line) {
  cudaError_t e = cudaGetLastError();
  if (e == cudaSuccess && sync_after_launch()) e = cudaStreamSynchronize(stream);
  if (e != cudaSuccess) throw_cuda_error(e, what, file, line);
}

}  // namespace towerrec::cuda

#define CUDA_CHECK(expr)                                                             \
  do {                                                                               \
    const cudaError_t tr_cuda_err_ = (expr);                                         \
    if (tr_cuda_err_ != cudaSuccess)                                                 \
      ::towerrec::cuda::throw_cuda_error(tr_cuda_err_, #expr, __FILE__, __LINE__);   \
  } while (0)

#define CUBLAS_CHECK(expr)                                                           \
  do {                                                                               \
    const cublasStatus_t tr_cublas_st_ = (expr);                                     \
    if (tr_cublas_st_ != CUBLAS_STATUS_SUCCESS)                                      \
      ::towerrec::cuda::throw_cublas_error(tr_cublas_st_, #expr, __FILE__, __LINE__); \
  } while (0)

// After every <<<...>>> launch: CUDA_CHECK_LAUNCH(stream, "kernel_name").
#define CUDA_CHECK_LAUNCH(stream, name) \
  ::towerrec::cuda::check_launch((stream), "launch of " name, __FILE__, __LINE__)
