// towerrec_topk_bench: device buffers, CUDA-event timing, the inputs, the tiled
// score GEMM passes (kernels/topk/cuda_tile.cuh) and recall.
// Private to towerrec_topk_bench: bench/topk_grid/main.cu includes it once,
// so its helpers live in an unnamed namespace like the rest of that program.
#pragma once

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "bench/topk_grid/options.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/topk/cuda_tile.cuh"
#include "towerrec/rng.h"

namespace {

// ---- device helpers ----------------------------------------------------------------------

class OutOfMemory : public Error {
 public:
  using Error::Error;
};

// cudaMalloc'd bytes, freed on scope exit (errors there are ignored: a
// destructor cannot throw). Out of memory throws OutOfMemory, anything else
// towerrec::Error.
class DevBuf {
 public:
  DevBuf() = default;
  DevBuf(size_t bytes, const char* what) {
    if (bytes == 0) return;
    const cudaError_t e = cudaMalloc(&p_, bytes);
    if (e == cudaErrorMemoryAllocation) {
      cudaGetLastError();  // not sticky: clear it
      p_ = nullptr;
      throw OutOfMemory(std::string("out of device memory allocating ") + what + " (" +
                        std::to_string(bytes >> 20) + " MiB)");
    }
    if (e != cudaSuccess) towerrec::cuda::throw_cuda_error(e, what, __FILE__, __LINE__);
  }
  ~DevBuf() {
    if (p_) cudaFree(p_);
  }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  DevBuf(DevBuf&& o) noexcept : p_(o.p_) { o.p_ = nullptr; }
  DevBuf& operator=(DevBuf&& o) noexcept {
    if (this != &o) {
      if (p_) cudaFree(p_);
      p_ = o.p_;
      o.p_ = nullptr;
    }
    return *this;
  }
  template <typename T>
  T* as() const {
    return static_cast<T*>(p_);
  }

 private:
  void* p_ = nullptr;
};

class Events {
 public:
  explicit Events(cudaStream_t s) : s_(s) {
    CUDA_CHECK(cudaEventCreate(&a_));
    CUDA_CHECK(cudaEventCreate(&b_));
  }
  ~Events() {
    if (a_) cudaEventDestroy(a_);
    if (b_) cudaEventDestroy(b_);
  }
  Events(const Events&) = delete;
  Events& operator=(const Events&) = delete;

  // Milliseconds per call of `inner` back-to-back calls of fn (queued on the stream).
  template <typename F>
  double ms(F& fn, int inner) {
    CUDA_CHECK(cudaEventRecord(a_, s_));
    for (int i = 0; i < inner; ++i) fn();
    CUDA_CHECK(cudaEventRecord(b_, s_));
    CUDA_CHECK(cudaEventSynchronize(b_));
    float t = 0;
    CUDA_CHECK(cudaEventElapsedTime(&t, a_, b_));
    return double(t) / inner;
  }

 private:
  cudaStream_t s_;
  cudaEvent_t a_ = nullptr, b_ = nullptr;
};

struct Timing {
  double median_ms = NAN, best_ms = NAN;
  int reps = 0, inner = 0;
};

// One warm-up call (allocations, cuBLAS heuristics), then `reps` timings of
// `inner` calls each, together about min_time_s (at least one timing).
template <typename F>
Timing measure(Events& ev, const Options& o, F fn) {
  const double warm = std::max(ev.ms(fn, 1), 1e-3);
  const double target = o.min_time_s * 1e3;
  int reps = 1, inner = 1;
  if (warm < target) {
    reps = static_cast<int>(std::clamp(target / warm, 1.0, double(std::max(1, o.max_reps))));
    inner = static_cast<int>(std::clamp(target / (reps * warm), 1.0, 1000.0));
  }
  std::vector<double> t;
  for (int r = 0; r < reps; ++r) t.push_back(ev.ms(fn, inner));
  std::sort(t.begin(), t.end());
  Timing out;
  const size_t n = t.size();
  out.median_ms = n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
  out.best_ms = t[0];
  out.reps = reps;
  out.inner = inner;
  return out;
}

using towerrec::rng::mix64;     // splitmix64's finalizer
using towerrec::cuda::to_bf16;  // the two-kernel path's conversion (kernels/topk/cuda.cu)

// p[i] uniform in [-1, 1) (24 random bits), a function of (seed, i) only.
__global__ void uniform_kernel(float* __restrict__ p, int64_t n, uint64_t seed) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const uint64_t h = mix64(seed + mix64(static_cast<uint64_t>(i)));
    p[i] = static_cast<float>(h >> 40) * (2.0f / 16777216.0f) - 1.0f;
  }
}

void fill_uniform(cudaStream_t s, float* p, int64_t n, uint64_t seed) {
  uniform_kernel<<<towerrec::cuda::grid_for(n), towerrec::cuda::kThreads, 0, s>>>(p, n, seed);
  CUDA_CHECK_LAUNCH(s, "uniform_kernel");
}

