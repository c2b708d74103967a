// Shared pieces of the towerrec command-line tool.
#pragma once

#include <memory>
#include <string>
#include <vector>

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

bool wants_help(const Args& args);

// Options of the commands that are not configuration keys: --name value,
// --name=value, or a bare --name for flags. Unknown options and missing values
// throw Error.
class Options {
 public:
  struct Spec {
    std::string name;  // without the leading dashes
    bool flag = false; // takes no value
    bool repeat = false;
  };
  Options(const Args& args, const std::vector<Spec>& specs);
  bool has(const std::string& name) const;
  std::string get(const std::string& name, const std::string& fallback = "") const;
  std::string require(const std::string& name) const;
  std::vector<std::string> all(const std::string& name) const;
  int64_t get_int(const std::string& name, int64_t fallback, int64_t lo, int64_t hi) const;
  double get_double(const std::string& name, double fallback, double lo, double hi) const;

 private:
  std::vector<std::pair<std::string, std::string>> values_;
};

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

// A trained model rebuilt from a checkpoint.
struct LoadedModel {
  std::string path;  // the checkpoint file
  Checkpoint ck;
  Config cfg;        // the configuration it was trained with
  std::unique_ptr<Backend> be;
  std::unique_ptr<TwoTowerModel> model;  // declared after be: destroyed first
  int32_t n_users() const { return ck.users.size(); }
  int32_t n_items() const { return ck.items.size(); }
};
// `model` is a directory holding model.ckpt, or a checkpoint file.
LoadedModel load_model(const std::string& model, const std::string& device, int threads);

// Comma-separated positive cutoffs, e.g. "10,20".
std::vector<int> parse_ks(const std::string& s);

// Empty per-user item lists (nothing excluded).
UserItems no_items(int32_t n_users);

void print_ranking(const std::string& label, const RankingMetrics& m);
void print_sampled(const std::string& label, const SampledMetrics& m);

}  // namespace towerrec::cli
