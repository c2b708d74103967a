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

void print_metrics(const char* label, const RankingMetrics& m) {
  for (size_t j = 0; j < m.ks.size(); ++j)
    std::printf("%s@%d  precision %.4f  recall %.4f  ndcg %.4f  map %.4f  hit-rate %.4f\n", label,
                m.ks[j], m.precision[j], m.recall[j], m.ndcg[j], m.map[j], m.hit_rate[j]);
  std::printf("%s  mrr@%d %.4f  coverage %.4f  users %lld (skipped %lld)\n", label, m.ks.back(),
              m.mrr, m.coverage, static_cast<long long>(m.users_evaluated),
              static_cast<long long>(m.users_skipped));
}

}  // namespace

int cmd_train(const Args& args) {
  if (wants_help(args)) {
    std::printf("usage: towerrec train --data PATH [options]\n\n"
                "Trains a two-tower model and writes OUT/model.ckpt and OUT/config.json.\n\n"
                "options:\n%s",
                config_help().c_str());
    return 0;
  }
  Config cfg;
  const auto positional = apply_flags(cfg, args);
  if (!positional.empty()) throw Error("unexpected argument '" + positional[0] + "'");
  const std::string config_text = to_json(cfg);
  if (!cfg.quiet) std::fprintf(stderr, "effective configuration:\n%s", config_text.c_str());

  const auto t_load = std::chrono::steady_clock::now();
  Dataset ds = load_dataset(cfg);
  const double load_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t_load).count();
  Interactions train = ds.interactions, test;
  if (cfg.holdout > 0) {
    Split sp = split_per_user_ratio(ds.interactions, ds.users.size(), cfg.holdout, cfg.split_seed);
    train = std::move(sp.train);
    test = std::move(sp.test);
  }
  if (!cfg.quiet)
    std::fprintf(stderr, "data: %s: %d users, %d items, %lld interactions (%lld train, %lld held out), loaded in %s\n",
                 cfg.data.c_str(), ds.users.size(), ds.items.size(),
                 static_cast<long long>(ds.interactions.size()), static_cast<long long>(train.size()),
                 static_cast<long long>(test.size()), format_seconds(load_s).c_str());

  auto be = make_backend(cfg.device, cfg.threads);
  const TowerInputSpec us = make_input_spec(ds.user_features, ds.users.size(), cfg.features);
  const TowerInputSpec is = make_input_spec(ds.item_features, ds.items.size(), cfg.features);
  TwoTowerModel model(*be, cfg.tower, us, is, cfg.train.seed);
  if (cfg.features) model.set_features(ds.user_features, ds.item_features);
  if (!cfg.quiet)
    std::fprintf(stderr, "backend: %s\nmodel: %lld parameters; user input %d, item input %d\n",
                 be->describe().c_str(), static_cast<long long>(model.parameter_count()),
                 model.user_tower().input_dim(), model.item_tower().input_dim());

  Trainer trainer(model, train, cfg.train);
  ProgressPrinter printer(cfg.quiet);
  const int64_t total_steps = trainer.steps_per_epoch() * cfg.train.epochs;
  const auto t0 = std::chrono::steady_clock::now();
  auto since = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };
  std::vector<EpochStats> history;
  for (int e = 0; e < cfg.train.epochs; ++e) {
    const int64_t done_before = trainer.steps_per_epoch() * e;
    EpochStats st = trainer.train_epoch(
        [&](const TrainProgress& p) {
          if (p.step < p.steps) printer.update(p, done_before + p.step, total_steps, since());
        },
        cfg.log_every);
    history.push_back(st);
    printer.epoch_done(st, since(), total_steps - done_before - st.steps);
  }
  const double train_s = since();

  make_directories(cfg.out);
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
  save_checkpoint(cfg.out + "/model.ckpt", ck);
  write_file_atomic(cfg.out + "/config.json", config_text);

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
  std::printf("model written to %s/model.ckpt\n", cfg.out.c_str());

  // Evaluation on the held-out split, and a few users' recommendations.
  DeviceArray<float> U, V;
  model.embed_all_users(U);
  model.embed_all_items(V);
  const UserItems seen = group_by_user(train, ds.users.size());
  if (test.size() > 0) {
    const auto t_eval = std::chrono::steady_clock::now();
    const UserItems held = group_by_user(test, ds.users.size());
    const RankingMetrics m = evaluate_ranking(*be, U, V, ds.users.size(), ds.items.size(),
                                              model.out_dim(), seen, held, {10, 20});
    print_metrics("holdout", m);
    const RankingMetrics pop = evaluate_popularity(seen, held, ds.items.size(), {10});
    std::printf("popularity baseline@10  recall %.4f  ndcg %.4f\n", pop.recall[0], pop.ndcg[0]);
    std::printf("evaluated in %s\n",
                format_seconds(std::chrono::duration<double>(std::chrono::steady_clock::now() - t_eval).count()).c_str());
  }
  if (!cfg.quiet) {
    std::vector<int32_t> sample;
    for (int32_t u = 0; u < std::min<int32_t>(3, ds.users.size()); ++u) sample.push_back(u);
    recommend_topk(*be, U, V, ds.users.size(), ds.items.size(), model.out_dim(), sample, 5, &seen,
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
