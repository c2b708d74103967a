// The op contract. The model, trainer and recommender are written once against
// this interface; the CPU backend (kernels/cpu) is the reference and the CUDA
// backend (kernels/cuda) must agree with it. Ops are coarse (a whole fused layer,
// a whole loss) so the virtual call costs nothing measurable.
//
// Conventions for every op:
//  * All matrices are row-major float32; "X[n x k]" means n rows of k floats.
//  * Every pointer argument lives in the backend's memory (allocate()), except
//    where a comment says "host".
//  * Ops are asynchronous with respect to the host on a device backend; to_host()
//    and synchronize() wait.
//  * Ops fully overwrite their outputs unless the comment says "+=" : tests poison
//    outputs first, so an unwritten element is a bug.
//  * Index arrays are int32; row counts n >= 0 (n = 0 is a valid, empty call).
//  * Choices of algorithm or precision are arguments of the call (MatmulPrecision,
//    TopkPolicy in options.h), never state of the backend.
//
// Each op is a public non-virtual member (dense_forward) that checks its
// arguments once, for every backend (host/backend.cpp: sizes, strides, null
// pointers where the op reads or writes, group sizes; a towerrec::Error naming
// the op and the argument), then calls the protected pure virtual
// dense_forward_impl with the same arguments. Backends override only the
// _impl members and may assume what the entry point checked; checks that read
// the data (CSR offsets, exclusion lists) or concern one backend's limits stay
// in that backend. Every _impl is pure virtual: a backend, or a wrapper such as
// the profiler in bench/op_profile.h, that leaves one out does not compile.
// Memory, copy and fence members are plain pure virtuals (nothing to check
// beyond what each backend does).
//
// Adding an op `foo` (README, "Adding an op"): declare the public `foo` and the
// protected `foo_impl` here with the same arguments and the op's shapes in the
// comment; define `Backend::foo` in host/backend.cpp (the checks, then
// foo_impl); declare the override in kernels/op_overrides.inc (both backends
// include it) and define it in kernels/<family>/cpu.cpp and cuda.cu; forward it
// in ProfilingBackend (bench/op_profile.h) and stub it in tests/test_model.cpp.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "towerrec/options.h"

namespace towerrec {

enum class DeviceKind { kCPU, kCUDA };
enum class Activation { kNone, kReLU };

// Hyper-parameters of one Adam step. `step` is the 1-based count of updates
// including this one (used for bias correction). Decoupled weight decay (AdamW):
//   p -= lr * (mhat / (sqrt(vhat) + eps) + weight_decay * p)
struct AdamParams {
  float lr = 1e-3f;
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float eps = 1e-8f;
  float weight_decay = 0.0f;
  int64_t step = 1;
};

// The (user, item, label) pairs of one training batch, in backend memory.
// Users and items are *local* indices into the batch's unique-entity tower
// outputs U[n_users x d] and V[n_items x d]. The CSR arrays list, for each local
// user (item), the pair indices that touch it, in increasing pair order; they let
// backends reduce gradients per row without atomics, deterministically.
struct PairBatch {
  int64_t n_pairs = 0;
  const int32_t* user = nullptr;   // [n_pairs]
  const int32_t* item = nullptr;   // [n_pairs]
  const float* label = nullptr;    // [n_pairs], +1 positive, -1 negative
  int32_t n_users = 0;
  const int32_t* user_offsets = nullptr;  // [n_users + 1]
  const int32_t* user_pairs = nullptr;    // [n_pairs]
  int32_t n_items = 0;
  const int32_t* item_offsets = nullptr;  // [n_items + 1]
  const int32_t* item_pairs = nullptr;    // [n_pairs]
};

// The CSR of a PairBatch on the host: for key[p] in [0, n_rows) (the local user
// or item of pair p), offsets[n_rows + 1] and pairs[key.size()] listing each
// row's pair indices in increasing order (a counting sort). The trainer's
// batches and the tests' build theirs with it.
void build_pair_csr(const std::vector<int32_t>& key, int32_t n_rows, std::vector<int32_t>& offsets,
                    std::vector<int32_t>& pairs);

// How a backend runs what a policy asks for, for reports (towerrec info).
struct BackendCapabilities {
  // bfloat16 tower products (MatmulPrecision::kBF16) run as bfloat16 GEMMs;
  // false: the operands are rounded to bfloat16, then widened and multiplied
  // in float32 (the same numbers up to summation order, at the float32 rate).
  bool native_bf16_matmul = false;
  // The implementation of those products: oneDNN's ("gemm:jit", "ref", ...)
  // on the CPU, "cuBLAS" on CUDA.
  std::string bf16_matmul_impl;
};

class Backend {
 public:
  virtual ~Backend() = default;

