// towerrec: train two-tower recommenders, rank all items for all users, and
// benchmark the kernels that do it.
#include <cstdio>
#include <exception>
#include <string>

#include "host/cli/cli.h"
#include "towerrec/error.h"

namespace {

const char* kUsage =
    "usage: towerrec <command> [options]\n"
    "\n"
    "commands:\n"
    "  synth      write a synthetic data set with planted structure\n"
    "  split      split a data set's interactions into train.csv and test.csv\n"
    "  train      train a two-tower model\n"
    "  eval       evaluate a trained model on held-out interactions\n"
    "  recommend  write every user's top-k items as CSV\n"
    "  similar    write each item's (or user's) most similar items (users) as CSV\n"
    "  serve      answer recommend and similar requests over HTTP/JSON\n"
    "  export     write user and item embeddings as .npy with their ID maps\n"
    "  tune       search configuration values on a validation split\n"
    "  info       show the build, the backends and the devices\n"
    "\n"
    "`towerrec <command> --help` lists a command's options.\n";

}  // namespace

int main(int argc, char** argv) {
  using namespace towerrec;
  if (argc < 2) {
    std::fputs(kUsage, stderr);
    return 2;
  }
  const std::string cmd = argv[1];
  cli::Args args(argv + 2, argv + argc);
  try {
    struct Command {
      const char* name;
      int (*run)(const cli::Args&);
    };
    static const Command kCommands[] = {
        {"synth", cli::cmd_synth},   {"split", cli::cmd_split},         {"train", cli::cmd_train},
        {"eval", cli::cmd_eval},     {"recommend", cli::cmd_recommend}, {"export", cli::cmd_export},
        {"similar", cli::cmd_similar}, {"tune", cli::cmd_tune},
#ifdef TOWERREC_HAVE_SERVE
        {"serve", cli::cmd_serve},
#endif
        {"info", cli::cmd_info},
    };
    for (const auto& c : kCommands)
      if (cmd == c.name) return c.run(args);
    if (cmd == "--help" || cmd == "-h" || cmd == "help") {
      std::fputs(kUsage, stdout);
      return 0;
    }
    if (cmd == "--version") {
      std::printf("towerrec %s\n", TOWERREC_VERSION);
      return 0;
    }
    std::fprintf(stderr, "towerrec: unknown command '%s'\n\n%s", cmd.c_str(), kUsage);
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "towerrec %s: error: %s\n", cmd.c_str(), e.what());
    return 1;
  }
}
