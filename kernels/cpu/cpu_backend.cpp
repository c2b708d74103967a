// The CPU reference backend (see cpu_backend.h and the op contract in
// include/towerrec/backend.h): construction, description, memory and copies.
// The ops are defined family by family in kernels/<family>/cpu.cpp.
//
// Determinism: every parallel loop writes disjoint outputs and every sum runs in
// an order fixed by the data (row order, CSR order, fixed-size chunks), never by
// the schedule. OpenBLAS sgemm is deterministic for a fixed thread count.
// sgemm is called outside OpenMP regions (the pthread OpenBLAS build
// must not be entered from many OpenMP threads at once), except in topk, which
// does so only with OpenBLAS's OpenMP build (single-threaded there).
//
// cblas row-major convention used throughout: C[M x N] = op(A) . op(B) with
// lda/ldb/ldc the row strides of A, B, C as stored.
#include "kernels/cpu/cpu_backend.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <sstream>

#include "kernels/cpu/cpu_util.h"
#include "towerrec/error.h"

namespace towerrec {
namespace {

using cpu::worth_parallel;

std::string openblas_version() {
  // openblas_get_config(): "OpenBLAS 0.3.21 DYNAMIC_ARCH ..."; keep the first two words.
  std::istringstream in(openblas_get_config());
  std::string name, version;
  in >> name >> version;
  return version.empty() ? "OpenBLAS" : name + " " + version;
}

}  // namespace

CpuBackend::CpuBackend(int threads)
    : threads_(std::max(1, threads > 0 ? threads : omp_get_num_procs())), gemm_(threads_) {
  openblas_set_num_threads(threads_);
}

std::string CpuBackend::describe() const {
  return "cpu (" + openblas_version() + ", " + CpuGemm::version() + ", " + std::to_string(threads_) +
         (threads_ == 1 ? " thread)" : " threads)");
}

BackendCapabilities CpuBackend::capabilities() const {
  // The implementation oneDNN picks for a bf16 product on this CPU; "ref..." is
  // its reference code, for which CpuGemm widens the operands to float32.
  BackendCapabilities c;
  c.bf16_matmul_impl = CpuGemm(1).bf16_impl();
  c.native_bf16_matmul = c.bf16_matmul_impl.rfind("ref", 0) != 0;
  return c;
}

// ---- memory -------------------------------------------------------------------

void* CpuBackend::allocate(size_t bytes) {
  constexpr size_t kAlign = 64;
  const size_t rounded = std::max<size_t>(kAlign, (bytes + kAlign - 1) / kAlign * kAlign);
  TOWERREC_CHECK(rounded >= bytes, "allocation size overflow");
  void* p = std::aligned_alloc(kAlign, rounded);
  TOWERREC_CHECK(p != nullptr, "out of host memory allocating " + std::to_string(bytes) + " bytes");
  return p;
}

void CpuBackend::deallocate(void* p) noexcept { std::free(p); }

void CpuBackend::to_device(void* dst, const void* host_src, size_t bytes) {
  if (bytes == 0) return;
  TOWERREC_CHECK(dst && host_src, "to_device: null pointer");
  std::memcpy(dst, host_src, bytes);
}

void CpuBackend::to_host(void* host_dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  TOWERREC_CHECK(host_dst && src, "to_host: null pointer");
  std::memcpy(host_dst, src, bytes);
}

void CpuBackend::copy(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  TOWERREC_CHECK(dst && src, "copy: null pointer");
  std::memmove(dst, src, bytes);
}

void CpuBackend::fill(float* p, int64_t n, float value) {
  TOWERREC_CHECK(n >= 0, "fill: negative size");
  if (n == 0) return;
  TOWERREC_CHECK(p, "fill: null pointer");
#pragma omp parallel for schedule(static) num_threads(threads_) if (worth_parallel(n))
  for (int64_t i = 0; i < n; ++i) p[i] = value;
}

std::unique_ptr<Backend> make_cpu_backend(int threads) {
  return std::make_unique<CpuBackend>(threads);
}

}  // namespace towerrec
