// The CPU backend's loss family (logistic_loss, bpr_loss, softmax_loss): CpuBackend's
// definitions of these ops of the contract in include/towerrec/backend.h.
// Determinism and BLAS conventions: see kernels/cpu/cpu_backend.cpp.
#include "kernels/cpu/cpu_backend.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/cpu/cpu_util.h"
#include "kernels/math.h"
#include "towerrec/error.h"

namespace towerrec {

using cpu::worth_parallel;

// ---- loss ------------------------------------------------------------------------

namespace {

// Pairs are summed into the loss in fixed chunks (chunk partials added in chunk
// order), so the float64 loss does not depend on the thread count.
constexpr int64_t kLossChunk = 1024;

// The CSR arrays cover the pairs (the entry points in host/backend.cpp check
// shapes and pointers; this reads the offsets, which only the CPU can do
// without a copy). `item_csr`: the loss reduces dV through the item CSR.
void check_csr_covers(const char* op, const PairBatch& pb, bool item_csr) {
  const int64_t np = pb.n_pairs;
  if (np == 0) return;
  TOWERREC_CHECK(pb.user_offsets[pb.n_users] == np,
                 std::string(op) + ": user CSR does not cover the pairs");
  if (item_csr)
    TOWERREC_CHECK(pb.item_offsets[pb.n_items] == np,
                   std::string(op) + ": item CSR does not cover the pairs");
}

// dU[u] = sum_{p: user_p = u} g_p V[item_p] and dV[i] = sum_{p: item_p = i} g_p U[user_p],
// each row reduced in CSR (increasing pair) order; no atomics.
void reduce_pair_grads(int threads, const float* U, const float* V, int d, const PairBatch& pb,
                       const float* pair_grad, float* dU, float* dV) {
  const int64_t np = pb.n_pairs;
  const int32_t nu = pb.n_users, ni = pb.n_items;
#pragma omp parallel for schedule(static) num_threads(threads) if (worth_parallel(np * d))
  for (int32_t u = 0; u < nu; ++u) {
    float* g = dU + int64_t{u} * d;
    for (int c = 0; c < d; ++c) g[c] = 0.0f;
    for (int32_t q = pb.user_offsets[u]; q < pb.user_offsets[u + 1]; ++q) {
      const int32_t p = pb.user_pairs[q];
      const float w = pair_grad[p];
      const float* v = V + int64_t{pb.item[p]} * d;
      for (int c = 0; c < d; ++c) g[c] += w * v[c];
    }
  }
#pragma omp parallel for schedule(static) num_threads(threads) if (worth_parallel(np * d))
  for (int32_t i = 0; i < ni; ++i) {
    float* g = dV + int64_t{i} * d;
    for (int c = 0; c < d; ++c) g[c] = 0.0f;
    for (int32_t q = pb.item_offsets[i]; q < pb.item_offsets[i + 1]; ++q) {
      const int32_t p = pb.item_pairs[q];
      const float w = pair_grad[p];
      const float* u = U + int64_t{pb.user[p]} * d;
      for (int c = 0; c < d; ++c) g[c] += w * u[c];
    }
  }
}

// Sixteen independent partial sums (vectorised, and no chain of dependent
// adds), folded pairwise, then the tail. Fixed order: the result depends only
// on the inputs.
inline float dot(const float* a, const float* b, int d) {
  float acc[16] = {};
  int c = 0;
  for (; c + 16 <= d; c += 16)
    for (int j = 0; j < 16; ++j) acc[j] += a[c + j] * b[c + j];
  for (int w = 8; w >= 1; w /= 2)
    for (int j = 0; j < w; ++j) acc[j] += acc[j + w];
  float s = acc[0];
  for (; c < d; ++c) s += a[c] * b[c];
  return s;
}

}  // namespace

void CpuBackend::logistic_loss_impl(const float* U, const float* V, int d, const PairBatch& pb,
                                    float scale, float* dU, float* dV, float* pair_grad,
                                    float* loss_out) {
  check_csr_covers("logistic_loss", pb, true);
  const int64_t np = pb.n_pairs;

  // Pass 1: scores, pair gradients, and the loss summed in double over fixed
  // chunks of pairs.
  const int64_t n_chunks = (np + kLossChunk - 1) / kLossChunk;
  std::vector<double> partial(static_cast<size_t>(n_chunks), 0.0);
#pragma omp parallel for schedule(static) num_threads(threads_) if (worth_parallel(np * d))
  for (int64_t ch = 0; ch < n_chunks; ++ch) {
    const int64_t p1 = std::min(np, (ch + 1) * kLossChunk);
    // loss_p = max(x, 0) + log1p(e) with x = -y s and e = exp(-|x|) (as in
    // math::logistic_loss). The log1p terms are summed as the log of a product
    // of (1 + e) in double, one log per 256 pairs instead of one per pair; e
    // below 2^-30 adds e directly (log1p(e) = e to double precision there).
    double lin = 0.0, tiny = 0.0, logs = 0.0, prod = 1.0;
    int in_prod = 0;
    for (int64_t p = ch * kLossChunk; p < p1; ++p) {
      const float s = dot(U + int64_t{pb.user[p]} * d, V + int64_t{pb.item[p]} * d, d);
      const float y = pb.label[p];
      const math::LogisticTerms t = math::logistic_terms(s, y);
      pair_grad[p] = scale * math::logistic_grad(t, y);
      if (t.x > 0.0f) lin += static_cast<double>(t.x);
      if (t.e < 0x1p-30f) {
        tiny += static_cast<double>(t.e);
      } else {
        prod *= 1.0 + static_cast<double>(t.e);
        if (++in_prod == 256) {
          logs += std::log(prod);
          prod = 1.0;
          in_prod = 0;
        }
      }
    }
    partial[static_cast<size_t>(ch)] = lin + tiny + logs + std::log(prod);
  }
  double total = 0.0;
  for (double x : partial) total += x;
  *loss_out = static_cast<float>(static_cast<double>(scale) * total);

  // Pass 2: per-row reductions in CSR order.
  reduce_pair_grads(threads_, U, V, d, pb, pair_grad, dU, dV);
}

// BPR: groups of 1 + k pairs (positive first). Pass 1 runs over fixed chunks of
// groups: each group computes its k + 1 scores, the loss terms (summed in double
// in group order) and the pair gradients; pass 2 is the logistic loss's CSR
// reduction.
void CpuBackend::bpr_loss_impl(const float* U, const float* V, int d, const PairBatch& pb,
                               int group, float scale, float* dU, float* dV, float* pair_grad,
                               float* loss_out) {
  check_csr_covers("bpr_loss", pb, true);
  const int64_t np = pb.n_pairs;
  const int64_t n_groups = np / group;
  for (int64_t g = 0; g < n_groups; ++g)
    for (int j = 1; j < group; ++j)
      TOWERREC_CHECK(pb.user[g * group + j] == pb.user[g * group],
                     "bpr_loss: group " + std::to_string(g) + " mixes users");

  constexpr int64_t kGroupChunk = 256;
  const int64_t n_chunks = (n_groups + kGroupChunk - 1) / kGroupChunk;
  std::vector<double> partial(static_cast<size_t>(n_chunks), 0.0);
#pragma omp parallel for schedule(static) num_threads(threads_) if (worth_parallel(np * d))
  for (int64_t ch = 0; ch < n_chunks; ++ch) {
    const int64_t g1 = std::min(n_groups, (ch + 1) * kGroupChunk);
    double sum = 0.0;
    for (int64_t g = ch * kGroupChunk; g < g1; ++g) {
      const int64_t base = g * group;
      const float* u = U + int64_t{pb.user[base]} * d;
      const float s_pos = dot(u, V + int64_t{pb.item[base]} * d, d);
      float w_pos = 0.0f;
      for (int j = 1; j < group; ++j) {
        const int64_t p = base + j;
        const float s_neg = dot(u, V + int64_t{pb.item[p]} * d, d);
        const float w = math::bpr_weight(s_pos, s_neg);
        sum += static_cast<double>(math::bpr_loss(s_pos, s_neg));
        w_pos += w;
        pair_grad[p] = scale * w;
      }
      pair_grad[base] = -scale * w_pos;
    }
    partial[static_cast<size_t>(ch)] = sum;
  }
  double total = 0.0;
  for (double x : partial) total += x;
  *loss_out = static_cast<float>(static_cast<double>(scale) * total);

  reduce_pair_grads(threads_, U, V, d, pb, pair_grad, dU, dV);
}

// Sampled softmax over the batch's items, in five steps:
//  1. pair_rows[p] = U[user_p]                                  (gather)
//  2. logits[np x ni] = pair_rows . V^T / T                      (sgemm), then - log_q[j]
//  3. per row p: m = max_j z, e_j = exp(z_j - m), S = sum e_j (double);
//     l_p = m + log S - z_p,item_p; dz_pj = scale (e_j / S - [j = item_p]) / T,
//     written over the logits
//  4. dV[ni x d] = dZ^T . pair_rows                              (sgemm)
//  5. pair_rows = dZ . V (sgemm), then dU[u] = sum of pair_rows[p] over the user's
//     pairs in CSR order.
// Losses are summed per fixed chunk of rows in double, chunk partials in order.
void CpuBackend::softmax_loss_impl(const float* U, const float* V, int d, const PairBatch& pb,
                                   const float* log_q, float temperature, float scale, float* dU,
                                   float* dV, float* logits, float* pair_rows, float* loss_out) {
  const int64_t np = pb.n_pairs;
  const int64_t ni = pb.n_items;
  const int32_t nu = pb.n_users;
  if (np == 0) {
    if (nu > 0) fill(dU, int64_t{nu} * d, 0.0f);
    if (ni > 0) fill(dV, ni * d, 0.0f);
    *loss_out = 0.0f;
    return;
  }
  check_csr_covers("softmax_loss", pb, false);
  const int inp = static_cast<int>(np), ini = static_cast<int>(ni);

  // 1. Gather the user row of every pair.
#pragma omp parallel for schedule(static) num_threads(threads_) if (worth_parallel(np * d))
  for (int64_t p = 0; p < np; ++p)
    std::memcpy(pair_rows + p * d, U + int64_t{pb.user[p]} * d, sizeof(float) * d);

  // 2. logits[np x ni] = pair_rows[np x d] . V^T[d x ni] / T
  const float inv_t = 1.0f / temperature;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, inp, ini, d, inv_t, pair_rows, d, V, d,
              0.0f, logits, ini);

