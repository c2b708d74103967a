// The timing wrapper of `towerrec_e2e --profile` (bench/op_profile.h) forwards
// every op, the staged copies, fences and staging memory included: a training
// run through it gives the same state as without it, and a second wrapper
// inside it sees the staged ops arrive.
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "bench/op_profile.h"
#include "tests/model_fixture.h"
#include "tests/test_util.h"
#include "towerrec/backend.h"
#include "towerrec/trainer.h"

namespace towerrec {
namespace {

using bench::ProfilingBackend;

TrainConfig short_training(Loss loss) {
  TrainConfig tc;
  tc.epochs = 1;
  tc.batch_size = 8;
  tc.negatives = 2;
  tc.loss = loss;
  tc.sampler = Sampler::kPopularity;
  tc.optimizer.kind = OptimizerKind::kAdam;
  return tc;
}

std::vector<float> train(std::unique_ptr<Backend> be, const TrainConfig& tc,
                         const TowerConfig& tower) {
  testing::ModelFixture f(11, tower, std::move(be));
  Trainer tr(*f.model, f.ds.interactions, tc);
  tr.train_epoch();
  return testing::all_state(*f.model);
}

int64_t calls(const ProfilingBackend& p, const std::string& op) {
  const auto it = p.table().find(op);
  return it == p.table().end() ? 0 : it->second.calls;
}

TEST(ProfilingBackend, ForwardsEveryOpOfATraining) {
  for (const Loss loss : {Loss::kLogistic, Loss::kBpr, Loss::kSoftmax, Loss::kCcl})
    for (auto& be : testing::every_backend()) {
      SCOPED_TRACE(std::string(to_string(loss)) + " on " + be->describe());
      TowerConfig tower = testing::small_tower();
      tower.dropout = 0.2f;
      tower.normalize = in_batch_loss(loss);  // cosine scores: softmax and ccl only
      const TrainConfig tc = short_training(loss);
      const std::vector<float> want =
          train(be->kind() == DeviceKind::kCPU ? make_cpu_backend(1) : make_cuda_backend(0), tc,
                tower);
      // outer -> inner -> the real backend: what the outer forwards, the inner records.
      ProfilingBackend inner(*be);
      auto outer = std::make_unique<ProfilingBackend>(static_cast<Backend&>(inner));
      ProfilingBackend& out = *outer;
      testing::ModelFixture f(11, tower, std::move(outer));
      Trainer tr(*f.model, f.ds.interactions, tc);
      tr.train_epoch();
      EXPECT_EQ(testing::all_state(*f.model), want);
      EXPECT_EQ(out.memory_available() < 0, be->memory_available() < 0);
      std::vector<std::string> ops = {"copy (staged host<->backend)", "fence", "wait_fence",
                                      "allocate_host", "dense_forward", "dense_backward",
                                      "adam", "sparse_adam", "dropout", std::string(to_string(loss)) + "_loss"};
      if (tower.normalize) {
        ops.push_back("l2_normalize");
        ops.push_back("l2_normalize_backward");
      }
      for (const std::string& op : ops) {
        EXPECT_GT(calls(out, op), 0) << op;
        EXPECT_EQ(calls(inner, op), calls(out, op)) << op;
      }
      EXPECT_EQ(out.preferred_topk_users(1000, 8, 10), be->preferred_topk_users(1000, 8, 10));
    }
}

}  // namespace
}  // namespace towerrec
