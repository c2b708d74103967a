// The op contract's entry points (include/towerrec/backend.h): each op checks
// its arguments here, once for every backend, then calls the backend's _impl.
// Checked: sizes and counts (n >= 0, widths > 0, counts within the int range
// the kernels and BLAS index with), strides and column offsets, group sizes,
// scalar parameters (dropout p, temperature, Adam step), and null pointers
// where the op reads or writes them (with n = 0 an op touches nothing and may
// get null pointers, except outputs it always writes). Not checked here: the
// data itself (CSR offsets, index ranges, exclusion lists), which lives in
// backend memory; the CPU backend checks what it can read, and each backend
// checks its own limits (the CUDA top-K's largest k, the fused path's shapes).
//
// Every failure is a towerrec::Error "file:line: <op>: <argument> ...".
#include <climits>
#include <cmath>
#include <cstdlib>
#include <string>
#include <type_traits>
#include <vector>

#include "towerrec/backend.h"
#include "towerrec/error.h"
#include "towerrec/options.h"

namespace towerrec {

namespace {

std::string arg(const char* name, int64_t v) { return std::string(name) + "=" + std::to_string(v); }

// Row layout of gather_rows / bag_forward / bag_backward / the sparse optimizers:
// columns [col_off, col_off + dim) of rows of stride ld.
void check_layout(const char* op, int64_t n, int dim, int ld, const char* ld_name, int col_off) {
  TOWERREC_CHECK(n >= 0, std::string(op) + ": negative row count " + arg("n", n));
  TOWERREC_CHECK(dim > 0, std::string(op) + ": " + arg("dim", dim) + " must be positive");
  TOWERREC_CHECK(col_off >= 0 && int64_t{col_off} + dim <= ld,
                 std::string(op) + ": columns [" + std::to_string(col_off) + ", " +
                     std::to_string(int64_t{col_off} + dim) + ") do not fit a row of " +
                     arg(ld_name, ld));
}

void check_dense_shape(const char* op, int64_t n, int in, int out) {
  TOWERREC_CHECK(n >= 0 && in > 0 && out > 0, std::string(op) + ": bad shape " + arg("n", n) +
                                                  " " + arg("in", in) + " " + arg("out", out));
  TOWERREC_CHECK(n <= INT_MAX, std::string(op) + ": more than INT_MAX rows in one call (" +
                                   arg("n", n) + ")");
}

// The pair losses' shared checks; `labels`: the loss reads pb.label;
// `item_csr`: it reduces dV through the item CSR.
void check_pair_batch(const char* op, const float* U, const float* V, int d, const PairBatch& pb,
                      const float* dU, const float* dV, const float* loss_out, bool labels,
                      bool item_csr) {
  const std::string name(op);
  TOWERREC_CHECK(d > 0 && pb.n_pairs >= 0 && pb.n_users >= 0 && pb.n_items >= 0,
                 name + ": bad shape " + arg("d", d) + " " + arg("n_pairs", pb.n_pairs) + " " +
                     arg("n_users", pb.n_users) + " " + arg("n_items", pb.n_items));
  TOWERREC_CHECK(loss_out != nullptr, name + ": null loss_out");
  if (pb.n_users > 0) TOWERREC_CHECK(dU && pb.user_offsets, name + ": null dU/user CSR");
  if (pb.n_items > 0)
    TOWERREC_CHECK(dV && (!item_csr || pb.item_offsets), name + ": null dV/item CSR");
  if (pb.n_pairs > 0) {
    TOWERREC_CHECK(U && V && pb.user && pb.item && (!labels || pb.label),
                   name + ": null U, V or pair array");
    TOWERREC_CHECK(pb.user_pairs && (!item_csr || pb.item_pairs),
                   name + ": null CSR pair lists");
    TOWERREC_CHECK(pb.n_users > 0, name + ": pairs but no users");
    if (item_csr) TOWERREC_CHECK(pb.n_items > 0, name + ": pairs but no items");
  }
}

}  // namespace

// ---- tower layers ----------------------------------------------------------------------

void Backend::dense_forward(const float* X, int64_t n, int in, const float* W, const float* b,
                            int out, Activation act, float* Y, MatmulPrecision precision) {
  check_dense_shape("dense_forward", n, in, out);
  if (n > 0) TOWERREC_CHECK(X && W && b && Y, "dense_forward: null X, W, b or Y");
  dense_forward_impl(X, n, in, W, b, out, act, Y, precision);
}

void Backend::dense_backward(const float* X, int64_t n, int in, const float* W, int out,
                             Activation act, const float* Y, float* dY, float* dW, float* db,
                             float* dX, MatmulPrecision precision) {
  check_dense_shape("dense_backward", n, in, out);
  TOWERREC_CHECK(dW && db, "dense_backward: null dW or db");
  if (n > 0) {
    TOWERREC_CHECK(X && W && dY, "dense_backward: null X, W or dY");
    TOWERREC_CHECK(act != Activation::kReLU || Y, "dense_backward: ReLU needs Y");
  }
  dense_backward_impl(X, n, in, W, out, act, Y, dY, dW, db, dX, precision);
}

// ---- embeddings and features -----------------------------------------------------------

void Backend::gather_rows(const float* src, int dim, const int32_t* idx, int64_t n, float* out,
                          int ld_out, int col_off) {
  check_layout("gather_rows", n, dim, ld_out, "ld_out", col_off);
  if (n > 0) TOWERREC_CHECK(src && idx && out, "gather_rows: null src, idx or out");
  gather_rows_impl(src, dim, idx, n, out, ld_out, col_off);
}

void Backend::bag_forward(const float* table, int dim, const int32_t* offsets,
                          const int32_t* values, const int32_t* idx, int64_t n, float* out,
                          int ld_out, int col_off) {
  check_layout("bag_forward", n, dim, ld_out, "ld_out", col_off);
  if (n > 0)
    TOWERREC_CHECK(table && offsets && idx && out, "bag_forward: null table, offsets, idx or out");
  bag_forward_impl(table, dim, offsets, values, idx, n, out, ld_out, col_off);
}

void Backend::bag_backward(const float* dout, int ld_dout, int col_off, const int32_t* offsets,
                           const int32_t* values, const int32_t* idx, int64_t n, int dim,
                           float* dtable) {
  check_layout("bag_backward", n, dim, ld_dout, "ld_dout", col_off);
  if (n > 0)
    TOWERREC_CHECK(dout && offsets && idx && dtable,
                   "bag_backward: null dout, offsets, idx or dtable");
  bag_backward_impl(dout, ld_dout, col_off, offsets, values, idx, n, dim, dtable);
}

void Backend::bag_weighted_forward(const float* table, const float* logit, int dim,
                                   const int32_t* offsets, const int32_t* values, const int32_t* idx,
                                   int64_t n, float* out, int ld_out, int col_off) {
  check_layout("bag_weighted_forward", n, dim, ld_out, "ld_out", col_off);
  if (n > 0)
    TOWERREC_CHECK(table && logit && offsets && idx && out,
                   "bag_weighted_forward: null table, logit, offsets, idx or out");
  bag_weighted_forward_impl(table, logit, dim, offsets, values, idx, n, out, ld_out, col_off);
}

void Backend::bag_weighted_backward(const float* dout, const float* pooled, int ld, int col_off,
                                    const float* table, const float* logit, const int32_t* offsets,
                                    const int32_t* values, const int32_t* dvalues, const int32_t* idx,
                                    int64_t n, int dim, float* dtable, float* dlogit) {
  check_layout("bag_weighted_backward", n, dim, ld, "ld", col_off);
  if (n > 0)
    TOWERREC_CHECK(dout && pooled && table && logit && offsets && idx,
                   "bag_weighted_backward: null dout, pooled, table, logit, offsets or idx");
  if (n == 0 || (!dtable && !dlogit)) return;
  bag_weighted_backward_impl(dout, pooled, ld, col_off, table, logit, offsets, values,
                             dvalues ? dvalues : values, idx, n, dim, dtable, dlogit);
}

// ---- loss ------------------------------------------------------------------------------

void Backend::logistic_loss(const float* U, const float* V, int d, const PairBatch& pb,
                            float scale, float* dU, float* dV, float* pair_grad,
                            float* loss_out) {
  check_pair_batch("logistic_loss", U, V, d, pb, dU, dV, loss_out, true, true);
  if (pb.n_pairs > 0) TOWERREC_CHECK(pair_grad, "logistic_loss: null pair_grad");
  logistic_loss_impl(U, V, d, pb, scale, dU, dV, pair_grad, loss_out);
}

void Backend::bpr_loss(const float* U, const float* V, int d, const PairBatch& pb, int group,
                       float scale, float* dU, float* dV, float* pair_grad, float* loss_out) {
  check_pair_batch("bpr_loss", U, V, d, pb, dU, dV, loss_out, false, true);
  TOWERREC_CHECK(group >= 2 && pb.n_pairs % group == 0,
                 "bpr_loss: n_pairs=" + std::to_string(pb.n_pairs) +
                     " is not a multiple of group=" + std::to_string(group) +
                     " (group must be >= 2)");
  if (pb.n_pairs > 0) TOWERREC_CHECK(pair_grad, "bpr_loss: null pair_grad");
  bpr_loss_impl(U, V, d, pb, group, scale, dU, dV, pair_grad, loss_out);
}

void Backend::softmax_loss(const float* U, const float* V, int d, const PairBatch& pb,
                           const float* log_q, float temperature, float scale, float* dU,
                           float* dV, float* logits, float* pair_rows, float* loss_out,
                           int64_t item_tile) {
  check_pair_batch("softmax_loss", U, V, d, pb, dU, dV, loss_out, false, false);
  TOWERREC_CHECK(temperature > 0.0f && std::isfinite(temperature),
                 "softmax_loss: temperature must be positive, got " + std::to_string(temperature));
  if (pb.n_pairs > 0) {
    TOWERREC_CHECK(pb.n_items > 0, "softmax_loss: pairs but no items");
    TOWERREC_CHECK(logits && pair_rows, "softmax_loss: null logits or pair_rows");
    TOWERREC_CHECK(pb.n_pairs <= INT_MAX, "softmax_loss: n_pairs=" +
                                              std::to_string(pb.n_pairs) + " exceeds INT_MAX");
  }
  softmax_loss_impl(U, V, d, pb, log_q, temperature, scale, dU, dV, logits, pair_rows, loss_out,
                    item_tile);
}

void Backend::ccl_loss(const float* U, const float* V, int d, const PairBatch& pb,
                       const float* log_q, float margin, float neg_weight, float scale, float* dU,
                       float* dV, float* logits, float* pair_rows, float* loss_out,
                       int64_t item_tile) {
  check_pair_batch("ccl_loss", U, V, d, pb, dU, dV, loss_out, false, false);
  TOWERREC_CHECK(std::isfinite(margin) && std::isfinite(neg_weight) && neg_weight >= 0.0f,
                 "ccl_loss: margin must be finite and neg_weight finite and >= 0, got margin " +
                     std::to_string(margin) + ", neg_weight " + std::to_string(neg_weight));
  if (pb.n_pairs > 0) {
    TOWERREC_CHECK(pb.n_items > 0, "ccl_loss: pairs but no items");
    TOWERREC_CHECK(logits && pair_rows, "ccl_loss: null logits or pair_rows");
    TOWERREC_CHECK(pb.n_pairs <= INT_MAX, "ccl_loss: n_pairs=" + std::to_string(pb.n_pairs) +
                                              " exceeds INT_MAX");
  }
  ccl_loss_impl(U, V, d, pb, log_q, margin, neg_weight, scale, dU, dV, logits, pair_rows,
                loss_out, item_tile);
}

// ---- embedding transforms --------------------------------------------------------------

void Backend::l2_normalize(const float* X, int64_t n, int d, float* Y, float* inv_norm) {
  TOWERREC_CHECK(n >= 0 && d > 0, "l2_normalize: bad shape " + arg("n", n) + " " + arg("d", d));
  if (n > 0) TOWERREC_CHECK(X && Y && inv_norm, "l2_normalize: null X, Y or inv_norm");
  l2_normalize_impl(X, n, d, Y, inv_norm);
}

void Backend::l2_normalize_backward(const float* Y, const float* inv_norm, const float* dY,
                                    int64_t n, int d, float* dX) {
  TOWERREC_CHECK(n >= 0 && d > 0,
                 "l2_normalize_backward: bad shape " + arg("n", n) + " " + arg("d", d));
  if (n > 0)
    TOWERREC_CHECK(Y && inv_norm && dY && dX, "l2_normalize_backward: null Y, inv_norm, dY or dX");
  l2_normalize_backward_impl(Y, inv_norm, dY, n, d, dX);
}

void Backend::dropout(float* x, int64_t n, float p, uint64_t seed, uint64_t offset) {
  TOWERREC_CHECK(n >= 0, "dropout: negative size " + arg("n", n));
  TOWERREC_CHECK(p >= 0.0f && p <= 1.0f, "dropout: p must be in [0, 1], got " + std::to_string(p));
  if (n > 0 && p > 0.0f) TOWERREC_CHECK(x, "dropout: null x");  // p = 0 touches nothing
  dropout_impl(x, n, p, seed, offset);
}

// ---- optimizers ------------------------------------------------------------------------

void Backend::adam(float* param, const float* grad, float* m, float* v, int64_t n,
                   const AdamParams& p) {
  TOWERREC_CHECK(n >= 0, "adam: negative size " + arg("n", n));
  TOWERREC_CHECK(p.step >= 1, "adam: step must be >= 1, got " + std::to_string(p.step));
  if (n > 0) TOWERREC_CHECK(param && grad && m && v, "adam: null param, grad, m or v");
  adam_impl(param, grad, m, v, n, p);
}

void Backend::sparse_adam(float* table, float* m, float* v, int dim, const int32_t* rows,
                          int64_t n, const float* grad, int ld_grad, int col_off,
                          const AdamParams& p) {
  check_layout("sparse_adam", n, dim, ld_grad, "ld_grad", col_off);
  TOWERREC_CHECK(p.step >= 1, "sparse_adam: step must be >= 1, got " + std::to_string(p.step));
  if (n > 0)
    TOWERREC_CHECK(table && m && v && rows && grad, "sparse_adam: null table, m, v, rows or grad");
  sparse_adam_impl(table, m, v, dim, rows, n, grad, ld_grad, col_off, p);
}

void Backend::sgd(float* param, const float* grad, int64_t n, float lr, float weight_decay) {
  TOWERREC_CHECK(n >= 0, "sgd: negative size " + arg("n", n));
  if (n > 0) TOWERREC_CHECK(param && grad, "sgd: null param or grad");
  sgd_impl(param, grad, n, lr, weight_decay);
}

void Backend::sparse_sgd(float* table, int dim, const int32_t* rows, int64_t n, const float* grad,
                         int ld_grad, int col_off, float lr, float weight_decay) {
  check_layout("sparse_sgd", n, dim, ld_grad, "ld_grad", col_off);
  if (n > 0) TOWERREC_CHECK(table && rows && grad, "sparse_sgd: null table, rows or grad");
  sparse_sgd_impl(table, dim, rows, n, grad, ld_grad, col_off, lr, weight_decay);
}

// ---- ranking ---------------------------------------------------------------------------

void Backend::topk(const float* U, int64_t n_users, const float* V, int64_t n_items, int d,
                   int k, const int64_t* excl_offsets, const int32_t* excl_items,
                   int32_t* out_items, float* out_scores, const TopkPolicy& policy) {
  TOWERREC_CHECK(n_users >= 0 && n_items >= 0 && d > 0 && k > 0,
                 "topk: bad shape " + arg("n_users", n_users) + " " + arg("n_items", n_items) +
                     " " + arg("d", d) + " " + arg("k", k));
  TOWERREC_CHECK(n_items <= INT_MAX, "topk: " + arg("n_items", n_items) + " exceeds INT_MAX");
  to_string(policy.path);  // an Error for a value outside the enums (a cast integer)
  to_string(policy.precision);
  if (n_users > 0) {
    TOWERREC_CHECK(U && out_items && out_scores, "topk: null U, out_items or out_scores");
    TOWERREC_CHECK(n_items == 0 || V, "topk: null V");
  }
  topk_impl(U, n_users, V, n_items, d, k, excl_offsets, excl_items, out_items, out_scores,
            policy);
}

// ---- pair batches ----------------------------------------------------------------------

void build_pair_csr(const std::vector<int32_t>& key, int32_t n_rows, std::vector<int32_t>& offsets,
                    std::vector<int32_t>& pairs) {
  TOWERREC_CHECK(n_rows >= 0, "build_pair_csr: negative row count " + arg("n_rows", n_rows));
  offsets.assign(static_cast<size_t>(n_rows) + 1, 0);
  for (int32_t r : key) ++offsets[static_cast<size_t>(r) + 1];
  for (int32_t r = 0; r < n_rows; ++r) offsets[r + 1] += offsets[r];
  pairs.resize(key.size());
  std::vector<int32_t> fill(offsets.begin(), offsets.end() - 1);
  for (size_t q = 0; q < key.size(); ++q)
    pairs[static_cast<size_t>(fill[key[q]]++)] = static_cast<int32_t>(q);
}

// ---- the policy's one override from the environment -------------------------------------

TopkPolicy topk_policy_with_env(TopkPolicy policy) {
  auto read = [](const char* name, auto& field) {
    const char* e = std::getenv(name);
    if (e == nullptr || *e == '\0') return;
    try {
      field = parse_enum<std::decay_t<decltype(field)>>(e);
    } catch (const Error& err) {
      throw Error(std::string("$") + name + ": " + err.what());
    }
  };
  read("TOWERREC_TOPK_PATH", policy.path);
  read("TOWERREC_TOPK_PRECISION", policy.precision);
  return policy;
}

}  // namespace towerrec
