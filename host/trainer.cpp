#include "towerrec/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <exception>
#include <limits>
#include <memory>
#include <mutex>
#include <numeric>
#include <thread>

#include "towerrec/error.h"
#include "towerrec/rng.h"

namespace towerrec {

Trainer::Trainer(TwoTowerModel& model, const Interactions& train, const TrainConfig& cfg)
    : model_(model),
      be_(model.backend()),
      train_(train),
      cfg_(cfg) {
  n_users_ = model.user_tower().spec().n_entities;
  n_items_ = model.item_tower().spec().n_entities;
  TOWERREC_CHECK(train.size() > 0, "no training interactions");
  TOWERREC_CHECK(cfg.batch_size > 0, "batch_size must be positive");
  TOWERREC_CHECK(cfg.negatives >= 0, "negatives must be >= 0");
  TOWERREC_CHECK(cfg.epochs >= 0, "epochs must be >= 0");
  for (int64_t j = 0; j < train.size(); ++j) {
    TOWERREC_CHECK(train.user[j] >= 0 && train.user[j] < n_users_ &&
                       train.item[j] >= 0 && train.item[j] < n_items_,
                   "interaction " + std::to_string(j) + " refers to an entity outside the model");
  }
  // An enum value cast from an integer (e.g. by a language binding) throws here.
  [[maybe_unused]] const char* const names[] = {to_string(cfg.loss), to_string(cfg.sampler),
                                                to_string(cfg.lr_schedule),
                                                to_string(cfg.matmul_precision),
                                                to_string(cfg.optimizer.kind)};
  TOWERREC_CHECK(cfg.loss != Loss::kBpr || cfg.negatives >= 1, "the bpr loss needs --negatives >= 1");
  TOWERREC_CHECK(cfg.temperature > 0.0f, "temperature must be positive");
  TOWERREC_CHECK(!model.config().normalize || in_batch_loss(cfg.loss),
                 "normalised embeddings (cosine scores in [-1, 1]) need the softmax loss, whose "
                 "temperature scales them, or the ccl loss, whose margin is a cosine");
  TOWERREC_CHECK(std::isfinite(cfg.margin) && std::isfinite(cfg.negative_weight) &&
                     cfg.negative_weight >= 0.0f,
                 "ccl margin must be finite and negative_weight finite and >= 0");
  TOWERREC_CHECK(cfg.warmup_epochs >= 0.0f && cfg.lr_step_epochs > 0 && cfg.lr_gamma > 0.0f,
                 "bad learning-rate schedule parameters");
  // Probability that one negative draw is item i.
  std::vector<double> neg_prob(static_cast<size_t>(n_items_), 1.0 / n_items_);
  if (cfg.sampler == Sampler::kPopularity) {
    // Vose's alias method over count^alpha (+1 so unseen items keep a chance).
    std::vector<double> w(static_cast<size_t>(n_items_), 1.0);
    for (int32_t i : train.item) w[i] += 1.0;
    double total = 0;
    for (auto& x : w) total += (x = std::pow(x, static_cast<double>(cfg.pop_alpha)));
    for (size_t i = 0; i < w.size(); ++i) neg_prob[i] = w[i] / total;
    alias_prob_.assign(w.size(), 0.0f);
    alias_idx_.assign(w.size(), 0);
    std::vector<double> p(w.size());
    std::vector<int32_t> small, large;
    for (size_t i = 0; i < w.size(); ++i) {
      p[i] = w[i] * static_cast<double>(w.size()) / total;
      (p[i] < 1.0 ? small : large).push_back(static_cast<int32_t>(i));
    }
    while (!small.empty() && !large.empty()) {
      const int32_t s = small.back(), l = large.back();
      small.pop_back();
      alias_prob_[s] = static_cast<float>(p[s]);
      alias_idx_[s] = l;
      p[l] = (p[l] + p[s]) - 1.0;
      if (p[l] < 1.0) {
        large.pop_back();
        small.push_back(l);
      }
    }
    for (int32_t i : large) alias_prob_[i] = 1.0f, alias_idx_[i] = i;
    for (int32_t i : small) alias_prob_[i] = 1.0f, alias_idx_[i] = i;
  }
  if (in_batch_loss(cfg.loss)) {
    // Expected appearances of item i in a batch of B positives with k negatives
    // each: B * count_i / N + B * k * neg_prob_i (the constant B cancels).
    std::vector<double> count(static_cast<size_t>(n_items_), 0.0);
    for (int32_t i : train.item) count[i] += 1.0;
    log_q_.resize(static_cast<size_t>(n_items_));
    const double n = static_cast<double>(train.size());
    for (int32_t i = 0; i < n_items_; ++i)
      log_q_[i] = static_cast<float>(std::log(count[i] / n + cfg.negatives * neg_prob[i] + 1e-12));
  }
  if (model.user_tower().spec().history_vocab > 0) history_cap_ = model.config().history;
  if (cfg.reject_hits || history_cap_ > 0) {
    seen_offsets_.assign(static_cast<size_t>(n_users_) + 1, 0);
    for (int32_t u : train.user) ++seen_offsets_[static_cast<size_t>(u) + 1];
    for (int32_t u = 0; u < n_users_; ++u) seen_offsets_[u + 1] += seen_offsets_[u];
    seen_items_.resize(train.item.size());
    std::vector<int64_t> fill(seen_offsets_.begin(), seen_offsets_.end() - 1);
    for (int64_t j = 0; j < train.size(); ++j) seen_items_[fill[train.user[j]]++] = train.item[j];
    for (int32_t u = 0; u < n_users_; ++u)
      std::sort(seen_items_.begin() + seen_offsets_[u], seen_items_.begin() + seen_offsets_[u + 1]);
  }
}

void Trainer::PlanScratch::size(int32_t n_users, int32_t n_items) {
  if (user_stamp.size() == static_cast<size_t>(n_users) &&
      item_stamp.size() == static_cast<size_t>(n_items))
    return;
  user_stamp.assign(static_cast<size_t>(n_users), -1);
  item_stamp.assign(static_cast<size_t>(n_items), -1);
  user_local.assign(static_cast<size_t>(n_users), 0);
  item_local.assign(static_cast<size_t>(n_items), 0);
  target_stamp.assign(static_cast<size_t>(n_items), -1);
  stamp = 0;
  target_mark = 0;
}

// Plans the steps [first, end) of one epoch ahead of the consumer on `threads`
// worker threads, each with its own dedup scratch, into a ring of slots. Plans
// depend only on (seed, epoch, step), so the thread count never changes them.
class Trainer::Lookahead {
 public:
  Lookahead(const Trainer& tr, int epoch, int64_t first, int64_t end, int threads)
      : tr_(tr), epoch_(epoch), next_(first), end_(end), consumed_(first),
        ring_(static_cast<size_t>(2 * threads)) {
    for (auto& r : ring_) r.step = -1;
    for (int t = 0; t < threads; ++t) workers_.emplace_back([this] { work(); });
  }
  ~Lookahead() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      quit_ = true;
    }
    cv_.notify_all();
    for (auto& w : workers_) w.join();
  }
  // Blocks until step s is planned; the batch stays valid until release(s).
  const Batch& get(int64_t s) {
    Entry& e = ring_[static_cast<size_t>(s) % ring_.size()];
    std::unique_lock<std::mutex> lk(mu_);
    cv_.wait(lk, [&] { return (e.step == s && e.ready) || error_; });
    if (error_) std::rethrow_exception(error_);
    return e.batch;
  }
  void release(int64_t s) {
    {
      std::lock_guard<std::mutex> lk(mu_);
      Entry& e = ring_[static_cast<size_t>(s) % ring_.size()];
      e.ready = false;
      e.step = -1;
      consumed_ = s + 1;
    }
    cv_.notify_all();
  }

 private:
  struct Entry {
    Batch batch;
    int64_t step = -1;
    bool ready = false;
  };
  void work() {
    PlanScratch scratch;
    for (;;) {
      int64_t s;
      Entry* e;
      {
        std::unique_lock<std::mutex> lk(mu_);
        // The next unplanned step, once its slot is free (the consumer has
        // released the step ring_.size() before it).
        cv_.wait(lk, [&] {
          return quit_ || error_ || next_ >= end_ ||
                 (next_ < consumed_ + static_cast<int64_t>(ring_.size()) &&
                  ring_[static_cast<size_t>(next_) % ring_.size()].step == -1);
        });
        if (quit_ || error_ || next_ >= end_) return;
        s = next_++;
        e = &ring_[static_cast<size_t>(s) % ring_.size()];
        e->step = s;
        e->ready = false;
      }
      try {
        tr_.plan_into(epoch_, s, e->batch, scratch);
      } catch (...) {
        std::lock_guard<std::mutex> lk(mu_);
        error_ = std::current_exception();
      }
      {
        std::lock_guard<std::mutex> lk(mu_);
        e->ready = true;
      }
      cv_.notify_all();
    }
  }

  const Trainer& tr_;
  const int epoch_;
  int64_t next_;
  const int64_t end_;
  int64_t consumed_;
  std::vector<Entry> ring_;
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool quit_ = false;
  std::exception_ptr error_;
};

