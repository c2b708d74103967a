#include "towerrec/model.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "towerrec/error.h"
#include "towerrec/rng.h"

namespace towerrec {

TowerInputSpec make_input_spec(const EntityFeatures& f, int32_t n_entities, bool use_features) {
  TowerInputSpec s;
  s.n_entities = n_entities;
  if (!use_features || f.empty()) return s;
  TOWERREC_CHECK(f.n_entities == n_entities,
                 "feature rows (" + std::to_string(f.n_entities) + ") != entities (" +
                     std::to_string(n_entities) + ")");
  s.dense_dim = f.dense_dim();
  for (const auto& c : f.categorical) {
    s.cat_vocab.push_back(c.vocab.size());
    s.cat_names.push_back(c.name);
  }
  return s;
}

// ---------------------------------------------------------------------------
// Tower

namespace {
// Rows of an n-row table that rank `rank` of `ranks` owns (r % ranks == rank).
int64_t rows_of_rank(int64_t n, int rank, int ranks) {
  return n > rank ? (n - rank - 1) / ranks + 1 : 0;
}
}  // namespace

Tower::Tower(TwoTowerModel& model, const std::string& name, const TowerInputSpec& spec,
             int64_t& cursor, TableShard shard)
    : model_(&model), name_(name), spec_(spec) {
  TOWERREC_CHECK(shard.ranks >= 1 && shard.rank >= 0 && shard.rank < shard.ranks, "bad table shard");
  const TowerConfig& cfg = model.cfg_;
  TOWERREC_CHECK(spec.n_entities > 0, name + " tower: no entities");
  TOWERREC_CHECK(cfg.out_dim > 0, "out_dim must be positive");
  const int n_fields = static_cast<int>(spec.cat_vocab.size());
  in_dim_ = cfg.id_dim + spec.dense_dim + n_fields * cfg.cat_dim;
  for (int f = 0; f < n_fields; ++f) {
    cat_off_.push_back(cursor);
    cursor += static_cast<int64_t>(spec.cat_vocab[f]) * cfg.cat_dim;
  }
  if (spec.history_vocab > 0) {
    TOWERREC_CHECK(cfg.history > 0, name + " tower: a history input needs history > 0");
    has_hist_ = true;
    if (cfg.history_shared) {
      TOWERREC_CHECK(cfg.id_dim > 0, name + " tower: a history shared with the item tower's ID "
                                            "table needs ID embeddings (id_dim > 0)");
      TOWERREC_CHECK(shard.ranks == 1, name + " tower: a history shared with the item tower's ID "
                                              "table needs the whole table on every rank, not row-sharded tables");
      hist_shared_ = true;
      hist_dim_ = cfg.id_dim;
    } else {
      TOWERREC_CHECK(cfg.history_dim > 0, name + " tower: a history input needs history_dim > 0");
      hist_off_ = cursor;
      cursor += static_cast<int64_t>(spec.history_vocab) * cfg.history_dim;
      hist_dim_ = cfg.history_dim;
    }
    in_dim_ += hist_dim_;
    if (cfg.history_weighted) {
      hist_w_off_ = cursor;  // zero-initialised: the mean at the start
      cursor += spec.history_vocab;
    }
  }
  TOWERREC_CHECK(in_dim_ > 0, name + " tower has no input: enable the ID embedding or features");
  int in = in_dim_;
  std::vector<int> widths = cfg.hidden;
  widths.push_back(cfg.out_dim);
  for (size_t l = 0; l < widths.size(); ++l) {
    TOWERREC_CHECK(widths[l] > 0, "layer widths must be positive");
    Layer L;
    L.in = in;
    L.out = widths[l];
    L.act = l + 1 < widths.size() ? Activation::kReLU : Activation::kNone;
    L.w_off = cursor;
    cursor += static_cast<int64_t>(L.in) * L.out;
    L.b_off = cursor;
    cursor += L.out;
    layers_.push_back(L);
    in = L.out;
  }
  act_.resize(layers_.size() + 1);
  grad_act_.resize(layers_.size() + 1);
  Backend* be = &model.backend();
  local_rows_ = spec.n_entities;
  if (cfg.id_dim > 0 && shard.ranks > 1) {
    shard_rank_ = shard.rank;
    shard_ranks_ = shard.ranks;
    local_rows_ = rows_of_rank(spec.n_entities, shard.rank, shard.ranks);
  }
  if (cfg.id_dim > 0) {
    const int64_t n = local_rows_ * cfg.id_dim;
    id_table_.reset(be, n);
    id_m_.reset(be, n);
    id_v_.reset(be, n);
    be->fill(id_m_.data(), n, 0.0f);
    be->fill(id_v_.data(), n, 0.0f);
  }
}

void Tower::init_params(uint64_t seed, std::vector<float>& arena) {
  const TowerConfig& cfg = model_->cfg_;
  const uint64_t tower_seed = rng::mix64(seed ^ std::hash<std::string>{}(name_));
  uint64_t counter = 0;
  for (size_t f = 0; f < cat_off_.size(); ++f) {
    const int64_t n = static_cast<int64_t>(spec_.cat_vocab[f]) * cfg.cat_dim;
    for (int64_t j = 0; j < n; ++j)
      arena[cat_off_[f] + j] = cfg.init_std * rng::normal(tower_seed, rng::kInit, counter++);
  }
  if (hist_off_ >= 0) {
    const int64_t n = static_cast<int64_t>(spec_.history_vocab) * cfg.history_dim;
    for (int64_t j = 0; j < n; ++j)
      arena[hist_off_ + j] = cfg.init_std * rng::normal(tower_seed, rng::kInit + 300, j);
  }
  for (const Layer& L : layers_) {
    // He-uniform for ReLU layers, Glorot-uniform for the linear output layer.
    const double a = L.act == Activation::kReLU ? std::sqrt(6.0 / L.in)
                                                : std::sqrt(6.0 / (L.in + L.out));
    const int64_t n = static_cast<int64_t>(L.in) * L.out;
    for (int64_t j = 0; j < n; ++j)
      arena[L.w_off + j] =
          static_cast<float>(a * (2.0 * rng::uniform(tower_seed, rng::kInit + 100, counter++) - 1.0));
    for (int j = 0; j < L.out; ++j) arena[L.b_off + j] = 0.0f;
  }
  if (cfg.id_dim > 0) {
    // Element j of the whole table draws counter j; a shard draws its rows'.
    std::vector<float> t(static_cast<size_t>(id_table_.size()));
    const size_t dim = static_cast<size_t>(cfg.id_dim);
    for (size_t j = 0; j < t.size(); ++j) {
      const size_t row = j / dim * static_cast<size_t>(shard_ranks_) + static_cast<size_t>(shard_rank_);
      t[j] = cfg.init_std * rng::normal(tower_seed, rng::kInit + 200, row * dim + j % dim);
    }
    model_->be_->to_device(id_table_.data(), t.data(), t.size() * sizeof(float));
  }
}

void Tower::upload_features(const EntityFeatures& f) {
  Backend* be = model_->be_;
  if (spec_.dense_dim > 0) {
    TOWERREC_CHECK(static_cast<int64_t>(f.dense.size()) ==
                       static_cast<int64_t>(spec_.n_entities) * spec_.dense_dim,
                   name_ + " tower: dense feature size mismatch");
    dense_feat_.reset(be, static_cast<int64_t>(f.dense.size()));
    be->to_device(dense_feat_.data(), f.dense.data(), f.dense.size() * sizeof(float));
  }
  cat_offsets_.clear();
  cat_values_.clear();
  TOWERREC_CHECK(f.categorical.size() >= spec_.cat_vocab.size() || spec_.cat_vocab.empty(),
                 name_ + " tower: categorical field count mismatch");
  for (size_t c = 0; c < spec_.cat_vocab.size(); ++c) {
    const CategoricalField& field = f.categorical[c];
    TOWERREC_CHECK(static_cast<int64_t>(field.offsets.size()) == spec_.n_entities + 1,
                   name_ + " tower: field " + field.name + " offsets size mismatch");
    cat_offsets_.emplace_back(be, static_cast<int64_t>(field.offsets.size()));
    be->to_device(cat_offsets_.back().data(), field.offsets.data(),
                  field.offsets.size() * sizeof(int32_t));
    cat_values_.emplace_back(be, static_cast<int64_t>(std::max<size_t>(field.values.size(), 1)));
    if (!field.values.empty())
      be->to_device(cat_values_.back().data(), field.values.data(),
                    field.values.size() * sizeof(int32_t));
  }
}

const float* Tower::forward(const int32_t* idx, int64_t n, bool zero_id,
                            const HistoryBags* history, MatmulPrecision precision) {
  Backend* be = model_->be_;
  const TowerConfig& cfg = model_->cfg_;
  TOWERREC_CHECK(n > 0, name_ + " tower: empty batch");
  TOWERREC_CHECK(spec_.dense_dim == 0 || dense_feat_.data(),
                 name_ + " tower: features not set (call set_features)");
  act_[0].ensure(be, n * in_dim_);
  grad_act_[0].ensure(be, n * in_dim_);
  for (size_t l = 0; l < layers_.size(); ++l) {
    act_[l + 1].ensure(be, n * layers_[l].out);
    grad_act_[l + 1].ensure(be, n * layers_[l].out);
  }
  float* X = act_[0].data();
  int col = 0;
  fetch_used_ = false;
  if (cfg.id_dim > 0) {
    if (zero_id) {
      if (zero_row_.size() != cfg.id_dim) {
        zero_row_.reset(be, cfg.id_dim);
        be->fill(zero_row_.data(), cfg.id_dim, 0.0f);
      }
      if (zero_idx_.size() < n) {
        zero_idx_.reset(be, n);
        const std::vector<int32_t> zeros(static_cast<size_t>(n), 0);
        be->to_device(zero_idx_.data(), zeros.data(), zeros.size() * sizeof(int32_t));
      }
      be->gather_rows(zero_row_.data(), cfg.id_dim, zero_idx_.data(), n, X, in_dim_, col);
    } else if (shard_ranks_ == 1) {
      be->gather_rows(id_table_.data(), cfg.id_dim, idx, n, X, in_dim_, col);
    } else if (fetch_armed_ && model_->training_) {
      // Rows mode, training: the rows fetch_rows() brought, by position.
      TOWERREC_CHECK(n == fetch_n_, name_ + " tower: the forward's batch (" + std::to_string(n) +
                                        " rows) is not the one fetch_rows() fetched (" +
                                        std::to_string(fetch_n_) + ")");
      be->gather_rows(fetched_.data(), cfg.id_dim, fetched_pos_.data(), n, X, in_dim_, col);
      fetch_armed_ = false;
      fetch_used_ = true;
    } else if (full_valid_) {
      be->gather_rows(full_table_.data(), cfg.id_dim, idx, n, X, in_dim_, col);
    } else {
      throw Error(name_ + " tower: its ID table is row-sharded over " + std::to_string(shard_ranks_) +
                  " ranks; a training forward needs fetch_rows() and an inference forward "
                  "gather_tables() first");
    }
    col += cfg.id_dim;
  }
  if (spec_.dense_dim > 0) {
    be->gather_rows(dense_feat_.data(), spec_.dense_dim, idx, n, X, in_dim_, col);
    col += spec_.dense_dim;
  }
  const float* arena = model_->params_.data();
  for (size_t f = 0; f < cat_off_.size(); ++f) {
    be->bag_forward(arena + cat_off_[f], cfg.cat_dim, cat_offsets_[f].data(),
                    cat_values_[f].data(), idx, n, X, in_dim_, col);
    col += cfg.cat_dim;
  }
  if (has_hist_) {
    if (history) {
      last_hist_ = *history;
    } else {
      TOWERREC_CHECK(hist_offsets_.data() != nullptr,
                     name_ + " tower: histories not set (call set_history)");
      last_hist_ = {hist_offsets_.data(), hist_values_.data(), idx};
    }
    const float* table = hist_shared_ ? model_->item_->id_table_.data() : arena + hist_off_;
    if (hist_w_off_ >= 0)
      be->bag_weighted_forward(table, arena + hist_w_off_, hist_dim_, last_hist_.offsets, last_hist_.values,
                               last_hist_.rows, n, X, in_dim_, col);
    else
      be->bag_forward(table, hist_dim_, last_hist_.offsets, last_hist_.values, last_hist_.rows, n, X,
                      in_dim_, col);
    col += hist_dim_;
  }
  const bool drop = model_->training_ && cfg.dropout > 0.0f;
  for (size_t l = 0; l < layers_.size(); ++l) {
    const Layer& L = layers_[l];
    be->dense_forward(act_[l].data(), n, L.in, arena + L.w_off, arena + L.b_off, L.out, L.act,
                      act_[l + 1].data(), precision);
    // Dropout in place after hidden layers: a dropped unit reads as inactive to
    // the next ReLU mask, so backward only needs the same mask on the gradient.
    if (drop && L.act == Activation::kReLU)
      be->dropout(act_[l + 1].data(), n * L.out, cfg.dropout, dropout_seed(l), 0);
  }
  last_idx_ = idx;
  last_n_ = n;
  last_training_ = model_->training_;
  last_precision_ = precision;
  if (cfg.normalize) {
    norm_out_.ensure(be, n * cfg.out_dim);
    norm_inv_.ensure(be, n);
    norm_grad_.ensure(be, n * cfg.out_dim);
    be->l2_normalize(act_.back().data(), n, cfg.out_dim, norm_out_.data(), norm_inv_.data());
    return norm_out_.data();
  }
  return act_.back().data();
}

uint64_t Tower::dropout_seed(size_t layer) const {
  return rng::mix64(model_->seed_ ^ rng::mix64(static_cast<uint64_t>(model_->steps_) * 64 + layer) ^
                    std::hash<std::string>{}(name_));
}

void Tower::backward() {
  Backend* be = model_->be_;
  const TowerConfig& cfg = model_->cfg_;
  TOWERREC_CHECK(last_n_ > 0, name_ + " tower: backward without forward");
  const int64_t n = last_n_;
  const float* arena = model_->params_.data();
  float* grads = model_->grads_.data();
  const bool need_input_grad = cfg.id_dim > 0 || !cat_off_.empty() || has_hist_;
  if (cfg.normalize)
    be->l2_normalize_backward(norm_out_.data(), norm_inv_.data(), norm_grad_.data(), n,
                              cfg.out_dim, grad_act_.back().data());
  const bool drop = last_training_ && cfg.dropout > 0.0f;
  for (size_t l = layers_.size(); l-- > 0;) {
    const Layer& L = layers_[l];
    if (drop && L.act == Activation::kReLU)
      be->dropout(grad_act_[l + 1].data(), n * L.out, cfg.dropout, dropout_seed(l), 0);
    float* dX = (l > 0 || need_input_grad) ? grad_act_[l].data() : nullptr;
    be->dense_backward(act_[l].data(), n, L.in, arena + L.w_off, L.out, L.act,
                       act_[l + 1].data(), grad_act_[l + 1].data(), grads + L.w_off,
                       grads + L.b_off, dX, last_precision_);
  }
  if (!need_input_grad) return;
  int col = cfg.id_dim + spec_.dense_dim;
  for (size_t f = 0; f < cat_off_.size(); ++f) {
    be->bag_backward(grad_act_[0].data(), in_dim_, col, cat_offsets_[f].data(),
                     cat_values_[f].data(), last_idx_, n, cfg.cat_dim, grads + cat_off_[f]);
    col += cfg.cat_dim;
  }
  if (hist_w_off_ >= 0) {
    // Learned weights: their logits' gradient here; the rows' here too with
    // an own table, at the merge with a shared one.
    const float* table = hist_shared_ ? model_->item_->id_table_.data() : arena + hist_off_;
    be->bag_weighted_backward(grad_act_[0].data(), act_[0].data(), in_dim_, col, table, arena + hist_w_off_,
                              last_hist_.offsets, last_hist_.values, nullptr, last_hist_.rows, n, hist_dim_,
                              hist_shared_ ? nullptr : grads + hist_off_, grads + hist_w_off_);
  } else if (hist_off_ >= 0) {
    be->bag_backward(grad_act_[0].data(), in_dim_, col, last_hist_.offsets, last_hist_.values,
                     last_hist_.rows, n, cfg.history_dim, grads + hist_off_);
  }
  // A shared history's rows join the item tower's at the next reduce or step.
  hist_pending_ = hist_shared_;
  pending_rows_ = cfg.id_dim > 0;
  use_union_ = false;  // a union of an earlier backward no longer applies
}

namespace {
// Sums `n` floats of backend memory over the ranks: through `data` when it
// takes the backend's memory, else staged through host memory over `control`.
void reduce_backend_floats(Backend& be, float* buf, int64_t n, Communicator& control, Communicator* data) {
  const bool device_mem = be.kind() != DeviceKind::kCPU;
  if (data && (data->memory() == CommMemory::kDevice) == device_mem) {
    be.synchronize();  // the communicator runs on its own stream
    data->all_reduce_sum(buf, n);
    return;
  }
  if (!device_mem) {
    TOWERREC_CHECK(control.memory() == CommMemory::kHost, "the CPU backend needs a host-memory communicator");
    control.all_reduce_sum(buf, n);
    return;
  }
  std::vector<float> host(static_cast<size_t>(n));
  be.to_host(host.data(), buf, host.size() * sizeof(float));
  control.all_reduce_sum(host.data(), n);
  be.to_device(buf, host.data(), host.size() * sizeof(float));
}
}  // namespace

void Tower::reduce_rows(Communicator& control, Communicator* data) {
  Backend* be = model_->be_;
  const int dim = model_->cfg_.id_dim;
  // This rank's rows and their gradients, on the host: the ID columns of dX,
  // or the rows merged with a shared history's (row stride dim).
  const bool merged = use_union_;
  use_union_ = false;
  if (dim == 0) return;
  const int64_t n = pending_rows_ ? (merged ? union_n_ : last_n_) : 0;
  const int ld = merged ? dim : in_dim_;
  std::vector<int32_t> rows(static_cast<size_t>(n));
  std::vector<float> dx(static_cast<size_t>(n) * static_cast<size_t>(ld));
  if (n > 0) {
    be->to_host(rows.data(), merged ? union_idx_.data() : last_idx_, rows.size() * sizeof(int32_t));
    be->to_host(dx.data(), merged ? union_grad_.data() : grad_act_[0].data(), dx.size() * sizeof(float));
  }
  std::vector<int32_t> all = control.all_gatherv_i32(rows);
  std::sort(all.begin(), all.end());
  all.erase(std::unique(all.begin(), all.end()), all.end());
  union_n_ = static_cast<int64_t>(all.size());
  pending_rows_ = union_n_ > 0;
  if (!pending_rows_) return;
  std::vector<float> g(all.size() * static_cast<size_t>(dim), 0.0f);
  for (int64_t j = 0; j < n; ++j) {
    const auto at = static_cast<size_t>(std::lower_bound(all.begin(), all.end(), rows[j]) - all.begin());
    const float* src = dx.data() + static_cast<size_t>(j) * static_cast<size_t>(ld);
    float* dst = g.data() + at * static_cast<size_t>(dim);
    for (int c = 0; c < dim; ++c) dst[c] += src[c];
  }
  union_idx_.ensure(be, union_n_);
  union_grad_.ensure(be, union_n_ * dim);
  be->to_device(union_idx_.data(), all.data(), all.size() * sizeof(int32_t));
  if (!data && be->kind() != DeviceKind::kCPU) {
    control.all_reduce_sum(g.data(), static_cast<int64_t>(g.size()));  // host buffer already
    be->to_device(union_grad_.data(), g.data(), g.size() * sizeof(float));
  } else {
    be->to_device(union_grad_.data(), g.data(), g.size() * sizeof(float));
    reduce_backend_floats(*be, union_grad_.data(), static_cast<int64_t>(g.size()), control, data);
  }
  use_union_ = true;
}

void Tower::sparse_step(const OptimizerConfig& opt, int64_t step) {
  if (shard_ranks_ > 1) {
    // The gathered whole table no longer matches the shards after any step.
    full_valid_ = false;
    full_table_.release();
    TOWERREC_CHECK(!pending_rows_ || use_union_,
                   name_ + " tower: a row-sharded table needs reduce_gradients() before step()");
  }
  if (!pending_rows_) return;
  Backend* be = model_->be_;
  const int dim = model_->cfg_.id_dim;
  if (use_union_) {
    if (opt.kind == OptimizerKind::kSgd) {
      be->sparse_sgd(id_table_.data(), dim, union_idx_.data(), union_n_, union_grad_.data(), dim, 0,
                     opt.lr, opt.embedding_decay);
    } else {
      AdamParams p{opt.lr, opt.beta1, opt.beta2, opt.eps, opt.embedding_decay, step};
      be->sparse_adam(id_table_.data(), id_m_.data(), id_v_.data(), dim, union_idx_.data(), union_n_,
                      union_grad_.data(), dim, 0, p);
    }
    pending_rows_ = false;
    use_union_ = false;
    return;
  }
  if (opt.kind == OptimizerKind::kSgd) {
    be->sparse_sgd(id_table_.data(), dim, last_idx_, last_n_, grad_act_[0].data(), in_dim_, 0,
                   opt.lr, opt.embedding_decay);
  } else {
    AdamParams p{opt.lr, opt.beta1, opt.beta2, opt.eps, opt.embedding_decay, step};
    be->sparse_adam(id_table_.data(), id_m_.data(), id_v_.data(), dim, last_idx_, last_n_,
                    grad_act_[0].data(), in_dim_, 0, p);
  }
  pending_rows_ = false;
}


// ---------------------------------------------------------------------------
// Row-sharded ID tables: rank q of N owns rows q, q + N, q + 2N, ...

void Tower::shard(int rank, int ranks) {
  TOWERREC_CHECK(ranks >= 1 && rank >= 0 && rank < ranks, "bad shard rank");
  const int dim = model_->cfg_.id_dim;
  const int64_t n = spec_.n_entities;
  if (dim == 0) {
    shard_rank_ = rank;
    shard_ranks_ = ranks;
    return;
  }
  if (shard_ranks_ > 1) {  // built sharded: the same shard
    TOWERREC_CHECK(shard_ranks_ == ranks && shard_rank_ == rank,
                   name_ + " tower: built for shard " + std::to_string(shard_rank_) + " of " +
                       std::to_string(shard_ranks_) + ", not " + std::to_string(rank) + " of " +
                       std::to_string(ranks));
    return;
  }
  Backend* be = model_->be_;
  const int64_t local = rows_of_rank(n, rank, ranks);
  for (DeviceArray<float>* a : {&id_table_, &id_m_, &id_v_}) {
    std::vector<float> full(static_cast<size_t>(a->size()));
    if (!full.empty()) be->to_host(full.data(), a->data(), a->bytes());
    std::vector<float> mine(static_cast<size_t>(local * dim));
    for (int64_t l = 0; l < local; ++l)
      std::copy_n(full.data() + (l * ranks + rank) * dim, dim, mine.data() + l * dim);
    a->reset(be, local * dim);
    if (!mine.empty()) be->to_device(a->data(), mine.data(), mine.size() * sizeof(float));
  }
  shard_rank_ = rank;
  shard_ranks_ = ranks;
  local_rows_ = local;
}

void Tower::fetch(Communicator& comm, const int32_t* idx, int64_t n) {
  const int dim = model_->cfg_.id_dim;
  if (dim == 0 || shard_ranks_ == 1) return;
  const int N = shard_ranks_;
  Backend* be = model_->be_;
  // The distinct rows, grouped by owner (sorted within each owner).
  std::vector<int32_t> need(idx, idx + n);
  for (int32_t r : need)
    TOWERREC_CHECK(r >= 0 && r < spec_.n_entities, name_ + " tower: row index out of range");
  std::sort(need.begin(), need.end(), [N](int32_t a, int32_t b) {
    return a % N != b % N ? a % N < b % N : a < b;
  });
  need.erase(std::unique(need.begin(), need.end()), need.end());
  fetch_counts_.assign(static_cast<size_t>(N), 0);
  for (int32_t r : need) ++fetch_counts_[static_cast<size_t>(r % N)];
  fetch_pos_.resize(static_cast<size_t>(n));
  for (int64_t j = 0; j < n; ++j) {
    const int32_t r = idx[j];
    const auto it = std::lower_bound(need.begin(), need.end(), r, [N](int32_t a, int32_t b) {
      return a % N != b % N ? a % N < b % N : a < b;
    });
    fetch_pos_[static_cast<size_t>(j)] = static_cast<int32_t>(it - need.begin());
  }
  fetch_rows_ = std::move(need);
  // How many rows each rank asks of this one, then which.
  const std::vector<int64_t> eight(static_cast<size_t>(N), 8);
  std::vector<int64_t> asked(static_cast<size_t>(N));
  comm.all_to_allv(fetch_counts_.data(), eight, asked.data(), eight);
  std::vector<int64_t> send_b(static_cast<size_t>(N)), recv_b(static_cast<size_t>(N));
  int64_t total_asked = 0;
  for (int q = 0; q < N; ++q) {
    send_b[q] = fetch_counts_[q] * 4;
    recv_b[q] = asked[q] * 4;
    total_asked += asked[q];
  }
  std::vector<int32_t> wanted(static_cast<size_t>(total_asked));
  comm.all_to_allv(fetch_rows_.data(), send_b, wanted.data(), recv_b);
  // Answer with this rank's rows, in the order asked.
  std::vector<float> answer(static_cast<size_t>(total_asked) * static_cast<size_t>(dim));
  if (total_asked > 0) {
    for (int32_t& r : wanted) {
      TOWERREC_CHECK(r >= 0 && r % N == shard_rank_ && r < spec_.n_entities,
                     name_ + " tower: a rank asked for a row this rank does not own");
      r /= N;
    }
    DeviceArray<int32_t> d_idx(be, total_asked);
    DeviceArray<float> d_rows(be, total_asked * dim);
    be->to_device(d_idx.data(), wanted.data(), wanted.size() * sizeof(int32_t));
    be->gather_rows(id_table_.data(), dim, d_idx.data(), total_asked, d_rows.data(), dim, 0);
    be->to_host(answer.data(), d_rows.data(), answer.size() * sizeof(float));
  }
  for (int q = 0; q < N; ++q) {
    send_b[q] = asked[q] * dim * 4;
    recv_b[q] = fetch_counts_[q] * dim * 4;
  }
  std::vector<float> got(fetch_rows_.size() * static_cast<size_t>(dim));
  comm.all_to_allv(answer.data(), send_b, got.data(), recv_b);
  fetch_n_ = n;
  fetch_armed_ = n > 0;
  fetch_used_ = false;
  if (n == 0) return;
  fetched_.ensure(be, static_cast<int64_t>(got.size()));
  fetched_pos_.ensure(be, n);
  be->to_device(fetched_.data(), got.data(), got.size() * sizeof(float));
  be->to_device(fetched_pos_.data(), fetch_pos_.data(), fetch_pos_.size() * sizeof(int32_t));
}

void Tower::push_rows(Communicator& comm) {
  Backend* be = model_->be_;
  const int dim = model_->cfg_.id_dim;
  use_union_ = false;
  if (dim == 0) return;
  const int N = shard_ranks_;
  // This rank's gradient of each fetched row (summed over the forward's
  // positions of the row), sent to the row's owner as [row | dim floats].
  const bool mine = pending_rows_;
  TOWERREC_CHECK(!mine || fetch_used_, name_ + " tower: the backward's forward did not read fetched rows");
  const size_t rec = 1 + static_cast<size_t>(dim);  // one record, in 4-byte words
  std::vector<float> send;
  std::vector<int64_t> send_b(static_cast<size_t>(N), 0), recv_b(static_cast<size_t>(N));
  if (mine) {
    const int64_t n = last_n_;
    std::vector<float> dx(static_cast<size_t>(n) * static_cast<size_t>(in_dim_));
    be->to_host(dx.data(), grad_act_[0].data(), dx.size() * sizeof(float));
    std::vector<float> g(fetch_rows_.size() * static_cast<size_t>(dim), 0.0f);
    for (int64_t j = 0; j < n; ++j) {
      const float* src = dx.data() + static_cast<size_t>(j) * static_cast<size_t>(in_dim_);
      float* dst = g.data() + static_cast<size_t>(fetch_pos_[static_cast<size_t>(j)]) * dim;
      for (int c = 0; c < dim; ++c) dst[c] += src[c];
    }
    send.resize(fetch_rows_.size() * rec);
    for (size_t k = 0; k < fetch_rows_.size(); ++k) {
      std::memcpy(&send[k * rec], &fetch_rows_[k], 4);
      std::copy_n(g.data() + k * dim, dim, send.data() + k * rec + 1);
    }
    for (int q = 0; q < N; ++q) send_b[q] = fetch_counts_[q] * static_cast<int64_t>(rec) * 4;
  }
  const std::vector<int64_t> eight(static_cast<size_t>(N), 8);
  std::vector<int64_t> send_n(static_cast<size_t>(N)), recv_n(static_cast<size_t>(N));
  for (int q = 0; q < N; ++q) send_n[q] = send_b[q] / 4 / static_cast<int64_t>(rec);
  comm.all_to_allv(send_n.data(), eight, recv_n.data(), eight);
  int64_t total = 0;
  for (int q = 0; q < N; ++q) {
    recv_b[q] = recv_n[q] * static_cast<int64_t>(rec) * 4;
    total += recv_n[q];
  }
  std::vector<float> recv(static_cast<size_t>(total) * rec);
  comm.all_to_allv(send.data(), send_b, recv.data(), recv_b);
  // The received records come in rank order; a stable sort by row keeps that
  // order among a row's contributions, which are summed in it (deterministic,
  // and the order of the replicated path's sum).
  std::vector<std::pair<int32_t, int64_t>> at(static_cast<size_t>(total));
  for (int64_t k = 0; k < total; ++k) {
    int32_t r;
    std::memcpy(&r, &recv[static_cast<size_t>(k) * rec], 4);
    TOWERREC_CHECK(r >= 0 && r < spec_.n_entities && r % N == shard_rank_,
                   name_ + " tower: a gradient row this rank does not own");
    at[static_cast<size_t>(k)] = {r, k};
  }
  std::stable_sort(at.begin(), at.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  std::vector<int32_t> rows;
  std::vector<float> g;
  for (size_t k = 0; k < at.size(); ++k) {
    const float* src = recv.data() + static_cast<size_t>(at[k].second) * rec + 1;
    if (k == 0 || at[k].first != at[k - 1].first) {
      rows.push_back(at[k].first / N);
      g.insert(g.end(), src, src + dim);
    } else {
      float* dst = g.data() + g.size() - static_cast<size_t>(dim);
      for (int c = 0; c < dim; ++c) dst[c] += src[c];
    }
  }
  union_n_ = static_cast<int64_t>(rows.size());
  pending_rows_ = union_n_ > 0;
  if (!pending_rows_) return;
  union_idx_.ensure(be, union_n_);
  union_grad_.ensure(be, union_n_ * dim);
  be->to_device(union_idx_.data(), rows.data(), rows.size() * sizeof(int32_t));
  be->to_device(union_grad_.data(), g.data(), g.size() * sizeof(float));
  use_union_ = true;
}

std::vector<float> Tower::full_host(const DeviceArray<float>& local) const {
  const int dim = model_->cfg_.id_dim;
  const int N = shard_ranks_;
  const int64_t n = spec_.n_entities;
  std::vector<float> mine(static_cast<size_t>(local.size()));
  if (!mine.empty()) model_->be_->to_host(mine.data(), local.data(), local.bytes());
  if (N == 1) return mine;
  ++model_->table_gathers_;
  // In blocks of local rows, so that one all_gatherv stays well within the
  // communicator's int byte counts (about 256 MiB gathered per block).
  const int64_t block = std::max<int64_t>(1, (int64_t{256} << 20) / (int64_t{N} * dim * 4));
  const int64_t most = rows_of_rank(n, 0, N);  // rank 0 owns the most rows
  std::vector<float> full(static_cast<size_t>(n) * dim), parts;
  std::vector<int64_t> counts(static_cast<size_t>(N));
  for (int64_t b0 = 0; b0 < most; b0 += block) {
    int64_t total = 0;
    for (int q = 0; q < N; ++q) {
      counts[q] = std::clamp<int64_t>(rows_of_rank(n, q, N) - b0, 0, block) * dim * 4;
      total += counts[q] / 4;
    }
    parts.resize(static_cast<size_t>(total));
    const int64_t mine_rows = counts[shard_rank_] / 4 / dim;
    model_->shard_comm_->all_gatherv(mine.data() + (mine_rows ? b0 * dim : 0), counts, parts.data());
    int64_t at = 0;
    for (int q = 0; q < N; ++q) {
      const int64_t rows = counts[q] / 4 / dim;
      for (int64_t l = 0; l < rows; ++l)
        std::copy_n(parts.data() + (at + l) * dim, dim, full.data() + ((b0 + l) * N + q) * dim);
      at += rows;
    }
  }
  return full;
}

void Tower::gather_full() {
  const int dim = model_->cfg_.id_dim;
  if (dim == 0 || shard_ranks_ == 1) return;
  const std::vector<float> full = full_host(id_table_);
  full_table_.reset(model_->be_, static_cast<int64_t>(full.size()));
  model_->be_->to_device(full_table_.data(), full.data(), full.size() * sizeof(float));
  full_valid_ = true;
}

void Tower::load_rows(DeviceArray<float>& dst, const std::vector<float>& full) {
  const int dim = model_->cfg_.id_dim;
  std::vector<float> mine(static_cast<size_t>(local_rows_) * dim);
  for (int64_t l = 0; l < local_rows_; ++l)
    std::copy_n(full.data() + (l * shard_ranks_ + shard_rank_) * dim, dim, mine.data() + l * dim);
  if (!mine.empty()) model_->be_->to_device(dst.data(), mine.data(), mine.size() * sizeof(float));
}

// ---------------------------------------------------------------------------
// TwoTowerModel

int64_t TwoTowerModel::memory_needed(const TowerConfig& cfg, const TowerInputSpec& us,
                                     const TowerInputSpec& is, TableShard shard) {
  int64_t floats = 0;
  for (const TowerInputSpec* s : {&us, &is}) {
    int64_t in = cfg.id_dim + s->dense_dim;
    for (int32_t v : s->cat_vocab) {
      floats += 4 * static_cast<int64_t>(v) * cfg.cat_dim;  // table, grad, Adam m and v
      in += cfg.cat_dim;
    }
    std::vector<int> widths = cfg.hidden;
    widths.push_back(cfg.out_dim);
    for (int w : widths) {
      floats += 4 * (in * w + w);
      in = w;
    }
    if (s->history_vocab > 0 && !cfg.history_shared)  // an own history table, its gradient and Adam moments
      floats += 4 * static_cast<int64_t>(s->history_vocab) * cfg.history_dim;
    if (s->history_vocab > 0 && cfg.history_weighted) floats += 4 * static_cast<int64_t>(s->history_vocab);
    // ID table, Adam m and v (of the shard's rows)
    floats += 3 * rows_of_rank(s->n_entities, shard.rank, std::max(shard.ranks, 1)) * cfg.id_dim;
    floats += static_cast<int64_t>(s->n_entities) * s->dense_dim;    // dense features
  }
  return floats * static_cast<int64_t>(sizeof(float));
}

TwoTowerModel::TwoTowerModel(Backend& be, const TowerConfig& cfg, const TowerInputSpec& user_spec,
                             const TowerInputSpec& item_spec, uint64_t seed, TableShard shard)
    : be_(&be), cfg_(cfg), seed_(seed) {
  // Fail before allocating anything when the model cannot fit.
  const int64_t available = be.memory_available();
  const int64_t needed = memory_needed(cfg, user_spec, item_spec, shard);
  if (available >= 0 && needed > available)
    throw Error("the model needs " + std::to_string(needed) + " bytes (" +
                std::to_string(needed >> 20) + " MiB) of memory for parameters, optimizer state "
                "and features, but " + be.describe() + " has " + std::to_string(available) +
                " bytes (" + std::to_string(available >> 20) + " MiB) available");
  TOWERREC_CHECK(cfg.id_dim >= 0 && cfg.cat_dim > 0, "bad embedding widths");
  TOWERREC_CHECK(cfg.dropout >= 0.0f && cfg.dropout < 1.0f, "dropout must be in [0, 1)");
  int64_t cursor = 0;
  user_ = std::make_unique<Tower>(*this, "user", user_spec, cursor, shard);
  item_arena_begin_ = cursor;
  item_ = std::make_unique<Tower>(*this, "item", item_spec, cursor, shard);
  TOWERREC_CHECK(!user_->hist_shared_ || user_spec.history_vocab == item_spec.n_entities,
                 "a history shared with the item tower's ID table must range over its items (" +
                     std::to_string(user_spec.history_vocab) + " != " + std::to_string(item_spec.n_entities) + ")");
  TOWERREC_CHECK(item_spec.history_vocab == 0, "only the user tower pools a history");
  params_.reset(be_, cursor);
  grads_.reset(be_, cursor);
  m_.reset(be_, cursor);
  v_.reset(be_, cursor);
  std::vector<float> host(static_cast<size_t>(cursor), 0.0f);
  user_->init_params(seed, host);
  item_->init_params(seed, host);
  be_->to_device(params_.data(), host.data(), host.size() * sizeof(float));
  be_->fill(m_.data(), cursor, 0.0f);
  be_->fill(v_.data(), cursor, 0.0f);
  be_->fill(grads_.data(), cursor, 0.0f);
}

TwoTowerModel::~TwoTowerModel() = default;

void TwoTowerModel::set_features(const EntityFeatures& users, const EntityFeatures& items) {
  user_->upload_features(users);
  item_->upload_features(items);
}

void TwoTowerModel::set_history(const std::vector<int64_t>& offsets,
                                const std::vector<int32_t>& items) {
  Tower& t = *user_;
  if (!t.has_hist_) return;
  TOWERREC_CHECK(static_cast<int64_t>(offsets.size()) == t.spec_.n_entities + 1,
                 "history offsets size mismatch");
  std::vector<int32_t> o, v;
  cap_history(offsets, items, cfg_.history, seed_, o, v);
  for (int32_t i : v)
    TOWERREC_CHECK(i >= 0 && i < t.spec_.history_vocab, "history item out of range");
  t.hist_offsets_.reset(be_, static_cast<int64_t>(o.size()));
  be_->to_device(t.hist_offsets_.data(), o.data(), o.size() * sizeof(int32_t));
  t.hist_values_.reset(be_, static_cast<int64_t>(std::max<size_t>(v.size(), 1)));
  if (!v.empty()) be_->to_device(t.hist_values_.data(), v.data(), v.size() * sizeof(int32_t));
}

void cap_history(const std::vector<int64_t>& offsets, const std::vector<int32_t>& items, int cap,
                 uint64_t seed, std::vector<int32_t>& out_offsets, std::vector<int32_t>& out_items) {
  TOWERREC_CHECK(cap > 0 && !offsets.empty(), "cap_history: bad arguments");
  const size_t n = offsets.size() - 1;
  out_offsets.assign(n + 1, 0);
  out_items.clear();
  std::vector<int32_t> pick;
  for (size_t u = 0; u < n; ++u) {
    const int64_t b = offsets[u], e = offsets[u + 1];
    if (e - b <= cap) {
      out_items.insert(out_items.end(), items.begin() + b, items.begin() + e);
    } else {
      // A partial Fisher-Yates shuffle keyed by the user: the same subset every
      // time the model is embedded.
      pick.assign(items.begin() + b, items.begin() + e);
      for (int j = 0; j < cap; ++j) {
        const uint64_t c = (static_cast<uint64_t>(u) << 24) + static_cast<uint64_t>(j);
        const auto r = static_cast<size_t>(j) + static_cast<size_t>(rng::below(
                           seed, rng::kHistory, c, static_cast<uint64_t>(pick.size() - j)));
        std::swap(pick[j], pick[r]);
      }
      std::sort(pick.begin(), pick.begin() + cap);  // pooling order fixed: deterministic sums
      out_items.insert(out_items.end(), pick.begin(), pick.begin() + cap);
    }
    TOWERREC_CHECK(out_items.size() < (size_t{1} << 31), "histories too long for int32 offsets");
    out_offsets[u + 1] = static_cast<int32_t>(out_items.size());
  }
}

void TwoTowerModel::zero_grad() { be_->fill(grads_.data(), grads_.size(), 0.0f); }

void TwoTowerModel::reduce_gradients(Communicator& control, Communicator* data) {
  if (control.size() <= 1) return;
  merge_history_rows();
  if (bucket_floats_ <= 0) {
    reduce_backend_floats(*be_, grads_.data(), grads_.size(), control, data);
  } else {
    if (started_.empty()) start_reduce_range(item_arena_begin_, grads_.size() - item_arena_begin_, control, data);
    start_reduce_range(0, item_arena_begin_, control, data);
    finish_started_reduces();
  }
  if (shard_comm_) {
    TOWERREC_CHECK(&control == shard_comm_ || control.size() == shard_comm_->size(),
                   "reduce_gradients: not the communicator the tables are sharded over");
    user_->push_rows(*shard_comm_);
    item_->push_rows(*shard_comm_);
    return;
  }
  user_->reduce_rows(control, data);
  item_->reduce_rows(control, data);
}

void TwoTowerModel::start_reduce_item_gradients(Communicator& control, Communicator* data) {
  if (control.size() <= 1 || bucket_floats_ <= 0) return;
  TOWERREC_CHECK(started_.empty(), "start_reduce_item_gradients: the last step's reduction is unfinished");
  start_reduce_range(item_arena_begin_, grads_.size() - item_arena_begin_, control, data);
}

// Starts the sums of grads_[first, first + n) in buckets, over `data` when it
// takes the backend's memory, else over `control` (device memory staged
// through a host copy), as reduce_backend_floats chooses.
void TwoTowerModel::start_reduce_range(int64_t first, int64_t n, Communicator& control, Communicator* data) {
  StartedReduce r;
  r.first = first;
  r.n = n;
  const bool device_mem = be_->kind() != DeviceKind::kCPU;
  float* buf = grads_.data() + first;
  if (data && (data->memory() == CommMemory::kDevice) == device_mem) {
    be_->synchronize();  // the communicator runs on its own stream
    r.comm = data;
  } else {
    TOWERREC_CHECK(device_mem || control.memory() == CommMemory::kHost,
                   "the CPU backend needs a host-memory communicator");
    r.comm = &control;
    if (device_mem) {
      r.host.resize(static_cast<size_t>(n));
      if (n > 0) be_->to_host(r.host.data(), buf, r.host.size() * sizeof(float));
      buf = r.host.data();
    }
  }
  for (int64_t at = 0; at < n; at += bucket_floats_)
    r.handles.push_back(r.comm->start_all_reduce_sum(buf + at, std::min(bucket_floats_, n - at)));
  started_.push_back(std::move(r));
}

void TwoTowerModel::finish_started_reduces() {
  // On a throw the sums are abandoned with the run (the communicator's error ends it).
  std::vector<StartedReduce> started = std::move(started_);
  started_.clear();
  for (StartedReduce& r : started) {
    for (int64_t h : r.handles) r.comm->wait_all_reduce(h);
    if (!r.host.empty()) be_->to_device(grads_.data() + r.first, r.host.data(), r.host.size() * sizeof(float));
  }
}

void TwoTowerModel::shard_tables(Communicator& comm) {
  if (comm.size() <= 1) return;
  TOWERREC_CHECK(comm.memory() == CommMemory::kHost,
                 "row-sharded tables exchange rows over a host-memory communicator");
  TOWERREC_CHECK(!shard_comm_, "the tables are sharded already");
  TOWERREC_CHECK(!user_->hist_shared_, "a history shared with the item tower's ID table needs the whole "
                                       "table on every rank: the tables cannot be row-sharded");
  user_->shard(comm.rank(), comm.size());
  item_->shard(comm.rank(), comm.size());
  shard_comm_ = &comm;
}

void TwoTowerModel::fetch_rows(const int32_t* users, int64_t nu, const int32_t* items, int64_t ni) {
  if (!shard_comm_) return;
  user_->fetch(*shard_comm_, users, nu);
  item_->fetch(*shard_comm_, items, ni);
}

void TwoTowerModel::gather_tables() {
  if (!shard_comm_) return;
  user_->gather_full();
  item_->gather_full();
}

void TwoTowerModel::merge_history_rows() {
  Tower& u = *user_;
  Tower& it = *item_;
  if (!u.hist_pending_) return;
  u.hist_pending_ = false;
  TOWERREC_CHECK(it.pending_rows_ && !it.use_union_ && it.last_n_ > 0,
                 "shared history: the item tower's backward must come before the step");
  const int dim = cfg_.id_dim;
  const int64_t ni = it.last_n_, nu = u.last_n_;
  const int32_t n_items = it.spec_.n_entities;
  // Host copies of the item rows and of the bags the user tower read.
  std::vector<int32_t> items(static_cast<size_t>(ni)), rows(static_cast<size_t>(nu));
  be_->to_host(items.data(), it.last_idx_, items.size() * sizeof(int32_t));
  be_->to_host(rows.data(), u.last_hist_.rows, rows.size() * sizeof(int32_t));
  int32_t top = 0;
  for (int32_t r : rows) {
    TOWERREC_CHECK(r >= 0, "shared history: negative bag row");
    top = std::max(top, r);
  }
  std::vector<int32_t> offs(static_cast<size_t>(top) + 2);
  be_->to_host(offs.data(), u.last_hist_.offsets, offs.size() * sizeof(int32_t));
  TOWERREC_CHECK(offs.back() >= 0, "shared history: bad bag offsets");
  std::vector<int32_t> vals(static_cast<size_t>(offs.back()));
  if (!vals.empty()) be_->to_host(vals.data(), u.last_hist_.values, vals.size() * sizeof(int32_t));
  // The union: the item rows in their order, then each bag item not among
  // them in order of first use; each item row's and each bag entry's place.
  std::vector<int32_t>& at = it.merge_at_;
  if (at.size() != static_cast<size_t>(n_items)) at.assign(static_cast<size_t>(n_items), -1);
  std::vector<int32_t> uni;
  uni.reserve(static_cast<size_t>(ni) + vals.size());
  auto place = [&](int32_t v) {
    TOWERREC_CHECK(v >= 0 && v < n_items, "shared history: item index out of range");
    if (at[static_cast<size_t>(v)] < 0) {
      at[static_cast<size_t>(v)] = static_cast<int32_t>(uni.size());
      uni.push_back(v);
    }
    return at[static_cast<size_t>(v)];
  };
  // merge_ints_: [identity offsets 0..ni | identity rows 0..ni-1 | item places | bag-entry places]
  const size_t n_ints = 3 * static_cast<size_t>(ni) + 1 + std::max<size_t>(vals.size(), 1);
  std::vector<int32_t> ints(n_ints, 0);
  for (int64_t j = 0; j <= ni; ++j) ints[static_cast<size_t>(j)] = static_cast<int32_t>(j);
  for (int64_t j = 0; j < ni; ++j) ints[static_cast<size_t>(ni + 1 + j)] = static_cast<int32_t>(j);
  int32_t* item_at = ints.data() + 2 * ni + 1;
  int32_t* entry_at = ints.data() + 3 * ni + 1;
  for (int64_t j = 0; j < ni; ++j) item_at[j] = place(items[static_cast<size_t>(j)]);
  for (int32_t r : rows) {
    TOWERREC_CHECK(offs[static_cast<size_t>(r)] <= offs[static_cast<size_t>(r) + 1], "shared history: bad bag offsets");
    for (int32_t e = offs[static_cast<size_t>(r)]; e < offs[static_cast<size_t>(r) + 1]; ++e)
      entry_at[e] = place(vals[static_cast<size_t>(e)]);
  }
  for (int32_t v : uni) at[static_cast<size_t>(v)] = -1;
  it.merge_ints_.ensure(be_, static_cast<int64_t>(n_ints));
  be_->to_device(it.merge_ints_.data(), ints.data(), ints.size() * sizeof(int32_t));
  const int32_t* d = it.merge_ints_.data();
  const auto n_uni = static_cast<int64_t>(uni.size());
  it.union_grad_.ensure(be_, n_uni * dim);
  be_->fill(it.union_grad_.data(), n_uni * dim, 0.0f);
  // Each item row as a bag of one, then the history bags: dL/d(row) sums both.
  be_->bag_backward(it.grad_act_[0].data(), it.in_dim_, 0, d, d + 2 * ni + 1, d + ni + 1, ni, dim,
                    it.union_grad_.data());
  const int hist_col = u.in_dim_ - u.hist_dim_;
  if (u.hist_w_off_ >= 0)
    be_->bag_weighted_backward(u.grad_act_[0].data(), u.act_[0].data(), u.in_dim_, hist_col,
                               it.id_table_.data(), params_.data() + u.hist_w_off_, u.last_hist_.offsets,
                               u.last_hist_.values, d + 3 * ni + 1, u.last_hist_.rows, nu, dim,
                               it.union_grad_.data(), nullptr);
  else
    be_->bag_backward(u.grad_act_[0].data(), u.in_dim_, hist_col, u.last_hist_.offsets, d + 3 * ni + 1,
                      u.last_hist_.rows, nu, dim, it.union_grad_.data());
  it.union_idx_.ensure(be_, n_uni);
  be_->to_device(it.union_idx_.data(), uni.data(), uni.size() * sizeof(int32_t));
  it.union_n_ = n_uni;
  it.use_union_ = true;
}

void Tower::pending_row_gradients(std::vector<int32_t>& rows, std::vector<float>& grad) {
  model_->merge_history_rows();
  rows.clear();
  grad.clear();
  const int dim = model_->cfg_.id_dim;
  if (!pending_rows_ || dim == 0) return;
  Backend* be = model_->be_;
  if (use_union_) {
    rows.resize(static_cast<size_t>(union_n_));
    grad.resize(static_cast<size_t>(union_n_) * dim);
    be->to_host(rows.data(), union_idx_.data(), rows.size() * sizeof(int32_t));
    be->to_host(grad.data(), union_grad_.data(), grad.size() * sizeof(float));
    return;
  }
  std::vector<int32_t> idx(static_cast<size_t>(last_n_));
  std::vector<float> dx(static_cast<size_t>(last_n_) * static_cast<size_t>(in_dim_));
  be->to_host(idx.data(), last_idx_, idx.size() * sizeof(int32_t));
  be->to_host(dx.data(), grad_act_[0].data(), dx.size() * sizeof(float));
  for (size_t j = 0; j < idx.size(); ++j) {
    const auto it = std::find(rows.begin(), rows.end(), idx[j]);
    size_t k = static_cast<size_t>(it - rows.begin());
    if (it == rows.end()) {
      rows.push_back(idx[j]);
      grad.resize(grad.size() + static_cast<size_t>(dim), 0.0f);
    }
    for (int c = 0; c < dim; ++c) grad[k * dim + c] += dx[j * static_cast<size_t>(in_dim_) + c];
  }
}

void TwoTowerModel::step(const OptimizerConfig& opt) {
  ++steps_;
  merge_history_rows();
  if (opt.kind == OptimizerKind::kSgd) {
    be_->sgd(params_.data(), grads_.data(), params_.size(), opt.lr, opt.weight_decay);
  } else {
    AdamParams p{opt.lr, opt.beta1, opt.beta2, opt.eps, opt.weight_decay, steps_};
    be_->adam(params_.data(), grads_.data(), m_.data(), v_.data(), params_.size(), p);
  }
  user_->sparse_step(opt, steps_);
  item_->sparse_step(opt, steps_);
}

void TwoTowerModel::set_cold(const std::vector<char>& users, const std::vector<char>& items) {
  TOWERREC_CHECK(users.empty() || static_cast<int64_t>(users.size()) == user_->spec_.n_entities,
                 "cold-user mask size mismatch");
  TOWERREC_CHECK(items.empty() || static_cast<int64_t>(items.size()) == item_->spec_.n_entities,
                 "cold-item mask size mismatch");
  user_->cold_ = users;
  item_->cold_ = items;
}

namespace {
// Entities [first, first + n) of the tower into out's rows 0 .. n.
void embed_all(Backend& be, Tower& t, int out_dim, DeviceArray<float>& out, int64_t chunk,
               const std::vector<char>& cold, int64_t first, int64_t n) {
  out.ensure(&be, n * out_dim);
  if (n == 0) return;
  chunk = std::max<int64_t>(1, std::min(chunk, n));
  std::vector<int32_t> idx(static_cast<size_t>(chunk));
  DeviceArray<int32_t> didx(&be, chunk);
  for (int64_t s = 0; s < n; s += chunk) {
    const int64_t m = std::min(chunk, n - s);
    for (int64_t j = 0; j < m; ++j) idx[j] = static_cast<int32_t>(first + s + j);
    be.to_device(didx.data(), idx.data(), static_cast<size_t>(m) * sizeof(int32_t));
    const float* y = t.forward(didx.data(), m);
    be.copy(out.data() + s * out_dim, y, static_cast<size_t>(m * out_dim) * sizeof(float));
  }
  // Cold entities again through the unknown-ID bucket, rows copied into place.
  std::vector<int32_t> cold_ids;
  const int64_t cold_end = std::min<int64_t>(first + n, static_cast<int64_t>(cold.size()));
  for (int64_t e = first; e < cold_end; ++e)
    if (cold[e]) cold_ids.push_back(static_cast<int32_t>(e));
  for (size_t s = 0; s < cold_ids.size(); s += static_cast<size_t>(chunk)) {
    const int64_t m = std::min<int64_t>(chunk, static_cast<int64_t>(cold_ids.size() - s));
    be.to_device(didx.data(), cold_ids.data() + s, static_cast<size_t>(m) * sizeof(int32_t));
    const float* y = t.forward(didx.data(), m, /*zero_id=*/true);
    for (int64_t r = 0; r < m; ++r)
      be.copy(out.data() + (static_cast<int64_t>(cold_ids[s + r]) - first) * out_dim, y + r * out_dim,
              static_cast<size_t>(out_dim) * sizeof(float));
  }
  be.synchronize();
}
}  // namespace

void TwoTowerModel::embed_all_users(DeviceArray<float>& out, int64_t chunk) {
  const bool was = training_;
  training_ = false;
  embed_all(*be_, *user_, cfg_.out_dim, out, chunk, user_->cold_, 0, user_->spec_.n_entities);
  training_ = was;
}
void TwoTowerModel::embed_all_items(DeviceArray<float>& out, int64_t chunk) {
  const bool was = training_;
  training_ = false;
  embed_all(*be_, *item_, cfg_.out_dim, out, chunk, item_->cold_, 0, item_->spec_.n_entities);
  training_ = was;
}
void TwoTowerModel::embed_items(int32_t first, int32_t count, DeviceArray<float>& out, int64_t chunk) {
  TOWERREC_CHECK(first >= 0 && count >= 0 && static_cast<int64_t>(first) + count <= item_->spec_.n_entities,
                 "embed_items: item range out of bounds");
  const bool was = training_;
  training_ = false;
  embed_all(*be_, *item_, cfg_.out_dim, out, chunk, item_->cold_, first, count);
  training_ = was;
}

std::string TwoTowerModel::history_input_problem() const {
  const TowerInputSpec& s = user_->spec_;
  if (cfg_.history <= 0 || !user_->has_hist_)
    return "the model has no history input (trained with history 0)";
  if (s.dense_dim > 0 || !s.cat_vocab.empty())
    return "the model's user tower also reads user features, which a history alone does not give";
  return "";
}

void TwoTowerModel::embed_histories(const std::vector<int64_t>& offsets, const std::vector<int32_t>& items,
                                    DeviceArray<float>& out, int64_t chunk) {
  const std::string problem = history_input_problem();
  if (!problem.empty()) throw Error(problem);
  TOWERREC_CHECK(!offsets.empty() && offsets.front() == 0 &&
                     offsets.back() == static_cast<int64_t>(items.size()),
                 "embed_histories: offsets do not describe the items");
  const int64_t rows = static_cast<int64_t>(offsets.size()) - 1;
  const int32_t vocab = user_->spec_.history_vocab;
  const int d = cfg_.out_dim;
  out.reset(be_, rows * d);
  if (rows == 0) return;
  chunk = std::max<int64_t>(1, std::min(chunk, rows));
  struct Inference {  // dropout off, restored on every way out
    bool& flag;
    bool was;
    ~Inference() { flag = was; }
  } inference{training_, training_};
  training_ = false;
  std::vector<int32_t> row_idx, one_off, one_bag, chunk_off, chunk_bag, distinct;
  for (int64_t s = 0; s < rows; s += chunk) {
    const int64_t m = std::min(chunk, rows - s);
    chunk_off.assign(1, 0);
    chunk_bag.clear();
    row_idx.resize(static_cast<size_t>(m));
    for (int64_t r = 0; r < m; ++r) {
      const int64_t b = offsets[s + r], e = offsets[s + r + 1];
      if (e <= b) throw Error("history " + std::to_string(s + r) + " is empty");
      distinct.assign(items.begin() + b, items.begin() + e);
      for (int32_t i : distinct)
        if (i < 0 || i >= vocab)
          throw Error("history item index " + std::to_string(i) + " out of range [0, " + std::to_string(vocab) + ")");
      std::sort(distinct.begin(), distinct.end());
      distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
      // Keyed as user 0: the subset of a long history is the one a lone user gets.
      cap_history({0, static_cast<int64_t>(distinct.size())}, distinct, cfg_.history, seed_, one_off, one_bag);
      chunk_bag.insert(chunk_bag.end(), one_bag.begin(), one_bag.end());
      TOWERREC_CHECK(chunk_bag.size() < (size_t{1} << 31), "histories too long for int32 offsets");
      chunk_off.push_back(static_cast<int32_t>(chunk_bag.size()));
      row_idx[static_cast<size_t>(r)] = static_cast<int32_t>(r);
    }
    DeviceArray<int32_t> d_off(be_, m + 1), d_val(be_, static_cast<int64_t>(chunk_bag.size())), d_row(be_, m);
    be_->to_device(d_off.data(), chunk_off.data(), chunk_off.size() * sizeof(int32_t));
    be_->to_device(d_val.data(), chunk_bag.data(), chunk_bag.size() * sizeof(int32_t));
    be_->to_device(d_row.data(), row_idx.data(), row_idx.size() * sizeof(int32_t));
    const HistoryBags bags{d_off.data(), d_val.data(), d_row.data()};
    // The row indices stand in for entity indices too: the tower reads no
    // features and, with the unknown-ID bucket, no ID row.
    const float* y = user_->forward(d_row.data(), m, /*zero_id=*/true, &bags);
    be_->copy(out.data() + s * d, y, static_cast<size_t>(m * d) * sizeof(float));
    be_->synchronize();  // the chunk's index arrays go at the end of this scope
  }
}

namespace {
std::vector<float> fetch(Backend& be, const DeviceArray<float>& a) {
  std::vector<float> v(static_cast<size_t>(a.size()));
  if (!v.empty()) be.to_host(v.data(), a.data(), a.bytes());
  return v;
}
}  // namespace

TwoTowerModel::State TwoTowerModel::save_state() const {
  TOWERREC_CHECK(shard_comm_ || (user_->shard_ranks_ == 1 && item_->shard_ranks_ == 1),
                 "a model built with a table shard needs shard_tables() before its state is saved");
  State s;
  s.steps = steps_;
  auto add = [&](const std::string& name, const DeviceArray<float>& a) {
    s.names.push_back(name);
    s.tensors.push_back(fetch(*be_, a));
  };
  add("arena.params", params_);
  add("arena.adam_m", m_);
  add("arena.adam_v", v_);
  // Rows mode: this rank's rows only (local order).
  if (shard_comm_) s.rows = {user_->shard_rank_, user_->shard_ranks_};
  for (const Tower* t : {user_.get(), item_.get()}) {
    if (cfg_.id_dim == 0) continue;
    add(t->name_ + ".id", t->id_table_);
    add(t->name_ + ".id_adam_m", t->id_m_);
    add(t->name_ + ".id_adam_v", t->id_v_);
  }
  return s;
}

void TwoTowerModel::load_state(const State& s) {
  TOWERREC_CHECK(s.names.size() == s.tensors.size(), "corrupt model state");
  TOWERREC_CHECK(shard_comm_ || (user_->shard_ranks_ == 1 && item_->shard_ranks_ == 1),
                 "a model built with a table shard needs shard_tables() before a state is loaded");
  auto put = [&](const std::string& name, DeviceArray<float>& a) {
    for (size_t j = 0; j < s.names.size(); ++j) {
      if (s.names[j] != name) continue;
      if (static_cast<int64_t>(s.tensors[j].size()) != a.size())
        throw Error("parameter '" + name + "' has " + std::to_string(s.tensors[j].size()) +
                    " values, the model expects " + std::to_string(a.size()));
      if (a.size()) be_->to_device(a.data(), s.tensors[j].data(), a.bytes());
      return;
    }
    throw Error("parameter '" + name + "' missing from the saved state");
  };
  const TableShard mine = shard_comm_ ? TableShard{user_->shard_rank_, user_->shard_ranks_} : TableShard{};
  if (s.rows.ranks > 1 && (s.rows.rank != mine.rank || s.rows.ranks != mine.ranks))
    throw Error("the saved state holds the ID rows of table shard " + std::to_string(s.rows.rank) + " of " +
                std::to_string(s.rows.ranks) + ", the model " +
                (mine.ranks > 1 ? "is shard " + std::to_string(mine.rank) + " of " + std::to_string(mine.ranks)
                                : std::string("holds the whole tables")));
  put("arena.params", params_);
  put("arena.adam_m", m_);
  put("arena.adam_v", v_);
  for (Tower* t : {user_.get(), item_.get()}) {
    if (cfg_.id_dim == 0) continue;
    if (shard_comm_) {
      t->full_valid_ = false;
      t->full_table_.release();
    }
    if (shard_comm_ && s.rows.ranks == 1) {  // this rank's rows of the whole tables
      const int64_t want = static_cast<int64_t>(t->spec_.n_entities) * cfg_.id_dim;
      for (const auto& [suffix, a] : {std::pair<const char*, DeviceArray<float>*>{".id", &t->id_table_},
                                      {".id_adam_m", &t->id_m_}, {".id_adam_v", &t->id_v_}}) {
        const std::string name = t->name_ + suffix;
        const auto it = std::find(s.names.begin(), s.names.end(), name);
        if (it == s.names.end()) throw Error("parameter '" + name + "' missing from the saved state");
        const auto& full = s.tensors[static_cast<size_t>(it - s.names.begin())];
        if (static_cast<int64_t>(full.size()) != want)
          throw Error("parameter '" + name + "' has " + std::to_string(full.size()) +
                      " values, the model expects " + std::to_string(want));
        t->load_rows(*a, full);
      }
      continue;
    }
    put(t->name_ + ".id", t->id_table_);
    put(t->name_ + ".id_adam_m", t->id_m_);
    put(t->name_ + ".id_adam_v", t->id_v_);
  }
  steps_ = s.steps;
}

int64_t TwoTowerModel::parameter_count() const {
  return params_.size() +
         static_cast<int64_t>(cfg_.id_dim) * (user_->spec_.n_entities + item_->spec_.n_entities);
}

}  // namespace towerrec
