#include <chrono>
#include <cstdio>

#include "host/cli/cli.h"
#include "towerrec/error.h"
#include "towerrec/export.h"

namespace towerrec::cli {

int cmd_export(const Args& args) {
  CLI::App app(
      "Writes the model's embeddings of every user and item for use elsewhere:\n"
      "  DIR2/user_embeddings.npy   float32 [users x dim], C order (NumPy .npy 1.0)\n"
      "  DIR2/item_embeddings.npy   float32 [items x dim]\n"
      "  DIR2/users.csv, items.csv  index,id: the original ID of each row\n"
      "  DIR2/seen_offsets.npy      int64 [users + 1]: CSR offsets of each user's\n"
      "  DIR2/seen_items.npy        int32: training items (item rows), sorted per user\n"
      "score(u, i) is the dot product of the two rows. The seen items, which eval and\n"
      "recommend exclude, let a nearest-neighbour index filter them the same way.",
      "towerrec export");
  configure_app(app);
  std::string model, out;
  DeviceOptions dev;
  app.add_option("--model", model, "directory with model.ckpt (or the checkpoint file)")->required();
  app.add_option("--out", out, "output directory")->required()->option_text("DIR2");
  add_device_options(app, dev);
  bool quiet = false;
  add_quiet_option(app, quiet);
  if (!parse_args(app, args)) return 0;
  const auto t0 = std::chrono::steady_clock::now();
  LoadedModel lm = load_model(model, dev.device, dev.threads);
  Progress progress("export", "embeddings", int64_t{lm.n_users()} + lm.n_items(), quiet);
  export_embeddings(*lm.model, lm.ck.users, lm.ck.items, out,
                    [&](int64_t done, int64_t) { progress.set(done); });
  std::string seen = "no seen items (the checkpoint stores none)";
  if (lm.ck.has_seen()) {
    export_seen(lm.ck.seen, out);
    seen = std::to_string(lm.ck.seen.items.size()) + " seen items";
  }
  progress.finish();
  if (quiet) return 0;
  std::printf("wrote %s: %d user and %d item embeddings of dimension %d, %s in %s\n", out.c_str(),
              lm.n_users(), lm.n_items(), lm.model->out_dim(), seen.c_str(),
              format_seconds(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()).c_str());
  return 0;
}

}  // namespace towerrec::cli
