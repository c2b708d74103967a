#include <cstdlib>
#include <new>

#include "towerrec/backend.h"
#include "towerrec/error.h"

namespace towerrec {

const char* matmul_precision_name(MatmulPrecision p) {
  return p == MatmulPrecision::kBF16 ? "bf16" : "fp32";
}

MatmulPrecision parse_matmul_precision(const std::string& text) {
  if (text == "fp32") return MatmulPrecision::kFP32;
  if (text == "bf16") return MatmulPrecision::kBF16;
  throw Error("unknown matmul precision '" + text + "': expected fp32 or bf16");
}

std::unique_ptr<Backend> make_backend(const std::string& name, int cpu_threads) {
  if (name == "cpu") return make_cpu_backend(cpu_threads);
  if (name == "auto") return cuda_available() ? make_cuda_backend(0) : make_cpu_backend(cpu_threads);
  if (name == "cuda") return make_cuda_backend(0);
  if (name.rfind("cuda:", 0) == 0) {
    const std::string n = name.substr(5);
    if (n.empty() || n.find_first_not_of("0123456789") != std::string::npos)
      throw Error("bad device '" + name + "': expected cuda:N");
    return make_cuda_backend(std::stoi(n));
  }
  throw Error("unknown device '" + name + "': expected auto, cpu, cuda or cuda:N");
}

}  // namespace towerrec

namespace towerrec {
namespace {
[[noreturn]] void not_implemented(const Backend& be, const char* op) {
  throw Error(std::string("op ") + op + " is not implemented by backend " + be.describe());
}
}  // namespace

void* Backend::allocate_host(size_t bytes) {
  if (bytes == 0) return nullptr;
  void* p = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
  if (p == nullptr) throw std::bad_alloc();
  return p;
}
void Backend::deallocate_host(void* p) noexcept { std::free(p); }

void Backend::bpr_loss(const float*, const float*, int, const PairBatch&, int, float, float*,
                       float*, float*, float*) {
  not_implemented(*this, "bpr_loss");
}
void Backend::softmax_loss(const float*, const float*, int, const PairBatch&, const float*, float,
                           float, float*, float*, float*, float*, float*) {
  not_implemented(*this, "softmax_loss");
}
void Backend::l2_normalize(const float*, int64_t, int, float*, float*) {
  not_implemented(*this, "l2_normalize");
}
void Backend::l2_normalize_backward(const float*, const float*, const float*, int64_t, int,
                                    float*) {
  not_implemented(*this, "l2_normalize_backward");
}
void Backend::dropout(float*, int64_t, float, uint64_t, uint64_t) {
  not_implemented(*this, "dropout");
}

}  // namespace towerrec
