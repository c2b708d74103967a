#include <chrono>
#include <cstdio>

#include "host/cli/cli.h"
#include "towerrec/error.h"

namespace towerrec::cli {

int cmd_synth(const Args& args) {
  if (wants_help(args)) {
    std::printf(
        "usage: towerrec synth --out DIR [options]\n\n"
        "Writes DIR/interactions.csv, DIR/users.csv and DIR/items.csv: a data set with\n"
        "planted latent structure, features correlated with it, and popularity skew.\n\n"
        "options:\n"
        "  --out DIR                  output directory (required)\n"
        "  --users N                  [2000]\n"
        "  --items N                  [1000]\n"
        "  --interactions-per-user X  mean interactions per user [20]\n"
        "  --latent-dim N             planted factor dimension [8]\n"
        "  --popularity-skew X        Zipf exponent of item popularity [1.0]\n"
        "  --noise X                  feature noise [0.5]\n"
        "  --seed N                   [1]\n");
    return 0;
  }
  SynthOptions o;
  std::string out;
  for (size_t i = 0; i < args.size(); ++i) {
    std::string name = args[i], value;
    if (name.rfind("--", 0) != 0) throw Error("unexpected argument '" + name + "'");
    if (auto eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    } else {
      if (i + 1 >= args.size()) throw Error("option " + name + " needs a value");
      value = args[++i];
    }
    auto as_int = [&]() -> int64_t {
      size_t pos = 0;
      long long x = 0;
      try { x = std::stoll(value, &pos); } catch (...) { pos = 0; }
      if (pos != value.size() || x < 0) throw Error(name + ": expected a non-negative integer, got '" + value + "'");
      return x;
    };
    auto as_double = [&]() -> double {
      size_t pos = 0;
      double x = 0;
      try { x = std::stod(value, &pos); } catch (...) { pos = 0; }
      if (pos != value.size() || !(x >= 0)) throw Error(name + ": expected a non-negative number, got '" + value + "'");
      return x;
    };
    if (name == "--out") out = value;
    else if (name == "--users") o.users = as_int();
    else if (name == "--items") o.items = as_int();
    else if (name == "--interactions-per-user") o.interactions_per_user = as_double();
    else if (name == "--latent-dim") o.latent_dim = static_cast<int>(as_int());
    else if (name == "--popularity-skew") o.popularity_skew = as_double();
    else if (name == "--noise") o.noise = as_double();
    else if (name == "--seed") o.seed = static_cast<uint64_t>(as_int());
    else throw Error("unknown option " + name + " (see --help)");
  }
  if (out.empty()) throw Error("--out DIR is required");
  if (o.users < 1 || o.items < 2) throw Error("need at least 1 user and 2 items");
  const auto t0 = std::chrono::steady_clock::now();
  const SynthSummary s = write_synthetic(out, o);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("wrote %s: %lld users, %lld items, %lld interactions in %s\n", out.c_str(),
              static_cast<long long>(s.users), static_cast<long long>(s.items),
              static_cast<long long>(s.interactions), format_seconds(secs).c_str());
  return 0;
}

}  // namespace towerrec::cli
