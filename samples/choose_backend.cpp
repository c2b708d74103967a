// Sample: run on the CUDA backend when this build has it and a GPU is
// present, else on the CPU backend; the same model code runs on both.
//
//   towerrec_sample_choose_backend [DIR]
#include <chrono>
#include <cstdio>
#include <exception>
#include <string>

#include "towerrec/api.h"
#include "towerrec/backend.h"

int main(int argc, char** argv) try {
  const std::string dir = argc > 1 ? argv[1] : "sample-choose-backend";

  // cuda_available() is false in a build without the CUDA backend (no nvcc at
  // build time) and on a machine without a usable GPU. Config::device also
  // takes "auto", which makes this choice itself, or "cuda:N".
  const std::string device = towerrec::cuda_available() ? "cuda" : "cpu";
  std::printf("device: %s (%s)\n", device.c_str(), towerrec::make_backend(device)->describe().c_str());

  towerrec::SynthOptions synth;
  synth.users = 2000;
  synth.items = 1000;
  synth.seed = 11;
  towerrec::write_synthetic(dir + "/data", synth);

  towerrec::Config cfg;
  cfg.data = dir + "/data";
  cfg.out = dir + "/model";
  cfg.device = device;
  cfg.train.epochs = 2;
  cfg.train.batch_size = 512;
  cfg.quiet = true;
  towerrec::TrainedModel model = towerrec::train(cfg);

  // Top-10 of every user, computed on the model's backend in blocks of users
  // (on a GPU the selection runs on the device too).
  const auto t0 = std::chrono::steady_clock::now();
  const towerrec::TopK top = model.recommend({}, 10);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("top-10 of %lld users on %s in %.3f s; user %s's best item: %s\n",
              static_cast<long long>(top.rows), device.c_str(), s, model.users().id(0).c_str(),
              model.items().id(top.ids[0]).c_str());
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "error: %s\n", e.what());
  return 1;
}