int Trainer::planner_threads() const {
  if (cfg_.planner_threads >= 0) return cfg_.planner_threads;
  // On the CPU the compute uses every core; on a device backend the host is
  // free while steps run, and planning in parallel keeps up with large batches.
  if (be_.kind() == DeviceKind::kCPU) return 0;
  const int hw = static_cast<int>(std::thread::hardware_concurrency());
  return std::clamp(hw - 1, 1, 4);
}

Trainer::~Trainer() {
  // Queued uploads may still read the staging buffers.
  try {
    for (auto& st : slots_) be_.wait_fence(st.fence);
  } catch (...) {
    // A failed device cannot be waited on; freeing the buffers is all that is left.
  }
}

int64_t Trainer::steps_per_epoch() const {
  return (train_.size() + cfg_.batch_size - 1) / cfg_.batch_size;
}

void Trainer::shuffle(int epoch) {
  if (shuffled_epoch_ == epoch) return;
  const int64_t n = train_.size();
  perm_.resize(static_cast<size_t>(n));
  std::iota(perm_.begin(), perm_.end(), 0);
  const uint64_t base = static_cast<uint64_t>(epoch) * static_cast<uint64_t>(n);
  for (int64_t j = n - 1; j > 0; --j) {
    const auto r = static_cast<int64_t>(
        rng::below(cfg_.seed, rng::kShuffle, base + static_cast<uint64_t>(j), static_cast<uint64_t>(j + 1)));
    std::swap(perm_[j], perm_[r]);
  }
  shuffled_epoch_ = epoch;
}

