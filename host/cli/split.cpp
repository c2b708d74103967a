#include <chrono>
#include <cstdio>

#include "host/cli/cli.h"
#include "towerrec/error.h"
#include "towerrec/io.h"
#include "towerrec/split.h"

namespace towerrec::cli {

int cmd_split(const Args& args) {
  CLI::App app(
      "Splits the interactions of a data set into DIR/train.csv and DIR/test.csv\n"
      "(user,item[,rating][,timestamp], original IDs), so an experiment can be\n"
      "repeated. Train on them with `towerrec train --data PATH --train-file DIR/train.csv`\n"
      "and evaluate with `towerrec eval --model M --test DIR/test.csv`.",
      "towerrec split");
  configure_app(app);
  Config cfg;
  std::string out, method = "ratio";
  double fraction = 0.2;
  uint64_t seed = 42;
  app.add_option("--data", cfg.data, "MovieLens dir, `towerrec synth` dir, or interactions CSV")->required();
  app.add_option("--out", out, "output directory")->required();
  app.add_option("--method", method,
                 "ratio: a random fraction of each user's interactions; loo: each user's latest "
                 "interaction (needs timestamps); temporal: the latest fraction of all interactions "
                 "(needs timestamps)")
      ->check(CLI::IsMember({"ratio", "loo", "temporal"}))
      ->capture_default_str();
  auto* fraction_opt = app.add_option("--test-fraction", fraction, "test share for ratio and temporal")
                           ->check(CLI::Range(0.0, 0.999999))
                           ->capture_default_str();
  app.add_option("--seed", seed, "seed of the ratio split")->capture_default_str();
  std::string threshold;
  app.add_option("--rating-threshold", threshold,
                 "keep interactions with rating >= X (as `train` does; none: every rating)");
  app.add_option("--user-features", cfg.user_features, "with a CSV --data, as for `train`");
  app.add_option("--item-features", cfg.item_features, "with a CSV --data, as for `train`");
  add_delimiter_option(app, cfg.delimiter);
  bool quiet = false;
  add_quiet_option(app, quiet);
  if (!parse_args(app, args)) return 0;
  // The same values and errors as train's key (a number, or none).
  if (!threshold.empty())
    for (const auto& k : config_keys())
      if (k.name == "rating-threshold") k.set(cfg, threshold);
  if (method == "loo" && fraction_opt->count())
    throw Error("--test-fraction does not apply to --method loo (one interaction per user)");
  cfg.features = false;  // only the interactions and their IDs are needed

  const auto t0 = std::chrono::steady_clock::now();
  const Dataset ds = load_dataset(cfg);
  const Split sp = split_by_method(method, ds.interactions, ds.users.size(), fraction, seed);
  make_directories(out);
  write_interactions_csv(out + "/train.csv", sp.train, ds.users, ds.items);
  write_interactions_csv(out + "/test.csv", sp.test, ds.users, ds.items);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (quiet) return 0;
  std::printf("split %s (%s): %lld train, %lld test interactions -> %s/train.csv, %s/test.csv in %s\n",
              cfg.data.c_str(), method.c_str(), static_cast<long long>(sp.train.size()),
              static_cast<long long>(sp.test.size()), out.c_str(), out.c_str(),
              format_seconds(secs).c_str());
  return 0;
}

}  // namespace towerrec::cli
