// Test hooks of the CUDA backend, callable from plain C++ (no CUDA headers).
// Only present in builds with TOWERREC_HAVE_CUDA.
#pragma once

#include <cstdint>

#include "towerrec/backend.h"

namespace towerrec::cuda {

// Sets the users-per-block and items-per-chunk of topk's score tile on a CUDA
// backend (throws towerrec::Error for any other backend). Small tiles make
// tests cross user-block and item-chunk boundaries with small inputs.
void set_topk_tiles(Backend& be, int64_t users, int64_t items);

// Number of cudaMalloc calls made by a CUDA backend's allocator so far.
int64_t allocator_mallocs(Backend& be);

}  // namespace towerrec::cuda