bool Trainer::is_seen(int32_t user, int32_t item) const {
  return std::binary_search(seen_items_.begin() + seen_offsets_[user],
                            seen_items_.begin() + seen_offsets_[user + 1], item);
}

float Trainer::learning_rate(int64_t global_step) const {
  const double base = cfg_.optimizer.lr;
  const double spe = static_cast<double>(steps_per_epoch());
  const double warm = cfg_.warmup_epochs * spe;
  const double t = static_cast<double>(global_step);
  double lr = base;
  if (cfg_.lr_schedule == LrSchedule::kCosine) {
    const double total = std::max(1.0, spe * cfg_.epochs - warm);
    const double x = std::clamp((t - warm) / total, 0.0, 1.0);
    lr = base * 0.5 * (1.0 + std::cos(3.141592653589793 * x));
  } else if (cfg_.lr_schedule == LrSchedule::kStep) {
    lr = base * std::pow(static_cast<double>(cfg_.lr_gamma),
                         std::floor(t / spe / cfg_.lr_step_epochs));
  }
  if (warm > 0 && t < warm) lr *= (t + 1.0) / warm;
  return static_cast<float>(lr);
}

int32_t Trainer::sample_negative(uint64_t counter) const {
  if (alias_prob_.empty())
    return static_cast<int32_t>(rng::below(cfg_.seed, rng::kNegatives, counter, static_cast<uint64_t>(n_items_)));
  const auto i = static_cast<int32_t>(
      rng::below(cfg_.seed, rng::kNegatives, 2 * counter, static_cast<uint64_t>(n_items_)));
  const float u = rng::uniform(cfg_.seed, rng::kNegatives, 2 * counter + 1);
  return u < alias_prob_[i] ? i : alias_idx_[i];
}

