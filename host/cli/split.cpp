#include <chrono>
#include <cstdio>

#include "host/cli/cli.h"
#include "towerrec/error.h"
#include "towerrec/io.h"
#include "towerrec/split.h"

namespace towerrec::cli {

int cmd_split(const Args& args) {
  if (wants_help(args)) {
    std::printf(
        "usage: towerrec split --data PATH --out DIR [options]\n\n"
        "Splits the interactions of a data set into DIR/train.csv and DIR/test.csv\n"
        "(user,item[,rating][,timestamp], original IDs), so an experiment can be\n"
        "repeated. Train on them with `towerrec train --data PATH --train-file DIR/train.csv`\n"
        "and evaluate with `towerrec eval --model M --test DIR/test.csv`.\n\n"
        "options:\n"
        "  --data PATH             MovieLens dir, `towerrec synth` dir, or interactions CSV (required)\n"
        "  --out DIR               output directory (required)\n"
        "  --method M              ratio: a random fraction of each user's interactions [default]\n"
        "                          loo: each user's latest interaction (needs timestamps)\n"
        "                          temporal: the latest fraction of all interactions (needs timestamps)\n"
        "  --test-fraction F       test share for ratio and temporal [0.2]\n"
        "  --seed N                seed of the ratio split [42]\n"
        "  --rating-threshold X    keep interactions with rating >= X (as `train` does)\n"
        "  --user-features FILE    with a CSV --data, as for `train`\n"
        "  --item-features FILE\n");
    return 0;
  }
  const Options o(args, {{"data"}, {"out"}, {"method"}, {"test-fraction"}, {"seed"},
                         {"rating-threshold"}, {"user-features"}, {"item-features"}});
  Config cfg;
  cfg.data = o.require("data");
  const std::string out = o.require("out");
  const std::string method = o.get("method", "ratio");
  if (method != "ratio" && method != "loo" && method != "temporal")
    throw Error("--method: '" + method + "' is not one of ratio, loo, temporal");
  if (method == "loo" && o.has("test-fraction"))
    throw Error("--test-fraction does not apply to --method loo (one interaction per user)");
  const double fraction = o.get_double("test-fraction", 0.2, 0.0, 0.999999);
  const auto seed = static_cast<uint64_t>(o.get_int("seed", 42, 0, INT64_MAX));
  cfg.user_features = o.get("user-features");
  cfg.item_features = o.get("item-features");
  cfg.rating_threshold = static_cast<float>(o.get_double("rating-threshold", cfg.rating_threshold, -1e30, 1e30));
  cfg.features = false;  // only the interactions and their IDs are needed

  const auto t0 = std::chrono::steady_clock::now();
  const Dataset ds = load_dataset(cfg);
  const Split sp = split_by_method(method, ds.interactions, ds.users.size(), fraction, seed);
  make_directories(out);
  write_interactions_csv(out + "/train.csv", sp.train, ds.users, ds.items);
  write_interactions_csv(out + "/test.csv", sp.test, ds.users, ds.items);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("split %s (%s): %lld train, %lld test interactions -> %s/train.csv, %s/test.csv in %s\n",
              cfg.data.c_str(), method.c_str(), static_cast<long long>(sp.train.size()),
              static_cast<long long>(sp.test.size()), out.c_str(), out.c_str(),
              format_seconds(secs).c_str());
  return 0;
}

}  // namespace towerrec::cli
