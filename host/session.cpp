#include "towerrec/session.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iterator>
#include <random>

#include <nlohmann/json.hpp>

#include <sstream>

#include "towerrec/checkpoint.h"
#include "towerrec/error.h"
#include "towerrec/io.h"
#include "towerrec/split.h"

namespace towerrec {

namespace {

using json = nlohmann::json;

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string format(const char* fmt, auto... args) {
  std::string s(static_cast<size_t>(std::snprintf(nullptr, 0, fmt, args...)), '\0');
  std::snprintf(s.data(), s.size() + 1, fmt, args...);
  return s;
}

void emit(const std::function<void(const std::string&)>& f, const std::string& line) {
  if (f) f(line);
}

std::string describe(const TrainPosition& p) {
  return p.step ? "epoch " + std::to_string(p.epoch + 1) + " step " + std::to_string(p.step)
                : "epoch " + std::to_string(p.epoch);
}

// Keys that shape the model: a checkpoint can only be resumed with the same values.
const char* const kShapeKeys[] = {"id-dim", "hidden", "dim", "cat-dim", "features", "normalize",
                                  "history", "history-dim", "history-table", "history-pool"};
// Keys that do not change what an epoch computes.
const char* const kRunKeys[] = {"epochs", "out", "quiet", "log-every", "device", "data",
                                "user-features", "item-features", "checkpoint-every-steps",
                                "checkpoint-every-minutes", "planner-threads",
                                "table-sharding"};

bool listed(const std::string& name, const char* const* b, const char* const* e) {
  for (; b != e; ++b)
    if (name == *b) return true;
  return false;
}

// SIGINT / SIGTERM: the handler only sets the running session's flags
// (lock-free atomics are async-signal-safe); the trainer finishes its step and
// stops, and the session writes a checkpoint.
struct StopFlags {
  std::atomic<bool>* flag;
  std::atomic<int>* signal;
};
std::atomic<StopFlags*> g_active{nullptr};
static_assert(std::atomic<StopFlags*>::is_always_lock_free && std::atomic<bool>::is_always_lock_free &&
              std::atomic<int>::is_always_lock_free);

extern "C" void on_stop_signal(int sig) {
  if (StopFlags* s = g_active.load()) {
    s->signal->store(sig);
    s->flag->store(true);
  }
}

// Installs the handler for SIGINT and SIGTERM for its lifetime.
// SA_RESETHAND: a second signal ends the process at once.
class StopSignals {
 public:
  explicit StopSignals(StopFlags* flags) {
    g_active.store(flags);
    struct sigaction sa {};
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESETHAND;
    ::sigaction(SIGINT, &sa, &old_int_);
    ::sigaction(SIGTERM, &sa, &old_term_);
  }
  ~StopSignals() {
    ::sigaction(SIGINT, &old_int_, nullptr);
    ::sigaction(SIGTERM, &old_term_, nullptr);
    g_active.store(nullptr);
  }
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

