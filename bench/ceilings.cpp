// towerrec_ceilings: this machine's compute and memory ceilings.
//
//   CPU  sgemm GFLOP/s on large square matrices (the BLAS towerrec links, all
//        threads), the same product through oneDNN in float32 and in bfloat16
//        (the tower layers' GEMMs, kernels/cpu/cpu_gemm.h), and STREAM-style
//        copy (a = b) and triad (a = b + s c) bandwidth with OpenMP over arrays
//        far larger than the caches.
//   GPU  (CUDA builds with a device) pinned host<->device and device copy
//        bandwidth, cuBLAS FP32, TF32 and BF16 GEMM rates.
//
// usage: towerrec_ceilings [--threads N] [--quick] [--json FILE]
// Each figure is the best of several repetitions after a warm-up. --json writes
// them for scripts/bench-e2e, which prints end-to-end rates as % of these.
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "bench/ceilings.h"
#include "kernels/cpu/cpu_gemm.h"

namespace {

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Best-of-reps seconds of fn().
template <typename F>
double best_seconds(int reps, F fn) {
  fn();  // warm-up
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const double t0 = now();
    fn();
    best = std::min(best, now() - t0);
  }
  return best;
}

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("model name", 0) == 0) {
      const auto c = line.find(':');
      if (c != std::string::npos) return line.substr(c + 2);
    }
  return "unknown";
}

}  // namespace

int main(int argc, char** argv) {
  int threads = omp_get_num_procs();
  bool quick = false;
  std::string json_path;
  for (int a = 1; a < argc; ++a) {
    const std::string arg = argv[a];
    if (arg == "--threads" && a + 1 < argc) threads = std::max(1, std::atoi(argv[++a]));
    else if (arg == "--quick") quick = true;
    else if (arg == "--json" && a + 1 < argc) json_path = argv[++a];
    else {
      std::fprintf(stderr, "usage: towerrec_ceilings [--threads N] [--quick] [--json FILE]\n");
      return arg == "--help" || arg == "-h" ? 0 : 2;
    }
  }
  openblas_set_num_threads(threads);
  omp_set_num_threads(threads);
  const int reps = quick ? 2 : 5;

  // ---- sgemm: C[n x n] = A . B
  const int n = quick ? 1024 : 2048;
  std::vector<float> A(size_t(n) * n), B(size_t(n) * n), C(size_t(n) * n);
  for (size_t j = 0; j < A.size(); ++j) {
    A[j] = static_cast<float>((j * 2654435761u) % 1000) * 1e-3f - 0.5f;
    B[j] = static_cast<float>((j * 40503u) % 1000) * 1e-3f - 0.5f;
  }
  const double t_gemm = best_seconds(reps, [&] {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, A.data(), n, B.data(),
                n, 0.0f, C.data(), n);
  });
  auto gflops = [n](double seconds) { return 2.0 * n * n * double(n) / seconds * 1e-9; };
  const double sgemm_gflops = gflops(t_gemm);
  // The tower layers' GEMM (oneDNN) on the same matrices, float32 and bfloat16.
  towerrec::CpuGemm gemm(threads);
  const double t_dnnl = best_seconds(reps, [&] {
    gemm.f32(towerrec::CpuGemm::Op::kForward, n, n, n, A.data(), B.data(), C.data());
  });
  std::vector<uint16_t> Ab(A.size()), Bb(B.size());
  gemm.convert(A.data(), int64_t(A.size()), Ab.data());
  gemm.convert(B.data(), int64_t(B.size()), Bb.data());
  const double t_bf16 = best_seconds(reps, [&] {
    gemm.bf16(towerrec::CpuGemm::Op::kForward, n, n, n, Ab.data(), Bb.data(), C.data());
  });
  const double dnnl_f32_gflops = gflops(t_dnnl);
  const double bf16_gflops = gflops(t_bf16);
  const std::string bf16_impl = gemm.bf16_impl();
  A = B = C = {};

  // ---- STREAM-like copy and triad on 128 MiB float arrays (first touch in parallel).
  const int64_t m = quick ? (int64_t{1} << 24) : (int64_t{1} << 25);
  float* a = static_cast<float*>(std::aligned_alloc(64, size_t(m) * 4));
  float* b = static_cast<float*>(std::aligned_alloc(64, size_t(m) * 4));
  float* c = static_cast<float*>(std::aligned_alloc(64, size_t(m) * 4));