  virtual DeviceKind kind() const = 0;
  // One line for logs: "cpu (OpenBLAS 0.3.21, 2 threads)", "cuda:0 NVIDIA H100 ...".
  virtual std::string describe() const = 0;
  virtual BackendCapabilities capabilities() const = 0;

  // ---- memory --------------------------------------------------------------
  virtual void* allocate(size_t bytes) = 0;
  virtual void deallocate(void* p) noexcept = 0;
  virtual void to_device(void* dst, const void* host_src, size_t bytes) = 0;
  // Waits for all queued work, then copies.
  virtual void to_host(void* host_dst, const void* src, size_t bytes) = 0;
  virtual void copy(void* dst, const void* src, size_t bytes) = 0;
  virtual void fill(float* p, int64_t n, float value) = 0;
  virtual void synchronize() = 0;
  // Bytes the backend can still allocate, or -1 when it cannot tell (the CPU
  // backend leaves that to the operating system).
  virtual int64_t memory_available() const = 0;

  // ---- staged (asynchronous) copies ------------------------------------------------
  // Host buffers that the device copies to and from directly (page-locked on
  // CUDA, ordinary aligned memory on the CPU). A copy from or to such a buffer is
  // queued like an op and returns at once; the host must not touch the buffer
  // until a fence recorded after the copy has passed. With them the host can plan
  // the next batch, or read the previous block's results, while the device works.
  virtual void* allocate_host(size_t bytes) = 0;
  virtual void deallocate_host(void* p) noexcept = 0;
  virtual void to_device_async(void* dst, const void* host_src, size_t bytes) = 0;
  virtual void to_host_async(void* host_dst, const void* src, size_t bytes) = 0;
  // A marker behind all work queued so far (0 on a backend whose ops complete
  // before they return). wait_fence(f) returns once everything queued before f
  // has finished; waiting on an old or zero fence returns at once.
  virtual uint64_t fence() = 0;
  virtual void wait_fence(uint64_t f) = 0;

  // ---- tower layers ----------------------------------------------------------
  // Y[n x out] = act(X[n x in] . W[in x out] + b[out]), the products in
  // `precision`. n >= 0, in > 0, out > 0; X, W, b, Y non-null when n > 0.
  void dense_forward(const float* X, int64_t n, int in, const float* W, const float* b, int out,
                     Activation act, float* Y, MatmulPrecision precision);

  // Backward of dense_forward, the products in `precision`. On entry dY[n x out]
  // is dLoss/dY; on exit it holds dZ = dY * act'(Z) (for ReLU: dY where Y > 0,
  // else 0).
  //   dW[in x out] = X^T . dZ,   db[out] = sum over rows of dZ,
  //   dX[n x in] = dZ . W^T      (skipped when dX is null).
  // dW and db always non-null (n = 0 zeroes them); X, W, dY (and Y for ReLU)
  // non-null when n > 0.
  void dense_backward(const float* X, int64_t n, int in, const float* W, int out, Activation act,
                      const float* Y, float* dY, float* dW, float* db, float* dX,
                      MatmulPrecision precision);

  // ---- embeddings and features ---------------------------------------------
  // out[r, col_off + c] = src[idx[r], c] for r < n, c < dim. `out` has row
  // stride ld_out; columns outside [col_off, col_off + dim) are untouched.
  // dim > 0, 0 <= col_off, col_off + dim <= ld_out.
  void gather_rows(const float* src, int dim, const int32_t* idx, int64_t n, float* out,
                   int ld_out, int col_off);

  // Mean-pooled embedding bag. Entity e = idx[r] owns the values
  // values[offsets[e] .. offsets[e+1]); out[r, col_off + c] is the mean of
  // table[v, c] over them, 0 for an empty bag. Layout as gather_rows.
  void bag_forward(const float* table, int dim, const int32_t* offsets, const int32_t* values,
                   const int32_t* idx, int64_t n, float* out, int ld_out, int col_off);

