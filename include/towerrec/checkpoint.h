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
#pragma once

#include <string>

#include "towerrec/data.h"
#include "towerrec/model.h"
#include "towerrec/recommend.h"

namespace towerrec {

inline constexpr uint32_t kCheckpointVersion = 1;

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
};

void save_checkpoint(const std::string& path, const Checkpoint& ck);
// Throws Error naming the file on a missing, truncated, corrupted or foreign file.
Checkpoint load_checkpoint(const std::string& path);

}  // namespace towerrec
