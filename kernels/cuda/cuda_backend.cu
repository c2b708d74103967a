// CUDA backend context and memory ops: device selection, the stream, the cuBLAS
// handle and workspace, the caching allocator, copies and fill; plus the
// factory functions cuda_available() and make_cuda_backend().
//
// fill(p[n], value): one grid-stride kernel (cudaMemset cannot write floats).
#include "kernels/cuda/cuda_backend.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <string>

#include "kernels/cuda/cuda_testing.h"
#include "towerrec/error.h"

namespace towerrec::cuda {

namespace {
__global__ void to_bf16_kernel(const float* __restrict__ src, int64_t n,
                               __nv_bfloat16* __restrict__ dst) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x)
    dst[i] = __float2bfloat16_rn(src[i]);
}
}  // namespace

void to_bf16(cudaStream_t stream, const float* src, int64_t n, __nv_bfloat16* dst) {
  if (n <= 0) return;
  to_bf16_kernel<<<grid_for(n), kThreads, 0, stream>>>(src, n, dst);
  CUDA_CHECK_LAUNCH(stream, "to_bf16_kernel");
}

namespace {

// cuBLAS workspace: 32 MiB is what NVIDIA recommends for Hopper.
constexpr size_t kCublasWorkspaceBytes = size_t{32} << 20;

__global__ void fill_kernel(float* __restrict__ p, int64_t n, float value) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x)
    p[i] = value;
}

}  // namespace

CudaBackend::CudaBackend(int device) : device_(device) {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    cudaGetLastError();
    throw Error(std::string("CUDA backend: no usable CUDA driver or device (") +
                cudaGetErrorString(e) + ")");
  }
  if (device < 0 || device >= count)
    throw Error("CUDA backend: device " + std::to_string(device) + " requested but " +
                std::to_string(count) + " device(s) present");
  CUDA_CHECK(cudaSetDevice(device_));
  try {
    CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    CUBLAS_CHECK(cublasCreate(&cublas_));
    // Order matters: cublasSetStream resets the workspace to the default pool.
    CUBLAS_CHECK(cublasSetStream(cublas_, stream_));
    CUDA_CHECK(cudaMalloc(&cublas_workspace_, kCublasWorkspaceBytes));
    CUBLAS_CHECK(cublasSetWorkspace(cublas_, cublas_workspace_, kCublasWorkspaceBytes));
    // Plain FP32: TF32 tensor-op math would break agreement with the CPU reference.
    CUBLAS_CHECK(cublasSetMathMode(cublas_, CUBLAS_DEFAULT_MATH));

    cudaDeviceProp prop{};
    CUDA_CHECK(cudaGetDeviceProperties(&prop, device_));
    sm_count_ = std::max(1, prop.multiProcessorCount);
    int cublas_version = 0;
    CUBLAS_CHECK(cublasGetVersion(cublas_, &cublas_version));
    char buf[512];
    std::snprintf(buf, sizeof buf, "cuda:%d %s (sm_%d%d, %.0f GiB, %d SMs, cuBLAS %d.%d.%d)",
                  device_, prop.name, prop.major, prop.minor,
                  static_cast<double>(prop.totalGlobalMem) / (1024.0 * 1024.0 * 1024.0),
                  prop.multiProcessorCount, cublas_version / 10000,
                  (cublas_version / 100) % 100, cublas_version % 100);
    description_ = buf;
  } catch (...) {
    if (cublas_) cublasDestroy(cublas_);
    if (cublas_workspace_) cudaFree(cublas_workspace_);
    if (stream_) cudaStreamDestroy(stream_);
    throw;
  }
}

CudaBackend::~CudaBackend() {
  // Errors are ignored here: a destructor cannot throw, and after a device
  // fault every call fails anyway.
  cudaSetDevice(device_);
  cudaStreamSynchronize(stream_);
  for (auto& f : fences_) cudaEventDestroy(f.second);
  for (cudaEvent_t e : free_events_) cudaEventDestroy(e);
  cublasDestroy(cublas_);
  cudaFree(cublas_workspace_);
  cudaStreamDestroy(stream_);
  cudaGetLastError();  // a failure above must not become the next launch's error
  // alloc_ frees its blocks in its own destructor, after this body.
}

void CudaBackend::activate() const {
  int cur = -1;
  CUDA_CHECK(cudaGetDevice(&cur));
  if (cur != device_) CUDA_CHECK(cudaSetDevice(device_));
}

void CudaBackend::set_topk_tiles(int64_t users, int64_t items) {
  TOWERREC_CHECK(users >= 1 && items >= 1, "topk tile sizes must be positive");
  topk_users_per_tile_ = users;
  topk_items_per_tile_ = items;
}

// ---- memory -------------------------------------------------------------------

void* CudaBackend::allocate(size_t bytes) {
  if (bytes == 0) return nullptr;
  activate();
  void* p = alloc_.allocate(bytes);
  if (p == nullptr) {
    // Out of memory: cached blocks may still be in use by queued work, so wait
    // for the stream before handing them back to the driver, then retry once.
    CUDA_CHECK(cudaStreamSynchronize(stream_));
    alloc_.release_cached();
    p = alloc_.allocate(bytes);
  }
  if (p == nullptr) {
    size_t free_b = 0, total_b = 0;
    if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) cudaGetLastError();
    throw Error("CUDA backend: out of device memory allocating " + std::to_string(bytes) +
                " bytes on " + description_ + " (" + std::to_string(free_b >> 20) + " of " +
                std::to_string(total_b >> 20) + " MiB free)");
  }
  return p;
}

