// Test hooks of the CUDA backend, callable from plain C++ (no CUDA headers).
// Only present in builds with TOWERREC_HAVE_CUDA. (The top-K version and
// precision are not hooks: they are the TopkPolicy argument of topk.)
#pragma once

#include <cstdint>

#include "towerrec/backend.h"

namespace towerrec::cuda {

// Sets the users-per-block and items-per-chunk of the GEMM path's score tile.
// Small tiles make tests cross user-block and item-chunk boundaries with small
// inputs.
void set_topk_tiles(Backend& be, int64_t users, int64_t items);

// Number of cudaMalloc calls made by a CUDA backend's allocator so far.
int64_t allocator_mallocs(Backend& be);

// Fences of a CUDA backend not yet known to have passed. fence() recycles passed
// ones while more than 16 are held; a count above 17 after it means its query
// found the oldest still pending.
int64_t pending_fences(Backend& be);

}  // namespace towerrec::cuda
