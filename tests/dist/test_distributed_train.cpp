// Data-parallel training under mpirun -np N (ctest runs it with 2 ranks, CPU
// backend): N ranks with global batch B end where one rank with batch B ends,
// within float tolerance (the ranks' partial gradients are summed in another
// order than one rank's), for every loss and with pooled histories; a shard
// may be empty; ranks that
// disagree on the configuration or the data stop with an error naming the
// rank. Rank 0 trains the one-rank reference itself while the others wait.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include "towerrec/checkpoint.h"
#include "towerrec/comm.h"
#include "towerrec/data.h"
#include "towerrec/session.h"

namespace towerrec {
namespace {

Communicator* g_comm = nullptr;
// Shared by the ranks (one machine): under the test's working directory.
const std::string kDir = "dist-train-work";

std::string data_dir(int64_t users, int64_t items, double per_user, uint64_t seed) {
  const std::string dir = kDir + "/syn-" + std::to_string(users) + "-" + std::to_string(seed);
  if (g_comm->rank() == 0 && !std::filesystem::exists(dir + "/interactions.csv")) {
    SynthOptions o;
    o.users = users;
    o.items = items;
    o.interactions_per_user = per_user;
    o.seed = seed;
    write_synthetic(dir, o);
  }
  g_comm->barrier();
  return dir;
}

Config small_config(const std::string& data, const std::string& out, Loss loss) {
  Config c;
  c.data = data;
  c.out = kDir + "/" + out;
  c.threads = 1;
  c.device = "cpu";
  c.quiet = true;
  c.train.loss = loss;
  c.train.batch_size = 100;  // 12 steps an epoch, the last one short
  c.tower.hidden = {16};
  c.tower.out_dim = 8;
  c.tower.id_dim = 8;
  c.train.epochs = 2;
  c.checkpoint_every_minutes = 0;
  resolve_defaults(c);
  return c;
}

struct Diff {
  double max_abs = 0, max_rel = 0;
  std::string where;
};

// The largest difference between two checkpoints' tensors, as
// |a - b| / (atol + |b|) (a relative difference that does not blow up near 0).
Diff compare(const Checkpoint& a, const Checkpoint& b, double atol) {
  Diff d;
  EXPECT_EQ(a.state.names, b.state.names);
  EXPECT_EQ(a.state.steps, b.state.steps);
  for (size_t t = 0; t < a.state.tensors.size() && t < b.state.tensors.size(); ++t) {
    const auto& x = a.state.tensors[t];
    const auto& y = b.state.tensors[t];
    EXPECT_EQ(x.size(), y.size()) << a.state.names[t];
    for (size_t i = 0; i < x.size() && i < y.size(); ++i) {
      const double e = std::abs(static_cast<double>(x[i]) - y[i]);
      const double r = e / (atol + std::abs(static_cast<double>(y[i])));
      d.max_abs = std::max(d.max_abs, e);
      if (r > d.max_rel) {
        d.max_rel = r;
        d.where = a.state.names[t] + "[" + std::to_string(i) + "]: " + std::to_string(x[i]) + " vs " +
                  std::to_string(y[i]);
      }
    }
  }
  return d;
}

// Trains `c` on every rank (distributed) and, on rank 0, on one rank; then
// rank 0 compares the two checkpoints.
void expect_same_as_one_rank(Config c, double rtol) {
  const std::string out = c.out;
  SessionOptions dist;
  dist.comm = g_comm;
  c.out = out + "-n" + std::to_string(g_comm->size());
  SessionResult r;
  {
    TrainingSession s(c, dist);
    r = s.run();
  }
  EXPECT_EQ(r.end, SessionResult::End::kCompleted);
  // Only rank 0 writes.
  if (g_comm->rank() == 0) {
    c.out = out + "-n1";
    TrainingSession one(c);
    const SessionResult r1 = one.run();
    ASSERT_EQ(r1.history.size(), r.history.size());
    for (size_t e = 0; e < r.history.size(); ++e) {
      EXPECT_NEAR(r.history[e].loss, r1.history[e].loss, 1e-4 * (1 + std::abs(r1.history[e].loss)))
          << "epoch " << e + 1;
      EXPECT_EQ(r.history[e].samples, r1.history[e].samples);
    }
    const Checkpoint a = load_checkpoint(out + "-n" + std::to_string(g_comm->size()) + "/model.ckpt");
    const Checkpoint b = load_checkpoint(out + "-n1/model.ckpt");
    const Diff d = compare(a, b, 1e-3);
    std::printf("[ %s ] %d ranks vs 1: max |diff| %.3g, max |diff|/(1e-3 + |x|) %.3g (%s)\n",
                to_string(c.train.loss), g_comm->size(), d.max_abs, d.max_rel, d.where.c_str());
    EXPECT_LE(d.max_rel, rtol) << d.where;
  }
  g_comm->barrier();
}

TEST(DistributedTrain, LogisticMatchesOneRank) {
  expect_same_as_one_rank(small_config(data_dir(100, 50, 12, 9), "logistic", Loss::kLogistic), 1e-3);
}

// BPR with SGD: under BPR the item tower's output bias b adds <u, b> to all
// of a user's scores alike, so its exact gradient is 0 and what is computed is
// round-off; Adam's first steps scale that noise up to about lr (g / (|g| +
// eps)), differently on 1 and 2 ranks. SGD keeps the comparison meaningful.
TEST(DistributedTrain, BprMatchesOneRank) {
  Config c = small_config(data_dir(100, 50, 12, 9), "bpr", Loss::kBpr);
  c.train.optimizer.kind = OptimizerKind::kSgd;
  expect_same_as_one_rank(c, 1e-3);
}

TEST(DistributedTrain, SoftmaxMatchesOneRank) {
  expect_same_as_one_rank(small_config(data_dir(100, 50, 12, 9), "softmax", Loss::kSoftmax), 1e-3);
}

TEST(DistributedTrain, CclMatchesOneRank) {
  expect_same_as_one_rank(small_config(data_dir(100, 50, 12, 9), "ccl", Loss::kCcl), 1e-3);
}

// Batches of one positive: every rank but one has an empty shard each step.
TEST(DistributedTrain, EmptyShardsMatchOneRank) {
  Config c = small_config(data_dir(12, 10, 3, 4), "tiny", Loss::kLogistic);
  c.train.batch_size = 1;
  c.train.epochs = 1;
  expect_same_as_one_rank(c, 1e-3);
}

// The dense gradients summed in buckets (bucket-mb; the item tower's started
// during the user tower's backward) end in the same bits as one all-reduce of
// the whole arena after the backward (bucket-mb 0): every float is summed over
// the same ranks, only in other messages.
Checkpoint train_distributed(Config c, const std::string& out) {
  c.out = c.out + "-" + out;
  SessionOptions dist;
  dist.comm = g_comm;
  {
    TrainingSession s(c, dist);
    EXPECT_EQ(s.run().end, SessionResult::End::kCompleted);
  }
  g_comm->barrier();
  return load_checkpoint(c.out + "/model.ckpt");
}

TEST(DistributedTrain, BucketedGradientSumsAreBitIdenticalToOneSum) {
  std::vector<Config> configs = {small_config(data_dir(100, 50, 12, 9), "bucket-logistic", Loss::kLogistic),
                                 small_config(data_dir(100, 50, 12, 9), "bucket-softmax", Loss::kSoftmax),
                                 small_config(data_dir(12, 10, 3, 4), "bucket-tiny", Loss::kLogistic)};
  configs[0].tower.history = 5;
  configs[0].tower.history_dim = 8;
  configs[2].train.batch_size = 1;  // empty shards: a rank with no backward joins the sums
  configs[2].train.epochs = 1;
  for (Config& c : configs) {
    c.train.bucket_mb = 0;
    const Checkpoint one_sum = train_distributed(c, "one-sum");
    for (float mb : {0.0005f, 4.0f}) {  // 131 floats (many buckets), one bucket per tower
      c.train.bucket_mb = mb;
      const Checkpoint bucketed = train_distributed(c, "bucket-" + std::to_string(mb));
      ASSERT_EQ(bucketed.state.tensors.size(), one_sum.state.tensors.size());
      for (size_t t = 0; t < one_sum.state.tensors.size(); ++t)
        EXPECT_TRUE(bucketed.state.tensors[t] == one_sum.state.tensors[t])
            << c.out << ", bucket-mb " << mb << ": " << one_sum.state.names[t] << " differs";
    }
  }
}

TEST(DistributedTrain, RanksThatDisagreeOnTheConfigurationStop) {
  Config c = small_config(data_dir(100, 50, 12, 9), "cfg-mismatch", Loss::kLogistic);
  if (g_comm->rank() == 1) c.train.optimizer.lr *= 2;
  SessionOptions dist;
  dist.comm = g_comm;
  try {
    TrainingSession s(c, dist);
    ADD_FAILURE() << "ranks with different learning rates trained";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("rank 1 differs from rank 0 in its configuration"), std::string::npos)
        << e.what();
  }
  g_comm->barrier();
}

// The same command line (relative paths) run in another directory on rank 1,
// where `syn` holds other interactions: the data check stops both ranks.
TEST(DistributedTrain, RanksThatDisagreeOnTheDataStop) {
  const std::string mine = kDir + "/cwd" + std::to_string(g_comm->rank());
  SynthOptions o;
  o.users = 60;
  o.items = 30;
  o.interactions_per_user = 8;
  o.seed = 20 + static_cast<uint64_t>(g_comm->rank() == 0 ? 0 : 1);
  write_synthetic(mine + "/syn", o);
  const auto cwd = std::filesystem::current_path();
  std::filesystem::current_path(mine);
  Config c = small_config("syn", "ignored", Loss::kLogistic);
  c.out = "out";
  SessionOptions dist;
  dist.comm = g_comm;
  try {
    TrainingSession s(c, dist);
    ADD_FAILURE() << "ranks with different data trained";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("rank 1 differs from rank 0 in its training data"), std::string::npos)
        << e.what();
  }
  std::filesystem::current_path(cwd);
  g_comm->barrier();
}

