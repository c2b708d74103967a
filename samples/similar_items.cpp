// Sample: load a checkpoint written by `towerrec train` and serve
// item-to-item recommendations ("more like this").
//
//   towerrec train --data DATA --out MODEL
//   towerrec_sample_similar_items MODEL ITEM_ID [ITEM_ID ...]
//
// Similarity is the model's own score between two item embeddings: the dot
// product, or the cosine for a model trained with normalised outputs (the
// softmax loss's default).
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include "towerrec/api.h"

int main(int argc, char** argv) try {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s MODEL_DIR_OR_CKPT ITEM_ID [ITEM_ID ...]\n", argv[0]);
    return 2;
  }
  // load() rebuilds the model from the checkpoint alone (configuration, ID maps,
  // features and weights are all in it) on the chosen backend: "auto" takes a
  // GPU when there is one.
  towerrec::TrainedModel model = towerrec::TrainedModel::load(argv[1], "auto");
  std::printf("%s: %d items, backend %s\n", model.path().c_str(), model.n_items(),
              model.backend().describe().c_str());

  // Original item IDs to dense indices; an unknown ID throws an InputError
  // naming it.
  const std::vector<std::string> ids(argv + 2, argv + argc);
  const std::vector<int32_t> items = towerrec::lookup_ids(model.items(), ids, "command line", "item");

  // The 5 nearest items of each query (the query itself left out). A server
  // would keep `model` loaded and call this per request; the item embeddings
  // are computed on the first call and kept.
  const towerrec::TopK top = model.similar_items(items, 5);
  for (int64_t r = 0; r < top.rows; ++r) {
    std::printf("items most similar to %s:\n", ids[r].c_str());
    for (int q = 0; q < top.k; ++q) {
      const int32_t j = top.ids[r * top.k + q];
      if (j >= 0) std::printf("  %d. %s  %.4f\n", q + 1, model.items().id(j).c_str(), top.scores[r * top.k + q]);
    }
  }
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "error: %s\n", e.what());
  return 1;
}
