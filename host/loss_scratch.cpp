// The trainer's choices for the losses that score each positive against all
// the batch's items: which losses those are, and the item block that keeps
// their logits scratch within its cap (include/towerrec/trainer.h).
#include <algorithm>
#include <cstdint>

#include "towerrec/trainer.h"

namespace towerrec {

bool in_batch_loss(Loss loss) { return loss == Loss::kSoftmax || loss == Loss::kCcl; }

int64_t softmax_item_tile(int64_t n_pairs, int64_t n_items, int64_t scratch_mb) {
  if (scratch_mb <= 0 || n_pairs <= 0) return n_items;
  const int64_t cols = (scratch_mb << 20) / (n_pairs * static_cast<int64_t>(sizeof(float)));
  if (cols >= n_items) return n_items;
  // Whole 64-column blocks keep the GEMMs' shapes regular; at least one block.
  return std::max<int64_t>(64, cols / 64 * 64);
}

}  // namespace towerrec
