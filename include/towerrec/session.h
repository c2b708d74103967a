// A training run around the Trainer: the data a configuration names and its
// validation split, resume from OUT/model.ckpt, checkpoints (after every
// epoch, every N steps, every M minutes), early stopping on the validation
// split, stop requests (SIGINT/SIGTERM: the step finishes and a checkpoint is
// written), divergence (a typed error; the last good checkpoint stays) and the
// final evaluation. The command line's `train` and language bindings share
// it; it prints nothing itself but reports through SessionCallbacks.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "towerrec/backend.h"
#include "towerrec/checkpoint.h"
#include "towerrec/comm.h"
#include "towerrec/config.h"
#include "towerrec/data.h"
#include "towerrec/model.h"
#include "towerrec/recommend.h"
#include "towerrec/trainer.h"

namespace towerrec {

// Loads the data set a configuration names (--data, with --user-features and
// --item-features for a CSV).
Dataset load_dataset(const Config& cfg);

// Reads an interaction CSV whose IDs must all be known (unknown ID: InputError
// naming file, line and field) and keeps rows with rating >= threshold when the
// file has ratings. `delimiter` separates its fields.
Interactions read_known_interactions(const std::string& path, const IdMap& users,
                                     const IdMap& items, float rating_threshold,
                                     char delimiter = ',');

// Builds the model a configuration and entity features describe. `history`
// (each user's training items) feeds the user tower's pooled history; it is
// required when the configuration has one (history > 0). `shard`: the ID
// table rows the model holds (see TableShard; default the whole tables).
std::unique_ptr<TwoTowerModel> build_model(Backend& be, const Config& cfg,
                                           const EntityFeatures& user_features, int32_t n_users,
                                           const EntityFeatures& item_features, int32_t n_items,
                                           const UserItems* history = nullptr, TableShard shard = {});

// The ID-table sharding a training run uses: "replicated" or "rows" for the
// configured --table-sharding on `ranks` ranks of a model whose ID tables
// (both towers) hold `id_table_bytes` bytes of parameters. One rank:
// replicated (every row is local). auto: rows when the tables with their
// Adam moments (3 x id_table_bytes) exceed kAutoRowsShardingBytes, else
// replicated: below that, a rank's copy costs little memory, and
// replication keeps evaluation and checkpoints free of whole-table gathers.
inline constexpr int64_t kAutoRowsShardingBytes = int64_t{1} << 30;
std::string resolve_table_sharding(const std::string& configured, int ranks, int64_t id_table_bytes);

// Seconds as people read them: 12.3s, 4m05s, 2h10m.
std::string format_seconds(double s);

// How a session reports; every member may be empty. Text comes as whole
// lines without the newline: `out` for results (the CLI's stdout), `note` for
// what a person watching wants to know (skipped when the configuration is
// quiet), `warn` for settings that make a resumed run differ.
struct SessionCallbacks {
  std::function<void(const std::string&)> out, note, warn;
  // Every --log-every steps: the epoch's progress, and steps done and to do
  // in the whole run, and its seconds so far.
  std::function<void(const TrainProgress&, int64_t steps_done, int64_t steps_total, double seconds)>
      progress;
  // After each complete epoch, with the steps still to run.
  std::function<void(const EpochStats&, double seconds, int64_t steps_left)> epoch_done;
  // An evaluation on the validation (or holdout) split.
  std::function<void(const std::string& label, const RankingMetrics&)> metrics;
};

struct SessionOptions {
  bool resume = false;          // continue from OUT/model.ckpt when it exists
  // Install SIGINT and SIGTERM handlers while training that request a stop
  // (SA_RESETHAND: a second signal ends the process at once).
  bool handle_signals = false;
  // Data-parallel training over this communicator's ranks (null or one rank:
  // not distributed); see Trainer::set_communicator. Every rank loads the
  // data (and, resuming, the checkpoint) and trains; rank 0 alone writes
  // OUT/ and reports through the callbacks. The ranks must agree on the
  // configuration (--device and --threads aside), the data and the initial
  // parameters: a difference is an Error naming the first rank that differs.
  // `gradient_comm` reduces backend buffers (see Trainer::set_communicator).
  Communicator* comm = nullptr;
  Communicator* gradient_comm = nullptr;
};

// How run() ended.
struct SessionResult {
  enum class End {
    kCompleted,      // every epoch ran (or early stopping ended the run)
    kNothingToDo,    // the resumed checkpoint already holds --epochs epochs
    kStopped,        // a stop request: the checkpoint holds the position reached
  };
  End end = End::kCompleted;
  int signal = 0;               // the signal that requested the stop (0: request_stop)
  bool mid_epoch = false;       // kStopped within an epoch (else after one)
  TrainPosition position;       // what the checkpoint holds
  int64_t steps_per_epoch = 0;
  std::vector<EpochStats> history;
  double seconds = 0;           // of training
};

// The evaluation after training on the held-out (validation) split.
struct HoldoutEvaluation {
  bool done = false;            // false: no held-out split
  std::string label;            // "validation" with --eval-every, else "holdout"
  RankingMetrics model;         // at 10 and 20
  RankingMetrics popularity;    // the popularity baseline at 10
  double seconds = 0;
};

class TrainingSession {
 public:
  // Loads the data, builds backend and model, and with options.resume loads
  // the checkpoint (refusing one of another model shape or data). `cfg` must
  // have its defaults resolved (resolve_defaults). Writes OUT/config.json.
  TrainingSession(Config cfg, SessionOptions options = {}, SessionCallbacks callbacks = {});
  ~TrainingSession();
  TrainingSession(const TrainingSession&) = delete;
  TrainingSession& operator=(const TrainingSession&) = delete;

