#include <chrono>
#include <cstdio>

#include <nlohmann/json.hpp>

#include "host/cli/cli.h"
#include "towerrec/error.h"
#include "towerrec/recommend.h"

namespace towerrec::cli {

namespace {

// eval --json: the metrics as one JSON object on stdout.
void print_json(LoadedModel& lm, const DeviceArray<float>& U, const DeviceArray<float>& V,
                const UserItems& train, const UserItems& test, const std::vector<int>& ks,
                const std::string& model_path, const std::string& test_path,
                const std::string& protocol, const std::string& excluded, int negatives,
                uint64_t seed, bool quiet) {
  const int32_t nu = lm.n_users(), ni = lm.n_items();
  nlohmann::ordered_json j;
  j["model"] = model_path;
  j["test"] = test_path;
  j["protocol"] = protocol;
  j["excluded"] = excluded;
  Progress progress("eval", "users", 0, quiet);
  if (protocol == "full") {
    const RankingMetrics m = evaluate_ranking(*lm.be, U, V, nu, ni, lm.model->out_dim(), train, test, ks, {}, progress.reporter());
    progress.finish();
    const RankingMetrics pop = evaluate_popularity(train, test, ni, ks);
    for (size_t q = 0; q < m.ks.size(); ++q) {
      const std::string at = "@" + std::to_string(m.ks[q]);
      j["precision" + at] = m.precision[q];
      j["recall" + at] = m.recall[q];
      j["ndcg" + at] = m.ndcg[q];
      j["map" + at] = m.map[q];
      j["hit_rate" + at] = m.hit_rate[q];
      j["popularity_recall" + at] = pop.recall[q];
      j["popularity_ndcg" + at] = pop.ndcg[q];
    }
    j["mrr@" + std::to_string(m.ks.back())] = m.mrr;
    j["coverage@" + std::to_string(m.ks.back())] = m.coverage;
    j["users_evaluated"] = m.users_evaluated;
    j["users_skipped"] = m.users_skipped;
  } else {
    const SampledMetrics m = evaluate_sampled(*lm.be, U, V, nu, ni, lm.model->out_dim(), train,
                                              test, ks, negatives, seed, progress.reporter());
    progress.finish();
    for (size_t q = 0; q < m.ks.size(); ++q) {
      const std::string at = "@" + std::to_string(m.ks[q]);
      j["hit_rate" + at] = m.hit_rate[q];
      j["ndcg" + at] = m.ndcg[q];
    }
    j["auc"] = m.auc;
    j["log_loss"] = m.log_loss;
    j["negatives"] = m.negatives;
    j["cases"] = m.cases;
    j["users_evaluated"] = m.users_evaluated;
  }
  std::printf("%s\n", j.dump(1).c_str());
}

}  // namespace

int cmd_eval(const Args& args) {
  CLI::App app(
      "Evaluates a trained model on held-out interactions (a CSV with header\n"
      "user,item[,rating][,timestamp], e.g. from `towerrec split`; every ID must be\n"
      "known to the model, rows with rating below the model's --rating-threshold are\n"
      "dropped).",
      "towerrec eval");
  configure_app(app);
  std::string model, test_path, train_path, protocol = "full", k_list = "10,20";
  bool include_seen = false;
  int negatives = 100;
  uint64_t seed = 42;
  DeviceOptions dev;
  app.add_option("--model", model, "directory with model.ckpt (or the checkpoint file)")->required();
  app.add_option("--test", test_path, "held-out interactions")->required();
  auto* train_opt = app.add_option("--train", train_path,
                                   "interactions excluded from the ranking (and from the negatives); "
                                   "default: the training interactions stored in the checkpoint");
  app.add_flag("--include-seen", include_seen, "exclude nothing: rank every item");
  bool as_json = false;
  app.add_flag("--json", as_json, "print the metrics as one JSON object on stdout instead of text");
  app.add_option("--protocol", protocol,
                 "full: rank all items; sampled: each test positive among --negatives unseen items")
      ->check(CLI::IsMember({"full", "sampled"}))
      ->capture_default_str();
  app.add_option("--k", k_list, "cutoffs")->capture_default_str();
  auto* neg_opt = app.add_option("--negatives", negatives, "sampled protocol: negatives per positive")
                      ->check(CLI::Range(1, 1000000))
                      ->capture_default_str();
  auto* seed_opt = app.add_option("--seed", seed, "sampled protocol: seed of the negatives")->capture_default_str();
  char delimiter = ',';
  add_delimiter_option(app, delimiter);
  add_device_options(app, dev);
  bool quiet = false;
  add_quiet_option(app, quiet);
  if (!parse_args(app, args)) return 0;
  if (train_opt->count() && include_seen) throw Error("--train and --include-seen exclude each other");
  if (protocol == "full" && (neg_opt->count() || seed_opt->count()))
    throw Error("--negatives and --seed apply to --protocol sampled only");
  const std::vector<int> ks = parse_ks(k_list);

  const auto t0 = std::chrono::steady_clock::now();
  LoadedModel lm = load_model(model, dev.device, dev.threads);
  const int32_t nu = lm.n_users(), ni = lm.n_items();
  const Interactions test_rows = read_known_interactions(test_path, lm.ck.users, lm.ck.items,
                                                         lm.cfg.rating_threshold, delimiter);
  const UserItems test = group_by_user(test_rows, nu);
  UserItems train;
  std::string excluded;
  if (include_seen) {
    train = no_items(nu);
    excluded = "nothing excluded";
  } else if (train_opt->count()) {
    train = group_by_user(read_known_interactions(train_path, lm.ck.users, lm.ck.items,
                                                  lm.cfg.rating_threshold, delimiter), nu);
    excluded = "excluding " + train_path;
  } else if (lm.ck.has_seen()) {
    train = lm.ck.seen;
    excluded = "excluding the checkpoint's training interactions";
  } else {
    throw Error(lm.path + " stores no training interactions: give --train FILE or --include-seen");
  }
  DeviceArray<float> U, V;
  lm.model->embed_all_users(U);
  lm.model->embed_all_items(V);
  if (!as_json && !quiet)
    std::printf("model %s: %d users, %d items, %d epochs; test %s: %lld interactions (%s)\n",
                lm.path.c_str(), nu, ni, lm.ck.epochs_done, test_path.c_str(),
                static_cast<long long>(test_rows.size()), excluded.c_str());
  if (as_json) {
    print_json(lm, U, V, train, test, ks, lm.path, test_path, protocol, excluded, negatives, seed, quiet);
    return 0;
  }
  // Each ranking pass reports its own progress line.
  auto ranking = [&](const std::string& label, const UserItems& t) {
    Progress progress(label, "users", 0, quiet);
    const RankingMetrics m = evaluate_ranking(*lm.be, U, V, nu, ni, lm.model->out_dim(), train, t, ks, {},
                                              progress.reporter());
    progress.finish();
    return m;
  };
  if (protocol == "full") {
    const RankingMetrics m = ranking("eval", test);
    print_ranking("test", m);
    // Warm and cold users (no training interactions in the checkpoint) apart.
    if (lm.ck.has_seen()) {
      const std::vector<char> cold = cold_users(lm.ck.seen);
      const UserItems cold_test = select_users(test, cold, 1);
      if (!cold_test.items.empty()) {
        print_ranking("test-warm", ranking("eval warm", select_users(test, cold, 0)));
        print_ranking("test-cold", ranking("eval cold", cold_test));
      }
    }
    const RankingMetrics pop = evaluate_popularity(train, test, ni, ks);
    for (size_t j = 0; j < pop.ks.size(); ++j)
      std::printf("popularity@%d  recall %.4f  ndcg %.4f\n", pop.ks[j], pop.recall[j], pop.ndcg[j]);
  } else {
    Progress progress("eval", "users", 0, quiet);
    const SampledMetrics m = evaluate_sampled(*lm.be, U, V, nu, ni, lm.model->out_dim(), train,
                                              test, ks, negatives, seed, progress.reporter());
    progress.finish();
    print_sampled("test", m);
  }
  if (!quiet)
    std::printf("evaluated in %s\n",
                format_seconds(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()).c_str());
  return 0;
}

}  // namespace towerrec::cli
