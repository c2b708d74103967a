// The CPU reference backend: every op of the contract in include/towerrec/backend.h,
// with the tower layers' matrix products through oneDNN (cpu_gemm.h), the
// losses' and topk's through CBLAS (OpenBLAS), and the element-wise loops
// parallelised with OpenMP (static schedules, no scheduling-dependent float
// reductions: for a fixed thread count every op is bit-for-bit deterministic).
//
// Memory is ordinary host memory (64-byte aligned); to_device/to_host/copy are
// memcpy and synchronize() does nothing.
//
// The member functions are defined one family per file: kernels/cpu/cpu_backend.cpp
// (construction, memory, copies), kernels/<family>/cpu.cpp for the ops of
// dense, embedding, loss, transform, optim and topk; shared loop helpers are in
// kernels/cpu/cpu_util.h.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kernels/cpu/cpu_gemm.h"
#include "towerrec/backend.h"

namespace towerrec {

class CpuBackend final : public Backend {
 public:
  // threads <= 0: all cores.
  explicit CpuBackend(int threads);

  int threads() const { return threads_; }

  DeviceKind kind() const override { return DeviceKind::kCPU; }
  std::string describe() const override;
  BackendCapabilities capabilities() const override;

  void* allocate(size_t bytes) override;
  void deallocate(void* p) noexcept override;
  void to_device(void* dst, const void* host_src, size_t bytes) override;
  void to_host(void* host_dst, const void* src, size_t bytes) override;
  void copy(void* dst, const void* src, size_t bytes) override;
  void fill(float* p, int64_t n, float value) override;
  void synchronize() override {}
  int64_t memory_available() const override { return -1; }

  // Staging memory is ordinary memory and the copies complete before they
  // return, so every fence has passed when it is recorded.
  void* allocate_host(size_t bytes) override { return allocate(bytes); }
  void deallocate_host(void* p) noexcept override { deallocate(p); }
  void to_device_async(void* dst, const void* host_src, size_t bytes) override {
    to_device(dst, host_src, bytes);
  }
  void to_host_async(void* host_dst, const void* src, size_t bytes) override {
    to_host(host_dst, src, bytes);
  }
  uint64_t fence() override { return 0; }
  void wait_fence(uint64_t) override {}

  // 64 Mi / n_items users, within [1, 4096].
  int64_t preferred_topk_users(int32_t n_items, int d, int k) const override;

  // Users whose scores topk computes together (one sgemm per item chunk).
  static constexpr int64_t kTopkUserBlock = 512;
  // Items per scoring chunk (block x chunk floats of scores, 512 KiB: L2-resident
  // while the selection reads them).
  static constexpr int64_t kTopkItemChunk = 256;
  // For tests and tuning: the item chunk (results do not depend on it).
  void set_topk_item_chunk(int64_t items);

 protected:
  // The ops (backend.h), checked by Backend's entry points before these run.
#include "kernels/op_overrides.inc"

 private:
  // softmax_loss over item blocks of `tile` columns (kernels/loss/cpu.cpp).
  void softmax_loss_tiled(const float* V, int d, const PairBatch& pb, const float* log_q,
                          float temperature, float scale, float* dU, float* dV, float* logits,
                          float* pair_rows, float* loss_out, int64_t tile);
  int threads_;
  int64_t topk_item_chunk_ = kTopkItemChunk;
  std::vector<float> topk_scores_;  // [block x chunk] scratch, reused across calls
  CpuGemm gemm_;                     // the tower layers' products (oneDNN)
  std::vector<uint16_t> bf16_a_, bf16_b_, bf16_w_;  // bfloat16 operands of those products
  // x[0, count) rounded to bfloat16 into buf (grown as needed); returns buf's data.
  const uint16_t* bf16_copy(const float* x, int64_t count, std::vector<uint16_t>& buf);
  std::vector<float> bias_partial_;  // dense_backward's per-row-block bias sums
  std::vector<int32_t> bag_span_;    // the bags' value range per row (bag_forward/backward)
  std::vector<int64_t> bag_base_;    // bag_weighted_backward: each row's first (row, entry) slot
  std::vector<float> bag_w_, bag_s_;  // ... and each slot's weight and logit gradient
};

}  // namespace towerrec
