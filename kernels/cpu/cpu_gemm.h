// The tower layers' matrix products on the CPU, through oneDNN's matmul.
//
// Three products per dense layer, with n (the batch's row count) varying from
// call to call and (in, out) fixed by the layer:
//   kForward          C[n x out]  = A[n x in]    . B[in x out]     (Y = X . W)
//   kBackwardData     C[n x in]   = A[n x out]   . B[in x out]^T   (dX = dZ . W^T)
//   kBackwardWeights  C[in x out] = A[n x in]^T  . B[n x out]      (dW = X^T . dZ)
// All matrices are row-major and dense (row stride = column count). C is
// overwritten. The forward product can add a bias row and apply ReLU in its
// epilogue (oneDNN post-ops), saving a pass over C.
//
// One oneDNN primitive per (product, in, out, precision), with n left as a
// run-time dimension, so a new batch size costs no JIT compilation. In bfloat16
// the operands are bfloat16 (to_bf16: round to nearest even) and the products
// are summed in float32 (oneDNN's bf16 x bf16 -> f32 GEMM; AVX512-BF16 or AMX
// where the CPU has them). Where oneDNN has only its reference implementation
// for bfloat16 (CPUs without AVX-512), the operands are widened back to float32
// and multiplied there: the same numbers up to summation order.
//
// oneDNN's OpenMP threads: the product runs on `threads` threads whatever the
// calling thread's OpenMP setting is. For a fixed thread count the results are
// run-to-run identical.
#pragma once

#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

namespace towerrec {

// x rounded to bfloat16, nearest even (NaN stays NaN), as its 16 bits.
inline uint16_t to_bf16(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

// The float whose upper 16 bits are b.
inline float from_bf16(uint16_t b) {
  const uint32_t u = uint32_t{b} << 16;
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
}

// Applied to C in the product's epilogue (forward product only): C += bias
// (one float per column), then ReLU.
struct GemmEpilogue {
  const float* bias = nullptr;
  bool relu = false;
};

class CpuGemm {
 public:
  enum class Op { kForward, kBackwardData, kBackwardWeights };

  explicit CpuGemm(int threads);
  ~CpuGemm();
  CpuGemm(const CpuGemm&) = delete;
  CpuGemm& operator=(const CpuGemm&) = delete;

  using Epilogue = GemmEpilogue;

  void f32(Op op, int64_t n, int in, int out, const float* A, const float* B, float* C,
           const Epilogue& ep = {});
  void bf16(Op op, int64_t n, int in, int out, const uint16_t* A, const uint16_t* B, float* C,
            const Epilogue& ep = {});

  // dst[i] = to_bf16(src[i]) for i < count, on the gemm's threads.
  void convert(const float* src, int64_t count, uint16_t* dst) const;

  // Tests: take the widen-to-float32 path for bfloat16 products even where
  // oneDNN has a fast bfloat16 GEMM.
  void force_bf16_fallback(bool on) { force_fallback_ = on; }

  // "oneDNN 2.6.3"
  static std::string version();
  // The implementation oneDNN picked for a bf16 product ("gemm:jit", or "ref"
  // when the CPU has no fast bfloat16 path). For reports.
  std::string bf16_impl();

 private:
  struct Primitive;
  struct Dnnl;  // the engine and stream every primitive runs on
  Primitive& get(Op op, int in, int out, bool bf16, const Epilogue& ep);
  void run(Op op, int64_t n, int in, int out, bool bf16, Primitive& p, const void* A,
           const void* B, float* C, const float* bias);

  int threads_;
  std::unique_ptr<Dnnl> dnnl_;
  std::map<std::tuple<int, int, int, bool, bool, bool>, std::unique_ptr<Primitive>> cache_;
  std::vector<float> widen_a_, widen_b_;  // bf16 operands widened for the fallback
  bool force_fallback_ = false;
};

}  // namespace towerrec