  // 3. Row softmax, loss, and dLogits in place.
  const float scale_over_t = scale / temperature;
  const int64_t n_chunks = (np + kLossChunk - 1) / kLossChunk;
  std::vector<double> partial(static_cast<size_t>(n_chunks), 0.0);
#pragma omp parallel for schedule(static) num_threads(threads_) if (worth_parallel(np * ni))
  for (int64_t ch = 0; ch < n_chunks; ++ch) {
    const int64_t p1 = std::min(np, (ch + 1) * kLossChunk);
    double sum = 0.0;
    for (int64_t p = ch * kLossChunk; p < p1; ++p) {
      float* z = logits + p * ni;
      if (log_q)
        for (int64_t j = 0; j < ni; ++j) z[j] -= log_q[j];
      float m = z[0];
      for (int64_t j = 1; j < ni; ++j) m = std::max(m, z[j]);
      const int32_t pos = pb.item[p];
      const float z_pos = z[pos];
      double s = 0.0;
      for (int64_t j = 0; j < ni; ++j) {
        z[j] = std::exp(z[j] - m);
        s += static_cast<double>(z[j]);
      }
      // l_p = logsumexp - z_pos = (m - z_pos) + log S, S >= 1.
      sum += (static_cast<double>(m) - static_cast<double>(z_pos)) + std::log(s);
      const float inv_s = static_cast<float>(1.0 / s);
      for (int64_t j = 0; j < ni; ++j)
        z[j] = math::softmax_logit_grad(z[j], inv_s, j == pos, scale_over_t);
    }
    partial[static_cast<size_t>(ch)] = sum;
  }
  double total = 0.0;
  for (double x : partial) total += x;
  *loss_out = static_cast<float>(static_cast<double>(scale) * total);

  // 4. dV[ni x d] = dZ^T[ni x np] . pair_rows[np x d]
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, ini, d, inp, 1.0f, logits, ini, pair_rows,
              d, 0.0f, dV, d);
  // 5. pair_rows[np x d] = dZ[np x ni] . V[ni x d], then reduce per user.
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, inp, d, ini, 1.0f, logits, ini, V, d,
              0.0f, pair_rows, d);
#pragma omp parallel for schedule(static) num_threads(threads_) if (worth_parallel(np * d))
  for (int32_t u = 0; u < nu; ++u) {
    float* g = dU + int64_t{u} * d;
    for (int c = 0; c < d; ++c) g[c] = 0.0f;
    for (int32_t q = pb.user_offsets[u]; q < pb.user_offsets[u + 1]; ++q) {
      const float* r = pair_rows + int64_t{pb.user_pairs[q]} * d;
      for (int c = 0; c < d; ++c) g[c] += r[c];
    }
  }
}

}  // namespace towerrec
