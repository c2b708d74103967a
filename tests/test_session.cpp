// TrainingSession without the command line: a resumed run ends bit-identical
// to an uninterrupted one on the CPU; --checkpoint-every-steps writes
// mid-epoch checkpoints; a stop request ends cleanly with a checkpoint that
// resumes; early stopping triggers and keeps the best epoch; a diverging run
// throws DivergedError and keeps the last good checkpoint.
#include <gtest/gtest.h>

#include <cmath>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tests/work_dir.h"
#include "towerrec/checkpoint.h"
#include "towerrec/data.h"
#include "towerrec/error.h"
#include "towerrec/io.h"
#include "towerrec/session.h"

namespace towerrec {
namespace {

std::string path(const std::string& name) { return testing::work_path(name); }

const std::string& data_dir() {
  static const std::string dir = [] {
    SynthOptions o;
    o.users = 120;
    o.items = 60;
    o.interactions_per_user = 12;
    o.seed = 9;
    write_synthetic(path("syn"), o);
    return path("syn");
  }();
  return dir;
}

// A small model on the CPU with one thread: deterministic.
Config small_config(const std::string& out) {
  Config c;
  c.data = data_dir();
  c.out = path(out);
  c.threads = 1;
  c.device = "cpu";
  c.quiet = true;
  c.train.batch_size = 64;
  c.tower.hidden = {16};
  c.tower.out_dim = 8;
  c.tower.id_dim = 8;
  c.train.epochs = 3;
  c.data_auto.clear();  // the fields above, not the data's defaults
  c.checkpoint_every_minutes = 0;
  resolve_defaults(c);
  return c;
}

// Left "auto", the tower shape and epochs come from the data's density, and
// OUT/config.json records the values used, not "auto"; a field set in code
// stays as set.
TEST(TrainingSession, DataShapedDefaultsAreResolvedAndSaved) {
  SynthOptions o;  // 300 users x 1500 items, 4 interactions each: density 0.27%
  o.users = 300;
  o.items = 1500;
  o.interactions_per_user = 4;
  o.seed = 4;
  write_synthetic(path("syn_sparse"), o);
  Config c = small_config("s_auto");
  c.data = path("syn_sparse");
  c.tower = TowerConfig{};
  c.tower.out_dim = 8;  // set in code: kept
  c.data_auto = {"hidden", "id-dim", "dim"};
  std::vector<std::string> notes;
  SessionCallbacks cb;
  cb.note = [&](const std::string& line) { notes.push_back(line); };
  c.quiet = false;
  TrainingSession s(c, {}, cb);
  EXPECT_TRUE(s.config().tower.hidden.empty());
  EXPECT_EQ(s.config().tower.id_dim, 128);
  EXPECT_EQ(s.config().tower.out_dim, 8) << "set in code";
  EXPECT_EQ(s.config().train.epochs, 3) << "given, not auto";
  bool said = false;
  for (const auto& n : notes) said |= n.find("defaults for sparse data") != std::string::npos;
  EXPECT_TRUE(said);
  const auto j = nlohmann::json::parse(read_file(path("s_auto") + "/config.json"));
  EXPECT_EQ(j["hidden"], "none");
  EXPECT_EQ(j["id-dim"], 128);
  EXPECT_EQ(j["dim"], 8);
}

bool all_finite(const Checkpoint& ck) {
  for (const auto& t : ck.state.tensors)
    for (float x : t)
      if (!std::isfinite(x)) return false;
  return true;
}

void expect_same_state(const Checkpoint& a, const Checkpoint& b) {
  EXPECT_EQ(a.epochs_done, b.epochs_done);
  EXPECT_EQ(a.step, b.step);
  EXPECT_EQ(a.state.steps, b.state.steps);
  EXPECT_EQ(a.state.names, b.state.names);
  EXPECT_TRUE(a.state.tensors == b.state.tensors) << "model state differs (not bit-identical)";
}

TEST(Session, ResumedRunIsBitIdenticalToAnUninterruptedOne) {
  TrainingSession whole(small_config("s_whole"));
  const SessionResult w = whole.run();
  EXPECT_EQ(w.end, SessionResult::End::kCompleted);
  EXPECT_EQ(w.history.size(), 3u);

  // Stopped after the first step of the run, resumed mid-epoch, stopped
  // again, then resumed to the end.
  for (int round = 0; round < 2; ++round) {
    SessionOptions opt;
    opt.resume = round > 0;
    TrainingSession part(small_config("s_part"), opt);
    part.request_stop();
    const SessionResult r = part.run();
    ASSERT_EQ(r.end, SessionResult::End::kStopped);
    EXPECT_TRUE(r.mid_epoch);
    EXPECT_EQ(r.position.step, round + 1);
    EXPECT_EQ(load_checkpoint(part.checkpoint_path()).step, round + 1);
  }
  SessionOptions opt;
  opt.resume = true;
  std::vector<std::string> notes;
  SessionCallbacks cb;
  cb.warn = [&](const std::string& s) { notes.push_back(s); };
  TrainingSession rest(small_config("s_part"), opt, cb);
  EXPECT_EQ(rest.run().end, SessionResult::End::kCompleted);
  EXPECT_TRUE(notes.empty()) << notes[0];
  expect_same_state(load_checkpoint(path("s_part/model.ckpt")), load_checkpoint(path("s_whole/model.ckpt")));

  // Nothing left to do.
  TrainingSession again(small_config("s_part"), opt);
  EXPECT_EQ(again.run().end, SessionResult::End::kNothingToDo);
}

// 1440 interactions in batches of 64: 23 steps an epoch, a checkpoint after
// every 4th, each read back while the run goes on (the progress callback runs
// before the step's checkpoint, so it finds the previous one).
TEST(Session, CheckpointEveryStepsWritesMidEpoch) {
  Config c = small_config("s_periodic");
  c.train.epochs = 1;
  c.checkpoint_every_steps = 4;
  c.log_every = 1;
  std::vector<int64_t> seen;
  TrainingSession* current = nullptr;
  SessionCallbacks cb;
  const std::string ckpt = path("s_periodic/model.ckpt");
  cb.progress = [&](const TrainProgress& p, int64_t, int64_t, double) {
    if (p.step % 4 == 1 && p.step > 4) seen.push_back(load_checkpoint(ckpt).step);
    if (p.step == 18) current->request_stop();
  };
  TrainingSession s(c, {}, cb);
  current = &s;
  const SessionResult r = s.run();
  EXPECT_EQ(seen, (std::vector<int64_t>{4, 8, 12, 16}));
  // The stop request after step 18 checkpoints there, between the periodic ones.
  ASSERT_EQ(r.end, SessionResult::End::kStopped);
  EXPECT_TRUE(r.mid_epoch);
  EXPECT_EQ(r.position.step, 18);
  EXPECT_EQ(load_checkpoint(ckpt).step, 18);
}

TEST(Session, StopRequestEndsWithAUsableCheckpoint) {
  Config c = small_config("s_stop");
  TrainingSession* current = nullptr;
  SessionCallbacks cb;
  // During the second epoch.
  cb.epoch_done = [&](const EpochStats& st, double, int64_t) {
    if (st.epoch == 1) current->request_stop(15);
  };
  TrainingSession s(c, {}, cb);
  current = &s;
  const SessionResult r = s.run();
  ASSERT_EQ(r.end, SessionResult::End::kStopped);
  EXPECT_EQ(r.signal, 15);
  EXPECT_FALSE(r.mid_epoch);  // requested after the epoch's last step
  EXPECT_EQ(r.position.epoch, 1);
  const Checkpoint ck = load_checkpoint(s.checkpoint_path());
  EXPECT_EQ(ck.epochs_done, 1);
  EXPECT_TRUE(all_finite(ck));
  SessionOptions opt;
  opt.resume = true;
  TrainingSession rest(c, opt);
  const SessionResult done = rest.run();
  EXPECT_EQ(done.end, SessionResult::End::kCompleted);
  EXPECT_EQ(done.history.size(), 2u);
  EXPECT_EQ(load_checkpoint(s.checkpoint_path()).epochs_done, 3);
}

TEST(Session, EarlyStoppingTriggersAndKeepsTheBestEpoch) {
  Config c = small_config("s_early");
  c.train.epochs = 40;
  c.holdout = 0.2;
  c.early_stopping = 1;
  // A learning rate this high overfits within a few epochs.
  c.train.optimizer.lr = 0.05f;
  c.train.lr_schedule = LrSchedule::kConstant;
  std::vector<std::string> out;
  SessionCallbacks cb;
  cb.out = [&](const std::string& s) { out.push_back(s); };
  int evaluations = 0;
  cb.metrics = [&](const std::string& label, const RankingMetrics&) {
    EXPECT_EQ(label, "validation");
    ++evaluations;
  };
  TrainingSession s(c, {}, cb);
  const SessionResult r = s.run();
  EXPECT_EQ(r.end, SessionResult::End::kCompleted);
  EXPECT_LT(r.history.size(), 40u);
  EXPECT_EQ(evaluations, static_cast<int>(r.history.size()));
  bool stopped = false, kept = false;
  for (const auto& line : out) {
    stopped |= line.rfind("early stopping:", 0) == 0;
    kept |= line.rfind("kept epoch ", 0) == 0;
  }
  EXPECT_TRUE(stopped);
  EXPECT_TRUE(kept);
  // The checkpoint holds the best epoch: the one before the last evaluation.
  EXPECT_EQ(load_checkpoint(s.checkpoint_path()).epochs_done, static_cast<int>(r.history.size()) - 1);
  const HoldoutEvaluation ev = s.evaluate();
  EXPECT_TRUE(ev.done);
  EXPECT_EQ(ev.label, "validation");
  EXPECT_GT(ev.model.ndcg[0], 0.0);
}

// Lines of a file, without the empty last one.
std::vector<std::string> lines_of(const std::string& p) {
  std::vector<std::string> v;
  std::istringstream in(read_file(p));
  for (std::string l; std::getline(in, l);)
    if (!l.empty()) v.push_back(l);
  return v;
}

TEST(Session, ValidationFileIsEvaluatedAndHistoryRecordsEveryEpoch) {
  // Every fifth interaction of the synthetic data is the validation file.
  const std::vector<std::string> rows = lines_of(data_dir() + "/interactions.csv");
  std::string train = rows[0] + "\n", val = rows[0] + "\n";
  for (size_t r = 1; r < rows.size(); ++r) (r % 5 == 0 ? val : train) += rows[r] + "\n";
  write_file_atomic(path("vf_train.csv"), train);
  write_file_atomic(path("vf_val.csv"), val);
  Config c = small_config("s_vf");
  c.train_file = path("vf_train.csv");
  c.validation_file = path("vf_val.csv");
  c.eval_every = 1;
  c.train.epochs = 1;
  {
    TrainingSession s(c);
    s.run();
    s.evaluate();  // as train does: the last epoch's metrics come from here
  }
  const std::vector<std::string> first = lines_of(c.out + "/history.jsonl");
  ASSERT_EQ(first.size(), 1u);
  c.train.epochs = 3;
  SessionOptions resume;
  resume.resume = true;
  int evaluations = 0;
  SessionCallbacks cb;
  cb.metrics = [&](const std::string&, const RankingMetrics&) { ++evaluations; };
  TrainingSession s(c, resume, cb);
  s.run();
  EXPECT_EQ(evaluations, 1);  // epoch 2; epoch 3 is the final evaluation's
  const HoldoutEvaluation ev = s.evaluate();
  ASSERT_TRUE(ev.done);
  EXPECT_EQ(ev.model.users_evaluated + ev.model.users_skipped, 120);
  const std::vector<std::string> h = lines_of(c.out + "/history.jsonl");
  ASSERT_EQ(h.size(), 3u);
  EXPECT_EQ(h[0], first[0]) << "a resumed run keeps the earlier epochs' records";
  double last_seconds = -1;
  for (size_t e = 0; e < h.size(); ++e) {
    const nlohmann::json r = nlohmann::json::parse(h[e]);
    EXPECT_EQ(r.at("epoch").get<int>(), static_cast<int>(e) + 1);
    EXPECT_TRUE(std::isfinite(r.at("loss").get<double>()));
    EXPECT_GT(r.at("lr").get<double>(), 0.0);
    EXPECT_GT(r.at("samples_per_s").get<double>(), 0.0);
    EXPECT_GE(r.at("train_seconds").get<double>(), last_seconds);
    last_seconds = r.at("train_seconds").get<double>();
    ASSERT_TRUE(r.contains("recall@20")) << h[e];
    const double recall = r.at("recall@20").get<double>();
    EXPECT_TRUE(recall >= 0.0 && recall <= 1.0);
    if (e == 2) {
      EXPECT_EQ(recall, ev.model.recall[1]);
      EXPECT_EQ(r.at("ndcg@10").get<double>(), ev.model.ndcg[0]);
    }
  }
  Config both = c;
  both.holdout = 0.2;
  EXPECT_THROW(TrainingSession bad(both), Error);
}

TEST(Session, DivergenceThrowsTheTypedErrorAndKeepsTheLastGoodCheckpoint) {
  Config c = small_config("s_diverged");
  c.train.loss = Loss::kLogistic;
  c.normalize = "false";
  c.train.negatives = 4;
  c.tower.normalize = false;
  c.train.lr_schedule = LrSchedule::kConstant;
  c.train.epochs = 1;
  TrainingSession(c).run();
  const std::string good = read_file(path("s_diverged/model.ckpt"));
  c.train.epochs = 3;
  c.train.optimizer.kind = OptimizerKind::kSgd;
  c.train.optimizer.lr = 100.0f;
  SessionOptions opt;
  opt.resume = true;
  try {
    TrainingSession(c, opt).run();
    FAIL() << "no divergence";
  } catch (const DivergedError& e) {
    const std::string what = e.what();
    EXPECT_EQ(what.rfind("training diverged", 0), 0u) << what;
    EXPECT_NE(what.find(path("s_diverged/model.ckpt") + " keeps the last good state (epoch 1)"),
              std::string::npos) << what;
  }
  EXPECT_EQ(read_file(path("s_diverged/model.ckpt")), good);
  // With periodic checkpoints, the kept one is still finite.
  c.checkpoint_every_steps = 3;
  EXPECT_THROW(TrainingSession(c, opt).run(), DivergedError);
  EXPECT_TRUE(all_finite(load_checkpoint(path("s_diverged/model.ckpt"))));
}

}  // namespace
}  // namespace towerrec