 private:
  struct sigaction old_int_ {}, old_term_ {};
};

// Refuses, before any work, input paths that do not exist.
void check_inputs(const Config& cfg) {
  if (cfg.data.empty()) throw Error("no input: give --data (a MovieLens or synth directory, or a CSV)");
  const std::pair<const char*, const std::string*> paths[] = {
      {"data", &cfg.data}, {"user-features", &cfg.user_features}, {"item-features", &cfg.item_features},
      {"train-file", &cfg.train_file}, {"validation-file", &cfg.validation_file}};
  for (const auto& [key, p] : paths) {
    std::error_code ec;
    if (!p->empty() && !std::filesystem::exists(*p, ec))
      throw Error(std::string("--") + key + " " + *p + ": no such file or directory");
  }
}

// Refuses, before any work, an output training could not write: OUT not a
// directory (or not one that can be created) or not writable, OUT/model.ckpt
// not a file; and with --resume a checkpoint that cannot be read.
// FNV-1a over bytes, continued from h.
uint64_t hash_bytes(const void* data, size_t n, uint64_t h = 1469598103934665603ull) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}
template <typename T>
uint64_t hash_vector(const std::vector<T>& v, uint64_t h) {
  const uint64_t n = v.size();
  h = hash_bytes(&n, sizeof n, h);
  return hash_bytes(v.data(), v.size() * sizeof(T), h);
}
// A rows-mode state (each rank its own ID rows): the replicated tensors only.
uint64_t hash_state(const TwoTowerModel::State& st) {
  uint64_t h = hash_bytes(&st.steps, sizeof st.steps);
  for (size_t t = 0; t < st.tensors.size(); ++t) {
    if (st.rows.ranks > 1 && st.names[t].rfind("arena.", 0) != 0) continue;
    h = hash_bytes(st.names[t].data(), st.names[t].size(), h);
    h = hash_vector(st.tensors[t], h);
  }
  return h;
}

void check_outputs(const std::string& out, const std::string& ckpt, bool resume) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::path dir = fs::path(out.empty() ? "." : out);
  // The nearest existing directory: OUT itself, or the one make_directories starts in.
  while (!fs::exists(fs::status(dir, ec))) {
    const fs::path up = dir.has_parent_path() && dir.parent_path() != dir ? dir.parent_path() : fs::path(".");
    if (up == dir) break;
    dir = up;
  }
  if (!fs::is_directory(fs::status(dir, ec)))
    throw Error("--out " + out + ": " + dir.string() + " is not a directory");
  if (::access(dir.c_str(), W_OK | X_OK) != 0)
    throw Error("--out " + out + ": cannot write in " + dir.string() + " (" + std::strerror(errno) + ")");
  const auto st = fs::status(ckpt, ec);
  if (fs::exists(st) && !fs::is_regular_file(st))
    throw Error(ckpt + ": exists and is not a checkpoint file (a directory?); move it away" +
                std::string(resume ? " to start from scratch" : ""));
  if (resume && fs::exists(st)) {
    std::FILE* f = std::fopen(ckpt.c_str(), "rb");
    if (!f) throw Error(ckpt + ": cannot read the checkpoint to resume from (" + std::strerror(errno) + ")");
    std::fclose(f);
  }
}

}  // namespace

std::string format_seconds(double s) {
  char buf[64];
  if (s < 60) std::snprintf(buf, sizeof buf, "%.1fs", s);
  else if (s < 3600) std::snprintf(buf, sizeof buf, "%dm%02ds", int(s) / 60, int(s) % 60);
  else std::snprintf(buf, sizeof buf, "%dh%02dm", int(s) / 3600, (int(s) % 3600) / 60);
  return buf;
}

Dataset load_dataset(const Config& cfg) {
  if (cfg.data.empty()) throw Error("no input: give --data (a MovieLens or synth directory, or a CSV)");
  LoadOptions opt;
  opt.rating_threshold = cfg.rating_threshold;
  opt.features = cfg.features;
  opt.delimiter = cfg.delimiter;
  if (!cfg.user_features.empty() || !cfg.item_features.empty())
    return load_csv(cfg.data, cfg.user_features, cfg.item_features, opt);
  return load_auto(cfg.data, opt);
}

Interactions read_known_interactions(const std::string& path, const IdMap& users,
                                     const IdMap& items, float rating_threshold, char delimiter) {
  if (!file_exists(path)) throw Error(path + ": no such file");
  // With allow_new = false the maps are only searched, never changed.
  Interactions x = read_interactions_csv(path, const_cast<IdMap&>(users), const_cast<IdMap&>(items), false,
                                         delimiter);
  if (x.rating.empty() || std::isnan(rating_threshold)) return x;
  std::vector<int64_t> keep;
  for (int64_t r = 0; r < x.size(); ++r)
    if (x.rating[r] >= rating_threshold) keep.push_back(r);
  if (static_cast<int64_t>(keep.size()) == x.size()) return x;
  Interactions y;
  for (int64_t r : keep) {
    y.user.push_back(x.user[r]);
    y.item.push_back(x.item[r]);
    y.rating.push_back(x.rating[r]);
    if (!x.timestamp.empty()) y.timestamp.push_back(x.timestamp[r]);
  }
  return y;
}

std::string resolve_table_sharding(const std::string& configured, int ranks, int64_t id_table_bytes) {
  if (configured != "auto" && configured != "replicated" && configured != "rows")
    throw Error("--table-sharding: '" + configured + "' is not one of auto, replicated, rows");
  if (ranks <= 1) return "replicated";
  if (configured != "auto") return configured;
  return 3 * id_table_bytes > kAutoRowsShardingBytes ? "rows" : "replicated";
}

std::unique_ptr<TwoTowerModel> build_model(Backend& be, const Config& cfg,
                                           const EntityFeatures& user_features, int32_t n_users,
                                           const EntityFeatures& item_features, int32_t n_items,
                                           const UserItems* history, TableShard shard) {
  TowerInputSpec us = make_input_spec(user_features, n_users, cfg.features);
  const TowerInputSpec is = make_input_spec(item_features, n_items, cfg.features);
  if (cfg.tower.history > 0) {
    if (!history)
      throw Error("a model with a pooled history (history > 0) needs its users' training items");
    us.history_vocab = n_items;
  }
  auto model = std::make_unique<TwoTowerModel>(be, cfg.tower, us, is, cfg.train.seed, shard);
  if (cfg.features) model->set_features(user_features, item_features);
  if (cfg.tower.history > 0) model->set_history(history->offsets, history->items);
  return model;
}

