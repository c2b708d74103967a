#include "kernels/cuda/caching_allocator.h"

#include <cuda_runtime.h>

#include "kernels/cuda/cuda_check.h"

namespace towerrec::cuda {

namespace {
int device_malloc(void** p, size_t bytes) { return cudaMalloc(p, bytes); }
int device_free(void* p) { return cudaFree(p); }
}  // namespace

CachingAllocator::CachingAllocator() : calls_{device_malloc, device_free} {}

size_t CachingAllocator::bucket_size(size_t bytes) {
  constexpr size_t kMin = 512;
  if (bytes <= kMin) return kMin;
  size_t p = kMin;
  while (p * 2 <= bytes) p *= 2;  // largest power of two <= bytes
  const size_t step = p / 4;
  return (bytes + step - 1) / step * step;
}

CachingAllocator::~CachingAllocator() {
  // Errors are ignored: a destructor cannot report them and the context may
  // already be unusable after a device fault.
  for (auto& [p, size] : live_) calls_.free(p);
  for (auto& [size, blocks] : free_)
    for (void* p : blocks) calls_.free(p);
  cudaGetLastError();  // a failure above must not become the next launch's error
}

void* CachingAllocator::allocate(size_t bytes) {
  if (bytes == 0) return nullptr;
  const size_t size = bucket_size(bytes);
  std::lock_guard<std::mutex> lock(mu_);
  auto it = free_.find(size);
  if (it != free_.end() && !it->second.empty()) {
    void* p = it->second.back();
    it->second.pop_back();
    live_.emplace(p, size);
    stats_.cached_bytes -= size;
    stats_.live_bytes += size;
    ++stats_.hits;
    return p;
  }
  void* p = nullptr;
  const cudaError_t e = static_cast<cudaError_t>(calls_.malloc(&p, size));
  if (e == cudaErrorMemoryAllocation) {
    cudaGetLastError();  // clear the (non-sticky) error
    return nullptr;
  }
  CUDA_CHECK(e);
  live_.emplace(p, size);
  stats_.live_bytes += size;
  ++stats_.mallocs;
  return p;
}

void CachingAllocator::deallocate(void* p) noexcept {
  if (p == nullptr) return;
  std::lock_guard<std::mutex> lock(mu_);
  auto it = live_.find(p);
  if (it == live_.end()) return;
  const size_t size = it->second;
  live_.erase(it);
  try {
    free_[size].push_back(p);
    stats_.live_bytes -= size;
    stats_.cached_bytes += size;
  } catch (...) {
    // Out of host memory for the free list: give the block back to the driver.
    if (calls_.free(p) != cudaSuccess) cudaGetLastError();  // cannot report it
    stats_.live_bytes -= size;
  }
}

void CachingAllocator::release_cached() {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto it = free_.begin(); it != free_.end(); it = free_.erase(it)) {
    std::vector<void*>& blocks = it->second;
    while (!blocks.empty()) {
      void* p = blocks.back();
      blocks.pop_back();
      stats_.cached_bytes -= it->first;
      CUDA_CHECK(static_cast<cudaError_t>(calls_.free(p)));
    }
  }
}

CachingAllocator::Stats CachingAllocator::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

}  // namespace towerrec::cuda
