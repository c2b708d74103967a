// Staged (asynchronous) copies and fences on every backend, and whole training
// runs on the CUDA backend against the CPU reference from the same seed.
//
// Tolerances of the training comparison (fp32; the backends sum in different
// orders, so every step differs by a few ulps and later steps inherit it):
//   SGD, 12 steps:  |gpu - cpu| <= 1e-4 + 1e-4 |cpu| for every parameter
//   Adam, 12 steps: |gpu - cpu| <= 2e-4 + 1e-3 |cpu| (eps = 1e-4 keeps rows with
//                   near-zero gradients from turning rounding into full steps)
//   per-epoch mean loss: 1e-4 relative
// The CUDA tests skip when no device is present.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "tests/model_fixture.h"
#include "tests/test_util.h"
#include "towerrec/backend.h"
#include "towerrec/trainer.h"
#if TOWERREC_HAVE_CUDA
#include "kernels/cuda/cuda_testing.h"
#endif

namespace towerrec {
namespace {

using testing::all_state;
using testing::every_backend;
using testing::ModelFixture;
using testing::small_tower;

// Host -> device -> device -> host through staging buffers, with several copies
// and fences in flight before any wait; the destination is poisoned first.
TEST(Staging, AsyncCopiesAndFences) {
  std::mt19937_64 g(testing::test_seed());
  for (auto& be : every_backend()) {
    SCOPED_TRACE(be->describe());
    const int64_t n = 100003;
    const int rounds = 4;
    std::vector<HostArray<float>> in(rounds), out(rounds);
    std::vector<std::vector<float>> want(rounds);
    std::vector<DeviceArray<float>> dev;
    std::vector<uint64_t> fences;
    for (int r = 0; r < rounds; ++r) {
      want[r] = testing::random_floats(g, static_cast<size_t>(n));
      in[r].ensure(be.get(), n);
      out[r].ensure(be.get(), n);
      std::copy(want[r].begin(), want[r].end(), in[r].data());
      std::fill(out[r].data(), out[r].data() + n, testing::poison());
      dev.emplace_back(be.get(), n);
      be->fill(dev.back().data(), n, testing::poison());
      be->to_device_async(dev.back().data(), in[r].data(), sizeof(float) * n);
      DeviceArray<float> tmp(be.get(), n);
      be->copy(tmp.data(), dev.back().data(), sizeof(float) * n);
      be->to_host_async(out[r].data(), tmp.data(), sizeof(float) * n);
      fences.push_back(be->fence());
    }
    for (size_t j = 1; j < fences.size(); ++j)
      if (fences[j] != 0) {
        EXPECT_GT(fences[j], fences[j - 1]);
      }
    // Waiting on the newest fence covers the older ones; waiting again on any
    // of them, or on fence 0, returns at once.
    be->wait_fence(fences.back());
    be->wait_fence(fences.front());
    be->wait_fence(0);
    for (int r = 0; r < rounds; ++r)
      EXPECT_EQ(0, std::memcmp(out[r].data(), want[r].data(), sizeof(float) * n)) << "round " << r;
    // Many fences without waits must not pile up or fail.
    for (int j = 0; j < 1000; ++j) (void)be->fence();
    be->wait_fence(be->fence());
  }
}

// Trains the tiny model on `be` and returns the final state and epoch losses.
struct RunResult {
  std::vector<float> state;
  std::vector<double> losses;
};

RunResult train_on(std::unique_ptr<Backend> be, const TrainConfig& tc, const TowerConfig& tower) {
  ModelFixture f(7, tower, std::move(be));
  Trainer tr(*f.model, f.ds.interactions, tc);
  RunResult r;
  for (int e = 0; e < tc.epochs; ++e) r.losses.push_back(tr.train_epoch().loss);
  r.state = all_state(*f.model);
  return r;
}

void expect_agree(const RunResult& cpu, const RunResult& gpu, double abs_tol, double rel_tol) {
  ASSERT_EQ(cpu.state.size(), gpu.state.size());
  int bad = 0;
  double worst = 0;
  for (size_t j = 0; j < cpu.state.size(); ++j) {
    const double c = cpu.state[j], d = gpu.state[j];
    const double err = std::fabs(c - d);
    worst = std::max(worst, err);
    if (!(err <= abs_tol + rel_tol * std::fabs(c))) {
      if (bad < 5) ADD_FAILURE() << "state[" << j << "]: cpu " << c << " cuda " << d;
      ++bad;
    }
  }
  EXPECT_EQ(bad, 0) << "of " << cpu.state.size() << " values; largest difference " << worst;
  ASSERT_EQ(cpu.losses.size(), gpu.losses.size());
  for (size_t e = 0; e < cpu.losses.size(); ++e)
    EXPECT_NEAR(gpu.losses[e], cpu.losses[e], 1e-4 * std::fabs(cpu.losses[e])) << "epoch " << e + 1;
}

TEST(TrainingOnCuda, AgreesWithCpuForEveryLoss) {
  TOWERREC_REQUIRE_CUDA();
  for (const std::string loss : {"logistic", "bpr", "softmax", "ccl"}) {
    for (const std::string opt : {"sgd", "adam"}) {
      SCOPED_TRACE(loss + " / " + opt);
      TrainConfig tc;
      tc.epochs = 1;  // 92 interactions, batch 8: 12 steps
      tc.batch_size = 8;
      tc.negatives = 3;
      tc.loss = parse_enum<Loss>(loss);
      tc.temperature = 0.5f;
      tc.sampler = Sampler::kPopularity;
      tc.reject_hits = true;
      tc.lr_schedule = LrSchedule::kCosine;
      tc.optimizer.kind = parse_enum<OptimizerKind>(opt);
      tc.optimizer.lr = opt == "sgd" ? 0.05f : 1e-3f;
      tc.optimizer.eps = 1e-4f;
      tc.optimizer.embedding_decay = 0.5f;
      const RunResult cpu = train_on(make_cpu_backend(1), tc, small_tower());
      const RunResult gpu = train_on(make_cuda_backend(0), tc, small_tower());
      if (opt == "sgd")
        expect_agree(cpu, gpu, 1e-4, 1e-4);
      else
        expect_agree(cpu, gpu, 2e-4, 1e-3);
    }
  }
}

TEST(TrainingOnCuda, AgreesWithCpuWithDropoutAndNormalisation) {
  TOWERREC_REQUIRE_CUDA();
  TowerConfig tower = small_tower();
  tower.dropout = 0.2f;
  tower.normalize = true;
  TrainConfig tc;
  tc.epochs = 1;
  tc.batch_size = 8;
  tc.negatives = 2;
  tc.loss = Loss::kSoftmax;
  tc.temperature = 0.2f;
  tc.optimizer.kind = OptimizerKind::kSgd;
  tc.optimizer.lr = 0.05f;
  const RunResult cpu = train_on(make_cpu_backend(1), tc, tower);
  const RunResult gpu = train_on(make_cuda_backend(0), tc, tower);
  expect_agree(cpu, gpu, 1e-4, 1e-4);
}

#if TOWERREC_HAVE_CUDA
// After the first epoch every buffer a step needs is cached: later epochs make
// no cudaMalloc (the allocator counts them).
TEST(TrainingOnCuda, LaterEpochsDoNotMalloc) {
  TOWERREC_REQUIRE_CUDA();
  ModelFixture f(9, small_tower(), make_cuda_backend(0));
  TrainConfig tc;
  tc.epochs = 3;
  tc.batch_size = 1000;  // one step per epoch that touches every user and item
  tc.negatives = 3;
  tc.loss = Loss::kLogistic;
  Trainer tr(*f.model, f.ds.interactions, tc);
  tr.train_epoch();
  const int64_t mallocs = cuda::allocator_mallocs(*f.be);
  tr.train_epoch();
  tr.train_epoch();
  EXPECT_EQ(cuda::allocator_mallocs(*f.be), mallocs);
}
#endif

}  // namespace
}  // namespace towerrec
