// Shared pieces of the towerrec command-line tool.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "towerrec/backend.h"
#include "towerrec/config.h"
#include "towerrec/data.h"
#include "towerrec/model.h"
#include "towerrec/trainer.h"

namespace towerrec::cli {

using Args = std::vector<std::string>;

int cmd_synth(const Args& args);
int cmd_train(const Args& args);
int cmd_info(const Args& args);

bool wants_help(const Args& args);

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

std::string format_seconds(double s);

// Loads the dataset a configuration names.
Dataset load_dataset(const Config& cfg);

}  // namespace towerrec::cli
