// The trainer: epochs over shuffled positives, k sampled negatives per
// positive, the fused logistic loss, and an optimizer step per batch.
//
// Each batch runs each tower once per *unique* user and item it touches, not
// once per pair; the loss indexes into those outputs and reduces the gradients
// of repeated rows before the towers' backward. Batches are planned on the host
// from counter-based random numbers, so a run is reproducible from its seed and
// identical in its sampling on every backend. On a device backend the steps are
// queued without waiting: the host plans and stages batch s + 1 in page-locked
// memory while the device runs step s, and each batch is one queued upload.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "towerrec/backend.h"
#include "towerrec/comm.h"
#include "towerrec/data.h"
#include "towerrec/model.h"
#include "towerrec/options.h"

namespace towerrec {

struct TrainConfig {
  int epochs = 30;
  int64_t batch_size = 1024;       // positives per batch
  int negatives = 0;               // sampled negatives per positive
  Sampler sampler = Sampler::kUniform;
  float pop_alpha = 0.75f;
  // Resample a sampled negative that is a training positive of its user (up to
  // a few tries).
  bool reject_hits = false;
  Loss loss = Loss::kSoftmax;
  float temperature = 0.1f;        // softmax logits are scores / temperature
  bool logq = true;                // softmax: subtract log of each item's sampling rate
  // ccl: the margin of the negatives' hinge and the weight of their mean.
  float margin = 0.9f;
  float negative_weight = 150.0f;
  // softmax and ccl: the logits scratch (pairs x items floats) stays within
  // this many MiB; past it the loss takes the batch's items in blocks (0: no cap).
  int64_t logits_scratch_mb = 1024;
  // Learning-rate schedule, with a linear warm-up over warmup_epochs.
  LrSchedule lr_schedule = LrSchedule::kCosine;
  float warmup_epochs = 0.0f;
  int lr_step_epochs = 10;
  float lr_gamma = 0.5f;
  uint64_t seed = 42;
  // Host threads that plan batches ahead of the running step (-1: auto, 0 on
  // the CPU backend, up to 4 on a device backend; 0: plan inline). Plans never
  // depend on it.
  int planner_threads = -1;
  // Precision of the tower layers' products in training steps (see
  // MatmulPrecision in backend.h). Evaluation and scoring are not affected.
  MatmulPrecision matmul_precision = MatmulPrecision::kFP32;
  // Data-parallel training: the dense gradients are all-reduced in buckets of
  // this many MiB, the item tower's started while the user tower's backward
  // runs (TwoTowerModel::set_reduce_bucket); 0: one all-reduce of the whole
  // arena after the backward. Results are the same bits either way.
  float bucket_mb = 4.0f;
  OptimizerConfig optimizer;
};

struct TrainProgress {
  int epoch = 0;           // 1-based
  int epochs = 0;
  int64_t step = 0;        // 1-based within the epoch
  int64_t steps = 0;
  int64_t samples = 0;     // positives processed this epoch
  double seconds = 0;      // since the epoch began
  double loss = 0;         // mean loss per pair over the epoch so far
};

struct EpochStats {
  int epoch = 0;
  int64_t steps = 0;
  int64_t samples = 0;     // positives
  double seconds = 0;
  double loss = 0;         // mean loss per pair (of the whole epoch, when resumed mid-epoch)
  double samples_per_s = 0;
  // False when the epoch stopped early (stop flag or step hook); the trainer's
  // position() then names the next step to run.
  bool complete = true;
};

// Where training stands: the next step to run is `step` (0-based) of epoch
// `epoch` (0-based, = epochs done); `loss_sum` is the sum of the per-step mean
// losses of that epoch's steps before `step`, so a resumed epoch reports the
// same loss as an uninterrupted one.
struct TrainPosition {
  int epoch = 0;
  int64_t step = 0;
  double loss_sum = 0;
};

// The losses that score each positive against all the batch's items (softmax, ccl).
bool in_batch_loss(Loss loss);

// The softmax (and ccl) loss's item block for a batch of n_pairs positives over n_items
// items whose logits must fit scratch_mb MiB: n_items (one block) when they
// fit or the cap is 0, else the largest multiple of 64 columns that fits (64
// at least).
int64_t softmax_item_tile(int64_t n_pairs, int64_t n_items, int64_t scratch_mb);

class Trainer {
 public:
  // `train` holds the positives; entity counts come from the model's towers.
  Trainer(TwoTowerModel& model, const Interactions& train, const TrainConfig& cfg);
  ~Trainer();

