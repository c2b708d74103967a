#include "towerrec/api.h"

#include <algorithm>
#include <numeric>

#include "host/data/text.h"
#include "towerrec/error.h"
#include "towerrec/io.h"

namespace towerrec {

LoadedModel load_model(const std::string& model, const std::string& device, int threads) {
  if (model.empty()) throw Error("no model given (a directory with model.ckpt, or a checkpoint file)");
  LoadedModel m;
  m.path = is_directory(model) ? model + "/model.ckpt" : model;
  m.ck = load_checkpoint(m.path);
  apply_json(m.cfg, m.ck.config_json, m.path + " (configuration section)");
  resolve_defaults(m.cfg);
  m.cfg.device = device;
  m.cfg.threads = threads;
  m.be = make_backend(device, threads);
  m.model = build_model(*m.be, m.cfg, m.ck.user_features, m.ck.users.size(), m.ck.item_features,
                        m.ck.items.size(), m.ck.has_seen() ? &m.ck.seen : nullptr);
  m.model->load_state(m.ck.state);
  // Users without training interactions use the unknown-ID bucket; items keep
  // their rows (see TrainingSession::evaluate).
  if (m.ck.has_seen()) m.model->set_cold(cold_users(m.ck.seen), {});
  return m;
}

TrainedModel::TrainedModel(LoadedModel m) : lm_(std::move(m)) {
  none_.offsets.assign(static_cast<size_t>(lm_.n_users()) + 1, 0);
}
TrainedModel TrainedModel::load(const std::string& path, const std::string& device, int threads) {
  return TrainedModel(load_model(path, device, threads));
}
TrainedModel::TrainedModel(TrainedModel&&) noexcept = default;
TrainedModel& TrainedModel::operator=(TrainedModel&& o) noexcept {
  if (this == &o) return *this;
  // Everything in this model's backend goes before the backend does.
  U_.release();
  V_.release();
  lm_.model.reset();
  lm_.be.reset();
  lm_ = std::move(o.lm_);
  U_ = std::move(o.U_);
  V_ = std::move(o.V_);
  U_host_ = std::move(o.U_host_);
  V_host_ = std::move(o.V_host_);
  embedded_ = o.embedded_;
  none_ = std::move(o.none_);
  return *this;
}
TrainedModel::~TrainedModel() = default;

void TrainedModel::ensure_device_embeddings() {
  if (embedded_) return;
  lm_.model->embed_all_users(U_);
  lm_.model->embed_all_items(V_);
  if (lm_.be->kind() != DeviceKind::kCPU) {
    U_host_.resize(static_cast<size_t>(U_.size()));
    V_host_.resize(static_cast<size_t>(V_.size()));
    lm_.be->to_host(U_host_.data(), U_.data(), U_.bytes());
    lm_.be->to_host(V_host_.data(), V_.data(), V_.bytes());
  } else {
    lm_.be->synchronize();
  }
  embedded_ = true;
}

const float* TrainedModel::user_embeddings() {
  ensure_device_embeddings();
  return lm_.be->kind() == DeviceKind::kCPU ? U_.data() : U_host_.data();
}
const float* TrainedModel::item_embeddings() {
  ensure_device_embeddings();
  return lm_.be->kind() == DeviceKind::kCPU ? V_.data() : V_host_.data();
}

namespace {

void check_indices(const std::vector<int32_t>& idx, int32_t n, const char* what) {
  for (int32_t i : idx)
    if (i < 0 || i >= n)
      throw Error(std::string(what) + " index " + std::to_string(i) + " out of range [0, " +
                  std::to_string(n) + ")");
}

// Collects the sink's blocks into one TopK, rows in request order.
struct Collector {
  TopK out;
  void operator()(const TopKBlock& b) {
    out.k = b.k;
    out.ids.insert(out.ids.end(), b.items.begin(), b.items.end());
    out.scores.insert(out.scores.end(), b.scores.begin(), b.scores.end());
    out.rows += static_cast<int64_t>(b.users.size());
  }
};

}  // namespace

RankFilter TrainedModel::rank_filter(const RecommendFilter& f) {
  check_indices(f.deny, n_items(), "item");
  check_indices(f.allow, n_items(), "item");
  RankFilter rf;
  const std::vector<char> mask = f.where.empty()
      ? std::vector<char>()
      : match_features(lm_.ck.item_features, n_items(), f.where, "item");
  rf.restrict = f.has_allow || !f.deny.empty() || !f.where.empty();
  if (rf.restrict) rf.candidates = candidate_items(n_items(), f.has_allow, f.allow, f.deny, mask);
  return rf;
}

TopK TrainedModel::recommend(const std::vector<int32_t>& users, int k, const RecommendFilter& f) {
  TOWERREC_CHECK(k > 0, "k must be positive");
  check_indices(users, n_users(), "user");
  if (f.exclude_seen && !lm_.ck.has_seen())
    throw Error(lm_.path + " stores no training interactions: recommend with seen items included");
  RankFilter rf = rank_filter(f);
  if (f.exclude_seen) rf.exclude = &lm_.ck.seen;
  ensure_device_embeddings();
  Collector c;
  rank_topk(*lm_.be, U_, n_users(), V_, n_items(), dim(), users, k, rf, std::ref(c));
  c.out.k = k;
  return std::move(c.out);
}

TopK TrainedModel::recommend_histories(const UserItems& histories, int k, const RecommendFilter& f) {
  TOWERREC_CHECK(k > 0, "k must be positive");
  const std::string problem = lm_.model->history_input_problem();
  if (!problem.empty()) throw Error(lm_.path + ": " + problem);
  check_indices(histories.items, n_items(), "item");
  TopK out;
  out.k = k;
  if (histories.offsets.size() < 2) return out;
  RankFilter rf = rank_filter(f);
  if (f.exclude_seen) rf.exclude = &histories;
  ensure_device_embeddings();
  DeviceArray<float> Q;
  lm_.model->embed_histories(histories.offsets, histories.items, Q);
  Collector c;
  rank_topk(*lm_.be, Q, histories.n_users(), V_, n_items(), dim(), {}, k, rf, std::ref(c));
  c.out.k = k;
  return std::move(c.out);
}

TopK TrainedModel::similar_items(const std::vector<int32_t>& items, int k, const RecommendFilter& f) {
  TOWERREC_CHECK(k > 0, "k must be positive");
  check_indices(items, n_items(), "item");
  TopK out;
  out.k = k;
  if (items.empty()) return out;
  RankFilter rf = rank_filter(f);
  rf.exclude_self = true;
  ensure_device_embeddings();
  Collector c;
  rank_topk(*lm_.be, V_, n_items(), V_, n_items(), dim(), items, k, rf, std::ref(c));
  c.out.k = k;
  return std::move(c.out);
}

TopK TrainedModel::similar_users(const std::vector<int32_t>& users, int k) {
  TOWERREC_CHECK(k > 0, "k must be positive");
  check_indices(users, n_users(), "user");
  TopK out;
  out.k = k;
  if (users.empty()) return out;
  RankFilter rf;
  rf.exclude_self = true;
  ensure_device_embeddings();
  Collector c;
  rank_topk(*lm_.be, U_, n_users(), U_, n_users(), dim(), users, k, rf, std::ref(c));
  c.out.k = k;
  return std::move(c.out);
}

const UserItems& TrainedModel::exclusions(const UserItems* exclude) {
  if (exclude) return *exclude;
  if (!lm_.ck.has_seen())
    throw Error(lm_.path + " stores no training interactions: give the interactions to exclude");
  return lm_.ck.seen;
}

RankingMetrics TrainedModel::evaluate(const Interactions& test, const std::vector<int>& ks,
                                      const UserItems* exclude) {
  check_indices(test.user, n_users(), "user");
  check_indices(test.item, n_items(), "item");
  const UserItems& train = exclusions(exclude);
  ensure_device_embeddings();
  return evaluate_ranking(*lm_.be, U_, V_, n_users(), n_items(), dim(), train,
                          group_by_user(test, n_users()), ks);
}

RankingMetrics TrainedModel::evaluate_popularity(const Interactions& test, const std::vector<int>& ks,
                                                 const UserItems* exclude) {
  check_indices(test.user, n_users(), "user");
  check_indices(test.item, n_items(), "item");
  return towerrec::evaluate_popularity(exclusions(exclude), group_by_user(test, n_users()), n_items(), ks);
}

void TrainedModel::save(const std::string& path) const {
  save_checkpoint(path, lm_.ck);  // one file with the whole tables
  remove_table_shards(path);       // of a row-sharded checkpoint it replaced
}

TrainedModel train(Config cfg, SessionCallbacks callbacks) {
  resolve_defaults(cfg);
  std::string path;
  {
    // The session (and its backend) goes before the model is loaded again.
    TrainingSession s(cfg, {}, std::move(callbacks));
    s.run();
    path = s.checkpoint_path();
  }
  return TrainedModel::load(path, cfg.device, cfg.threads);
}

std::vector<int32_t> lookup_ids(const IdMap& map, const std::vector<std::string>& ids,
                                const std::string& what, const std::string& field) {
  std::vector<int32_t> out;
  out.reserve(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    const int32_t x = map.find(data_detail::trim(ids[i]));  // the ID rule (IdMap)
    if (x < 0)
      throw InputError(what, 0, field, "unknown " + field + " ID '" + ids[i] + "' (position " +
                                           std::to_string(i) + ")");
    out.push_back(x);
  }
  return out;
}

}  // namespace towerrec
