// Shared by the CUDA-against-CPU agreement checks of the per-family suites
// (tests/test_<family>.cpp, namespace cuda_vs_cpu): sizes off the kernels'
// tiles and strided poisoned buffers.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "tests/compare.h"
#include "tests/test_util.h"

namespace towerrec::testing::cuda_vs_cpu {

// The helpers the CUDA-against-CPU sections use.
using testing::all_close;
using testing::download;
using testing::near;
using testing::poisoned;
using testing::random_floats;
using testing::random_ints;
using testing::ranks_after;
using testing::test_seed;
using testing::upload;

inline std::vector<double> as_double(const std::vector<float>& v) { return {v.begin(), v.end()}; }

// Widths 1..300 so both dense_forward paths run; rows not multiples of a tile.
inline constexpr int kWidths[] = {1, 5, 17, 64, 130, 300};
inline constexpr int64_t kRows[] = {1, 7, 33, 257};

// A host buffer whose columns [col_off, col_off + dim) of every row are NaN and
// whose other columns hold random values: checks both "written" and "untouched".
inline std::vector<float> strided_poisoned(std::mt19937_64& g, int64_t n, int ld, int col_off,
                                           int dim) {
  std::vector<float> v = random_floats(g, static_cast<size_t>(n * ld));
  for (int64_t r = 0; r < n; ++r)
    for (int c = col_off; c < col_off + dim; ++c) v[r * ld + c] = poison();
  return v;
}

}  // namespace towerrec::testing::cuda_vs_cpu
