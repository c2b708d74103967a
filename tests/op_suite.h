// The common preamble of the per-family op suites (tests/test_<family>.cpp):
// the test helpers their reference sections use and a few constants. A suite
// says `using namespace testing::op_suite;` at its top (and
// `using namespace testing::cuda_vs_cpu;`, tests/cuda_vs_cpu.h, in its CUDA
// section) instead of repeating the declarations.
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>

#include "tests/compare.h"
#include "tests/test_util.h"

namespace towerrec::testing::op_suite {

using testing::all_close;
using testing::bit_identical;
using testing::central_diff;
using testing::check_fd;
using testing::download;
using testing::poisoned;
using testing::random_floats;
using testing::random_ints;
using testing::sample_indices;
using testing::to_double;
using testing::upload;

inline constexpr double kInf = std::numeric_limits<double>::infinity();
inline constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
inline bool same_bits(float a, float b) { return std::memcmp(&a, &b, sizeof(float)) == 0; }
// Absolute tolerance of a float32 product summed over k terms of unit size.
inline double matmul_abs_tol(int64_t k) { return 2e-6 * static_cast<double>(k) + 1e-6; }

}  // namespace towerrec::testing::op_suite
