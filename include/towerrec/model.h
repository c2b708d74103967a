// The two-tower model: a user tower and an item tower, each mapping an entity's
// [ID embedding | dense features | categorical bag embeddings] through an MLP of
// Linear+ReLU layers to an embedding; score(u, i) = <user(u), item(i)>.
//
// Parameters live in backend memory. All dense parameters of both towers (layer
// weights and biases, categorical tables) share one flat arena, so a single
// fused Adam call updates them all and checkpoints copy one block; the ID
// embedding tables (large, sparsely updated) are separate.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "towerrec/backend.h"
#include "towerrec/comm.h"
#include "towerrec/data.h"
#include "towerrec/options.h"

namespace towerrec {

struct TowerConfig {
  int id_dim = 64;                  // ID embedding width; 0 disables the ID embedding
  std::vector<int> hidden = {128, 64};
  int out_dim = 64;                 // final (linear) embedding width; equal in both towers
  int cat_dim = 16;                 // width of each categorical field's embedding
  bool use_features = true;         // feed dense and categorical features
  float init_std = 0.1f;            // std of ID/categorical embedding initialisation
  float dropout = 0.0f;             // dropout after each hidden layer while training
  bool normalize = false;           // L2-normalise the output embeddings (cosine score)
  // History pooling (user tower): the mean of history embeddings of up to
  // `history` of the user's training items joins the user tower's input
  // (0: off). The history table is the user tower's own, [n_items x
  // history_dim], or with history_shared the item tower's ID table (width
  // id_dim; history_dim is then unused): a history then pools the very item
  // rows the item tower scores, and the rows its bags touch are updated
  // sparsely with the item rows of the batch.
  int history = 0;
  int history_dim = 64;
  bool history_shared = false;
  // Learned pooling weights: the history is pooled with softmax weights of a
  // learned logit per item (starting at 0: the mean) instead of the mean.
  bool history_weighted = false;
};

// What a tower sees of its entity kind. Built from EntityFeatures.
struct TowerInputSpec {
  int32_t n_entities = 0;
  int dense_dim = 0;
  std::vector<int32_t> cat_vocab;   // vocabulary size of each categorical field
  std::vector<std::string> cat_names;
  int32_t history_vocab = 0;        // items a history may hold (0: no history input)
};

// A user's pooled history for one forward, in backend memory: row r pools
// values[offsets[rows[r]] .. offsets[rows[r] + 1]) (CSR, as the bag ops take).
struct HistoryBags {
  const int32_t* offsets = nullptr;
  const int32_t* values = nullptr;
  const int32_t* rows = nullptr;
};

// The history each user's embedding pools at inference: up to `cap` of the
// user's items (all when fewer; else a subset drawn from `seed` and the user
// index), as int32 CSR for the bag ops.
void cap_history(const std::vector<int64_t>& offsets, const std::vector<int32_t>& items, int cap,
                 uint64_t seed, std::vector<int32_t>& out_offsets, std::vector<int32_t>& out_items);

TowerInputSpec make_input_spec(const EntityFeatures& f, int32_t n_entities, bool use_features);

struct OptimizerConfig {
  OptimizerKind kind = OptimizerKind::kAdam;
  float lr = 5e-3f;
  float beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f;
  float weight_decay = 0.0f;       // decoupled, on the dense arena
  float embedding_decay = 2.0f;    // decoupled, on touched ID-embedding rows
};

class Tower;

// Which rows of the ID tables a model holds: row r when r % ranks == rank
// (as local row r / ranks). {0, 1}: the whole tables.
struct TableShard {
  int rank = 0;
  int ranks = 1;
};

class TwoTowerModel {
 public:
  // With `shard`, each tower's ID table and its Adam moments are allocated
  // and initialised for the shard's rows only (the values the whole table
  // would hold there); shard_tables() with a communicator of that rank and
  // size then completes the row-sharded setup.
  TwoTowerModel(Backend& be, const TowerConfig& cfg, const TowerInputSpec& user_spec,
                const TowerInputSpec& item_spec, uint64_t seed, TableShard shard = {});
  ~TwoTowerModel();
  TwoTowerModel(const TwoTowerModel&) = delete;
  TwoTowerModel& operator=(const TwoTowerModel&) = delete;

