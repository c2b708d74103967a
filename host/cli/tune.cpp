// `towerrec tune`: grid or random search over named configuration ranges,
// each trial trained on the training part of a validation split (carved from
// the training data, never from a test file) and scored by validation nDCG@10.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <numeric>
#include <sstream>

#include <nlohmann/json.hpp>

#include "host/cli/cli.h"
#include "towerrec/error.h"
#include "towerrec/io.h"
#include "towerrec/recommend.h"
#include "towerrec/rng.h"
#include "towerrec/split.h"

namespace towerrec::cli {

namespace {

struct Param {
  std::string key;
  std::vector<std::string> values;
};

Param parse_param(const std::string& spec) {
  const auto eq = spec.find('=');
  if (eq == std::string::npos || eq == 0 || eq + 1 == spec.size())
    throw Error("--param: expected KEY=V1,V2,..., got '" + spec + "'");
  Param p;
  p.key = spec.substr(0, eq);
  bool known = false;
  for (const auto& k : config_keys()) known |= k.name == p.key;
  if (!known) throw Error("--param: unknown configuration key '" + p.key + "'");
  // Values are separated by ',' except inside a value written as "a,b" for list
  // keys such as hidden: use ';' between values when a value contains commas.
  const char sep = spec.find(';', eq) != std::string::npos ? ';' : ',';
  std::stringstream ss(spec.substr(eq + 1));
  std::string v;
  while (std::getline(ss, v, sep))
    if (!v.empty()) p.values.push_back(v);
  if (p.values.empty()) throw Error("--param " + p.key + ": no values");
  return p;
}

// Keys of the data and of the run, not of the model or its training: never
// in the best configuration unless searched (a --config FILE of it then
// trains on the whole data, into train's own --out).
const char* const kNotModelKeys[] = {
    "data", "user-features", "item-features", "train-file", "validation-file", "holdout",
    "split-seed", "eval-every", "early-stopping", "threads", "device", "out", "quiet",
    "log-every", "checkpoint-every-steps", "checkpoint-every-minutes", "planner-threads"};

// The best configuration as JSON: the searched keys, and the other model and
// training keys the base configuration set away from their defaults.
std::string best_json(const Config& best, const Config& base, const std::vector<Param>& params) {
  const Config def;  // base is unresolved too: "auto" matches "auto"
  std::vector<std::string> lines;
  for (const auto& k : config_keys()) {
    bool searched = false;
    for (const auto& p : params) searched |= p.key == k.name;
    bool model_key = true;
    for (const char* n : kNotModelKeys) model_key &= k.name != n;
    if (searched || (model_key && k.get(base) != k.get(def)))
      lines.push_back("  \"" + k.name + "\": " + k.get(best));
  }
  std::string s = "{\n";
  for (size_t i = 0; i < lines.size(); ++i) s += lines[i] + (i + 1 < lines.size() ? ",\n" : "\n");
  return s + "}\n";
}

}  // namespace

int cmd_tune(const Args& args) {
  CLI::App app(
      "Trains one model per trial on a validation split carved from the training data\n"
      "(--validation F, default 0.2, seeded by --split-seed), prints a table of\n"
      "validation metrics and writes the best configuration as JSON. Every\n"
      "configuration key of `towerrec train` sets the base configuration.",
      "towerrec tune");
  configure_app(app);
  std::vector<Param> params;
  int64_t trials = 0;
  uint64_t tune_seed = 1;
  std::string best_path = "best-config.json";
  Config base;
  app.add_option_function<std::string>("--param", [&](const std::string& v) { params.push_back(parse_param(v)); },
                                        "values to try for a configuration key (repeatable; use ';' between "
                                        "values that contain commas, e.g. hidden=128,64;256)")
      ->trigger_on_parse()
      ->option_text("KEY=V1,V2,...");
  app.add_option("--trials", trials, "random trials from the grid (0: the whole grid)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--tune-seed", tune_seed, "seed of the random choice of trials")->capture_default_str();
  app.add_option("--best", best_path,
                 "where to write the best configuration: the searched keys and the model and "
                 "training keys set away from their defaults (no data, --validation or --out)")
      ->capture_default_str();
  std::string json_path;
  app.add_option("--json", json_path,
                 "also write every trial (values, nDCG@10, Recall@10, seconds) and the best as JSON "
                 "to this file, rewritten after each trial");
  add_validation_option(app, base);
  add_config_options(app, base);
  if (!parse_args(app, args)) return 0;
  if (params.empty()) throw Error("give at least one --param KEY=V1,V2,...");
  if (base.holdout <= 0) base.holdout = 0.2;

  // Check every value parses before any training.
  for (const auto& p : params)
    for (const auto& v : p.values) {
      Config c = base;
      for (const auto& k : config_keys())
        if (k.name == p.key) k.set(c, v);
    }

  Dataset ds = load_dataset(base);
  if (!base.train_file.empty())
    ds.interactions = read_known_interactions(base.train_file, ds.users, ds.items, base.rating_threshold, base.delimiter);
  const int32_t n_users = ds.users.size(), n_items = ds.items.size();
  const Split sp = split_per_user_ratio(ds.interactions, n_users, base.holdout, base.split_seed);
  const UserItems seen = group_by_user(sp.train, n_users);
  const UserItems held = group_by_user(sp.test, n_users);

  // The grid, in row-major order of the --param list.
  int64_t grid = 1;
  for (const auto& p : params) grid *= static_cast<int64_t>(p.values.size());
  std::vector<int64_t> order(static_cast<size_t>(grid));
  std::iota(order.begin(), order.end(), 0);
  if (trials > 0 && trials < grid) {
    for (int64_t j = grid - 1; j > 0; --j)
      std::swap(order[j], order[rng::below(tune_seed, rng::kShuffle, static_cast<uint64_t>(j),
                                           static_cast<uint64_t>(j + 1))]);
    order.resize(static_cast<size_t>(trials));
  }
  auto be = make_backend(base.device, base.threads);
  std::printf("%-5s", "trial");
  for (const auto& p : params) std::printf("  %-14s", p.key.c_str());
  std::printf("  %-8s  %-9s  %s\n", "ndcg@10", "recall@10", "seconds");
  double best = -1;
  Config best_cfg = base;
  nlohmann::ordered_json report;
  report["trials"] = nlohmann::json::array();
  for (size_t t = 0; t < order.size(); ++t) {
    Config c = base;
    c.quiet = true;
    std::vector<std::string> chosen;
    int64_t code = order[t];
    for (size_t q = params.size(); q-- > 0;) {
      const auto& p = params[q];
      const std::string& v = p.values[static_cast<size_t>(code % static_cast<int64_t>(p.values.size()))];
      code /= static_cast<int64_t>(p.values.size());
      for (const auto& k : config_keys())
        if (k.name == p.key) k.set(c, v);
      chosen.insert(chosen.begin(), v);
    }
    resolve_defaults(c);
    resolve_data_defaults(c, DataShape{n_users, n_items, sp.train.size()});
    const auto t0 = std::chrono::steady_clock::now();
    auto model = build_model(*be, c, ds.user_features, n_users, ds.item_features, n_items, &seen);
    Trainer trainer(*model, sp.train, c.train);
    const int64_t steps = trainer.steps_per_epoch();
    Progress progress("tune trial " + std::to_string(t + 1) + "/" + std::to_string(order.size()), "steps",
                      steps * c.train.epochs, base.quiet);
    // The step hook reads no loss, so reporting costs no device sync.
    trainer.set_step_hook([&](const TrainPosition& next, const std::function<double()>&) {
      progress.set(next.epoch * steps + next.step);
      return true;
    });
    for (int e = 0; e < c.train.epochs; ++e) {
      trainer.train_epoch();
      progress.set((e + 1) * steps);
    }
    progress.finish();
    const RankingMetrics m = evaluate_ranking(*model, seen, held, {10});
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("%-5zu", t + 1);
    for (const auto& v : chosen) std::printf("  %-14s", v.c_str());
    std::printf("  %-8.4f  %-9.4f  %.1f\n", m.ndcg[0], m.recall[0], secs);
    std::fflush(stdout);
    if (m.ndcg[0] > best) {
      best = m.ndcg[0];
      best_cfg = c;
      best_cfg.quiet = base.quiet;
      report["best_trial"] = t + 1;
    }
    if (!json_path.empty()) {
      nlohmann::ordered_json trial, values;
      for (size_t q = 0; q < params.size(); ++q) values[params[q].key] = chosen[q];
      trial["trial"] = t + 1;
      trial["values"] = values;
      trial["ndcg@10"] = m.ndcg[0];
      trial["recall@10"] = m.recall[0];
      trial["seconds"] = secs;
      report["trials"].push_back(trial);
      write_file_atomic(json_path, report.dump(1) + "\n");
    }
  }
  write_file_atomic(best_path, best_json(best_cfg, base, params));
  std::printf("best validation nDCG@10 %.4f; configuration written to %s\n", best, best_path.c_str());
  return 0;
}

}  // namespace towerrec::cli
