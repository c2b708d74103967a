#include <chrono>
#include <cstdio>

#include "host/cli/cli.h"
#include "towerrec/error.h"
#include "towerrec/export.h"

namespace towerrec::cli {

int cmd_export(const Args& args) {
  if (wants_help(args)) {
    std::printf(
        "usage: towerrec export --model DIR --out DIR2\n\n"
        "Writes the model's embeddings of every user and item for use elsewhere:\n"
        "  DIR2/user_embeddings.npy   float32 [users x dim], C order (NumPy .npy 1.0)\n"
        "  DIR2/item_embeddings.npy   float32 [items x dim]\n"
        "  DIR2/users.csv, items.csv  index,id: the original ID of each row\n"
        "score(u, i) is the dot product of the two rows.\n\n"
        "options:\n"
        "  --model DIR           directory with model.ckpt (or the checkpoint file) (required)\n"
        "  --out DIR2            output directory (required)\n"
        "  --device D            auto, cpu, cuda or cuda:N [auto]\n"
        "  --threads N           CPU threads (0: all cores) [0]\n");
    return 0;
  }
  const Options o(args, {{"model"}, {"out"}, {"device"}, {"threads"}});
  const std::string out = o.require("out");
  const auto t0 = std::chrono::steady_clock::now();
  LoadedModel lm = load_model(o.require("model"), o.get("device", "auto"),
                              static_cast<int>(o.get_int("threads", 0, 0, 4096)));
  export_embeddings(*lm.model, lm.ck.users, lm.ck.items, out);
  std::printf("wrote %s: %d user and %d item embeddings of dimension %d in %s\n", out.c_str(),
              lm.n_users(), lm.n_items(), lm.model->out_dim(),
              format_seconds(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()).c_str());
  return 0;
}

}  // namespace towerrec::cli