TrainingSession::TrainingSession(Config cfg, SessionOptions options, SessionCallbacks callbacks)
    : cfg_(std::move(cfg)), options_(options), cb_(std::move(callbacks)) {
  if (cfg_.quiet) cb_.note = nullptr;
  if (!writer()) cb_ = SessionCallbacks{};  // rank 0 reports for all
  if (cfg_.early_stopping > 0 && cfg_.eval_every == 0) cfg_.eval_every = 1;
  if (cfg_.holdout > 0 && !cfg_.validation_file.empty())
    throw Error("give --validation F or --validation-file FILE, not both");
  if (cfg_.eval_every > 0 && cfg_.holdout <= 0 && cfg_.validation_file.empty())
    throw Error("--eval-every and --early-stopping need a validation split: give --validation F "
                "(or --holdout F), or --validation-file FILE");
  check_inputs(cfg_);
  check_outputs(cfg_.out, checkpoint_path(), options_.resume);
  load_data();
  const std::string chosen = resolve_data_defaults(
      cfg_, DataShape{ds_.users.size(), ds_.items.size(), train_.size()});
  if (!chosen.empty()) emit(cb_.note, chosen);
  config_text_ = to_json(cfg_);
  // A short summary; the whole configuration is OUT/config.json.
  std::string hidden;
  for (int w : cfg_.tower.hidden) hidden += (hidden.empty() ? "" : ",") + std::to_string(w);
  emit(cb_.note, format("training: %s loss, %s, lr %s, %d epochs of batch %lld; towers %s -> %d; "
                        "configuration in %s/config.json",
                        to_string(cfg_.train.loss), to_string(cfg_.train.optimizer.kind),
                        json::parse(config_text_)["lr"].dump().c_str(), cfg_.train.epochs,
                        static_cast<long long>(cfg_.train.batch_size),
                        hidden.empty() ? "linear" : hidden.c_str(), cfg_.tower.out_dim,
                        cfg_.out.c_str()));
  be_ = make_backend(cfg_.device, cfg_.threads);
  TableShard shard;
  if (distributed()) {
    // The table sharding first: the ranks' later collectives depend on it.
    const int64_t id_bytes = static_cast<int64_t>(cfg_.tower.id_dim) *
                             (int64_t{ds_.users.size()} + int64_t{ds_.items.size()}) *
                             static_cast<int64_t>(sizeof(float));
    // A history read from the item tower's ID rows needs the whole item table on each rank.
    const bool shared_history = cfg_.tower.history > 0 && cfg_.tower.history_shared;
    if (shared_history && cfg_.table_sharding == "rows")
      throw Error("--history-table items reads the whole item ID table on every rank: it cannot "
                  "train with --table-sharding rows (use replicated, or --history-table own)");
    sharding_ = resolve_table_sharding(shared_history ? "replicated" : cfg_.table_sharding,
                                       options_.comm->size(), id_bytes);
    const std::vector<uint64_t> all = options_.comm->all_gather_u64(sharding_ == "rows" ? 1 : 0);
    for (size_t r = 1; r < all.size(); ++r)
      if (all[r] != all[0])
        throw Error("rank " + std::to_string(r) + " shards the ID tables as '" +
                    (all[r] ? "rows" : "replicated") + "', rank 0 as '" + (all[0] ? "rows" : "replicated") +
                    "' (--table-sharding): every rank must use the same table sharding");
    if (sharding_ == "rows") shard = {options_.comm->rank(), options_.comm->size()};
  }
  // Row-sharded: each rank allocates and initialises only its rows.
  model_ = build_model(*be_, cfg_, ds_.user_features, ds_.users.size(), ds_.item_features,
                       ds_.items.size(), &seen_train_, shard);
  if (sharding_ == "rows") model_->shard_tables(*options_.comm);
  if (options_.resume) resume_from_checkpoint();
  if (distributed()) {
    // Every rank must train the same model on the same data from the same
    // state. These collectives also keep rank 0 from writing OUT/ before every
    // rank has read what it resumes from.
    json c = json::parse(config_text_);
    c.erase("device");
    c.erase("threads");
    c.erase("table-sharding");  // compared above as resolved
    check_ranks_agree(hash_bytes(c.dump().data(), c.dump().size()), "configuration");
    uint64_t h = hash_vector(train_.user, 1469598103934665603ull);
    h = hash_vector(train_.item, h);
    h = hash_vector(test_.user, h);
    h = hash_vector(test_.item, h);
    for (const auto& id : ds_.users.ids()) h = hash_bytes(id.data(), id.size() + 1, h);
    for (const auto& id : ds_.items.ids()) h = hash_bytes(id.data(), id.size() + 1, h);
    check_ranks_agree(h, "training data (interactions, IDs or split)");
    check_ranks_agree(hash_state(model_->save_state()), "initial parameters");
    emit(cb_.note, format("distributed: %d ranks over %s%s; global batch %lld, %lld positives per rank; "
                          "ID tables %s",
                          options_.comm->size(), options_.comm->name().c_str(),
                          options_.gradient_comm ? (", gradients over " + options_.gradient_comm->name()).c_str() : "",
                          static_cast<long long>(cfg_.train.batch_size),
                          static_cast<long long>(cfg_.train.batch_size / options_.comm->size()),
                          sharding_ == "rows" ? "row-sharded (row r on rank r mod N)" : "replicated"));
  }
  emit(cb_.note, "backend: " + be_->describe());
  emit(cb_.note, format("model: %lld parameters; user input %d, item input %d",
                        static_cast<long long>(model_->parameter_count()),
                        model_->user_tower().input_dim(), model_->item_tower().input_dim()));

  if (writer()) {
    make_directories(cfg_.out);
    // Temporary files of killed runs are never read; reclaim their space.
    remove_stale_temp_files(checkpoint_path());
    remove_stale_temp_files(cfg_.out + "/config.json");
    write_file_atomic(cfg_.out + "/config.json", config_text_);
  }
  trainer_ = std::make_unique<Trainer>(*model_, train_, cfg_.train);
  if (distributed()) trainer_->set_communicator(options_.comm, options_.gradient_comm);
  trainer_->set_epochs_done(start_pos_.epoch);
  if (start_pos_.step > 0) {
    if (start_pos_.step >= trainer_->steps_per_epoch())
      throw Error(checkpoint_path() + ": cannot resume: it stopped at step " +
                  std::to_string(start_pos_.step) + " of an epoch, which now has only " +
                  std::to_string(trainer_->steps_per_epoch()) + " steps (--batch-size changed?)");
    if (start_pos_.epoch < cfg_.train.epochs) trainer_->set_position(start_pos_);
  }
  if (resumed_) saved_at_ = describe(start_pos_);
  trainer_->set_step_hook([this](const TrainPosition& next, const std::function<double()>& loss_sum) {
    return step_hook(next, loss_sum);
  });
  trainer_->set_stop_flag(&stop_.flag);
}

