#include <signal.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>

#include "host/cli/cli.h"
#include "towerrec/checkpoint.h"
#include "towerrec/error.h"
#include "towerrec/io.h"
#include "towerrec/recommend.h"
#include "towerrec/split.h"

namespace towerrec::cli {

namespace {

// Options of `train` that are not configuration keys (they say where this run's
// data and state come from, not what the model is).
struct RunOptions {
  bool resume = false;     // continue from OUT/model.ckpt when it exists
};

// Takes the run options out of args; everything else goes to apply_flags.
Args take_run_options(const Args& args, RunOptions& run) {
  Args rest;
  for (size_t i = 0; i < args.size(); ++i) {
    std::string name = args[i], value;
    bool has_value = false;
    if (auto eq = name.find('='); eq != std::string::npos && name.rfind("--", 0) == 0) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      has_value = true;
    }
    auto take_value = [&]() {
      if (!has_value) {
        if (i + 1 >= args.size()) throw Error("option " + name + " needs a value");
        value = args[++i];
      }
      return value;
    };
    if (name == "--validation") {
      rest.push_back("--holdout");  // --validation F is --holdout F
      rest.push_back(take_value());
    } else if (name == "--resume") {
      if (has_value && value != "true" && value != "false") throw Error("--resume takes no value");
      run.resume = !has_value || value == "true";
    } else {
      rest.push_back(args[i]);
    }
  }
  return rest;
}

// Keys that shape the model: a checkpoint can only be resumed with the same values.
const char* const kShapeKeys[] = {"id-dim", "hidden", "dim", "cat-dim", "features", "normalize"};
// Keys that do not change what an epoch computes.
const char* const kRunKeys[] = {"epochs", "out", "quiet", "log-every", "device", "data",
                                "user-features", "item-features", "checkpoint-every-steps",
                                "checkpoint-every-minutes", "planner-threads"};

// Ctrl-C / SIGTERM: the handler only sets flags (lock-free atomics are
// async-signal-safe); the trainer finishes its step and stops, and train writes
// a checkpoint. SA_RESETHAND: a second signal ends the process at once.
std::atomic<bool> g_stop{false};
std::atomic<int> g_signal{0};
static_assert(std::atomic<bool>::is_always_lock_free && std::atomic<int>::is_always_lock_free);

extern "C" void on_stop_signal(int sig) {
  g_signal.store(sig);
  g_stop.store(true);
}

// Installs the handler for SIGINT and SIGTERM for its lifetime.
class StopSignals {
 public:
  StopSignals() {
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
  }
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

 private:
  struct sigaction old_int_ {}, old_term_ {};
};

std::string describe(const TrainPosition& p) {
  return p.step ? "epoch " + std::to_string(p.epoch + 1) + " step " + std::to_string(p.step)
                : "epoch " + std::to_string(p.epoch);
}

bool listed(const std::string& name, const char* const* b, const char* const* e) {
  for (; b != e; ++b)
    if (name == *b) return true;
  return false;
}

// Refuses a checkpoint whose model shape differs from cfg's; warns about other
// settings that make the continuation differ from an uninterrupted run.
void check_resumable(const std::string& path, const Checkpoint& ck, const Config& cfg,
                     const Dataset& ds, const UserItems& seen) {
  Config old;
  apply_json(old, ck.config_json, path + " (configuration section)");
  resolve_defaults(old);
  for (const auto& k : config_keys()) {
    const std::string was = k.get(old), now = k.get(cfg);
    if (was == now) continue;
    // A learning-rate schedule spans all epochs: more epochs change its earlier steps.
    if (k.name == "epochs" && cfg.train.lr_schedule != LrSchedule::kConstant) {
      std::fprintf(stderr,
                   "warning: --epochs was %s, now %s: the %s learning-rate schedule changes, so the "
                   "resumed run will not match an uninterrupted one of %s epochs\n",
                   was.c_str(), now.c_str(), to_string(cfg.train.lr_schedule), now.c_str());
      continue;
    }
    if (listed(k.name, std::begin(kShapeKeys), std::end(kShapeKeys)))
      throw Error(path + ": cannot resume: --" + k.name + " is " + was + " in the checkpoint, " +
                  now + " now (the model shapes differ)");
    if (!listed(k.name, std::begin(kRunKeys), std::end(kRunKeys)))
      std::fprintf(stderr,
                   "warning: --%s was %s, now %s: the resumed run will not match an uninterrupted one\n",
                   k.name.c_str(), was.c_str(), now.c_str());
  }
  if (ck.users.ids() != ds.users.ids() || ck.items.ids() != ds.items.ids())
    throw Error(path + ": cannot resume: the checkpoint's user and item IDs differ from " + cfg.data);
  if (ck.has_seen() && (ck.seen.offsets != seen.offsets || ck.seen.items != seen.items))
    throw Error(path + ": cannot resume: the training interactions differ from the checkpoint's");
}

}  // namespace