  // Runs the next epoch. `progress` (optional) is called every `report_every`
  // steps and at the end; reading the loss then costs one device sync.
  EpochStats train_epoch(const std::function<void(const TrainProgress&)>& progress = {},
                         int64_t report_every = 50);
  int epochs_done() const { return epoch_; }
  void set_epochs_done(int e) { epoch_ = e; start_step_ = 0; start_loss_sum_ = 0; }
  // Mid-epoch position: the next train_epoch() runs epoch p.epoch from step
  // p.step. Batches are planned from (seed, epoch, step) alone, so with the
  // model state saved at that point the run continues exactly as an
  // uninterrupted one.
  void set_position(const TrainPosition& p);
  TrainPosition position() const { return {epoch_, start_step_, start_loss_sum_}; }
  // Checked after every step; when it reads true the epoch stops there
  // (EpochStats::complete is false). Set from a signal handler (a lock-free
  // atomic store is async-signal-safe).
  void set_stop_flag(const std::atomic<bool>* stop) { stop_ = stop; }
  // Called after every step with the position reached (`next.loss_sum` is not
  // filled in: `loss_sum()` syncs the device and returns it, so call it only
  // when needed, e.g. before a checkpoint). Returning false stops the epoch.
  using StepHook = std::function<bool(const TrainPosition& next,
                                      const std::function<double()>& loss_sum)>;
  void set_step_hook(StepHook h) { hook_ = std::move(h); }
  int64_t steps_per_epoch() const;
  // Learning rate at a global step (0-based) under the schedule.
  float learning_rate(int64_t global_step) const;

  // Data-parallel training over the ranks of `control` (size 1 or null: one
  // rank; call before the first step). Global batch b is the one a single
  // rank with the same batch size plans, split into N contiguous shards of its
  // positives: rank r takes positives [B r / N, B (r + 1) / N) of it, with
  // their negatives (drawn from the same counters). The softmax and ccl losses
  // score each positive against every item of the *global* batch, so every
  // rank runs the item tower on all of them (replicated) and its own pairs'
  // users only. After each backward the dense gradients and the touched
  // ID-embedding rows (the union over ranks) are summed over the ranks, and
  // every rank takes the same optimizer step: the parameters stay identical.
  // With a row-sharded model (TwoTowerModel::shard_tables), each step first
  // fetches the rows the forwards read from their owners (fetch_rows), and
  // the owners update their own rows.
  // `gradients` reduces the backend's buffers when it takes their memory (the
  // MPI communicator for the CPU backend, NCCL for CUDA); null: staged through
  // host memory over `control`.
  void set_communicator(Communicator* control, Communicator* gradients = nullptr);
  int rank() const { return rank_; }
  int ranks() const { return ranks_; }

  // A planned batch, exposed for tests.
  struct Batch {
    std::vector<int32_t> users, items;            // unique entity indices
    std::vector<int32_t> pair_user, pair_item;    // local indices
    std::vector<float> label;
    std::vector<int32_t> user_offsets, user_pairs, item_offsets, item_pairs;
    // Pooled history of each unique user (model with a history input): CSR
    // over `users`, each user's training items without its targets in this
    // batch, at most the model's cap; hist_rows is 0, 1, ... (one per user).
    std::vector<int32_t> hist_offsets, hist_items, hist_rows;
    // Several ranks with histories: each unique user's positives in the global
    // batch outside this rank's shard (CSR over `users`), which its history
    // leaves out as one rank's does.
    std::vector<int32_t> other_target_offsets, other_targets;
    // Pairs of the whole global batch (all ranks'): the losses' mean is over them.
    int64_t global_pairs = 0;
  };
  // Plans batch `b` of epoch `epoch` (0-based) on the host.
  void plan_batch(int epoch, int64_t b, Batch& out);
  // Forward, loss and backward of one batch, leaving the gradients in the model
  // (no optimizer step); returns the batch's mean loss per pair (syncs). For
  // tests and diagnostics.
  float loss_and_gradients(const Batch& b);