void Trainer::set_communicator(Communicator* control, Communicator* gradients) {
  comm_ = control && control->size() > 1 ? control : nullptr;
  grad_comm_ = comm_ ? gradients : nullptr;
  rank_ = comm_ ? comm_->rank() : 0;
  ranks_ = comm_ ? comm_->size() : 1;
  if (!comm_) return;
  TOWERREC_CHECK(!grad_comm_ || grad_comm_->size() == ranks_,
                 "the gradient communicator's ranks differ from the control communicator's");
}

void Trainer::plan_batch(int epoch, int64_t b, Batch& out) {
  shuffle(epoch);
  plan_into(epoch, b, out, scratch_);
}

void Trainer::plan_into(int epoch, int64_t b, Batch& out, PlanScratch& sc) const {
  sc.size(n_users_, n_items_);
  const int64_t n = train_.size();
  const int64_t glo = b * cfg_.batch_size;
  const int64_t ghi = std::min(n, glo + cfg_.batch_size);
  TOWERREC_CHECK(glo < ghi, "batch index out of range");
  // This rank's shard [lo, hi) of the global batch's positives (all of them on
  // one rank); a shard may be empty when the batch has fewer positives than ranks.
  const int64_t lo = glo + (ghi - glo) * rank_ / ranks_;
  const int64_t hi = glo + (ghi - glo) * (rank_ + 1) / ranks_;
  const int k = cfg_.negatives;
  // The softmax and ccl losses score each positive against every item of the
  // batch, so their negatives join the batch's items but not its pairs.
  const bool negatives_are_pairs = !in_batch_loss(cfg_.loss);
  const int64_t n_pairs = (hi - lo) * (negatives_are_pairs ? 1 + k : 1);
  out.global_pairs = (ghi - glo) * (negatives_are_pairs ? 1 + k : 1);
  // In-batch losses need every item of the global batch, in the order one rank
  // meets them: the positions outside the shard add their items, no pairs.
  const int64_t t_begin = negatives_are_pairs ? lo : glo;
  const int64_t t_end = negatives_are_pairs ? hi : ghi;
  out.users.clear();
  out.items.clear();
  out.pair_user.resize(static_cast<size_t>(n_pairs));
  out.pair_item.resize(static_cast<size_t>(n_pairs));
  out.label.resize(static_cast<size_t>(n_pairs));
  const int64_t stamp = ++sc.stamp;
  auto local_user = [&](int32_t u) {
    if (sc.user_stamp[u] != stamp) {
      sc.user_stamp[u] = stamp;
      sc.user_local[u] = static_cast<int32_t>(out.users.size());
      out.users.push_back(u);
    }
    return sc.user_local[u];
  };
  auto local_item = [&](int32_t i) {
    if (sc.item_stamp[i] != stamp) {
      sc.item_stamp[i] = stamp;
      sc.item_local[i] = static_cast<int32_t>(out.items.size());
      out.items.push_back(i);
    }
    return sc.item_local[i];
  };
  int64_t p = 0;
  for (int64_t t = t_begin; t < t_end; ++t) {
    // The shuffled rows are scattered over the interaction arrays: fetch a few
    // iterations ahead so their cache misses overlap.
    if (t + 16 < t_end) {
      __builtin_prefetch(&train_.user[perm_[t + 16]]);
      __builtin_prefetch(&train_.item[perm_[t + 16]]);
    }
    if (cfg_.reject_hits) {  // and the user's seen list, in two stages
      if (t + 8 < t_end) __builtin_prefetch(&seen_offsets_[train_.user[perm_[t + 8]]]);
      if (t + 4 < t_end) __builtin_prefetch(&seen_items_[seen_offsets_[train_.user[perm_[t + 4]]]]);
    }
    const int64_t row = perm_[t];
    const bool mine = t >= lo && t < hi;
    int32_t lu = 0;
    if (mine) {
      lu = local_user(train_.user[row]);
      out.pair_user[p] = lu;
      out.pair_item[p] = local_item(train_.item[row]);
      out.label[p] = 1.0f;
      ++p;
    } else {
      local_item(train_.item[row]);
    }
    const uint64_t c0 = (static_cast<uint64_t>(epoch) * static_cast<uint64_t>(n) + static_cast<uint64_t>(t)) *
                        static_cast<uint64_t>(k);
    const int32_t user = train_.user[row];
    for (int j = 0; j < k; ++j) {
      int32_t neg = sample_negative(c0 + static_cast<uint64_t>(j));
      for (uint64_t attempt = 1; cfg_.reject_hits && attempt < 8 && is_seen(user, neg); ++attempt)
        neg = sample_negative(c0 + static_cast<uint64_t>(j) + (attempt << 56));
      const int32_t li = local_item(neg);
      if (!negatives_are_pairs || !mine) continue;
      out.pair_user[p] = lu;
      out.pair_item[p] = li;
      out.label[p] = -1.0f;
      ++p;
    }
  }
  // CSR of pairs per local row (counting sort keeps pair order within a row).
  build_pair_csr(out.pair_user, static_cast<int32_t>(out.users.size()), out.user_offsets,
                 out.user_pairs);
  build_pair_csr(out.pair_item, static_cast<int32_t>(out.items.size()), out.item_offsets,
                 out.item_pairs);
  if (history_cap_ > 0) {
    // A user's history leaves out its positives of the whole global batch, so
    // collect those of the other ranks' shards for this shard's users.
    out.other_target_offsets.assign(out.users.size() + 1, 0);
    out.other_targets.clear();
    if (ranks_ > 1) {
      std::vector<std::pair<int32_t, int32_t>> other;  // (local user, item)
      for (int64_t t = glo; t < ghi; ++t) {
        if (t >= lo && t < hi) continue;
        const int32_t u = train_.user[perm_[t]];
        if (sc.user_stamp[u] == stamp) other.emplace_back(sc.user_local[u], train_.item[perm_[t]]);
      }
      for (const auto& [lu, item] : other) ++out.other_target_offsets[static_cast<size_t>(lu) + 1];
      for (size_t j = 0; j < out.users.size(); ++j) out.other_target_offsets[j + 1] += out.other_target_offsets[j];
      out.other_targets.resize(other.size());
      std::vector<int32_t> fill(out.other_target_offsets.begin(), out.other_target_offsets.end() - 1);
      for (const auto& [lu, item] : other) out.other_targets[static_cast<size_t>(fill[lu]++)] = item;
    }
    plan_history(epoch, b, out, sc);
  }
}

