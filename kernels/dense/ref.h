// Float64 reference of the dense family (dense_forward, dense_backward): the one
// oracle that every backend's tests compare with (tests/test_dense.cpp).
// Header-only, plain C++ (no backend), written for clarity, not speed.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "towerrec/backend.h"

namespace towerrec::ref {

// Z = X W + b, Y = act(Z): Y[n x out] from X[n x in], W[in x out], b[out].
inline std::vector<double> dense_forward(const std::vector<double>& X, int64_t n, int in,
                                         const std::vector<double>& W,
                                         const std::vector<double>& b, int out, Activation act) {
  std::vector<double> Y(static_cast<size_t>(n * out));
  for (int64_t r = 0; r < n; ++r)
    for (int c = 0; c < out; ++c) {
      double z = b[c];
      for (int i = 0; i < in; ++i) z += X[r * in + i] * W[int64_t{i} * out + c];
      Y[r * out + c] = act == Activation::kReLU ? std::max(z, 0.0) : z;
    }
  return Y;
}

// Gradients of dense_forward given dZ[n x out] (dY already masked by act'):
//   dW = X^T dZ, db = column sums of dZ, dX = dZ W^T.
struct DenseGrads {
  std::vector<double> dW, db, dX;
};
template <typename T>
DenseGrads dense_backward(const std::vector<T>& X, int64_t n, int in, const std::vector<T>& W,
                          int out, const std::vector<T>& dZ) {
  DenseGrads g;
  g.dW.assign(static_cast<size_t>(in) * out, 0.0);
  g.db.assign(static_cast<size_t>(out), 0.0);
  g.dX.assign(static_cast<size_t>(n * in), 0.0);
  for (int64_t r = 0; r < n; ++r)
    for (int c = 0; c < out; ++c) {
      const double z = dZ[r * out + c];
      g.db[c] += z;
      for (int i = 0; i < in; ++i) {
        g.dW[int64_t{i} * out + c] += double(X[r * in + i]) * z;
        g.dX[r * in + i] += z * double(W[int64_t{i} * out + c]);
      }
    }
  return g;
}

}  // namespace towerrec::ref
