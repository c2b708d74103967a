// The CUDA backend: towerrec::Backend on one device.
//
// Context: the device chosen at construction, one non-blocking stream on which
// every copy, kernel and cuBLAS call is queued, a cuBLAS handle bound to that
// stream with its own workspace, and a caching allocator (caching_allocator.h) so that
// steady-state training never calls cudaMalloc/cudaFree. Ops never synchronize
// with the host; only to_host() and synchronize() wait.
//
// The ops are member functions defined one family per file:
//   kernels/cuda/cuda_backend.cu  context, memory ops, factory
//   kernels/dense/cuda.cu         dense_forward, dense_backward
//   kernels/embedding/cuda.cu     gather_rows, bag_forward, bag_backward
//   kernels/loss/cuda.cu          logistic_loss, bpr_loss, softmax_loss
//   kernels/transform/cuda.cu     l2_normalize, l2_normalize_backward, dropout
//   kernels/optim/cuda.cu         adam, sparse_adam, sgd, sparse_sgd
//   kernels/topk/cuda.cu          topk
// This header is internal to the backend (it includes CUDA headers); public
// headers under include/towerrec never do.
#pragma once

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "kernels/cuda/caching_allocator.h"
#include "kernels/cuda/cuda_check.h"
#include "towerrec/backend.h"

namespace towerrec::cuda {

// Threads per block for the simple elementwise kernels.
constexpr int kThreads = 256;

// Blocks for a grid-stride loop over n elements: enough to fill the device,
// never more than needed. The result depends only on n.
inline unsigned grid_for(int64_t n, int threads = kThreads) {
  const int64_t blocks = (n + threads - 1) / threads;
  return static_cast<unsigned>(blocks < 1 ? 1 : (blocks > 65535 ? 65535 : blocks));
}

// The two-kernel top-K's default score tile: users x items (32 MiB of fp32).
constexpr int64_t kTopkTileUsers = 512;
constexpr int64_t kTopkTileItems = 16384;

// Row kernels: one warp per row, kWarpsPerBlock rows per block.
constexpr int kWarpsPerBlock = 8;
inline unsigned warp_grid(int64_t rows) { return grid_for(rows, kWarpsPerBlock); }

// dst[n] = bf16(src[n]) rounded to nearest even, queued on `stream`: the one
// conversion of the bf16 products (top-K scores, benchmarks).
void to_bf16(cudaStream_t stream, const float* src, int64_t n, __nv_bfloat16* dst);

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int device);
  ~CudaBackend() override;
  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;

  DeviceKind kind() const override { return DeviceKind::kCUDA; }
  std::string describe() const override { return description_; }
  // bf16 tower products through cuBLAS (tensor cores).
  BackendCapabilities capabilities() const override { return {true, "cuBLAS"}; }

  void* allocate(size_t bytes) override;
  void deallocate(void* p) noexcept override;
  void to_device(void* dst, const void* host_src, size_t bytes) override;
  void to_host(void* host_dst, const void* src, size_t bytes) override;
  void copy(void* dst, const void* src, size_t bytes) override;
  void fill(float* p, int64_t n, float value) override;
  int64_t memory_available() const override;
  void synchronize() override;

  void* allocate_host(size_t bytes) override;
  void deallocate_host(void* p) noexcept override;
  void to_device_async(void* dst, const void* host_src, size_t bytes) override;
  void to_host_async(void* host_dst, const void* src, size_t bytes) override;
  uint64_t fence() override;
  void wait_fence(uint64_t f) override;

  int64_t preferred_topk_users(int32_t n_items, int d, int k) const override;

  // ---- backend internals, used by the op files -------------------------------
  cudaStream_t stream() const { return stream_; }
  cublasHandle_t cublas() const { return cublas_; }
  int device() const { return device_; }
  // Makes this backend's device current on the calling thread (every op's first line).
  void activate() const;
  // Column-major cuBLAS product for the tower layers in `precision`
  // (kernels/dense/cuda.cu).
  void tower_gemm(MatmulPrecision precision, cublasOperation_t op_a, cublasOperation_t op_b,
                  int m, int n, int k, const float* A, int lda, const float* B, int ldb, float* C,
                  int ldc);
  CachingAllocator::Stats allocator_stats() const { return alloc_.stats(); }
  // Fences recorded and not yet known to have passed (recycled by fence(),
  // dropped by wait_fence()).
  int64_t pending_fences() const { return static_cast<int64_t>(fences_.size()); }

  // Tile of the top-K score matrix: users per block and items per chunk. The
  // defaults bound the tile to 32 MiB; tests shrink them to cross chunk edges.
  void set_topk_tiles(int64_t users, int64_t items);
  // Whether the fused top-K kernel applies: fp32 scores, d <= 64, k <= 128
  // (kernels/topk/cuda.cu).
  static bool topk_fused_supported(TopkPrecision precision, int d, int k);

 protected:
  // The ops (backend.h), checked by Backend's entry points before these run.
#include "kernels/op_overrides.inc"

 private:
  // The softmax and ccl losses' empty batch: zero loss and gradients; true
  // when the batch has no pairs (kernels/loss/cuda.cu).
  bool zero_without_pairs(const PairBatch& pb, int d, float* dU, float* dV, float* loss_out);
  // softmax_loss over item blocks of `tile` columns (kernels/loss/cuda.cu).
  void softmax_tiled(const float* V, int d, const PairBatch& pb, const float* log_q,
                     float temperature, float scale, float* dU, float* dV, float* logits,
                     float* pair_rows, float* loss_out, int64_t tile);
  int device_ = 0;
  int sm_count_ = 1;  // streaming multiprocessors of the device
  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  void* cublas_workspace_ = nullptr;
  CachingAllocator alloc_;
  std::string description_;
  int64_t topk_users_per_tile_ = kTopkTileUsers;
  int64_t topk_items_per_tile_ = kTopkTileItems;
  // Fences: events recorded on the stream, oldest first, with their numbers;
  // passed ones go back to a free list.
  std::deque<std::pair<uint64_t, cudaEvent_t>> fences_;
  std::vector<cudaEvent_t> free_events_;
  uint64_t next_fence_ = 1;
  uint64_t passed_fence_ = 0;
};

// Host-side scratch buffer from the backend's allocator, returned on scope exit.
// Safe to drop while kernels using it are queued: reuse is stream-ordered.
template <typename T>
class Scratch {
 public:
  Scratch(CudaBackend& be, int64_t n)
      : be_(be), p_(n > 0 ? static_cast<T*>(be.allocate(sizeof(T) * static_cast<size_t>(n)))
                          : nullptr) {}
  ~Scratch() { be_.deallocate(p_); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  T* get() const { return p_; }

 private:
  CudaBackend& be_;
  T* p_;
};

}  // namespace towerrec::cuda
