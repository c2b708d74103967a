#include <chrono>
#include <cstdio>

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
                                "user-features", "item-features"};

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
  for (const auto& k : config_keys()) {
    const std::string was = k.get(old), now = k.get(cfg);
    if (was == now) continue;
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
        "configuration keys:\n%s",
        config_help().c_str());
    return 0;
  }
  RunOptions run;
  Config cfg;
  const auto positional = apply_flags(cfg, take_run_options(args, run));
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
  bool resumed = false;
  if (run.resume) {
    if (file_exists(ckpt_path)) {
      const Checkpoint ck = load_checkpoint(ckpt_path);
      check_resumable(ckpt_path, ck, cfg, ds, seen_all);
      model.load_state(ck.state);
      start_epoch = ck.epochs_done;
      resumed = true;
      if (!cfg.quiet)
        std::fprintf(stderr, "resuming from %s after epoch %d\n", ckpt_path.c_str(), start_epoch);
    } else if (!cfg.quiet) {
      std::fprintf(stderr, "--resume: no %s yet; starting from scratch\n", ckpt_path.c_str());
    }
  }
  if (!cfg.quiet)
    std::fprintf(stderr, "backend: %s\nmodel: %lld parameters; user input %d, item input %d\n",
                 be->describe().c_str(), static_cast<long long>(model.parameter_count()),
                 model.user_tower().input_dim(), model.item_tower().input_dim());

  make_directories(cfg.out);
  write_file_atomic(cfg.out + "/config.json", config_text);
  Trainer trainer(model, train, cfg.train);
  trainer.set_epochs_done(start_epoch);
  auto save = [&] {
    Checkpoint ck;
    ck.config_json = config_text;
    ck.epochs_done = trainer.epochs_done();
    ck.users = ds.users;
    ck.items = ds.items;
    if (cfg.features) {
      ck.user_features = ds.user_features;
      ck.item_features = ds.item_features;
    }
    ck.state = model.save_state();
    ck.seen = seen_all;
    save_checkpoint(ckpt_path, ck);
  };
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
  const int64_t total_steps = trainer.steps_per_epoch() * epochs_to_run;
  const auto t0 = std::chrono::steady_clock::now();
  auto since = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };
  std::vector<EpochStats> history;
  for (int e = start_epoch; e < cfg.train.epochs; ++e) {
    const int64_t done_before = trainer.steps_per_epoch() * (e - start_epoch);
    EpochStats st = trainer.train_epoch(
        [&](const TrainProgress& p) {
          if (p.step < p.steps) printer.update(p, done_before + p.step, total_steps, since());
        },
        cfg.log_every);
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
  }
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