  Backend& backend() { return *be_; }
  const TowerConfig& config() const { return cfg_; }
  Tower& user_tower() { return *user_; }
  Tower& item_tower() { return *item_; }
  int out_dim() const { return cfg_.out_dim; }

  // Upload entity features (dense and categorical) for each tower. Must be
  // called before forward when the spec has features.
  void set_features(const EntityFeatures& users, const EntityFeatures& items);
  // Each user's items (CSR over users, offsets [n_users + 1]) for the pooled
  // history of inference; needed when config().history > 0. Training passes
  // its own per-batch bags to forward().
  void set_history(const std::vector<int64_t>& offsets, const std::vector<int32_t>& items);

  // Zero the gradient arena (before each step's backward).
  void zero_grad();
  // One optimizer step: the dense arena, and the ID rows the towers' last
  // backward touched (after reduce_gradients: the union of every rank's).
  void step(const OptimizerConfig& opt);
  // Data parallel, between backward and step (collective over `control`'s
  // ranks): sums the dense arena's gradient over the ranks, and per tower
  // gathers every rank's touched ID rows, sums their gradients into the
  // union's rows (sorted by row), so the next step() updates the same rows
  // with the same gradients on every rank. `data` reduces backend buffers
  // when it takes the backend's memory; else they are staged through host
  // memory over `control`. A rank whose shard was empty (no forward) passes
  // no rows and zero gradients.
  //
  // Row-sharded ID tables (after shard_tables): the dense arena is summed as
  // above; each rank sends the gradients of the rows it touched, summed per
  // row, to the rows' owners (all_to_allv), and each owner sums the ranks'
  // contributions in rank order and updates its own rows in the next step().
  void reduce_gradients(Communicator& control, Communicator* data = nullptr);
  // Bucketed dense reduction: with bucket_floats > 0, reduce_gradients sums
  // the dense arena in buckets of that many floats (each its own all-reduce,
  // started non-blocking, then waited for), and start_reduce_item_gradients
  // starts the item tower's part early: called after the item tower's
  // backward and before the user tower's, its sums run while the user
  // tower's backward does (where the communicator progresses on its own),
  // and reduce_gradients then starts the user tower's part and waits for
  // all. The item tower's part comes first in both cases, so every rank
  // starts the same sums in the same order. Each float is summed over the
  // same ranks as by one all-reduce of the whole arena (0: that one call
  // after the backward, nothing started early).
  void set_reduce_bucket(int64_t bucket_floats) { bucket_floats_ = bucket_floats; }
  int64_t reduce_bucket() const { return bucket_floats_; }
  void start_reduce_item_gradients(Communicator& control, Communicator* data = nullptr);
  int64_t step_count() const { return steps_; }

  // Row-sharded ID-embedding tables over `comm`'s ranks (collective only in
  // the calls named below; a no-op on one rank): row r of each tower's ID
  // table, with its Adam moments, lives on rank r mod N only (as local row
  // r / N); the other rows are dropped here. Every rank must then call, in
  // the same order: fetch_rows() before each training forward pair,
  // reduce_gradients() between backward and step(), and the collective
  // gather_tables() (save_state() is local: this rank's rows). Training
  // forwards read the rows
  // fetch_rows() brought; any other forward (inference) needs
  // gather_tables() first. `comm` must outlive the model (host memory: the
  // rows are staged through the host on a device backend).
  void shard_tables(Communicator& comm);
  bool sharded() const { return shard_comm_ != nullptr; }
  // Rows mode, collective: fetches from their owners the ID rows the next
  // user-tower forward (users[0..nu), host memory) and item-tower forward
  // (items[0..ni)) read; those forwards must take the same indices. A rank
  // with no forward this step passes 0 and 0.
  void fetch_rows(const int32_t* users, int64_t nu, const int32_t* items, int64_t ni);
  // Rows mode, collective: assembles each tower's whole ID table on every
  // rank (all_gatherv) for inference forwards (embed_all_*, evaluation,
  // scoring) until the next step() or load_state(). Costs a whole table's
  // memory per rank while it lasts.
  void gather_tables();
  // Training mode turns dropout on; inference (the default) turns it off.
  void set_training(bool on) { training_ = on; }
  bool training() const { return training_; }
  uint64_t seed() const { return seed_; }