  // Backward of bag_forward: dtable[v, c] += dout[r, col_off + c] / bag_size for
  // every value v in the bag of idx[r]. dtable is accumulated into, not cleared.
  void bag_backward(const float* dout, int ld_dout, int col_off, const int32_t* offsets,
                    const int32_t* values, const int32_t* idx, int64_t n, int dim,
                    float* dtable);

  // Bag with learned pooling weights: w = softmax, over the bag of idx[r], of
  // logit[v] (one learned scalar per table row), and out[r, col_off + c] =
  // sum over the bag's values v of w_v * table[v, c]; 0 for an empty bag. A
  // repeated value counts once per occurrence. Layout as bag_forward.
  void bag_weighted_forward(const float* table, const float* logit, int dim, const int32_t* offsets,
                            const int32_t* values, const int32_t* idx, int64_t n, float* out,
                            int ld_out, int col_off);

  // Backward of bag_weighted_forward, given its output `pooled` and dout (both
  // [n x ld] with the window at col_off): for each value v_j of idx[r]'s bag,
  //   dtable[dvalues[j], c] += w_j * dout[r, col_off + c]            (dtable non-null)
  //   dlogit[v_j] += w_j * (table[v_j, :] - pooled[r, :]) . dout[r, :] (dlogit non-null)
  // dvalues names dtable's rows (null: values), so a caller may accumulate
  // into a compact table of the rows it touches. Both are accumulated into.
  void bag_weighted_backward(const float* dout, const float* pooled, int ld, int col_off,
                             const float* table, const float* logit, const int32_t* offsets,
                             const int32_t* values, const int32_t* dvalues, const int32_t* idx,
                             int64_t n, int dim, float* dtable, float* dlogit);

  // ---- loss ------------------------------------------------------------------
  // Every pair loss: d > 0, pb's counts >= 0, loss_out non-null; dU and the
  // user CSR offsets non-null when pb.n_users > 0, dV (and, where the loss
  // reduces through it, the item CSR offsets) when pb.n_items > 0; the pair
  // arrays when pb.n_pairs > 0.
  //
  // Fused logistic loss forward + backward over the pairs of `pb`:
  //   s_p = <U[user_p], V[item_p]>,   l_p = softplus(-y_p s_p) = log(1 + exp(-y_p s_p))
  //   *loss_out = scale * sum_p l_p                       (one float, backend memory)
  //   g_p = scale * dl_p/ds_p = -scale * y_p * sigmoid(-y_p s_p)
  //   dU[u] = sum_{p: user_p = u} g_p V[item_p],  dV[i] = sum_{p: item_p = i} g_p U[user_p]
  // pair_grad[n_pairs] is scratch that receives g_p.
  void logistic_loss(const float* U, const float* V, int d, const PairBatch& pb, float scale,
                     float* dU, float* dV, float* pair_grad, float* loss_out);

  // Fused BPR (pairwise) loss forward + backward. The pairs of `pb` come in
  // groups of `group` = 1 + k: the positive first, then its k negatives, all
  // with the same user (labels are ignored). For each group g with positive
  // score s_+ and each negative score s_j:
  //   l_gj = softplus(-(s_+ - s_j)),   *loss_out = scale * sum_gj l_gj
  //   pair_grad: g_+ = -scale * sum_j sigmoid(-(s_+ - s_j)),
  //              g_j = +scale * sigmoid(-(s_+ - s_j))
  // dU and dV are reduced from pair_grad exactly as in logistic_loss.
  // n_pairs must be a multiple of group; group >= 2.
  void bpr_loss(const float* U, const float* V, int d, const PairBatch& pb, int group,
                float scale, float* dU, float* dV, float* pair_grad, float* loss_out);

