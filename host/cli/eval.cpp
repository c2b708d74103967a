#include <chrono>
#include <algorithm>
#include <cmath>
#include <cstdio>

#include <nlohmann/json.hpp>

#include "host/cli/cli.h"
#include "towerrec/error.h"
#include "towerrec/io.h"
#include "towerrec/recommend.h"

namespace towerrec::cli {

namespace {

// The full-ranking metrics of `m` as JSON fields (popularity beside them when given).
void put_ranking(nlohmann::ordered_json& j, const RankingMetrics& m, const RankingMetrics* pop) {
  for (size_t q = 0; q < m.ks.size(); ++q) {
    const std::string at = "@" + std::to_string(m.ks[q]);
    j["precision" + at] = m.precision[q];
    j["recall" + at] = m.recall[q];
    j["ndcg" + at] = m.ndcg[q];
    j["map" + at] = m.map[q];
    j["hit_rate" + at] = m.hit_rate[q];
    if (pop) {
      j["popularity_recall" + at] = pop->recall[q];
      j["popularity_ndcg" + at] = pop->ndcg[q];
    }
  }
  j["mrr@" + std::to_string(m.ks.back())] = m.mrr;
  j["coverage@" + std::to_string(m.ks.back())] = m.coverage;
  j["users_evaluated"] = m.users_evaluated;
  j["users_skipped"] = m.users_skipped;
}

// The users evaluated from --histories: rows nu .. nu + nh of the queries.
struct HistoryQueries {
  std::string path;
  int32_t users = 0;
  UserItems test;  // their test items (other rows empty)
};

// eval --json: the metrics as one JSON object on stdout. U holds nq query rows
// (the model's users, then any history users).
void print_json(LoadedModel& lm, const DeviceArray<float>& U, int32_t nq, const DeviceArray<float>& V,
                const UserItems& train, const UserItems& test, const std::vector<int>& ks,
                const std::string& model_path, const std::string& test_path,
                const std::string& protocol, const std::string& excluded, int negatives,
                uint64_t seed, bool quiet, const HistoryQueries* hist) {
  const int32_t ni = lm.n_items();
  nlohmann::ordered_json j;
  j["model"] = model_path;
  j["test"] = test_path;
  j["protocol"] = protocol;
  j["excluded"] = excluded;
  if (hist) {
    j["histories"] = hist->path;
    j["history_users"] = hist->users;
  }
  Progress progress("eval", "users", 0, quiet);
  if (protocol == "full") {
    const RankingMetrics m = evaluate_ranking(*lm.be, U, V, nq, ni, lm.model->out_dim(), train, test, ks, {}, progress.reporter());
    progress.finish();
    const RankingMetrics pop = evaluate_popularity(train, test, ni, ks);
    put_ranking(j, m, &pop);
    if (hist) {
      // The history users alone, under "history".
      Progress hp("eval history", "users", 0, quiet);
      const RankingMetrics h = evaluate_ranking(*lm.be, U, V, nq, ni, lm.model->out_dim(), train, hist->test, ks, {},
                                                hp.reporter());
      hp.finish();
      nlohmann::ordered_json hj;
      put_ranking(hj, h, nullptr);
      hj.erase("users_skipped");
      j["history"] = std::move(hj);
    }
  } else {
    const SampledMetrics m = evaluate_sampled(*lm.be, U, V, nq, ni, lm.model->out_dim(), train,
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

// The test file of eval --histories: a user is one of the listed history
// users (query nu + r) or else one the model knows (query u); rows rated below
// the threshold are dropped.
Interactions read_test_with_histories(const std::string& path, const LoadedModel& lm, const HistoryFile& hist,
                                      char delimiter) {
  if (!file_exists(path)) throw Error(path + ": no such file");
  IdMap read_users;
  const Interactions x = read_interactions_new_users(path, read_users, lm.ck.items, delimiter);
  const int32_t nu = lm.n_users();
  std::vector<int32_t> query(static_cast<size_t>(read_users.size()));
  for (int32_t u = 0; u < read_users.size(); ++u) {
    const std::string& id = read_users.id(u);
    const int32_t h = hist.users.find(id);
    const int32_t known = lm.ck.users.find(id);
    if (h < 0 && known < 0)
      throw InputError(path, 0, "user",
                       "unknown user ID '" + id + "': neither known to the model nor listed in --histories " +
                           hist.path);
    query[static_cast<size_t>(u)] = h >= 0 ? nu + h : known;
  }
  const float threshold = lm.cfg.rating_threshold;
  Interactions y;
  for (int64_t r = 0; r < x.size(); ++r) {
    if (!x.rating.empty() && !std::isnan(threshold) && !(x.rating[r] >= threshold)) continue;
    y.user.push_back(query[static_cast<size_t>(x.user[r])]);
    y.item.push_back(x.item[r]);
  }
  return y;
}

}  // namespace

int cmd_eval(const Args& args) {
  CLI::App app(
      "Evaluates a trained model on held-out interactions (a CSV with header\n"
      "user,item[,rating][,timestamp], e.g. from `towerrec split`; every ID must be\n"
      "known to the model, rows with rating below the model's --rating-threshold are\n"
      "dropped). --histories FILE evaluates the users listed there (e.g. the cold\n"
      "users of a temporal or user-level split: earlier interactions in FILE, later\n"
      "ones in --test) from those items alone, for a model trained with --history N.",
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
  std::string histories_file;
  auto* hist_opt = app.add_option(
      "--histories", histories_file,
      "interaction CSV (user,item[,...]) of users embedded from their items alone (pooled "
      "history, no ID embedding): user IDs may be new to the model, items must be known; "
      "their --test rows are ranked with these items excluded (unless --include-seen) and "
      "reported apart as test-history. A known user listed there is embedded the same way: "
      "the given history replaces the stored one. Needs a model trained with --history N "
      "and no user features")
      ->option_text("FILE");
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
  const bool with_hist = hist_opt->count() > 0;
  HistoryFile hist;
  if (with_hist) {
    const std::string problem = lm.model->history_input_problem();
    if (!problem.empty()) throw Error("--histories: " + lm.path + ": " + problem);
    hist = read_histories(histories_file, lm, delimiter);
  }
  // Queries: the model's users, then the history users (row nu + r).
  const int32_t nh = with_hist ? hist.users.size() : 0, nq = nu + nh;
  const Interactions test_rows =
      with_hist ? read_test_with_histories(test_path, lm, hist, delimiter)
                : read_known_interactions(test_path, lm.ck.users, lm.ck.items, lm.cfg.rating_threshold, delimiter);
  const UserItems test = group_by_user(test_rows, nq);
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
  HistoryQueries hq;
  if (with_hist) {
    // History users exclude their own items (nothing with --include-seen).
    for (int32_t r = 0; r < nh; ++r) {
      const UserItems& h = hist.items;
      if (!include_seen)
        train.items.insert(train.items.end(), h.items.begin() + h.offsets[r], h.items.begin() + h.offsets[r + 1]);
      train.offsets.push_back(static_cast<int64_t>(train.items.size()));
    }
    DeviceArray<float> H, UH;
    lm.model->embed_histories(hist.items.offsets, hist.items.items, H);
    const int d = lm.model->out_dim();
    UH.reset(lm.be.get(), static_cast<int64_t>(nq) * d);
    lm.be->copy(UH.data(), U.data(), static_cast<size_t>(nu) * d * sizeof(float));
    lm.be->copy(UH.data() + static_cast<int64_t>(nu) * d, H.data(), static_cast<size_t>(nh) * d * sizeof(float));
    lm.be->synchronize();
    U = std::move(UH);
    std::vector<char> is_hist(static_cast<size_t>(nq), 0);
    std::fill(is_hist.begin() + nu, is_hist.end(), 1);
    hq.path = histories_file;
    hq.users = nh;
    hq.test = select_users(test, is_hist, 1);
    excluded += with_hist && !include_seen ? "; history users: their history items" : "";
  }
  if (!as_json && !quiet) {
    std::printf("model %s: %d users, %d items, %d epochs; test %s: %lld interactions (%s)\n",
                lm.path.c_str(), nu, ni, lm.ck.epochs_done, test_path.c_str(),
                static_cast<long long>(test_rows.size()), excluded.c_str());
    if (with_hist)
      std::printf("histories %s: %d users, %lld interactions%s\n", histories_file.c_str(), nh,
                  static_cast<long long>(hist.rows),
                  hist.users_dropped ? (", " + std::to_string(hist.users_dropped) + " users without a positive left out").c_str() : "");
  }
  if (as_json) {
    print_json(lm, U, nq, V, train, test, ks, lm.path, test_path, protocol, excluded, negatives, seed, quiet,
               with_hist ? &hq : nullptr);
    return 0;
  }
  // Each ranking pass reports its own progress line.
  auto ranking = [&](const std::string& label, const UserItems& t) {
    Progress progress(label, "users", 0, quiet);
    const RankingMetrics m = evaluate_ranking(*lm.be, U, V, nq, ni, lm.model->out_dim(), train, t, ks, {},
                                              progress.reporter());
    progress.finish();
    return m;
  };
  if (protocol == "full") {
    const RankingMetrics m = ranking("eval", test);
    print_ranking("test", m);
    // Warm and cold users (no training interactions in the checkpoint) apart,
    // and the history users (group 2).
    if (lm.ck.has_seen()) {
      std::vector<char> group = cold_users(lm.ck.seen);
      group.resize(static_cast<size_t>(nq), 2);
      const UserItems warm_test = select_users(test, group, 0), cold_test = select_users(test, group, 1);
      if (!cold_test.items.empty() || (with_hist && !warm_test.items.empty()))
        print_ranking("test-warm", ranking("eval warm", warm_test));
      if (!cold_test.items.empty()) print_ranking("test-cold", ranking("eval cold", cold_test));
    }
    if (with_hist) print_ranking("test-history", ranking("eval history", hq.test));
    const RankingMetrics pop = evaluate_popularity(train, test, ni, ks);
    for (size_t j = 0; j < pop.ks.size(); ++j)
      std::printf("popularity@%d  recall %.4f  ndcg %.4f\n", pop.ks[j], pop.recall[j], pop.ndcg[j]);
  } else {
    Progress progress("eval", "users", 0, quiet);
    const SampledMetrics m = evaluate_sampled(*lm.be, U, V, nq, ni, lm.model->out_dim(), train,
                                              test, ks, negatives, seed, progress.reporter());
    progress.finish();
    print_sampled("test", m);
    if (with_hist) {
      Progress hp("eval history", "users", 0, quiet);
      print_sampled("test-history", evaluate_sampled(*lm.be, U, V, nq, ni, lm.model->out_dim(), train, hq.test, ks,
                                                     negatives, seed, hp.reporter()));
      hp.finish();
    }
  }
  if (!quiet)
    std::printf("evaluated in %s\n",
                format_seconds(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()).c_str());
  return 0;
}

}  // namespace towerrec::cli