  // Cold start: entities marked cold (no training interactions; mask of
  // n_entities, empty: none) are embedded at inference with the unknown-ID
  // bucket, a zero ID embedding, so their embedding comes from their features
  // alone rather than from an ID row that never saw a positive.
  void set_cold(const std::vector<char>& users, const std::vector<char>& items);

  // Embeddings of all entities, [n_entities x out_dim] in backend memory,
  // computed in chunks of `chunk` rows.
  void embed_all_users(DeviceArray<float>& out, int64_t chunk = 8192);
  void embed_all_items(DeviceArray<float>& out, int64_t chunk = 8192);
  // Items [first, first + count) only, [count x out_dim] (row j: item first + j),
  // the rows embed_all_items computes for them wherever the backend's products
  // give a row the same bits whatever the other rows (the CPU backend's do;
  // tests compare the two). Inference has no op across rows.
  void embed_items(int32_t first, int32_t count, DeviceArray<float>& out, int64_t chunk = 8192);

  // Inductive users: embeddings of users known only by the items they
  // interacted with. Row r of the CSR `offsets` [rows + 1] into `items` (dense
  // item indices; order and repeats do not matter) is one user; its pooled
  // history is up to config().history of its distinct items, chosen as
  // cap_history chooses them for a lone user (so a row's embedding depends on
  // its items alone, not on its position or the other rows), and the user tower
  // reads it with the unknown-ID bucket for the ID embedding. Writes
  // [rows x out_dim] to `out` in backend memory, computed in chunks of `chunk`
  // rows. Throws Error with history_input_problem() when the model cannot, and
  // on an empty row or an item out of range.
  void embed_histories(const std::vector<int64_t>& offsets, const std::vector<int32_t>& items,
                       DeviceArray<float>& out, int64_t chunk = 8192);
  // Why the user tower cannot embed a user from a history alone, "" when it
  // can: the model has no history input (trained with history 0), or its user
  // tower also reads user features, which a history does not give.
  std::string history_input_problem() const;

  // Parameters and optimizer state, for checkpoints: named host copies.
  // `rows`: which rows of the ID tables the ID tensors ("user.id",
  // "user.id_adam_m", ... ) hold, in local row order (row r at r / ranks);
  // {0, 1}: the whole tables.
  struct State {
    int64_t steps = 0;
    std::vector<std::string> names;
    std::vector<std::vector<float>> tensors;
    TableShard rows;
  };
  // Replicated tables: the whole tables. Rows mode: this rank's rows only
  // (rows = {rank, N}; no collective, no rank ever holds a whole table), as
  // the per-rank checkpoint shards store them. load_state takes the whole
  // tables (keeping this rank's rows in rows mode) or exactly this model's
  // shard.
  State save_state() const;
  void load_state(const State& s);  // throws Error on any name or size mismatch
  // Times this model assembled a whole ID table or Adam moment from the
  // ranks' rows (gather_tables counts 2: one per tower); for tests.
  int64_t table_gathers() const { return table_gathers_; }
  int64_t parameter_count() const;
  // Bytes of backend memory the parameters, optimizer state and entity
  // features of a model of this shape take (activations excluded).
  static int64_t memory_needed(const TowerConfig& cfg, const TowerInputSpec& user_spec,
                               const TowerInputSpec& item_spec, TableShard shard = {});