TrainingSession::~TrainingSession() = default;

void TrainingSession::load_data() {
  const double t0 = now_seconds();
  ds_ = load_dataset(cfg_);
  if (!cfg_.train_file.empty()) {
    ds_.interactions = read_known_interactions(cfg_.train_file, ds_.users, ds_.items, cfg_.rating_threshold, cfg_.delimiter);
    if (ds_.interactions.size() == 0) throw InputError(cfg_.train_file, 0, "", "no training interactions");
  }
  const double load_s = now_seconds() - t0;
  const int32_t n_users = ds_.users.size();
  seen_all_ = group_by_user(ds_.interactions, n_users);
  train_ = ds_.interactions;
  if (cfg_.holdout > 0) {
    Split sp = split_per_user_ratio(ds_.interactions, n_users, cfg_.holdout, cfg_.split_seed);
    train_ = std::move(sp.train);
    test_ = std::move(sp.test);
  }
  if (!cfg_.validation_file.empty())
    test_ = read_known_interactions(cfg_.validation_file, ds_.users, ds_.items, cfg_.rating_threshold, cfg_.delimiter);
  seen_train_ = group_by_user(train_, n_users);
  held_ = group_by_user(test_, n_users);
  emit(cb_.note, format("data: %s%s%s: %d users, %d items, %lld interactions (%lld train, %lld held out), loaded in %s",
                        cfg_.data.c_str(), cfg_.train_file.empty() ? "" : ", training rows from ",
                        cfg_.train_file.c_str(), n_users, ds_.items.size(),
                        static_cast<long long>(ds_.interactions.size()),
                        static_cast<long long>(train_.size()), static_cast<long long>(test_.size()),
                        format_seconds(load_s).c_str()));
}

