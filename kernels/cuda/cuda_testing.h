// Tuning and test hooks of the CUDA backend, callable from plain C++ (no CUDA
// headers). Only present in builds with TOWERREC_HAVE_CUDA.
#pragma once

#include <cstdint>
#include <string>

#include "towerrec/backend.h"

namespace towerrec::cuda {

// Arithmetic of topk's score GEMM (see kernels/topk/cuda.cu). fp32 agrees with
// the CPU reference; tf32 and bf16 use tensor cores and rank approximately.
// Default: $TOWERREC_TOPK_PRECISION (fp32, tf32 or bf16), else fp32.
enum class TopkPrecision { kFP32, kTF32, kBF16 };
// Which topk version runs: auto (the fused kernel where it applies: fp32,
// d <= 64, k <= 128; else the GEMM + select kernels), fused (throws where it does
// not apply) or gemm. Default: $TOWERREC_TOPK_PATH (auto, fused or gemm), else auto.
enum class TopkPath { kAuto, kFused, kGemm };

// "fp32" / "tf32" / "bf16" and "auto" / "fused" / "gemm"; throw towerrec::Error otherwise.
TopkPrecision parse_topk_precision(const std::string& s);
// The inverse: "fp32", "tf32" or "bf16".
const char* topk_precision_name(TopkPrecision p);
TopkPath parse_topk_path(const std::string& s);

// Setters on a CUDA backend (throw towerrec::Error for any other backend).
void set_topk_precision(Backend& be, TopkPrecision precision);
void set_topk_path(Backend& be, TopkPath path);

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
