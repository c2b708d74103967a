// Float64 reference of the transform family (l2_normalize, l2_normalize_backward,
// dropout): the oracle of tests/test_transform.cpp. Header-only.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "towerrec/rng.h"

namespace towerrec::ref {

// Y[r] = X[r] / max(||X[r]||, 1e-12), inv_norm[r] = 1 / max(||X[r]||, 1e-12).
template <typename T>
void l2_normalize(const std::vector<T>& X, int64_t n, int d, std::vector<double>& Y,
                  std::vector<double>& inv_norm) {
  Y.assign(size_t(n * d), 0.0);
  inv_norm.assign(size_t(n), 0.0);
  for (int64_t r = 0; r < n; ++r) {
    double ss = 0.0;
    for (int c = 0; c < d; ++c) ss += double(X[r * d + c]) * double(X[r * d + c]);
    const double norm = std::max(std::sqrt(ss), 1e-12);
    inv_norm[r] = 1.0 / norm;
    for (int c = 0; c < d; ++c) Y[r * d + c] = double(X[r * d + c]) / norm;
  }
}

// The exact Jacobian-vector product of l2_normalize at X (not at its rounded
// output): dX[r] = (dY[r] - <dY[r], y> y) / ||X[r]||, y = X[r] / ||X[r]||.
template <typename T>
std::vector<double> l2_normalize_backward(const std::vector<T>& X, const std::vector<T>& dY,
                                          int64_t n, int d) {
  std::vector<double> dX(size_t(n * d));
  for (int64_t r = 0; r < n; ++r) {
    double ss = 0.0, dp = 0.0;
    for (int c = 0; c < d; ++c) ss += double(X[r * d + c]) * X[r * d + c];
    const double norm = std::max(std::sqrt(ss), 1e-12);
    for (int c = 0; c < d; ++c) dp += double(dY[r * d + c]) * X[r * d + c] / norm;
    for (int c = 0; c < d; ++c) dX[r * d + c] = (dY[r * d + c] - dp * X[r * d + c] / norm) / norm;
  }
  return dX;
}

// Whether dropout keeps element j (the documented mask of the contract).
inline bool dropout_keep(uint64_t seed, uint64_t offset, int64_t j, float p) {
  return rng::uniform(seed, rng::kDropout, offset + uint64_t(j)) >= p;
}

}  // namespace towerrec::ref
