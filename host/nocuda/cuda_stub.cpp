// Stand-in for the CUDA backend in builds without the CUDA toolkit.
#include "towerrec/backend.h"
#include "towerrec/error.h"

namespace towerrec {

bool cuda_available() { return false; }

std::unique_ptr<Backend> make_cuda_backend(int) {
  throw Error("this build of towerrec has no CUDA backend (configure with -DTOWERREC_CUDA=ON)");
}

}  // namespace towerrec
