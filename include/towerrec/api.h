// The library's entry points for programs and language bindings: a trained
// model loaded from a checkpoint (the same one the command line writes and
// reads), training from code, and scoring by original or dense IDs.
//
//   towerrec::Config cfg;                      // every `towerrec train` key
//   cfg.data = "out/synth";
//   towerrec::TrainedModel m = towerrec::train(cfg);
//   auto top = m.recommend({m.users().find("42")}, 10);
//
// Dense indices (int32) are the rows of the embedding matrices: entities in
// order of first appearance in the training data. A TrainedModel owns its
// backend; it is movable, not copyable, and not safe to use from two threads
// at once.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "towerrec/backend.h"
#include "towerrec/checkpoint.h"
#include "towerrec/config.h"
#include "towerrec/data.h"
#include "towerrec/model.h"
#include "towerrec/recommend.h"
#include "towerrec/session.h"

namespace towerrec {

// A model rebuilt from a checkpoint: configuration, ID maps, features,
// weights and the training interactions it stores.
struct LoadedModel {
  std::string path;  // the checkpoint file
  Checkpoint ck;
  Config cfg;        // the configuration it was trained with (device, threads: the loader's)
  std::unique_ptr<Backend> be;
  std::unique_ptr<TwoTowerModel> model;  // declared after be: destroyed first
  int32_t n_users() const { return ck.users.size(); }
  int32_t n_items() const { return ck.items.size(); }
};
// `model` is a directory holding model.ckpt, or a checkpoint file. Users
// without training interactions are marked cold (embedded from their
// features), as after training. Throws Error naming the file.
LoadedModel load_model(const std::string& model, const std::string& device = "auto", int threads = 0);

// Top-k results, row r for query r: ids[r*k + q] is the dense index at rank q
// (best first; -1 where fewer than k candidates remain), scores beside them.
struct TopK {
  int64_t rows = 0;
  int k = 0;
  std::vector<int32_t> ids;
  std::vector<float> scores;
};

// Which items recommend() may return.
struct RecommendFilter {
  // Leave out each user's training items (those the checkpoint stores).
  bool exclude_seen = true;
  // Items never returned (dense indices).
  std::vector<int32_t> deny;
  // When not empty: only these items may be returned (dense indices).
  std::vector<int32_t> allow;
  bool has_allow = false;  // an allow list was given (even an empty one)
  // Only items whose features satisfy every condition (match_features; e.g.
  // {"genres", "Comedy"}, or {"year", "1990", FeatureCondition::Op::kGe}).
  std::vector<FeatureCondition> where;
};

class TrainedModel {
 public:
  explicit TrainedModel(LoadedModel m);
  // load_model, then wrap it.
  static TrainedModel load(const std::string& path, const std::string& device = "auto", int threads = 0);
  TrainedModel(TrainedModel&&) noexcept;
  TrainedModel& operator=(TrainedModel&&) noexcept;  // frees this model's memory first
  ~TrainedModel();

  const IdMap& users() const { return lm_.ck.users; }
  const IdMap& items() const { return lm_.ck.items; }
  int32_t n_users() const { return lm_.n_users(); }
  int32_t n_items() const { return lm_.n_items(); }
  int dim() const { return lm_.model->out_dim(); }
  const Config& config() const { return lm_.cfg; }
  const Checkpoint& checkpoint() const { return lm_.ck; }
  // Each user's training items (empty offsets when the checkpoint has none).
  const UserItems& seen() const { return lm_.ck.seen; }
  Backend& backend() { return *lm_.be; }
  TwoTowerModel& model() { return *lm_.model; }
  const std::string& path() const { return lm_.path; }

  // Embeddings [n x dim], row-major float32 in host memory, computed on first
  // use and kept; on the CPU backend the backend's own buffer (no copy).
  const float* user_embeddings();
  const float* item_embeddings();

  // Top-k items for each of `users` (dense indices; every user when empty),
  // ranked by score, higher first, ties by the lower item index.
  TopK recommend(const std::vector<int32_t>& users, int k, const RecommendFilter& filter = {});
  // Top-k items for users known only by their items (new users, or known ones
  // embedded afresh): row r of `histories` is query r, embedded by
  // TwoTowerModel::embed_histories (the pooled history, the unknown-ID bucket
  // for the ID embedding). exclude_seen leaves out each row's own history
  // items (not any stored ones); allow, deny and where apply. Throws Error when
  // the model cannot embed from a history (history_input_problem).
  TopK recommend_histories(const UserItems& histories, int k, const RecommendFilter& filter = {});
  // The k items with the highest score <item(q), item(j)> for each query item
  // q (the item itself left out; the filter's allow, deny and where apply,
  // exclude_seen does not); similar_users likewise over user embeddings.
  TopK similar_items(const std::vector<int32_t>& items, int k, const RecommendFilter& filter = {});
  TopK similar_users(const std::vector<int32_t>& users, int k);

  // Full-ranking metrics on `test` (dense indices), excluding `exclude` (the
  // stored training interactions when null), at cutoffs ks.
  RankingMetrics evaluate(const Interactions& test, const std::vector<int>& ks,
                          const UserItems* exclude = nullptr);
  // The popularity baseline on the same data.
  RankingMetrics evaluate_popularity(const Interactions& test, const std::vector<int>& ks,
                                     const UserItems* exclude = nullptr);

  // Writes the checkpoint (atomic), readable by `towerrec eval/recommend`.
  void save(const std::string& path) const;

 private:
  void ensure_device_embeddings();
  // The candidates a filter's allow, deny and where leave (exclude_seen aside).
  RankFilter rank_filter(const RecommendFilter& filter);
  const UserItems& exclusions(const UserItems* exclude);
  LoadedModel lm_;
  DeviceArray<float> U_, V_;                 // on the backend
  std::vector<float> U_host_, V_host_;       // host copies (device backends only)
  bool embedded_ = false;
  UserItems none_;
};

// Trains a model as `towerrec train` does (a TrainingSession: OUT/model.ckpt
// after every epoch, OUT/config.json), then loads the final checkpoint.
// `cfg.out` names the output directory. Defaults are resolved here.
TrainedModel train(Config cfg, SessionCallbacks callbacks = {});

// Dense indices of original IDs; throws InputError(`what`, 0, field, ...) on
// an unknown ID (field is "user" or "item").
std::vector<int32_t> lookup_ids(const IdMap& map, const std::vector<std::string>& ids,
                                const std::string& what, const std::string& field);

}  // namespace towerrec