void Trainer::plan_history(int epoch, int64_t b, Batch& out, PlanScratch& sc) const {
  // A user's targets in this batch stay out of its own history, or the model
  // could find the answer in its input. Longer histories keep a random subset
  // of history_cap_ items, drawn per (seed, epoch, step, user).
  const size_t nu = out.users.size();
  out.hist_offsets.assign(nu + 1, 0);
  out.hist_items.clear();
  out.hist_rows.resize(nu);
  const uint64_t step_seed =
      rng::mix64(cfg_.seed ^ rng::mix64((static_cast<uint64_t>(epoch) << 40) + static_cast<uint64_t>(b)));
  for (size_t lu = 0; lu < nu; ++lu) {
    out.hist_rows[lu] = static_cast<int32_t>(lu);
    const int64_t mark = ++sc.target_mark;
    for (int32_t q = out.user_offsets[lu]; q < out.user_offsets[lu + 1]; ++q) {
      const int32_t p = out.user_pairs[static_cast<size_t>(q)];
      if (out.label[static_cast<size_t>(p)] > 0.0f)
        sc.target_stamp[static_cast<size_t>(out.items[static_cast<size_t>(out.pair_item[p])])] = mark;
    }
    for (int32_t q = out.other_target_offsets[lu]; q < out.other_target_offsets[lu + 1]; ++q)
      sc.target_stamp[static_cast<size_t>(out.other_targets[static_cast<size_t>(q)])] = mark;
    const int32_t u = out.users[lu];
    sc.pick.clear();
    // Each distinct item once (the list is sorted), as in the model's own histories.
    for (int64_t j = seen_offsets_[u]; j < seen_offsets_[u + 1]; ++j)
      if (sc.target_stamp[static_cast<size_t>(seen_items_[j])] != mark &&
          (j == seen_offsets_[u] || seen_items_[j] != seen_items_[j - 1]))
        sc.pick.push_back(seen_items_[j]);
    size_t keep = sc.pick.size();
    if (keep > static_cast<size_t>(history_cap_)) {
      keep = static_cast<size_t>(history_cap_);
      for (size_t j = 0; j < keep; ++j) {
        const uint64_t c = (static_cast<uint64_t>(u) << 24) + j;
        const size_t r = j + static_cast<size_t>(rng::below(step_seed, rng::kHistory, c, sc.pick.size() - j));
        std::swap(sc.pick[j], sc.pick[r]);
      }
    }
    out.hist_items.insert(out.hist_items.end(), sc.pick.begin(), sc.pick.begin() + static_cast<int64_t>(keep));
    out.hist_offsets[lu + 1] = static_cast<int32_t>(out.hist_items.size());
  }
}

