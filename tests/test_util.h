// Helpers shared by the test files: random inputs, poisoning, float64
// comparisons, and locating the MovieLens data.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "towerrec/backend.h"
#include "towerrec/io.h"

namespace towerrec::testing {

// Value written into outputs before an op runs: an unwritten element fails any
// comparison.
inline float poison() { return std::numeric_limits<float>::quiet_NaN(); }

inline std::vector<float> random_floats(std::mt19937_64& g, size_t n, float lo = -1.0f,
                                        float hi = 1.0f) {
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

inline std::vector<int32_t> random_ints(std::mt19937_64& g, size_t n, int32_t lo, int32_t hi) {
  std::uniform_int_distribution<int32_t> d(lo, hi);
  std::vector<int32_t> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

// Fresh seed per run unless TOWERREC_TEST_SEED is set; printed on failure via
// SCOPED_TRACE at the call site.
inline uint64_t test_seed() {
  if (const char* s = std::getenv("TOWERREC_TEST_SEED")) return std::strtoull(s, nullptr, 10);
  static const uint64_t seed = std::random_device{}();
  return seed;
}

// Names the seed in every failure of the enclosing scope.
#define TRACE_SEED() \
  SCOPED_TRACE("TOWERREC_TEST_SEED=" + std::to_string(::towerrec::testing::test_seed()))

// |got - want| <= abs_tol + rel_tol * |want|, reporting the first mismatches.
inline ::testing::AssertionResult all_close(const std::vector<float>& got,
                                            const std::vector<double>& want, double abs_tol,
                                            double rel_tol) {
  if (got.size() != want.size())
    return ::testing::AssertionFailure() << "size " << got.size() << " != " << want.size();
  int bad = 0;
  std::string msg;
  for (size_t i = 0; i < got.size(); ++i) {
    const double g = got[i], w = want[i];
    if (!(std::fabs(g - w) <= abs_tol + rel_tol * std::fabs(w))) {
      if (bad < 5)
        msg += "\n  [" + std::to_string(i) + "] got " + std::to_string(g) + " want " +
               std::to_string(w);
      ++bad;
    }
  }
  if (bad)
    return ::testing::AssertionFailure() << bad << " of " << got.size() << " mismatched" << msg;
  return ::testing::AssertionSuccess();
}

inline std::vector<double> to_double(const std::vector<float>& v) { return {v.begin(), v.end()}; }

inline bool bit_identical(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() &&
         (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

// Central difference of f() with respect to x[i].
template <typename F>
double central_diff(F&& f, std::vector<double>& x, size_t i, double h) {
  const double x0 = x[i];
  x[i] = x0 + h;
  const double fp = f();
  x[i] = x0 - h;
  const double fm = f();
  x[i] = x0;
  return (fp - fm) / (2.0 * h);
}

// Up to `count` distinct indices in [0, n), all of them when n <= count.
inline std::vector<size_t> sample_indices(std::mt19937_64& g, size_t n, size_t count) {
  std::vector<size_t> all(n);
  std::iota(all.begin(), all.end(), size_t{0});
  if (n <= count) return all;
  std::shuffle(all.begin(), all.end(), g);
  all.resize(count);
  return all;
}

// Compares analytic[i] with the finite difference of f w.r.t. x[i] at sampled i.
template <typename F>
::testing::AssertionResult check_fd(std::mt19937_64& g, F&& f, std::vector<double>& x,
                                    const std::vector<float>& analytic, double h,
                                    size_t samples = 40) {
  std::vector<float> got;
  std::vector<double> want;
  for (size_t i : sample_indices(g, x.size(), samples)) {
    got.push_back(analytic[i]);
    want.push_back(central_diff(f, x, i, h));
  }
  return all_close(got, want, 1e-4, 1e-4);
}

// Host <-> backend copies for tests.
template <typename T>
DeviceArray<T> upload(Backend& be, const std::vector<T>& v) {
  DeviceArray<T> a(&be, static_cast<int64_t>(v.size()));
  if (!v.empty()) be.to_device(a.data(), v.data(), v.size() * sizeof(T));
  return a;
}
template <typename T>
std::vector<T> download(Backend& be, const DeviceArray<T>& a) {
  std::vector<T> v(static_cast<size_t>(a.size()));
  if (!v.empty()) be.to_host(v.data(), a.data(), v.size() * sizeof(T));
  return v;
}
// A backend array filled with the poison value.
inline DeviceArray<float> poisoned(Backend& be, int64_t n) {
  DeviceArray<float> a(&be, n);
  if (n) be.fill(a.data(), n, poison());
  return a;
}

// The directory holding this test executable (from /proc/self/exe).
inline std::string executable_dir() {
  std::error_code ec;
  const auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? std::string(".") : exe.parent_path().string();
}

// Paths are resolved when the tests run, never baked in at build time, so the
// binaries work wherever they are copied (the staged GPU check runs them on
// another machine): the environment variable first, then beside the executable.

// The towerrec CLI: $TOWERREC_CLI, else `towerrec` beside the test executable.
inline std::string cli_path() {
  if (const char* s = std::getenv("TOWERREC_CLI"); s && *s) return s;
  return executable_dir() + "/towerrec";
}

// The fuzz seed corpus: $TOWERREC_FUZZ_CORPUS, else `fuzz-corpus/` beside the
// test executable (the build copies tests/fuzz/corpus there).
inline std::string fuzz_corpus_dir() {
  if (const char* s = std::getenv("TOWERREC_FUZZ_CORPUS"); s && *s) return s;
  return executable_dir() + "/fuzz-corpus";
}

// A data set of ../shared/data/: $VAR when set (empty when the marker file is
// missing there), else `shared/data/NAME` in the executable's directory or any
// directory above it. Empty when absent.
inline std::string shared_data_dir(const char* var, const std::string& name,
                                   const std::string& marker) {
  if (const char* s = std::getenv(var); s && *s)
    return file_exists(std::string(s) + "/" + marker) ? s : "";
  std::filesystem::path p = executable_dir();
  for (;;) {
    const std::filesystem::path d = p / "shared" / "data" / name;
    if (file_exists((d / marker).string())) return d.string();
    if (!p.has_parent_path() || p.parent_path() == p) return "";
    p = p.parent_path();
  }
}

// The MovieLens-100k directory: $TOWERREC_ML100K, else shared/data/ml-100k
// above the executable (../shared/data/ml-100k beside the checkout).
inline std::string ml100k_dir() { return shared_data_dir("TOWERREC_ML100K", "ml-100k", "u.data"); }

#define TOWERREC_REQUIRE_ML100K(dir)                                                        \
  const std::string dir = ::towerrec::testing::ml100k_dir();                                \
  if (dir.empty())                                                                          \
  GTEST_SKIP() << "MovieLens-100k not found: set TOWERREC_ML100K or place it at "           \
                  "../shared/data/ml-100k"

// Skips the test where no CUDA device is present (the GPU check greps the
// "no CUDA device" prefix to tell a skipped run from a real one).
#define TOWERREC_REQUIRE_CUDA()                                                              \
  if (!::towerrec::cuda_available())                                                         \
  GTEST_SKIP() << "no CUDA device: CUDA results are compared with the CPU backend only "     \
                  "where a device is present"

// The CPU backend (1 thread), then the CUDA backend where a device is present.
inline std::vector<std::unique_ptr<Backend>> every_backend() {
  std::vector<std::unique_ptr<Backend>> v;
  v.push_back(make_cpu_backend(1));
  if (cuda_available()) v.push_back(make_cuda_backend(0));
  return v;
}

}  // namespace towerrec::testing