  // Sampled softmax over the batch's items (in-batch negatives) with logQ
  // correction. Each pair p of `pb` is a positive (labels ignored); its logits
  // over every local item j < pb.n_items are
  //   z_pj = <U[user_p], V[j]> / temperature - log_q[j]
  // and l_p = logsumexp_j z_pj - z_p,item_p. (log_q may be null: no correction.)
  //   *loss_out = scale * sum_p l_p
  //   dU[u] = sum_{p: user_p = u} sum_j scale (softmax_pj - [j = item_p]) V[j] / temperature
  //   dV[j] = sum_p scale (softmax_pj - [j = item_p]) U[user_p] / temperature
  // item_tile bounds the logits scratch: with 0 < item_tile < n_items the items
  // are taken in blocks of item_tile columns, twice (an online log-sum-exp over
  // the blocks, then the gradients block by block, the logits recomputed: one
  // more GEMM), so memory stays n_pairs x item_tile whatever the batch's item
  // count. item_tile <= 0 (or >= n_items): one block.
  // Scratch: logits [n_pairs x min(n_items, tile)]; pair_rows [n_pairs x d],
  // [2 x n_pairs x d] when tiled. Untiled, logits ends holding dLoss/dz.
  // temperature > 0 and finite; pairs need items.
  void softmax_loss(const float* U, const float* V, int d, const PairBatch& pb,
                    const float* log_q, float temperature, float scale, float* dU, float* dV,
                    float* logits, float* pair_rows, float* loss_out, int64_t item_tile);

  // Cosine contrastive loss (SimpleX, Mao et al. 2021) over the batch's items.
  // Each pair p of `pb` is a positive (labels ignored); with s_pj = <U[user_p],
  // V[j]> (cosines when the towers' outputs are L2-normalised), item weights
  // c_j = exp(-log_q[j]) (logQ correction: in-batch negatives come at their
  // sampling rate, so the rarer weigh more; c_j = 1 when log_q is null) and
  // w_pj = neg_weight * c_j / sum_{k != item_p} c_k (0 when item_p is alone):
  //   l_p = (1 - s_p,item_p) + sum_{j != item_p} w_pj max(0, s_pj - margin)
  //   *loss_out = scale * sum_p l_p;  dz_pj = -scale at the positive, scale * w_pj
  //   where s_pj > margin, else 0;  dU, dV the products of dz as in softmax_loss.
  // Scratch and item_tile as softmax_loss (blocks cost nothing extra here: one
  // pass, no normaliser). margin finite, neg_weight finite and >= 0.
  void ccl_loss(const float* U, const float* V, int d, const PairBatch& pb, const float* log_q,
                float margin, float neg_weight, float scale, float* dU, float* dV, float* logits,
                float* pair_rows, float* loss_out, int64_t item_tile);

  // ---- embedding transforms ------------------------------------------------------
  // Y[r] = X[r] / max(||X[r]||, 1e-12) for r < n rows of width d; inv_norm[r]
  // receives 1 / max(||X[r]||, 1e-12). Y may alias X.
  void l2_normalize(const float* X, int64_t n, int d, float* Y, float* inv_norm);
  // Backward of l2_normalize given its output Y and inv_norm:
  //   dX[r] = inv_norm[r] * (dY[r] - <dY[r], Y[r]> Y[r]).   dX may alias dY.
  void l2_normalize_backward(const float* Y, const float* inv_norm, const float* dY, int64_t n,
                             int d, float* dX);
  // Inverted dropout in place on n elements: x[j] = keep_j ? x[j] / (1 - p) : 0,
  // keep_j = rng::uniform(seed, rng::kDropout, offset + j) >= p (include/towerrec/rng.h).
  // Applying it with the same (seed, offset) to a gradient gives the backward.
  // 0 <= p <= 1.
  void dropout(float* x, int64_t n, float p, uint64_t seed, uint64_t offset);

  // ---- optimizers --------------------------------------------------------------
  // Dense Adam(W) over n contiguous parameters. p.step >= 1.
  void adam(float* param, const float* grad, float* m, float* v, int64_t n, const AdamParams& p);
  // Lazy (sparse) Adam on rows[0..n) of table[* x dim] with their moments;
  // the gradient of rows[r] is grad[r * ld_grad + col_off .. + dim). Rows must be
  // distinct. Weight decay applies only to the touched rows.
  void sparse_adam(float* table, float* m, float* v, int dim, const int32_t* rows, int64_t n,
                   const float* grad, int ld_grad, int col_off, const AdamParams& p);
  // p -= lr * (g + weight_decay * p)
  void sgd(float* param, const float* grad, int64_t n, float lr, float weight_decay);
  void sparse_sgd(float* table, int dim, const int32_t* rows, int64_t n, const float* grad,
                  int ld_grad, int col_off, float lr, float weight_decay);

