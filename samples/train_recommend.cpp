// Sample: train a two-tower model from code on synthetic data, then recommend.
//
//   towerrec_sample_train_recommend [DIR]      (default DIR: sample-train-recommend)
//
// Builds against the installed package with
//   find_package(towerrec REQUIRED)
//   target_link_libraries(app PRIVATE towerrec::towerrec)
#include <cstdio>
#include <exception>
#include <string>

#include "towerrec/api.h"    // TrainedModel, train(), load_model()
#include "towerrec/data.h"   // write_synthetic

int main(int argc, char** argv) try {
  const std::string dir = argc > 1 ? argv[1] : "sample-train-recommend";

  // 1. Data. Any input `towerrec train --data` reads works here: a MovieLens
  //    directory, a CSV file user,item[,rating][,timestamp], or, as here, the
  //    synthetic set `towerrec synth` writes (interactions.csv, users.csv and
  //    items.csv with user and item features).
  towerrec::SynthOptions synth;
  synth.users = 800;
  synth.items = 400;
  synth.interactions_per_user = 15;
  synth.seed = 7;
  towerrec::write_synthetic(dir + "/data", synth);

  // 2. Configuration: the struct behind every `towerrec train` flag; defaults
  //    are the command line's. Keys can also come as flags or JSON text
  //    (towerrec::apply_flags, towerrec::apply_json).
  towerrec::Config cfg;
  cfg.data = dir + "/data";
  cfg.out = dir + "/model";       // model.ckpt and config.json go here
  cfg.train.epochs = 3;
  cfg.holdout = 0.2;              // hold out 20% of each user's rows for evaluation
  cfg.device = "cpu";
  cfg.quiet = true;

  // 3. Train. The callbacks report progress; every one is optional.
  towerrec::SessionCallbacks cb;
  cb.epoch_done = [](const towerrec::EpochStats& s, double, int64_t) {
    std::printf("epoch %d  loss %.4f  %.0f samples/s\n", s.epoch, s.loss, s.samples_per_s);
  };
  towerrec::TrainedModel model = towerrec::train(cfg, cb);
  std::printf("trained: %d users, %d items, %d-dimensional embeddings\n", model.n_users(),
              model.n_items(), model.dim());

  // 4. Recommend: original IDs in, dense indices inside, original IDs out.
  //    Seen (training) items are left out by default; deny and allow lists
  //    restrict the candidates further.
  const std::vector<int32_t> users = towerrec::lookup_ids(model.users(), {"u0", "u1", "u2"}, "sample", "user");
  towerrec::RecommendFilter filter;
  filter.deny = {model.items().find("i0")};   // never recommend item i0
  const towerrec::TopK top = model.recommend(users, 5, filter);
  for (int64_t r = 0; r < top.rows; ++r) {
    std::printf("user %s:", model.users().id(users[r]).c_str());
    for (int q = 0; q < top.k; ++q) {
      const int32_t item = top.ids[r * top.k + q];
      if (item >= 0) std::printf("  %s (%.3f)", model.items().id(item).c_str(), top.scores[r * top.k + q]);
    }
    std::printf("\n");
  }

  // 5. The same checkpoint the command line reads: `towerrec recommend
  //    --model DIR/model` gives these users the same lists.
  std::printf("checkpoint: %s\n", model.path().c_str());
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "error: %s\n", e.what());
  return 1;
}
