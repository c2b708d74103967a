#include <cstdio>

#include "host/cli/cli.h"
#include "towerrec/error.h"

namespace towerrec::cli {

int cmd_info(const Args& args) {
  CLI::App app("Shows the build and the available backends.", "towerrec info");
  configure_app(app);
  bool quiet = false;
  add_quiet_option(app, quiet);  // accepted like every command's; info prints only its report
  if (!parse_args(app, args)) return 0;
  std::printf("towerrec %s\n", TOWERREC_VERSION);
#ifdef TOWERREC_HAVE_CUDA
  std::printf("build: CPU and CUDA backends\n");
#else
  std::printf("build: CPU backend only (configured without CUDA)\n");
#endif
  {
    const auto cpu = make_cpu_backend(0);
    std::printf("cpu: %s\n", cpu->describe().c_str());
    // How --matmul-precision bf16 runs here: oneDNN's bf16 GEMM, or its
    // reference code, for which the operands are widened to float32 instead.
    const BackendCapabilities c = cpu->capabilities();
    std::printf("cpu bf16 products: %s (%s)\n",
                c.native_bf16_matmul ? "oneDNN bf16 GEMM"
                                     : "widened to float32 (no fast bf16 GEMM on this CPU)",
                c.bf16_matmul_impl.c_str());
  }
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
