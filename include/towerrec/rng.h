// Counter-based random numbers: value = f(seed, stream, counter). No state to
// carry, identical on host and device, and any element of any batch can be
// regenerated on its own, which keeps training reproducible across backends.
#pragma once

#include <cmath>
#include <cstdint>

#include "towerrec/hostdevice.h"

namespace towerrec::rng {

// SplitMix64 finaliser: a bijective 64-bit mix with good avalanche.
TR_HD uint64_t mix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// 64 random bits for (seed, stream, counter).
TR_HD uint64_t bits(uint64_t seed, uint64_t stream, uint64_t counter) {
  return mix64(mix64(seed ^ mix64(stream + 0x632BE59BD9B4E019ull)) + counter);
}

// Uniform in [0, 1) with 24 bits of precision.
TR_HD float uniform(uint64_t seed, uint64_t stream, uint64_t counter) {
  return static_cast<float>(bits(seed, stream, counter) >> 40) * (1.0f / 16777216.0f);
}

// Uniform integer in [0, n) (Lemire's multiply-shift; bias < n / 2^64).
TR_HD uint64_t below(uint64_t seed, uint64_t stream, uint64_t counter, uint64_t n) {
  const uint64_t x = bits(seed, stream, counter);
#if defined(__CUDA_ARCH__)
  return __umul64hi(x, n);
#else
  return static_cast<uint64_t>((static_cast<unsigned __int128>(x) * n) >> 64);
#endif
}

// Named streams so independent uses of one seed never collide.
enum Stream : uint64_t {
  kInit = 1,        // parameter initialisation
  kShuffle = 2,     // epoch permutations
  kNegatives = 3,   // negative sampling
  kSplit = 4,       // train/test splits
  kSynth = 5,       // synthetic data
  kDropout = 6,
  kHistory = 7,     // the items a user's pooled history keeps
};

// Standard normal (Box-Muller) from the uniforms at counters 2c and 2c + 1.
inline float normal(uint64_t seed, uint64_t stream, uint64_t counter) {
  const double u1 = (static_cast<double>(bits(seed, stream, 2 * counter) >> 11) + 1.0) *
                    (1.0 / 9007199254740992.0);
  const double u2 = static_cast<double>(bits(seed, stream, 2 * counter + 1) >> 11) *
                    (1.0 / 9007199254740992.0);
  return static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
}

}  // namespace towerrec::rng