  // The dense arena (all layer weights and biases, categorical tables) and its
  // gradient, in backend memory; for tests and diagnostics.
  DeviceArray<float>& arena() { return params_; }
  const DeviceArray<float>& arena_grad() const { return grads_; }

 private:
  Backend* be_;
  TowerConfig cfg_;
  DeviceArray<float> params_, grads_, m_, v_;  // the dense arena
  std::unique_ptr<Tower> user_, item_;
  int64_t item_arena_begin_ = 0;  // the item tower's part of the arena: [this, end)
  // Bucketed dense reduction (reduce_gradients): the sums started and not yet
  // waited for, by arena range.
  struct StartedReduce {
    Communicator* comm = nullptr;
    int64_t first = 0, n = 0;
    std::vector<int64_t> handles;
    std::vector<float> host;  // staged copy of the range (device memory over a host communicator)
  };
  std::vector<StartedReduce> started_;
  int64_t bucket_floats_ = 0;
  void start_reduce_range(int64_t first, int64_t n, Communicator& control, Communicator* data);
  // Shared history: the item rows the user tower's history bags read join the
  // item tower's rows of the batch in one union with summed gradients, which
  // the item tower's next sparse step (or reduce_gradients) takes. A no-op
  // unless a shared-history backward is pending.
  void merge_history_rows();
  void finish_started_reduces();
  int64_t steps_ = 0;
  bool training_ = false;
  uint64_t seed_ = 0;
  Communicator* shard_comm_ = nullptr;  // rows mode (null: replicated tables)
  mutable int64_t table_gathers_ = 0;
  friend class Tower;
};

// One tower. Holds its activations for the last forward (one owner), so
// backward must follow the forward it belongs to.
class Tower {
 public:
  Tower(TwoTowerModel& model, const std::string& name, const TowerInputSpec& spec,
        int64_t& arena_cursor, TableShard shard = {});

  const std::string& name() const { return name_; }
  const TowerInputSpec& spec() const { return spec_; }
  int input_dim() const { return in_dim_; }

  // Forward for n entities idx[0..n) (backend memory). Returns the output
  // embeddings [n x out_dim], valid until the next forward.
  // With zero_id, the ID-embedding columns are zero (the unknown-ID bucket).
  // A tower with a history input pools `history` when given (training: per
  // batch, the targets left out), else the entities' histories from
  // set_history(). The layers' products run in `precision` (training passes
  // its configured one; inference runs float32), and so does the backward of
  // this forward.
  const float* forward(const int32_t* idx, int64_t n, bool zero_id = false,
                       const HistoryBags* history = nullptr,
                       MatmulPrecision precision = MatmulPrecision::kFP32);
  // Gradient buffer for the last forward's output [n x out_dim]; fill it, then
  // call backward(). The idx array passed to forward() must stay valid until the
  // model's step().
  float* output_grad() { return model_->cfg_.normalize ? norm_grad_.data() : grad_act_.back().data(); }
  // dLoss/dInput [n x input_dim] of the last backward (ID-embedding columns first).
  const float* input_grad() const { return grad_act_[0].data(); }
  // The ID-embedding table [n_entities x id_dim] (null when id_dim is 0); in
  // rows mode this rank's rows only [local_rows() x id_dim], row r at r / N
  // (the model's TableShard, or shard_tables()).
  float* id_table() { return id_table_.data(); }
  int64_t local_rows() const { return local_rows_; }
  // Backward through the layers and into the feature embeddings; records the
  // ID rows to update in the next model step().
  void backward();
  // The ID rows the next model step() updates and their gradients
  // [rows x id_dim], as host copies: the last forward's rows (summed per row
  // where one repeats), with a shared history the union of the item rows and
  // the rows the user tower's history bags read; after reduce_gradients the
  // ranks' union. For tests and diagnostics.
  void pending_row_gradients(std::vector<int32_t>& rows, std::vector<float>& grad);