void Trainer::stage(const Batch& b, Staged& st) {
  // The slot's previous upload must have left the buffers before they change.
  be_.wait_fence(st.fence);
  st.fence = 0;
  st.nu = b.users.size();
  st.ni = b.items.size();
  st.np = b.pair_user.size();
  st.global_pairs = b.global_pairs ? b.global_pairs : static_cast<int64_t>(st.np);
  const size_t total = st.nu + st.ni + 4 * st.np + (st.nu + 1) + (st.ni + 1) +
                       b.hist_offsets.size() + b.hist_items.size() + b.hist_rows.size();
  st.ints.ensure(&be_, static_cast<int64_t>(total));
  size_t off = 0;
  auto put = [&](const std::vector<int32_t>& v) {
    const size_t at = off;
    std::copy(v.begin(), v.end(), st.ints.data() + off);
    off += v.size();
    return at;
  };
  st.o_users = put(b.users);
  st.o_items = put(b.items);
  st.o_pu = put(b.pair_user);
  st.o_pi = put(b.pair_item);
  st.o_uo = put(b.user_offsets);
  st.o_up = put(b.user_pairs);
  st.o_io = put(b.item_offsets);
  st.o_ip = put(b.item_pairs);
  st.o_ho = put(b.hist_offsets);
  st.o_hv = put(b.hist_items);
  st.o_hr = put(b.hist_rows);
  st.n_ints = off;
  // Floats: the labels, then (softmax with logQ) each batch item's log rate.
  const bool with_log_q = in_batch_loss(cfg_.loss) && cfg_.logq;
  st.n_floats = st.np + (with_log_q ? st.ni : 0);
  st.floats.ensure(&be_, static_cast<int64_t>(std::max<size_t>(st.n_floats, 1)));
  std::copy(b.label.begin(), b.label.end(), st.floats.data());
  if (with_log_q)
    for (size_t j = 0; j < st.ni; ++j) st.floats.data()[st.np + j] = log_q_[b.items[j]];
}