void TrainingSession::resume_from_checkpoint() {
  const std::string path = checkpoint_path();
  if (!file_exists(path)) {
    emit(cb_.note, "--resume: no " + path + " yet; starting from scratch");
    return;
  }
  // Rows mode: only this rank's rows, whatever rank count wrote the file.
  const Checkpoint ck = load_checkpoint(
      path, sharding_ == "rows" ? TableShard{options_.comm->rank(), options_.comm->size()} : TableShard{});
  check_resumable(ck);
  model_->load_state(ck.state);
  start_pos_ = {ck.epochs_done, ck.step, ck.epoch_loss_sum};
  resumed_ = true;
  if (ck.step > 0)
    emit(cb_.note, format("resuming from %s in epoch %d after step %lld", path.c_str(),
                          ck.epochs_done + 1, static_cast<long long>(ck.step)));
  else
    emit(cb_.note, format("resuming from %s after epoch %d", path.c_str(), ck.epochs_done));
}

// Refuses a checkpoint whose model shape differs from the configuration's;
// warns about other settings that make the continuation differ from an
// uninterrupted run.
void TrainingSession::check_resumable(const Checkpoint& ck) const {
  const std::string path = checkpoint_path();
  Config old;
  apply_json(old, ck.config_json, path + " (configuration section)");
  resolve_defaults(old);
  for (const auto& k : config_keys()) {
    const std::string was = k.get(old), now = k.get(cfg_);
    if (was == now) continue;
    // A learning-rate schedule spans all epochs: more epochs change its earlier steps.
    if (k.name == "epochs" && cfg_.train.lr_schedule != LrSchedule::kConstant) {
      emit(cb_.warn, "warning: --epochs was " + was + ", now " + now + ": the " +
                         to_string(cfg_.train.lr_schedule) +
                         " learning-rate schedule changes, so the resumed run will not match an "
                         "uninterrupted one of " + now + " epochs");
      continue;
    }
    if (listed(k.name, std::begin(kShapeKeys), std::end(kShapeKeys)))
      throw Error(path + ": cannot resume: --" + k.name + " is " + was + " in the checkpoint, " +
                  now + " now (the model shapes differ)");
    if (!listed(k.name, std::begin(kRunKeys), std::end(kRunKeys)))
      emit(cb_.warn, "warning: --" + k.name + " was " + was + ", now " + now +
                         ": the resumed run will not match an uninterrupted one");
  }
  if (ck.users.ids() != ds_.users.ids() || ck.items.ids() != ds_.items.ids())
    throw Error(path + ": cannot resume: the checkpoint's user and item IDs differ from " + cfg_.data);
  if (ck.has_seen() && (ck.seen.offsets != seen_all_.offsets || ck.seen.items != seen_all_.items))
    throw Error(path + ": cannot resume: the training interactions differ from the checkpoint's");
}

std::string TrainingSession::kept_note() const {
  return saved_at_.empty() ? std::string("; no checkpoint was written")
                           : "; " + checkpoint_path() + " keeps the last good state (" + saved_at_ + ")";
}

// Writes the model at `pos`; refuses a diverged state, so the last good
// checkpoint stays.
void TrainingSession::save_at(const TrainPosition& pos) {
  Checkpoint ck;
  ck.config_json = config_text_;
  ck.epochs_done = pos.epoch;
  ck.step = pos.step;
  ck.epoch_loss_sum = pos.loss_sum;
  ck.users = ds_.users;
  ck.items = ds_.items;
  if (cfg_.features) {
    ck.user_features = ds_.user_features;
    ck.item_features = ds_.item_features;
  }
  // Rows mode: the dense state and this rank's ID rows (no whole table).
  ck.state = model_->save_state();
  const bool rows = sharding_ == "rows";
  uint64_t bad = ck.state.tensors.size();  // the first tensor with a non-finite value
  for (size_t t = 0; t < ck.state.tensors.size() && bad == ck.state.tensors.size(); ++t)
    for (float x : ck.state.tensors[t])
      if (!std::isfinite(x)) {
        bad = t;
        break;
      }
  if (rows) {  // every rank's rows: all ranks stop alike
    for (uint64_t b : options_.comm->all_gather_u64(bad)) bad = std::min(bad, b);
  }
  if (bad < ck.state.tensors.size())
    throw DivergedError("training diverged: parameter tensor '" + ck.state.names[bad] +
                        "' holds a non-finite value at " + describe(pos) + " (lower the learning rate)");
  ck.seen = seen_all_;
  // The ranks' parameters must still be identical (the same summed gradients
  // and steps; rows mode: the replicated ones); rank 0 writes them.
  if (distributed()) check_ranks_agree(hash_state(ck.state), "parameters at " + describe(pos));
  if (rows) {
    save_sharded(ck);
  } else if (writer()) {
    save_checkpoint(checkpoint_path(), ck);
    remove_table_shards(checkpoint_path());  // of a row-sharded checkpoint it replaced
  }
  saved_at_ = describe(pos);
  steps_since_save_ = 0;
  last_save_ = now_seconds();
}

