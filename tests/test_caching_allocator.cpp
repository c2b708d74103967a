// The CUDA backend's caching allocator (kernels/cuda/caching_allocator.h) over
// injected driver calls that hand out host memory, so it runs without a device:
// bucket reuse, and release_cached after a cudaFree that fails part way.
#include <gtest/gtest.h>

#if TOWERREC_HAVE_CUDA
#include <cuda_runtime.h>

#include <cstdlib>
#include <map>
#include <set>
#include <vector>

#include "kernels/cuda/caching_allocator.h"
#include "towerrec/error.h"

namespace towerrec::cuda {
namespace {

// The fake driver: every block it handed out, how often each was freed, and
// the free call (1-based) that fails, 0 for none.
struct FakeDriver {
  std::set<void*> live;
  std::map<void*, int> frees;
  int free_calls = 0;
  int fail_at = 0;
};
FakeDriver* fake = nullptr;

int fake_malloc(void** p, size_t bytes) {
  *p = std::malloc(bytes);
  if (*p == nullptr) return cudaErrorMemoryAllocation;
  fake->live.insert(*p);
  return cudaSuccess;
}

int fake_free(void* p) {
  ++fake->free_calls;
  ++fake->frees[p];
  if (fake->free_calls == fake->fail_at) return cudaErrorInvalidValue;
  if (fake->live.erase(p) == 0) return cudaErrorInvalidDevicePointer;  // freed twice
  std::free(p);
  return cudaSuccess;
}

class CachingAllocatorTest : public ::testing::Test {
 protected:
  void SetUp() override { fake = &driver_; }
  void TearDown() override {
    for (void* p : driver_.live) std::free(p);
    fake = nullptr;
  }
  FakeDriver driver_;
};

TEST_F(CachingAllocatorTest, ReusesFreedBlocksOfTheSameBucket) {
  CachingAllocator a({fake_malloc, fake_free});
  void* p = a.allocate(1000);
  a.deallocate(p);
  EXPECT_EQ(a.allocate(900), p);  // same bucket (1024)
  EXPECT_EQ(a.stats().mallocs, 1);
  EXPECT_EQ(a.stats().hits, 1);
  a.deallocate(p);
}

TEST_F(CachingAllocatorTest, ReleaseCachedThatFailsPartWayFreesNoBlockTwice) {
  {
    CachingAllocator a({fake_malloc, fake_free});
    std::vector<void*> blocks;
    for (size_t bytes : {512, 512, 4096, 4096, 65536}) blocks.push_back(a.allocate(bytes));
    for (void* p : blocks) a.deallocate(p);
    const size_t cached = a.stats().cached_bytes;
    EXPECT_EQ(cached, 2 * 512 + 2 * 4096 + 65536u);

    driver_.fail_at = 3;
    EXPECT_THROW(a.release_cached(), Error);
    EXPECT_EQ(driver_.free_calls, 3);
    // The two freed blocks and the failed one are off the lists and out of the
    // stats; the untried ones are still cached.
    const size_t sizes[] = {512, 512, 4096, 4096, 65536};
    size_t untried = 0;
    for (size_t i = 0; i < blocks.size(); ++i)
      if (driver_.frees[blocks[i]] == 0) untried += sizes[i];
    EXPECT_EQ(a.stats().cached_bytes, untried);
    EXPECT_EQ(untried, cached - 512 - 512 - 4096) << "map order: the 512 bucket first";
    EXPECT_EQ(driver_.live.size(), 3u) << "two freed, the failed one still held by the driver";

    driver_.fail_at = 0;
    a.release_cached();
    EXPECT_EQ(a.stats().cached_bytes, 0u);
    EXPECT_EQ(driver_.free_calls, 5) << "each block tried exactly once";
    for (void* p : blocks) EXPECT_EQ(driver_.frees[p], 1) << p;
    EXPECT_EQ(driver_.live.size(), 1u) << "only the failed block remains";
  }
  // The destructor found nothing left to free.
  EXPECT_EQ(driver_.free_calls, 5);
}

}  // namespace
}  // namespace towerrec::cuda
#endif
