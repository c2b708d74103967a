// exp(x) in float without a libm call, so loops over it vectorise.
//
// Range reduction x = n ln2 + r (|r| <= ln2 / 2, ln2 split in two so r is
// exact to float rounding), a degree-6 polynomial for exp(r) (Cephes' expf
// coefficients) and 2^n built in the exponent bits. Within 2 ulp of std::exp
// for x in [-87.3, 88.3] (tests/test_math.cpp checks it against float64 exp);
// inputs below are taken as -87.3 (exp = 1.2e-38 rather than a denormal or 0),
// above as 88.3 (3.5e38, not inf); NaN stays NaN. The CPU softmax feeds it
// z - max(z) <= 0, where the clamp only replaces results below 1.2e-38.
#pragma once

#include <cstdint>
#include <cstring>

namespace towerrec::cpu {

#if defined(__GNUC__)
#define TOWERREC_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define TOWERREC_ALWAYS_INLINE inline
#endif

TOWERREC_ALWAYS_INLINE float vec_exp(float x) {
  // Comparisons written so NaN falls through both unchanged.
  x = x < -87.3f ? -87.3f : x;
  x = x > 88.3f ? 88.3f : x;
  // n = round(x / ln2): adding and subtracting 1.5 * 2^23 rounds to nearest.
  const float shifter = 12582912.0f;
  const float t = x * 1.44269504088896341f + shifter;
  const float n = t - shifter;
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float e_r = p * (r * r) + r + 1.0f;
  // 2^n: n in [-126, 127] after the clamp, a normal float's exponent field.
  // (NaN: any n; the polynomial's NaN carries through the product.)
  const float n_int = n == n ? n : 0.0f;
  const uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(n_int) + 127) << 23;
  float two_n;
  std::memcpy(&two_n, &bits, sizeof two_n);
  return e_r * two_n;
}

}  // namespace towerrec::cpu