  // Trains the remaining epochs, checkpointing as configured. Throws
  // DivergedError (its message naming what the checkpoint keeps) when the loss
  // or a parameter is not finite. A stop request before run() is kept: run()
  // then stops after its first step.
  SessionResult run();
  // After run(): marks users without training interactions cold (embedded
  // from their features) and evaluates on the held-out split, if any.
  HoldoutEvaluation evaluate();
  // Asks run() to stop after the current step and write a checkpoint. Safe
  // from a signal handler or another thread.
  void request_stop(int signal = 0);

  const Config& config() const { return cfg_; }
  const Dataset& dataset() const { return ds_; }
  Backend& backend() { return *be_; }
  TwoTowerModel& model() { return *model_; }
  // Every interaction the model was trained with, validation rows included:
  // what `recommend` excludes by default.
  const UserItems& seen_all() const { return seen_all_; }
  std::string checkpoint_path() const { return cfg_.out + "/model.ckpt"; }
  // "replicated" or "rows": the ID tables' sharding this run uses.
  const std::string& table_sharding() const { return sharding_; }

 private:
  struct Stop {
    std::atomic<bool> flag{false};
    std::atomic<int> signal{0};
  };
  void load_data();
  void resume_from_checkpoint();
  void check_resumable(const Checkpoint& ck) const;
  void save_at(const TrainPosition& pos);
  void save_sharded(const Checkpoint& ck);  // rows mode: shard files, then the main file
  void save() { save_at(trainer_->position()); }
  bool distributed() const { return options_.comm && options_.comm->size() > 1; }
  bool writer() const { return !distributed() || options_.comm->rank() == 0; }
  // Compares a value every rank computed (a hash) and throws naming the first
  // rank whose value differs from rank 0's.
  void check_ranks_agree(uint64_t value, const std::string& what) const;
  SessionResult run_epochs();
  bool step_hook(const TrainPosition& next, const std::function<double()>& loss_sum);
  std::string kept_note() const;
  bool early_stop_check(int epochs_done);
  void keep_best_epoch();
  SessionResult stopped(bool mid_epoch);
  void load_history();
  void write_history() const;
  void record_epoch(const EpochStats& st, double train_seconds);
  void record_metrics(const RankingMetrics& m);

  Config cfg_;
  SessionOptions options_;
  SessionCallbacks cb_;
  std::string config_text_;
  Dataset ds_;
  UserItems seen_all_, seen_train_, held_;
  Interactions train_, test_;
  std::unique_ptr<Backend> be_;
  std::unique_ptr<TwoTowerModel> model_;  // declared after be_: destroyed first
  std::unique_ptr<Trainer> trainer_;
  std::string sharding_ = "replicated";
  TrainPosition start_pos_;
  bool resumed_ = false;
  std::string saved_at_;        // what OUT/model.ckpt holds, for messages ("" : nothing yet)
  int64_t steps_since_save_ = 0;
  double last_save_ = 0;        // seconds on the steady clock
  Stop stop_;
  // Early stopping keeps the state of the best evaluated epoch.
  double best_ndcg_ = -1;
  int best_epoch_ = 0, since_best_ = 0;
  TwoTowerModel::State best_state_;
  SessionResult result_;
  // OUT/history.jsonl: the lines kept from before a resume, then this run's epochs.
  struct EpochRecord {
    int epoch = 0;
    double loss = 0, lr = 0, samples_per_s = 0, train_seconds = 0;
    std::vector<std::pair<std::string, double>> metrics;
  };
  std::vector<std::string> history_kept_;
  std::vector<EpochRecord> history_;
  double history_offset_s_ = 0;         // training seconds before a resume
  double eval_seconds_ = 0;             // evaluation time within run_epochs
};

}  // namespace towerrec
