// A Backend that forwards every op to another backend and adds up the time
// each op family takes (synchronizing after each call, so a device backend's
// queued work is attributed to the op that queued it). Used by
// `towerrec_e2e --profile` to show where a training epoch's time goes.
//
// It overrides every op's _impl (all of them pure virtual in Backend), so an op
// added to the contract and not forwarded here is a compile error, not a silent
// default: the static_assert at the end says so by name.
// Staged copies go to the inner backend's staged copies from its own staging
// memory, as without the wrapper.
#pragma once

#include <chrono>
#include <map>
#include <string>
#include <type_traits>

#include "towerrec/backend.h"

namespace towerrec::bench {

class ProfilingBackend final : public Backend {
 public:
  explicit ProfilingBackend(Backend& inner) : in_(inner) {}
  // Not copyable: a copy would share the inner backend under a second table
  // (and would be chosen over wrapping when the argument is a ProfilingBackend).
  ProfilingBackend(const ProfilingBackend&) = delete;
  ProfilingBackend& operator=(const ProfilingBackend&) = delete;
  struct Entry {
    double seconds = 0;
    int64_t calls = 0;
  };
  const std::map<std::string, Entry>& table() const { return table_; }
  void reset() { table_.clear(); }

  DeviceKind kind() const override { return in_.kind(); }
  std::string describe() const override { return in_.describe(); }
  BackendCapabilities capabilities() const override { return in_.capabilities(); }
  void* allocate(size_t b) override { return in_.allocate(b); }
  void deallocate(void* p) noexcept override { in_.deallocate(p); }
  void to_device(void* d, const void* s, size_t b) override { T t(*this, "copy (host<->backend)"); in_.to_device(d, s, b); }
  void to_host(void* d, const void* s, size_t b) override { T t(*this, "copy (host<->backend)"); in_.to_host(d, s, b); }
  void copy(void* d, const void* s, size_t b) override { T t(*this, "copy"); in_.copy(d, s, b); }
  void fill(float* p, int64_t n, float v) override { T t(*this, "fill (zero_grad)"); in_.fill(p, n, v); }
  void synchronize() override { in_.synchronize(); }
  int64_t memory_available() const override { return in_.memory_available(); }
  void* allocate_host(size_t b) override {
    T t(*this, "allocate_host");  // page-locked memory on CUDA: not cheap
    return in_.allocate_host(b);
  }
  void deallocate_host(void* p) noexcept override { in_.deallocate_host(p); }
  void to_device_async(void* d, const void* s, size_t b) override {
    T t(*this, "copy (staged host<->backend)");
    in_.to_device_async(d, s, b);
  }
  void to_host_async(void* d, const void* s, size_t b) override {
    T t(*this, "copy (staged host<->backend)");
    in_.to_host_async(d, s, b);
  }
  uint64_t fence() override {
    T t(*this, "fence");
    return in_.fence();
  }
  void wait_fence(uint64_t f) override {
    T t(*this, "wait_fence");
    in_.wait_fence(f);
  }
  int64_t preferred_topk_users(int32_t n_items, int d, int k) const override {
    return in_.preferred_topk_users(n_items, d, k);
  }

