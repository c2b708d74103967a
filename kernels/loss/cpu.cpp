// The CPU backend's loss family (logistic_loss, bpr_loss, softmax_loss): CpuBackend's
// definitions of these ops of the contract in include/towerrec/backend.h.
// Determinism and BLAS conventions: see kernels/cpu/cpu_backend.cpp.
#include "kernels/cpu/cpu_backend.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels/cpu/cpu_util.h"
#include "kernels/cpu/vec_exp.h"
#include "kernels/math.h"
#include "towerrec/error.h"

namespace towerrec {

using cpu::worth_parallel;

// ---- loss ------------------------------------------------------------------------

namespace {

// One row of the whole-matrix softmax, in place: z[0..n) holds the row's
// logits (scores / T); subtracts log_q (when given), takes the row max m, the
// float64 sum s of exp(z - m) and writes dz = scale_over_t (exp(z - m) / s -
// [j = pos]); returns the row's loss (m - z_pos) + log s. The loops are plain
// element-wise passes and reductions over vec_exp, compiled three times (AVX-512,
// AVX2 + FMA, the baseline) and picked once by the CPU's features, so the exp
// that dominated the step runs 8 or 16 lanes wide. Within one machine every run
// takes the same variant: results are deterministic there (the summation order
// of s follows the vector width, so two machines may differ in the last bits).
TOWERREC_ALWAYS_INLINE double softmax_row_body(float* z, int64_t n, const float* log_q, int32_t pos,
                                               float scale_over_t) {
  if (log_q) {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) z[j] -= log_q[j];
  }
  float m = z[0];
#pragma omp simd reduction(max : m)
  for (int64_t j = 1; j < n; ++j) m = z[j] > m ? z[j] : m;
  const float z_pos = z[pos];
  double s = 0.0;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < n; ++j) {
    const float e = cpu::vec_exp(z[j] - m);
    z[j] = e;
    s += static_cast<double>(e);
  }
  const float inv_s = static_cast<float>(1.0 / s);
  const float e_pos = z[pos];
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) z[j] = math::softmax_logit_grad(z[j], inv_s, false, scale_over_t);
  z[pos] = math::softmax_logit_grad(e_pos, inv_s, true, scale_over_t);
  return (static_cast<double>(m) - static_cast<double>(z_pos)) + std::log(s);
}

#if defined(__GNUC__) && defined(__x86_64__)
__attribute__((target("avx512f,avx512dq,avx512vl,avx2,fma"))) double softmax_row_avx512(
    float* z, int64_t n, const float* log_q, int32_t pos, float scale_over_t) {
  return softmax_row_body(z, n, log_q, pos, scale_over_t);
}
__attribute__((target("avx2,fma"))) double softmax_row_avx2(float* z, int64_t n, const float* log_q,
                                                              int32_t pos, float scale_over_t) {
  return softmax_row_body(z, n, log_q, pos, scale_over_t);
}
#endif
double softmax_row_baseline(float* z, int64_t n, const float* log_q, int32_t pos, float scale_over_t) {
  return softmax_row_body(z, n, log_q, pos, scale_over_t);
}

using SoftmaxRow = double (*)(float*, int64_t, const float*, int32_t, float);
SoftmaxRow pick_softmax_row() {
#if defined(__GNUC__) && defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512vl"))
    return softmax_row_avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return softmax_row_avx2;
#endif
  return softmax_row_baseline;
}
const SoftmaxRow softmax_row = pick_softmax_row();

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
// The sum over p < n of term(p) in double: fixed chunks of kLossChunk rows,
// chunk partials added in order, so it does not depend on the thread count.
template <typename Term>
double chunked_sum(int threads, int64_t n, Term term) {
  const int64_t n_chunks = (n + kLossChunk - 1) / kLossChunk;
  std::vector<double> partial(static_cast<size_t>(n_chunks), 0.0);
#pragma omp parallel for schedule(static) num_threads(threads) if (worth_parallel(n))
  for (int64_t ch = 0; ch < n_chunks; ++ch) {
    double sum = 0.0;
    for (int64_t p = ch * kLossChunk; p < std::min(n, (ch + 1) * kLossChunk); ++p) sum += term(p);
    partial[static_cast<size_t>(ch)] = sum;
  }
  double total = 0.0;
  for (double x : partial) total += x;
  return total;
}

// A batch without pairs: zero loss and gradients; true when it had none.
bool zero_without_pairs(const PairBatch& pb, int d, float* dU, float* dV, float* loss_out) {
  if (pb.n_pairs != 0) return false;
  if (pb.n_users > 0) std::fill(dU, dU + int64_t{pb.n_users} * d, 0.0f);
  if (pb.n_items > 0) std::fill(dV, dV + int64_t{pb.n_items} * d, 0.0f);
  *loss_out = 0.0f;
  return true;
}