int cmd_train(const Args& args) {
  if (wants_help(args)) {
    std::printf(
        "usage: towerrec train --data PATH [options]\n\n"
        "Trains a two-tower model and writes OUT/model.ckpt (after every epoch) and\n"
        "OUT/config.json.\n\n"
        "run options:\n"
        "  --validation F        per-user fraction of the training interactions held out for\n"
        "                        evaluation (the same as --holdout F)\n"
        "  --resume              continue from OUT/model.ckpt when it exists, up to --epochs\n"
        "                        (the model-shaping keys must match the checkpoint's)\n\n"
        "Ctrl-C (SIGINT) or SIGTERM finishes the current step, writes OUT/model.ckpt and\n"
        "exits with status 130 (143 for SIGTERM); --resume continues from that step.\n"
        "A non-finite loss or parameter stops training with an error; OUT/model.ckpt\n"
        "then keeps the last good state.\n\n"
        "configuration keys:\n%s",
        config_help().c_str());
    return 0;
  }
  RunOptions run;
  Config cfg;
  const auto positional = apply_flags(cfg, take_run_options(args, run));
  resolve_defaults(cfg);
  if (!positional.empty()) throw Error("unexpected argument '" + positional[0] + "'");
  if (cfg.early_stopping > 0 && cfg.eval_every == 0) cfg.eval_every = 1;
  if (cfg.eval_every > 0 && cfg.holdout <= 0)
    throw Error("--eval-every and --early-stopping need a validation split: give --validation F "
                "(or --holdout F)");
  const std::string config_text = to_json(cfg);
  if (!cfg.quiet) std::fprintf(stderr, "effective configuration:\n%s", config_text.c_str());

  const auto t_load = std::chrono::steady_clock::now();
  Dataset ds = load_dataset(cfg);
  if (!cfg.train_file.empty()) {
    ds.interactions = read_known_interactions(cfg.train_file, ds.users, ds.items, cfg.rating_threshold);
    if (ds.interactions.size() == 0) throw InputError(cfg.train_file, 0, "", "no training interactions");
  }
  const double load_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t_load).count();
  const int32_t n_users = ds.users.size(), n_items = ds.items.size();
  // Everything the model was trained with (validation rows included): what
  // `recommend` excludes by default.
  const UserItems seen_all = group_by_user(ds.interactions, n_users);
  Interactions train = ds.interactions, test;
  if (cfg.holdout > 0) {
    Split sp = split_per_user_ratio(ds.interactions, n_users, cfg.holdout, cfg.split_seed);
    train = std::move(sp.train);
    test = std::move(sp.test);
  }
  if (!cfg.quiet)
    std::fprintf(stderr, "data: %s%s%s: %d users, %d items, %lld interactions (%lld train, %lld held out), loaded in %s\n",
                 cfg.data.c_str(), cfg.train_file.empty() ? "" : ", training rows from ",
                 cfg.train_file.c_str(), n_users, n_items,
                 static_cast<long long>(ds.interactions.size()), static_cast<long long>(train.size()),
                 static_cast<long long>(test.size()), format_seconds(load_s).c_str());

  auto be = make_backend(cfg.device, cfg.threads);
  auto model_ptr = build_model(*be, cfg, ds.user_features, n_users, ds.item_features, n_items);
  TwoTowerModel& model = *model_ptr;
  const std::string ckpt_path = cfg.out + "/model.ckpt";
  int start_epoch = 0;
  TrainPosition start_pos;
  bool resumed = false;
  if (run.resume) {
    if (file_exists(ckpt_path)) {
      const Checkpoint ck = load_checkpoint(ckpt_path);
      check_resumable(ckpt_path, ck, cfg, ds, seen_all);
      model.load_state(ck.state);
      start_epoch = ck.epochs_done;
      start_pos = {ck.epochs_done, ck.step, ck.epoch_loss_sum};
      resumed = true;
      if (!cfg.quiet) {
        if (ck.step > 0)
          std::fprintf(stderr, "resuming from %s in epoch %d after step %lld\n", ckpt_path.c_str(),
                       start_epoch + 1, static_cast<long long>(ck.step));
        else
          std::fprintf(stderr, "resuming from %s after epoch %d\n", ckpt_path.c_str(), start_epoch);
      }
    } else if (!cfg.quiet) {
      std::fprintf(stderr, "--resume: no %s yet; starting from scratch\n", ckpt_path.c_str());
    }
  }
  if (!cfg.quiet)
    std::fprintf(stderr, "backend: %s\nmodel: %lld parameters; user input %d, item input %d\n",
                 be->describe().c_str(), static_cast<long long>(model.parameter_count()),
                 model.user_tower().input_dim(), model.item_tower().input_dim());

  make_directories(cfg.out);
  // Temporary files of killed runs are never read; reclaim their space.
  remove_stale_temp_files(ckpt_path);
  remove_stale_temp_files(cfg.out + "/config.json");
  write_file_atomic(cfg.out + "/config.json", config_text);
  Trainer trainer(model, train, cfg.train);
  trainer.set_epochs_done(start_epoch);
  if (start_pos.step > 0) {
    if (start_pos.step >= trainer.steps_per_epoch())
      throw Error(ckpt_path + ": cannot resume: it stopped at step " + std::to_string(start_pos.step) +
                  " of an epoch, which now has only " + std::to_string(trainer.steps_per_epoch()) +
                  " steps (--batch-size changed?)");
    if (start_epoch < cfg.train.epochs) trainer.set_position(start_pos);
  }
  // What OUT/model.ckpt holds, for messages.
  std::string saved_at = resumed ? describe(start_pos) : "";
  auto kept_note = [&] {
    return saved_at.empty() ? std::string("; no checkpoint was written")
                            : "; " + ckpt_path + " keeps the last good state (" + saved_at + ")";
  };
  // Writes the model at `pos`; refuses a diverged state, so the last good
  // checkpoint stays.
  auto save_at = [&](const TrainPosition& pos) {
    Checkpoint ck;
    ck.config_json = config_text;
    ck.epochs_done = pos.epoch;
    ck.step = pos.step;
    ck.epoch_loss_sum = pos.loss_sum;
    ck.users = ds.users;
    ck.items = ds.items;
    if (cfg.features) {
      ck.user_features = ds.user_features;
      ck.item_features = ds.item_features;
    }
    ck.state = model.save_state();
    for (size_t t = 0; t < ck.state.tensors.size(); ++t)
      for (float x : ck.state.tensors[t])
        if (!std::isfinite(x))
          throw DivergedError("training diverged: parameter tensor '" + ck.state.names[t] +
                      "' holds a non-finite value at " + describe(pos) +
                      " (lower the learning rate)");
    ck.seen = seen_all;
    save_checkpoint(ckpt_path, ck);
    saved_at = describe(pos);
  };
  // A divergence found by the trainer or by save_at: add what the checkpoint holds.
  auto noting_kept = [&](const auto& f) {
    try {
      return f();
    } catch (const DivergedError& err) {
      throw DivergedError(err.what() + kept_note());
    }
  };
  auto save = [&] { noting_kept([&] { save_at(trainer.position()); }); };
  // Mid-epoch checkpoints: every N steps and/or M minutes since the last save.
  int64_t steps_since_save = 0;
  auto last_save = std::chrono::steady_clock::now();
  trainer.set_step_hook([&](const TrainPosition& next, const std::function<double()>& loss_sum) {
    ++steps_since_save;
    const bool by_steps = cfg.checkpoint_every_steps > 0 && steps_since_save >= cfg.checkpoint_every_steps;
    const bool by_time =
        cfg.checkpoint_every_minutes > 0 &&
        std::chrono::duration<double>(std::chrono::steady_clock::now() - last_save).count() >=
            cfg.checkpoint_every_minutes * 60.0;
    if (!by_steps && !by_time) return true;
    TrainPosition p = next;
    p.loss_sum = loss_sum();
    if (!std::isfinite(p.loss_sum))
      throw DivergedError("training diverged: the loss is not finite in epoch " + std::to_string(p.epoch + 1) +
                  " before step " + std::to_string(p.step + 1) + " (lower the learning rate)");
    save_at(p);
    steps_since_save = 0;
    last_save = std::chrono::steady_clock::now();
    return true;
  });
  g_stop.store(false);
  trainer.set_stop_flag(&g_stop);
  const UserItems seen_train = group_by_user(train, n_users);
  const UserItems held = group_by_user(test, n_users);
  auto evaluate = [&](const char* label) {
    const RankingMetrics m = evaluate_ranking(model, seen_train, held, {10, 20});
    print_ranking(label, m);
    std::fflush(stdout);
    return m.ndcg[0];
  };
  // Early stopping keeps the state of the best evaluated epoch.
  double best_ndcg = -1;
  int best_epoch = 0, since_best = 0;
  TwoTowerModel::State best_state;

  ProgressPrinter printer(cfg.quiet);
  const int epochs_to_run = std::max(0, cfg.train.epochs - start_epoch);
  const int64_t skipped = epochs_to_run > 0 ? start_pos.step : 0;  // run before the resume
  const int64_t total_steps = trainer.steps_per_epoch() * epochs_to_run - skipped;
  const auto t0 = std::chrono::steady_clock::now();
  auto since = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };
  std::vector<EpochStats> history;
  auto signals = std::make_unique<StopSignals>();  // only while training
  for (int e = start_epoch; e < cfg.train.epochs; ++e) {
    const int64_t done_before = trainer.steps_per_epoch() * (e - start_epoch) - skipped;
    const EpochStats st = noting_kept([&] {
      return trainer.train_epoch(
          [&](const TrainProgress& p) {
            if (p.step < p.steps) printer.update(p, done_before + p.step, total_steps, since());
          },
          cfg.log_every);
    });
    if (!st.complete) {
      // Stopped by a signal: keep the position and exit.
      save();
      const int sig = g_signal.load();
      std::fprintf(stderr, "\ninterrupted by %s: wrote %s at %s of %lld steps; continue with --resume\n",
                   sig == SIGTERM ? "SIGTERM" : "SIGINT", ckpt_path.c_str(),
                   describe(trainer.position()).c_str(), static_cast<long long>(trainer.steps_per_epoch()));
      std::fflush(stdout);
      return 128 + (sig ? sig : SIGINT);
    }
    history.push_back(st);
    printer.epoch_done(st, since(), total_steps - done_before - st.steps);
    if (cfg.eval_every > 0 && (e + 1) % cfg.eval_every == 0 &&
        (e + 1 < cfg.train.epochs || cfg.early_stopping > 0)) {
      std::printf("epoch %d\n", e + 1);
      const double ndcg = evaluate("validation");
      if (cfg.early_stopping > 0) {
        if (ndcg > best_ndcg) {
          best_ndcg = ndcg;
          best_epoch = e + 1;
          best_state = model.save_state();
          since_best = 0;
        } else if (++since_best >= cfg.early_stopping) {
          save();
          std::printf("early stopping: no better validation nDCG@10 for %d evaluations\n", since_best);
          break;
        }
      }
    }
    save();
    steps_since_save = 0;
    last_save = std::chrono::steady_clock::now();
    if (g_stop.load()) {
      // A signal during the last step of an epoch: the epoch's checkpoint is written.
      const int sig = g_signal.load();
      std::fprintf(stderr, "\ninterrupted by %s: wrote %s at %s; continue with --resume\n",
                   sig == SIGTERM ? "SIGTERM" : "SIGINT", ckpt_path.c_str(),
                   describe(trainer.position()).c_str());
      return 128 + (sig ? sig : SIGINT);
    }
  }
  signals.reset();
  if (cfg.early_stopping > 0 && best_epoch > 0 && best_epoch != trainer.epochs_done()) {
    model.load_state(best_state);
    trainer.set_epochs_done(best_epoch);
    save();
    std::printf("kept epoch %d (validation nDCG@10 %.4f)\n", best_epoch, best_ndcg);
  }
  const double train_s = since();
  if (history.empty()) {
    if (resumed)
      std::printf("%s already holds %d epochs (--epochs %d): nothing to train\n", ckpt_path.c_str(),
                  start_epoch, cfg.train.epochs);
    else
      save();  // --epochs 0: the initialised model
  }

  if (!history.empty()) {
    double samples = 0;
    for (const auto& h : history) samples += static_cast<double>(h.samples);
    std::printf("trained %d epochs in %s (%.0f samples/s); loss %.5f -> %.5f\n",
                static_cast<int>(history.size()), format_seconds(train_s).c_str(),
                train_s > 0 ? samples / train_s : 0.0, history.front().loss, history.back().loss);
    std::printf("loss by epoch:");
    for (const auto& h : history) std::printf(" %.4f", h.loss);
    std::printf("\n");
  }
  std::printf("model written to %s\n", ckpt_path.c_str());

  // Users without training interactions are embedded through the unknown-ID
  // bucket from here on (evaluation and the sample recommendations). Items keep
  // their rows: an item seen only as a sampled negative has learnt to rank low,
  // and lifting it to its features' level costs ranking quality (MovieLens-100k
  // nDCG@10 0.469 -> 0.438 when items use the bucket too).
  model.set_cold(cold_users(seen_train), {});
  // Evaluation on the held-out split, and a few users' recommendations.
  if (test.size() > 0) {
    const auto t_eval = std::chrono::steady_clock::now();
    evaluate(cfg.eval_every > 0 ? "validation" : "holdout");
    const RankingMetrics pop = evaluate_popularity(seen_train, held, n_items, {10});
    std::printf("popularity baseline@10  recall %.4f  ndcg %.4f\n", pop.recall[0], pop.ndcg[0]);
    std::printf("evaluated in %s\n",
                format_seconds(std::chrono::duration<double>(std::chrono::steady_clock::now() - t_eval).count()).c_str());
  }
  if (!cfg.quiet) {
    DeviceArray<float> U, V;
    model.embed_all_users(U);
    model.embed_all_items(V);
    std::vector<int32_t> sample;
    for (int32_t u = 0; u < std::min<int32_t>(3, n_users); ++u) sample.push_back(u);
    recommend_topk(*be, U, V, n_users, n_items, model.out_dim(), sample, 5, &seen_all,
                   [&](const TopKBlock& b) {
                     for (size_t r = 0; r < b.users.size(); ++r) {
                       std::printf("user %s:", ds.users.id(b.users[r]).c_str());
                       for (int q = 0; q < b.k; ++q) {
                         const int32_t it = b.items[r * b.k + q];
                         if (it >= 0) std::printf("  %s (%.3f)", ds.items.id(it).c_str(), b.scores[r * b.k + q]);
                       }
                       std::printf("\n");
                     }
                   });
  }
  return 0;
}

}  // namespace towerrec::cli
