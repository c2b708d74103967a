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

// Runs f with OpenMP's thread count for this thread set to `threads` (oneDNN
// sizes its parallel regions by omp_get_max_threads()).
template <class F>
void with_threads(int threads, F&& f) {
  const int saved = omp_get_max_threads();
  if (saved != threads) omp_set_num_threads(threads);
  try {
    f();
  } catch (const dnnl::error& e) {
    if (saved != threads) omp_set_num_threads(saved);
    throw Error(std::string("oneDNN matmul failed: ") + e.what());
  } catch (...) {
    if (saved != threads) omp_set_num_threads(saved);
    throw;
  }
  if (saved != threads) omp_set_num_threads(saved);
}

// The bias row of the forward product, added to every row of C.
memory::desc bias_desc(memory::dim out) {
  return memory::desc({1, out}, memory::data_type::f32, {out, 1});
}

}  // namespace

struct CpuGemm::Primitive {
  dnnl::engine engine;
  dnnl::stream stream;
  dnnl::matmul matmul;
  std::string impl;
  bool reference = false;  // oneDNN's slow reference code: use the f32 fallback instead
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
      p->engine = dnnl::engine(dnnl::engine::kind::cpu, 0);
      p->stream = dnnl::stream(p->engine);
      const Descs d = descs(op, kRuntime, in, out, bf16);
      dnnl::primitive_attr attr;
      if (ep.relu) {
        dnnl::post_ops po;
        po.append_eltwise(1.0f, dnnl::algorithm::eltwise_relu, 0.0f, 0.0f);
        attr.set_post_ops(po);
      }
      const auto desc = ep.bias ? dnnl::matmul::desc(d.a, d.b, bias_desc(out), d.c)
                                : dnnl::matmul::desc(d.a, d.b, d.c);
      dnnl::matmul::primitive_desc pd(desc, attr, p->engine);
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

namespace {

void run(CpuGemm::Op op, int64_t n, int in, int out, bool bf16, dnnl::engine& engine,
         dnnl::stream& stream, dnnl::matmul& mm, const void* A, const void* B, float* C,
         const float* bias) {
  const Descs d = descs(op, n, in, out, bf16);
  memory a(d.a, engine, const_cast<void*>(A));
  memory b(d.b, engine, const_cast<void*>(B));
  memory c(d.c, engine, C);
  std::unordered_map<int, memory> args = {{DNNL_ARG_SRC, a}, {DNNL_ARG_WEIGHTS, b}, {DNNL_ARG_DST, c}};
  if (bias) args[DNNL_ARG_BIAS] = memory(bias_desc(out), engine, const_cast<float*>(bias));
  mm.execute(stream, args);
  stream.wait();
}

}  // namespace

void CpuGemm::f32(Op op, int64_t n, int in, int out, const float* A, const float* B, float* C,
                  const Epilogue& ep) {
  TOWERREC_CHECK(n > 0 && in > 0 && out > 0 && A && B && C, "CpuGemm::f32: bad arguments");
  Primitive& p = get(op, in, out, false, ep);
  with_threads(threads_, [&] {
    run(op, n, in, out, false, p.engine, p.stream, p.matmul, A, B, C, ep.bias);
  });
}

void CpuGemm::bf16(Op op, int64_t n, int in, int out, const uint16_t* A, const uint16_t* B,
                   float* C, const Epilogue& ep) {
  TOWERREC_CHECK(n > 0 && in > 0 && out > 0 && A && B && C, "CpuGemm::bf16: bad arguments");
  Primitive& p = get(op, in, out, true, ep);
  if (!p.reference && !force_fallback_) {
    with_threads(threads_, [&] {
      run(op, n, in, out, true, p.engine, p.stream, p.matmul, A, B, C, ep.bias);
    });
    return;
  }
  // Operand sizes: A is n x (in or out), B is (in x out) or (n x out).
  const int64_t a_count = n * (op == Op::kBackwardData ? out : in);
  const int64_t b_count = op == Op::kBackwardWeights ? n * out : int64_t{in} * out;
  widen_a_.resize(static_cast<size_t>(a_count));
  widen_b_.resize(static_cast<size_t>(b_count));
#pragma omp parallel for schedule(static) num_threads(threads_) if (a_count > (1 << 16))
  for (int64_t i = 0; i < a_count; ++i) widen_a_[i] = from_bf16(A[i]);
#pragma omp parallel for schedule(static) num_threads(threads_) if (b_count > (1 << 16))
  for (int64_t i = 0; i < b_count; ++i) widen_b_[i] = from_bf16(B[i]);
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
