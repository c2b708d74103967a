#include <chrono>
#include <cstdio>

#include "host/cli/cli.h"
#include "towerrec/data.h"
#include "towerrec/error.h"

namespace towerrec::cli {

int cmd_synth(const Args& args) {
  CLI::App app(
      "Writes DIR/interactions.csv, DIR/users.csv and DIR/items.csv: a data set with\n"
      "planted latent structure, features correlated with it, and popularity skew.",
      "towerrec synth");
  configure_app(app);
  SynthOptions o;
  std::string out;
  app.add_option("--out", out, "output directory")->required();
  app.add_option("--users", o.users)->check(CLI::NonNegativeNumber)->capture_default_str();
  app.add_option("--items", o.items)->check(CLI::NonNegativeNumber)->capture_default_str();
  app.add_option("--interactions-per-user", o.interactions_per_user, "mean interactions per user")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--latent-dim", o.latent_dim, "planted factor dimension")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--popularity-skew", o.popularity_skew, "Zipf exponent of item popularity")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--noise", o.noise, "feature noise")->check(CLI::NonNegativeNumber)->capture_default_str();
  app.add_option("--seed", o.seed)->capture_default_str();
  bool quiet = false;
  add_quiet_option(app, quiet);
  if (!parse_args(app, args)) return 0;
  if (o.users < 1 || o.items < 2) throw Error("need at least 1 user and 2 items");
  const auto t0 = std::chrono::steady_clock::now();
  const SynthSummary s = write_synthetic(out, o);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (quiet) return 0;
  std::printf("wrote %s: %lld users, %lld items, %lld interactions in %s\n", out.c_str(),
              static_cast<long long>(s.users), static_cast<long long>(s.items),
              static_cast<long long>(s.interactions), format_seconds(secs).c_str());
  return 0;
}

}  // namespace towerrec::cli