// Pooled histories leave out each user's positives of the whole global
// batch, those in other ranks' shards included, as one rank's do.
TEST(DistributedTrain, HistoryPoolingMatchesOneRank) {
  Config c = small_config(data_dir(100, 50, 12, 9), "history", Loss::kLogistic);
  c.tower.history = 5;
  c.tower.history_dim = 8;
  expect_same_as_one_rank(c, 1e-3);
}

// A history read from the item tower's ID rows: the rows the bags touch join
// the ranks' union of item rows, as on one rank.
TEST(DistributedTrain, SharedHistoryMatchesOneRank) {
  Config c = small_config(data_dir(100, 50, 12, 9), "history-shared", Loss::kSoftmax);
  c.tower.history = 5;
  c.tower.history_shared = true;
  expect_same_as_one_rank(c, 1e-3);
}

}  // namespace
}  // namespace towerrec

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  auto comm = towerrec::make_mpi_communicator(300.0);
  towerrec::g_comm = comm.get();
  if (comm->rank() == 0) {
    std::error_code ec;
    std::filesystem::remove_all(towerrec::kDir, ec);
    std::filesystem::create_directories(towerrec::kDir);
  }
  comm->barrier();
  const int rc = RUN_ALL_TESTS();
  const bool failed = comm->any(rc != 0);
  towerrec::g_comm = nullptr;
  comm.reset();
  return failed ? 1 : 0;
}
