// Backend infrastructure outside the op families: the CUDA backend's context,
// memory, fences and allocator (the op families have their own suites,
// tests/test_<family>.cpp), and the CPU backend's description.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "tests/compare.h"
#include "tests/cuda_vs_cpu.h"
#include "tests/test_util.h"
#include "towerrec/backend.h"
#include "towerrec/error.h"
#if TOWERREC_HAVE_CUDA
#include "kernels/cuda/cuda_testing.h"
#endif

namespace towerrec {
namespace {

using namespace testing::cuda_vs_cpu;  // upload, download, test_seed, as_double, ...

// ---- context and memory ------------------------------------------------------------

TEST(CudaBackend, DescribeAndBadDevice) {
  TOWERREC_REQUIRE_CUDA();
  auto gpu = make_cuda_backend(0);
  EXPECT_EQ(gpu->kind(), DeviceKind::kCUDA);
  EXPECT_EQ(gpu->describe().rfind("cuda:0 ", 0), 0u) << gpu->describe();
  EXPECT_THROW(make_cuda_backend(1 << 20), Error);
  EXPECT_THROW(make_cuda_backend(-1), Error);
}

TEST(CudaBackend, MemoryRoundTrip) {
  TOWERREC_REQUIRE_CUDA();
  TRACE_SEED();
  std::mt19937_64 g(test_seed());
  auto gpu = make_cuda_backend(0);
  for (int64_t n : {int64_t{1}, int64_t{7}, int64_t{257}, int64_t{100003}}) {
    const std::vector<float> h = random_floats(g, static_cast<size_t>(n));
    auto a = upload(*gpu, h);
    auto b = poisoned(*gpu, n);
    gpu->copy(b.data(), a.data(), sizeof(float) * static_cast<size_t>(n));
    EXPECT_TRUE(all_close(download(*gpu, b), as_double(h), 0, 0));
    gpu->fill(b.data(), n, 2.5f);
    EXPECT_TRUE(all_close(download(*gpu, b), std::vector<double>(h.size(), 2.5), 0, 0));
  }
  gpu->synchronize();
}

#if TOWERREC_HAVE_CUDA
// fence() recycles passed fences with cudaEventQuery. A fence still pending
// answers cudaErrorNotReady, which is no failure and must not come back as the
// error of the next, unrelated launch check.
TEST(CudaBackend, PendingFenceIsNotTheNextLaunchsError) {
  TOWERREC_REQUIRE_CUDA();
  auto gpu = make_cuda_backend(0);
  // Tens of milliseconds of queued FP32 GEMMs (137 GFLOP each) ahead of the fences.
  const int64_t n = 4096;
  const int in = 4096, out = 4096;
  DeviceArray<float> X(gpu.get(), n * in), W(gpu.get(), int64_t{in} * out), b(gpu.get(), out),
      Y(gpu.get(), n * out);
  gpu->fill(X.data(), n * in, 1e-2f);
  gpu->fill(W.data(), int64_t{in} * out, 1e-2f);
  gpu->fill(b.data(), out, 0.0f);
  for (int i = 0; i < 20; ++i)
    gpu->dense_forward(X.data(), n, in, W.data(), b.data(), out, Activation::kNone, Y.data(),
                       MatmulPrecision::kFP32);
  uint64_t last = 0;
  for (int i = 0; i < 24; ++i) last = gpu->fence();
  // The recycle loop queried the oldest fence and found it pending (else it
  // would have cut the list back to 16 before each new fence).
  ASSERT_GT(cuda::pending_fences(*gpu), 17) << "the queued work finished before the fences";
  EXPECT_NO_THROW(gpu->fill(Y.data(), n * out, 3.0f));
  EXPECT_NO_THROW(gpu->wait_fence(last));
  EXPECT_EQ(cuda::pending_fences(*gpu), 0);
  const std::vector<float> y = download(*gpu, Y);
  EXPECT_TRUE(all_close(y, std::vector<double>(y.size(), 3.0), 0, 0));
}
#endif


TEST(CpuBackend, DescribeNamesBlasAndThreads) {
  auto two = make_cpu_backend(2);
  EXPECT_EQ(two->kind(), DeviceKind::kCPU);
  const std::string s = two->describe();
  EXPECT_NE(s.find("cpu ("), std::string::npos) << s;
  EXPECT_NE(s.find("OpenBLAS"), std::string::npos) << s;
  EXPECT_NE(s.find("2 threads"), std::string::npos) << s;
}

// ---- allocator ---------------------------------------------------------------------------

#if TOWERREC_HAVE_CUDA
TEST(CudaBackend, SteadyStateDoesNotMalloc) {
  TOWERREC_REQUIRE_CUDA();
  std::mt19937_64 g(test_seed());
  auto gpu = make_cuda_backend(0);
  const int64_t n = 257;
  const int in = 130, out = 300;
  auto step = [&] {
    auto X = upload(*gpu, random_floats(g, static_cast<size_t>(n * in)));
    auto W = upload(*gpu, random_floats(g, static_cast<size_t>(in) * out));
    auto b = upload(*gpu, random_floats(g, static_cast<size_t>(out)));
    DeviceArray<float> Y(gpu.get(), n * out), dW(gpu.get(), int64_t{in} * out),
        db(gpu.get(), out), dX(gpu.get(), n * in);
    gpu->dense_forward(X.data(), n, in, W.data(), b.data(), out, Activation::kReLU, Y.data(),
                       MatmulPrecision::kFP32);
    gpu->dense_backward(X.data(), n, in, W.data(), out, Activation::kReLU, Y.data(), Y.data(),
                        dW.data(), db.data(), dX.data(), MatmulPrecision::kFP32);
    DeviceArray<int32_t> items(gpu.get(), n * 10);
    DeviceArray<float> scores(gpu.get(), n * 10);
    gpu->topk(X.data(), n, X.data(), n, in, 10, nullptr, nullptr, items.data(), scores.data(),
              TopkPolicy{});
    gpu->synchronize();
  };
  step();
  const int64_t mallocs = cuda::allocator_mallocs(*gpu);
  for (int i = 0; i < 5; ++i) step();
  EXPECT_EQ(cuda::allocator_mallocs(*gpu), mallocs);
}
#endif

}  // namespace
}  // namespace towerrec
