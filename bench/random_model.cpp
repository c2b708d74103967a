// towerrec_random_model: writes a model of any size without training, for the
// serving benchmarks (scripts/bench-serve --random): the default configuration
// without features, its weights as the model initialises them (seeded), users
// u0.. and items i0.., each user with a few distinct seen items, through the
// public checkpoint API, so `towerrec serve` and `recommend` load it as a
// trained model. The scores mean nothing; the work per request is the real one.
//
// usage: towerrec_random_model --out DIR --users N --items M [--seen S] [--seed X]
//   DIR/model.ckpt   the checkpoint
//   DIR/users.txt    the user IDs, one per line (for the benchmark's requests)
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "towerrec/checkpoint.h"
#include "towerrec/config.h"
#include "towerrec/io.h"
#include "towerrec/rng.h"
#include "towerrec/session.h"

namespace {

[[noreturn]] void usage() {
  std::fputs("usage: towerrec_random_model --out DIR --users N --items M [--seen S] [--seed X]\n", stderr);
  std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  using namespace towerrec;
  std::string out;
  int64_t n_users = 0, n_items = 0, seen_per_user = 5;
  uint64_t seed = 1;
  for (int a = 1; a < argc; ++a) {
    const std::string f = argv[a];
    if (a + 1 >= argc) usage();
    const char* v = argv[++a];
    if (f == "--out") out = v;
    else if (f == "--users") n_users = std::atoll(v);
    else if (f == "--items") n_items = std::atoll(v);
    else if (f == "--seen") seen_per_user = std::atoll(v);
    else if (f == "--seed") seed = std::strtoull(v, nullptr, 10);
    else usage();
  }
  if (out.empty() || n_users < 1 || n_items < 2 || seen_per_user < 1 || seen_per_user >= n_items) usage();
  try {
    Config cfg;
    cfg.features = false;
    cfg.train.seed = seed;
    cfg.threads = 0;
    cfg.device = "cpu";
    resolve_defaults(cfg);

    Checkpoint ck;
    ck.config_json = to_json(cfg);
    ck.epochs_done = 1;
    for (int64_t u = 0; u < n_users; ++u) ck.users.add("u" + std::to_string(u));
    for (int64_t i = 0; i < n_items; ++i) ck.items.add("i" + std::to_string(i));
    // Seen items: S distinct items per user, sorted (the checkpoint's CSR).
    ck.seen.offsets.assign(static_cast<size_t>(n_users) + 1, 0);
    for (int64_t u = 0; u < n_users; ++u) {
      std::vector<int32_t> s;
      for (uint64_t j = 0; static_cast<int64_t>(s.size()) < seen_per_user; ++j) {
        const auto it = static_cast<int32_t>(rng::below(seed, rng::kShuffle, static_cast<uint64_t>(u) * 1000 + j,
                                                        static_cast<uint64_t>(n_items)));
        bool dup = false;
        for (int32_t x : s) dup |= x == it;
        if (!dup) s.push_back(it);
      }
      std::sort(s.begin(), s.end());
      ck.seen.items.insert(ck.seen.items.end(), s.begin(), s.end());
      ck.seen.offsets[static_cast<size_t>(u) + 1] = static_cast<int64_t>(ck.seen.items.size());
    }
    auto be = make_backend("cpu", 0);
    auto model = build_model(*be, cfg, ck.user_features, ck.users.size(), ck.item_features, ck.items.size(),
                             &ck.seen);
    ck.state = model->save_state();
    make_directories(out);
    save_checkpoint(out + "/model.ckpt", ck);
    std::string ids;
    for (int64_t u = 0; u < n_users; ++u) ids += "u" + std::to_string(u) + "\n";
    write_file_atomic(out + "/users.txt", ids);
    std::printf("wrote %s/model.ckpt: %lld users, %lld items (random weights)\n", out.c_str(),
                static_cast<long long>(n_users), static_cast<long long>(n_items));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "towerrec_random_model: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
