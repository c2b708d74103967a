// The CPU backend's top-K family (topk): CpuBackend's
// definitions of these ops of the contract in include/towerrec/backend.h.
// Determinism and BLAS conventions: see kernels/cpu/cpu_backend.cpp.
#include "kernels/cpu/cpu_backend.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu/cpu_util.h"
#include "towerrec/error.h"

namespace towerrec {

using cpu::worth_parallel;

namespace {

// Ranking key of a score: NaN ranks like -inf.
inline float rank_key(float s) {
  if (std::isnan(s)) return -std::numeric_limits<float>::infinity();
  return s == 0.0f ? 0.0f : s;  // -0 ties with +0
}

}  // namespace

// ---- ranking ----------------------------------------------------------------------------
//
// Users are processed in blocks of up to kTopkUserBlock, items in chunks of
// topk_item_chunk_ (a block's chunk of scores, 512 x 256 floats = 512 KiB, stays
// in L2; 512 users per block amortise sgemm's packing of each V chunk, which cost
// 20% of the time at 64 users). Per chunk: one sgemm scores the block against the
// chunk's items, then each user of the block (in parallel, rows are independent)
// folds the hot scores into its bounded candidate set: a binary heap of its k best so far under
// (key desc, item asc), worst on top. Items arrive in increasing index order, so
// once the heap is full a new item enters only if its score beats the worst key
// strictly (a tie loses on the index): almost every score is rejected by one
// compare, done a block of 64 at a time (topk_skip, AVX2 where the CPU has it). The key is the score with
// NaN mapped to -inf and -0 to +0, and out_scores reports the key, exactly as the
// CUDA backend's key mapping (kernels/topk/cuda.cu) does. Excluded items are checked
// only for candidates that pass the threshold, against the user's sorted exclusion
// list with a cursor that moves forward with the item index.
//
// The result is exact and does not depend on the chunking or the thread count
// (selection is a total order; every score is the same sgemm dot product).

namespace {

struct TopkCand {
  float key;  // rank_key(score), also the score reported
  int32_t item;
};

// Heap order: a "less than" b when a ranks better, so the heap top is the worst.
inline bool topk_better(const TopkCand& a, const TopkCand& b) {
  return a.key > b.key || (a.key == b.key && a.item < b.item);
}

// One user's selection state across the item chunks.
struct TopkRow {
  TopkCand* heap;        // [k]
  int32_t size;          // candidates held
  const int32_t* excl;   // sorted exclusion list
  int64_t n_excl;
  int64_t cursor;        // first exclusion entry >= every item seen so far
};

inline bool topk_excluded(TopkRow& st, int32_t item) {
  while (st.cursor < st.n_excl && st.excl[st.cursor] < item) ++st.cursor;
  return st.cursor < st.n_excl && st.excl[st.cursor] == item;
}

// Scores tested at once by topk_skip.
constexpr int64_t kTopkScanBlock = 64;

// From j, skips whole blocks of kTopkScanBlock scores that are all <= thr (or NaN);
// returns the start of the first block with a score above thr, or of the tail
// shorter than a block. Compiled also for AVX2 (chosen at run time): the test is
// a plain compare, so both versions return the same index.
__attribute__((target_clones("avx2", "default")))
int64_t topk_skip(const float* s, int64_t j, int64_t w, float thr) {
  for (; j + kTopkScanBlock <= w; j += kTopkScanBlock) {
    int hit = 0;
#pragma omp simd reduction(| : hit)
    for (int64_t t = 0; t < kTopkScanBlock; ++t) hit |= s[j + t] > thr ? 1 : 0;
    if (hit) return j;
  }
  return j;
}

// Folds scores s[0 .. w) of items item0 .. item0 + w into the row's heap of size k.
void topk_fold(TopkRow& st, int k, const float* s, int64_t w, int32_t item0) {
  int64_t j = 0;
  // Fill phase: every non-excluded item enters until k are held.
  for (; j < w && st.size < k; ++j) {
    const int32_t it = item0 + static_cast<int32_t>(j);
    if (st.n_excl && topk_excluded(st, it)) continue;
    st.heap[st.size++] = TopkCand{rank_key(s[j]), it};
    std::push_heap(st.heap, st.heap + st.size, topk_better);
  }
  if (j >= w) return;
  float thr = st.heap[0].key;
  // Replaces the worst candidate by item j (its score beats the threshold).
  auto take = [&](int64_t jj) {
    const int32_t it = item0 + static_cast<int32_t>(jj);
    if (st.n_excl && topk_excluded(st, it)) return;
    std::pop_heap(st.heap, st.heap + k, topk_better);
    st.heap[k - 1] = TopkCand{rank_key(s[jj]), it};  // s > thr: not NaN, but maybe -0
    std::push_heap(st.heap, st.heap + k, topk_better);
    thr = st.heap[0].key;
  };
  while (j < w) {
    j = topk_skip(s, j, w, thr);  // the first block with a score above thr, or the tail
    const int64_t e = std::min(w, j + kTopkScanBlock);
    for (; j < e; ++j)
      if (s[j] > thr) take(j);
  }
}

}  // namespace

void CpuBackend::set_topk_item_chunk(int64_t items) {
  TOWERREC_CHECK(items > 0, "topk item chunk must be positive");
  topk_item_chunk_ = items;
}

void CpuBackend::topk_impl(const float* U, int64_t n_users, const float* V, int64_t n_items, int d,
                           int k, const int64_t* excl_offsets, const int32_t* excl_items,
                           int32_t* out_items, float* out_scores,
                           const TopkPolicy& /*policy: one version, float32*/) {
  if (n_users == 0) return;
  // The exclusion lists (the entry point checked the shapes and pointers).
  if (excl_offsets) {
    TOWERREC_CHECK(excl_offsets[n_users] == 0 || excl_items, "topk: null excl_items");
    for (int64_t r = 0; r < n_users; ++r)
      TOWERREC_CHECK(excl_offsets[r] <= excl_offsets[r + 1], "topk: excl_offsets not monotone");
    for (int64_t j = excl_offsets[0]; j < excl_offsets[n_users]; ++j)
      TOWERREC_CHECK(excl_items[j] >= 0 && excl_items[j] < n_items,
                     "topk: excluded item " + std::to_string(excl_items[j]) + " out of range");
  }

  const float neg_inf = -std::numeric_limits<float>::infinity();
  const int64_t block = std::min(kTopkUserBlock, n_users);
  const int64_t chunk = std::max<int64_t>(1, std::min(topk_item_chunk_, n_items));
  // With several threads and an OpenMP (or sequential) OpenBLAS, threads split the
  // users of a block, each with its own sgemm and tile: one barrier per block
  // instead of two per chunk, which on a loaded machine cost 30% at 2 threads.
  // Otherwise (pthread OpenBLAS) sgemm threads itself and the fold is parallel.
  const bool user_parallel = threads_ > 1 && openblas_get_parallel() != 1 &&
                             worth_parallel(std::min(block, n_users) * n_items);
  const int64_t tile_floats = block * chunk;
  if (n_items > 0)
    topk_scores_.resize(static_cast<size_t>(tile_floats * (user_parallel ? threads_ : 1)));
  const int64_t kk = std::min<int64_t>(k, n_items);  // heap capacity
  std::vector<TopkCand> heaps(static_cast<size_t>(block * std::max<int64_t>(kk, 1)));
  std::vector<TopkRow> rows(static_cast<size_t>(block));
  std::vector<int32_t> excl_sorted;

  for (int64_t u0 = 0; u0 < n_users; u0 += block) {
    const int64_t nb = std::min(block, n_users - u0);
    // Per-row state; exclusion lists are used in place when already sorted.
    int64_t unsorted_total = 0;
    for (int64_t b = 0; b < nb; ++b) {
      TopkRow& st = rows[static_cast<size_t>(b)];
      st.heap = heaps.data() + b * kk;
      st.size = 0;
      st.cursor = 0;
      st.excl = nullptr;
      st.n_excl = 0;
      if (excl_offsets) {
        const int64_t e0 = excl_offsets[u0 + b], e1 = excl_offsets[u0 + b + 1];
        st.excl = excl_items + e0;
        st.n_excl = e1 - e0;
        if (!std::is_sorted(st.excl, st.excl + st.n_excl)) unsorted_total += st.n_excl;
      }
    }
    if (unsorted_total > 0) {
      excl_sorted.resize(static_cast<size_t>(unsorted_total));
      int64_t at = 0;
      for (int64_t b = 0; b < nb; ++b) {
        TopkRow& st = rows[static_cast<size_t>(b)];
        if (std::is_sorted(st.excl, st.excl + st.n_excl)) continue;
        int32_t* dst = excl_sorted.data() + at;
        std::copy(st.excl, st.excl + st.n_excl, dst);
        std::sort(dst, dst + st.n_excl);
        st.excl = dst;
        at += st.n_excl;
      }
    }

    // Scores and folds users [b0, b1) of the block over every item chunk, with
    // the score tile at tile ([b1 - b0] x chunk floats); the fold runs in
    // parallel over the users when fold_parallel.
    auto score_rows = [&](int64_t b0, int64_t b1, float* tile, bool fold_parallel) {
      for (int64_t i0 = 0; i0 < n_items && b1 > b0; i0 += chunk) {
        const int64_t w = std::min(chunk, n_items - i0);
        // tile[(b1-b0) x w] = U[u0+b0 .. u0+b1) . V[i0 .. i0+w)^T
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(b1 - b0),
                    static_cast<int>(w), d, 1.0f, U + (u0 + b0) * d, d, V + i0 * d, d, 0.0f,
                    tile, static_cast<int>(w));
        if (kk == 0) continue;
#pragma omp parallel for schedule(static) num_threads(threads_) if (fold_parallel)
        for (int64_t b = b0; b < b1; ++b)
          topk_fold(rows[static_cast<size_t>(b)], static_cast<int>(kk), tile + (b - b0) * w, w,
                    static_cast<int32_t>(i0));
      }
    };
    if (user_parallel) {
      // One OpenMP region per block: each thread scores its own users with a
      // single-threaded sgemm (OpenBLAS's OpenMP build runs one thread inside a
      // parallel region) into its own tile, so there is no barrier per chunk.
      const int parts = static_cast<int>(std::min<int64_t>(threads_, nb));
#pragma omp parallel for schedule(static) num_threads(parts)
      for (int t = 0; t < parts; ++t)
        score_rows(nb * t / parts, nb * (t + 1) / parts,
                   topk_scores_.data() + static_cast<int64_t>(t) * tile_floats, false);
    } else {
      score_rows(0, nb, topk_scores_.data(), worth_parallel(nb * chunk));
    }

    for (int64_t b = 0; b < nb; ++b) {
      TopkRow& st = rows[static_cast<size_t>(b)];
      std::sort(st.heap, st.heap + st.size, topk_better);
      int32_t* oi = out_items + (u0 + b) * k;
      float* os = out_scores + (u0 + b) * k;
      for (int32_t j = 0; j < st.size; ++j) {
        oi[j] = st.heap[j].item;
        os[j] = st.heap[j].key;
      }
      for (int j = st.size; j < k; ++j) {
        oi[j] = -1;
        os[j] = neg_inf;
      }
    }
  }
}

int64_t CpuBackend::preferred_topk_users(int32_t n_items, int, int) const {
  // 64 Mi scores' worth of users (the figure from when recommend_topk scored a
  // whole block at once). topk's own scratch no longer depends on it, and on
  // the CPU larger calls gain nothing: the threads share each block of users.
  return std::clamp<int64_t>((int64_t{64} << 20) / std::max<int32_t>(n_items, 1), 1, 4096);
}

}  // namespace towerrec
