#include <cstdio>

#include "host/cli/cli.h"
#include "towerrec/error.h"

namespace towerrec::cli {

int cmd_info(const Args& args) {
  if (wants_help(args)) {
    std::printf("usage: towerrec info\n\nShows the build and the available backends.\n");
    return 0;
  }
  std::printf("towerrec %s\n", TOWERREC_VERSION);
#ifdef TOWERREC_HAVE_CUDA
  std::printf("build: CPU and CUDA backends\n");
#else
  std::printf("build: CPU backend only (configured without CUDA)\n");
#endif
  std::printf("cpu: %s\n", make_cpu_backend(0)->describe().c_str());
  if (cuda_available()) {
    std::printf("cuda: %s\n", make_cuda_backend(0)->describe().c_str());
  } else {
#ifdef TOWERREC_HAVE_CUDA
    std::printf("cuda: no usable device (the CUDA backend is built; `--device auto` will use the CPU)\n");
#else
    std::printf("cuda: not built\n");
#endif
  }
  return 0;
}

}  // namespace towerrec::cli