void Trainer::forward_backward(Staged& st, float* loss_slot, bool start_reduce) {
  // One queued upload of every index array and one of the floats; the fence
  // tells stage() when the staging buffers may be refilled.
  const size_t nu = st.nu, ni = st.ni, np = st.np;
  d_ints_.ensure(&be_, static_cast<int64_t>(st.n_ints));
  be_.to_device_async(d_ints_.data(), st.ints.data(), st.n_ints * sizeof(int32_t));
  d_floats_.ensure(&be_, static_cast<int64_t>(std::max<size_t>(st.n_floats, 1)));
  be_.to_device_async(d_floats_.data(), st.floats.data(), st.n_floats * sizeof(float));
  st.fence = be_.fence();
  d_pair_grad_.ensure(&be_, static_cast<int64_t>(np));
  const int32_t* base = d_ints_.data();
  // Row-sharded ID tables: every rank fetches the rows its forwards read from
  // their owners (a collective, so an empty shard joins with no rows).
  if (model_.sharded()) {
    const int32_t* host = st.ints.data();
    model_.fetch_rows(host + st.o_users, np ? static_cast<int64_t>(nu) : 0, host + st.o_items,
                      np ? static_cast<int64_t>(ni) : 0);
  }
  if (np == 0) {  // an empty shard: no gradient, no loss (the ranks' sums still run)
    model_.zero_grad();
    be_.fill(loss_slot, 1, 0.0f);
    return;
  }
  // The mean is over the global batch's pairs: the ranks' gradients and losses sum to it.
  const auto gp = static_cast<float>(st.global_pairs);

  Tower& ut = model_.user_tower();
  Tower& it = model_.item_tower();
  const HistoryBags hist{base + st.o_ho, base + st.o_hv, base + st.o_hr};
  // The tower products in the training precision (evaluation and scoring
  // forwards run float32).
  const MatmulPrecision mp = cfg_.matmul_precision;
  const float* U = ut.forward(base + st.o_users, static_cast<int64_t>(nu), false,
                              history_cap_ > 0 ? &hist : nullptr, mp);
  const float* V = it.forward(base + st.o_items, static_cast<int64_t>(ni), false, nullptr, mp);
  model_.zero_grad();
  PairBatch pb;
  pb.n_pairs = static_cast<int64_t>(np);
  pb.user = base + st.o_pu;
  pb.item = base + st.o_pi;
  pb.label = d_floats_.data();
  pb.n_users = static_cast<int32_t>(nu);
  pb.user_offsets = base + st.o_uo;
  pb.user_pairs = base + st.o_up;
  pb.n_items = static_cast<int32_t>(ni);
  pb.item_offsets = base + st.o_io;
  pb.item_pairs = base + st.o_ip;
  const int d = model_.out_dim();
  if (cfg_.loss == Loss::kLogistic) {
    be_.logistic_loss(U, V, d, pb, 1.0f / gp, ut.output_grad(),
                      it.output_grad(), d_pair_grad_.data(), loss_slot);
  } else if (cfg_.loss == Loss::kBpr) {
    const int group = 1 + cfg_.negatives;
    const float scale = 1.0f / (gp / static_cast<float>(group) * static_cast<float>(cfg_.negatives));
    be_.bpr_loss(U, V, d, pb, group, scale, ut.output_grad(), it.output_grad(),
                 d_pair_grad_.data(), loss_slot);
  } else {
    const int64_t tile = softmax_item_tile(static_cast<int64_t>(np), static_cast<int64_t>(ni),
                                           cfg_.logits_scratch_mb);
    d_logits_.ensure(&be_, static_cast<int64_t>(np) * std::min<int64_t>(tile, ni));
    d_pair_rows_.ensure(&be_, static_cast<int64_t>(np) * d * (tile < static_cast<int64_t>(ni) ? 2 : 1));
    const float scale = 1.0f / gp;
    const float* log_q = cfg_.logq ? d_floats_.data() + np : nullptr;
    if (cfg_.loss == Loss::kCcl) {
      be_.ccl_loss(U, V, d, pb, log_q, cfg_.margin, cfg_.negative_weight, scale, ut.output_grad(),
                   it.output_grad(), d_logits_.data(), d_pair_rows_.data(), loss_slot, tile);
    } else {
      be_.softmax_loss(U, V, d, pb, log_q, cfg_.temperature, scale, ut.output_grad(),
                       it.output_grad(), d_logits_.data(), d_pair_rows_.data(), loss_slot, tile);
    }
  }
  if (start_reduce) {
    // The towers' backwards write disjoint parts of the arena: the item
    // tower's part is summed over the ranks while the user tower's runs.
    it.backward();
    model_.start_reduce_item_gradients(*comm_, grad_comm_);
    ut.backward();
  } else {
    ut.backward();
    it.backward();
  }
}

float Trainer::loss_and_gradients(const Batch& b) {
  d_losses_.ensure(&be_, 1);
  stage(b, slots_[0]);
  forward_backward(slots_[0], d_losses_.data());
  float loss = 0;
  be_.to_host(&loss, d_losses_.data(), sizeof(float));
  return loss;
}

void Trainer::set_position(const TrainPosition& p) {
  TOWERREC_CHECK(p.epoch >= 0 && p.step >= 0 && p.step < steps_per_epoch(),
                 "training position out of range: step " + std::to_string(p.step) + " of " +
                     std::to_string(steps_per_epoch()));
  epoch_ = p.epoch;
  start_step_ = p.step;
  start_loss_sum_ = p.loss_sum;
}