 protected:
  // The ops: timed, then through the inner backend's entry points (which check
  // the arguments again: cheap next to any op).
  void dense_forward_impl(const float* X, int64_t n, int i, const float* W, const float* b, int o,
                          Activation a, float* Y, MatmulPrecision pr) override {
    T t(*this, "dense_forward");
    in_.dense_forward(X, n, i, W, b, o, a, Y, pr);
  }
  void dense_backward_impl(const float* X, int64_t n, int i, const float* W, int o, Activation a,
                           const float* Y, float* dY, float* dW, float* db, float* dX,
                           MatmulPrecision pr) override {
    T t(*this, "dense_backward");
    in_.dense_backward(X, n, i, W, o, a, Y, dY, dW, db, dX, pr);
  }
  void gather_rows_impl(const float* s, int d, const int32_t* idx, int64_t n, float* o, int ld,
                        int c) override {
    T t(*this, "gather_rows");
    in_.gather_rows(s, d, idx, n, o, ld, c);
  }
  void bag_forward_impl(const float* tb, int d, const int32_t* off, const int32_t* v,
                        const int32_t* idx, int64_t n, float* o, int ld, int c) override {
    T t(*this, "bag_forward");
    in_.bag_forward(tb, d, off, v, idx, n, o, ld, c);
  }
  void bag_backward_impl(const float* g, int ld, int c, const int32_t* off, const int32_t* v,
                         const int32_t* idx, int64_t n, int d, float* dt) override {
    T t(*this, "bag_backward");
    in_.bag_backward(g, ld, c, off, v, idx, n, d, dt);
  }
  void bag_weighted_forward_impl(const float* tb, const float* lg, int d, const int32_t* off,
                                 const int32_t* v, const int32_t* idx, int64_t n, float* o, int ld,
                                 int c) override {
    T t(*this, "bag_weighted_forward");
    in_.bag_weighted_forward(tb, lg, d, off, v, idx, n, o, ld, c);
  }
  void bag_weighted_backward_impl(const float* g, const float* p, int ld, int c, const float* tb,
                                  const float* lg, const int32_t* off, const int32_t* v,
                                  const int32_t* dv, const int32_t* idx, int64_t n, int d, float* dt,
                                  float* dl) override {
    T t(*this, "bag_weighted_backward");
    in_.bag_weighted_backward(g, p, ld, c, tb, lg, off, v, dv, idx, n, d, dt, dl);
  }
  void logistic_loss_impl(const float* U, const float* V, int d, const PairBatch& pb, float s,
                          float* dU, float* dV, float* pg, float* lo) override {
    T t(*this, "logistic_loss");
    in_.logistic_loss(U, V, d, pb, s, dU, dV, pg, lo);
  }
  void bpr_loss_impl(const float* U, const float* V, int d, const PairBatch& pb, int g, float s,
                     float* dU, float* dV, float* pg, float* lo) override {
    T t(*this, "bpr_loss");
    in_.bpr_loss(U, V, d, pb, g, s, dU, dV, pg, lo);
  }
  void softmax_loss_impl(const float* U, const float* V, int d, const PairBatch& pb,
                         const float* lq, float temp, float s, float* dU, float* dV, float* lg,
                         float* pr, float* lo, int64_t tile) override {
    T t(*this, "softmax_loss");
    in_.softmax_loss(U, V, d, pb, lq, temp, s, dU, dV, lg, pr, lo, tile);
  }
  void ccl_loss_impl(const float* U, const float* V, int d, const PairBatch& pb,
                     const float* lq, float m, float w, float s, float* dU, float* dV, float* lg,
                     float* pr, float* lo, int64_t tile) override {
    T t(*this, "ccl_loss");
    in_.ccl_loss(U, V, d, pb, lq, m, w, s, dU, dV, lg, pr, lo, tile);
  }
  void l2_normalize_impl(const float* X, int64_t n, int d, float* Y, float* inv) override {
    T t(*this, "l2_normalize");
    in_.l2_normalize(X, n, d, Y, inv);
  }
  void l2_normalize_backward_impl(const float* Y, const float* inv, const float* dY, int64_t n,
                                  int d, float* dX) override {
    T t(*this, "l2_normalize_backward");
    in_.l2_normalize_backward(Y, inv, dY, n, d, dX);
  }
  void dropout_impl(float* x, int64_t n, float p, uint64_t seed, uint64_t off) override {
    T t(*this, "dropout");
    in_.dropout(x, n, p, seed, off);
  }
  void adam_impl(float* p, const float* g, float* m, float* v, int64_t n,
                 const AdamParams& a) override {
    T t(*this, "adam");
    in_.adam(p, g, m, v, n, a);
  }
  void sparse_adam_impl(float* tb, float* m, float* v, int d, const int32_t* rows, int64_t n,
                        const float* g, int ld, int c, const AdamParams& a) override {
    T t(*this, "sparse_adam");
    in_.sparse_adam(tb, m, v, d, rows, n, g, ld, c, a);
  }
  void sgd_impl(float* p, const float* g, int64_t n, float lr, float wd) override {
    T t(*this, "sgd");
    in_.sgd(p, g, n, lr, wd);
  }
  void sparse_sgd_impl(float* tb, int d, const int32_t* rows, int64_t n, const float* g, int ld,
                       int c, float lr, float wd) override {
    T t(*this, "sparse_sgd");
    in_.sparse_sgd(tb, d, rows, n, g, ld, c, lr, wd);
  }
  void topk_impl(const float* U, int64_t nu, const float* V, int64_t ni, int d, int k,
                 const int64_t* eo, const int32_t* ei, int32_t* oi, float* os,
                 const TopkPolicy& policy) override {
    T t(*this, "topk");
    in_.topk(U, nu, V, ni, d, k, eo, ei, oi, os, policy);
  }

 private:
  struct T {
    ProfilingBackend& pb;
    const char* name;
    std::chrono::steady_clock::time_point t0 = std::chrono::steady_clock::now();
    T(ProfilingBackend& p, const char* n) : pb(p), name(n) {}
    ~T() {
      pb.in_.synchronize();
      Entry& e = pb.table_[name];
      e.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      ++e.calls;
    }
  };
  Backend& in_;
  std::map<std::string, Entry> table_;
};
static_assert(!std::is_abstract_v<ProfilingBackend>, "ProfilingBackend must forward every op");

}  // namespace towerrec::bench
