// Loop helpers shared by the CPU backend's op families (kernels/<family>/cpu.cpp).
// Internal to the CPU backend.
#pragma once

#include <algorithm>
#include <climits>
#include <cstdint>
#include <string>

#include "towerrec/error.h"

namespace towerrec::cpu {

// Parallelise a loop only when it has at least this many scalar operations.
constexpr int64_t kParallelWork = 1 << 15;

inline bool worth_parallel(int64_t work) { return work >= kParallelWork; }

inline void check_blas_dim(int64_t v, const char* what) {
  TOWERREC_CHECK(v >= 0 && v <= INT_MAX, std::string(what) + " out of BLAS int range: " +
                                             std::to_string(v));
}

// Runs body(c0, c1) over a partition of [0, dim) into one contiguous column range
// per thread. Used where different rows may hit the same output row, so rows must
// be processed in order: each element still sees its updates in row order.
template <typename Body>
void for_column_ranges(int threads, int dim, int64_t work, Body body) {
  if (!worth_parallel(work) || threads <= 1 || dim < 2) {
    body(0, dim);
    return;
  }
  const int parts = std::min(threads, dim);
#pragma omp parallel for schedule(static) num_threads(parts)
  for (int t = 0; t < parts; ++t) {
    const int c0 = static_cast<int>(int64_t{dim} * t / parts);
    const int c1 = static_cast<int>(int64_t{dim} * (t + 1) / parts);
    body(c0, c1);
  }
}

}  // namespace towerrec::cpu
