#include "kernels/cpu/cpu_gemm.h"

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <unordered_map>
#include <oneapi/dnnl/dnnl.hpp>

#include "towerrec/error.h"

namespace towerrec {

namespace {

using dnnl::memory;
constexpr memory::dim kRuntime = DNNL_RUNTIME_DIM_VAL;

// Operand and result descriptors of one product: (rows, cols) and row-major or
// transposed strides. `n` is kRuntime for the primitive and the real row count
// at execution.
struct Descs {
  memory::desc a, b, c;
};

Descs descs(CpuGemm::Op op, memory::dim n, memory::dim in, memory::dim out, bool bf16) {
  const auto t = bf16 ? memory::data_type::bf16 : memory::data_type::f32;
  const auto f = memory::data_type::f32;
  switch (op) {
    case CpuGemm::Op::kForward:  // [n x in] . [in x out]
      return {memory::desc({n, in}, t, {in, 1}), memory::desc({in, out}, t, {out, 1}),
              memory::desc({n, out}, f, {out, 1})};
    case CpuGemm::Op::kBackwardData:  // [n x out] . ([in x out] read as [out x in])
      return {memory::desc({n, out}, t, {out, 1}), memory::desc({out, in}, t, {1, out}),
              memory::desc({n, in}, f, {in, 1})};
    case CpuGemm::Op::kBackwardWeights:  // ([n x in] read as [in x n]) . [n x out]
      return {memory::desc({in, n}, t, {1, in}), memory::desc({n, out}, t, {out, 1}),
              memory::desc({in, out}, f, {out, 1})};
  }
  throw Error("CpuGemm: unknown product");
}

// Sets OpenMP's thread count for the calling thread to `threads` for its
// lifetime (oneDNN sizes its parallel regions by omp_get_max_threads()).
class ThreadScope {
 public:
  explicit ThreadScope(int threads) : saved_(omp_get_max_threads()), threads_(threads) {
    if (saved_ != threads_) omp_set_num_threads(threads_);
  }
  ~ThreadScope() {
    if (saved_ != threads_) omp_set_num_threads(saved_);
  }
  ThreadScope(const ThreadScope&) = delete;
  ThreadScope& operator=(const ThreadScope&) = delete;