// Rows mode: every rank writes its shard file (its ID rows), and once all are
// durable rank 0 writes the main file naming them. A new save ID each time:
// the previous main file keeps its own shards until it is replaced.
void TrainingSession::save_sharded(const Checkpoint& ck) {
  Communicator& comm = *options_.comm;
  uint64_t id = 0;
  if (writer()) {
    std::random_device rd;
    id = hash_bytes(&ck.state.steps, sizeof ck.state.steps,
                    (uint64_t{rd()} << 32) ^ rd() ^
                        static_cast<uint64_t>(std::chrono::system_clock::now().time_since_epoch().count()));
    if (id == 0) id = 1;
  }
  comm.broadcast(&id, sizeof id, 0);
  TableShardFile mine;
  std::string failed;
  try {
    mine = save_table_shard(checkpoint_path(), id, ck.state, ck.users.size(), ck.items.size());
  } catch (const Error& e) {
    failed = e.what();
  }
  // A rank that could not write its shard stops every rank (with its reason
  // where it is that rank), before rank 0 would name the shard.
  const std::vector<uint64_t> ok = comm.all_gather_u64(failed.empty() ? 1 : 0);
  for (size_t q = 0; q < ok.size(); ++q)
    if (!ok[q])
      throw Error(!failed.empty() ? failed
                                  : "rank " + std::to_string(q) + " could not write its checkpoint shard; " +
                                        checkpoint_path() + " was not changed");
  const std::vector<uint64_t> sizes = comm.all_gather_u64(mine.size);
  const std::vector<uint64_t> crcs = comm.all_gather_u64(mine.crc);
  if (!writer()) return;
  std::vector<TableShardFile> shards(sizes.size());
  for (size_t q = 0; q < shards.size(); ++q) {
    shards[q].name = std::filesystem::path(table_shard_name(checkpoint_path(), id, static_cast<int>(q),
                                                            static_cast<int>(shards.size())))
                         .filename()
                         .string();
    shards[q].size = sizes[q];
    shards[q].crc = static_cast<uint32_t>(crcs[q]);
  }
  save_sharded_checkpoint(checkpoint_path(), ck, id, shards);
}

// Mid-epoch checkpoints: every N steps and/or M minutes since the last save.
bool TrainingSession::step_hook(const TrainPosition& next, const std::function<double()>& loss_sum) {
  ++steps_since_save_;
  const bool by_steps = cfg_.checkpoint_every_steps > 0 && steps_since_save_ >= cfg_.checkpoint_every_steps;
  bool by_time = cfg_.checkpoint_every_minutes > 0 &&
                 now_seconds() - last_save_ >= cfg_.checkpoint_every_minutes * 60.0;
  // Rank 0's clock decides for every rank (the checkpoint is a collective).
  if (distributed() && cfg_.checkpoint_every_minutes > 0) {
    char b = by_time ? 1 : 0;
    options_.comm->broadcast(&b, 1, 0);
    by_time = b != 0;
  }
  if (!by_steps && !by_time) return true;
  TrainPosition p = next;
  p.loss_sum = loss_sum();
  if (!std::isfinite(p.loss_sum))
    throw DivergedError("training diverged: the loss is not finite in epoch " + std::to_string(p.epoch + 1) +
                        " before step " + std::to_string(p.step + 1) + " (lower the learning rate)");
  save_at(p);
  return true;
}

void TrainingSession::request_stop(int signal) {
  stop_.signal.store(signal);
  stop_.flag.store(true);
}

SessionResult TrainingSession::stopped(bool mid_epoch) {
  result_.end = SessionResult::End::kStopped;
  result_.signal = stop_.signal.load();
  result_.mid_epoch = mid_epoch;
  result_.position = trainer_->position();
  return result_;
}

