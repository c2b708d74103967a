#include "towerrec/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>

#include "towerrec/error.h"
#include "towerrec/rng.h"

namespace towerrec {

Trainer::Trainer(TwoTowerModel& model, const Interactions& train, const TrainConfig& cfg)
    : model_(model), be_(model.backend()), train_(train), cfg_(cfg) {
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
  if (cfg.sampler == "popularity") {
    // Vose's alias method over count^alpha (+1 so unseen items keep a chance).
    std::vector<double> w(static_cast<size_t>(n_items_), 1.0);
    for (int32_t i : train.item) w[i] += 1.0;
    double total = 0;
    for (auto& x : w) total += (x = std::pow(x, static_cast<double>(cfg.pop_alpha)));
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
  } else if (cfg.sampler != "uniform") {
    throw Error("unknown sampler '" + cfg.sampler + "': expected uniform or popularity");
  }
  user_stamp_.assign(static_cast<size_t>(n_users_), -1);
  item_stamp_.assign(static_cast<size_t>(n_items_), -1);
  user_local_.assign(static_cast<size_t>(n_users_), 0);
  item_local_.assign(static_cast<size_t>(n_items_), 0);
}

Trainer::~Trainer() = default;

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

int32_t Trainer::sample_negative(uint64_t counter) const {
  if (alias_prob_.empty())
    return static_cast<int32_t>(rng::below(cfg_.seed, rng::kNegatives, counter, static_cast<uint64_t>(n_items_)));
  const auto i = static_cast<int32_t>(
      rng::below(cfg_.seed, rng::kNegatives, 2 * counter, static_cast<uint64_t>(n_items_)));
  const float u = rng::uniform(cfg_.seed, rng::kNegatives, 2 * counter + 1);
  return u < alias_prob_[i] ? i : alias_idx_[i];
}

void Trainer::plan_batch(int epoch, int64_t b, Batch& out) {
  shuffle(epoch);
  const int64_t n = train_.size();
  const int64_t lo = b * cfg_.batch_size;
  const int64_t hi = std::min(n, lo + cfg_.batch_size);
  TOWERREC_CHECK(lo < hi, "batch index out of range");
  const int k = cfg_.negatives;
  const int64_t n_pairs = (hi - lo) * (1 + k);
  out.users.clear();
  out.items.clear();
  out.pair_user.resize(static_cast<size_t>(n_pairs));
  out.pair_item.resize(static_cast<size_t>(n_pairs));
  out.label.resize(static_cast<size_t>(n_pairs));
  ++stamp_;
  auto local_user = [&](int32_t u) {
    if (user_stamp_[u] != stamp_) {
      user_stamp_[u] = stamp_;
      user_local_[u] = static_cast<int32_t>(out.users.size());
      out.users.push_back(u);
    }
    return user_local_[u];
  };
  auto local_item = [&](int32_t i) {
    if (item_stamp_[i] != stamp_) {
      item_stamp_[i] = stamp_;
      item_local_[i] = static_cast<int32_t>(out.items.size());
      out.items.push_back(i);
    }
    return item_local_[i];
  };
  int64_t p = 0;
  for (int64_t t = lo; t < hi; ++t) {
    const int64_t row = perm_[t];
    const int32_t lu = local_user(train_.user[row]);
    out.pair_user[p] = lu;
    out.pair_item[p] = local_item(train_.item[row]);
    out.label[p] = 1.0f;
    ++p;
    const uint64_t c0 = (static_cast<uint64_t>(epoch) * static_cast<uint64_t>(n) + static_cast<uint64_t>(t)) *
                        static_cast<uint64_t>(k);
    for (int j = 0; j < k; ++j) {
      out.pair_user[p] = lu;
      out.pair_item[p] = local_item(sample_negative(c0 + static_cast<uint64_t>(j)));
      out.label[p] = -1.0f;
      ++p;
    }
  }
  // CSR of pairs per local row (counting sort keeps pair order within a row).
  auto csr = [&](const std::vector<int32_t>& key, size_t rows, std::vector<int32_t>& offsets,
                 std::vector<int32_t>& pairs) {
    offsets.assign(rows + 1, 0);
    for (int32_t r : key) ++offsets[static_cast<size_t>(r) + 1];
    for (size_t r = 0; r < rows; ++r) offsets[r + 1] += offsets[r];
    pairs.resize(key.size());
    std::vector<int32_t> fill(offsets.begin(), offsets.end() - 1);
    for (size_t q = 0; q < key.size(); ++q) pairs[static_cast<size_t>(fill[key[q]]++)] = static_cast<int32_t>(q);
  };
  csr(out.pair_user, out.users.size(), out.user_offsets, out.user_pairs);
  csr(out.pair_item, out.items.size(), out.item_offsets, out.item_pairs);
}

void Trainer::forward_backward(const Batch& b, float* loss_slot) {
  // One upload of every index array of the batch.
  const size_t nu = b.users.size(), ni = b.items.size(), np = b.pair_user.size();
  const size_t total = nu + ni + 4 * np + (nu + 1) + (ni + 1);
  packed_.resize(total);
  size_t off = 0;
  auto put = [&](const std::vector<int32_t>& v) {
    const size_t at = off;
    std::copy(v.begin(), v.end(), packed_.begin() + static_cast<std::ptrdiff_t>(off));
    off += v.size();
    return at;
  };
  const size_t o_users = put(b.users), o_items = put(b.items), o_pu = put(b.pair_user),
               o_pi = put(b.pair_item), o_uo = put(b.user_offsets), o_up = put(b.user_pairs),
               o_io = put(b.item_offsets), o_ip = put(b.item_pairs);
  d_ints_.ensure(&be_, static_cast<int64_t>(total));
  be_.to_device(d_ints_.data(), packed_.data(), total * sizeof(int32_t));
  d_labels_.ensure(&be_, static_cast<int64_t>(np));
  be_.to_device(d_labels_.data(), b.label.data(), np * sizeof(float));
  d_pair_grad_.ensure(&be_, static_cast<int64_t>(np));
  const int32_t* base = d_ints_.data();

  Tower& ut = model_.user_tower();
  Tower& it = model_.item_tower();
  const float* U = ut.forward(base + o_users, static_cast<int64_t>(nu));
  const float* V = it.forward(base + o_items, static_cast<int64_t>(ni));
  model_.zero_grad();
  PairBatch pb;
  pb.n_pairs = static_cast<int64_t>(np);
  pb.user = base + o_pu;
  pb.item = base + o_pi;
  pb.label = d_labels_.data();
  pb.n_users = static_cast<int32_t>(nu);
  pb.user_offsets = base + o_uo;
  pb.user_pairs = base + o_up;
  pb.n_items = static_cast<int32_t>(ni);
  pb.item_offsets = base + o_io;
  pb.item_pairs = base + o_ip;
  be_.logistic_loss(U, V, model_.out_dim(), pb, 1.0f / static_cast<float>(np), ut.output_grad(),
                    it.output_grad(), d_pair_grad_.data(), loss_slot);
  ut.backward();
  it.backward();
}

float Trainer::loss_and_gradients(const Batch& b) {
  d_losses_.ensure(&be_, 1);
  forward_backward(b, d_losses_.data());
  float loss = 0;
  be_.to_host(&loss, d_losses_.data(), sizeof(float));
  return loss;
}

EpochStats Trainer::train_epoch(const std::function<void(const TrainProgress&)>& progress,
                                int64_t report_every) {
  const int epoch = epoch_;
  const int64_t steps = steps_per_epoch();
  d_losses_.ensure(&be_, steps);
  std::vector<float> losses(static_cast<size_t>(steps));
  const auto t0 = std::chrono::steady_clock::now();
  Batch batch;
  int64_t samples = 0;
  auto mean_loss = [&](int64_t upto) {
    be_.to_host(losses.data(), d_losses_.data(), static_cast<size_t>(upto) * sizeof(float));
    double sum = 0;
    for (int64_t s = 0; s < upto; ++s) sum += losses[s];
    return upto ? sum / static_cast<double>(upto) : 0.0;
  };
  for (int64_t s = 0; s < steps; ++s) {
    plan_batch(epoch, s, batch);
    forward_backward(batch, d_losses_.data() + s);
    model_.step(cfg_.optimizer);
    samples += static_cast<int64_t>(batch.pair_user.size()) / (1 + cfg_.negatives);
    if (progress && report_every > 0 && (s + 1) % report_every == 0 && s + 1 < steps) {
      TrainProgress pr{epoch + 1, cfg_.epochs, s + 1, steps, samples,
                       std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(),
                       mean_loss(s + 1)};
      progress(pr);
    }
  }
  EpochStats st;
  st.epoch = epoch + 1;
  st.steps = steps;
  st.samples = samples;
  st.loss = mean_loss(steps);
  if (!std::isfinite(st.loss))
    throw Error("training diverged: the loss is not finite in epoch " + std::to_string(epoch + 1) +
                " (lower the learning rate)");
  st.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  st.samples_per_s = st.seconds > 0 ? static_cast<double>(samples) / st.seconds : 0;
  if (progress) progress(TrainProgress{epoch + 1, cfg_.epochs, steps, steps, samples, st.seconds, st.loss});
  ++epoch_;
  return st;
}

}  // namespace towerrec