 private:
  int saved_, threads_;
};

// The bias row of the forward product, added to every row of C.
memory::desc bias_desc(memory::dim out) {
  return memory::desc({1, out}, memory::data_type::f32, {out, 1});
}

}  // namespace

struct CpuGemm::Primitive {
  dnnl::matmul matmul;
  std::string impl;
  bool reference = false;  // oneDNN's slow reference code: use the f32 fallback instead
};

struct CpuGemm::Dnnl {
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  dnnl::stream stream{engine};
};

CpuGemm::CpuGemm(int threads) : threads_(threads < 1 ? 1 : threads) {}
CpuGemm::~CpuGemm() = default;

std::string CpuGemm::version() {
  const dnnl_version_t* v = dnnl_version();
  return "oneDNN " + std::to_string(v->major) + "." + std::to_string(v->minor) + "." +
         std::to_string(v->patch);
}

CpuGemm::Primitive& CpuGemm::get(Op op, int in, int out, bool bf16, const Epilogue& ep) {
  TOWERREC_CHECK(op == Op::kForward || (!ep.bias && !ep.relu),
                 "CpuGemm: a bias or ReLU epilogue needs the forward product");
  auto& slot = cache_[{static_cast<int>(op), in, out, bf16, ep.bias != nullptr, ep.relu}];
  if (!slot) {
    auto p = std::make_unique<Primitive>();
    try {
      if (!dnnl_) dnnl_ = std::make_unique<Dnnl>();
      const Descs d = descs(op, kRuntime, in, out, bf16);
      dnnl::primitive_attr attr;
      if (ep.relu) {
        dnnl::post_ops po;
        po.append_eltwise(1.0f, dnnl::algorithm::eltwise_relu, 0.0f, 0.0f);
        attr.set_post_ops(po);
      }
      const auto desc = ep.bias ? dnnl::matmul::desc(d.a, d.b, bias_desc(out), d.c)
                                : dnnl::matmul::desc(d.a, d.b, d.c);
      dnnl::matmul::primitive_desc pd(desc, attr, dnnl_->engine);
      p->impl = pd.impl_info_str();
      p->reference = p->impl.rfind("ref", 0) == 0;
      p->matmul = dnnl::matmul(pd);
    } catch (const dnnl::error& e) {
      throw Error(std::string("oneDNN: cannot create a ") + (bf16 ? "bf16" : "f32") +
                  " matmul for in=" + std::to_string(in) + " out=" + std::to_string(out) + ": " +
                  e.what());
    }
    slot = std::move(p);
  }
  return *slot;
}

void CpuGemm::run(Op op, int64_t n, int in, int out, bool bf16, Primitive& p, const void* A,
                  const void* B, float* C, const float* bias) {
  const Descs d = descs(op, n, in, out, bf16);
  const dnnl::engine& engine = dnnl_->engine;
  std::unordered_map<int, memory> args = {{DNNL_ARG_SRC, memory(d.a, engine, const_cast<void*>(A))},
                                          {DNNL_ARG_WEIGHTS, memory(d.b, engine, const_cast<void*>(B))},
                                          {DNNL_ARG_DST, memory(d.c, engine, C)}};
  if (bias) args[DNNL_ARG_BIAS] = memory(bias_desc(out), engine, const_cast<float*>(bias));
  const ThreadScope threads(threads_);
  try {
    p.matmul.execute(dnnl_->stream, args);
    dnnl_->stream.wait();
  } catch (const dnnl::error& e) {
    throw Error(std::string("oneDNN matmul failed: ") + e.what());
  }
}

void CpuGemm::f32(Op op, int64_t n, int in, int out, const float* A, const float* B, float* C,
                  const Epilogue& ep) {
  TOWERREC_CHECK(n > 0 && in > 0 && out > 0 && A && B && C, "CpuGemm::f32: bad arguments");
  run(op, n, in, out, false, get(op, in, out, false, ep), A, B, C, ep.bias);
}

void CpuGemm::bf16(Op op, int64_t n, int in, int out, const uint16_t* A, const uint16_t* B,
                   float* C, const Epilogue& ep) {
  TOWERREC_CHECK(n > 0 && in > 0 && out > 0 && A && B && C, "CpuGemm::bf16: bad arguments");
  Primitive& p = get(op, in, out, true, ep);
  if (!p.reference && !force_fallback_) {
    run(op, n, in, out, true, p, A, B, C, ep.bias);
    return;
  }
  // Operand sizes: A is n x (in or out), B is (in x out) or (n x out).
  auto widen = [this](const uint16_t* x, int64_t count, std::vector<float>& to) {
    to.resize(static_cast<size_t>(count));
#pragma omp parallel for schedule(static) num_threads(threads_) if (count > (1 << 16))
    for (int64_t i = 0; i < count; ++i) to[static_cast<size_t>(i)] = from_bf16(x[i]);
  };
  widen(A, n * (op == Op::kBackwardData ? out : in), widen_a_);
  widen(B, op == Op::kBackwardWeights ? n * out : int64_t{in} * out, widen_b_);
  f32(op, n, in, out, widen_a_.data(), widen_b_.data(), C, ep);
}

namespace {

// to_bf16 over 16 floats at a time (AVX-512F/BW): the same integer rounding and
// NaN rule, so the same bits as the scalar version. (GCC 12 warns about an
// undefined vector inside its own _mm512_srli_epi32.)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
__attribute__((target("avx512f,avx512bw"))) void convert_avx512(const float* src, int64_t count,
                                                                   uint16_t* dst) {
  const __m512i round = _mm512_set1_epi32(0x7fff), one = _mm512_set1_epi32(1);
  const __m512i abs_mask = _mm512_set1_epi32(0x7fffffff), inf = _mm512_set1_epi32(0x7f800000);
  const __m512i quiet = _mm512_set1_epi32(0x400000);
  int64_t i = 0;
  for (; i + 16 <= count; i += 16) {
    const __m512i u = _mm512_loadu_si512(src + i);
    const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, abs_mask), inf);
    __m512i r = _mm512_add_epi32(
        u, _mm512_add_epi32(round, _mm512_and_si512(_mm512_srli_epi32(u, 16), one)));
    r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(u, quiet));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i),
                        _mm512_cvtepi32_epi16(_mm512_srli_epi32(r, 16)));
  }
  for (; i < count; ++i) dst[i] = to_bf16(src[i]);
}
#pragma GCC diagnostic pop

void convert_range(const float* src, int64_t count, uint16_t* dst) {
  static const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
  if (avx512) {
    convert_avx512(src, count, dst);
    return;
  }
  for (int64_t i = 0; i < count; ++i) dst[i] = to_bf16(src[i]);
}

}  // namespace

void CpuGemm::convert(const float* src, int64_t count, uint16_t* dst) const {
  // Chunks of 64k elements (cache-line aligned boundaries), one range per thread.
  constexpr int64_t kChunk = 1 << 16;
  const int64_t chunks = (count + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) num_threads(threads_) if (chunks > 1)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t i0 = c * kChunk;
    convert_range(src + i0, std::min(kChunk, count - i0), dst + i0);
  }
}

std::string CpuGemm::bf16_impl() { return get(Op::kForward, 64, 64, true, {}).impl; }

}  // namespace towerrec
