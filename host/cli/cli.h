// Shared pieces of the towerrec command-line tool.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "host/config_flags.h"
#include "towerrec/api.h"
#include "towerrec/backend.h"
#include "towerrec/checkpoint.h"
#include "towerrec/comm.h"
#include "towerrec/config.h"
#include "towerrec/data.h"
#include "towerrec/io.h"
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
int cmd_similar(const Args& args);
int cmd_serve(const Args& args);
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

// --delimiter C: the field separator of the CSV files a command reads
// (parse_delimiter's values; outputs are always comma-separated).
void add_delimiter_option(CLI::App& app, char& delimiter);

// `--distributed`: the ranks of an MPI launch (mpirun -np N towerrec ...).
// `control` carries host values (and the CPU backend's gradients);
// `gradients` is NCCL for a CUDA device when the build has it, else null.
// Started outside an MPI launcher it is one rank (a note says so), unless
// WORLD_SIZE asks for more (then an Error: the ranks must come from mpirun).
// RANK and WORLD_SIZE, where set, must agree with MPI's. `device` "cuda"
// becomes "cuda:LOCAL_RANK" (one GPU per rank).
struct DistributedRun {
  std::unique_ptr<Communicator> control, gradients;
  int rank() const { return control ? control->rank() : 0; }
  int size() const { return control ? control->size() : 1; }
};
void add_distributed_options(CLI::App& app, bool& distributed, double& timeout_s);
// `gradients`: also make the NCCL communicator (training; scoring needs none).
DistributedRun start_distributed(std::string& device, double timeout_s, bool quiet, bool gradients = true);
// Runs `body`; when it throws with several ranks, prints the error naming this
// rank and ends every rank (the others would wait on this one for ever).
int run_on_ranks(const DistributedRun& run, const char* cmd, const std::function<int()>& body);

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

// --quiet of the commands without configuration keys (train and tune have the
// key): no progress, no summary lines, no notes; results and errors still print.
void add_quiet_option(CLI::App& app, bool& quiet);

// Progress of one long step on stderr, e.g. "recommend: 12,288 / 29,858 users
// (41%)". On a terminal one line is rewritten in place (at most ten times a
// second); otherwise a plain line is printed at most every
// TOWERREC_PROGRESS_SECONDS seconds (default 10; 0: every update). finish()
// prints the final line with the time taken. Nothing at all when quiet.
class Progress {
 public:
  Progress(std::string label, std::string unit, int64_t total, bool quiet);
  ~Progress();  // ends a line left open on a terminal (an error then starts on its own line)
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;
  void set(int64_t done);
  void add(int64_t n) { set(done_ + n); }
  void set_total(int64_t total) { total_ = total; }
  // A callback (done, total) for the library's progress hooks.
  std::function<void(int64_t, int64_t)> reporter() {
    return [this](int64_t done, int64_t total) {
      total_ = total;
      set(done);
    };
  }
  void finish();

 private:
  void print(bool final);
  std::string label_, unit_;
  int64_t total_, done_ = 0;
  bool quiet_, tty_, open_ = false, finished_ = false;
  double start_, last_ = -1e30, interval_;
};

// 12345678 -> "12,345,678".
std::string group_digits(int64_t n);

// A trained model rebuilt from a checkpoint (include/towerrec/api.h).
using towerrec::LoadedModel;
using towerrec::load_model;

// Comma-separated positive cutoffs, e.g. "10,20".
std::vector<int> parse_ks(const std::string& s);

// Empty per-user item lists (nothing excluded).
UserItems no_items(int32_t n_users);

// Dense indices of the IDs in a list file: one ID per line, surrounding
// whitespace ignored, blank lines skipped, a first line that is `kind` or
// `kind`_id a header. An unknown ID is an InputError naming the file, line and
// field `kind`; an empty list is one unless allow_empty.
std::vector<int32_t> read_id_list(const std::string& path, const IdMap& map, const std::string& kind,
                                  bool allow_empty = false);

// --histories FILE of recommend and eval: an interaction CSV (header
// user,item[,rating][,timestamp]) giving each listed user's items. User IDs
// may be unknown to the model; an unknown item is an InputError naming the
// file, line and field. Rows rated below the model's rating threshold are
// dropped, as in training (and a user left with none).
struct HistoryFile {
  std::string path;
  IdMap users;      // the listed users, dense in order of first appearance
  UserItems items;  // each one's sorted, distinct items
  int64_t rows = 0, rows_dropped = 0;
  int32_t users_dropped = 0;
};
HistoryFile read_histories(const std::string& path, const LoadedModel& lm, char delimiter);

// The item filters of recommend and similar: --items FILE (allow list),
// --exclude FILE (deny list), --where CONDITION (column=value, column>=x, ...;
// repeatable, all must hold).
struct ItemFilterOptions {
  std::string allow_file, deny_file;
  std::vector<std::string> where;
  bool has_allow = false, has_deny = false;
  bool any() const { return has_allow || has_deny || !where.empty(); }
};
// Adds --exclude and --where; --items FILE too unless the command defines its own.
void add_item_filter_options(CLI::App& app, ItemFilterOptions& f, bool add_items = true);
// The candidates the filters leave, for rank_topk (restrict is false when no
// filter is given). Prints a note on stderr when none is left, unless quiet.
RankFilter make_item_filter(const LoadedModel& lm, const ItemFilterOptions& f, bool quiet = false);

// Refuses, before the model is loaded or anything ranked, an --out that cannot
// be written: a directory, or a file in a missing or read-only directory.
void check_writable(const std::string& out);

// The CSV output of recommend and similar: standard output for "-", else an
// atomic file that appears complete at commit() or not at all.
class CsvOutput {
 public:
  explicit CsvOutput(const std::string& out);
  void write(const std::string& text);
  void commit();
  bool to_stdout() const { return path_ == "-"; }
  // "standard output" or the file's name, for the closing line.
  std::string name() const { return to_stdout() ? "standard output" : path_; }

 private:
  std::string path_;
  std::unique_ptr<AtomicFile> file_;
};

// Appends CSV rows query,result,rank,score of one top-K block (original IDs,
// rank from 1, padding left out); returns the rows appended.
int64_t append_topk_rows(std::string& buf, const TopKBlock& b, const IdMap& queries, const IdMap& results);

void print_ranking(const std::string& label, const RankingMetrics& m);
void print_sampled(const std::string& label, const SampledMetrics& m);

}  // namespace towerrec::cli
