#include <chrono>
#include <cstdio>

#include "host/cli/cli.h"
#include "towerrec/error.h"
#include "towerrec/recommend.h"

namespace towerrec::cli {

int cmd_eval(const Args& args) {
  if (wants_help(args)) {
    std::printf(
        "usage: towerrec eval --model DIR --test FILE [options]\n\n"
        "Evaluates a trained model on held-out interactions (a CSV with header\n"
        "user,item[,rating][,timestamp], e.g. from `towerrec split`; every ID must be\n"
        "known to the model, rows with rating below the model's --rating-threshold are\n"
        "dropped).\n\n"
        "options:\n"
        "  --model DIR           directory with model.ckpt (or the checkpoint file) (required)\n"
        "  --test FILE           held-out interactions (required)\n"
        "  --train FILE          interactions excluded from the ranking (and from the\n"
        "                        negatives); default: the training interactions stored in\n"
        "                        the checkpoint\n"
        "  --include-seen        exclude nothing: rank every item\n"
        "  --protocol P          full: rank all items [default]\n"
        "                        sampled: each test positive among --negatives unseen items\n"
        "  --k LIST              cutoffs [10,20]\n"
        "  --negatives N         sampled protocol: negatives per positive [100]\n"
        "  --seed N              sampled protocol: seed of the negatives [42]\n"
        "  --device D            auto, cpu, cuda or cuda:N [auto]\n"
        "  --threads N           CPU threads (0: all cores) [0]\n");
    return 0;
  }
  const Options o(args, {{"model"}, {"test"}, {"train"}, {"include-seen", true}, {"protocol"},
                         {"k"}, {"negatives"}, {"seed"}, {"device"}, {"threads"}});
  const std::string protocol = o.get("protocol", "full");
  if (protocol != "full" && protocol != "sampled")
    throw Error("--protocol: '" + protocol + "' is not one of full, sampled");
  if (o.has("train") && o.has("include-seen"))
    throw Error("--train and --include-seen exclude each other");
  if (protocol == "full" && (o.has("negatives") || o.has("seed")))
    throw Error("--negatives and --seed apply to --protocol sampled only");
  const std::vector<int> ks = parse_ks(o.get("k", "10,20"));
  const int negatives = static_cast<int>(o.get_int("negatives", 100, 1, 1000000));
  const auto seed = static_cast<uint64_t>(o.get_int("seed", 42, 0, INT64_MAX));
  const std::string test_path = o.require("test");

  const auto t0 = std::chrono::steady_clock::now();
  LoadedModel lm = load_model(o.require("model"), o.get("device", "auto"),
                              static_cast<int>(o.get_int("threads", 0, 0, 4096)));
  const int32_t nu = lm.n_users(), ni = lm.n_items();
  const Interactions test_rows = read_known_interactions(test_path, lm.ck.users, lm.ck.items,
                                                         lm.cfg.rating_threshold);
  const UserItems test = group_by_user(test_rows, nu);
  UserItems train;
  std::string excluded;
  if (o.has("include-seen")) {
    train = no_items(nu);
    excluded = "nothing excluded";
  } else if (o.has("train")) {
    train = group_by_user(read_known_interactions(o.get("train"), lm.ck.users, lm.ck.items,
                                                  lm.cfg.rating_threshold), nu);
    excluded = "excluding " + o.get("train");
  } else if (lm.ck.has_seen()) {
    train = lm.ck.seen;
    excluded = "excluding the checkpoint's training interactions";
  } else {
    throw Error(lm.path + " stores no training interactions: give --train FILE or --include-seen");
  }
  DeviceArray<float> U, V;
  lm.model->embed_all_users(U);
  lm.model->embed_all_items(V);
  std::printf("model %s: %d users, %d items, %d epochs; test %s: %lld interactions (%s)\n",
              lm.path.c_str(), nu, ni, lm.ck.epochs_done, test_path.c_str(),
              static_cast<long long>(test_rows.size()), excluded.c_str());
  if (protocol == "full") {
    const RankingMetrics m = evaluate_ranking(*lm.be, U, V, nu, ni, lm.model->out_dim(), train, test, ks);
    print_ranking("test", m);
    // Warm and cold users (no training interactions in the checkpoint) apart.
    if (lm.ck.has_seen()) {
      const std::vector<char> cold = cold_users(lm.ck.seen);
      const UserItems cold_test = select_users(test, cold, 1);
      if (!cold_test.items.empty()) {
        print_ranking("test-warm", evaluate_ranking(*lm.be, U, V, nu, ni, lm.model->out_dim(), train,
                                                    select_users(test, cold, 0), ks));
        print_ranking("test-cold", evaluate_ranking(*lm.be, U, V, nu, ni, lm.model->out_dim(), train,
                                                    cold_test, ks));
      }
    }
    const RankingMetrics pop = evaluate_popularity(train, test, ni, ks);
    for (size_t j = 0; j < pop.ks.size(); ++j)
      std::printf("popularity@%d  recall %.4f  ndcg %.4f\n", pop.ks[j], pop.recall[j], pop.ndcg[j]);
  } else {
    const SampledMetrics m = evaluate_sampled(*lm.be, U, V, nu, ni, lm.model->out_dim(), train,
                                              test, ks, negatives, seed);
    print_sampled("test", m);
  }
  std::printf("evaluated in %s\n",
              format_seconds(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()).c_str());
  return 0;
}

}  // namespace towerrec::cli