  // ---- ranking -------------------------------------------------------------------
  // For each row r < n_users of U[n_users x d]: the k best items j < n_items by
  // score <U[r], V[j]>, best first; ties broken by lower item index. Items
  // excl_items[excl_offsets[r] .. excl_offsets[r+1]) are skipped (excl_offsets may
  // be null: nothing excluded). Where fewer than k items remain, the tail is
  // padded with item -1 and score -inf. out_items/out_scores are [n_users x k].
  // A NaN score ranks as -inf and is reported as -inf; -0 ranks as +0 (a tie)
  // and is reported as +0. `policy` chooses the version and the precision of
  // the scores (options.h); with the default policy every backend agrees with
  // the CPU reference. d > 0, k > 0, n_items <= INT_MAX.
  void topk(const float* U, int64_t n_users, const float* V, int64_t n_items, int d, int k,
            const int64_t* excl_offsets, const int32_t* excl_items, int32_t* out_items,
            float* out_scores, const TopkPolicy& policy);
  // Users per topk call that recommend_topk and evaluate_ranking use by
  // default: enough to keep the backend busy, few enough that the call's
  // buffers (a row of d floats and k results per user, two calls in flight)
  // stay bounded; topk bounds its own scratch whatever the user count.
  virtual int64_t preferred_topk_users(int32_t n_items, int d, int k) const = 0;

