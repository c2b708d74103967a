#include "towerrec/api.h"

#include <algorithm>
#include <numeric>

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

// A CSR over n rows with only `rows` filled by fill(row, out).
template <typename Fill>
UserItems sparse_rows(int32_t n, const std::vector<int32_t>& rows, Fill fill) {
  std::vector<std::vector<int32_t>> per(static_cast<size_t>(n));
  std::vector<char> done(static_cast<size_t>(n), 0);
  for (int32_t r : rows) {
    if (done[static_cast<size_t>(r)]) continue;
    done[static_cast<size_t>(r)] = 1;
    auto& v = per[static_cast<size_t>(r)];
    fill(r, v);
    std::sort(v.begin(), v.end());
    v.erase(std::unique(v.begin(), v.end()), v.end());
  }
  UserItems g;
  g.offsets.assign(static_cast<size_t>(n) + 1, 0);
  for (int32_t r = 0; r < n; ++r) g.offsets[r + 1] = g.offsets[r] + static_cast<int64_t>(per[r].size());
  g.items.reserve(static_cast<size_t>(g.offsets.back()));
  for (auto& v : per) g.items.insert(g.items.end(), v.begin(), v.end());
  return g;
}

}  // namespace

TopK TrainedModel::recommend(const std::vector<int32_t>& users_in, int k, const RecommendFilter& f) {
  TOWERREC_CHECK(k > 0, "k must be positive");
  check_indices(users_in, n_users(), "user");
  check_indices(f.deny, n_items(), "item");
  check_indices(f.allow, n_items(), "item");
  if (f.exclude_seen && !lm_.ck.has_seen())
    throw Error(lm_.path + " stores no training interactions: recommend with seen items included");
  std::vector<int32_t> users = users_in;
  if (users.empty()) {
    users.resize(static_cast<size_t>(n_users()));
    std::iota(users.begin(), users.end(), 0);
  }
  TopK out;
  out.rows = static_cast<int64_t>(users.size());
  out.k = k;
  ensure_device_embeddings();
  const int d = dim();
  const UserItems& seen = lm_.ck.seen;

  // Candidates: every item, or the allow list (as a gathered sub-matrix whose
  // rows keep the items' order, so ties still go to the lower item index).
  std::vector<int32_t> cand;
  std::vector<int32_t> local;  // item -> row of the sub-matrix, or -1
  DeviceArray<float> Vsub;
  const DeviceArray<float>* V = &V_;
  int32_t nc = n_items();
  if (f.has_allow) {
    cand = f.allow;
    std::sort(cand.begin(), cand.end());
    cand.erase(std::unique(cand.begin(), cand.end()), cand.end());
    if (cand.empty()) {
      out.ids.assign(static_cast<size_t>(out.rows) * k, -1);
      out.scores.assign(static_cast<size_t>(out.rows) * k, 0.0f);
      return out;
    }
    local.assign(static_cast<size_t>(n_items()), -1);
    const float* Vh = item_embeddings();
    std::vector<float> rows(cand.size() * static_cast<size_t>(d));
    for (size_t j = 0; j < cand.size(); ++j) {
      local[static_cast<size_t>(cand[j])] = static_cast<int32_t>(j);
      std::copy_n(Vh + static_cast<int64_t>(cand[j]) * d, d, rows.begin() + static_cast<int64_t>(j) * d);
    }
    Vsub.reset(lm_.be.get(), static_cast<int64_t>(rows.size()));
    lm_.be->to_device(Vsub.data(), rows.data(), rows.size() * sizeof(float));
    V = &Vsub;
    nc = static_cast<int32_t>(cand.size());
  }
  const bool any_exclusion = f.exclude_seen || !f.deny.empty();
  UserItems excl;
  if (any_exclusion) {
    excl = sparse_rows(n_users(), users, [&](int32_t u, std::vector<int32_t>& v) {
      auto add = [&](int32_t item) {
        if (local.empty()) v.push_back(item);
        else if (local[static_cast<size_t>(item)] >= 0) v.push_back(local[static_cast<size_t>(item)]);
      };
      if (f.exclude_seen)
        for (int64_t p = seen.offsets[u]; p < seen.offsets[u + 1]; ++p) add(seen.items[p]);
      for (int32_t item : f.deny) add(item);
    });
  }
  Collector c;
  recommend_topk(*lm_.be, U_, *V, n_users(), nc, d, users, k, any_exclusion ? &excl : nullptr,
                 std::ref(c));
  out.ids = std::move(c.out.ids);
  out.scores = std::move(c.out.scores);
  if (!cand.empty())
    for (int32_t& id : out.ids)
      if (id >= 0) id = cand[static_cast<size_t>(id)];
  return out;
}

namespace {

TopK similar(Backend& be, const DeviceArray<float>& E, int32_t n, int d, const std::vector<int32_t>& q,
             int k) {
  TOWERREC_CHECK(k > 0, "k must be positive");
  TopK out;
  out.k = k;
  if (q.empty()) return out;
  const UserItems self = sparse_rows(n, q, [](int32_t r, std::vector<int32_t>& v) { v.push_back(r); });
  Collector c;
  recommend_topk(be, E, E, n, n, d, q, k, &self, std::ref(c));
  c.out.k = k;
  return c.out;
}

}  // namespace

TopK TrainedModel::similar_items(const std::vector<int32_t>& items, int k) {
  check_indices(items, n_items(), "item");
  ensure_device_embeddings();
  return similar(*lm_.be, V_, n_items(), dim(), items, k);
}

TopK TrainedModel::similar_users(const std::vector<int32_t>& users, int k) {
  check_indices(users, n_users(), "user");
  ensure_device_embeddings();
  return similar(*lm_.be, U_, n_users(), dim(), users, k);
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

void TrainedModel::save(const std::string& path) const { save_checkpoint(path, lm_.ck); }

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
    const int32_t x = map.find(ids[i]);
    if (x < 0)
      throw InputError(what, 0, field, "unknown " + field + " ID '" + ids[i] + "' (position " +
                                           std::to_string(i) + ")");
    out.push_back(x);
  }
  return out;
}

}  // namespace towerrec