 private:
  friend class TwoTowerModel;
  struct Layer {
    int in = 0, out = 0;
    int64_t w_off = 0, b_off = 0;  // offsets in the arena
    Activation act = Activation::kReLU;
  };
  void init_params(uint64_t seed, std::vector<float>& arena_host);
  void upload_features(const EntityFeatures& f);
  void sparse_step(const OptimizerConfig& opt, int64_t step);
  // Rows mode (see TwoTowerModel::shard_tables).
  void shard(int rank, int ranks);
  void fetch(Communicator& comm, const int32_t* idx, int64_t n);
  void push_rows(Communicator& comm);
  void gather_full();
  std::vector<float> full_host(const DeviceArray<float>& local) const;  // collective
  void load_rows(DeviceArray<float>& dst, const std::vector<float>& full);

  TwoTowerModel* model_;
  std::string name_;
  TowerInputSpec spec_;
  int in_dim_ = 0;
  std::vector<Layer> layers_;
  std::vector<int64_t> cat_off_;        // arena offset of each categorical table
  DeviceArray<float> id_table_, id_m_, id_v_;
  DeviceArray<float> zero_row_;          // [1 x id_dim] zeros: the unknown-ID bucket
  DeviceArray<int32_t> zero_idx_;        // zeros, indices into zero_row_
  std::vector<char> cold_;               // per entity: embed with the bucket
  DeviceArray<float> dense_feat_;
  std::vector<DeviceArray<int32_t>> cat_offsets_, cat_values_;
  int64_t hist_off_ = -1;                // arena offset of an own history table (-1: none)
  bool has_hist_ = false;                // the tower pools a history
  bool hist_shared_ = false;             // ... from the item tower's ID table
  int hist_dim_ = 0;                     // width of the pooled history
  bool hist_pending_ = false;            // a shared history's gradient awaits merge_history_rows
  int64_t hist_w_off_ = -1;              // arena offset of the learned pooling logits (-1: mean)
  DeviceArray<int32_t> hist_offsets_, hist_values_;  // per-entity histories (inference)
  HistoryBags last_hist_;                // the bags of the last forward
  // Activations: act_[0] is the input X, act_[l+1] the output of layer l.
  std::vector<DeviceArray<float>> act_, grad_act_;
  // L2-normalised output, its inverse norms and its gradient (normalize only).
  DeviceArray<float> norm_out_, norm_inv_, norm_grad_;
  const int32_t* last_idx_ = nullptr;
  int64_t last_n_ = 0;
  bool last_training_ = false;
  MatmulPrecision last_precision_ = MatmulPrecision::kFP32;  // of the last forward
  uint64_t dropout_seed(size_t layer) const;
  bool pending_rows_ = false;
  // The union of the ranks' touched rows and their summed gradients
  // [union_n_ x id_dim] (reduce_gradients); the next sparse step uses them.
  void reduce_rows(Communicator& control, Communicator* data);
  DeviceArray<int32_t> union_idx_;
  DeviceArray<float> union_grad_;
  int64_t union_n_ = 0;
  bool use_union_ = false;
  // Shared history (item tower): the identity CSR and positions merge_history_rows uploads.
  DeviceArray<int32_t> merge_ints_;
  std::vector<int32_t> merge_at_;        // per item row: its place in the union (-1: none)
  // Rows mode: this rank owns rows r with r % shard_ranks_ == shard_rank_.
  int shard_rank_ = 0, shard_ranks_ = 1;
  int64_t local_rows_ = 0;
  // The rows of the last fetch, grouped by owner (sorted within each), each
  // owner's count, each forward index's position among them, and the rows.
  std::vector<int32_t> fetch_rows_, fetch_pos_;
  std::vector<int64_t> fetch_counts_;
  DeviceArray<float> fetched_;
  DeviceArray<int32_t> fetched_pos_;
  int64_t fetch_n_ = 0;
  bool fetch_armed_ = false;   // the next training forward reads fetched_
  bool fetch_used_ = false;    // the last forward read fetched_
  DeviceArray<float> full_table_;  // gather_tables(): the whole table
  bool full_valid_ = false;
};

}  // namespace towerrec