 protected:
  // The backends' ops, called by the entry points above after their checks,
  // with the same arguments.
  virtual void dense_forward_impl(const float* X, int64_t n, int in, const float* W,
                                  const float* b, int out, Activation act, float* Y,
                                  MatmulPrecision precision) = 0;
  virtual void dense_backward_impl(const float* X, int64_t n, int in, const float* W, int out,
                                   Activation act, const float* Y, float* dY, float* dW,
                                   float* db, float* dX, MatmulPrecision precision) = 0;
  virtual void gather_rows_impl(const float* src, int dim, const int32_t* idx, int64_t n,
                                float* out, int ld_out, int col_off) = 0;
  virtual void bag_forward_impl(const float* table, int dim, const int32_t* offsets,
                                const int32_t* values, const int32_t* idx, int64_t n, float* out,
                                int ld_out, int col_off) = 0;
  virtual void bag_backward_impl(const float* dout, int ld_dout, int col_off,
                                 const int32_t* offsets, const int32_t* values,
                                 const int32_t* idx, int64_t n, int dim, float* dtable) = 0;
  virtual void bag_weighted_forward_impl(const float* table, const float* logit, int dim,
                                         const int32_t* offsets, const int32_t* values,
                                         const int32_t* idx, int64_t n, float* out, int ld_out,
                                         int col_off) = 0;
  virtual void bag_weighted_backward_impl(const float* dout, const float* pooled, int ld, int col_off,
                                          const float* table, const float* logit,
                                          const int32_t* offsets, const int32_t* values,
                                          const int32_t* dvalues, const int32_t* idx, int64_t n,
                                          int dim, float* dtable, float* dlogit) = 0;
  virtual void logistic_loss_impl(const float* U, const float* V, int d, const PairBatch& pb,
                                  float scale, float* dU, float* dV, float* pair_grad,
                                  float* loss_out) = 0;
  virtual void bpr_loss_impl(const float* U, const float* V, int d, const PairBatch& pb,
                             int group, float scale, float* dU, float* dV, float* pair_grad,
                             float* loss_out) = 0;
  virtual void softmax_loss_impl(const float* U, const float* V, int d, const PairBatch& pb,
                                 const float* log_q, float temperature, float scale, float* dU,
                                 float* dV, float* logits, float* pair_rows, float* loss_out,
                                 int64_t item_tile) = 0;
  virtual void ccl_loss_impl(const float* U, const float* V, int d, const PairBatch& pb,
                             const float* log_q, float margin, float neg_weight, float scale,
                             float* dU, float* dV, float* logits, float* pair_rows,
                             float* loss_out, int64_t item_tile) = 0;
  virtual void l2_normalize_impl(const float* X, int64_t n, int d, float* Y,
                                 float* inv_norm) = 0;
  virtual void l2_normalize_backward_impl(const float* Y, const float* inv_norm,
                                          const float* dY, int64_t n, int d, float* dX) = 0;
  virtual void dropout_impl(float* x, int64_t n, float p, uint64_t seed, uint64_t offset) = 0;
  virtual void adam_impl(float* param, const float* grad, float* m, float* v, int64_t n,
                         const AdamParams& p) = 0;
  virtual void sparse_adam_impl(float* table, float* m, float* v, int dim, const int32_t* rows,
                                int64_t n, const float* grad, int ld_grad, int col_off,
                                const AdamParams& p) = 0;
  virtual void sgd_impl(float* param, const float* grad, int64_t n, float lr,
                        float weight_decay) = 0;
  virtual void sparse_sgd_impl(float* table, int dim, const int32_t* rows, int64_t n,
                               const float* grad, int ld_grad, int col_off, float lr,
                               float weight_decay) = 0;
  virtual void topk_impl(const float* U, int64_t n_users, const float* V, int64_t n_items, int d,
                         int k, const int64_t* excl_offsets, const int32_t* excl_items,
                         int32_t* out_items, float* out_scores, const TopkPolicy& policy) = 0;
};

// The CPU reference backend. threads <= 0 means all cores.
std::unique_ptr<Backend> make_cpu_backend(int threads = 0);

// True when this build has the CUDA backend and a device is present.
bool cuda_available();
// Throws towerrec::Error when the build lacks CUDA or no device is present.
std::unique_ptr<Backend> make_cuda_backend(int device = 0);

// "cpu", "cuda", "cuda:N" or "auto" (CUDA where available, else CPU).
std::unique_ptr<Backend> make_backend(const std::string& name, int cpu_threads = 0);

// Typed owning buffers in a backend's memory: DeviceArray in allocate()d
// memory, HostArray in allocate_host()d staging memory.
namespace detail {
struct DeviceMemory {
  static void* get(Backend* be, size_t bytes) { return be->allocate(bytes); }
  static void put(Backend* be, void* p) noexcept { be->deallocate(p); }
};
struct HostMemory {
  static void* get(Backend* be, size_t bytes) { return be->allocate_host(bytes); }
  static void put(Backend* be, void* p) noexcept { be->deallocate_host(p); }
};

template <typename T, typename Memory>
class BackendArray {
 public:
  BackendArray() = default;
  BackendArray(Backend* be, int64_t n) { reset(be, n); }
  ~BackendArray() { release(); }
  BackendArray(const BackendArray&) = delete;
  BackendArray& operator=(const BackendArray&) = delete;
  BackendArray(BackendArray&& o) noexcept { *this = std::move(o); }
  BackendArray& operator=(BackendArray&& o) noexcept {
    if (this != &o) {
      release();
      be_ = o.be_; p_ = o.p_; n_ = o.n_;
      o.be_ = nullptr; o.p_ = nullptr; o.n_ = 0;
    }
    return *this;
  }
  void reset(Backend* be, int64_t n) {
    release();
    be_ = be;
    n_ = n;
    p_ = n > 0 ? static_cast<T*>(Memory::get(be, sizeof(T) * static_cast<size_t>(n))) : nullptr;
  }
  // Grows (never shrinks) to at least n elements; contents are not kept. For
  // staging memory the caller makes sure no queued copy still uses the old buffer.
  void ensure(Backend* be, int64_t n) {
    if (be_ != be || n > n_) reset(be, n);
  }
  void release() noexcept {
    if (p_ && be_) Memory::put(be_, p_);
    p_ = nullptr;
    n_ = 0;
  }
  T* data() { return p_; }
  const T* data() const { return p_; }
  int64_t size() const { return n_; }
  size_t bytes() const { return sizeof(T) * static_cast<size_t>(n_); }

 private:
  Backend* be_ = nullptr;
  T* p_ = nullptr;
  int64_t n_ = 0;
};
}  // namespace detail

template <typename T>
using DeviceArray = detail::BackendArray<T, detail::DeviceMemory>;
template <typename T>
using HostArray = detail::BackendArray<T, detail::HostMemory>;

}  // namespace towerrec
