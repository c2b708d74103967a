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