EpochStats Trainer::train_epoch(const std::function<void(const TrainProgress&)>& progress,
                                int64_t report_every) {
  const int epoch = epoch_;
  const int64_t steps = steps_per_epoch();
  // A resumed epoch starts at start_step_; the steps before it count with
  // their stored loss sum and samples.
  const int64_t first = start_step_;
  d_losses_.ensure(&be_, steps);
  std::vector<float> losses(static_cast<size_t>(steps));
  const auto t0 = std::chrono::steady_clock::now();
  Batch batch;
  int64_t samples = std::min(train_.size(), first * cfg_.batch_size);
  auto loss_sum = [&](int64_t upto) {
    be_.to_host(losses.data() + first, d_losses_.data() + first,
                static_cast<size_t>(upto - first) * sizeof(float));
    double sum = comm_ ? 0.0 : start_loss_sum_;
    for (int64_t s = first; s < upto; ++s) sum += losses[s];
    if (comm_) {  // each rank holds its shard's part of every step's loss
      comm_->all_reduce_sum_host(&sum, 1);
      sum += start_loss_sum_;
    }
    return sum;
  };
  auto mean_loss = [&](int64_t upto) { return upto ? loss_sum(upto) / static_cast<double>(upto) : 0.0; };
  model_.set_training(true);
  OptimizerConfig opt = cfg_.optimizer;
  int64_t end = steps;
  // Double-buffered staging: while the device runs step s (queued without
  // waiting), the host stages step s + 1 into the other slot. Batches are
  // planned inline, or ahead by planner threads.
  shuffle(epoch);
  std::unique_ptr<Lookahead> ahead;
  if (const int pt = planner_threads(); pt > 0 && steps - first > 1)
    ahead = std::make_unique<Lookahead>(*this, epoch, first, steps, pt);
  auto plan_and_stage = [&](int64_t s) {
    if (ahead) {
      stage(ahead->get(s), slots_[s & 1]);
      ahead->release(s);
    } else {
      plan_batch(epoch, s, batch);
      stage(batch, slots_[s & 1]);
    }
  };
  if (first < steps) plan_and_stage(first);
  // Bucketed gradient sums (cfg_.bucket_mb), started early when distributed.
  model_.set_reduce_bucket(comm_ && cfg_.bucket_mb > 0
                               ? std::max<int64_t>(1, static_cast<int64_t>(static_cast<double>(cfg_.bucket_mb) *
                                                                           (1 << 20) / sizeof(float)))
                               : 0);
  for (int64_t s = first; s < steps; ++s) {
    forward_backward(slots_[s & 1], d_losses_.data() + s, comm_ && model_.reduce_bucket() > 0);
    opt.lr = learning_rate(static_cast<int64_t>(epoch) * steps + s);
    if (comm_) model_.reduce_gradients(*comm_, grad_comm_);
    model_.step(opt);
    if (s + 1 < steps) plan_and_stage(s + 1);
    samples += std::min(cfg_.batch_size, train_.size() - s * cfg_.batch_size);
    if (progress && report_every > 0 && (s + 1) % report_every == 0 && s + 1 < steps) {
      TrainProgress pr{epoch + 1, cfg_.epochs, s + 1, steps, samples,
                       std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(),
                       mean_loss(s + 1)};
      progress(pr);
    }
    if (s + 1 < steps) {
      bool go = !(stop_ && stop_->load(std::memory_order_relaxed));
      if (comm_) go = !comm_->any(!go);  // a stop on any rank stops every rank at this step
      if (go && hook_)
        go = hook_(TrainPosition{epoch, s + 1, std::numeric_limits<double>::quiet_NaN()},
                   [&, upto = s + 1] { return loss_sum(upto); });
      if (!go) {
        end = s + 1;
        break;
      }
    }
  }
  model_.set_training(false);
  EpochStats st;
  st.epoch = epoch + 1;
  st.steps = end - first;
  st.samples = samples;
  const double sum = loss_sum(end);
  st.loss = end ? sum / static_cast<double>(end) : 0.0;
  if (!std::isfinite(st.loss))
    throw DivergedError("training diverged: the loss is not finite in epoch " + std::to_string(epoch + 1) +
                " (lower the learning rate)");
  st.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  st.samples_per_s = st.seconds > 0 ? static_cast<double>(samples - std::min(train_.size(), first * cfg_.batch_size)) / st.seconds : 0;
  if (end < steps) {
    st.complete = false;
    start_step_ = end;
    start_loss_sum_ = sum;
    return st;
  }
  if (progress) progress(TrainProgress{epoch + 1, cfg_.epochs, steps, steps, samples, st.seconds, st.loss});
  ++epoch_;
  start_step_ = 0;
  start_loss_sum_ = 0;
  return st;
}

}  // namespace towerrec
