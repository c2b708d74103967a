// Caching device allocator for the CUDA backend.
//
// cudaMalloc/cudaFree are slow and cudaFree synchronizes the device, so a
// training loop that allocates per batch must not reach them in steady state.
// Requests are rounded up to a size bucket (quarter steps between powers of
// two, at least 512 bytes: at most 25% waste); a freed block goes onto its
// bucket's free list and the next request of that bucket takes it back.
//
// Reuse is stream-ordered: the backend issues all work on one stream, so a
// block freed by the host while kernels that use it are still queued can be
// handed out again at once; any later user of it is queued behind them.
// Blocks must therefore not be used from other streams. The backend makes its
// device current before every call.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace towerrec::cuda {

class CachingAllocator {
 public:
  struct Stats {
    size_t live_bytes = 0;    // handed out, in bucket sizes
    size_t cached_bytes = 0;  // on free lists
    int64_t mallocs = 0;      // calls that reached cudaMalloc
    int64_t hits = 0;         // requests served from a free list
  };

  // The two driver calls, replaceable for tests; each returns a cudaError_t.
  struct DeviceCalls {
    int (*malloc)(void** p, size_t bytes);
    int (*free)(void* p);
  };
  // cudaMalloc and cudaFree.
  CachingAllocator();
  explicit CachingAllocator(DeviceCalls calls) : calls_(calls) {}
  // Frees every block, live or cached. The caller synchronizes first.
  ~CachingAllocator();
  CachingAllocator(const CachingAllocator&) = delete;
  CachingAllocator& operator=(const CachingAllocator&) = delete;

  // Null for 0 bytes. Returns null (never throws) when the device is out of
  // memory even after the cache was released, so the caller can synchronize
  // and retry; throws towerrec::Error on any other CUDA error.
  void* allocate(size_t bytes);
  // Returns p to its bucket's free list. Unknown pointers are ignored.
  void deallocate(void* p) noexcept;
  // cudaFree of every cached block. The caller makes sure no queued work uses them.
  // Each block leaves its free list before it is freed: when a cudaFree fails
  // (and this throws) the blocks freed so far and the failed one are off the
  // lists, the others still on them, so a later call or the destructor never
  // frees a block twice (the failed one is given up).
  void release_cached();

  Stats stats() const;
  static size_t bucket_size(size_t bytes);

 private:
  DeviceCalls calls_;
  mutable std::mutex mu_;
  std::unordered_map<void*, size_t> live_;        // pointer -> bucket size
  std::map<size_t, std::vector<void*>> free_;     // bucket size -> cached blocks
  Stats stats_;
};

}  // namespace towerrec::cuda