#pragma omp parallel for schedule(static)
  for (int64_t j = 0; j < m; ++j) a[j] = 0.0f, b[j] = 1.0f, c[j] = 2.0f;
  const double t_copy = best_seconds(reps, [&] {
#pragma omp parallel for schedule(static)
    for (int64_t j = 0; j < m; ++j) a[j] = b[j];
  });
  const float s = 3.0f;
  const double t_triad = best_seconds(reps, [&] {
#pragma omp parallel for schedule(static)
    for (int64_t j = 0; j < m; ++j) a[j] = b[j] + s * c[j];
  });
  volatile float sink = a[m / 2];
  (void)sink;
  std::free(a);
  std::free(b);
  std::free(c);
  // STREAM convention: bytes the kernel names (copy 2 arrays, triad 3), no
  // write-allocate traffic.
  const double copy_gbs = 2.0 * 4.0 * double(m) / t_copy * 1e-9;
  const double triad_gbs = 3.0 * 4.0 * double(m) / t_triad * 1e-9;

  std::printf("cpu: %s, %d threads (%s)\n", cpu_model().c_str(), threads, openblas_get_config());
  std::printf("  sgemm %dx%dx%d      %8.1f GFLOP/s\n", n, n, n, sgemm_gflops);
  std::printf("  %s f32 GEMM    %8.1f GFLOP/s\n", towerrec::CpuGemm::version().c_str(), dnnl_f32_gflops);
  std::printf("  %s bf16 GEMM   %8.1f GFLOP/s (%s)\n", towerrec::CpuGemm::version().c_str(), bf16_gflops,
              bf16_impl.c_str());
  std::printf("  stream copy  (%lld MiB)  %8.1f GB/s\n", static_cast<long long>(m * 4 >> 20), copy_gbs);
  std::printf("  stream triad (%lld MiB)  %8.1f GB/s\n", static_cast<long long>(m * 4 >> 20), triad_gbs);

  const auto g = towerrec::bench::measure_cuda_ceilings(quick ? 4096 : 8192, quick);
  if (g.measured) {
    std::printf("gpu: %s\n", g.device.c_str());
    std::printf("  copy host->device (pinned) %8.1f GB/s\n", g.h2d_gbs);
    std::printf("  copy device->host (pinned) %8.1f GB/s\n", g.d2h_gbs);
    std::printf("  copy device->device        %8.1f GB/s (read + write)\n", g.d2d_gbs);
    std::printf("  cuBLAS FP32 GEMM           %8.1f TFLOP/s\n", g.fp32_tflops);
    std::printf("  cuBLAS TF32 GEMM           %8.1f TFLOP/s\n", g.tf32_tflops);
    std::printf("  cuBLAS BF16 GEMM           %8.1f TFLOP/s\n", g.bf16_tflops);
  } else {
    std::printf("gpu: not measured (%s)\n", g.note.c_str());
  }

  if (!json_path.empty()) {
    nlohmann::json j;
    j["cpu"] = {{"model", cpu_model()},
                {"threads", threads},
                {"blas", openblas_get_config()},
                {"sgemm_n", n},
                {"sgemm_gflops", sgemm_gflops},
                {"dnnl", towerrec::CpuGemm::version()},
                {"dnnl_f32_gemm_gflops", dnnl_f32_gflops},
                {"bf16_gemm_gflops", bf16_gflops},
                {"bf16_gemm_impl", bf16_impl},
                {"stream_copy_gbs", copy_gbs},
                {"stream_triad_gbs", triad_gbs}};
    if (g.measured)
      j["gpu"] = {{"device", g.device},       {"h2d_gbs", g.h2d_gbs},
                  {"d2h_gbs", g.d2h_gbs},     {"d2d_gbs", g.d2d_gbs},
                  {"fp32_tflops", g.fp32_tflops}, {"tf32_tflops", g.tf32_tflops},
                  {"bf16_tflops", g.bf16_tflops}};
    else
      j["gpu"] = nullptr;
    std::ofstream out(json_path);
    out << j.dump(2) << "\n";
    if (!out) {
      std::fprintf(stderr, "cannot write %s\n", json_path.c_str());
      return 1;
    }
  }
  return 0;
}

#ifndef TOWERREC_CEILINGS_CUDA
namespace towerrec::bench {
CudaCeilings measure_cuda_ceilings(int, bool) {
  CudaCeilings c;
  c.note = "this build has no CUDA backend";
  return c;
}
}  // namespace towerrec::bench
#endif
