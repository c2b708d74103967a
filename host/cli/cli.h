// Shared pieces of the towerrec command-line tool.
#pragma once

#include <CLI/CLI.hpp>
#include <memory>
#include <string>
#include <vector>

#include "host/config_flags.h"
#include "towerrec/api.h"
#include "towerrec/backend.h"
#include "towerrec/checkpoint.h"
#include "towerrec/config.h"
#include "towerrec/data.h"
#include "towerrec/model.h"
#include "towerrec/recommend.h"
#include "towerrec/session.h"
#include "towerrec/trainer.h"

namespace towerrec::cli {

using Args = std::vector<std::string>;

int cmd_synth(const Args& args);
int cmd_split(const Args& args);
int cmd_train(const Args& args);
int cmd_eval(const Args& args);
int cmd_recommend(const Args& args);
int cmd_export(const Args& args);
int cmd_tune(const Args& args);
int cmd_info(const Args& args);

// --validation F: the same as the configuration key --holdout F (train, tune).
void add_validation_option(CLI::App& app, Config& cfg);

// --device and --threads of the commands that load a trained model.
struct DeviceOptions {
  std::string device = "auto";
  int threads = 0;
};
void add_device_options(CLI::App& app, DeviceOptions& d);

// Prints progress on stderr: a refreshed line on a terminal, plain lines otherwise.
class ProgressPrinter {
 public:
  explicit ProgressPrinter(bool quiet);
  void update(const TrainProgress& p, int64_t total_steps_done, int64_t total_steps,
              double total_seconds);
  void epoch_done(const EpochStats& s, double total_seconds, int64_t steps_left);

 private:
  bool quiet_, tty_;
};

// A trained model rebuilt from a checkpoint (include/towerrec/api.h).
using towerrec::LoadedModel;
using towerrec::load_model;

// Comma-separated positive cutoffs, e.g. "10,20".
std::vector<int> parse_ks(const std::string& s);

// Empty per-user item lists (nothing excluded).
UserItems no_items(int32_t n_users);

void print_ranking(const std::string& label, const RankingMetrics& m);
void print_sampled(const std::string& label, const SampledMetrics& m);

}  // namespace towerrec::cli