// dU[u] = the sum of rows[p] over the user's pairs, in CSR (pair) order.
void sum_user_rows(int threads, const float* rows, int d, const PairBatch& pb, float* dU) {
  const int32_t nu = pb.n_users;
#pragma omp parallel for schedule(static) num_threads(threads) if (worth_parallel(pb.n_pairs * d))
  for (int32_t u = 0; u < nu; ++u) {
    float* g = dU + int64_t{u} * d;
    for (int c = 0; c < d; ++c) g[c] = 0.0f;
    for (int32_t q = pb.user_offsets[u]; q < pb.user_offsets[u + 1]; ++q) {
      const float* r = rows + int64_t{pb.user_pairs[q]} * d;
      for (int c = 0; c < d; ++c) g[c] += r[c];
    }
  }
}

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
                                   float* dV, float* logits, float* pair_rows, float* loss_out,
                                   int64_t item_tile) {
  const int64_t np = pb.n_pairs;
  const int64_t ni = pb.n_items;
  if (zero_without_pairs(pb, d, dU, dV, loss_out)) return;
  check_csr_covers("softmax_loss", pb, false);
  const int inp = static_cast<int>(np), ini = static_cast<int>(ni);

  // 1. Gather the user row of every pair.
#pragma omp parallel for schedule(static) num_threads(threads_) if (worth_parallel(np * d))
  for (int64_t p = 0; p < np; ++p)
    std::memcpy(pair_rows + p * d, U + int64_t{pb.user[p]} * d, sizeof(float) * d);
  if (item_tile > 0 && item_tile < ni) {
    softmax_loss_tiled(V, d, pb, log_q, temperature, scale, dU, dV, logits, pair_rows, loss_out,
                       item_tile);
    return;
  }

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
    // l_p = logsumexp - z_pos = (m - z_pos) + log S, S >= 1.
    for (int64_t p = ch * kLossChunk; p < p1; ++p)
      sum += softmax_row(logits + p * ni, ni, log_q, pb.item[p], scale_over_t);
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
  sum_user_rows(threads_, pair_rows, d, pb, dU);
}

// The softmax over item blocks of `tile` columns (the logits scratch holds one
// block), pair_rows[0 .. np x d) holding the gathered user rows on entry:
//  pass 1, per block: z = P . V_blk^T / T - log_q; per row the running max m
//    and sum s of exp(z - m) (double; rescaled by exp(m_old - m) as m grows),
//    and z at the positive;
//  pass 2, per block: z again (the same GEMM, so the same values), dz =
//    scale (exp(z - m) / s - [j = item_p]) / T in the block's scratch,
//    dV_blk = dz^T . P, dP (+)= dz . V_blk into pair_rows[np x d .. 2 np x d);
//  then l_p = (m - z_pos) + log s and dU from dP as untiled.
void CpuBackend::softmax_loss_tiled(const float* V, int d, const PairBatch& pb,
                                    const float* log_q, float temperature, float scale,
                                    float* dU, float* dV, float* logits, float* pair_rows,
                                    float* loss_out, int64_t tile) {
  const int64_t np = pb.n_pairs, ni = pb.n_items;
  const int inp = static_cast<int>(np);
  const float* P = pair_rows;
  float* dP = pair_rows + np * d;
  const float inv_t = 1.0f / temperature;
  const float scale_over_t = scale / temperature;
  std::vector<float> row_max(static_cast<size_t>(np), -std::numeric_limits<float>::infinity());
  std::vector<float> z_pos(static_cast<size_t>(np), 0.0f);
  std::vector<double> row_sum(static_cast<size_t>(np), 0.0);
  auto block_logits = [&](int64_t j0, int w) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, inp, w, d, inv_t, P, d, V + j0 * d, d,
                0.0f, logits, w);
  };
  for (int64_t j0 = 0; j0 < ni; j0 += tile) {
    const int w = static_cast<int>(std::min(tile, ni - j0));
    block_logits(j0, w);
#pragma omp parallel for schedule(static) num_threads(threads_) if (worth_parallel(np * w))
    for (int64_t p = 0; p < np; ++p) {
      float* z = logits + p * w;
      if (log_q)
        for (int j = 0; j < w; ++j) z[j] -= log_q[j0 + j];
      float m = row_max[p];
      for (int j = 0; j < w; ++j) m = std::max(m, z[j]);
      double s = 0.0;
      for (int j = 0; j < w; ++j) s += static_cast<double>(std::exp(z[j] - m));
      row_sum[p] = row_sum[p] * std::exp(static_cast<double>(row_max[p]) - m) + s;
      row_max[p] = m;
      const int64_t pos = pb.item[p] - j0;
      if (pos >= 0 && pos < w) z_pos[p] = z[pos];
    }
  }
  for (int64_t j0 = 0; j0 < ni; j0 += tile) {
    const int w = static_cast<int>(std::min(tile, ni - j0));
    block_logits(j0, w);
#pragma omp parallel for schedule(static) num_threads(threads_) if (worth_parallel(np * w))
    for (int64_t p = 0; p < np; ++p) {
      float* z = logits + p * w;
      const float m = row_max[p];
      const float inv_s = static_cast<float>(1.0 / row_sum[p]);
      const int64_t pos = pb.item[p] - j0;
      for (int j = 0; j < w; ++j) {
        const float zj = log_q ? z[j] - log_q[j0 + j] : z[j];
        z[j] = math::softmax_logit_grad(std::exp(zj - m), inv_s, j == pos, scale_over_t);
      }
    }
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, w, d, inp, 1.0f, logits, w, P, d, 0.0f,
                dV + j0 * d, d);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, inp, d, w, 1.0f, logits, w,
                V + j0 * d, d, j0 == 0 ? 0.0f : 1.0f, dP, d);
  }
  const double total = chunked_sum(threads_, np, [&](int64_t p) {
    return (static_cast<double>(row_max[p]) - static_cast<double>(z_pos[p])) + std::log(row_sum[p]);
  });
  *loss_out = static_cast<float>(static_cast<double>(scale) * total);
  sum_user_rows(threads_, dP, d, pb, dU);
}