// After an evaluation of epoch `epochs_done`: true when early stopping ends the run.
bool TrainingSession::early_stop_check(int epochs_done) {
  const double t0 = now_seconds();
  model_->gather_tables();  // row-sharded tables: every rank evaluates on the whole tables
  const RankingMetrics m = evaluate_ranking(*model_, seen_train_, held_, {10, 20});
  eval_seconds_ += now_seconds() - t0;
  record_metrics(m);
  if (cb_.metrics) cb_.metrics("validation", m);
  if (cfg_.early_stopping <= 0) return false;
  double ndcg = m.ndcg[0];
  if (distributed()) options_.comm->broadcast(&ndcg, sizeof ndcg, 0);  // rank 0 decides for all
  if (ndcg > best_ndcg_) {
    best_ndcg_ = ndcg;
    best_epoch_ = epochs_done;
    best_state_ = model_->save_state();
    since_best_ = 0;
    return false;
  }
  if (++since_best_ < cfg_.early_stopping) return false;
  save();
  emit(cb_.out, format("early stopping: no better validation nDCG@10 for %d evaluations", since_best_));
  return true;
}

void TrainingSession::keep_best_epoch() {
  if (cfg_.early_stopping <= 0 || best_epoch_ <= 0 || best_epoch_ == trainer_->epochs_done()) return;
  model_->load_state(best_state_);
  trainer_->set_epochs_done(best_epoch_);
  save();
  emit(cb_.out, format("kept epoch %d (validation nDCG@10 %.4f)", best_epoch_, best_ndcg_));
}

SessionResult TrainingSession::run() {
  // Divergence found by the trainer or before a checkpoint: say what the
  // checkpoint on disk holds (saved_at_ changes only after a good save).
  try {
    SessionResult r = run_epochs();
    // Row-sharded tables: the whole tables on every rank for what follows a
    // run (evaluation, sample recommendations), which rank 0 does alone.
    if (r.end != SessionResult::End::kStopped) model_->gather_tables();
    return r;
  } catch (const DivergedError& err) {
    throw DivergedError(err.what() + kept_note());
  }
}

SessionResult TrainingSession::run_epochs() {
  result_ = SessionResult{};
  result_.steps_per_epoch = trainer_->steps_per_epoch();
  load_history();
  eval_seconds_ = 0;
  const int start_epoch = trainer_->epochs_done();
  const int epochs_to_run = std::max(0, cfg_.train.epochs - start_epoch);
  const int64_t skipped = epochs_to_run > 0 ? trainer_->position().step : 0;  // run before the resume
  const int64_t total_steps = trainer_->steps_per_epoch() * epochs_to_run - skipped;
  const double t0 = now_seconds();
  last_save_ = t0;
  steps_since_save_ = 0;
  StopFlags flags{&stop_.flag, &stop_.signal};
  std::unique_ptr<StopSignals> signals;
  if (options_.handle_signals) signals = std::make_unique<StopSignals>(&flags);
  for (int e = start_epoch; e < cfg_.train.epochs; ++e) {
    const int64_t done_before = trainer_->steps_per_epoch() * (e - start_epoch) - skipped;
    const EpochStats st = trainer_->train_epoch(
        [&](const TrainProgress& p) {
          if (p.step < p.steps && cb_.progress)
            cb_.progress(p, done_before + p.step, total_steps, now_seconds() - t0);
        },
        cfg_.log_every);
    if (!st.complete) {
      save();
      return stopped(true);
    }
    result_.history.push_back(st);
    record_epoch(st, now_seconds() - t0 - eval_seconds_);
    if (cb_.epoch_done) cb_.epoch_done(st, now_seconds() - t0, total_steps - done_before - st.steps);
    if (cfg_.eval_every > 0 && (e + 1) % cfg_.eval_every == 0 &&
        (e + 1 < cfg_.train.epochs || cfg_.early_stopping > 0)) {
      emit(cb_.out, format("epoch %d", e + 1));
      if (early_stop_check(e + 1)) break;
    }
    save();
    // A stop request during the last step of an epoch: the epoch's checkpoint is written.
    if (stop_.flag.load()) return stopped(false);
  }
  signals.reset();
  keep_best_epoch();
  result_.seconds = now_seconds() - t0;
  if (distributed() && !result_.history.empty()) {
    int64_t steps = 0;
    for (const auto& h : result_.history) steps += h.steps;
    const int64_t sent = options_.comm->bytes_sent() +
                         (options_.gradient_comm ? options_.gradient_comm->bytes_sent() : 0);
    emit(cb_.out, format("distributed: %d ranks; rank 0 sent %.1f KiB per step (%lld bytes over %lld steps, "
                         "collective payloads)",
                         options_.comm->size(), static_cast<double>(sent) / 1024.0 / std::max<int64_t>(steps, 1),
                         static_cast<long long>(sent), static_cast<long long>(steps)));
  }
  if (result_.history.empty()) {
    if (resumed_) {
      result_.end = SessionResult::End::kNothingToDo;
      emit(cb_.out, format("%s already holds %d epochs (--epochs %d): nothing to train",
                           checkpoint_path().c_str(), start_epoch, cfg_.train.epochs));
    } else {
      save();  // --epochs 0: the initialised model
    }
  }
  result_.position = trainer_->position();
  return result_;
}

