#include "towerrec/backend.h"
#include "towerrec/error.h"

namespace towerrec {

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
