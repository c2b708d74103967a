// Run configuration. Every key can be given on the command line (--key value or
// --key=value) or in a JSON file (--config FILE, keys spelled the same); flags
// given after --config override the file. The effective configuration is saved
// beside the model as config.json.
#pragma once

#include <cstdint>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include "towerrec/model.h"
#include "towerrec/trainer.h"

namespace towerrec {

struct Config {
  // data
  std::string data;                // MovieLens dir, synth dir, or interactions CSV
  std::string user_features;       // optional, for CSV input
  std::string item_features;       // optional, for CSV input
  char delimiter = ',';            // field separator of the CSV inputs
  float rating_threshold = -1e30f; // keep ratings >= this as positives
  bool features = true;            // use entity features
  std::string train_file;          // training interactions; IDs and features still come from data
  std::string validation_file;     // evaluation interactions (instead of a holdout split)
  double holdout = 0.0;            // per-user fraction held out for evaluation after training
  int eval_every = 0;              // evaluate the held-out split every N epochs (0: at the end)
  int early_stopping = 0;          // stop after N evaluations without a better nDCG@10 (0: off)
  uint64_t split_seed = 42;        // seed of the holdout split
  // model
  TowerConfig tower;
  // training
  TrainConfig train;
  int threads = 0;                 // CPU threads (0: all cores)
  std::string device = "auto";     // auto | cpu | cuda | cuda:N
  // ID-embedding tables under --distributed: replicated (every rank holds
  // the whole tables), rows (row r on rank r mod N) or auto (see
  // resolve_table_sharding in session.h). One rank always holds them whole.
  std::string table_sharding = "auto";
  // output
  std::string out = "model";       // output directory
  bool quiet = false;
  int64_t log_every = 50;          // progress line every N steps
  // Mid-epoch checkpoints (besides the one after every epoch): every N steps
  // and/or every M minutes of training (0: off).
  int64_t checkpoint_every_steps = 0;
  double checkpoint_every_minutes = 10;
  // Keys whose default depends on the loss ("auto"): negatives (0 for softmax,
  // whose negatives are the batch's other items; 4 otherwise) and normalize
  // (on for softmax, whose temperature scales cosine scores; off otherwise).
  bool negatives_auto = true;
  std::string normalize = "auto";
  // Keys whose default depends on the training data ("auto", the default):
  // hidden, id-dim, dim and epochs, filled by resolve_data_defaults when a
  // training session has read its data. Giving a key a value (flag, JSON or
  // the Python keyword) takes it out of this set. A field that code has set
  // directly to something other than its built-in default is kept as well.
  // (resolve_defaults adds "negatives" when it resolves an in-batch loss's
  // "auto" negatives: their sampled pool depends on the data too.)
  std::set<std::string> data_auto = {"hidden", "id-dim", "dim", "epochs", "embedding-decay"};
};

// What resolve_data_defaults reads of the training data.
struct DataShape {
  int64_t users = 0, items = 0, interactions = 0;  // the training interactions
  double density() const {
    return users > 0 && items > 0 ? double(interactions) / (double(users) * double(items)) : 0.0;
  }
};

// Below this density of the user x item matrix a data set counts as sparse.
inline constexpr double kSparseDensity = 0.01;
// Sparse data: the softmax and ccl losses' sampled negatives per positive
// (uniform items that join the batch's, mixed negative sampling) and the ID
// rows' decoupled weight decay.
inline constexpr int kSparseNegatives = 1;
inline constexpr float kSparseEmbeddingDecay = 4.0f;

// Fills the keys still in cfg.data_auto from the data's shape and empties the
// set. Dense data (density >= kSparseDensity, e.g. MovieLens-100k at 4.7%):
// hidden 128,64, id-dim 64, dim 64, 30 epochs, embedding decay 2, no sampled
// negatives for softmax/ccl. Sparse data (e.g. Gowalla at 0.05%): one linear
// layer over a 128-wide ID embedding to dim 128, 20 epochs, embedding decay
// kSparseEmbeddingDecay and kSparseNegatives sampled negatives for softmax/ccl.
// Returns a line saying what it chose ("" when nothing was auto).
std::string resolve_data_defaults(Config& cfg, const DataShape& shape);

// Resolves the "auto" keys from the loss. Call once all flags and files are
// applied, before building a model or trainer.
void resolve_defaults(Config& cfg);

// One configuration key: its name, help text, and how to read and write it.
struct ConfigKey {
  std::string name;
  std::string help;
  std::function<void(Config&, const std::string&)> set;  // throws Error on a bad value
  std::function<std::string(const Config&)> get;          // JSON literal
  bool is_bool = false;  // a bare --name means true
  std::string value_name = "VALUE";  // what the value is, in help: N, X, a|b, ...
};

const std::vector<ConfigKey>& config_keys();

// The value of a --delimiter flag or key: one character other than a quote or
// a line break; "tab" and "\t" name the tab. Throws Error naming `flag`.
char parse_delimiter(const std::string& flag, const std::string& v);

// Applies flags (argv-style, without the program and command names: --name
// value, --name=value, a bare --name for the boolean keys; CLI11, as the
// towerrec commands parse them). Returns the positional arguments. Handles
// --config FILE in place. Throws Error on an unknown key or a bad value.
std::vector<std::string> apply_flags(Config& cfg, const std::vector<std::string>& args);
// Applies a JSON object (file contents). `source` names it in errors.
void apply_json(Config& cfg, const std::string& json_text, const std::string& source);
// The whole configuration as pretty JSON.
std::string to_json(const Config& cfg);

}  // namespace towerrec
