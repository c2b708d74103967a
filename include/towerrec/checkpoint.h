// Checkpoints: everything needed to use or resume a model, in one versioned,
// checksummed binary file written atomically (temp file, fsync, rename).
//
// Layout (little-endian):
//   "TOWERREC" | u32 version | u32 section count
//   per section: u32 name length | name | u64 payload length | payload
//   u32 CRC-32 (zlib) of every byte before it
// Sections: config (JSON text), meta (epochs done), users, items (ID lists),
// user_features, item_features, state (named float tensors: parameters and
// optimizer moments), and seen (each user's training items, CSR; written only
// when present), position (the next step within the epoch after the last
// completed one and that epoch's loss sum so far: a mid-epoch checkpoint;
// absent in files written before it existed, which then mean step 0). Unknown sections are skipped, so later versions can add
// sections without breaking older readers of the same major version.
//
// Row-sharded checkpoints (training with --table-sharding rows on N ranks):
// the ID tables and their Adam moments are not in the main file. Each rank q
// writes its rows (r with r % N == q, in local order r / N) of both towers to
// its own shard file PATH.rows-Q-of-N.ID (ID: 16 hex digits naming the save,
// the same for every file of one save), in the same container with a
// `shard` section (save ID, rank, rank count, table rows) and a `state`
// section (the tensors "user.id", "user.id_adam_m", ... of its rows). Once
// every shard is durable, rank 0 writes PATH itself, with format version 2
// and a `table_shards` section (save ID, N, and per shard its file name
// relative to PATH's directory, size and CRC-32 trailer) in place of the ID
// tensors in `state`. A crash between the two leaves the previous PATH with
// its own (differently named) shards; shards no longer named by PATH are
// removed after it is written. Replicated and one-rank runs write version 1
// files, all tables inside, as before.
#pragma once

#include <string>

#include "towerrec/data.h"
#include "towerrec/model.h"
#include "towerrec/recommend.h"

namespace towerrec {

inline constexpr uint32_t kCheckpointVersion = 1;
inline constexpr uint32_t kShardedCheckpointVersion = 2;  // tables in shard files

// One shard file of a row-sharded checkpoint, as the main file records it.
struct TableShardFile {
  std::string name;    // file name, in the main file's directory
  uint64_t size = 0;   // bytes
  uint32_t crc = 0;    // the file's CRC-32 trailer
};

struct Checkpoint {
  std::string config_json;
  int32_t epochs_done = 0;
  // Mid-epoch position: steps of epoch `epochs_done` (0-based) already run,
  // and the sum of their mean losses. 0 at an epoch boundary.
  int64_t step = 0;
  double epoch_loss_sum = 0;
  IdMap users, items;
  EntityFeatures user_features, item_features;
  TwoTowerModel::State state;
  // Items each user interacted with in the training data (what `recommend`
  // excludes by default). Empty (no offsets) when the writer had none.
  UserItems seen;
  bool has_seen() const { return !seen.offsets.empty(); }
  // Set by load_checkpoint: the rank count of the shard files the tables were
  // read from (0: the tables were in the main file), and the save ID.
  int32_t table_shards = 0;
  uint64_t save_id = 0;
};

// A version-1 file with everything in it (ck.state: the whole tables).
void save_checkpoint(const std::string& path, const Checkpoint& ck);

// Row-sharded save, step 1, on every rank: writes this rank's shard file of
// the save `save_id` (atomic), from `local` (a rows-mode save_state(): only
// the ID tensors are written). Returns what the main file records of it.
TableShardFile save_table_shard(const std::string& path, uint64_t save_id,
                                const TwoTowerModel::State& local, int32_t n_users, int32_t n_items);
// The shard file name of rank `rank` of `ranks` for save `save_id` of `path`.
std::string table_shard_name(const std::string& path, uint64_t save_id, int rank, int ranks);
// Step 2, on rank 0 once every shard is durable: the main file (version 2),
// ck.state holding no ID tensors (they are skipped if present); then removes
// the shard files of PATH that `shards` does not name.
void save_sharded_checkpoint(const std::string& path, const Checkpoint& ck, uint64_t save_id,
                             const std::vector<TableShardFile>& shards);
// Removes PATH's shard files (PATH.rows-*) except those named in `keep`;
// after a version-1 PATH replaced a sharded one, call with none kept.
void remove_table_shards(const std::string& path, const std::vector<TableShardFile>& keep = {});

// Throws Error naming the file on a missing, truncated, corrupted or foreign
// file; for a row-sharded checkpoint also on a missing, truncated, corrupted
// or foreign shard file (one from another save), naming that file. `rows`:
// the ID tensors of the returned state hold only those rows (state.rows);
// each shard file is read whole but only its rows for `rows` are kept, so no
// whole table is held when rows.ranks > 1. Default: the whole tables.
Checkpoint load_checkpoint(const std::string& path, TableShard rows = {});

}  // namespace towerrec