void CudaBackend::deallocate(void* p) noexcept { alloc_.deallocate(p); }

int64_t CudaBackend::memory_available() const {
  const_cast<CudaBackend*>(this)->activate();
  size_t free_b = 0, total_b = 0;
  CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  return static_cast<int64_t>(free_b);
}

void CudaBackend::to_device(void* dst, const void* host_src, size_t bytes) {
  if (bytes == 0) return;
  activate();
  // From pageable memory the call returns once the source has been staged, so
  // the caller may reuse host_src immediately.
  CUDA_CHECK(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, stream_));
}

void CudaBackend::to_host(void* host_dst, const void* src, size_t bytes) {
  activate();
  if (bytes > 0)
    CUDA_CHECK(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, stream_));
  CUDA_CHECK(cudaStreamSynchronize(stream_));
}

void* CudaBackend::allocate_host(size_t bytes) {
  if (bytes == 0) return nullptr;
  activate();
  void* p = nullptr;
  const cudaError_t e = cudaHostAlloc(&p, bytes, cudaHostAllocDefault);
  if (e != cudaSuccess) {
    cudaGetLastError();
    throw Error("CUDA backend: cannot allocate " + std::to_string(bytes) +
                " bytes of page-locked host memory (" + cudaGetErrorString(e) + ")");
  }
  return p;
}

void CudaBackend::deallocate_host(void* p) noexcept {
  if (p != nullptr && cudaFreeHost(p) != cudaSuccess) cudaGetLastError();  // cannot report it
}

void CudaBackend::to_device_async(void* dst, const void* host_src, size_t bytes) {
  if (bytes == 0) return;
  activate();
  CUDA_CHECK(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, stream_));
}

void CudaBackend::to_host_async(void* host_dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  activate();
  CUDA_CHECK(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, stream_));
}

uint64_t CudaBackend::fence() {
  activate();
  // Recycle fences that have passed, so callers that never wait on some of
  // theirs do not grow the list.
  while (fences_.size() > 16) {
    const cudaError_t q = cudaEventQuery(fences_.front().second);
    if (q == cudaErrorNotReady) {
      // Not a failure, but the runtime may keep it as this thread's last error,
      // where the next launch check (cudaGetLastError) would report it.
      cudaGetLastError();
      break;
    }
    CUDA_CHECK(q);
    passed_fence_ = fences_.front().first;
    free_events_.push_back(fences_.front().second);
    fences_.pop_front();
  }
  cudaEvent_t e = nullptr;
  if (!free_events_.empty()) {
    e = free_events_.back();
    free_events_.pop_back();
  } else {
    CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  }
  const cudaError_t rc = cudaEventRecord(e, stream_);
  if (rc != cudaSuccess) {
    free_events_.push_back(e);
    CUDA_CHECK(rc);
  }
  fences_.emplace_back(next_fence_, e);
  return next_fence_++;
}

void CudaBackend::wait_fence(uint64_t f) {
  if (f == 0 || f <= passed_fence_) return;
  TOWERREC_CHECK(f < next_fence_, "wait_fence: fence " + std::to_string(f) + " was never recorded");
  activate();
  // Events complete in stream order: once f has passed, every older one has too.
  cudaEvent_t target = nullptr;
  for (const auto& entry : fences_)
    if (entry.first == f) target = entry.second;
  CUDA_CHECK(cudaEventSynchronize(target));
  while (!fences_.empty() && fences_.front().first <= f) {
    free_events_.push_back(fences_.front().second);
    fences_.pop_front();
  }
  passed_fence_ = f;
}

void CudaBackend::copy(void* dst, const void* src, size_t bytes) {
  if (bytes == 0 || dst == src) return;
  activate();
  CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_));
}

void CudaBackend::fill(float* p, int64_t n, float value) {
  TOWERREC_CHECK(n >= 0, "fill: negative length");
  if (n == 0) return;
  activate();
  fill_kernel<<<grid_for(n), kThreads, 0, stream_>>>(p, n, value);
  CUDA_CHECK_LAUNCH(stream_, "fill_kernel");
}

void CudaBackend::synchronize() {
  activate();
  CUDA_CHECK(cudaStreamSynchronize(stream_));
}

// ---- test hooks ------------------------------------------------------------------

namespace {
CudaBackend& as_cuda(Backend& be) {
  auto* cb = dynamic_cast<CudaBackend*>(&be);
  if (cb == nullptr) throw Error("not a CUDA backend: " + be.describe());
  return *cb;
}
}  // namespace

void set_topk_tiles(Backend& be, int64_t users, int64_t items) {
  as_cuda(be).set_topk_tiles(users, items);
}

int64_t allocator_mallocs(Backend& be) { return as_cuda(be).allocator_stats().mallocs; }

int64_t pending_fences(Backend& be) { return as_cuda(be).pending_fences(); }

}  // namespace towerrec::cuda

namespace towerrec {

bool cuda_available() {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    cudaGetLastError();  // no driver or no device: not an error for this query
    return false;
  }
  return count > 0;
}

std::unique_ptr<Backend> make_cuda_backend(int device) {
  return std::make_unique<cuda::CudaBackend>(device);
}

}  // namespace towerrec