// Users per block and items per chunk of a tiled pass over the score matrix.
struct Tiles {
  int64_t users = 1, items = 1;
  int64_t count(int64_t n_users, int64_t n_items) const {
    return ((n_users + users - 1) / users) * ((n_items + items - 1) / items);
  }
};

// The two-kernel path's tiles (kernels/topk/cuda.cu with the tiles set on the backend).
Tiles topk_tiles(int64_t users, int64_t items) {
  return {std::min(users, std::min<int64_t>(kTileUsers, 65535)),
          std::max<int64_t>(1, std::min(items, kTileItems))};
}

// The fewest tiles whose output fits cap_bytes: the whole matrix where it fits,
// else every user with as many items as fit (multiples of 256), else chunks of
// up to 65536 items with as many users as fit.
Tiles bare_tiles(int64_t users, int64_t items, size_t cap_bytes) {
  const int64_t cap = static_cast<int64_t>(cap_bytes / sizeof(float));
  if (users * items <= cap) return {users, items};  // users, items <= INT_MAX: no overflow
  int64_t ic = cap / users;
  if (ic >= std::min<int64_t>(items, 65536)) return {users, std::min(items, ic / 256 * 256)};
  ic = std::min<int64_t>(items, 65536);
  return {std::clamp<int64_t>(cap / ic, 1, users), ic};
}

std::string tiles_str(const Tiles& t, int64_t users, int64_t items) {
  if (t.users >= users && t.items >= items) return "one call";
  return std::to_string(t.count(users, items)) + " calls of " + std::to_string(t.users) + " x " +
         std::to_string(t.items);
}

// A tiled pass: per block of users, optionally the block's bf16 conversion; per
// chunk of items, optionally the chunk's bf16 conversion and the score GEMM into
// S (ld = chunk width). With gemm and convert both on, this is the GEMM part of
// topk's two-kernel path.
struct Inputs {
  int64_t users = 0, items = 0;
  int d = 0;
  const float* U = nullptr;
  const float* V = nullptr;
  const __nv_bfloat16* Ub = nullptr;  // whole U and V in bf16 (converted beforehand)
  const __nv_bfloat16* Vb = nullptr;
};

void tiled_pass(cudaStream_t s, cublasHandle_t h, TopkPrecision p, const Inputs& in,
                const Tiles& t, bool gemm, bool convert, float* S, __nv_bfloat16* Ut,
                __nv_bfloat16* Vt) {
  const int d = in.d;
  const bool bf16 = p == TopkPrecision::kBF16;
  const void* Uarg = bf16 ? static_cast<const void*>(in.Ub) : in.U;
  const void* Varg = bf16 ? static_cast<const void*>(in.Vb) : in.V;
  for (int64_t u0 = 0; u0 < in.users; u0 += t.users) {
    const int64_t nb = std::min(t.users, in.users - u0);
    if (convert) to_bf16(s, in.U + u0 * d, nb * d, Ut);
    for (int64_t c0 = 0; c0 < in.items; c0 += t.items) {
      const int64_t nc = std::min(t.items, in.items - c0);
      if (convert) to_bf16(s, in.V + c0 * d, nc * d, Vt);
      if (gemm) towerrec::cuda::topk_score_gemm(h, p, Varg, Uarg, c0, u0, nc, nb, d, S);
    }
  }
}

// The item lists of the first `rows` users, on the host.
std::vector<int32_t> copy_rows(cudaStream_t s, const int32_t* items, int64_t rows, int64_t k) {
  std::vector<int32_t> h(static_cast<size_t>(rows * k));
  if (h.empty()) return h;
  CUDA_CHECK(cudaMemcpyAsync(h.data(), items, h.size() * sizeof(int32_t), cudaMemcpyDeviceToHost, s));
  CUDA_CHECK(cudaStreamSynchronize(s));
  return h;
}

// Mean over users of |got ∩ ref| / |ref| (padding items -1 ignored).
double recall_at_k(const std::vector<int32_t>& ref, const std::vector<int32_t>& got, int64_t rows,
                   int64_t k) {
  double sum = 0;
  int64_t counted = 0;
  std::vector<int32_t> a, b;
  for (int64_t r = 0; r < rows; ++r) {
    a.clear();
    b.clear();
    for (int64_t j = 0; j < k; ++j) {
      if (ref[r * k + j] >= 0) a.push_back(ref[r * k + j]);
      if (got[r * k + j] >= 0) b.push_back(got[r * k + j]);
    }
    if (a.empty()) continue;
    std::sort(a.begin(), a.end());
    std::sort(b.begin(), b.end());
    size_t i = 0, j = 0, hits = 0;
    while (i < a.size() && j < b.size()) {
      if (a[i] < b[j]) ++i;
      else if (b[j] < a[i]) ++j;
      else {
        ++hits;
        ++i;
        ++j;
      }
    }
    sum += double(hits) / double(a.size());
    ++counted;
  }
  return counted ? sum / double(counted) : NAN;
}

}  // namespace