 private:
  void shuffle(int epoch);
  int32_t sample_negative(uint64_t counter) const;
  // A planned batch packed into staging memory for one queued upload.
  struct Staged {
    HostArray<int32_t> ints;     // every index array of the batch, back to back
    HostArray<float> floats;     // labels, then per-item log rates (softmax + logQ)
    size_t n_ints = 0, n_floats = 0, nu = 0, ni = 0, np = 0;
    size_t o_users = 0, o_items = 0, o_pu = 0, o_pi = 0, o_uo = 0, o_up = 0, o_io = 0, o_ip = 0;
    size_t o_ho = 0, o_hv = 0, o_hr = 0;  // history CSR and rows (history models)
    uint64_t fence = 0;          // passes once the upload has read the buffers
    int64_t global_pairs = 0;
  };
  // Packs `b` into `st` (waiting first for st's previous upload).
  void stage(const Batch& b, Staged& st);
  // Uploads the staged batch (queued) and runs forward, loss and backward; the
  // loss goes to *loss_slot.
  // With start_reduce (data-parallel training), the item tower's backward
  // runs first and its gradients start reducing before the user tower's.
  void forward_backward(Staged& st, float* loss_slot, bool start_reduce = false);

  TwoTowerModel& model_;
  Backend& be_;
  Communicator* comm_ = nullptr;
  Communicator* grad_comm_ = nullptr;
  int rank_ = 0, ranks_ = 1;
  const Interactions& train_;
  TrainConfig cfg_;
  int32_t n_users_, n_items_;
  int epoch_ = 0;
  int64_t start_step_ = 0;        // first step of the next train_epoch()
  double start_loss_sum_ = 0;     // loss sum of the steps before it
  const std::atomic<bool>* stop_ = nullptr;
  StepHook hook_;
  std::vector<int64_t> perm_;
  int shuffled_epoch_ = -1;
  // Each user's training items (sorted), for rejecting accidental hits and for
  // the pooled history.
  std::vector<int64_t> seen_offsets_;
  std::vector<int32_t> seen_items_;
  bool is_seen(int32_t user, int32_t item) const;
  // log of each item's rate of appearing in a batch (softmax logQ correction).
  std::vector<float> log_q_;
  DeviceArray<float> d_logits_, d_pair_rows_;
  // Alias table for popularity sampling.
  std::vector<float> alias_prob_;
  std::vector<int32_t> alias_idx_;
  // Dedup scratch: stamp per entity and its local index (one per planning thread).
  struct PlanScratch {
    std::vector<int64_t> user_stamp, item_stamp;
    std::vector<int32_t> user_local, item_local;
    std::vector<int64_t> target_stamp;  // per item: the user whose targets it is among
    std::vector<int32_t> pick;          // history sampling
    int64_t stamp = 0, target_mark = 0;
    void size(int32_t n_users, int32_t n_items);
  };
  PlanScratch scratch_;
  // Plans batch b of `epoch`, whose shuffle must be in place; safe to call
  // from several threads with distinct scratch and output.
  void plan_into(int epoch, int64_t b, Batch& out, PlanScratch& sc) const;
  // The batch's per-user histories (history_cap_ > 0).
  void plan_history(int epoch, int64_t b, Batch& out, PlanScratch& sc) const;
  int history_cap_ = 0;
  class Lookahead;
  int planner_threads() const;
  // Device-side batch buffers, and two staging slots (step s uses slot s & 1).
  Staged slots_[2];
  DeviceArray<int32_t> d_ints_;
  DeviceArray<float> d_floats_, d_pair_grad_, d_losses_;
};

}  // namespace towerrec
