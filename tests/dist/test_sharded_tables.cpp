// Row-sharded ID-embedding tables (--table-sharding rows) under mpirun -np N
// (ctest runs 2 ranks, CPU backend): row r of each ID table and its Adam
// moments live on rank r mod N; each step fetches the batch's rows from their
// owners and sends their gradients back. Checked here: N ranks in rows mode
// end within float tolerance of one rank, and (2 ranks) bit for bit where N replicated
// ranks end (the owner sums a row's contributions in rank order, the order
// of the replicated all-reduce), for Adam and SGD with embedding decay, the
// logistic and softmax losses, pooled histories and empty shards; the
// checkpoint a sharded run writes (a main file and one shard file per rank,
// saved without gathering a table; broken shards refused by name) loads
// whole on one rank, by row shard on any rank count, and resumes on one
// rank and on N, and a one-rank checkpoint resumes sharded; evaluation after a sharded run sees the whole
// tables; each rank holds only its rows; ranks that disagree on the
// sharding stop with an error saying so.
// Rank 0 trains the references itself while the others wait.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <string>

#include "tests/compare.h"
#include "towerrec/checkpoint.h"
#include "towerrec/comm.h"
#include "towerrec/data.h"
#include "towerrec/session.h"

namespace towerrec {
namespace {

using towerrec::testing::near;

Communicator* g_comm = nullptr;
const std::string kDir = "dist-shard-work";

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

Config small_config(const std::string& data, const std::string& out, Loss loss, OptimizerKind opt) {
  Config c;
  c.data = data;
  c.out = kDir + "/" + out;
  c.threads = 1;
  c.device = "cpu";
  c.quiet = true;
  c.train.loss = loss;
  c.train.optimizer.kind = opt;
  if (opt == OptimizerKind::kSgd) c.train.optimizer.lr = 0.05f;
  c.train.optimizer.embedding_decay = 0.5f;  // decay on the touched rows
  c.data_auto.erase("embedding-decay");
  c.train.batch_size = 100;  // 12 steps an epoch, the last one short
  c.tower.hidden = {16};
  c.tower.out_dim = 8;
  c.tower.id_dim = 8;
  c.train.epochs = 2;
  c.train.lr_schedule = LrSchedule::kConstant;  // a resumed run matches an uninterrupted one
  c.checkpoint_every_minutes = 0;
  resolve_defaults(c);
  return c;
}

struct Diff {
  double max_abs = 0, max_rel = 0;
  int64_t not_near = 0;  // elements outside tolerance, NaN included
  std::string where;
};

// Every tensor element of `a` against `b`: |a - b| <= rtol (atol + |b|), which
// a NaN on either side fails (testing::near); max_abs and max_rel report the
// largest differences (infinite for a NaN).
Diff compare(const Checkpoint& a, const Checkpoint& b, double rtol, double atol = 1e-3) {
  Diff d;
  EXPECT_EQ(a.state.names, b.state.names);
  EXPECT_EQ(a.state.steps, b.state.steps);
  for (size_t t = 0; t < a.state.tensors.size() && t < b.state.tensors.size(); ++t) {
    const auto& x = a.state.tensors[t];
    const auto& y = b.state.tensors[t];
    EXPECT_EQ(x.size(), y.size()) << a.state.names[t];
    for (size_t i = 0; i < x.size() && i < y.size(); ++i) {
      const double tol = rtol * (atol + std::abs(static_cast<double>(y[i])));
      const bool ok = near(x[i], y[i], tol);
      double e = std::abs(static_cast<double>(x[i]) - y[i]);
      if (!ok && !(e > tol)) e = std::numeric_limits<double>::infinity();  // NaN
      const double r = e / (atol + std::abs(static_cast<double>(y[i])));
      d.max_abs = std::max(d.max_abs, e);
      if (!ok) ++d.not_near;
      if (r > d.max_rel || (!ok && d.where.empty())) {
        d.max_rel = std::max(d.max_rel, r);
        d.where = a.state.names[t] + "[" + std::to_string(i) + "]: " + std::to_string(x[i]) + " vs " +
                  std::to_string(y[i]);
      }
    }
  }
  return d;
}

Checkpoint load(const std::string& out) { return load_checkpoint(out + "/model.ckpt"); }

// Trains `c` distributed with the given sharding; returns the run's
// collective payload bytes per step sent by this rank.
double train_distributed(Config c, const std::string& sharding, const std::string& out,
                         SessionResult* result = nullptr, HoldoutEvaluation* ev = nullptr,
                         bool resume = false) {
  c.table_sharding = sharding;
  c.out = out;
  SessionOptions dist;
  dist.comm = g_comm;
  dist.resume = resume;
  const int64_t before = g_comm->bytes_sent();
  TrainingSession s(c, dist);
  EXPECT_EQ(s.table_sharding(), sharding);
  if (sharding == "rows") {  // this rank holds its rows only: r % N == rank
    const int N = g_comm->size(), q = g_comm->rank();
    for (Tower* t : {&s.model().user_tower(), &s.model().item_tower()}) {
      const int64_t n = t->spec().n_entities;
      EXPECT_EQ(t->local_rows(), n > q ? (n - q - 1) / N + 1 : 0) << t->name();
    }
  }
  const SessionResult r = s.run();
  EXPECT_NE(r.end, SessionResult::End::kStopped);
  int64_t steps = 0;
  for (const auto& h : r.history) steps += h.steps;
  const int64_t sent = g_comm->bytes_sent() - before;
  if (ev) *ev = s.evaluate();  // rank 0 evaluates; the others return at once
  if (result) *result = r;
  return static_cast<double>(sent) / static_cast<double>(std::max<int64_t>(steps, 1));
}

// rows on N ranks against replicated on N ranks (bit for bit) and one rank
// (within rtol).
void expect_rows_match(Config c, double rtol, bool with_holdout = false) {
  const std::string out = c.out;
  if (with_holdout) c.holdout = 0.2;
  SessionResult rr, rp;
  HoldoutEvaluation er, ep;
  const double rows_b = train_distributed(c, "rows", out + "-rows", &rr, &er);
  const double repl_b = train_distributed(c, "replicated", out + "-repl", &rp, &ep);
  if (g_comm->rank() == 0) {
    c.out = out + "-n1";
    TrainingSession one(c);
    const SessionResult r1 = one.run();
    ASSERT_EQ(r1.history.size(), rr.history.size());
    for (size_t e = 0; e < rr.history.size(); ++e) {
      EXPECT_TRUE(near(rr.history[e].loss, r1.history[e].loss, 1e-4 * (1 + std::abs(r1.history[e].loss))))
          << "epoch " << e + 1 << ": " << rr.history[e].loss << " vs " << r1.history[e].loss;
      EXPECT_TRUE(near(rr.history[e].loss, rp.history[e].loss, 0.0)) << "epoch " << e + 1;
    }
    const Checkpoint rows = load(out + "-rows"), repl = load(out + "-repl"), one_rank = load(out + "-n1");
    const Diff d1 = compare(rows, one_rank, rtol);
    const Diff dr = compare(rows, repl, 0.0, 0.0);
    std::printf("[ %s/%s ] %d ranks rows vs 1 rank: max |diff| %.3g, max rel %.3g (%s); rows vs replicated: "
                "max |diff| %.3g (%lld elements differ); rank 0 sent %.1f KiB/step (rows) vs %.1f KiB/step "
                "(replicated)\n",
                to_string(c.train.loss), to_string(c.train.optimizer.kind), g_comm->size(), d1.max_abs,
                d1.max_rel, d1.where.c_str(), dr.max_abs, static_cast<long long>(dr.not_near),
                rows_b / 1024.0, repl_b / 1024.0);
    EXPECT_EQ(d1.not_near, 0) << d1.where;
    EXPECT_EQ(dr.not_near, 0) << "rows and replicated differ: " << dr.where;
    if (with_holdout) {
      ASSERT_TRUE(er.done && ep.done);
      for (size_t k = 0; k < er.model.ndcg.size(); ++k) {
        EXPECT_TRUE(near(er.model.ndcg[k], ep.model.ndcg[k], 0.0)) << er.model.ndcg[k] << " vs " << ep.model.ndcg[k];
        EXPECT_TRUE(near(er.model.recall[k], ep.model.recall[k], 0.0));
      }
    }
  }
  g_comm->barrier();
}

TEST(ShardedTables, LogisticAdamMatchesOneRankAndReplicated) {
  expect_rows_match(small_config(data_dir(100, 50, 12, 9), "log-adam", Loss::kLogistic, OptimizerKind::kAdam),
                    1e-3, /*with_holdout=*/true);
}

TEST(ShardedTables, LogisticSgdMatchesOneRankAndReplicated) {
  expect_rows_match(small_config(data_dir(100, 50, 12, 9), "log-sgd", Loss::kLogistic, OptimizerKind::kSgd),
                    1e-3);
}

TEST(ShardedTables, SoftmaxAdamMatchesOneRankAndReplicated) {
  expect_rows_match(small_config(data_dir(100, 50, 12, 9), "sm-adam", Loss::kSoftmax, OptimizerKind::kAdam),
                    1e-3);
}

TEST(ShardedTables, SoftmaxSgdMatchesOneRankAndReplicated) {
  expect_rows_match(small_config(data_dir(100, 50, 12, 9), "sm-sgd", Loss::kSoftmax, OptimizerKind::kSgd),
                    1e-3);
}

TEST(ShardedTables, HistoryPoolingMatches) {
  Config c = small_config(data_dir(100, 50, 12, 9), "hist", Loss::kLogistic, OptimizerKind::kAdam);
  c.tower.history = 5;
  c.tower.history_dim = 8;
  expect_rows_match(c, 1e-3);
}

// Batches of one positive: one rank's shard is empty every step; it still
// answers the other's row requests and takes its gradients.
TEST(ShardedTables, EmptyShardsMatch) {
  Config c = small_config(data_dir(12, 10, 3, 4), "tiny", Loss::kLogistic, OptimizerKind::kAdam);
  c.train.batch_size = 1;
  c.train.epochs = 1;
  expect_rows_match(c, 1e-3);
}

// A checkpoint of a sharded run (main file and shards) loads into any rank
// count: one rank resumes it, and a one-rank checkpoint resumes sharded,
// each ending where an uninterrupted one-rank run ends (within tolerance).
TEST(ShardedTables, CheckpointsResumeAcrossRankCounts) {
  const Config base = small_config(data_dir(100, 50, 12, 9), "resume", Loss::kLogistic, OptimizerKind::kAdam);
  const std::string out = base.out;
  Config one_epoch = base;
  one_epoch.train.epochs = 1;
  // N ranks sharded for one epoch, then one rank for the second.
  train_distributed(one_epoch, "rows", out + "-a");
  // One rank for one epoch, then N ranks sharded for the second.
  if (g_comm->rank() == 0) {
    Config c = one_epoch;
    c.out = out + "-b";
    TrainingSession s(c);
    s.run();
  }
  g_comm->barrier();
  SessionResult rb;
  train_distributed(base, "rows", out + "-b", &rb, nullptr, /*resume=*/true);
  if (g_comm->rank() == 0) {
    ASSERT_EQ(rb.history.size(), 1u);
    EXPECT_EQ(rb.history[0].epoch, 2);
    Config c = base;
    c.out = out + "-a";
    SessionOptions resume;
    resume.resume = true;
    TrainingSession a(c, resume);
    const SessionResult ra = a.run();
    ASSERT_EQ(ra.history.size(), 1u);
    c.out = out + "-ref";
    TrainingSession ref(c);
    ref.run();
    const Checkpoint r = load(out + "-ref");
    for (const char* which : {"-a", "-b"}) {
      const Diff d = compare(load(out + which), r, 1e-3);
      std::printf("[ resume%s ] vs uninterrupted one rank: max |diff| %.3g, max rel %.3g (%s)\n", which,
                  d.max_abs, d.max_rel, d.where.c_str());
      EXPECT_EQ(d.not_near, 0) << which << ": " << d.where;
    }
  }
  g_comm->barrier();
}

// Evaluation every epoch with early stopping (a collective gather of the
// tables before each evaluation, the best epoch's state kept and reloaded):
// the same run and checkpoint as replicated tables.
TEST(ShardedTables, EarlyStoppingMatchesReplicated) {
  Config c = small_config(data_dir(100, 50, 12, 9), "early", Loss::kSoftmax, OptimizerKind::kAdam);
  c.holdout = 0.2;
  c.eval_every = 1;
  c.early_stopping = 1;
  c.train.epochs = 8;
  c.train.optimizer.lr = 0.05f;  // overfits within a few epochs: early stopping ends the run
  SessionResult rr, rp;
  HoldoutEvaluation er, ep;
  train_distributed(c, "rows", c.out + "-rows", &rr, &er);
  train_distributed(c, "replicated", c.out + "-repl", &rp, &ep);
  if (g_comm->rank() == 0) {
    ASSERT_EQ(rr.history.size(), rp.history.size());
    EXPECT_LT(rr.history.size(), 8u) << "early stopping did not end the run";
    const Diff d = compare(load(c.out + "-rows"), load(c.out + "-repl"), 0.0, 0.0);
    EXPECT_EQ(d.not_near, 0) << d.where;
    ASSERT_TRUE(er.done && ep.done);
    EXPECT_TRUE(near(er.model.ndcg[0], ep.model.ndcg[0], 0.0)) << er.model.ndcg[0] << " vs " << ep.model.ndcg[0];
    std::printf("[ early stopping ] %zu epochs run; rows vs replicated: %lld elements differ\n", rr.history.size(),
                static_cast<long long>(d.not_near));
  }
  g_comm->barrier();
}

std::vector<std::string> shard_files(const std::string& dir) {
  std::vector<std::string> v;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (name.rfind("model.ckpt.rows-", 0) == 0) v.push_back(name);
  }
  std::sort(v.begin(), v.end());
  return v;
}

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void spit(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

// load_checkpoint of `main` fails with a message naming `file`.
void expect_load_error(const std::string& main, const std::string& file, const std::string& what) {
  try {
    load_checkpoint(main);
    ADD_FAILURE() << what << ": " << main << " loaded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(file), std::string::npos) << what << ": " << e.what();
  }
}

// A rows-mode checkpoint on N ranks is a main file and N shard files (each
// rank's rows; no rank assembles a whole table to save), replaced together
// by each save; it loads whole on one rank (bit for bit what replicated
// tables write), by row shard on any rank count, and resumes on N ranks
// where an uninterrupted run ends. A missing, truncated, corrupted or stale
// shard is an error naming the file.
TEST(ShardedTables, CheckpointIsAMainFileAndOneShardPerRank) {
  const int N = g_comm->size();
  Config c = small_config(data_dir(100, 50, 12, 9), "files", Loss::kLogistic, OptimizerKind::kAdam);
  c.checkpoint_every_steps = 5;  // mid-epoch saves too, each replacing the last
  const std::string out = c.out;
  Config one = c;
  one.train.epochs = 1;
  {
    one.table_sharding = "rows";
    one.out = out + "-rows";
    SessionOptions dist;
    dist.comm = g_comm;
    TrainingSession s(one, dist);
    const int64_t before = s.model().table_gathers();
    s.run();
    // Only run()'s gather for inference after training (one per tower); the
    // saves gathered nothing.
    EXPECT_EQ(s.model().table_gathers() - before, 2);
  }
  train_distributed(one, "replicated", out + "-repl");
  // Resumed on N ranks for the second epoch, against an uninterrupted run.
  train_distributed(c, "rows", out + "-rows", nullptr, nullptr, /*resume=*/true);
  train_distributed(c, "rows", out + "-whole");
  if (g_comm->rank() == 0) {
    const std::string ckpt = out + "-rows/model.ckpt";
    const auto files = shard_files(out + "-rows");
    ASSERT_EQ(files.size(), static_cast<size_t>(N)) << "stale shards left behind?";
    for (int q = 0; q < N; ++q)
      EXPECT_EQ(files[q].rfind("model.ckpt.rows-" + std::to_string(q) + "-of-" + std::to_string(N) + ".", 0), 0u)
          << files[q];
    EXPECT_TRUE(shard_files(out + "-repl").empty());
    const Checkpoint resumed = load(out + "-rows"), whole = load(out + "-whole");
    EXPECT_EQ(resumed.table_shards, N);
    const Diff d = compare(resumed, whole, 0.0, 0.0);
    EXPECT_EQ(d.not_near, 0) << "resumed on " << N << " ranks: " << d.where;
    // By row shard on 3 ranks (r mod N -> r mod 3): each its rows, in order.
    for (int q = 0; q < 3; ++q) {
      const Checkpoint part = load_checkpoint(ckpt, TableShard{q, 3});
      EXPECT_EQ(part.state.rows.rank, q);
      EXPECT_EQ(part.state.rows.ranks, 3);
      ASSERT_EQ(part.state.names, whole.state.names);
      for (size_t t = 0; t < part.state.names.size(); ++t) {
        const auto& name = part.state.names[t];
        const auto& full = whole.state.tensors[t];
        if (name.rfind("arena.", 0) == 0) {
          EXPECT_EQ(part.state.tensors[t], full) << name;
          continue;
        }
        const int64_t n = name.rfind("user.", 0) == 0 ? whole.users.size() : whole.items.size();
        const size_t dim = full.size() / static_cast<size_t>(n);
        std::vector<float> want;
        for (int64_t r = q; r < n; r += 3) want.insert(want.end(), full.begin() + r * dim, full.begin() + (r + 1) * dim);
        EXPECT_EQ(part.state.tensors[t], want) << name << " of shard " << q;
      }
    }
    // The replicated single file: version 1, and written again byte for byte.
    const std::string repl = slurp(out + "-repl/model.ckpt");
    ASSERT_GT(repl.size(), 12u);
    uint32_t version = 0;
    std::memcpy(&version, repl.data() + 8, 4);
    EXPECT_EQ(version, kCheckpointVersion);
    save_checkpoint(out + "-again.ckpt", load_checkpoint(out + "-repl/model.ckpt"));
    EXPECT_TRUE(slurp(out + "-again.ckpt") == repl);
    // Broken shards, each in its own copy of the checkpoint.
    int k = 0;
    auto copy = [&](const std::string& why) {
      const std::string dir = out + "-broken-" + std::to_string(k++);
      std::filesystem::create_directories(dir);
      for (const auto& e : std::filesystem::directory_iterator(out + "-rows"))
        if (e.path().filename().string().rfind("model.ckpt", 0) == 0)
          std::filesystem::copy_file(e.path(), dir + "/" + e.path().filename().string());
      std::printf("[ broken shard ] %s in %s\n", why.c_str(), dir.c_str());
      return dir;
    };
    {
      const std::string dir = copy("missing");
      std::filesystem::remove(dir + "/" + files[N - 1]);
      expect_load_error(dir + "/model.ckpt", dir + "/" + files[N - 1], "missing shard");
    }
    {
      const std::string dir = copy("truncated");
      const std::string f = dir + "/" + files[0];
      std::filesystem::resize_file(f, std::filesystem::file_size(f) - 7);
      expect_load_error(dir + "/model.ckpt", f, "truncated shard");
    }
    {
      const std::string dir = copy("corrupted");
      const std::string f = dir + "/" + files[0];
      std::string bytes = slurp(f);
      bytes[bytes.size() / 2] ^= 0x10;
      spit(f, bytes);
      expect_load_error(dir + "/model.ckpt", f, "corrupted shard");
    }
    {
      // Another save's shard under this save's name (the same size).
      const std::string dir = copy("stale");
      const auto other = shard_files(out + "-whole");
      ASSERT_EQ(other.size(), static_cast<size_t>(N));
      std::filesystem::copy_file(out + "-whole/" + other[0], dir + "/" + files[0],
                                 std::filesystem::copy_options::overwrite_existing);
      expect_load_error(dir + "/model.ckpt", dir + "/" + files[0], "stale shard");
    }
    {
      // A shard given as the checkpoint.
      expect_load_error(out + "-rows/" + files[0], out + "-rows/" + files[0], "shard as the main file");
    }
  }
  g_comm->barrier();
  // One rank resuming a sharded checkpoint writes one file and drops the
  // shards (and a killed writer's temporary shard file).
  if (g_comm->rank() == 0) {
    spit(out + "-rows/model.ckpt.rows-1-of-2.00000000000000ff.tmp.999999999", "partial");
    Config c3 = c;
    c3.train.epochs = 3;
    c3.out = out + "-rows";
    SessionOptions resume;
    resume.resume = true;
    TrainingSession s(c3, resume);
    s.run();
    EXPECT_TRUE(shard_files(out + "-rows").empty());
    EXPECT_EQ(load(out + "-rows").table_shards, 0);
  }
  g_comm->barrier();
}

TEST(ShardedTables, RanksThatDisagreeOnTheShardingStop) {
  Config c = small_config(data_dir(100, 50, 12, 9), "mismatch", Loss::kLogistic, OptimizerKind::kAdam);
  c.table_sharding = g_comm->rank() == 1 ? "rows" : "replicated";
  SessionOptions dist;
  dist.comm = g_comm;
  try {
    TrainingSession s(c, dist);
    ADD_FAILURE() << "ranks with different table shardings trained";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("rank 1 shards the ID tables as 'rows', rank 0 as 'replicated'"),
              std::string::npos)
        << e.what();
    EXPECT_NE(std::string(e.what()).find("every rank must use the same table sharding"), std::string::npos)
        << e.what();
  }
  g_comm->barrier();
}

TEST(ShardedTables, AutoPicksReplicatedForSmallTablesAndOneRank) {
  EXPECT_EQ(resolve_table_sharding("auto", 1, int64_t{1} << 40), "replicated");
  EXPECT_EQ(resolve_table_sharding("rows", 1, 0), "replicated");
  EXPECT_EQ(resolve_table_sharding("auto", 2, 1000), "replicated");
  EXPECT_EQ(resolve_table_sharding("auto", 2, kAutoRowsShardingBytes), "rows");  // x3 with Adam state
  EXPECT_EQ(resolve_table_sharding("rows", 2, 0), "rows");
  EXPECT_EQ(resolve_table_sharding("replicated", 4, int64_t{1} << 40), "replicated");
  EXPECT_THROW(resolve_table_sharding("columns", 2, 0), Error);
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