// Cosine contrastive loss, in one pass over blocks of `item_tile` items (one
// block when untiled): P = the gathered user rows; per block S = P . V_blk^T
// (sgemm), per row the loss terms (summed in double, block after block) and
// dz written over S; dV_blk = dz^T . P and dP (+)= dz . V_blk (sgemm); then dU
// from dP in CSR order. Untiled, dP overwrites P once dV has read it.
void CpuBackend::ccl_loss_impl(const float* U, const float* V, int d, const PairBatch& pb,
                               const float* log_q, float margin, float neg_weight, float scale,
                               float* dU, float* dV, float* logits, float* pair_rows,
                               float* loss_out, int64_t item_tile) {
  const int64_t np = pb.n_pairs;
  const int64_t ni = pb.n_items;
  if (zero_without_pairs(pb, d, dU, dV, loss_out)) return;
  check_csr_covers("ccl_loss", pb, false);
  const int inp = static_cast<int>(np);
  const int64_t tile = item_tile > 0 && item_tile < ni ? item_tile : ni;
#pragma omp parallel for schedule(static) num_threads(threads_) if (worth_parallel(np * d))
  for (int64_t p = 0; p < np; ++p)
    std::memcpy(pair_rows + p * d, U + int64_t{pb.user[p]} * d, sizeof(float) * d);
  const float* P = pair_rows;
  float* dP = tile < ni ? pair_rows + np * d : pair_rows;
  // Item weights c_j = exp(-log_q_j), shifted so the largest is 1 (the
  // weights are ratios), and their sum in double in item order.
  std::vector<float> c;
  double c_sum = static_cast<double>(ni);
  if (log_q) {
    float shift = -log_q[0];
    for (int64_t j = 1; j < ni; ++j) shift = std::max(shift, -log_q[j]);
    c.resize(static_cast<size_t>(ni));
    c_sum = 0.0;
    for (int64_t j = 0; j < ni; ++j) c_sum += static_cast<double>(c[j] = math::ccl_item_weight(log_q[j], shift));
  }
  // Per pair: neg_weight over the other items' weight sum.
  std::vector<double> row_w(static_cast<size_t>(np));
  for (int64_t p = 0; p < np; ++p) {
    const double others = c_sum - (log_q ? static_cast<double>(c[pb.item[p]]) : 1.0);
    row_w[p] = others > 0.0 ? static_cast<double>(neg_weight) / others : 0.0;
  }
  std::vector<double> row_loss(static_cast<size_t>(np), 0.0);
  for (int64_t j0 = 0; j0 < ni; j0 += tile) {
    const int bw = static_cast<int>(std::min(tile, ni - j0));
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, inp, bw, d, 1.0f, P, d, V + j0 * d, d,
                0.0f, logits, bw);
#pragma omp parallel for schedule(static) num_threads(threads_) if (worth_parallel(np * bw))
    for (int64_t p = 0; p < np; ++p) {
      float* z = logits + p * bw;
      const int64_t pos = pb.item[p] - j0;
      const float g_neg = static_cast<float>(scale * row_w[p]);
      double hinge = 0.0, positive = 0.0;
      for (int j = 0; j < bw; ++j) {
        const float cj = log_q ? c[j0 + j] : 1.0f;
        if (j == pos) {
          positive = 1.0 - static_cast<double>(z[j]);
          z[j] = -scale;
        } else {
          hinge += static_cast<double>(cj) * static_cast<double>(math::ccl_hinge(z[j], margin));
          z[j] = math::ccl_negative_grad(z[j], margin, g_neg * cj);
        }
      }
      row_loss[p] += positive + row_w[p] * hinge;
    }
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, bw, d, inp, 1.0f, logits, bw, P, d, 0.0f,
                dV + j0 * d, d);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, inp, d, bw, 1.0f, logits, bw,
                V + j0 * d, d, j0 == 0 ? 0.0f : 1.0f, dP, d);
  }
  const double total = chunked_sum(threads_, np, [&](int64_t p) { return row_loss[p]; });
  *loss_out = static_cast<float>(static_cast<double>(scale) * total);
  sum_user_rows(threads_, dP, d, pb, dU);
}

}  // namespace towerrec