// OUT/history.jsonl: one JSON record per epoch (loss, learning rate, samples/s,
// training seconds so far without evaluations, and the validation metrics of
// the epochs evaluated), rewritten atomically after every change. A resumed
// run keeps the records of the epochs before it.
void TrainingSession::load_history() {
  const std::string path = cfg_.out + "/history.jsonl";
  history_kept_.clear();
  history_.clear();
  history_offset_s_ = 0;
  if (!resumed_ || !file_exists(path)) return;
  std::istringstream in(read_file(path));
  for (std::string line; std::getline(in, line);) {
    try {
      const nlohmann::json r = nlohmann::json::parse(line);
      if (r.value("epoch", 0) > start_pos_.epoch) continue;
      history_kept_.push_back(line);
      history_offset_s_ = r.value("train_seconds", 0.0);
    } catch (const nlohmann::json::exception&) {
      // A line that does not parse is not kept: the file is a log.
    }
  }
}

void TrainingSession::write_history() const {
  std::string text;
  for (const auto& line : history_kept_) text += line + "\n";
  for (const auto& r : history_) {
    nlohmann::ordered_json j;
    j["epoch"] = r.epoch;
    j["loss"] = r.loss;
    j["lr"] = r.lr;
    j["samples_per_s"] = r.samples_per_s;
    j["train_seconds"] = r.train_seconds;
    for (const auto& [name, value] : r.metrics) j[name] = value;
    text += j.dump() + "\n";
  }
  if (writer()) write_file_atomic(cfg_.out + "/history.jsonl", text);
}

void TrainingSession::record_epoch(const EpochStats& st, double train_seconds) {
  EpochRecord r;
  r.epoch = st.epoch;
  r.loss = st.loss;
  r.lr = trainer_->learning_rate(trainer_->steps_per_epoch() * st.epoch - 1);
  r.samples_per_s = st.samples_per_s;
  r.train_seconds = history_offset_s_ + train_seconds;
  history_.push_back(std::move(r));
  write_history();
}

void TrainingSession::record_metrics(const RankingMetrics& m) {
  if (history_.empty()) return;
  auto& r = history_.back();
  r.metrics.clear();
  for (size_t j = 0; j < m.ks.size(); ++j) {
    const std::string k = std::to_string(m.ks[j]);
    r.metrics.emplace_back("recall@" + k, m.recall[j]);
    r.metrics.emplace_back("ndcg@" + k, m.ndcg[j]);
    r.metrics.emplace_back("precision@" + k, m.precision[j]);
  }
  write_history();
}

void TrainingSession::check_ranks_agree(uint64_t value, const std::string& what) const {
  const std::vector<uint64_t> all = options_.comm->all_gather_u64(value);
  for (size_t r = 1; r < all.size(); ++r)
    if (all[r] != all[0])
      throw Error("rank " + std::to_string(r) + " differs from rank 0 in its " + what +
                  ": every rank must run the same command on the same data");
}

HoldoutEvaluation TrainingSession::evaluate() {
  // Users without training interactions are embedded through the unknown-ID
  // bucket from here on. Items keep their rows: an item seen only as a sampled
  // negative has learnt to rank low, and lifting it to its features' level
  // costs ranking quality (MovieLens-100k nDCG@10 0.469 -> 0.438 when items
  // use the bucket too).
  model_->set_cold(cold_users(seen_train_), {});
  HoldoutEvaluation ev;
  if (test_.size() == 0 || !writer()) return ev;  // distributed: rank 0 evaluates
  const double t0 = now_seconds();
  ev.done = true;
  ev.label = cfg_.eval_every > 0 ? "validation" : "holdout";
  ev.model = evaluate_ranking(*model_, seen_train_, held_, {10, 20});
  if (!history_.empty() && history_.back().metrics.empty()) record_metrics(ev.model);
  ev.popularity = evaluate_popularity(seen_train_, held_, ds_.items.size(), {10});
  ev.seconds = now_seconds() - t0;
  return ev;
}

}  // namespace towerrec
