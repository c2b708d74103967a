// Machine ceilings measured by towerrec_ceilings (bench/ceilings.cpp): what the
// kernel and end-to-end figures are read against.
#pragma once

#include <string>

namespace towerrec::bench {

struct CudaCeilings {
  bool measured = false;
  std::string device;        // name of device 0
  std::string note;          // why not measured
  double h2d_gbs = 0;        // pinned host -> device copy
  double d2h_gbs = 0;        // device -> pinned host copy
  double d2d_gbs = 0;        // device copy, bytes read + written
  double fp32_tflops = 0;    // cuBLAS SGEMM, FP32 compute
  double tf32_tflops = 0;    // cuBLAS GEMM, FP32 in/out, TF32 tensor cores
  double bf16_tflops = 0;    // cuBLAS GEMM, BF16 in/out, FP32 accumulate
};

// Measures device 0 (bench/ceilings_cuda.cu); in builds without CUDA returns
// measured = false with a note.
CudaCeilings measure_cuda_ceilings(int gemm_n, bool quick);

}  // namespace towerrec::bench
